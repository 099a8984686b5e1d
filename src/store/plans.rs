//! Plan rows several roles read: the approvals of a plan (the orchestrator
//! judges the gate with them, the executor checks them again).

use sqlx::Row;
use uuid::Uuid;

use crate::workflow::{ApprovalFact, ApprovalKind};

/// The approvals recorded for a plan, each bound to the hash it judged.
pub async fn approvals<'e>(
    db: impl sqlx::PgExecutor<'e>,
    plan_id: Uuid,
) -> Result<Vec<ApprovalFact>, sqlx::Error> {
    let rows =
        sqlx::query("SELECT plan_hash, approver, kind FROM plan_approved WHERE plan_id = $1")
            .bind(plan_id)
            .fetch_all(db)
            .await?;
    rows.iter()
        .map(|r| {
            let kind: String = r.try_get("kind")?;
            Ok(ApprovalFact {
                plan_hash: r.try_get("plan_hash")?,
                approver: r.try_get("approver")?,
                kind: if kind == "auto" {
                    ApprovalKind::Auto
                } else {
                    ApprovalKind::Human
                },
            })
        })
        .collect()
}

/// The gate's quorum as stored (`smallint`). A value outside `u8` saturates so
/// an out-of-range row demands more approvers than exist rather than fewer.
pub fn required_approvers(stored: Option<i16>) -> Option<u8> {
    stored.map(|r| u8::try_from(r).unwrap_or(u8::MAX))
}
