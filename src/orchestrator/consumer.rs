//! The orchestrator's consumer: worker facts (`evt.*`) become FSM events.
//!
//! Each fact is applied through the same `transition` as HTTP requests, with
//! its envelope id recorded in `inbox` in that transaction; a stale fact is
//! recorded as rejected and acked.

use serde_json::Value;

use super::{Actor, Orchestrator, Origin, Outcome, TransitionError, TransitionRequest};
use crate::pubsub::consumer::{DeadReason, Delivery, Disposition, Handler};
use crate::telemetry;
use crate::workflow::EventKind;

pub const CONSUMER: &str = "orchestrator";

/// Facts that drive the FSM, by envelope type.
pub fn event_for(kind: &str) -> Option<EventKind> {
    use EventKind as E;
    Some(match kind {
        "evt.analysis.findings.v1" => E::AnalysisDone,
        "evt.plan.proposed.v1" => E::PlanReady,
        "evt.plan.failed.v1" => E::PlanFailed,
        "evt.plan.approved.v1" => E::GateApproved,
        "evt.plan.rejected.v1" => E::GateRejected,
        "evt.exec.done.v1" => E::ExecDone,
        "evt.exec.failed.v1" => E::ExecFailed,
        "evt.verify.pass.v1" => E::VerifyPass,
        "evt.verify.failed.v1" => E::VerifyFailed,
        _ => return None,
    })
}

/// Facts on `evt.>` that are for other readers, not for the FSM.
const NOT_FOR_THE_FSM: [&str; 4] = [
    "evt.case.transition.v1",
    "evt.gate.pending.v1",
    "evt.exec.step_result.v1",
    "evt.exec.rolled_back.v1",
];

pub struct FactConsumer {
    pub orchestrator: Orchestrator,
}

impl Handler for FactConsumer {
    fn name(&self) -> &str {
        CONSUMER
    }

    async fn handle(&self, d: &Delivery) -> Disposition {
        let env = &d.envelope;
        if NOT_FOR_THE_FSM.contains(&env.kind.as_str()) {
            return Disposition::Done;
        }
        let Some(event) = event_for(&env.kind) else {
            return Disposition::unknown_type(&env.kind);
        };
        let Some(case_id) = env.case_id else {
            return Disposition::DeadLetter(
                DeadReason::InvalidData,
                "a fact needs a case_id".into(),
            );
        };
        let reason = match env.data.get("reason") {
            None | Some(Value::Null) => None,
            Some(Value::String(r)) if r.chars().count() <= 2000 && !r.contains('\0') => {
                Some(r.clone())
            }
            Some(_) => {
                return Disposition::DeadLetter(
                    DeadReason::InvalidData,
                    "data.reason must be a string of at most 2000 characters, without NUL".into(),
                );
            }
        };
        if env.actor.is_empty() || env.actor.len() > 64 {
            return Disposition::DeadLetter(
                DeadReason::InvalidData,
                "actor must be 1-64 characters".into(),
            );
        }
        let request = TransitionRequest {
            case_id,
            event,
            actor: Actor {
                id: env.actor.clone(),
                human: false,
            },
            reason,
            plan_hash: None,
            meta: match env.data.get("findings") {
                // Kept with the transition so the planner can show them.
                Some(findings) if event == EventKind::AnalysisDone => serde_json::json!({
                    "subject": d.subject, "causation_id": env.causation_id, "findings": findings}),
                _ => serde_json::json!({"subject": d.subject, "causation_id": env.causation_id}),
            },
            expected_version: env.expected_version,
            origin: Origin::Message {
                consumer: CONSUMER.to_string(),
                message_id: env.id,
                subject: d.subject.clone(),
            },
            trace_id: crate::telemetry::trace_id_from(d.traceparent.as_deref()),
        };
        match self.orchestrator.transition(request).await {
            Ok(Outcome::Duplicate) => {
                telemetry::inbox_dedup(CONSUMER);
                Disposition::Done
            }
            Ok(Outcome::Applied(_) | Outcome::Rejected(_) | Outcome::Replayed(_)) => {
                Disposition::Done
            }
            Err(TransitionError::CaseNotFound(id)) => Disposition::DeadLetter(
                DeadReason::UnknownCase,
                format!("case {id} does not exist"),
            ),
            Err(
                e @ (TransitionError::VersionMismatch { .. }
                | TransitionError::IdempotencyKeyReused),
            ) => Disposition::DeadLetter(DeadReason::InvalidData, e.to_string()),
            Err(e @ (TransitionError::Database(_) | TransitionError::Injected(_))) => {
                Disposition::Retry(e.to_string())
            }
        }
    }
}
