//! Re-drive: an operator re-issues the command that the case's current
//! status is waiting for (DESIGN §6 `POST /plan/generate`, `/gate/eval`,
//! `/adapter/exec`, `/verify/run`), when the one the orchestrator sent was
//! lost (dead-lettered, a worker down too long). Never an ad-hoc command:
//! the command is the one the FSM sends on entering that status, for the
//! case's current plan, and the worker judges it as it would the first
//! (status, plan hash, approvals, freezes). One transaction: the case row
//! locked, the status checked, the command into the outbox and a `redrive`
//! entry into the timeline.

use serde_json::json;
use uuid::Uuid;

use super::Orchestrator;
use crate::auth::TenantScope;
use crate::contract::command::{
    CMD_EXEC_DRYRUN, CMD_EXEC_RUN, CMD_PLAN_GENERATE, CMD_VERIFY_RUN, GeneratePlan, PlanCommand,
    Verify,
};
use crate::contract::{CommandMsg, Message, PlanHash};
use crate::model::Case;
use crate::pubsub::outbox;
use crate::workflow::Status;

/// What to re-drive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redrive {
    /// `cmd.plan.generate` for a case in PLANNING (optionally naming a
    /// template instead of the planner's own choice).
    GeneratePlan { template: Option<String> },
    /// The current plan's way through the gate, in WAIT_GATE, from its
    /// start: a new dry run (`cmd.exec.dryrun`), whose `dryrun_done` asks
    /// the gatekeeper again. The gate never judges without fresh evidence,
    /// and the new dry run voids the votes given on the older one.
    EvaluateGate,
    /// `cmd.exec.run` of the current plan, in EXECUTING, with no run of the
    /// case in flight (a step that is not idempotent never runs twice).
    Execute,
    /// `cmd.verify.run` of the current plan, in VERIFYING.
    Verify,
}

impl Redrive {
    /// The status the command belongs to.
    pub fn status(&self) -> Status {
        match self {
            Redrive::GeneratePlan { .. } => Status::Planning,
            Redrive::EvaluateGate => Status::WaitGate,
            Redrive::Execute => Status::Executing,
            Redrive::Verify => Status::Verifying,
        }
    }

    /// The route's name, as the timeline records it.
    pub fn name(&self) -> &'static str {
        match self {
            Redrive::GeneratePlan { .. } => "plan.generate",
            Redrive::EvaluateGate => "gate.eval",
            Redrive::Execute => "adapter.exec",
            Redrive::Verify => "verify.run",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RedriveError {
    #[error("case {0} not found")]
    CaseNotFound(Uuid),
    #[error("the case is {status}; {what} re-drives a case in {wanted}")]
    WrongStatus {
        status: Status,
        wanted: Status,
        what: &'static str,
    },
    #[error("a run of the case is in flight ({0}); it reports its own outcome")]
    RunInFlight(Uuid),
    #[error(
        "run {0} of this plan at this case version exists ({1}); a re-drive never runs a plan twice"
    )]
    RunExists(Uuid, String),
    #[error("the case's {0} is still waiting in the outbox: nothing was lost yet")]
    CommandPending(String),
    #[error(
        "no {0} of this case was dead-lettered or failed to publish since it entered its status; \
         the first may still be delivered, and a second would run the plan twice"
    )]
    CommandNotLost(String),
    #[error(
        "plan {0} was proposed since the case entered PLANNING; its outcome is on the way or lost \
         with its fact, and planning again would offer the same plan"
    )]
    PlanExists(String),
    #[error("the case has no plan to re-drive")]
    NoPlan,
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// What was re-driven.
#[derive(Debug, Clone)]
pub struct Redriven {
    pub case: Case,
    /// The command's envelope id (its `Nats-Msg-Id`).
    pub command_id: Uuid,
    pub subject: String,
    pub timeline_id: Uuid,
}

impl Orchestrator {
    /// Re-issues the command `what` for the case, as `actor`.
    pub async fn redrive(
        &self,
        case_id: Uuid,
        tenants: &TenantScope,
        actor: &str,
        what: Redrive,
    ) -> Result<Redriven, RedriveError> {
        let mut tx = self.pool().begin().await?;
        let case = crate::store::lock_case_in(&mut tx, case_id, tenants).await?;
        let case = case.ok_or(RedriveError::CaseNotFound(case_id))?;
        if case.status != what.status() {
            return Err(RedriveError::WrongStatus {
                status: case.status,
                wanted: what.status(),
                what: what.name(),
            });
        }
        // When the case entered its version, and by which event.
        let (entered, event): (chrono::DateTime<chrono::Utc>, Option<String>) = sqlx::query_as(
            "SELECT at, event FROM case_timeline WHERE case_id = $1 AND version = $2 \
             AND kind IN ('created', 'transition')",
        )
        .bind(case_id)
        .bind(case.version)
        .fetch_one(&mut *tx)
        .await?;
        let subject = match &what {
            Redrive::GeneratePlan { .. } => CMD_PLAN_GENERATE,
            Redrive::EvaluateGate => CMD_EXEC_DRYRUN,
            Redrive::Execute => CMD_EXEC_RUN,
            Redrive::Verify => CMD_VERIFY_RUN,
        };
        let pending: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM outbox WHERE case_id = $1 AND subject = $2)",
        )
        .bind(case_id)
        .bind(subject)
        .fetch_one(&mut *tx)
        .await?;
        if pending {
            return Err(RedriveError::CommandPending(subject.into()));
        }
        let plan: Option<(PlanHash, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
            "SELECT plan_hash, created_at FROM plan_proposed WHERE case_id = $1 \
             ORDER BY seq DESC LIMIT 1",
        )
        .bind(case_id)
        .fetch_optional(&mut *tx)
        .await?;
        let current = || plan.clone().map(|p| p.0).ok_or(RedriveError::NoPlan);
        let command = match &what {
            Redrive::GeneratePlan { template } => {
                if let Some((hash, at)) = &plan
                    && *at >= entered
                {
                    return Err(RedriveError::PlanExists(hash.to_string()));
                }
                // What the FSM sent: after `resume`, the park reason; after
                // `replan`, its reason (the failed verification's figures).
                let feedback: Option<String> = match event.as_deref() {
                    Some("replan") => sqlx::query_scalar(
                        "SELECT reason FROM case_timeline WHERE case_id = $1 \
                         AND kind = 'transition' AND event = 'replan' ORDER BY seq DESC LIMIT 1",
                    )
                    .bind(case_id)
                    .fetch_optional(&mut *tx)
                    .await?
                    .flatten(),
                    Some("resume") => sqlx::query_scalar(
                        "SELECT park_reason FROM case_timeline WHERE case_id = $1 \
                         AND kind = 'transition' AND to_status = 'PARKED' ORDER BY seq DESC LIMIT 1",
                    )
                    .bind(case_id)
                    .fetch_optional(&mut *tx)
                    .await?
                    .flatten(),
                    _ => None,
                };
                CommandMsg::GeneratePlan(GeneratePlan {
                    feedback,
                    template: template.clone(),
                })
            }
            Redrive::EvaluateGate => CommandMsg::DryRun(PlanCommand {
                plan_hash: current()?,
            }),
            Redrive::Execute => {
                let run: Option<(Uuid, String)> = sqlx::query_as(
                    "SELECT id, status FROM exec_run WHERE case_id = $1 AND case_version = $2 \
                     AND kind = 'run' ORDER BY started_at DESC LIMIT 1",
                )
                .bind(case_id)
                .bind(case.version)
                .fetch_optional(&mut *tx)
                .await?;
                match run {
                    Some((id, status)) if status == "running" => {
                        return Err(RedriveError::RunInFlight(id));
                    }
                    Some((id, status)) => return Err(RedriveError::RunExists(id, status)),
                    None => {}
                }
                // Only a command that can no longer arrive is replaced: one
                // still in the stream would run the plan a second time.
                let lost: bool = sqlx::query_scalar(
                    "SELECT EXISTS (SELECT 1 FROM dead_letter WHERE case_id = $1 AND subject = $2 \
                                    AND received_at >= $3) \
                         OR EXISTS (SELECT 1 FROM outbox_failed WHERE case_id = $1 AND subject = $2 \
                                    AND created_at >= $3)",
                )
                .bind(case_id)
                .bind(subject)
                .bind(entered)
                .fetch_one(&mut *tx)
                .await?;
                if !lost {
                    return Err(RedriveError::CommandNotLost(subject.into()));
                }
                CommandMsg::Execute(PlanCommand {
                    plan_hash: current()?,
                })
            }
            Redrive::Verify => CommandMsg::Verify(Verify {
                plan_hash: Some(current()?),
            }),
        };
        let timeline_id = Uuid::now_v7();
        let message = Message::for_case(&case, actor, Some(timeline_id), command);
        let envelope = message.to_envelope();
        let trace_id = Uuid::new_v4().simple().to_string();
        outbox::enqueue(
            &mut tx,
            Some(case_id),
            std::slice::from_ref(&envelope),
            &outbox::traceparent(&trace_id),
        )
        .await?;
        sqlx::query(
            "INSERT INTO case_timeline (id, case_id, kind, from_status, to_status, version, actor, \
             correlation_id, meta) VALUES ($1, $2, 'redrive', $3, $3, $4, $5, $6, $7)",
        )
        .bind(timeline_id)
        .bind(case_id)
        .bind(case.status.as_str())
        .bind(case.version)
        .bind(actor)
        .bind(case.correlation_id)
        .bind(json!({
            "redrive": what.name(),
            "command_id": envelope.id,
            "subject": envelope.kind,
            "template": match &what { Redrive::GeneratePlan { template } => template.clone(), _ => None },
            "trace_id": trace_id,
        }))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.outbox_ready().wake();
        tracing::info!(case.id = %case_id, redrive = what.name(), command.id = %envelope.id,
                       actor, "Command re-driven.");
        Ok(Redriven {
            case,
            command_id: envelope.id,
            subject: envelope.kind,
            timeline_id,
        })
    }
}
