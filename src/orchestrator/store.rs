//! SQL of the transition transaction. Every function takes the open
//! transaction: nothing here commits.

use serde_json::Value;
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use super::outcome::{Answer, StoredAnswer};
use super::request::{Origin, TransitionRequest};
use crate::contract::command::{GeneratePlan, PlanCommand, RunAnalysis, Verify};
use crate::contract::fact::CaseTransition;
use crate::contract::{CommandMsg, Fact, Message, PlanHash};
use crate::model::{Case, TimelineEntry};
use crate::pubsub::outbox;
use crate::workflow::{Decision, Effect};
use crate::{case_columns, timeline_columns};

pub enum Claim {
    Replay(StoredAnswer),
    Reused,
}

/// Claims `(actor, key)`. `None`: this request owns the key now. A twin in
/// flight blocks on the unique index until its transaction ends.
pub async fn claim_idempotency(
    conn: &mut PgConnection,
    actor: &str,
    key: &str,
    request_hash: &str,
) -> Result<Option<Claim>, sqlx::Error> {
    let claimed = sqlx::query(
        "INSERT INTO idempotency (actor, key, request_hash) VALUES ($1, $2, $3) \
         ON CONFLICT (actor, key) DO NOTHING",
    )
    .bind(actor)
    .bind(key)
    .bind(request_hash)
    .execute(&mut *conn)
    .await?
    .rows_affected()
        == 1;
    if claimed {
        return Ok(None);
    }
    let row = sqlx::query(
        "SELECT request_hash, answer, response_status, response_body FROM idempotency \
         WHERE actor = $1 AND key = $2",
    )
    .bind(actor)
    .bind(key)
    .fetch_one(&mut *conn)
    .await?;
    let stored_hash: String = row.try_get("request_hash")?;
    if stored_hash != request_hash {
        return Ok(Some(Claim::Reused));
    }
    if let Some(answer) = row.try_get::<Option<Value>, _>("answer")? {
        let answer: Answer =
            serde_json::from_value(answer).map_err(|e| sqlx::Error::Decode(e.into()))?;
        return Ok(Some(Claim::Replay(StoredAnswer::Typed(answer))));
    }
    let status: Option<i16> = row.try_get("response_status")?;
    let body: Option<Value> = row.try_get("response_body")?;
    Ok(Some(Claim::Replay(StoredAnswer::Rendered {
        status: status.and_then(|s| u16::try_from(s).ok()).unwrap_or(500),
        body: body.unwrap_or(Value::Null),
    })))
}

pub async fn store_answer(
    conn: &mut PgConnection,
    actor: &str,
    key: &str,
    case_id: Uuid,
    answer: &Answer,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE idempotency SET answer = $3, case_id = $4 WHERE actor = $1 AND key = $2")
        .bind(actor)
        .bind(key)
        .bind(serde_json::to_value(answer).map_err(|e| sqlx::Error::Encode(e.into()))?)
        .bind(case_id)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

pub async fn set_status(
    conn: &mut PgConnection,
    case: &Case,
    decision: &Decision,
) -> Result<Case, sqlx::Error> {
    sqlx::query_as(concat!(
        "UPDATE ops_case SET status = $2, version = version + 1, park_reason = $3, \
         updated_at = now() WHERE id = $1 AND version = $4 RETURNING ",
        case_columns!()
    ))
    .bind(case.id)
    .bind(decision.to.as_str())
    .bind(&decision.park_reason)
    .bind(case.version)
    .fetch_one(&mut *conn)
    .await
}

pub async fn append_transition(
    conn: &mut PgConnection,
    before: &Case,
    after: &Case,
    req: &TransitionRequest,
    meta: &Value,
) -> Result<TimelineEntry, sqlx::Error> {
    sqlx::query_as(concat!(
        "INSERT INTO case_timeline (id, case_id, kind, event, from_status, to_status, version, \
         actor, reason, correlation_id, meta) \
         VALUES ($1, $2, 'transition', $3, $4, $5, $6, $7, $8, $9, $10) RETURNING ",
        timeline_columns!()
    ))
    .bind(Uuid::now_v7())
    .bind(after.id)
    .bind(req.event.as_str())
    .bind(before.status.as_str())
    .bind(after.status.as_str())
    .bind(after.version)
    .bind(&req.actor.id)
    .bind(&req.reason)
    .bind(after.correlation_id)
    .bind(meta)
    .fetch_one(&mut *conn)
    .await
}

pub async fn append_rejection(
    conn: &mut PgConnection,
    case: &Case,
    req: &TransitionRequest,
    code: &str,
    meta: &Value,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO case_timeline (id, case_id, kind, event, from_status, version, actor, \
         reason, rejection_code, correlation_id, meta) \
         VALUES ($1, $2, 'rejected', $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(Uuid::now_v7())
    .bind(case.id)
    .bind(req.event.as_str())
    .bind(case.status.as_str())
    .bind(case.version)
    .bind(&req.actor.id)
    .bind(&req.reason)
    .bind(code)
    .bind(case.correlation_id)
    .bind(meta)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

pub struct HumanApproval {
    pub plan_id: Uuid,
    pub plan_hash: PlanHash,
    pub approver: String,
}

pub async fn record_human_approval(
    conn: &mut PgConnection,
    approval: &HumanApproval,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO plan_approved (id, plan_id, plan_hash, approver, kind) \
         VALUES ($1, $2, $3, $4, 'human') ON CONFLICT (plan_id, approver) DO NOTHING",
    )
    .bind(Uuid::now_v7())
    .bind(approval.plan_id)
    .bind(&approval.plan_hash)
    .bind(&approval.approver)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Puts the effects' commands and the transition event in the outbox, in
/// one statement. Message ids are fixed here, so a re-publish reuses them.
pub async fn enqueue(
    conn: &mut PgConnection,
    before: &Case,
    after: &Case,
    entry: &TimelineEntry,
    req: &TransitionRequest,
    effects: &[Effect],
) -> Result<(), sqlx::Error> {
    // A fact's commands continue from the fact; a person's from the entry.
    let causation = match &req.origin {
        Origin::Message { message_id, .. } => *message_id,
        Origin::Http { .. } | Origin::Direct => entry.id,
    };
    let mut messages: Vec<_> = effects
        .iter()
        .map(|e| {
            Message::for_case(after, &entry.actor, Some(causation), command_for(e)).to_envelope()
        })
        .collect();
    let transition = Fact::CaseTransition(CaseTransition {
        from: before.status,
        to: after.status,
        event: req.event,
        version: after.version,
        actor: entry.actor.clone(),
        reason: entry.reason.clone(),
        timeline_id: entry.id,
    });
    messages
        .push(Message::for_case(after, &entry.actor, Some(causation), transition).to_envelope());
    outbox::enqueue(
        conn,
        Some(after.id),
        &messages,
        &outbox::traceparent(&req.trace_id),
    )
    .await?;
    Ok(())
}

/// The command that carries out an effect.
fn command_for(effect: &Effect) -> CommandMsg {
    let plan = |h: &PlanHash| PlanCommand {
        plan_hash: h.clone(),
    };
    match effect {
        Effect::RunAnalysis => CommandMsg::RunAnalysis(RunAnalysis {}),
        Effect::GeneratePlan { feedback } => CommandMsg::GeneratePlan(GeneratePlan {
            feedback: feedback.clone(),
            template: None,
        }),
        Effect::EvaluateGate { plan_hash } => CommandMsg::EvaluateGate(plan(plan_hash)),
        Effect::Execute { plan_hash } => CommandMsg::Execute(plan(plan_hash)),
        Effect::Verify { plan_hash } => CommandMsg::Verify(Verify {
            plan_hash: Some(plan_hash.clone()),
        }),
        Effect::Rollback { plan_hash } => CommandMsg::Rollback(plan(plan_hash)),
    }
}
