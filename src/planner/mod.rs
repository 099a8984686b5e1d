//! Plans: the ChangePlan contract and storing proposed plans.
//!
//! Owns what a valid plan is and how a proposal is recorded: the plan row
//! and its `evt.plan.proposed.v1` commit together. Must not change case
//! status (the orchestrator does, when the fact arrives) and never runs
//! anything. Template, LLM and human plans all pass the same `contract::check`
//! and are stored by the same `propose`.

pub mod context;
pub mod contract;
pub mod llm;
pub mod memory;
pub mod templates;
pub mod worker;

use sqlx::PgConnection;
use uuid::Uuid;

use crate::contract::fact::PlanProposed;
pub use crate::contract::fact::PlanSource as Source;
use crate::model::Case;
use contract::CheckedPlan;

#[derive(Debug, thiserror::Error)]
pub enum ProposeError {
    #[error("this plan (same hash) was already proposed for the case")]
    Duplicate,
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Stores a checked plan for `case` (locked by the caller), in the
/// caller's transaction, and answers its `evt.plan.proposed.v1`, which the
/// caller puts in the outbox in that same transaction.
pub async fn propose(
    conn: &mut PgConnection,
    case: &Case,
    plan: &CheckedPlan,
    source: Source,
    author: &str,
    template: Option<&str>,
) -> Result<PlanProposed, ProposeError> {
    let id = Uuid::now_v7();
    let inserted = sqlx::query(
        "INSERT INTO plan_proposed (id, case_id, plan, plan_hash, source, author, schema_valid, complete, \
         has_rollback, template) VALUES ($1, $2, $3, $4, $5, $6, true, true, $7, $8) \
         ON CONFLICT (case_id, plan_hash) DO NOTHING",
    )
    .bind(id)
    .bind(case.id)
    .bind(&plan.plan)
    .bind(&plan.hash)
    .bind(<&'static str>::from(source))
    .bind(author)
    .bind(plan.model.has_rollback())
    .bind(template)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if inserted == 0 {
        return Err(ProposeError::Duplicate);
    }
    Ok(PlanProposed {
        plan_id: id,
        plan_hash: plan.hash.clone(),
        source,
    })
}
