//! The outbox relay: publishes committed outbox rows to JetStream and marks
//! them published only after the server's ack.
//!
//! Guarantees (see `docs/events.md`):
//! - at least once: a row is marked only after its ack; a crash between ack
//!   and mark re-publishes with the same `Nats-Msg-Id`, which JetStream drops
//!   inside its duplicate window;
//! - per-case order: a relay claims a case's rows only while holding a
//!   transaction-scoped advisory lock on that case, and always its oldest
//!   waiting rows (see `claim`), so one case is published by one relay at a
//!   time, in id order; within a batch a case's next row is sent only after
//!   the previous one was acked, so a failed ack cannot let a later row
//!   overtake an earlier one;
//! - a row that can never be published (larger than the server's max
//!   payload) moves to `outbox_failed` with the reason and does not block the rest.
//!
//! It must not decide anything about cases: it only moves rows.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use async_nats::jetstream::publish::PublishAck;
use async_nats::jetstream::{self, message::PublishMessage};
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use sqlx::postgres::PgConnectOptions;
use sqlx::{AssertSqlSafe, Connection, FromRow, PgConnection, PgPool};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use uuid::Uuid;

use super::outbox::CommitWake;
use crate::telemetry;

/// A row the server rejects this many times moves to `outbox_failed` (poison).
pub const MAX_PUBLISH_ATTEMPTS: i32 = 5;

/// Namespace of the advisory locks that give one relay a case at a time.
const CASE_LOCK_NAMESPACE: i32 = 0x6f70_6c70; // "oplp"

#[derive(Debug, Clone)]
pub struct RelaySettings {
    /// Rows claimed per transaction.
    pub batch: i64,
    /// Batches in flight at once while a backlog lasts (1 = no overlap).
    /// Each holds other cases, so their database work overlaps the others'
    /// publishing and more cases have a message in flight.
    pub loops: usize,
    /// Fallback poll for rows committed by other processes.
    pub poll: Duration,
    /// After a commit's wake-up, wait this long for more commits, so that
    /// one batch takes them together: at a high commit rate a batch of one
    /// or two rows costs the relay as much as one of ten, and the CPU it
    /// takes is the transitions' (see docs/BENCHMARKS.md).
    pub linger: Duration,
    /// Idempotency keys are deleted after this long (DESIGN §3: 7 days).
    pub idempotency_retention: Duration,
    /// Inbox records are deleted after this long; keep it above the streams'
    /// max age, or a re-created consumer could apply an old message again.
    pub inbox_retention: Duration,
    /// How long a publish waits for JetStream's ack. Acks take
    /// milliseconds (p99 20 ms at 90 % of the peak); the wait only matters
    /// when the stream's leader is gone (async-nats' default is 5 s). A
    /// publish acked after it gave up is sent again with the same
    /// `Nats-Msg-Id` and dropped as a duplicate.
    pub ack_timeout: Duration,
    /// `VACUUM outbox` after this many rows were deleted (0: leave it to
    /// autovacuum). The claim walks the primary key from its start, and
    /// every deleted row stays there as a dead index entry until a vacuum:
    /// at thousands of rows a second, autovacuum's round (a minute at
    /// best) lets each claim walk hundreds of thousands of them, and the
    /// claims, not the publishing, become the relay's main cost.
    pub vacuum_after_rows: u64,
    /// On shutdown, how long the relay keeps publishing what is already
    /// in the outbox (the workers' last commits) before it stops; rows
    /// left then wait for the next relay.
    pub flush_on_stop: Duration,
    /// Where tests and benchmarks watch or disturb the relay; production
    /// runs with `NoHooks`.
    pub hooks: Arc<dyn RelayHooks>,
}

/// Points where a test or a benchmark sees into the relay, injected through
/// `RelaySettings::hooks`.
pub trait RelayHooks: Send + Sync + std::fmt::Debug {
    /// After a batch's acks, before their rows are deleted: `true` stalls
    /// the relay there for good (the crash window a test needs to hold open).
    fn stall_after_publish(&self) -> bool {
        false
    }

    /// Every acked row, as the relay measured it. Called per row on the
    /// relay's hot path: takes references, so the production no-op costs
    /// nothing.
    fn acked(&self, _subject: &str, _payload: &str, _acked_at: Instant, _lag: Duration) {}
}

#[derive(Debug)]
pub struct NoHooks;

impl RelayHooks for NoHooks {}

/// `OPSLOOP_FAULT_RELAY_STALL_AFTER_PUBLISH=1`: a test starts the real
/// binary with it to find out what a relay that dies between its acks and
/// its delete leaves behind.
#[derive(Debug)]
pub struct StallAfterPublish;

impl RelayHooks for StallAfterPublish {
    fn stall_after_publish(&self) -> bool {
        true
    }
}

impl Default for RelaySettings {
    fn default() -> Self {
        RelaySettings {
            batch: 1024,
            loops: 3,
            poll: Duration::from_millis(250),
            linger: Duration::from_millis(1),
            idempotency_retention: Duration::from_secs(7 * 24 * 3600),
            inbox_retention: Duration::from_secs(8 * 24 * 3600),
            ack_timeout: Duration::from_secs(2),
            vacuum_after_rows: 20_000,
            flush_on_stop: Duration::from_secs(5),
            hooks: Arc::new(NoHooks),
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
        source: PublishError,
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

#[derive(FromRow)]
struct Row_ {
    id: i64,
    message_id: Uuid,
    /// The case, or the message itself when it belongs to no case.
    order_key: Uuid,
    subject: String,
    payload: String,
    traceparent: Option<String>,
    /// Seconds since its insert when it was claimed (database clock).
    age: f64,
}

/// An ack on its way, with the row it is for.
type InFlight<'r> = BoxFuture<'r, (&'r Row_, Result<PublishAck, PublishError>)>;

/// What publishing one batch gave.
#[derive(Default)]
struct Published<'r> {
    report: RelayReport,
    /// With the instant each ack was taken.
    acked: Vec<(&'r Row_, Instant)>,
    /// Rows that can never be published, with the reason.
    failed: Vec<(&'r Row_, String)>,
    /// The first row the server refused (its attempts are counted).
    rejected: Option<(&'r Row_, String)>,
    /// The first error; rows behind it stay pending.
    error: Option<RelayError>,
}

#[derive(Clone)]
pub struct Relay {
    pool: PgPool,
    /// Rows deleted since the last `VACUUM outbox`, and whether one runs.
    deleted: Arc<std::sync::atomic::AtomicU64>,
    vacuuming: Arc<std::sync::atomic::AtomicBool>,
    /// For the run loops' own connections.
    options: PgConnectOptions,
    js: jetstream::Context,
    client: async_nats::Client,
    settings: RelaySettings,
}

impl Relay {
    pub fn new(pool: PgPool, client: async_nats::Client, settings: RelaySettings) -> Self {
        Relay {
            // Named, so that an operator can tell the relay's connections
            // (and its open transactions) in pg_stat_activity.
            options: (*pool.connect_options())
                .clone()
                .application_name("opsloop-relay"),
            pool,
            deleted: Arc::default(),
            vacuuming: Arc::default(),
            js: {
                let mut js = jetstream::new(client.clone());
                js.set_timeout(settings.ack_timeout);
                js
            },
            client,
            settings,
        }
    }

    /// Claims one batch, publishes it, marks what was acked, on a connection
    /// of its own (the run loops keep theirs, see `Link`): a pooled one could
    /// go back to the pool inside the cycle's transaction if this future
    /// were dropped.
    pub async fn relay_once(&self) -> Result<RelayReport, RelayError> {
        let mut link = Link::new(self, None);
        let result = link.relay_once().await;
        link.close().await;
        result
    }

    /// One batch in two round trips to PostgreSQL: `BEGIN` and the claim in
    /// one, the delete of the acked rows and `COMMIT` in the other. Only the
    /// relay holds a transaction across network calls: small batches,
    /// bounded waits. sqlx does not know about this transaction, so after a
    /// `Database` error the caller must drop `conn`.
    ///
    /// A full claim wakes the helper loops waiting on `backlog` at once, so
    /// that their claims overlap this batch's publishing.
    async fn cycle(
        &self,
        conn: &mut PgConnection,
        backlog: Option<&Notify>,
    ) -> Result<RelayReport, RelayError> {
        if self.client.connection_state() != async_nats::connection::State::Connected {
            return Err(RelayError::NotConnected);
        }
        let rows = claim(conn, self.settings.batch).await?;
        let claimed = Instant::now();
        if let Some(backlog) = backlog
            && self.fills_batch(rows.len())
        {
            backlog.notify_waiters();
        }
        if rows.is_empty() {
            sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await?;
            return Ok(RelayReport::default());
        }

        let Published {
            mut report,
            acked,
            failed,
            rejected,
            error,
        } = self.publish(&rows).await;
        if !acked.is_empty() && self.settings.hooks.stall_after_publish() {
            warn!(
                rows = acked.len(),
                "Relay stalling after publish (test fault)."
            );
            std::future::pending::<()>().await;
        }

        for (row, reason) in &failed {
            give_up(conn, row.id, reason).await?;
            telemetry::outbox_published(&row.subject, "failed");
            warn!(outbox.id = row.id, reason = %reason, "Outbox row can never be published; moved to outbox_failed.");
        }
        // A row the server keeps rejecting would stall every row behind it:
        // count its attempts and give up on it after a few.
        if let Some((row, reason)) = rejected {
            let counted = sqlx::query(
                "UPDATE outbox SET attempts = attempts + 1, last_error = $2 \
                 WHERE id = $1 AND attempts + 1 < $3",
            )
            .bind(row.id)
            .bind(&reason)
            .bind(MAX_PUBLISH_ATTEMPTS)
            .execute(&mut *conn)
            .await?
            .rows_affected();
            let gave_up = counted == 0;
            if gave_up {
                give_up(conn, row.id, &reason).await?;
            }
            if gave_up {
                telemetry::outbox_published(&row.subject, "failed");
                warn!(outbox.id = row.id, reason = %reason, "Outbox row rejected too often; moved to outbox_failed.");
                report.failed += 1;
            }
        }
        report.failed += failed.len();
        // Acked rows leave the outbox: JetStream is the record of what was
        // published (and deleting is far cheaper than updating wide rows).
        sqlx::raw_sql(AssertSqlSafe(delete_and_commit(&acked)))
            .execute(&mut *conn)
            .await?;
        report.published = acked.len();
        self.deleted.fetch_add(
            (acked.len() + report.failed) as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        self.record_lags(&acked, claimed);
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

    /// Insert -> ack lag: the row's age at the claim (database clock) plus
    /// the time from the claim to its ack (this process's clock), so no
    /// clock is shared between the two hosts.
    fn record_lags(&self, acked: &[(&Row_, Instant)], claimed: Instant) {
        for (row, acked_at) in acked {
            let lag = Duration::from_secs_f64(row.age.max(0.0)) + acked_at.duration_since(claimed);
            telemetry::outbox_lag(lag.as_secs_f64());
            self.settings
                .hooks
                .acked(&row.subject, &row.payload, *acked_at, lag);
        }
    }

    /// Publishes `rows` (id order) with one row per (case, subject) in
    /// flight: a case's next row goes out as soon as the previous one is
    /// acked, so a failed ack can never let a later row of that case
    /// overtake it in the stream, and rows of different cases never wait
    /// for each other.
    async fn publish<'r>(&self, rows: &'r [Row_]) -> Published<'r> {
        let mut out = Published::default();
        let mut queues: HashMap<(Uuid, &'r str), VecDeque<&'r Row_>> = HashMap::new();
        for row in rows {
            let key = (row.order_key, row.subject.as_str());
            queues.entry(key).or_default().push_back(row);
        }
        let keys: Vec<_> = queues.keys().copied().collect();
        let mut in_flight = FuturesUnordered::new();
        // Sending stops for good once the server is unreachable; what is in
        // flight is still collected.
        let mut sending = true;
        for key in keys {
            if !sending {
                break;
            }
            sending = self
                .send_next(key, &mut queues, &mut in_flight, &mut out)
                .await;
        }
        while let Some((row, ack)) = in_flight.next().await {
            match ack {
                Ok(ack) => {
                    let status = if ack.duplicate { "duplicate" } else { "ok" };
                    out.report.duplicates += usize::from(ack.duplicate);
                    telemetry::outbox_published(&row.subject, status);
                    out.acked.push((row, Instant::now()));
                    if sending {
                        let key = (row.order_key, row.subject.as_str());
                        sending = self
                            .send_next(key, &mut queues, &mut in_flight, &mut out)
                            .await;
                    }
                }
                Err(source) => {
                    telemetry::outbox_published(&row.subject, "error");
                    let by_server = rejected_by_server(source.kind());
                    if by_server && out.rejected.is_none() {
                        out.rejected = Some((row, source.to_string()));
                    }
                    // The case's later rows stay pending behind this one.
                    out.error.get_or_insert(RelayError::Publish {
                        subject: row.subject.clone(),
                        source,
                    });
                    sending &= by_server;
                }
            }
        }
        out
    }

    /// Sends the next row of `key`, skipping rows that can never be
    /// published. Returns false when the server is unreachable.
    async fn send_next<'r>(
        &self,
        key: (Uuid, &'r str),
        queues: &mut HashMap<(Uuid, &'r str), VecDeque<&'r Row_>>,
        in_flight: &mut FuturesUnordered<InFlight<'r>>,
        out: &mut Published<'r>,
    ) -> bool {
        let Some(queue) = queues.get_mut(&key) else {
            return true;
        };
        while let Some(row) = queue.pop_front() {
            let publish = message(&row.payload, row.traceparent.as_deref(), row.message_id);
            match self.js.send_publish(row.subject.clone(), publish).await {
                Ok(ack) => {
                    in_flight.push(Box::pin(async move { (row, ack.await) }));
                    return true;
                }
                Err(e) if e.kind() == PublishErrorKind::MaxPayloadExceeded => {
                    out.failed.push((row, format!("never publishable: {e}")));
                }
                Err(source) => {
                    out.error.get_or_insert(RelayError::Publish {
                        subject: row.subject.clone(),
                        source,
                    });
                    return false;
                }
            }
        }
        true
    }

    /// Rows still waiting; also exported as the `outbox_backlog` gauge.
    pub async fn backlog(&self) -> Result<i64, sqlx::Error> {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
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
    /// workers' commits in this process, polling for other processes' rows,
    /// backing off while NATS or PostgreSQL fail. While batches come back
    /// full (a backlog), `loops - 1` helpers drain alongside.
    pub async fn run(self, wake: CommitWake, shutdown: CancellationToken) {
        let backlog = Arc::new(Notify::new());
        let helpers: Vec<_> = (1..self.settings.loops.max(1))
            .map(|_| tokio::spawn(self.clone().help(backlog.clone(), shutdown.clone())))
            .collect();
        let mut link = Link::new(&self, Some(backlog.clone()));
        let mut backoff = Duration::from_millis(100);
        let mut last_cleanup = tokio::time::Instant::now();
        let mut last_backlog = tokio::time::Instant::now();
        loop {
            let wait = match link.relay_once().await {
                Ok(r) if self.full(&r) => Duration::ZERO,
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
            self.vacuum_if_due();
            if last_backlog.elapsed() > Duration::from_secs(1) {
                last_backlog = tokio::time::Instant::now();
                if let Err(e) = self.backlog().await {
                    warn!(error = %e, "Cannot read the outbox backlog.");
                }
            }
            if shutdown.is_cancelled() {
                break;
            }
            if wait.is_zero() {
                continue;
            }
            let woken = tokio::select! {
                _ = wake.woken() => true,
                _ = tokio::time::sleep(wait) => false,
                _ = shutdown.cancelled() => break,
            };
            if woken && !self.settings.linger.is_zero() {
                tokio::time::sleep(self.settings.linger).await;
            }
        }
        for helper in helpers {
            let _ = helper.await;
        }
        self.flush(&mut link).await;
        link.close().await;
    }

    /// Starts a `VACUUM outbox` in the background once enough rows were
    /// deleted (see `RelaySettings::vacuum_after_rows`), one at a time; it
    /// blocks no insert, claim or delete.
    fn vacuum_if_due(&self) {
        use std::sync::atomic::Ordering;
        let after = self.settings.vacuum_after_rows;
        if after == 0 || self.deleted.load(Ordering::Relaxed) < after {
            return;
        }
        if self.vacuuming.swap(true, Ordering::AcqRel) {
            return;
        }
        self.deleted.store(0, Ordering::Relaxed);
        let (pool, vacuuming) = (self.pool.clone(), self.vacuuming.clone());
        tokio::spawn(async move {
            // No truncation: cutting the empty tail takes an ACCESS
            // EXCLUSIVE lock, which would stall every transition's outbox
            // insert (and is replayed on standbys).
            if let Err(e) = sqlx::query("VACUUM (SKIP_LOCKED, TRUNCATE false) outbox")
                .execute(&pool)
                .await
            {
                warn!(error = %e, "VACUUM outbox failed; autovacuum will do it.");
            }
            vacuuming.store(false, Ordering::Release);
        });
    }

    /// Publishes the rows waiting now, until a batch comes back empty, an
    /// error, or `flush_on_stop` ends.
    async fn flush(&self, link: &mut Link) {
        let until = tokio::time::Instant::now() + self.settings.flush_on_stop;
        let mut published = 0;
        loop {
            match tokio::time::timeout_at(until, link.relay_once()).await {
                Ok(Ok(r)) if r.published + r.failed > 0 => published += r.published,
                Ok(Ok(_)) => break,
                Ok(Err(e)) => {
                    warn!(error = %e, "Stopping: cannot publish the outbox; its rows wait for the next relay.");
                    break;
                }
                Err(_) => {
                    warn!(
                        "Stopping: the outbox was not drained in time; its rows wait for the next relay."
                    );
                    break;
                }
            }
        }
        if published > 0 {
            info!(published, "Stopping: published the outbox's last rows.");
        }
    }

    /// A helper loop: asleep until a loop claims a full batch (a backlog),
    /// then drains alongside until a batch comes back short. Idle helpers
    /// cost nothing, so under a light load one loop takes every commit's
    /// rows in as few transactions as it can.
    async fn help(self, backlog: Arc<Notify>, shutdown: CancellationToken) {
        let mut link = Link::new(&self, Some(backlog.clone()));
        loop {
            tokio::select! {
                _ = backlog.notified() => {}
                _ = shutdown.cancelled() => break,
            }
            while !shutdown.is_cancelled() {
                match link.relay_once().await {
                    Ok(r) if self.full(&r) => {}
                    Ok(_) => break,
                    // The main loop reports and backs off.
                    Err(_) => break,
                }
            }
        }
        link.close().await;
    }

    fn full(&self, r: &RelayReport) -> bool {
        self.fills_batch(r.published + r.failed)
    }

    fn fills_batch(&self, rows: usize) -> bool {
        rows >= usize::try_from(self.settings.batch).unwrap_or(usize::MAX)
    }
}

/// A run loop's own connection, outside any pool: a pool pings each
/// connection before handing it out or when it comes back, a round trip as
/// dear as a third of a small batch's. A database error drops it, and with
/// it any transaction the cycle left open and that transaction's case locks.
struct Link {
    relay: Relay,
    conn: Option<PgConnection>,
    /// Where the helper loops wait for a backlog.
    backlog: Option<Arc<Notify>>,
}

impl Link {
    fn new(relay: &Relay, backlog: Option<Arc<Notify>>) -> Self {
        Link {
            relay: relay.clone(),
            conn: None,
            backlog,
        }
    }

    async fn relay_once(&mut self) -> Result<RelayReport, RelayError> {
        let mut conn = match self.conn.take() {
            Some(conn) => conn,
            None => PgConnection::connect_with(&self.relay.options).await?,
        };
        let result = self.relay.cycle(&mut conn, self.backlog.as_deref()).await;
        if !matches!(result, Err(RelayError::Database(_))) {
            self.conn = Some(conn);
        }
        result
    }

    async fn close(&mut self) {
        if let Some(conn) = self.conn.take() {
            let _ = conn.close().await;
        }
    }
}

/// Opens the cycle's transaction and claims up to about `batch` of the
/// oldest waiting rows, in id order, with every waiting row up to the
/// cut-off of each case claimed, in one round trip: `BEGIN` and a call of
/// `outbox_claim` (migrations 11 and 12, where its two statements and why
/// they are two are explained) sent as one simple query, as sqlx would send
/// `BEGIN` on its own. No row locks: the case locks it takes are
/// transaction-scoped advisory locks, and the second statement's snapshot,
/// taken after they were granted, sees every delete of the case's previous
/// holder, so a later row of a case is never claimed without the earlier
/// ones. It also turns off `synchronous_commit` for this transaction.
async fn claim(conn: &mut PgConnection, batch: i64) -> Result<Vec<Row_>, sqlx::Error> {
    // Both are integers: nothing here can carry SQL.
    let sql = format!(
        "BEGIN; SELECT id, message_id, order_key, subject, payload, traceparent, age \
         FROM outbox_claim({batch}, {CASE_LOCK_NAMESPACE})"
    );
    sqlx::raw_sql(AssertSqlSafe(sql))
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(Row_::from_row)
        .collect()
}

/// Moves a row that will never be published to `outbox_failed` (with its
/// attempts and the last error, for the operator): the outbox holds only
/// rows that wait, and the case's later rows go on.
async fn give_up(conn: &mut PgConnection, id: i64, reason: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "WITH gone AS (DELETE FROM outbox WHERE id = $1 RETURNING *) \
         INSERT INTO outbox_failed (id, message_id, case_id, subject, payload, traceparent, \
                                    created_at, attempts, last_error) \
         SELECT id, message_id, case_id, subject, payload, traceparent, created_at, \
                attempts + 1, $2 FROM gone",
    )
    .bind(id)
    .bind(reason)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The JetStream message for an outbox row: its envelope, its
/// `traceparent` header, and its id as `Nats-Msg-Id` (JetStream's
/// de-duplication key). Public so that bench_outbox's raw baseline sends
/// exactly what the relay sends.
pub fn message(payload: &str, traceparent: Option<&str>, id: Uuid) -> PublishMessage {
    let mut headers = HeaderMap::new();
    if let Some(tp) = traceparent {
        headers.insert("traceparent", tp);
    }
    PublishMessage::build()
        .payload(payload.to_owned().into())
        .headers(headers)
        .message_id(id.to_string())
}

/// Deletes the acked rows and commits, in one simple query (ids are
/// integers: nothing here can carry SQL).
fn delete_and_commit(acked: &[(&Row_, Instant)]) -> String {
    if acked.is_empty() {
        return "COMMIT".into();
    }
    let mut sql = String::from("DELETE FROM outbox WHERE id = ANY('{");
    for (i, (row, _)) in acked.iter().enumerate() {
        let sep = if i == 0 { "" } else { "," };
        let _ = write!(sql, "{sep}{}", row.id);
    }
    sql.push_str("}'::bigint[]); COMMIT");
    sql
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
