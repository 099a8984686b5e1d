//! The two JetStream streams (`cmd.>` and `evt.>`), created or updated
//! idempotently at start-up.

use std::time::Duration;

use async_nats::jetstream::{self, stream};

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
    /// node is lost.
    #[arg(long, env = "OPSLOOP_STREAM_REPLICAS", default_value_t = 1)]
    pub replicas: usize,
}

impl Default for StreamSettings {
    fn default() -> Self {
        StreamSettings {
            duplicate_window_s: 600,
            max_age_s: 7 * 24 * 3600,
            max_bytes: 1 << 30,
            replicas: 1,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StreamSetupError {
    #[error("duplicate window {0} s is below the 120 s minimum")]
    WindowTooShort(u64),
    #[error("stream replicas must be 1 to 5 (JetStream's limit), not {0}")]
    Replicas(usize),
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
            StreamSetupError::WindowTooShort(_) | StreamSetupError::Replicas(_)
        )
    }
}

fn config(name: &'static str, subject: &str, s: &StreamSettings) -> stream::Config {
    stream::Config {
        name: name.to_string(),
        subjects: vec![subject.to_string()],
        storage: stream::StorageType::File,
        duplicate_window: Duration::from_secs(s.duplicate_window_s),
        max_age: Duration::from_secs(s.max_age_s),
        max_bytes: s.max_bytes,
        discard: stream::DiscardPolicy::Old,
        num_replicas: s.replicas,
        ..Default::default()
    }
}

pub async fn ensure(js: &jetstream::Context, s: &StreamSettings) -> Result<(), StreamSetupError> {
    if s.duplicate_window_s < 120 {
        return Err(StreamSetupError::WindowTooShort(s.duplicate_window_s));
    }
    if !(1..=5).contains(&s.replicas) {
        return Err(StreamSetupError::Replicas(s.replicas));
    }
    for (name, subject) in [(CMD_STREAM, "cmd.>"), (EVT_STREAM, "evt.>")] {
        js.create_or_update_stream(config(name, subject, s))
            .await
            .map_err(|source| StreamSetupError::Create { name, source })?;
    }
    Ok(())
}
