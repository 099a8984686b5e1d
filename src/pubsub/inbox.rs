//! The inbox: message ids a consumer has applied, claimed in the same
//! transaction as the effect, so a redelivered message has no second effect.

use sqlx::PgConnection;
use uuid::Uuid;

use super::consumer::{DeadReason, Disposition};
use crate::model::Case;
use crate::store::lock_case;
use crate::telemetry;

/// `false` when `consumer` already applied `message_id`. A concurrent twin
/// blocks on the primary key until this transaction ends.
pub async fn claim(
    conn: &mut PgConnection,
    consumer: &str,
    message_id: Uuid,
    subject: &str,
    case_id: Uuid,
) -> Result<bool, sqlx::Error> {
    let rows = sqlx::query(
        "INSERT INTO inbox (consumer, message_id, subject, case_id) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (consumer, message_id) DO NOTHING",
    )
    .bind(consumer)
    .bind(message_id)
    .bind(subject)
    .bind(case_id)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok(rows == 1)
}

/// A worker's first step for a command about a case: claim the message,
/// then lock the case. `Err(disposition)` when there is nothing to do (a
/// duplicate) or nothing can be done (an unknown case): the caller returns
/// it and drops the transaction, which holds nothing worth keeping.
pub async fn claim_case(
    conn: &mut PgConnection,
    consumer: &str,
    message_id: Uuid,
    subject: &str,
    case_id: Uuid,
) -> Result<Result<Case, Disposition>, sqlx::Error> {
    if !claim(conn, consumer, message_id, subject, case_id).await? {
        telemetry::inbox_dedup(consumer);
        return Ok(Err(Disposition::Done));
    }
    Ok(lock_case(conn, case_id).await?.ok_or_else(|| {
        Disposition::DeadLetter(
            DeadReason::UnknownCase,
            format!("case {case_id} does not exist"),
        )
    }))
}
