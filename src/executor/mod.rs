//! The executor: consumes `cmd.exec.run` and `cmd.exec.rollback`, runs the
//! approved plan's steps through adapters, records every step, and reports
//! `evt.exec.step_result.v1` per step and `evt.exec.done.v1` /
//! `evt.exec.failed.v1` (or `evt.exec.rolled_back.v1` for a rollback
//! command) through the outbox.
//!
//! Owns: `exec_run`, `exec_step`, `exec_target_lock`. Never changes the
//! case status; its facts carry the version the command was issued at, so
//! the orchestrator rejects the results of an attempt the case has moved
//! past (fencing). The command's envelope id is the attempt id: a
//! redelivered command finds its run and never re-runs a finished step.

pub mod adapter;
pub mod gateway;
pub mod k8s;
pub mod script;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use crate::contract::fact::{RunEnded, StepResult};
pub use crate::contract::fact::{RunKind, RunStatus, StepPhase as Phase, StepStatus};
use crate::contract::plan::{self, Action};
use crate::contract::{ChangePlan, CommandMsg, Fact, Message, PlanHash, Version};
use crate::model::Case;
use crate::pubsub::consumer::{DeadReason, Delivery, Disposition, Handler};
use crate::pubsub::outbox;
use crate::store::read_case;
use crate::telemetry;
use adapter::{Adapter, StepError};

pub const CONSUMER: &str = "executor";

/// Deliveries a command waits for a busy target before the case is parked.
const WAIT_FOR_TARGET_DELIVERIES: i64 = 4;
/// An adapter call bounded by the step's timeout (plus a grace the adapter
/// should never need: it is told the timeout and must keep it itself).
async fn within<T>(
    step: &Step,
    call: impl std::future::Future<Output = Result<T, StepError>>,
) -> Result<T, StepError> {
    let budget = step.timeout + Duration::from_secs(5);
    tokio::time::timeout(budget, call)
        .await
        .unwrap_or_else(|_| {
            Err(StepError::new(
                format!("no result within {} s", step.timeout.as_secs()),
                json!({"timed_out": true}),
            ))
        })
}

/// Pause before retry `n` of a failed step: 1 s doubling, at most 30 s.
fn step_backoff(n: u32) -> Duration {
    Duration::from_secs((1u64 << n.min(5)).min(30))
}

#[derive(Debug, Clone, clap::Args)]
pub struct ExecSettings {
    /// Folder of the scripts `script.exec` may run (the allowlist names
    /// files in it); also their working directory.
    #[arg(long, env = "OPSLOOP_SCRIPTS_DIR", default_value = "scripts/actions")]
    pub scripts_dir: PathBuf,
    /// Environment variables scripts receive; all others are cleared.
    #[arg(
        long,
        env = "OPSLOOP_SCRIPT_ENV",
        value_delimiter = ',',
        default_value = "PATH,LANG"
    )]
    pub script_env: Vec<String>,
    /// Bytes of stdout and of stderr kept per step.
    #[arg(long, env = "OPSLOOP_SCRIPT_OUTPUT_CAP", default_value_t = 64 * 1024)]
    pub output_cap: usize,
    /// Scale for the plan's retry backoff (tests and demos shorten it).
    #[arg(long, env = "OPSLOOP_STEP_BACKOFF_SCALE", default_value_t = 1.0)]
    pub backoff_scale: f64,
    /// Kubernetes API server for `k8s.rollout`; unset: the kubeconfig or
    /// the in-cluster service account.
    #[arg(long, env = "OPSLOOP_K8S_API_URL")]
    pub k8s_api_url: Option<String>,
    /// File holding the bearer token for OPSLOOP_K8S_API_URL.
    #[arg(long, env = "OPSLOOP_K8S_TOKEN_FILE")]
    pub k8s_token_file: Option<PathBuf>,
    /// The gateways `gateway.flip` may change, as `name=admin-url`,
    /// comma-separated. A plan names a gateway; only these URLs are called.
    #[arg(long, env = "OPSLOOP_GATEWAYS", value_delimiter = ',')]
    pub gateways: Vec<gateway::GatewayEntry>,
    /// File holding the bearer token for the gateways' admin APIs.
    #[arg(long, env = "OPSLOOP_GATEWAY_TOKEN_FILE")]
    pub gateway_token_file: Option<PathBuf>,
}

pub struct Executor {
    pub pool: PgPool,
    adapters: BTreeMap<&'static str, Arc<dyn Adapter>>,
    backoff_scale: f64,
}

impl Executor {
    pub fn new(pool: PgPool, settings: &ExecSettings, script_allowlist: &[String]) -> Executor {
        let mut e = Executor {
            pool,
            adapters: BTreeMap::new(),
            backoff_scale: settings.backoff_scale.max(0.0),
        };
        e.register(Arc::new(adapter::Noop));
        e.register(Arc::new(script::ScriptAdapter {
            dir: settings.scripts_dir.clone(),
            allowlist: script_allowlist.iter().cloned().collect(),
            env_allowlist: settings.script_env.clone(),
            output_cap: settings.output_cap,
        }));
        e.register(Arc::new(k8s::K8sAdapter::new(
            settings.k8s_api_url.clone(),
            settings.k8s_token_file.clone(),
        )));
        e.register(Arc::new(gateway::GatewayAdapter::new(
            &settings.gateways,
            settings.gateway_token_file.clone(),
        )));
        e
    }

    /// Adds or replaces the adapter for its action.
    pub fn register(&mut self, adapter: Arc<dyn Adapter>) {
        self.adapters.insert(adapter.action(), adapter);
    }
}

/// One step of the plan as the runner needs it.
#[derive(Debug, Clone)]
struct Step {
    action: Action,
    timeout: Duration,
    retry: u32,
}

impl Step {
    fn of(step: &plan::Step) -> Step {
        Step {
            action: step.action.clone(),
            timeout: Duration::from_secs(step.timeout_s),
            retry: step.retry.min(3),
        }
    }

    fn name(&self) -> &'static str {
        self.action.name()
    }
}

fn steps_of(steps: &[plan::Step]) -> Vec<Step> {
    steps.iter().map(Step::of).collect()
}

/// The resources a plan changes, each once.
fn targets(steps: &[Step]) -> Vec<String> {
    let mut out: Vec<String> = steps.iter().filter_map(|s| s.action.target()).collect();
    out.sort();
    out.dedup();
    out
}

/// A run as stored.
#[derive(Debug, sqlx::FromRow)]
struct RunRow {
    id: Uuid,
    status: String,
}

/// How a run ended. The closing fact follows from the run's kind and this
/// status (see `closing_fact`).
struct Ending {
    status: RunStatus,
    reason: Option<String>,
}

impl Ending {
    fn new(status: RunStatus, reason: Option<String>) -> Ending {
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

impl Handler for Executor {
    fn name(&self) -> &str {
        CONSUMER
    }

    async fn handle(&self, d: &Delivery) -> Disposition {
        let cmd = match Message::<CommandMsg>::from_envelope(&d.envelope) {
            Ok(cmd) => cmd,
            Err(e) => return e.into(),
        };
        let (kind, plan_hash) = match &cmd.body {
            CommandMsg::Execute(p) => (RunKind::Run, p.plan_hash.clone()),
            CommandMsg::Rollback(p) => (RunKind::Rollback, p.plan_hash.clone()),
            CommandMsg::RunAnalysis(_)
            | CommandMsg::GeneratePlan(_)
            | CommandMsg::EvaluateGate(_)
            | CommandMsg::Verify(_) => return Disposition::unknown_type(&d.envelope.kind),
        };
        let Some(version) = cmd.expected_version else {
            return Disposition::DeadLetter(
                DeadReason::InvalidData,
                "an exec command needs case_id and expected_version".into(),
            );
        };
        let _in_flight = telemetry::execution_started();
        match self.execute(&cmd, d, kind, version, &plan_hash).await {
            Ok(disposition) => disposition,
            Err(e) => Disposition::Retry(e.to_string()),
        }
    }
}

impl Executor {
    async fn execute(
        &self,
        cmd: &Message<CommandMsg>,
        d: &Delivery,
        kind: RunKind,
        version: Version,
        plan_hash: &PlanHash,
    ) -> Result<Disposition, sqlx::Error> {
        let case_id = cmd.case_id.uuid();
        // A redelivered command finds its run; a finished one needs nothing
        // more read or done.
        let existing: Option<RunRow> =
            sqlx::query_as("SELECT id, status FROM exec_run WHERE attempt_id = $1")
                .bind(cmd.id)
                .fetch_optional(&self.pool)
                .await?;
        if existing.as_ref().is_some_and(|run| run.status != "running") {
            return Ok(Disposition::Done);
        }
        let Some(case) = read_case(&self.pool, case_id).await? else {
            return Ok(Disposition::DeadLetter(
                DeadReason::UnknownCase,
                format!("case {case_id} does not exist"),
            ));
        };
        // The plan must be the approved one: an approval row for this very
        // hash, whatever the command says.
        let stored: Option<Value> = sqlx::query_scalar(
            "SELECT p.plan FROM plan_proposed p WHERE p.case_id = $1 AND p.plan_hash = $2 \
             AND EXISTS (SELECT 1 FROM plan_approved a WHERE a.plan_id = p.id AND a.plan_hash = p.plan_hash)",
        )
        .bind(case_id)
        .bind(plan_hash)
        .fetch_optional(&self.pool)
        .await?;
        let Some(stored) = stored else {
            return Ok(Disposition::DeadLetter(
                DeadReason::InvalidData,
                format!("no approved plan {plan_hash} for case {case_id}"),
            ));
        };
        let plan = match ChangePlan::from_stored(&stored) {
            Ok(plan) => plan,
            Err(why) => return Ok(Disposition::DeadLetter(DeadReason::InvalidData, why)),
        };
        let (steps, rollback) = (steps_of(&plan.steps), steps_of(&plan.rollback.steps));
        let facts = Facts {
            case: &case,
            cmd,
            version,
            plan_hash,
            kind,
            cause: d.traceparent.as_deref(),
        };
        let run_id = match existing {
            Some(run) => run.id,
            None => {
                if kind == RunKind::Run && case.version != version.get() {
                    // The case moved on before this command was handled:
                    // nothing to run for an attempt that no longer counts.
                    tracing::info!(case.id = %case.id, "Exec command for an older case version; skipped.");
                    return Ok(Disposition::Done);
                }
                let touched = match kind {
                    RunKind::Run => [steps.clone(), rollback.clone()].concat(),
                    RunKind::Rollback => rollback.clone(),
                };
                match self.start_run(&facts, &targets(&touched)).await? {
                    Ok(id) => id,
                    Err(busy) if d.delivered < WAIT_FOR_TARGET_DELIVERIES => {
                        return Ok(Disposition::Retry(busy));
                    }
                    Err(busy) => {
                        let reason = format!("blocked: {busy}");
                        self.finish_blocked(&facts, reason).await?;
                        return Ok(Disposition::Done);
                    }
                }
            }
        };

        let ending = match kind {
            RunKind::Run => match self.run_phase(run_id, Phase::Step, &steps, &facts).await? {
                PhaseEnd::AllDone => Ending::new(RunStatus::Done, None),
                PhaseEnd::Interrupted(why) => {
                    Ending::new(RunStatus::Interrupted, Some(format!("interrupted: {why}")))
                }
                PhaseEnd::Failed(why) => {
                    let rolled = self
                        .run_phase(run_id, Phase::Rollback, &rollback, &facts)
                        .await?;
                    let (status, rollback_note) = match rolled {
                        PhaseEnd::AllDone if rollback.is_empty() => {
                            (RunStatus::Failed, "no rollback steps".to_string())
                        }
                        PhaseEnd::AllDone => {
                            (RunStatus::RolledBack, "rollback succeeded".to_string())
                        }
                        PhaseEnd::Failed(w) | PhaseEnd::Interrupted(w) => {
                            (RunStatus::Failed, format!("rollback failed too: {w}"))
                        }
                    };
                    Ending::new(status, Some(format!("{why}; {rollback_note}")))
                }
            },
            RunKind::Rollback => match self
                .run_phase(run_id, Phase::Rollback, &rollback, &facts)
                .await?
            {
                PhaseEnd::AllDone => Ending::new(RunStatus::RolledBack, None),
                PhaseEnd::Failed(w) | PhaseEnd::Interrupted(w) => {
                    Ending::new(RunStatus::Failed, Some(format!("rollback failed: {w}")))
                }
            },
        };
        self.finish(run_id, &ending, &facts).await?;
        Ok(Disposition::Done)
    }

    /// Creates the run and takes its targets, or says who holds one.
    async fn start_run(
        &self,
        facts: &Facts<'_>,
        targets: &[String],
    ) -> Result<Result<Uuid, String>, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let run_id = insert_run(&mut tx, facts).await?;
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

    /// Runs one phase's steps in order; stops at the first failure.
    async fn run_phase(
        &self,
        run_id: Uuid,
        phase: Phase,
        steps: &[Step],
        facts: &Facts<'_>,
    ) -> Result<PhaseEnd, sqlx::Error> {
        // What an earlier delivery of the command already recorded.
        let recorded: BTreeMap<i32, (String, i32, bool)> =
            sqlx::query_as::<_, (i32, String, i32, bool)>(
                "SELECT idx, status, tries, before IS NOT NULL FROM exec_step WHERE run_id = $1 AND phase = $2",
            )
            .bind(run_id)
            .bind(<&'static str>::from(phase))
            .fetch_all(&self.pool)
            .await?
            .into_iter()
            .map(|(idx, status, tries, kept)| (idx, (status, tries, kept)))
            .collect();
        for (idx, step) in steps.iter().enumerate() {
            let idx = idx as i32;
            let at = StepAt {
                run: run_id,
                phase,
                idx,
            };
            let stored = recorded.get(&idx).cloned();
            let Some(adapter) = self.adapters.get(step.name()).cloned() else {
                let why = format!("{phase} {idx}: no adapter for action {}", step.name());
                self.record_step(
                    at,
                    step,
                    StepStatus::Failed,
                    0,
                    &json!({"error": why}),
                    facts,
                )
                .await?;
                return Ok(PhaseEnd::Failed(why));
            };
            match stored.as_ref().map(|(s, ..)| s.as_str()) {
                Some("done") => continue,
                Some("failed") => {
                    return Ok(PhaseEnd::Failed(format!(
                        "{phase} {idx} ({}) failed",
                        step.name()
                    )));
                }
                Some(_running) if !adapter.idempotent() => {
                    let why = format!(
                        "{phase} {idx} ({}) was running when the executor stopped, and is not safe to repeat",
                        step.name()
                    );
                    let tries = stored.map_or(0, |s| s.1);
                    self.record_step(
                        at,
                        step,
                        StepStatus::Failed,
                        tries,
                        &json!({"error": why}),
                        facts,
                    )
                    .await?;
                    return Ok(PhaseEnd::Interrupted(why));
                }
                _ => {}
            }
            let undo_from = if step.action.is_undo() {
                let Some(before) = self.state_before(facts, step).await? else {
                    // Nothing of this plan changed the target, so there is
                    // nothing to put back.
                    let note = json!({"undo": "nothing to restore: no step of this plan recorded a state for this target"});
                    self.record_step(at, step, StepStatus::Done, 0, &note, facts)
                        .await?;
                    continue;
                };
                Some(before)
            } else {
                None
            };
            let mut kept = stored.as_ref().is_some_and(|s| s.2);
            let mut tries = stored.map_or(0, |s| s.1);
            let outcome = loop {
                tries += 1;
                self.mark_running(at, step, tries).await?;
                let started = Instant::now();
                let tried = self
                    .try_once(&*adapter, step, at, undo_from.as_ref(), &mut kept)
                    .await?;
                telemetry::adapter_step(adapter.action(), started.elapsed().as_secs_f64());
                match tried {
                    Ok(detail) => break Ok(detail),
                    Err(e) if tries as u32 <= step.retry && !e.is_refusal() => {
                        tracing::warn!(step = idx, action = step.name(), error = %e.message, "Step failed; retrying.");
                        let pause = step_backoff(tries as u32 - 1).mul_f64(self.backoff_scale);
                        tokio::time::sleep(pause).await;
                    }
                    Err(e) => break Err(e),
                }
            };
            match outcome {
                Ok(detail) => {
                    self.record_step(at, step, StepStatus::Done, tries, &detail, facts)
                        .await?;
                }
                Err(e) => {
                    let mut detail = e.detail.clone();
                    if let Some(m) = detail.as_object_mut() {
                        m.insert("error".into(), json!(e.message));
                    }
                    self.record_step(at, step, StepStatus::Failed, tries, &detail, facts)
                        .await?;
                    return Ok(PhaseEnd::Failed(format!(
                        "{phase} {idx} ({}) failed after {tries} tries: {}",
                        step.name(),
                        e.message
                    )));
                }
            }
        }
        Ok(PhaseEnd::AllDone)
    }

    /// One try: the undo's restore, or the snapshot (until one is kept)
    /// followed by the change. Each adapter call gets the step's timeout.
    async fn try_once(
        &self,
        adapter: &dyn Adapter,
        step: &Step,
        at: StepAt,
        undo_from: Option<&Value>,
        kept: &mut bool,
    ) -> Result<Result<Value, StepError>, sqlx::Error> {
        if let Some(before) = undo_from {
            return Ok(within(step, adapter.restore(&step.action, before, step.timeout)).await);
        }
        if !*kept {
            match within(step, adapter.snapshot(&step.action, step.timeout)).await {
                Err(e) => return Ok(Err(e)),
                Ok(None) => {}
                Ok(Some(state)) => {
                    sqlx::query(
                        "UPDATE exec_step SET before = $4 WHERE run_id = $1 AND phase = $2 AND idx = $3",
                    )
                    .bind(at.run)
                    .bind(<&'static str>::from(at.phase))
                    .bind(at.idx)
                    .bind(&state)
                    .execute(&self.pool)
                    .await?;
                }
            }
            *kept = true;
        }
        Ok(within(step, adapter.run(&step.action, step.timeout)).await)
    }

    /// The state the first step of this plan's latest forward run that
    /// touched the step's target found before changing it.
    async fn state_before(
        &self,
        facts: &Facts<'_>,
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
        .bind(facts.case.id)
        .bind(facts.plan_hash)
        .bind(target)
        .fetch_optional(&self.pool)
        .await
    }

    async fn mark_running(&self, at: StepAt, step: &Step, tries: i32) -> Result<(), sqlx::Error> {
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
    async fn record_step(
        &self,
        at: StepAt,
        step: &Step,
        status: StepStatus,
        tries: i32,
        detail: &Value,
        facts: &Facts<'_>,
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
        let fact = facts.envelope(Fact::StepResult(StepResult {
            run_id: at.run,
            attempt_id: facts.cmd.id,
            phase: at.phase,
            index: at.idx,
            action: step.name().to_string(),
            status,
            tries,
        }));
        outbox::enqueue_fact(&mut tx, fact, facts.cause).await?;
        tx.commit().await
    }

    /// Closes the run, frees its targets, and states the outcome.
    async fn finish(
        &self,
        run_id: Uuid,
        ending: &Ending,
        facts: &Facts<'_>,
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
        let fact = facts.envelope(closing_fact(RunEnded {
            run_id,
            attempt_id: facts.cmd.id,
            plan_hash: facts.plan_hash.clone(),
            kind: facts.kind,
            status: ending.status,
            reason: ending.reason.clone(),
        }));
        outbox::enqueue_fact(&mut tx, fact, facts.cause).await?;
        tx.commit().await?;
        tracing::info!(case.id = %facts.case.id, run.id = %run_id, status = %ending.status, "Execution finished.");
        Ok(())
    }

    /// A command that never got its targets: recorded as a blocked run.
    async fn finish_blocked(&self, facts: &Facts<'_>, reason: String) -> Result<(), sqlx::Error> {
        let mut conn = self.pool.acquire().await?;
        let run_id = insert_run(&mut conn, facts).await?;
        drop(conn);
        let ending = Ending::new(RunStatus::Blocked, Some(reason));
        self.finish(run_id, &ending, facts).await
    }
}

/// Inserts the command's run as `running` (the attempt id is the command's
/// envelope id).
async fn insert_run(conn: &mut sqlx::PgConnection, facts: &Facts<'_>) -> Result<Uuid, sqlx::Error> {
    let run_id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO exec_run (id, case_id, plan_hash, kind, attempt_id, case_version, status) \
         VALUES ($1, $2, $3, $4, $5, $6, 'running')",
    )
    .bind(run_id)
    .bind(facts.case.id)
    .bind(facts.plan_hash)
    .bind(<&'static str>::from(facts.kind))
    .bind(facts.cmd.id)
    .bind(facts.version.get())
    .execute(&mut *conn)
    .await?;
    Ok(run_id)
}

/// Where a step record lives: its run, phase and index.
#[derive(Debug, Clone, Copy)]
struct StepAt {
    run: Uuid,
    phase: Phase,
    idx: i32,
}

enum PhaseEnd {
    AllDone,
    Failed(String),
    Interrupted(String),
}

/// What every fact of one command shares.
struct Facts<'a> {
    case: &'a Case,
    cmd: &'a Message<CommandMsg>,
    /// The version the command was issued at (the fence).
    version: Version,
    /// The approved plan the command names.
    plan_hash: &'a PlanHash,
    kind: RunKind,
    /// The command's `traceparent`, continued by every fact.
    cause: Option<&'a str>,
}

impl Facts<'_> {
    /// A fact of this command: about the version the command was issued at.
    fn envelope(&self, body: Fact) -> crate::pubsub::Envelope {
        let mut message = Message::for_case(self.case, CONSUMER, Some(self.cmd.id), body);
        message.expected_version = Some(self.version);
        message.to_envelope()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_name_each_changed_resource_once() {
        let plan = json!({"title": "t", "steps": [
            {"action": "noop", "timeout_s": 10, "retry": 0},
            {"action": "k8s.rollout", "params": {"namespace": "shop", "deployment": "api", "restart": true}, "timeout_s": 60, "retry": 0},
            {"action": "k8s.rollout", "params": {"namespace": "shop", "deployment": "api", "image": "x:2"}, "timeout_s": 60, "retry": 0},
            {"action": "gateway.flip", "params": {"gateway": "edge", "route": "/api", "weights": {"a": 100}}, "timeout_s": 60, "retry": 0}
        ]});
        let plan = ChangePlan::from_stored(&plan).unwrap();
        assert_eq!(
            targets(&steps_of(&plan.steps)),
            ["gateway:edge/api", "k8s:shop/api"]
        );
    }
}
