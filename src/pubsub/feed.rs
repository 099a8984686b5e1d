//! Following a feed: an ordered, ephemeral consumer of one subject (e.g.
//! `evt.case.transition.v1`), as UIs, ChatOps notifiers and `opsloop tail`
//! follow it.

use async_nats::jetstream::consumer::{DeliverPolicy, pull::Ordered, pull::OrderedConfig};

use super::streams::EVT_STREAM;

#[derive(Debug, thiserror::Error)]
#[error("following {subject}: {detail}")]
pub struct FeedError {
    subject: String,
    detail: String,
}

/// Messages of `subject` in stream order: from the oldest retained one when
/// `from_start`, else only new ones.
pub async fn follow(nats_url: &str, subject: &str, from_start: bool) -> Result<Ordered, FeedError> {
    let fail = |e: &dyn std::fmt::Display| FeedError {
        subject: subject.to_string(),
        detail: e.to_string(),
    };
    let client = super::connect(nats_url).await.map_err(|e| fail(&e))?;
    let stream = async_nats::jetstream::new(client)
        .get_stream(EVT_STREAM)
        .await
        .map_err(|e| fail(&e))?;
    let consumer = stream
        .create_consumer(OrderedConfig {
            filter_subject: subject.to_string(),
            deliver_policy: if from_start {
                DeliverPolicy::All
            } else {
                DeliverPolicy::New
            },
            ..Default::default()
        })
        .await
        .map_err(|e| fail(&e))?;
    consumer.messages().await.map_err(|e| fail(&e))
}
