//! The inbox: message ids a consumer has applied, claimed in the same
//! transaction as the effect, so a redelivered message has no second effect.

use sqlx::PgConnection;
use uuid::Uuid;

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
