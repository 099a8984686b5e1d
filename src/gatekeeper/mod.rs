//! The gatekeeper: consumes `cmd.gate.eval`, applies the deterministic
//! policy to the exact plan named by its hash, and records the decision
//! with its fact in one transaction, under the case lock (so no human
//! approval races the decision).
//!
//! It never changes case status: its facts (`evt.plan.approved.v1`,
//! `evt.gate.pending.v1`, `evt.plan.rejected.v1`) reach the orchestrator.
//! No LLM text is an input to the decision.

pub mod policy;
pub mod targets;

use serde_json::{Value, json};
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use crate::contract::fact::{GateJudged, GatePending, PlanRejected};
use crate::contract::{ChangePlan, CommandMsg, Fact, Message};
use crate::model::Case;
use crate::pubsub::consumer::Delivery;
use crate::worker::{CaseWorker, WorkError};
use crate::workflow::Status;
use policy::{GateContext, GateDecision, Policy, Verdict};

pub const CONSUMER: &str = "gatekeeper";

/// The gate; run it with `worker::Runner`.
pub struct Gatekeeper {
    pub policy: Policy,
}

impl CaseWorker for Gatekeeper {
    type Prepared = ();

    fn name(&self) -> &'static str {
        CONSUMER
    }

    fn accepts(&self, cmd: &CommandMsg) -> bool {
        matches!(cmd, CommandMsg::EvaluateGate(_))
    }

    async fn prepare(&self, _: &Message<CommandMsg>, _: &Delivery) -> Result<(), WorkError> {
        Ok(())
    }

    /// A case that moved on (e.g. dismissed) has nothing to decide any more.
    fn applies(&self, _: &Message<CommandMsg>, case: &Case) -> bool {
        case.status == Status::WaitGate
    }

    async fn apply(
        &self,
        tx: &mut PgConnection,
        cmd: &Message<CommandMsg>,
        case: &Case,
        (): (),
    ) -> Result<Vec<Fact>, WorkError> {
        let CommandMsg::EvaluateGate(args) = &cmd.body else {
            return Err(WorkError::Invalid("not a cmd.gate.eval".into()));
        };
        let (case_id, hash) = (case.id, &args.plan_hash);
        let row =
            sqlx::query("SELECT id, plan FROM plan_proposed WHERE case_id = $1 AND plan_hash = $2")
                .bind(case_id)
                .bind(hash)
                .fetch_optional(&mut *tx)
                .await?;
        let Some(row) = row else {
            return Err(WorkError::Invalid(format!(
                "no plan {hash} for case {case_id}"
            )));
        };
        let plan_id: Uuid = row.try_get("id")?;
        // The plan's current dry run is what this decision judges, and
        // what an automatic approval and the quorum bind to.
        let dryrun = crate::store::current_dryrun(&mut *tx, plan_id).await?;
        let digest = dryrun.as_ref().map(|d| d.digest.clone());
        let ctx = GateContext {
            now: chrono::Utc::now(),
            tenant: case.tenant.as_str(),
            dryrun: dryrun.as_ref().map(|d| d.outcome),
        };
        // A stored plan the model cannot read (stored before the model
        // existed) is denied with the reason, never left in WAIT_GATE.
        let decision = match ChangePlan::from_stored(&row.try_get::<Value, _>("plan")?) {
            Ok(plan) => policy::evaluate(&plan, &self.policy, &ctx),
            Err(why) => GateDecision {
                verdict: Verdict::Deny,
                risk: 1.0,
                reasons: vec![why],
            },
        };
        sqlx::query(
            "UPDATE plan_proposed SET required_approvers = $2, gate_verdict = $3, gate_risk = $4, \
             gate_reasons = $5, gate_freeze = $6, gate_auto_rollback = $7, gate_decided_at = now(), \
             gate_dryrun_digest = $8 WHERE id = $1",
        )
        .bind(plan_id)
        .bind(decision.verdict.required_approvers().map(i16::from))
        .bind(decision.verdict.name())
        .bind(decision.risk)
        .bind(&decision.reasons)
        .bind(decision.verdict.freeze())
        .bind(self.policy.auto_rollback)
        .bind(&digest)
        .execute(&mut *tx)
        .await?;
        // The plan's columns hold the latest decision; the record keeps each.
        sqlx::query(
            "INSERT INTO gate_decision (id, plan_id, plan_hash, verdict, risk, reasons, \
             required_approvers, freeze_name, auto_rollback, dryrun_digest, decided_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, now())",
        )
        .bind(Uuid::now_v7())
        .bind(plan_id)
        .bind(hash)
        .bind(decision.verdict.name())
        .bind(decision.risk)
        .bind(&decision.reasons)
        .bind(decision.verdict.required_approvers().map(i16::from))
        .bind(decision.verdict.freeze())
        .bind(self.policy.auto_rollback)
        .bind(&digest)
        .execute(&mut *tx)
        .await?;
        let judged = GateJudged {
            plan_hash: hash.clone(),
            dryrun_digest: digest.clone(),
            risk: decision.risk,
            reasons: decision.reasons.clone(),
        };
        let body = match &decision.verdict {
            Verdict::AutoApprove => {
                sqlx::query(
                    "INSERT INTO plan_approved (id, plan_id, plan_hash, approver, kind, reasons, dryrun_digest) \
                     VALUES ($1, $2, $3, $4, 'auto', $5, $6) \
                     ON CONFLICT ON CONSTRAINT plan_approved_once_per_dryrun DO NOTHING",
                )
                .bind(Uuid::now_v7())
                .bind(plan_id)
                .bind(hash)
                .bind(CONSUMER)
                .bind(json!(decision.reasons))
                .bind(&digest)
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
        tracing::info!(case.id = %case.id, plan.hash = %hash, verdict = ?decision.verdict,
                       risk = decision.risk, "Gate decided.");
        Ok(vec![body])
    }
}
