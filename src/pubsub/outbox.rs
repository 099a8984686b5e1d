//! Writing to the outbox: every producer calls this inside the transaction
//! that changes its own state, so the messages commit with it or not at all.

use std::sync::Arc;

use serde_json::json;
use sqlx::PgConnection;
use tokio::sync::Notify;
use uuid::Uuid;

use super::Envelope;

/// The outbox columns of `messages`, as arrays for one `UNNEST` insert.
pub struct Rows {
    pub ids: Vec<Uuid>,
    pub subjects: Vec<String>,
    pub payloads: Vec<String>,
}

impl Rows {
    pub fn of(messages: &[Envelope]) -> Rows {
        Rows {
            ids: messages.iter().map(|m| m.id).collect(),
            subjects: messages.iter().map(|m| m.kind.clone()).collect(),
            payloads: messages.iter().map(|m| json!(m).to_string()).collect(),
        }
    }
}

/// Appends `messages` (in order) in one statement. Their envelope ids are
/// fixed here, so a re-publish after a crash reuses them as `Nats-Msg-Id`.
pub async fn enqueue(
    conn: &mut PgConnection,
    case_id: Option<Uuid>,
    messages: &[Envelope],
    traceparent: &str,
) -> Result<(), sqlx::Error> {
    let rows = Rows::of(messages);
    sqlx::query(
        "INSERT INTO outbox (message_id, case_id, subject, payload, traceparent) \
         SELECT m, $1, s, p, $5 FROM UNNEST($2::uuid[], $3::text[], $4::text[]) AS t(m, s, p)",
    )
    .bind(case_id)
    .bind(rows.ids)
    .bind(rows.subjects)
    .bind(rows.payloads)
    .bind(traceparent)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Puts a worker's facts about one case in the outbox, continuing the trace
/// of the message that caused them (`cause`: that message's `traceparent`
/// header).
pub async fn enqueue_caused(
    conn: &mut PgConnection,
    case_id: Uuid,
    facts: &[Envelope],
    cause: Option<&str>,
) -> Result<(), sqlx::Error> {
    let trace = crate::telemetry::trace_id_from(cause);
    enqueue(conn, Some(case_id), facts, &traceparent(&trace)).await
}

/// A W3C `traceparent` for messages of the trace `trace_id`.
pub fn traceparent(trace_id: &str) -> String {
    let span = Uuid::new_v4().simple().to_string();
    format!("00-{trace_id}-{}-01", &span[..16])
}

/// Wakes this process's relay after a commit that wrote outbox rows, so a
/// message leaves at once instead of at the relay's fallback poll (which
/// still finds rows other processes committed). One handle per process,
/// cloned into every writer: the orchestrator, the workers, the API.
/// Wakes coalesce into one pass; correctness never depends on one.
#[derive(Debug, Clone, Default)]
pub struct CommitWake(Arc<Notify>);

impl CommitWake {
    pub fn wake(&self) {
        self.0.notify_one();
    }

    /// Resolves on the next `wake` (or at once for one already made).
    pub async fn woken(&self) {
        self.0.notified().await
    }
}
