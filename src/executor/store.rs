//! The executor's rows: runs, steps, target locks, and the facts that
//! commit with them. Every function opens and commits its own short
//! transaction; no adapter call happens inside one.

use std::collections::BTreeMap;

use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use super::plan::Step;
use crate::contract::fact::{
    RunEnded, RunKind, RunStatus, StepPhase as Phase, StepResult, StepStatus,
};
use crate::contract::{CommandMsg, DryRunDigest, Fact, Message, PlanHash, Version};
use crate::model::Case;
use crate::pubsub::outbox::{self, CommitWake};
use crate::workflow::{self, Facts, PlanFact};

/// A run as stored.
#[derive(Debug, sqlx::FromRow)]
pub(super) struct RunRow {
    pub id: Uuid,
    pub status: String,
}

/// How a run ended. The closing fact follows from the run's kind and this
/// status (see `closing_fact`).
pub(super) struct Ending {
    pub status: RunStatus,
    pub reason: Option<String>,
}

impl Ending {
    pub fn new(status: RunStatus, reason: Option<String>) -> Ending {
        Ending { status, reason }
    }
}

/// A rollback command's outcome is for people and tools, not for the FSM
/// (the case is already PARKED).
fn closing_fact(ended: RunEnded) -> Fact {
    match (ended.kind, ended.status) {
        (RunKind::Rollback, _) => Fact::RolledBack(ended),
        (RunKind::Run, RunStatus::Done) => Fact::ExecDone(ended),
        (
            RunKind::Run,
            RunStatus::Failed | RunStatus::RolledBack | RunStatus::Interrupted | RunStatus::Blocked,
        ) => Fact::ExecFailed(ended),
    }
}

/// Where a step record lives: its run, phase and index.
#[derive(Debug, Clone, Copy)]
pub(super) struct StepAt {
    pub run: Uuid,
    pub phase: Phase,
    pub idx: i32,
}

/// One command's attempt: what every fact of it shares.
pub(super) struct Attempt<'a> {
    pub case: &'a Case,
    pub cmd: &'a Message<CommandMsg>,
    /// The version the command was issued at (the fence).
    pub version: Version,
    /// The approved plan the command names.
    pub plan_hash: &'a PlanHash,
    pub kind: RunKind,
    /// The command's `traceparent`, continued by every fact.
    pub cause: Option<&'a str>,
    /// Every environment the plan touches (from the targets file), for the
    /// change-freeze check.
    pub environments: &'a std::collections::BTreeSet<String>,
    /// The gate's verdict was a break-glass override (approved by the
    /// quorum): a change freeze does not stop this plan.
    pub break_glass: bool,
}

impl Attempt<'_> {
    /// A fact of this command: about the version the command was issued at.
    fn envelope(&self, body: Fact) -> crate::pubsub::Envelope {
        let mut message = Message::for_case(self.case, CONSUMER, Some(self.cmd.id), body);
        message.expected_version = Some(self.version);
        message.to_envelope()
    }
}

/// A plan as the executor checks it before running it.
#[derive(sqlx::FromRow)]
struct PlanRow {
    id: Uuid,
    plan: Value,
    author: String,
    required_approvers: Option<i16>,
    gate_verdict: Option<String>,
    dryrun_digest: Option<DryRunDigest>,
    gate_dryrun_digest: Option<DryRunDigest>,
}

/// A plan the quorum approved, as stored, and how.
pub(super) struct ApprovedPlan {
    pub plan: Value,
    /// Approved as a break-glass override of a change freeze.
    pub break_glass: bool,
}

/// The executor's consumer name; also its facts' actor.
pub const CONSUMER: &str = "executor";

/// The executor's database, and the wake-up of the process's relay after
/// each commit that wrote facts.
#[derive(Clone)]
pub(super) struct Store {
    pub pool: PgPool,
    pub wake: CommitWake,
}

impl Store {
    /// Creates the run and takes its targets, or says who holds one.
    pub async fn start_run(
        &self,
        attempt: &Attempt<'_>,
        targets: &[String],
    ) -> Result<Result<Uuid, String>, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let run_id = insert_run(&mut tx, attempt).await?;
        for target in targets {
            let holder: Option<(Uuid, Uuid)> = sqlx::query_as(
                "WITH taken AS (INSERT INTO exec_target_lock (target, run_id) VALUES ($1, $2) \
                 ON CONFLICT (target) DO NOTHING RETURNING run_id) \
                 SELECT l.run_id, r.case_id FROM exec_target_lock l JOIN exec_run r ON r.id = l.run_id \
                 WHERE l.target = $1 AND NOT EXISTS (SELECT 1 FROM taken)",
            )
            .bind(target)
            .bind(run_id)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some((_, other_case)) = holder {
                tx.rollback().await?;
                return Ok(Err(format!(
                    "target {target} is being changed by case {other_case}"
                )));
            }
        }
        tx.commit().await?;
        Ok(Ok(run_id))
    }

    /// Keeps the state a step found before its first try.
    pub async fn keep_before(&self, at: StepAt, state: &Value) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE exec_step SET before = $4 WHERE run_id = $1 AND phase = $2 AND idx = $3",
        )
        .bind(at.run)
        .bind(<&'static str>::from(at.phase))
        .bind(at.idx)
        .bind(state)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// What an earlier delivery of the command recorded of a phase's steps:
    /// index → (status, tries, whether a state was kept).
    pub async fn recorded(
        &self,
        run_id: Uuid,
        phase: Phase,
    ) -> Result<BTreeMap<i32, (String, i32, bool)>, sqlx::Error> {
        Ok(sqlx::query_as::<_, (i32, String, i32, bool)>(
            "SELECT idx, status, tries, before IS NOT NULL FROM exec_step WHERE run_id = $1 AND phase = $2",
        )
        .bind(run_id)
        .bind(<&'static str>::from(phase))
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(|(idx, status, tries, kept)| (idx, (status, tries, kept)))
        .collect())
    }

    /// The command's run, when an earlier delivery started one.
    pub async fn run_of(&self, attempt_id: Uuid) -> Result<Option<RunRow>, sqlx::Error> {
        sqlx::query_as("SELECT id, status FROM exec_run WHERE attempt_id = $1")
            .bind(attempt_id)
            .fetch_optional(&self.pool)
            .await
    }

    /// The plan of `case` with this hash, only if the approvals recorded
    /// for this very hash meet the quorum the gate recorded, whatever the
    /// command says. `Err`: why it may not run.
    pub async fn approved_plan(
        &self,
        case_id: Uuid,
        plan_hash: &PlanHash,
    ) -> Result<Result<ApprovedPlan, String>, sqlx::Error> {
        let row: Option<PlanRow> = sqlx::query_as(
            "SELECT id, plan, author, required_approvers, gate_verdict, dryrun_digest, \
             gate_dryrun_digest FROM plan_proposed WHERE case_id = $1 AND plan_hash = $2",
        )
        .bind(case_id)
        .bind(plan_hash)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return Ok(Err(format!("no plan {plan_hash} for case {case_id}")));
        };
        let facts = Facts {
            plan: Some(PlanFact {
                hash: plan_hash.clone(),
                author: row.author,
                schema_valid: true,
                complete: true,
                has_rollback: false,
            }),
            approvals: crate::store::approvals(&self.pool, row.id).await?,
            // Approvals count for the plan's current dry run only, and
            // the quorum is the one decided on it.
            dryrun: crate::store::current_dryrun(&self.pool, row.id)
                .await?
                .map(|d| d.fact()),
            required_approvers: crate::store::quorum_on_current_dryrun(
                row.required_approvers,
                row.gate_dryrun_digest.as_ref(),
                row.dryrun_digest.as_ref(),
            ),
            ..Facts::default()
        };
        let break_glass = row.gate_verdict.as_deref() == Some("break_glass");
        Ok(workflow::approvals_meet_quorum(&facts)
            .map(|()| ApprovedPlan {
                plan: row.plan,
                break_glass,
            })
            .map_err(|f| format!("plan {plan_hash} is not approved: {}", f.detail)))
    }

    /// The state the first step of this plan's latest forward run that
    /// touched the step's target found before changing it.
    pub async fn state_before(
        &self,
        attempt: &Attempt<'_>,
        step: &Step,
    ) -> Result<Option<Value>, sqlx::Error> {
        let Some(target) = step.action.target() else {
            return Ok(None);
        };
        sqlx::query_scalar(
            "SELECT s.before FROM exec_step s JOIN exec_run r ON r.id = s.run_id \
             WHERE r.case_id = $1 AND r.plan_hash = $2 AND r.kind = 'run' AND s.phase = 'step' \
             AND s.target = $3 AND s.before IS NOT NULL \
             ORDER BY r.started_at DESC, s.idx LIMIT 1",
        )
        .bind(attempt.case.id)
        .bind(attempt.plan_hash)
        .bind(target)
        .fetch_optional(&self.pool)
        .await
    }

    pub async fn mark_running(
        &self,
        at: StepAt,
        step: &Step,
        tries: i32,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO exec_step (run_id, phase, idx, action, status, tries, target) \
             VALUES ($1, $2, $3, $4, 'running', $5, $6) \
             ON CONFLICT (run_id, phase, idx) DO UPDATE SET status = 'running', tries = EXCLUDED.tries, \
             started_at = clock_timestamp(), finished_at = NULL",
        )
        .bind(at.run)
        .bind(<&'static str>::from(at.phase))
        .bind(at.idx)
        .bind(step.name())
        .bind(tries)
        .bind(step.action.target())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Stores a step's end and its `evt.exec.step_result.v1` together.
    pub async fn record_step(
        &self,
        at: StepAt,
        step: &Step,
        status: StepStatus,
        tries: i32,
        detail: &Value,
        attempt: &Attempt<'_>,
    ) -> Result<(), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO exec_step (run_id, phase, idx, action, status, tries, result, finished_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, clock_timestamp()) \
             ON CONFLICT (run_id, phase, idx) DO UPDATE SET status = EXCLUDED.status, tries = EXCLUDED.tries, \
             result = EXCLUDED.result, finished_at = EXCLUDED.finished_at",
        )
        .bind(at.run)
        .bind(<&'static str>::from(at.phase))
        .bind(at.idx)
        .bind(step.name())
        .bind(<&'static str>::from(status))
        .bind(tries)
        .bind(detail)
        .execute(&mut *tx)
        .await?;
        let fact = attempt.envelope(Fact::StepResult(StepResult {
            run_id: at.run,
            attempt_id: attempt.cmd.id,
            phase: at.phase,
            index: at.idx,
            action: step.name().to_string(),
            status,
            tries,
        }));
        outbox::enqueue_caused(&mut tx, attempt.case.id, &[fact], attempt.cause).await?;
        tx.commit().await?;
        self.wake.wake();
        Ok(())
    }

    /// Closes the run, frees its targets, and states the outcome.
    pub async fn finish(
        &self,
        run_id: Uuid,
        ending: &Ending,
        attempt: &Attempt<'_>,
    ) -> Result<(), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE exec_run SET status = $2, error = $3, finished_at = clock_timestamp() WHERE id = $1",
        )
        .bind(run_id)
        .bind(<&'static str>::from(ending.status))
        .bind(&ending.reason)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM exec_target_lock WHERE run_id = $1")
            .bind(run_id)
            .execute(&mut *tx)
            .await?;
        let fact = attempt.envelope(closing_fact(RunEnded {
            run_id,
            attempt_id: attempt.cmd.id,
            plan_hash: attempt.plan_hash.clone(),
            kind: attempt.kind,
            status: ending.status,
            reason: ending.reason.clone(),
        }));
        outbox::enqueue_caused(&mut tx, attempt.case.id, &[fact], attempt.cause).await?;
        tx.commit().await?;
        self.wake.wake();
        tracing::info!(case.id = %attempt.case.id, run.id = %run_id, status = %ending.status, "Execution finished.");
        Ok(())
    }

    /// A command that never ran a step (its targets stayed busy, or its
    /// plan cannot be read): recorded as a run that ended so, with the reason.
    pub async fn finish_unrun(
        &self,
        attempt: &Attempt<'_>,
        status: RunStatus,
        reason: String,
    ) -> Result<(), sqlx::Error> {
        let mut conn = self.pool.acquire().await?;
        let run_id = insert_run(&mut conn, attempt).await?;
        drop(conn);
        let ending = Ending::new(status, Some(reason));
        self.finish(run_id, &ending, attempt).await
    }
}

/// Inserts the command's run as `running` (the attempt id is the command's
/// envelope id).
async fn insert_run(
    conn: &mut sqlx::PgConnection,
    attempt: &Attempt<'_>,
) -> Result<Uuid, sqlx::Error> {
    let run_id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO exec_run (id, case_id, plan_hash, kind, attempt_id, case_version, status) \
         VALUES ($1, $2, $3, $4, $5, $6, 'running')",
    )
    .bind(run_id)
    .bind(attempt.case.id)
    .bind(attempt.plan_hash)
    .bind(<&'static str>::from(attempt.kind))
    .bind(attempt.cmd.id)
    .bind(attempt.version.get())
    .execute(&mut *conn)
    .await?;
    Ok(run_id)
}
