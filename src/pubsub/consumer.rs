//! Durable pull consumers: explicit ack, bounded redelivery, dead letters.
//!
//! Every message is either applied (ack), retried later (nak with a delay,
//! at most `max_deliver` times), or written to `dead_letter` with the reason
//! and terminated. A bad message never crashes a consumer or blocks a
//! stream. Handlers record the message id in `inbox` in the same
//! transaction as their effect; this module only routes.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::PullConsumer};
use futures::StreamExt;
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info_span, warn};

use super::Envelope;
use crate::telemetry;

/// Why a message was dead-lettered; stable names, stored in `dead_letter.reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, strum::Display)]
#[strum(serialize_all = "snake_case")]
pub enum DeadReason {
    MalformedEnvelope,
    SubjectMismatch,
    UnknownType,
    UnknownCase,
    /// The message names a case of another tenant than its own `tenant`.
    TenantMismatch,
    InvalidData,
    MaxDeliverExceeded,
}

/// What the handler decided for one message.
#[derive(Debug, Clone, PartialEq)]
pub enum Disposition {
    /// Applied, or recognised as already applied / rejected and recorded.
    Done,
    /// A transient failure: deliver again later (the delay grows with the
    /// delivery count; see `retry_delay`).
    Retry(String),
    /// Never applicable: keep it for a human and move on.
    DeadLetter(DeadReason, String),
}

impl Disposition {
    /// A message's case was not found within the message's tenant: either
    /// there is no such case, or it belongs to another tenant, which is
    /// told apart here for whoever reads the dead letter.
    pub async fn case_not_found<'e>(
        db: impl sqlx::PgExecutor<'e>,
        case_id: uuid::Uuid,
        tenant: &str,
    ) -> Result<Disposition, sqlx::Error> {
        let owner: Option<String> = sqlx::query_scalar("SELECT tenant FROM ops_case WHERE id = $1")
            .bind(case_id)
            .fetch_optional(db)
            .await?;
        Ok(match owner {
            None => Disposition::DeadLetter(
                DeadReason::UnknownCase,
                format!("case {case_id} does not exist"),
            ),
            Some(owner) => Disposition::DeadLetter(
                DeadReason::TenantMismatch,
                format!("case {case_id} belongs to tenant {owner}, not {tenant}"),
            ),
        })
    }

    /// The envelope's type is not one this consumer handles.
    pub fn unknown_type(kind: &str) -> Disposition {
        Disposition::DeadLetter(DeadReason::UnknownType, format!("unknown type {kind}"))
    }
}

/// 2 s doubling to 32 s: the pause before delivery `delivered + 1`.
fn retry_delay(delivered: i64) -> Duration {
    Duration::from_secs(1 << delivered.clamp(1, 5))
}

/// A delivered message whose envelope parsed.
#[derive(Debug)]
pub struct Delivery {
    pub envelope: Envelope,
    pub subject: String,
    pub traceparent: Option<String>,
    /// 1 on first delivery.
    pub delivered: i64,
}

pub trait Handler: Send + Sync {
    /// The consumer's durable name; also its inbox scope.
    fn name(&self) -> &str;
    fn handle(&self, delivery: &Delivery) -> impl Future<Output = Disposition> + Send;
}

#[derive(Debug, Clone)]
pub struct ConsumerSpec {
    pub stream: &'static str,
    pub durable: String,
    pub filter_subject: String,
    pub ack_wait: Duration,
    /// `All` for the product (a new durable sees what was published before
    /// it existed); benchmarks start at `New`.
    pub deliver_policy: jetstream::consumer::DeliverPolicy,
    /// Messages handled at once by one process. Handlers that wait on the
    /// outside world (an LLM, a script, a rollout) need more than one, or
    /// one slow case holds up every other.
    pub concurrency: usize,
}

/// Deliveries before a message that keeps failing is dead-lettered. Enforced
/// here, not by JetStream (whose consumers redeliver without limit): the
/// server would stop redelivering even when the dead letter could not be
/// stored, and the message would be lost.
pub const MAX_ATTEMPTS: i64 = 8;

impl ConsumerSpec {
    pub fn new(stream: &'static str, durable: &str, filter_subject: &str) -> Self {
        ConsumerSpec {
            stream,
            durable: durable.to_string(),
            filter_subject: filter_subject.to_string(),
            ack_wait: Duration::from_secs(30),
            deliver_policy: jetstream::consumer::DeliverPolicy::All,
            concurrency: 1,
        }
    }

    pub fn with_concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }
}

pub async fn durable(
    js: &jetstream::Context,
    spec: &ConsumerSpec,
) -> Result<PullConsumer, async_nats::Error> {
    let stream = js.get_stream(spec.stream).await?;
    let config = jetstream::consumer::pull::Config {
        durable_name: Some(spec.durable.clone()),
        filter_subject: spec.filter_subject.clone(),
        ack_policy: jetstream::consumer::AckPolicy::Explicit,
        max_deliver: -1,
        deliver_policy: spec.deliver_policy,
        ack_wait: spec.ack_wait,
        ..Default::default()
    };
    Ok(stream.get_or_create_consumer(&spec.durable, config).await?)
}

/// Handles one message end to end, including its ack. Errors are only
/// returned when even the ack could not be sent (the server redelivers).
/// While the handler works, the message's ack deadline is pushed out every
/// third of `ack_wait`, so a slow handler (an LLM call, a rollout) is not
/// mistaken for a dead one and its message handed to a second worker.
///
/// When `release` fires while the handler works, the handler is dropped
/// (its open transaction rolls back) and the message is handed back with a
/// nak at once; once the handler has answered, its answer is carried out
/// whatever `release` does, so a dead letter is never stored twice.
pub async fn process<H: Handler>(
    pool: &PgPool,
    handler: &H,
    msg: &jetstream::Message,
    ack_wait: Duration,
    release: &CancellationToken,
) -> Result<(), async_nats::Error> {
    let (stream_seq, delivered) = msg
        .info()
        .map(|i| (i.stream_sequence as i64, i.delivered))
        .unwrap_or((0, 1));
    let subject = msg.subject.to_string();
    let headers: Value = msg
        .headers
        .as_ref()
        .map(|h| {
            json!(
                h.iter()
                    .map(|(k, v)| (
                        k.to_string(),
                        json!(v.iter().map(|x| x.to_string()).collect::<Vec<_>>())
                    ))
                    .collect::<serde_json::Map<_, _>>()
            )
        })
        .unwrap_or_else(|| json!({}));
    let traceparent = msg
        .headers
        .as_ref()
        .and_then(|h| h.get("traceparent"))
        .map(|v| v.to_string());

    let parsed = serde_json::from_slice::<Envelope>(&msg.payload);
    let (disposition, envelope_id, case_id) = match parsed {
        Err(e) => (
            Disposition::DeadLetter(DeadReason::MalformedEnvelope, e.to_string()),
            None,
            None,
        ),
        Ok(envelope) if envelope.kind != subject => (
            Disposition::DeadLetter(
                DeadReason::SubjectMismatch,
                format!("type {} published on {subject}", envelope.kind),
            ),
            Some(envelope.id),
            envelope.case_id,
        ),
        Ok(envelope) => {
            let (id, case) = (envelope.id, envelope.case_id);
            let delivery = Delivery {
                envelope,
                subject: subject.clone(),
                traceparent,
                delivered,
            };
            let span = info_span!("message", consumer = handler.name(), subject = %subject,
                                  message.id = %id, case.id = ?case);
            let handling = handler.handle(&delivery).instrument(span);
            tokio::pin!(handling);
            let every = (ack_wait / 3).max(Duration::from_millis(100));
            let mut progress = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            let disposition = loop {
                tokio::select! {
                    d = &mut handling => break d,
                    _ = release.cancelled() => {
                        telemetry::consumer_released(handler.name());
                        warn!(consumer = handler.name(), subject = %subject,
                              "Shutting down: released a message still in hand.");
                        return msg.ack_with(AckKind::Nak(None)).await;
                    }
                    _ = progress.tick() => {
                        if let Err(e) = msg.ack_with(AckKind::Progress).await {
                            warn!(consumer = handler.name(), error = %e, "Cannot extend the ack deadline.");
                        }
                    }
                }
            };
            (disposition, Some(id), case)
        }
    };
    let disposition = match disposition {
        Disposition::Retry(why) if delivered >= MAX_ATTEMPTS => Disposition::DeadLetter(
            DeadReason::MaxDeliverExceeded,
            format!("gave up after {delivered} deliveries: {why}"),
        ),
        other => other,
    };
    match disposition {
        Disposition::Done => msg.ack().await,
        Disposition::Retry(why) => {
            let delay = retry_delay(delivered);
            warn!(consumer = handler.name(), subject = %subject, delivered, error = %why,
                  "Message will be redelivered.");
            msg.ack_with(AckKind::Nak(Some(delay))).await
        }
        Disposition::DeadLetter(reason, detail) => {
            let stored = sqlx::query(
                "INSERT INTO dead_letter (consumer, subject, stream_seq, message_id, case_id, \
                 reason, detail, payload, headers) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            )
            .bind(handler.name())
            .bind(&subject)
            .bind(stream_seq)
            .bind(envelope_id)
            .bind(case_id)
            .bind(<&'static str>::from(reason))
            .bind(&detail)
            .bind(msg.payload.as_ref())
            .bind(&headers)
            .execute(pool)
            .await;
            match stored {
                Ok(_) => {
                    telemetry::dead_letter(handler.name(), reason.into());
                    warn!(consumer = handler.name(), subject = %subject, reason = %reason,
                          detail = %detail, "Message dead-lettered.");
                    msg.ack_with(AckKind::Term).await
                }
                // Losing the message is worse than seeing it again.
                Err(e) => {
                    warn!(error = %e, "Cannot store a dead letter; redelivering.");
                    msg.ack_with(AckKind::Nak(Some(Duration::from_secs(5))))
                        .await
                }
            }
        }
    }
}

/// Fetches at most `max` messages (waiting up to `expires`) and handles them.
pub async fn consume_once<H: Handler>(
    consumer: &PullConsumer,
    pool: &PgPool,
    handler: &H,
    max: usize,
    expires: Duration,
) -> Result<usize, async_nats::Error> {
    let mut batch = consumer
        .fetch()
        .max_messages(max)
        .expires(expires)
        .messages()
        .await?;
    let ack_wait = consumer.cached_info().config.ack_wait;
    let mut n = 0;
    while let Some(msg) = batch.next().await {
        process(pool, handler, &msg?, ack_wait, &CancellationToken::new()).await?;
        n += 1;
    }
    Ok(n)
}

/// Consumes until `shutdown`, handling up to `concurrency` messages at once;
/// reconnects after errors with a delay. On shutdown it stops pulling at
/// once and gives the messages in hand up to `grace` to finish; any still
/// unfinished then is released (nak without delay) so that another process
/// takes it now rather than after its ack deadline. A released handler's
/// open transaction is rolled back when its future is dropped, and its
/// message's next delivery finds what it had committed (inbox, runs).
pub async fn run<H: Handler + 'static>(
    consumer: PullConsumer,
    pool: PgPool,
    handler: H,
    concurrency: usize,
    shutdown: CancellationToken,
    grace: Duration,
) {
    let concurrency = concurrency.max(1);
    let ack_wait = consumer.cached_info().config.ack_wait;
    telemetry::consumer_started(handler.name());
    let handler = Arc::new(handler);
    let slots = Arc::new(Semaphore::new(concurrency));
    let release = CancellationToken::new();
    let mut in_hand = JoinSet::new();
    'outer: loop {
        // A small batch: pulled messages wait in this process with their ack
        // deadline running, so pull no more than can be started soon.
        let pulled = consumer
            .stream()
            .max_messages_per_batch(concurrency.max(4))
            .messages()
            .await;
        let mut messages = match pulled {
            Ok(m) => m,
            Err(e) => {
                warn!(consumer = handler.name(), error = %e, "Cannot pull messages; retrying.");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    _ = shutdown.cancelled() => break 'outer,
                }
            }
        };
        loop {
            while in_hand.try_join_next().is_some() {}
            let slot = tokio::select! {
                slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
                _ = shutdown.cancelled() => {
                    release_pending(messages, handler.name()).await;
                    break 'outer;
                }
            };
            let next = tokio::select! {
                next = messages.next() => next,
                _ = shutdown.cancelled() => {
                    drop(slot);
                    release_pending(messages, handler.name()).await;
                    break 'outer;
                }
            };
            match next {
                Some(Ok(msg)) => {
                    let (pool, handler, release) = (pool.clone(), handler.clone(), release.clone());
                    in_hand.spawn(async move {
                        let _slot = slot;
                        if let Err(e) = process(&pool, &*handler, &msg, ack_wait, &release).await {
                            warn!(consumer = handler.name(), error = %e, "Ack failed; the server will redeliver.");
                        }
                    });
                }
                Some(Err(e)) => {
                    warn!(consumer = handler.name(), error = %e, "Pull failed; resubscribing.");
                    break;
                }
                None => break,
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = shutdown.cancelled() => break 'outer,
        }
    }
    let finished = tokio::time::timeout(grace, async {
        while in_hand.join_next().await.is_some() {}
    })
    .await;
    if finished.is_err() {
        release.cancel();
        while in_hand.join_next().await.is_some() {}
    }
}

/// Hands back the messages a pull already brought that no handler started:
/// collects what arrives within one short window (async-nats may hold up to
/// one and a half batches), closes the pull, then naks them. Nak-ing while
/// the pull is open would let the server hand the same messages straight
/// back to it.
async fn release_pending(mut messages: jetstream::consumer::pull::Stream, name: &str) {
    let until = tokio::time::Instant::now() + Duration::from_millis(50);
    let mut held = Vec::new();
    while let Ok(Some(Ok(msg))) = tokio::time::timeout_at(until, messages.next()).await {
        held.push(msg);
    }
    drop(messages);
    for msg in held {
        telemetry::consumer_released(name);
        let _ = msg.ack_with(AckKind::Nak(None)).await;
    }
}
