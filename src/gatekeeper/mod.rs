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

use crate::pubsub::consumer::{DeadReason, Delivery, Disposition, Handler};
use crate::pubsub::{Envelope, inbox, outbox};
use crate::workflow::Status;
use policy::{GateContext, Policy, Verdict};

pub const CONSUMER: &str = "gatekeeper";
pub const CMD_GATE_EVAL: &str = crate::pubsub::subjects::CMD_GATE_EVAL;
pub const EVT_PLAN_APPROVED: &str = "evt.plan.approved.v1";
pub const EVT_GATE_PENDING: &str = "evt.gate.pending.v1";
pub const EVT_PLAN_REJECTED: &str = "evt.plan.rejected.v1";

pub struct Gatekeeper {
    pub pool: PgPool,
    pub policy: Policy,
}

impl Handler for Gatekeeper {
    fn name(&self) -> &str {
        CONSUMER
    }

    async fn handle(&self, d: &Delivery) -> Disposition {
        let env = &d.envelope;
        let case_id = match d.case_command(CMD_GATE_EVAL) {
            Ok(id) => id,
            Err(dead) => return dead,
        };
        let Some(hash) = env.data["plan_hash"].as_str() else {
            return Disposition::DeadLetter(
                DeadReason::InvalidData,
                "cmd.gate.eval needs data.plan_hash".into(),
            );
        };
        match self
            .evaluate(env, case_id, hash, &d.subject, d.traceparent.as_deref())
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
        cmd: &Envelope,
        case_id: Uuid,
        hash: &str,
        subject: &str,
        traceparent: Option<&str>,
    ) -> Result<Disposition, sqlx::Error> {
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
        let plan: Value = row.try_get("plan")?;
        let ctx = GateContext {
            now: chrono::Utc::now(),
            tenant: &case.tenant,
        };
        let decision = policy::evaluate(&plan, &self.policy, &ctx);
        let mut stored = json!(decision);
        stored["auto_rollback"] = json!(self.policy.auto_rollback);
        let required = match decision.verdict {
            Verdict::RequireApprovers { count } | Verdict::BreakGlass { count, .. } => {
                Some(i16::from(count))
            }
            Verdict::AutoApprove | Verdict::Deny => None,
        };
        sqlx::query(
            "UPDATE plan_proposed SET gate_decision = $2, required_approvers = $3 WHERE id = $1",
        )
        .bind(plan_id)
        .bind(&stored)
        .bind(required)
        .execute(&mut *tx)
        .await?;
        let (kind, data) = match &decision.verdict {
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
                (
                    EVT_PLAN_APPROVED,
                    json!({"plan_hash": hash, "risk": decision.risk, "reasons": decision.reasons}),
                )
            }
            Verdict::RequireApprovers { count } => (
                EVT_GATE_PENDING,
                json!({"plan_hash": hash, "risk": decision.risk, "reasons": decision.reasons,
                       "required_approvers": count}),
            ),
            Verdict::BreakGlass { count, freeze } => (
                EVT_GATE_PENDING,
                json!({"plan_hash": hash, "risk": decision.risk, "reasons": decision.reasons,
                       "required_approvers": count, "break_glass": true, "freeze": freeze}),
            ),
            Verdict::Deny => (
                EVT_PLAN_REJECTED,
                json!({"plan_hash": hash, "risk": decision.risk, "reasons": decision.reasons,
                       "reason": format!("gate denied: {}", decision.reasons.join("; "))}),
            ),
        };
        let fact = Envelope::for_case(&case, kind, CONSUMER, Some(cmd.id), data);
        outbox::enqueue_fact(&mut tx, fact, traceparent).await?;
        tx.commit().await?;
        tracing::info!(case.id = %case.id, plan.hash = hash, verdict = ?decision.verdict,
                       risk = decision.risk, "Gate decided.");
        Ok(Disposition::Done)
    }
}
