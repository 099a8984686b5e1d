//! The two JetStream streams (`cmd.>` and `evt.>`), created or updated
//! idempotently at start-up.

use std::time::Duration;

use async_nats::jetstream::{self, ErrorCode, stream};

pub const CMD_STREAM: &str = "OPSLOOP_CMD";
pub const EVT_STREAM: &str = "OPSLOOP_EVT";

/// Limits of both streams; defaults suit a single-node install.
#[derive(Debug, Clone, clap::Args)]
pub struct StreamSettings {
    /// How long JetStream remembers a Nats-Msg-Id. Must exceed the relay's
    /// worst re-publish gap; never below 2 minutes.
    #[arg(long, env = "OPSLOOP_DUPLICATE_WINDOW_S", default_value_t = 600)]
    pub duplicate_window_s: u64,
    /// Messages older than this are dropped from the streams.
    #[arg(long, env = "OPSLOOP_STREAM_MAX_AGE_S", default_value_t = 7 * 24 * 3600)]
    pub max_age_s: u64,
    /// Size limit of each stream in bytes (oldest dropped first).
    #[arg(long, env = "OPSLOOP_STREAM_MAX_BYTES", default_value_t = 1 << 30)]
    pub max_bytes: i64,
    /// Copies of each stream on a JetStream cluster (1, 3 or 5; at most
    /// the cluster's size). A message is acknowledged once a majority of
    /// the copies stored it, so R3 keeps every acknowledged message when a
    /// node is lost. Unset: a new stream gets 1 and an existing one keeps
    /// its count, so a process started without it never scales an R3
    /// stream down.
    #[arg(long, env = "OPSLOOP_STREAM_REPLICAS")]
    pub replicas: Option<usize>,
}

impl Default for StreamSettings {
    fn default() -> Self {
        StreamSettings {
            duplicate_window_s: 600,
            max_age_s: 7 * 24 * 3600,
            max_bytes: 1 << 30,
            replicas: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StreamSetupError {
    #[error("duplicate window {0} s is below the 120 s minimum")]
    WindowTooShort(u64),
    #[error("stream replicas must be 1 to 5 (JetStream's limit), not {0}")]
    Replicas(usize),
    #[error("stream {name}: this NATS cannot keep {replicas} copies: {source}")]
    ReplicasRefused {
        name: &'static str,
        replicas: usize,
        source: jetstream::context::CreateStreamError,
    },
    #[error("reading stream {name}: {source}")]
    Read {
        name: &'static str,
        source: jetstream::context::GetStreamError,
    },
    #[error("creating or updating stream {name}: {source}")]
    Create {
        name: &'static str,
        source: jetstream::context::CreateStreamError,
    },
}

impl StreamSetupError {
    /// Waiting does not help: the settings themselves are wrong.
    pub fn is_settings(&self) -> bool {
        matches!(
            self,
            StreamSetupError::WindowTooShort(_)
                | StreamSetupError::Replicas(_)
                | StreamSetupError::ReplicasRefused { .. }
        )
    }
}

fn config(
    name: &'static str,
    subject: &str,
    s: &StreamSettings,
    replicas: usize,
) -> stream::Config {
    stream::Config {
        name: name.to_string(),
        subjects: vec![subject.to_string()],
        storage: stream::StorageType::File,
        duplicate_window: Duration::from_secs(s.duplicate_window_s),
        max_age: Duration::from_secs(s.max_age_s),
        max_bytes: s.max_bytes,
        discard: stream::DiscardPolicy::Old,
        num_replicas: replicas,
        ..Default::default()
    }
}

pub async fn ensure(js: &jetstream::Context, s: &StreamSettings) -> Result<(), StreamSetupError> {
    if s.duplicate_window_s < 120 {
        return Err(StreamSetupError::WindowTooShort(s.duplicate_window_s));
    }
    if let Some(n) = s.replicas
        && !(1..=5).contains(&n)
    {
        return Err(StreamSetupError::Replicas(n));
    }
    for (name, subject) in [(CMD_STREAM, "cmd.>"), (EVT_STREAM, "evt.>")] {
        let replicas = match s.replicas {
            Some(n) => n,
            None => match existing_replicas(js, name).await? {
                Some(n) => n,
                // Absent: create it, never update it, so that a process
                // asking for R3 that made it meanwhile is not undone.
                None => match js.create_stream(config(name, subject, s, 1)).await {
                    Ok(_) => continue,
                    Err(e)
                        if matches!(e.kind(), jetstream::context::CreateStreamErrorKind::JetStream(j)
                            if j.error_code() == ErrorCode::STREAM_NAME_EXIST) =>
                    {
                        existing_replicas(js, name).await?.unwrap_or(1)
                    }
                    Err(source) => return Err(StreamSetupError::Create { name, source }),
                },
            },
        };
        js.create_or_update_stream(config(name, subject, s, replicas))
            .await
            .map_err(|source| {
                // A single server (no cluster) or a count the stream cannot
                // move to: waiting does not help. Too few nodes up
                // (insufficient resources) may, and is retried.
                let refused = matches!(source.kind(),
                    jetstream::context::CreateStreamErrorKind::JetStream(e)
                        if [ErrorCode::STREAM_REPLICAS_NOT_SUPPORTED, ErrorCode::STREAM_REPLICAS_NOT_UPDATABLE]
                            .contains(&e.error_code()));
                if refused {
                    StreamSetupError::ReplicasRefused { name, replicas, source }
                } else {
                    StreamSetupError::Create { name, source }
                }
            })?;
    }
    Ok(())
}

/// The replica count of stream `name`, if it exists.
async fn existing_replicas(
    js: &jetstream::Context,
    name: &'static str,
) -> Result<Option<usize>, StreamSetupError> {
    match js.get_stream(name).await {
        Ok(stream) => Ok(Some(stream.cached_info().config.num_replicas)),
        Err(e)
            if matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(j)
                if j.error_code() == ErrorCode::STREAM_NOT_FOUND) =>
        {
            Ok(None)
        }
        Err(source) => Err(StreamSetupError::Read { name, source }),
    }
}
