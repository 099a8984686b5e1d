//! The orchestrator's consumer: worker facts (`evt.*`) become FSM events.
//!
//! Each fact is parsed into the typed contract once, then applied through
//! the same `transition` as HTTP requests, with its envelope id recorded in
//! `inbox` in that transaction; a stale fact is recorded as rejected and
//! acked.

use serde_json::json;

use super::{Actor, Orchestrator, Origin, Outcome, TransitionError, TransitionRequest};
use crate::auth::TenantScope;
use crate::contract::fact::INFORMATIONAL;
use crate::contract::{Fact, Message};
use crate::pubsub::consumer::{DeadReason, Delivery, Disposition, Handler};
use crate::telemetry;

pub const CONSUMER: &str = "orchestrator";

pub struct FactConsumer {
    pub orchestrator: Orchestrator,
}

impl Handler for FactConsumer {
    fn name(&self) -> &str {
        CONSUMER
    }

    async fn handle(&self, d: &Delivery) -> Disposition {
        if INFORMATIONAL.contains(&d.envelope.kind.as_str()) {
            return Disposition::Done;
        }
        let fact = match Message::<Fact>::from_envelope(&d.envelope) {
            Ok(fact) => fact,
            Err(e) => return e.into(),
        };
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
            origin: Origin::Message {
                consumer: CONSUMER.to_string(),
                message_id: fact.id,
                subject: d.subject.clone(),
            },
            trace_id: telemetry::trace_id_from(d.traceparent.as_deref()),
        };
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
