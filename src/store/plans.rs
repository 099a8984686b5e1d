//! Plan rows several roles read: the approvals of a plan and its dry runs
//! (the orchestrator judges the gate with them, the executor checks them
//! again, the gatekeeper judges the latest dry run).

use sqlx::Row;
use uuid::Uuid;

use crate::contract::fact::DryRunOutcome;
use crate::contract::{DryRunDigest, PlanHash};
use crate::workflow::{ApprovalFact, ApprovalKind, DryRunFact, DryRunVerdict};

/// A stored dry run as the guards and the gate read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredDryRun {
    pub plan_hash: PlanHash,
    pub digest: DryRunDigest,
    pub outcome: DryRunOutcome,
}

impl StoredDryRun {
    pub fn fact(&self) -> DryRunFact {
        DryRunFact {
            plan_hash: self.plan_hash.clone(),
            digest: self.digest.clone(),
            verdict: match self.outcome {
                DryRunOutcome::Ok | DryRunOutcome::Unavailable => DryRunVerdict::Passed,
                DryRunOutcome::Failed => DryRunVerdict::Failed,
            },
        }
    }
}

fn stored_dryrun(row: &sqlx::postgres::PgRow) -> Result<StoredDryRun, sqlx::Error> {
    let outcome: String = row.try_get("outcome")?;
    Ok(StoredDryRun {
        plan_hash: row.try_get("plan_hash")?,
        digest: row.try_get("digest")?,
        outcome: outcome
            .parse()
            .map_err(|e| sqlx::Error::Decode(format!("plan_dryrun.outcome: {e}").into()))?,
    })
}

/// The plan's current dry run: the one the orchestrator last accepted
/// (`plan_proposed.dryrun_digest`, set with `dryrun_done` / `dryrun_failed`).
/// Approvals bind to it; a rehearsal whose fact came too late never is.
pub async fn current_dryrun<'e>(
    db: impl sqlx::PgExecutor<'e>,
    plan_id: Uuid,
) -> Result<Option<StoredDryRun>, sqlx::Error> {
    sqlx::query(
        "SELECT d.plan_hash, d.digest, d.outcome FROM plan_proposed p \
         JOIN plan_dryrun d ON d.plan_id = p.id AND d.digest = p.dryrun_digest WHERE p.id = $1",
    )
    .bind(plan_id)
    .fetch_optional(db)
    .await?
    .as_ref()
    .map(stored_dryrun)
    .transpose()
}

/// Makes the dry run with `digest` the plan's current one (in the
/// transaction that accepts its fact).
pub async fn make_dryrun_current(
    conn: &mut sqlx::PgConnection,
    plan_id: Uuid,
    digest: &DryRunDigest,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE plan_proposed SET dryrun_digest = $2 WHERE id = $1")
        .bind(plan_id)
        .bind(digest)
        .execute(conn)
        .await?;
    Ok(())
}

/// The case's stored dry run with this digest (a `dryrun_*` fact names it).
pub async fn dryrun_named<'e>(
    db: impl sqlx::PgExecutor<'e>,
    case_id: Uuid,
    digest: &DryRunDigest,
) -> Result<Option<StoredDryRun>, sqlx::Error> {
    sqlx::query(
        "SELECT plan_hash, digest, outcome FROM plan_dryrun WHERE case_id = $1 AND digest = $2 \
         ORDER BY seq DESC LIMIT 1",
    )
    .bind(case_id)
    .bind(digest)
    .fetch_optional(db)
    .await?
    .as_ref()
    .map(stored_dryrun)
    .transpose()
}

/// The approvals recorded for a plan, each bound to the hash it judged.
pub async fn approvals<'e>(
    db: impl sqlx::PgExecutor<'e>,
    plan_id: Uuid,
) -> Result<Vec<ApprovalFact>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT plan_hash, approver, kind, dryrun_digest FROM plan_approved WHERE plan_id = $1",
    )
    .bind(plan_id)
    .fetch_all(db)
    .await?;
    rows.iter()
        .map(|r| {
            let kind: String = r.try_get("kind")?;
            Ok(ApprovalFact {
                plan_hash: r.try_get("plan_hash")?,
                approver: r.try_get("approver")?,
                dryrun_digest: r.try_get("dryrun_digest")?,
                kind: if kind == "auto" {
                    ApprovalKind::Auto
                } else {
                    ApprovalKind::Human
                },
            })
        })
        .collect()
}

/// The gate's quorum, when its decision judged the plan's current dry run
/// (`judged`, `current`: `plan_proposed.gate_dryrun_digest` and
/// `.dryrun_digest`); after a new dry run nobody can open the gate until
/// the gatekeeper has judged that one.
pub fn quorum_on_current_dryrun(
    stored: Option<i16>,
    judged: Option<&DryRunDigest>,
    current: Option<&DryRunDigest>,
) -> Option<u8> {
    if judged == current {
        required_approvers(stored)
    } else {
        None
    }
}

/// The gate's quorum as stored (`smallint`). A value outside `u8` saturates so
/// an out-of-range row demands more approvers than exist rather than fewer.
pub fn required_approvers(stored: Option<i16>) -> Option<u8> {
    stored.map(|r| u8::try_from(r).unwrap_or(u8::MAX))
}
