//! The gatekeeper: consumes `cmd.gate.eval`, applies the deterministic
//! policy to the exact plan named by its hash, and records the decision
//! with its fact in one transaction, under the case lock (so no human
//! approval races the decision).
//!
//! It never changes case status: its facts (`evt.plan.approved.v1`,
//! `evt.gate.pending.v1`, `evt.plan.rejected.v1`) reach the orchestrator.
//! No LLM text is an input to the decision.

pub mod policy;

use serde_json::{Value, json};
use sqlx::{PgPool, Row};
use uuid::Uuid;

use crate::contract::fact::{GateJudged, GatePending, PlanRejected};
use crate::contract::{ChangePlan, CommandMsg, Fact, Message, PlanHash};
use crate::pubsub::consumer::{DeadReason, Delivery, Disposition, Handler};
use crate::pubsub::{inbox, outbox};
use crate::workflow::Status;
use policy::{GateContext, Policy, Verdict};

pub const CONSUMER: &str = "gatekeeper";

pub struct Gatekeeper {
    pub pool: PgPool,
    pub policy: Policy,
}

impl Handler for Gatekeeper {
    fn name(&self) -> &str {
        CONSUMER
    }

    async fn handle(&self, d: &Delivery) -> Disposition {
        let cmd = match Message::<CommandMsg>::from_envelope(&d.envelope) {
            Ok(cmd) => cmd,
            Err(e) => return e.into(),
        };
        let CommandMsg::EvaluateGate(args) = &cmd.body else {
            return Disposition::unknown_type(&d.envelope.kind);
        };
        match self
            .evaluate(&cmd, &args.plan_hash, &d.subject, d.traceparent.as_deref())
            .await
        {
            Ok(disposition) => disposition,
            Err(e) => Disposition::Retry(e.to_string()),
        }
    }
}

impl Gatekeeper {
    async fn evaluate(
        &self,
        cmd: &Message<CommandMsg>,
        hash: &PlanHash,
        subject: &str,
        traceparent: Option<&str>,
    ) -> Result<Disposition, sqlx::Error> {
        let case_id = cmd.case_id.uuid();
        let mut tx = self.pool.begin().await?;
        let case = match inbox::claim_case(&mut tx, CONSUMER, cmd.id, subject, case_id).await? {
            Ok(case) => case,
            Err(nothing_to_do) => return Ok(nothing_to_do),
        };
        let row =
            sqlx::query("SELECT id, plan FROM plan_proposed WHERE case_id = $1 AND plan_hash = $2")
                .bind(case_id)
                .bind(hash)
                .fetch_optional(&mut *tx)
                .await?;
        let Some(row) = row else {
            return Ok(Disposition::DeadLetter(
                DeadReason::InvalidData,
                format!("no plan {hash} for case {case_id}"),
            ));
        };
        if case.status != Status::WaitGate {
            // The case moved on (e.g. dismissed): nothing to decide any more.
            tx.commit().await?;
            return Ok(Disposition::Done);
        }
        let plan_id: Uuid = row.try_get("id")?;
        let plan = match ChangePlan::from_stored(&row.try_get::<Value, _>("plan")?) {
            Ok(plan) => plan,
            Err(why) => {
                return Ok(Disposition::DeadLetter(DeadReason::InvalidData, why));
            }
        };
        let ctx = GateContext {
            now: chrono::Utc::now(),
            tenant: case.tenant.as_str(),
        };
        let decision = policy::evaluate(&plan, &self.policy, &ctx);
        sqlx::query(
            "UPDATE plan_proposed SET required_approvers = $2, gate_verdict = $3, gate_risk = $4, \
             gate_reasons = $5, gate_freeze = $6, gate_auto_rollback = $7 WHERE id = $1",
        )
        .bind(plan_id)
        .bind(decision.verdict.required_approvers().map(i16::from))
        .bind(decision.verdict.name())
        .bind(decision.risk)
        .bind(&decision.reasons)
        .bind(decision.verdict.freeze())
        .bind(self.policy.auto_rollback)
        .execute(&mut *tx)
        .await?;
        let judged = GateJudged {
            plan_hash: hash.clone(),
            risk: decision.risk,
            reasons: decision.reasons.clone(),
        };
        let body = match &decision.verdict {
            Verdict::AutoApprove => {
                sqlx::query(
                    "INSERT INTO plan_approved (id, plan_id, plan_hash, approver, kind, reasons) \
                     VALUES ($1, $2, $3, $4, 'auto', $5) ON CONFLICT (plan_id, approver) DO NOTHING",
                )
                .bind(Uuid::now_v7())
                .bind(plan_id)
                .bind(hash)
                .bind(CONSUMER)
                .bind(json!(decision.reasons))
                .execute(&mut *tx)
                .await?;
                Fact::PlanApproved(judged)
            }
            Verdict::RequireApprovers { count } => Fact::GatePending(GatePending {
                judged,
                required_approvers: *count,
                break_glass: None,
                freeze: None,
            }),
            Verdict::BreakGlass { count, freeze } => Fact::GatePending(GatePending {
                judged,
                required_approvers: *count,
                break_glass: Some(true),
                freeze: Some(freeze.clone()),
            }),
            Verdict::Deny => Fact::PlanRejected(PlanRejected {
                reason: format!("gate denied: {}", decision.reasons.join("; ")),
                judged,
            }),
        };
        let fact = Message::for_case(&case, CONSUMER, Some(cmd.id), body).to_envelope();
        outbox::enqueue_fact(&mut tx, fact, traceparent).await?;
        tx.commit().await?;
        tracing::info!(case.id = %case.id, plan.hash = %hash, verdict = ?decision.verdict,
                       risk = decision.risk, "Gate decided.");
        Ok(Disposition::Done)
    }
}
