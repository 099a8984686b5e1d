//! The run and phase machine: runs an approved plan's steps in order with
//! their timeouts and retries, and the rollback when a step fails; records
//! every step through the store. The command's envelope id is the attempt
//! id: a redelivered command finds its run and never re-runs a finished
//! step.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use serde_json::{Value, json};
use uuid::Uuid;

use super::adapter::{Adapter, ExecError};
use super::plan::{Step, step_backoff, steps_of, targets, within};
use super::store::{Attempt, Ending, StepAt, Store};
use crate::auth::TenantScope;
use crate::contract::fact::{RunKind, RunStatus, StepPhase as Phase, StepStatus};
use crate::contract::{ChangePlan, CommandMsg, Message, PlanHash, Version};
use crate::gatekeeper::policy::Policy;
use crate::pubsub::consumer::{DeadReason, Delivery, Disposition};
use crate::store::read_case_in;
use crate::telemetry;

/// Deliveries a command waits for a busy target before the case is parked.
const WAIT_FOR_TARGET_DELIVERIES: i64 = 4;

enum PhaseEnd {
    AllDone,
    Failed(String),
    Interrupted(String),
}

pub(super) struct Machine {
    pub store: Store,
    pub adapters: BTreeMap<&'static str, Arc<dyn Adapter>>,
    pub backoff_scale: f64,
    /// The gate's policy and targets: its change freezes are checked again
    /// before each forward step (a freeze that began after the gate still
    /// holds).
    pub policy: Arc<Policy>,
}

impl Machine {
    /// Records a step that failed without an adapter result (no adapter, a
    /// crash mid-step, a change freeze): its reason is the detail.
    async fn fail_step(
        &self,
        at: StepAt,
        step: &Step,
        tries: i32,
        detail: serde_json::Value,
        attempt: &Attempt<'_>,
    ) -> Result<(), sqlx::Error> {
        self.store
            .record_step(at, step, StepStatus::Failed, tries, &detail, attempt)
            .await
    }

    /// The change freeze covering this plan now, if any.
    fn freeze_now(&self, attempt: &Attempt<'_>) -> Option<&str> {
        let now = chrono::Utc::now();
        self.policy
            .freeze_in(attempt.environments, attempt.case.tenant.as_str(), now)
            .map(|w| w.name.as_str())
    }

    pub async fn execute(
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
        let existing = self.store.run_of(cmd.id).await?;
        if existing.as_ref().is_some_and(|run| run.status != "running") {
            return Ok(Disposition::Done);
        }
        let scope = TenantScope::one(&cmd.tenant);
        let Some(case) = read_case_in(&self.store.pool, case_id, &scope).await? else {
            return Disposition::case_not_found(&self.store.pool, case_id, cmd.tenant.as_str())
                .await;
        };
        // The plan must be this hash's, approved by the quorum.
        let stored = self.store.approved_plan(case_id, plan_hash).await?;
        let approved = match stored {
            Ok(approved) => approved,
            Err(why) => return Ok(Disposition::DeadLetter(DeadReason::InvalidData, why)),
        };
        let parsed = ChangePlan::from_stored(&approved.plan);
        let environments = self
            .policy
            .environments_of(parsed.as_ref().ok(), case.tenant.as_str());
        let attempt = Attempt {
            case: &case,
            cmd,
            version,
            plan_hash,
            kind,
            cause: d.traceparent.as_deref(),
            environments: &environments,
            break_glass: approved.break_glass,
        };
        let plan = match parsed {
            Ok(plan) => plan,
            Err(why) if existing.is_none() => {
                // An approved plan stored before the model that the model
                // cannot read: the run fails with the reason; the case parks.
                self.store
                    .finish_unrun(&attempt, RunStatus::Failed, why)
                    .await?;
                return Ok(Disposition::Done);
            }
            Err(why) => return Ok(Disposition::DeadLetter(DeadReason::InvalidData, why)),
        };
        let (steps, rollback) = (steps_of(&plan.steps), steps_of(&plan.rollback.steps));
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
                match self.store.start_run(&attempt, &targets(&touched)).await? {
                    Ok(id) => id,
                    Err(busy) if d.delivered < WAIT_FOR_TARGET_DELIVERIES => {
                        return Ok(Disposition::Retry(busy));
                    }
                    Err(busy) => {
                        let reason = format!("blocked: {busy}");
                        self.store
                            .finish_unrun(&attempt, RunStatus::Blocked, reason)
                            .await?;
                        return Ok(Disposition::Done);
                    }
                }
            }
        };

        let ending = match kind {
            RunKind::Run => match self
                .run_phase(run_id, Phase::Step, &steps, &attempt)
                .await?
            {
                PhaseEnd::AllDone => Ending::new(RunStatus::Done, None),
                PhaseEnd::Interrupted(why) => {
                    Ending::new(RunStatus::Interrupted, Some(format!("interrupted: {why}")))
                }
                PhaseEnd::Failed(why) => {
                    let rolled = self
                        .run_phase(run_id, Phase::Rollback, &rollback, &attempt)
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
                .run_phase(run_id, Phase::Rollback, &rollback, &attempt)
                .await?
            {
                PhaseEnd::AllDone => Ending::new(RunStatus::RolledBack, None),
                PhaseEnd::Failed(w) | PhaseEnd::Interrupted(w) => {
                    Ending::new(RunStatus::Failed, Some(format!("rollback failed: {w}")))
                }
            },
        };
        self.store.finish(run_id, &ending, &attempt).await?;
        Ok(Disposition::Done)
    }

    /// Runs one phase's steps in order; stops at the first failure.
    async fn run_phase(
        &self,
        run_id: Uuid,
        phase: Phase,
        steps: &[Step],
        attempt: &Attempt<'_>,
    ) -> Result<PhaseEnd, sqlx::Error> {
        // What an earlier delivery of the command already recorded.
        let recorded = self.store.recorded(run_id, phase).await?;
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
                self.fail_step(at, step, 0, json!({"error": why}), attempt)
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
                    self.fail_step(at, step, tries, json!({"error": why}), attempt)
                        .await?;
                    return Ok(PhaseEnd::Interrupted(why));
                }
                _ => {}
            }
            if phase == Phase::Step
                && !attempt.break_glass
                && let Some(freeze) = self.freeze_now(attempt)
            {
                let why = format!(
                    "{phase} {idx} ({}) not run: inside change freeze {freeze}, and no break-glass override was approved",
                    step.name()
                );
                let tries = stored.map_or(0, |s| s.1);
                self.fail_step(
                    at,
                    step,
                    tries,
                    json!({"error": why, "refused": true}),
                    attempt,
                )
                .await?;
                return Ok(PhaseEnd::Failed(why));
            }
            let undo_from = if step.action.is_undo() {
                let Some(before) = self.store.state_before(attempt, step).await? else {
                    // Nothing of this plan changed the target, so there is
                    // nothing to put back.
                    let note = json!({"undo": "nothing to restore: no step of this plan recorded a state for this target"});
                    self.store
                        .record_step(at, step, StepStatus::Done, 0, &note, attempt)
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
                self.store.mark_running(at, step, tries).await?;
                let started = Instant::now();
                let tried = self
                    .try_once(&*adapter, step, at, undo_from.as_ref(), &mut kept)
                    .await?;
                telemetry::adapter_step(adapter.action(), started.elapsed().as_secs_f64());
                match tried {
                    Ok(detail) => break Ok(detail),
                    Err(e) if tries as u32 <= step.retry && e.is_retryable() => {
                        tracing::warn!(step = idx, action = step.name(), error = %e.message, "Step failed; retrying.");
                        let pause = step_backoff(tries as u32 - 1).mul_f64(self.backoff_scale);
                        tokio::time::sleep(pause).await;
                    }
                    Err(e) => break Err(e),
                }
            };
            match outcome {
                Ok(detail) => {
                    self.store
                        .record_step(at, step, StepStatus::Done, tries, &detail, attempt)
                        .await?;
                }
                Err(e) => {
                    let detail = e.record();
                    self.store
                        .record_step(at, step, StepStatus::Failed, tries, &detail, attempt)
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
    ) -> Result<Result<Value, ExecError>, sqlx::Error> {
        if let Some(before) = undo_from {
            return Ok(within(step, adapter.restore(&step.action, before, step.timeout)).await);
        }
        if !*kept {
            match within(step, adapter.snapshot(&step.action, step.timeout)).await {
                Err(e) => return Ok(Err(e)),
                Ok(None) => {}
                Ok(Some(state)) => {
                    self.store.keep_before(at, &state).await?;
                }
            }
            *kept = true;
        }
        Ok(within(step, adapter.run(&step.action, step.timeout)).await)
    }
}
