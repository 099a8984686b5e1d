//! The outbox relay: publishes committed outbox rows to JetStream and marks
//! them published only after the server's ack.
//!
//! Guarantees (see `docs/events.md`):
//! - at least once: a row is marked only after its ack; a crash between ack
//!   and mark re-publishes with the same `Nats-Msg-Id`, which JetStream drops
//!   inside its duplicate window;
//! - per-case order: a relay claims a case's rows only while holding a
//!   transaction-scoped advisory lock on that case, so one case is published
//!   by one relay at a time, in id order, on one connection (NATS keeps the
//!   order of one connection); a batch stops at the first transient failure,
//!   so a later row of a case never overtakes an earlier one;
//! - a row that can never be published (larger than the server's max
//!   payload) is marked failed with the reason and does not block the rest.
//!
//! It must not decide anything about cases: it only moves rows.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, context::PublishErrorKind, message::PublishMessage};
use sqlx::{PgPool, Row};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use uuid::Uuid;

use crate::telemetry;

/// A row the server rejects this many times is marked failed (poison).
pub const MAX_PUBLISH_ATTEMPTS: i32 = 5;

/// Namespace of the advisory locks that give one relay a case at a time.
const CASE_LOCK_NAMESPACE: i32 = 0x6f70_6c70; // "oplp"

#[derive(Debug, Clone)]
pub struct RelaySettings {
    /// Rows claimed per transaction.
    pub batch: i64,
    /// Fallback poll for rows committed by other processes.
    pub poll: Duration,
    /// Idempotency keys are deleted after this long.
    pub idempotency_retention: Duration,
    /// Inbox records are deleted after this long; keep it above the streams'
    /// max age, or a re-created consumer could apply an old message again.
    pub inbox_retention: Duration,
    /// Test-only: after the acks, stall instead of marking (the crash window).
    pub stall_after_publish: bool,
    /// Benchmarks: every commit -> ack lag in seconds is appended here.
    pub lag_samples: Option<Arc<std::sync::Mutex<Vec<f64>>>>,
}

impl Default for RelaySettings {
    fn default() -> Self {
        RelaySettings {
            batch: 1024,
            poll: Duration::from_millis(250),
            idempotency_retention: Duration::from_secs(24 * 3600),
            inbox_retention: Duration::from_secs(8 * 24 * 3600),
            stall_after_publish: false,
            lag_samples: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("NATS is not connected")]
    NotConnected,
    #[error("publishing {subject}: {source}")]
    Publish {
        subject: String,
        source: jetstream::context::PublishError,
    },
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// What one `relay_once` did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RelayReport {
    pub published: usize,
    pub duplicates: usize,
    pub failed: usize,
    /// A transient failure stopped the batch early.
    pub interrupted: bool,
}

struct Row_ {
    id: i64,
    message_id: Uuid,
    /// The case, or the message itself when it belongs to no case.
    order_key: Uuid,
    subject: String,
    payload: String,
    traceparent: Option<String>,
}

#[derive(Clone)]
pub struct Relay {
    pool: PgPool,
    js: jetstream::Context,
    client: async_nats::Client,
    settings: RelaySettings,
}

impl Relay {
    pub fn new(pool: PgPool, client: async_nats::Client, settings: RelaySettings) -> Self {
        Relay {
            pool,
            js: jetstream::new(client.clone()),
            client,
            settings,
        }
    }

    /// Claims one batch, publishes it, marks what was acked. Only the relay
    /// holds a transaction across network calls: small batches, bounded waits.
    pub async fn relay_once(&self) -> Result<RelayReport, RelayError> {
        if self.client.connection_state() != async_nats::connection::State::Connected {
            return Err(RelayError::NotConnected);
        }
        let mut tx = self.pool.begin().await?;
        let claimed: Vec<Row_> = sqlx::query(
            // The advisory lock filter sits inside the LIMITed scan of the
            // pending index, so it runs only for rows being claimed (rows of
            // cases another relay holds are skipped). Outside the CTE the
            // planner may push it onto a scan of the whole table and lock
            // every case.
            "WITH candidate AS MATERIALIZED ( \
                 SELECT id FROM outbox WHERE failed_at IS NULL \
                   AND pg_try_advisory_xact_lock($2, hashtext(COALESCE(case_id, message_id)::text)) \
                 ORDER BY id LIMIT $1) \
             SELECT o.id, o.message_id, COALESCE(o.case_id, o.message_id) AS order_key, \
                    o.subject, o.payload, o.traceparent FROM outbox o \
             WHERE o.id = ANY(ARRAY(SELECT id FROM candidate)) \
             ORDER BY o.id FOR UPDATE OF o SKIP LOCKED",
        )
        .bind(self.settings.batch)
        .bind(CASE_LOCK_NAMESPACE)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .map(|r| {
            Ok(Row_ {
                id: r.try_get("id")?,
                message_id: r.try_get("message_id")?,
                order_key: r.try_get("order_key")?,
                subject: r.try_get("subject")?,
                payload: r.try_get("payload")?,
                traceparent: r.try_get("traceparent")?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()?;
        // The invariant per-case order rests on: never publish a row while an
        // older row of its case is still waiting and not in this batch (another
        // relay's statement may have skipped it, or it is not claimable yet).
        // Such a case's rows are left for a later batch.
        let mut keys: Vec<Uuid> = claimed.iter().map(|r| r.order_key).collect();
        keys.sort_unstable();
        keys.dedup();
        // One index probe per case: a GROUP BY would read every pending row
        // of the batch's cases (thousands for a hot case).
        let oldest: HashMap<Uuid, i64> = sqlx::query_as::<_, (Uuid, Option<i64>)>(
            "SELECT k.id, (SELECT o.id FROM outbox o WHERE o.case_id = k.id AND o.failed_at IS NULL \
                           ORDER BY o.id LIMIT 1) \
             FROM unnest($1::uuid[]) AS k(id)",
        )
        .bind(&keys)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .filter_map(|(case, min)| Some((case, min?)))
        .collect();
        let mut first_claimed: HashMap<Uuid, i64> = HashMap::new();
        for r in &claimed {
            first_claimed.entry(r.order_key).or_insert(r.id);
        }
        let rows: Vec<Row_> = claimed
            .into_iter()
            .filter(|r| {
                oldest
                    .get(&r.order_key)
                    .is_none_or(|min| first_claimed[&r.order_key] <= *min)
            })
            .collect();
        if rows.is_empty() {
            return Ok(RelayReport::default());
        }

        let mut report = RelayReport::default();
        let mut failed: Vec<(i64, String)> = Vec::new();
        let mut acked: Vec<i64> = Vec::with_capacity(rows.len());
        let mut rejected: Option<(i64, String)> = None;
        let mut error = None;
        // Waves: the n-th row of every (case, subject) goes out in wave n, all
        // of a wave pipelined, and a row is sent only after the previous row
        // of its case and subject was acked. A failed ack can then never let
        // a later row of that case overtake it in the stream.
        let mut blocked: HashSet<(Uuid, &str)> = HashSet::new();
        for wave in waves(&rows) {
            let mut in_flight = Vec::with_capacity(wave.len());
            for row in wave {
                let key = (row.order_key, row.subject.as_str());
                if blocked.contains(&key) {
                    continue;
                }
                let mut headers = HeaderMap::new();
                if let Some(tp) = &row.traceparent {
                    headers.insert("traceparent", tp.as_str());
                }
                let publish = PublishMessage::build()
                    .payload(row.payload.clone().into())
                    .headers(headers)
                    .message_id(row.message_id.to_string());
                match self.js.send_publish(row.subject.clone(), publish).await {
                    Ok(ack) => in_flight.push((row, ack)),
                    Err(e) if e.kind() == PublishErrorKind::MaxPayloadExceeded => {
                        failed.push((row.id, format!("never publishable: {e}")));
                    }
                    Err(source) => {
                        blocked.insert(key);
                        error.get_or_insert(RelayError::Publish {
                            subject: row.subject.clone(),
                            source,
                        });
                        break;
                    }
                }
            }
            for (row, ack) in in_flight {
                match ack.await {
                    Ok(ack) => {
                        let status = if ack.duplicate { "duplicate" } else { "ok" };
                        report.duplicates += usize::from(ack.duplicate);
                        telemetry::outbox_published(&row.subject, status);
                        acked.push(row.id);
                    }
                    Err(source) => {
                        telemetry::outbox_published(&row.subject, "error");
                        blocked.insert((row.order_key, row.subject.as_str()));
                        if rejected.is_none() && rejected_by_server(source.kind()) {
                            rejected = Some((row.id, source.to_string()));
                        }
                        error.get_or_insert(RelayError::Publish {
                            subject: row.subject.clone(),
                            source,
                        });
                    }
                }
            }
            if error.is_some()
                && !matches!(&error, Some(RelayError::Publish { source, .. }) if rejected_by_server(source.kind()))
            {
                // Unreachable server: stop; everything not acked stays pending.
                break;
            }
        }
        if self.settings.stall_after_publish && !acked.is_empty() {
            warn!(
                rows = acked.len(),
                "Relay stalling after publish (test fault)."
            );
            std::future::pending::<()>().await;
        }

        // Acked rows leave the outbox: JetStream is the record of what was
        // published (and deleting is far cheaper than updating wide rows).
        let lags: Vec<f64> = sqlx::query_scalar(
            "DELETE FROM outbox WHERE id = ANY($1) \
             RETURNING extract(epoch FROM clock_timestamp() - created_at)::float8",
        )
        .bind(&acked)
        .fetch_all(&mut *tx)
        .await?;
        for lag in &lags {
            telemetry::outbox_lag(*lag);
        }
        if let Some(sink) = &self.settings.lag_samples {
            sink.lock().unwrap_or_else(|e| e.into_inner()).extend(lags);
        }
        report.published = acked.len();
        for (id, reason) in &failed {
            sqlx::query(
                "UPDATE outbox SET failed_at = clock_timestamp(), attempts = attempts + 1, \
                 last_error = $2 WHERE id = $1",
            )
            .bind(id)
            .bind(reason)
            .execute(&mut *tx)
            .await?;
            let subject = rows
                .iter()
                .find(|r| r.id == *id)
                .map(|r| r.subject.as_str());
            telemetry::outbox_published(subject.unwrap_or("unknown"), "failed");
            warn!(outbox.id = id, reason = %reason, "Outbox row can never be published; marked failed.");
        }
        // A row the server keeps rejecting would stall every row behind it:
        // count its attempts and give up on it after a few.
        if let Some((id, reason)) = rejected {
            let gave_up: Option<String> = sqlx::query_scalar(
                "UPDATE outbox SET attempts = attempts + 1, last_error = $2, \
                 failed_at = CASE WHEN attempts + 1 >= $3 THEN clock_timestamp() END \
                 WHERE id = $1 RETURNING CASE WHEN failed_at IS NOT NULL THEN subject END",
            )
            .bind(id)
            .bind(&reason)
            .bind(MAX_PUBLISH_ATTEMPTS)
            .fetch_one(&mut *tx)
            .await?;
            if let Some(subject) = gave_up {
                telemetry::outbox_published(&subject, "failed");
                warn!(outbox.id = id, reason = %reason, "Outbox row rejected too often; marked failed.");
                report.failed += 1;
            }
        }
        report.failed += failed.len();
        tx.commit().await?;
        match error {
            Some(e) if report.published == 0 && report.failed == 0 => Err(e),
            Some(e) => {
                warn!(error = %e, "Relay batch interrupted; the rest stays pending.");
                report.interrupted = true;
                Ok(report)
            }
            None => Ok(report),
        }
    }

    /// Rows still waiting; also exported as the `outbox_backlog` gauge.
    pub async fn backlog(&self) -> Result<i64, sqlx::Error> {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE failed_at IS NULL")
            .fetch_one(&self.pool)
            .await?;
        telemetry::outbox_backlog(n);
        Ok(n)
    }

    /// Deletes inbox and idempotency records past retention, in bounded
    /// batches (published outbox rows are deleted on ack).
    pub async fn cleanup_once(&self) -> Result<u64, sqlx::Error> {
        let mut deleted = 0;
        for (sql, keep) in [
            (
                "DELETE FROM inbox WHERE ctid IN (SELECT ctid FROM inbox WHERE received_at < now() - make_interval(secs => $1) LIMIT 5000)",
                self.settings.inbox_retention,
            ),
            (
                "DELETE FROM idempotency WHERE ctid IN (SELECT ctid FROM idempotency WHERE created_at < now() - make_interval(secs => $1) LIMIT 5000)",
                self.settings.idempotency_retention,
            ),
        ] {
            deleted += sqlx::query(sql)
                .bind(keep.as_secs_f64())
                .execute(&self.pool)
                .await?
                .rows_affected();
        }
        Ok(deleted)
    }

    /// Runs until `shutdown` fires: woken by the orchestrator's and the
    /// workers' commits in this process, polling for other processes' rows, backing off while NATS or PostgreSQL fail.
    pub async fn run(self, wake: Arc<Notify>, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        let mut last_cleanup = tokio::time::Instant::now();
        let mut last_backlog = tokio::time::Instant::now();
        loop {
            let wait = match self.relay_once().await {
                Ok(r) if r.published + r.failed >= self.settings.batch as usize => Duration::ZERO,
                Ok(_) => {
                    backoff = Duration::from_millis(100);
                    self.settings.poll
                }
                Err(e) => {
                    warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "Relay cannot publish; backing off.");
                    let wait = backoff;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    wait
                }
            };
            if last_cleanup.elapsed() > Duration::from_secs(60) {
                last_cleanup = tokio::time::Instant::now();
                match self.cleanup_once().await {
                    Ok(n) if n > 0 => info!(rows = n, "Outbox cleanup."),
                    Ok(_) => {}
                    Err(e) => warn!(error = %e, "Outbox cleanup failed."),
                }
            }
            if last_backlog.elapsed() > Duration::from_secs(1) {
                last_backlog = tokio::time::Instant::now();
                if let Err(e) = self.backlog().await {
                    warn!(error = %e, "Cannot read the outbox backlog.");
                }
            }
            if wait.is_zero() {
                continue;
            }
            tokio::select! {
                _ = wake.notified() => {}
                _ = super::outbox::worker_commit() => {}
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }
}

/// The server refused this very message (as opposed to being unreachable).
fn rejected_by_server(kind: PublishErrorKind) -> bool {
    match kind {
        PublishErrorKind::Other
        | PublishErrorKind::WrongLastMessageId
        | PublishErrorKind::WrongLastSequence => true,
        PublishErrorKind::StreamNotFound
        | PublishErrorKind::TimedOut
        | PublishErrorKind::BrokenPipe
        | PublishErrorKind::MaxAckPending
        | PublishErrorKind::MaxPayloadExceeded => false,
    }
}

/// Splits a batch (in id order) into waves: wave n holds the n-th row of
/// every (case, subject), in id order.
fn waves(rows: &[Row_]) -> Vec<Vec<&Row_>> {
    let mut seen: HashMap<(Uuid, &str), usize> = HashMap::new();
    let mut waves: Vec<Vec<&Row_>> = Vec::new();
    for row in rows {
        let n = seen
            .entry((row.order_key, row.subject.as_str()))
            .or_insert(0);
        if waves.len() <= *n {
            waves.push(Vec::new());
        }
        waves[*n].push(row);
        *n += 1;
    }
    waves
}
