//! The transition feed: an ordered, ephemeral consumer of
//! `evt.case.transition.v1`, as UIs, ChatOps notifiers and `opsloop tail`
//! follow it.

use async_nats::jetstream::consumer::{DeliverPolicy, pull::Ordered, pull::OrderedConfig};

use super::streams::EVT_STREAM;
use super::subjects::EVT_CASE_TRANSITION;

#[derive(Debug, thiserror::Error)]
#[error("following {EVT_CASE_TRANSITION}: {0}")]
pub struct FeedError(String);

/// Transition messages in stream order: from the oldest retained one when
/// `from_start`, else only new ones.
pub async fn transitions(nats_url: &str, from_start: bool) -> Result<Ordered, FeedError> {
    let fail = |e: &dyn std::fmt::Display| FeedError(e.to_string());
    let client = async_nats::connect(nats_url).await.map_err(|e| fail(&e))?;
    let stream = async_nats::jetstream::new(client)
        .get_stream(EVT_STREAM)
        .await
        .map_err(|e| fail(&e))?;
    let consumer = stream
        .create_consumer(OrderedConfig {
            filter_subject: EVT_CASE_TRANSITION.to_string(),
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
