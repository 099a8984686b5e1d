//! Durable pull consumers: explicit ack, bounded redelivery, dead letters.
//!
//! Every message is either applied (ack), retried later (nak with a delay,
//! at most `max_deliver` times), or written to `dead_letter` with the reason
//! and terminated. A bad message never crashes a consumer or blocks a
//! stream. Handlers record the message id in `inbox` in the same
//! transaction as their effect; this module only routes.

use std::future::Future;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::PullConsumer};
use futures::StreamExt;
use serde_json::{Value, json};
use sqlx::PgPool;
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
        }
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
pub async fn process<H: Handler>(
    pool: &PgPool,
    handler: &H,
    msg: jetstream::Message,
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
            (
                handler.handle(&delivery).instrument(span).await,
                Some(id),
                case,
            )
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
    let mut n = 0;
    while let Some(msg) = batch.next().await {
        process(pool, handler, msg?).await?;
        n += 1;
    }
    Ok(n)
}

/// Consumes until `shutdown`; reconnects after errors with a delay.
pub async fn run<H: Handler>(
    consumer: PullConsumer,
    pool: PgPool,
    handler: H,
    shutdown: CancellationToken,
) {
    loop {
        let mut messages = match consumer.messages().await {
            Ok(m) => m,
            Err(e) => {
                warn!(consumer = handler.name(), error = %e, "Cannot pull messages; retrying.");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    _ = shutdown.cancelled() => return,
                }
            }
        };
        loop {
            let next = tokio::select! {
                next = messages.next() => next,
                _ = shutdown.cancelled() => return,
            };
            match next {
                Some(Ok(msg)) => {
                    if let Err(e) = process(&pool, &handler, msg).await {
                        warn!(consumer = handler.name(), error = %e, "Ack failed; the server will redeliver.");
                    }
                }
                Some(Err(e)) => {
                    warn!(consumer = handler.name(), error = %e, "Pull failed; resubscribing.");
                    break;
                }
                None => break,
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
