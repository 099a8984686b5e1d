//! Loads the guard facts a move needs, inside the transition transaction.
//! Only the facts of the requested event are read, so moves without guards
//! cost no extra queries.

use sqlx::{PgConnection, Row};
use uuid::Uuid;

use super::request::{Origin, TransitionRequest};
use super::store::HumanApproval;
use crate::contract::{ChangePlan, DryRunDigest, PlanHash};
use crate::gatekeeper::policy::Policy;
use crate::model::Case;
use crate::workflow::{EventKind, ExecFact, FactRef, Facts, Judgement, PlanFact, ReplanFact};

pub struct Loaded {
    pub facts: Facts,
    plan_id: Option<Uuid>,
}

impl Loaded {
    /// The approval this request's person gives the current plan, to
    /// record when the decision says it counts.
    pub fn human_approval(&self, req: &TransitionRequest) -> Option<HumanApproval> {
        let (plan, plan_id) = (self.facts.plan.as_ref()?, self.plan_id?);
        let judgement = self.facts.judgement.as_ref()?;
        (judgement.plan_hash.as_ref() == Some(&plan.hash)).then(|| HumanApproval {
            plan_id,
            plan_hash: plan.hash.clone(),
            approver: req.actor.id.clone(),
            dryrun_digest: self.facts.dryrun.as_ref().map(|d| d.digest.clone()),
        })
    }

    /// The plan and the dry run an accepted `dryrun_*` fact makes current.
    pub fn dryrun_made_current(&self, req: &TransitionRequest) -> Option<(Uuid, DryRunDigest)> {
        use EventKind as E;
        if !matches!(req.event, E::DryrunDone | E::DryrunFailed) {
            return None;
        }
        Some((self.plan_id?, self.facts.dryrun.as_ref()?.digest.clone()))
    }
}

pub async fn load(
    conn: &mut PgConnection,
    case: &Case,
    req: &TransitionRequest,
    policy: &Policy,
) -> Result<Loaded, sqlx::Error> {
    use EventKind as E;
    let mut facts = Facts {
        reason: req.reason.clone(),
        park_reason: case.park_reason.clone(),
        ..Facts::default()
    };
    let mut plan_id = None;
    // A worker's fact, or a service's verdict over HTTP: about a plan (and,
    // for facts, a version) that must still be the case's. A person's
    // verdict is a judgement instead (its own guards, 422).
    let from_worker = matches!(req.origin, Origin::Message { .. })
        || (!req.actor.human && req.plan_hash.is_some());
    if from_worker {
        facts.fact = Some(FactRef {
            expected_version: req.expected_version,
            case_version: case.version,
            plan_hash: req.plan_hash.clone(),
        });
    }
    let names_plan = from_worker && req.plan_hash.is_some();
    let needs_plan = names_plan
        || match req.event {
            E::PlanReady
            | E::DryrunDone
            | E::DryrunFailed
            | E::GateApproved
            | E::GateVote
            | E::GateRejected
            | E::ExecDone
            | E::VerifyFailed => true,
            E::StartAnalysis
            | E::AnalysisDone
            | E::PlanFailed
            | E::ExecFailed
            | E::VerifyPass
            | E::Resume
            | E::Dismiss
            | E::Replan => false,
        };
    if needs_plan && let Some(row) = current_plan(conn, case.id).await? {
        let (id, plan, required, auto_rollback) = row;
        plan_id = Some(id);
        facts.required_approvers = required;
        facts.auto_rollback_allowed = auto_rollback;
        if req.event == E::GateApproved {
            facts.approvals = crate::store::approvals(&mut *conn, id).await?;
            facts.dryrun = crate::store::current_dryrun(&mut *conn, id)
                .await?
                .map(|d| d.fact());
            if !policy.freeze_windows.is_empty() {
                facts.freeze = active_freeze(conn, id, case, policy).await?;
            }
        }
        facts.plan = Some(plan);
    }
    if matches!(req.event, E::DryrunDone | E::DryrunFailed)
        && let Some(digest) = &req.dryrun_digest
    {
        facts.dryrun = crate::store::dryrun_named(&mut *conn, case.id, digest)
            .await?
            .map(|d| d.fact());
    }
    if req.actor.human && matches!(req.event, E::GateApproved | E::GateRejected) {
        facts.judgement = Some(Judgement {
            actor: req.actor.id.clone(),
            plan_hash: req.plan_hash.clone(),
            dryrun_digest: req.dryrun_digest.clone(),
        });
    }
    if req.event == E::ExecDone {
        // The latest run for this case version: a run of an older attempt
        // (an earlier visit to EXECUTING) never counts.
        let run: Option<(PlanHash, String)> = sqlx::query_as(
            "SELECT plan_hash, status FROM exec_run \
             WHERE case_id = $1 AND kind = 'run' AND case_version = $2 \
             ORDER BY started_at DESC LIMIT 1",
        )
        .bind(case.id)
        .bind(case.version)
        .fetch_optional(&mut *conn)
        .await?;
        facts.exec = run.map(|(plan_hash, status)| ExecFact {
            plan_hash,
            all_steps_succeeded: status == "done",
        });
    }
    if matches!(req.event, E::VerifyPass | E::VerifyFailed) {
        let outcome: Option<String> = sqlx::query_scalar(
            "SELECT outcome FROM verify_result WHERE case_id = $1 AND case_version = $2 \
             ORDER BY at DESC LIMIT 1",
        )
        .bind(case.id)
        .bind(case.version)
        .fetch_optional(&mut *conn)
        .await?;
        facts.verify_passed = outcome.map(|o| o == "pass");
    }
    if req.event == E::Replan {
        facts.replan = Some(replan_fact(conn, case, policy).await?);
    }
    Ok(Loaded { facts, plan_id })
}

/// The automatic re-plans the case has had, the policy's limit, and
/// whether its current plan's newest verification failed and a rollback of
/// that plan, issued at the case's current version (this very park),
/// finished.
async fn replan_fact(
    conn: &mut PgConnection,
    case: &Case,
    policy: &Policy,
) -> Result<ReplanFact, sqlx::Error> {
    let (done, rolled_back): (i64, bool) = sqlx::query_as(
        "WITH p AS (SELECT plan_hash FROM plan_proposed WHERE case_id = $1 ORDER BY seq DESC LIMIT 1) \
         SELECT (SELECT count(*) FROM case_timeline WHERE case_id = $1 AND kind = 'transition' \
                   AND event = 'replan'), \
                COALESCE((SELECT v.outcome <> 'pass' FROM verify_result v, p \
                            WHERE v.case_id = $1 AND v.plan_hash = p.plan_hash ORDER BY v.at DESC LIMIT 1), false) \
                AND EXISTS (SELECT 1 FROM exec_run r, p WHERE r.case_id = $1 AND r.plan_hash = p.plan_hash \
                              AND r.kind = 'rollback' AND r.status = 'rolled_back' \
                              AND r.case_version = $2)",
    )
    .bind(case.id)
    .bind(case.version)
    .fetch_one(&mut *conn)
    .await?;
    Ok(ReplanFact {
        limit: policy.replan.max_per_case,
        done: u32::try_from(done).unwrap_or(u32::MAX),
        rolled_back_after_failed_verification: rolled_back,
    })
}

async fn current_plan(
    conn: &mut PgConnection,
    case_id: Uuid,
) -> Result<Option<(Uuid, PlanFact, Option<u8>, bool)>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT id, plan_hash, author, schema_valid, complete, required_approvers, \
         COALESCE(gate_auto_rollback, false) AS auto_rollback, has_rollback, \
         dryrun_digest, gate_dryrun_digest \
         FROM plan_proposed WHERE case_id = $1 ORDER BY seq DESC LIMIT 1",
    )
    .bind(case_id)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let required: Option<i16> = row.try_get("required_approvers")?;
    let current: Option<DryRunDigest> = row.try_get("dryrun_digest")?;
    let judged: Option<DryRunDigest> = row.try_get("gate_dryrun_digest")?;
    Ok(Some((
        row.try_get("id")?,
        PlanFact {
            hash: row.try_get("plan_hash")?,
            author: row.try_get("author")?,
            schema_valid: row.try_get("schema_valid")?,
            complete: row.try_get("complete")?,
            has_rollback: row.try_get("has_rollback")?,
        },
        crate::store::quorum_on_current_dryrun(required, judged.as_ref(), current.as_ref()),
        row.try_get("auto_rollback")?,
    )))
}

/// The change freeze covering the plan now, unless the gate approved it as
/// a break-glass override. The plan's environments come from the
/// operator's targets file, not from what the plan says.
async fn active_freeze(
    conn: &mut PgConnection,
    plan_id: Uuid,
    case: &Case,
    policy: &Policy,
) -> Result<Option<String>, sqlx::Error> {
    let (plan, verdict): (serde_json::Value, Option<String>) =
        sqlx::query_as("SELECT plan, gate_verdict FROM plan_proposed WHERE id = $1")
            .bind(plan_id)
            .fetch_one(&mut *conn)
            .await?;
    if verdict.as_deref() == Some("break_glass") {
        return Ok(None);
    }
    let plan = ChangePlan::from_stored(&plan).ok();
    Ok(policy
        .active_freeze(plan.as_ref(), case.tenant.as_str(), chrono::Utc::now())
        .map(|w| w.name.clone()))
}
