//! The orchestrator's consumer: worker facts (`evt.*`) become FSM events.
//!
//! Each fact is parsed into the typed contract once, then applied through
//! the same `transition` as HTTP requests, with its envelope id recorded in
//! `inbox` in that transaction; a stale fact is recorded as rejected and
//! acked. A rollback that ends after a failed verification becomes the
//! orchestrator's own `replan` when the policy allows re-plans.

use serde_json::{Value, json};

use super::{Actor, Orchestrator, Origin, Outcome, TransitionError, TransitionRequest};
use crate::auth::TenantScope;
use crate::contract::fact::{EVT_ROLLED_BACK, INFORMATIONAL, RunEnded};
use crate::contract::{Fact, Message};
use crate::pubsub::consumer::{DeadReason, Delivery, Disposition, Handler};
use crate::telemetry;
use crate::verifier::check::{CheckJudged, describe_judged};

pub const CONSUMER: &str = "orchestrator";

pub struct FactConsumer {
    pub orchestrator: Orchestrator,
}

impl Handler for FactConsumer {
    fn name(&self) -> &str {
        CONSUMER
    }

    async fn handle(&self, d: &Delivery) -> Disposition {
        // Read only when re-plans are on: otherwise informational, as
        // before (a parked case waits for a person).
        let replans = self.orchestrator.policy().replan.max_per_case > 0;
        if INFORMATIONAL.contains(&d.envelope.kind.as_str())
            && !(replans && d.envelope.kind == EVT_ROLLED_BACK)
        {
            return Disposition::Done;
        }
        let fact = match Message::<Fact>::from_envelope(&d.envelope) {
            Ok(fact) => fact,
            Err(e) => return e.into(),
        };
        if let Fact::RolledBack(run) = &fact.body {
            return self.replan(&fact, run, d).await;
        }
        let Some(event) = fact.body.event() else {
            return Disposition::Done;
        };
        // Each fact has one owning role; a fact claiming to come from any
        // other is not applied (the NATS permissions keep outsiders from
        // publishing at all; this keeps one role from speaking for another).
        if let Some(owner) = crate::roles::Role::owning(&fact.body)
            && fact.actor != <&str>::from(owner)
        {
            return Disposition::DeadLetter(
                DeadReason::InvalidData,
                format!(
                    "{} is the {owner}'s fact; the envelope's actor is {:?}",
                    d.envelope.kind, fact.actor
                ),
            );
        }
        let mut meta = json!({"subject": d.subject, "causation_id": fact.causation_id});
        if let Fact::Findings(findings) = &fact.body {
            // Kept with the transition so the planner can show them.
            meta["findings"] = json!(findings.findings);
        }
        let request = TransitionRequest {
            case_id: fact.case_id.uuid(),
            tenants: TenantScope::one(&fact.tenant),
            event,
            actor: Actor {
                id: fact.actor.clone(),
                human: false,
            },
            reason: fact.body.reason(),
            plan_hash: fact.body.plan_hash().cloned(),
            dryrun_digest: fact.body.dryrun_digest().cloned(),
            meta,
            expected_version: fact.expected_version.map(i64::from),
            origin: origin(&fact.id, d),
            trace_id: telemetry::trace_id_from(d.traceparent.as_deref()),
        };
        self.apply(request, &fact).await
    }
}

impl FactConsumer {
    /// A finished rollback of a plan that failed verification: the
    /// orchestrator's own `replan`, with the figures as the planner's
    /// feedback. The FSM's guard holds the policy's limit; past it (or for
    /// a rollback of anything else) the attempt is recorded as rejected and
    /// the case stays PARKED for a person. The rollback's own envelope
    /// (its id in the inbox, its version, its plan) makes a redelivery, a
    /// case resumed meanwhile or an older plan's rollback change nothing.
    async fn replan(&self, fact: &Message<Fact>, run: &RunEnded, d: &Delivery) -> Disposition {
        if fact.actor != <&str>::from(crate::roles::Role::Executor) {
            return Disposition::DeadLetter(
                DeadReason::InvalidData,
                format!(
                    "{EVT_ROLLED_BACK} is the executor's fact; the envelope's actor is {:?}",
                    fact.actor
                ),
            );
        }
        if run.status != crate::contract::fact::RunStatus::RolledBack {
            return Disposition::Done;
        }
        // The executor names the version its rollback was issued at; a
        // rollback fact without it cannot be checked for staleness.
        if fact.expected_version.is_none() {
            return Disposition::DeadLetter(
                DeadReason::InvalidData,
                format!("{EVT_ROLLED_BACK} without expected_version"),
            );
        }
        // A case a person resumed or dismissed meanwhile is theirs: no
        // re-plan, and no refused attempt in its timeline either.
        let parked: Option<bool> = match sqlx::query_scalar(
            "SELECT status = 'PARKED' FROM ops_case WHERE id = $1 AND tenant = $2",
        )
        .bind(fact.case_id.uuid())
        .bind(fact.tenant.as_str())
        .fetch_optional(self.orchestrator.pool())
        .await
        {
            Ok(p) => p,
            Err(e) => return Disposition::Retry(e.to_string()),
        };
        if parked == Some(false) {
            return Disposition::Done;
        }
        let feedback =
            match replan_feedback(self.orchestrator.pool(), fact.case_id.uuid(), run).await {
                Ok(f) => f,
                Err(e) => return Disposition::Retry(e.to_string()),
            };
        let request = TransitionRequest {
            case_id: fact.case_id.uuid(),
            tenants: TenantScope::one(&fact.tenant),
            event: crate::workflow::EventKind::Replan,
            actor: Actor {
                id: CONSUMER.to_string(),
                human: false,
            },
            reason: Some(feedback),
            plan_hash: Some(run.plan_hash.clone()),
            dryrun_digest: None,
            meta: json!({"subject": d.subject, "causation_id": fact.id, "rollback_run": run.run_id}),
            expected_version: fact.expected_version.map(i64::from),
            origin: origin(&fact.id, d),
            trace_id: telemetry::trace_id_from(d.traceparent.as_deref()),
        };
        self.apply(request, fact).await
    }

    async fn apply(&self, request: TransitionRequest, fact: &Message<Fact>) -> Disposition {
        match self.orchestrator.transition(request).await {
            Ok(Outcome::Duplicate) => {
                telemetry::inbox_dedup(CONSUMER);
                Disposition::Done
            }
            Ok(Outcome::Answered(_) | Outcome::Replayed(_)) => Disposition::Done,
            Err(TransitionError::CaseNotFound(id)) => {
                Disposition::case_not_found(self.orchestrator.pool(), id, fact.tenant.as_str())
                    .await
                    .unwrap_or_else(|e| Disposition::Retry(e.to_string()))
            }
            Err(
                e @ (TransitionError::VersionMismatch { .. }
                | TransitionError::IdempotencyKeyReused),
            ) => Disposition::DeadLetter(DeadReason::InvalidData, e.to_string()),
            Err(e @ TransitionError::Database(_)) => Disposition::Retry(e.to_string()),
        }
    }
}

/// A fact's delivery as the transition's origin: its envelope id goes to
/// the inbox with the move.
fn origin(message_id: &uuid::Uuid, d: &Delivery) -> Origin {
    Origin::Message {
        consumer: CONSUMER.to_string(),
        message_id: *message_id,
        subject: d.subject.clone(),
    }
}

/// What the planner is told after a rolled-back change: the plan, how its
/// verification ended, with the figures.
async fn replan_feedback(
    pool: &sqlx::PgPool,
    case: uuid::Uuid,
    run: &RunEnded,
) -> Result<String, sqlx::Error> {
    let title: Option<String> = sqlx::query_scalar(
        "SELECT plan->>'title' FROM plan_proposed WHERE case_id = $1 AND plan_hash = $2",
    )
    .bind(case)
    .bind(&run.plan_hash)
    .fetch_optional(pool)
    .await?
    .flatten();
    let verified: Option<(String, Value, i64)> = sqlx::query_as(
        "SELECT outcome, checks, EXTRACT(EPOCH FROM window_to - window_from)::bigint FROM verify_result \
         WHERE case_id = $1 AND plan_hash = $2 ORDER BY at DESC LIMIT 1",
    )
    .bind(case)
    .bind(&run.plan_hash)
    .fetch_optional(pool)
    .await?;
    let plan = format!(
        "plan \"{}\" ({})",
        title.as_deref().unwrap_or("untitled"),
        run.plan_hash.short()
    );
    Ok(match verified {
        Some((outcome, checks, window_s)) => {
            // A check entry this code cannot read costs the figures, never
            // the re-plan.
            let figures = serde_json::from_value::<Vec<CheckJudged>>(checks)
                .map(|c| format!(": {}", describe_judged(&c)))
                .unwrap_or_default();
            format!(
                "{plan} failed verification ({outcome}) over {window_s} s{figures}; it was rolled back. \
                 Propose a different remediation."
            )
        }
        None => format!("{plan} was rolled back. Propose a different remediation."),
    })
}
