//! SQL of the transition transaction. Every function takes the open
//! transaction: nothing here commits.

use serde_json::Value;
use sqlx::{FromRow, PgConnection, Row};
use uuid::Uuid;

use super::outcome::{Answer, StoredAnswer};
use super::request::{Origin, TransitionRequest};
use crate::contract::command::{GeneratePlan, PlanCommand, RunAnalysis, Verify};
use crate::contract::fact::{CaseTransition, GateVote};
use crate::contract::{CommandMsg, Fact, Message, PlanHash};
use crate::model::{Case, TimelineEntry};
use crate::pubsub::{Envelope, outbox};
use crate::workflow::{Decision, Effect, Facts, Rejection};
use crate::{case_columns, case_in_scope, timeline_columns};

pub enum Claim {
    Replay(StoredAnswer),
    /// The key created a case: the case as it was created (rebuilt from
    /// the case and its `created` entry, never stored).
    ReplayCreated(Box<Case>),
    Reused,
}

/// What the first statement of an idempotent transition found.
pub enum Claimed {
    /// This request owns the key now; the case as locked, if in scope.
    Fresh(Option<Case>),
    Seen(Claim),
}

/// Claims `(actor, key)` and locks the case, in one statement (one round
/// trip). The claim row names `timeline_id`, the entry this transaction
/// will write: an applied answer is rebuilt from it on replay. A twin in
/// flight blocks on the unique index until its transaction ends; the claim
/// runs before the lock (the update waits for it), so twins queue on the
/// key, never on the key and the row in opposite orders. The lock counts
/// itself in `lock_seq`, as every case lock does (`store::lock_case_in`).
pub async fn claim_and_lock(
    conn: &mut PgConnection,
    req: &TransitionRequest,
    key: &str,
    request_hash: &str,
    timeline_id: Uuid,
) -> Result<Claimed, sqlx::Error> {
    let row = sqlx::query(concat!(
        "WITH claim AS (INSERT INTO idempotency (actor, key, request_hash, timeline_id) \
         VALUES ($3, $4, $5, $6) ON CONFLICT (actor, key) DO NOTHING RETURNING 1), \
         c AS (UPDATE ops_case SET lock_seq = lock_seq + 1 WHERE ",
        case_in_scope!(),
        " AND EXISTS (SELECT 1 FROM claim) RETURNING ",
        case_columns!(),
        ") SELECT k.claimed, c.* FROM (SELECT count(*) AS claimed FROM claim) k LEFT JOIN c ON true"
    ))
    .bind(req.case_id)
    .bind(req.tenants.sql())
    .bind(&req.actor.id)
    .bind(key)
    .bind(request_hash)
    .bind(timeline_id)
    .fetch_one(&mut *conn)
    .await?;
    if row.try_get::<i64, _>("claimed")? == 0 {
        return stored_answer(conn, &req.actor.id, key, request_hash)
            .await
            .map(Claimed::Seen);
    }
    let found = row.try_get::<Option<Uuid>, _>("id")?.is_some();
    Ok(Claimed::Fresh(if found {
        Some(Case::from_row(&row)?)
    } else {
        None
    }))
}

/// Claims `(actor, key)` for a case creation whose `created` entry will be
/// `timeline_id`. `None`: this request owns the key now.
pub async fn claim_creation(
    conn: &mut PgConnection,
    actor: &str,
    key: &str,
    request_hash: &str,
    timeline_id: Uuid,
) -> Result<Option<Claim>, sqlx::Error> {
    let claimed = sqlx::query(
        "INSERT INTO idempotency (actor, key, request_hash, timeline_id) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (actor, key) DO NOTHING",
    )
    .bind(actor)
    .bind(key)
    .bind(request_hash)
    .bind(timeline_id)
    .execute(&mut *conn)
    .await?
    .rows_affected()
        == 1;
    if claimed {
        return Ok(None);
    }
    stored_answer(conn, actor, key, request_hash)
        .await
        .map(Some)
}

/// The answer stored for a key someone already claimed.
async fn stored_answer(
    conn: &mut PgConnection,
    actor: &str,
    key: &str,
    request_hash: &str,
) -> Result<Claim, sqlx::Error> {
    let row = sqlx::query(
        "SELECT request_hash, answer, response_status, response_body, timeline_id \
         FROM idempotency WHERE actor = $1 AND key = $2",
    )
    .bind(actor)
    .bind(key)
    .fetch_one(&mut *conn)
    .await?;
    let stored_hash: String = row.try_get("request_hash")?;
    if stored_hash != request_hash {
        return Ok(Claim::Reused);
    }
    if let Some(answer) = row.try_get::<Option<Value>, _>("answer")? {
        let answer: Answer =
            serde_json::from_value(answer).map_err(|e| sqlx::Error::Decode(e.into()))?;
        return Ok(Claim::Replay(StoredAnswer::Typed(answer)));
    }
    if let Some(status) = row.try_get::<Option<i16>, _>("response_status")? {
        let body: Option<Value> = row.try_get("response_body")?;
        return Ok(Claim::Replay(StoredAnswer::Rendered {
            status: u16::try_from(status).unwrap_or(500),
            body: body.unwrap_or(Value::Null),
        }));
    }
    let timeline_id: Uuid = row
        .try_get::<Option<Uuid>, _>("timeline_id")?
        .ok_or_else(|| sqlx::Error::Decode("an idempotency row with no answer".into()))?;
    rebuild(conn, timeline_id).await
}

/// The answer the timeline entry its claim named stands for: a
/// transition's, or a creation's.
async fn rebuild(conn: &mut PgConnection, timeline_id: Uuid) -> Result<Claim, sqlx::Error> {
    let kind: String = sqlx::query_scalar("SELECT kind FROM case_timeline WHERE id = $1")
        .bind(timeline_id)
        .fetch_one(&mut *conn)
        .await?;
    if kind != "created" {
        let applied = rebuild_applied(conn, timeline_id).await?;
        return Ok(Claim::Replay(StoredAnswer::Typed(applied)));
    }
    let case: Case = sqlx::query_as(
        "SELECT c.id, c.tenant, c.title, c.severity, c.kind, c.labels, 'NEW' AS status, \
         1::bigint AS version, NULL::text AS park_reason, c.correlation_id, c.created_by, \
         c.created_at, c.created_at AS updated_at \
         FROM case_timeline t JOIN ops_case c ON c.id = t.case_id WHERE t.id = $1",
    )
    .bind(timeline_id)
    .fetch_one(&mut *conn)
    .await?;
    Ok(Claim::ReplayCreated(Box::new(case)))
}

/// The answer of an applied transition, as it was given: its timeline entry
/// (append-only) and the case as that entry left it (the columns a
/// transition changes come from the entry, the others never change).
async fn rebuild_applied(
    conn: &mut PgConnection,
    timeline_id: Uuid,
) -> Result<Answer, sqlx::Error> {
    let transition: TimelineEntry = sqlx::query_as(concat!(
        "SELECT ",
        timeline_columns!(),
        " FROM case_timeline WHERE id = $1 AND kind = 'transition'"
    ))
    .bind(timeline_id)
    .fetch_one(&mut *conn)
    .await?;
    let case: Case = sqlx::query_as(
        "SELECT c.id, c.tenant, c.title, c.severity, c.kind, c.labels, t.to_status AS status, \
         t.version, t.park_reason, c.correlation_id, c.created_by, c.created_at, \
         t.at AS updated_at \
         FROM case_timeline t JOIN ops_case c ON c.id = t.case_id WHERE t.id = $1",
    )
    .bind(timeline_id)
    .fetch_one(&mut *conn)
    .await?;
    Ok(Answer::Applied {
        case: Box::new(case),
        transition: Box::new(transition),
    })
}

/// Stores an answer that wrote no timeline entry of its own (a rejection,
/// a vote already counted) with the claim (an applied answer needs no copy:
/// see `rebuild_applied`).
pub async fn store_answer(
    conn: &mut PgConnection,
    actor: &str,
    key: &str,
    answer: &Answer,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE idempotency SET answer = $3 WHERE actor = $1 AND key = $2")
        .bind(actor)
        .bind(key)
        .bind(serde_json::to_value(answer).map_err(|e| sqlx::Error::Encode(e.into()))?)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// A timeline entry's `meta`: the trace, the facts the decision saw, the
/// caller's context, and the decision's note or the rejection.
#[derive(serde::Serialize)]
pub struct TimelineMeta<'a> {
    trace_id: &'a str,
    facts: &'a Facts,
    /// A person's free-form `meta` (HTTP, in-process).
    #[serde(skip_serializing_if = "Option::is_none")]
    request: Option<&'a Value>,
    /// A worker fact's own data, under another key than `request`: what a
    /// caller types can never pass for a worker's findings (the planner
    /// shows `fact.findings` to the LLM).
    #[serde(skip_serializing_if = "Option::is_none")]
    fact: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message_id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<&'a str>,
    /// Which guards failed and why, for whoever reads the timeline (a
    /// refused re-plan names the policy's limit).
    #[serde(skip_serializing_if = "Option::is_none")]
    rejection: Option<&'a Rejection>,
}

impl<'a> TimelineMeta<'a> {
    pub fn of(req: &'a TransitionRequest, facts: &'a Facts) -> Self {
        let given = (!req.meta.is_null()).then_some(&req.meta);
        let (request, fact, message_id) = match &req.origin {
            Origin::Message { message_id, .. } => (None, given, Some(*message_id)),
            Origin::Http { .. } | Origin::Direct => (given, None, None),
        };
        TimelineMeta {
            trace_id: &req.trace_id,
            facts,
            request,
            fact,
            message_id,
            note: None,
            rejection: None,
        }
    }

    /// An accepted move's meta.
    pub fn applied(self, decision: &'a Decision) -> Self {
        TimelineMeta {
            note: Some(&decision.note),
            ..self
        }
    }

    /// A refused move's meta.
    pub fn rejected(self, rejection: &'a Rejection) -> Self {
        TimelineMeta {
            rejection: Some(rejection),
            ..self
        }
    }
}

/// The timeline entry and the outbox rows of an accepted transition, as
/// CTEs after `upd` (parameters bound by `writes`).
macro_rules! entry_and_outbox {
    () => {
        "ent AS (INSERT INTO case_timeline (id, case_id, kind, event, from_status, to_status, \
         version, actor, reason, correlation_id, meta, park_reason) \
         SELECT $5, id, 'transition', $6, $7, status, version, $8, $9, correlation_id, $10, \
         park_reason FROM upd RETURNING meta, at), \
         ob AS (INSERT INTO outbox (message_id, case_id, subject, payload, traceparent) \
         SELECT m, $1, s, p, $14 FROM UNNEST($11::uuid[], $12::text[], $13::text[]) AS t(m, s, p) \
         WHERE EXISTS (SELECT 1 FROM ent))"
    };
}
/// The conditional update of a one-statement write: only if the case is
/// still at the version and `lock_seq` it was read at, and only after the
/// request's claim (so twins queue on the claim first, as under the lock).
macro_rules! unlocked_update {
    () => {
        concat!(
            "upd AS (UPDATE ops_case SET status = $2, version = version + 1, park_reason = $3, \
             updated_at = now() WHERE id = $1 AND version = $4 AND lock_seq = $15 \
             AND EXISTS (SELECT 1 FROM claim) RETURNING ",
            case_columns!(),
            "), ",
            entry_and_outbox!(),
            " SELECT upd.*, ent.meta AS entry_meta, ent.at AS entry_at \
             FROM (SELECT count(*) AS n FROM upd) u LEFT JOIN (upd CROSS JOIN ent) ON true \
             WHERE CASE WHEN u.n = 1 THEN true ELSE transition_refused() END"
        )
    };
}

/// An accepted transition's writes, in one statement: the case's new status,
/// its timeline entry and the outbox messages (the effects' commands and
/// the transition event). The messages are built before the statement from
/// what the update will produce (next version, decided status), so the
/// three writes need no round trip between them. Answers the case and the
/// entry as stored.
pub async fn apply(
    conn: &mut PgConnection,
    before: &Case,
    decision: &Decision,
    req: &TransitionRequest,
    entry_id: Uuid,
    meta: &TimelineMeta<'_>,
) -> Result<(Case, TimelineEntry), sqlx::Error> {
    let row = writes(
        sqlx::query(concat!(
            "WITH upd AS (UPDATE ops_case SET status = $2, version = version + 1, \
             park_reason = $3, updated_at = now() WHERE id = $1 AND version = $4 RETURNING ",
            case_columns!(),
            "), ",
            entry_and_outbox!(),
            " SELECT upd.*, ent.meta AS entry_meta, ent.at AS entry_at FROM upd, ent"
        )),
        before,
        decision,
        req,
        entry_id,
        meta,
    )
    .fetch_one(&mut *conn)
    .await?;
    applied(&row, before, req, entry_id)
}

/// What a one-statement write applies on: the case's `lock_seq` as read,
/// and the request's claim.
pub struct AsRead<'a> {
    pub lock_seq: i64,
    pub claimant: Claimant<'a>,
}

/// How a one-statement write records its request, so that a duplicate has
/// no second effect: the same records the locked path claims.
pub enum Claimant<'a> {
    /// An HTTP request's `Idempotency-Key`.
    Key {
        actor: &'a str,
        key: &'a str,
        request_hash: &'a str,
    },
    /// A consumed message, in the consumer's inbox.
    Inbox {
        consumer: &'a str,
        message_id: Uuid,
        subject: &'a str,
    },
    /// In-process callers with their own duplicate handling.
    Nothing,
}

impl<'a> Claimant<'a> {
    /// The record `req`'s origin is claimed by.
    pub fn of(req: &'a TransitionRequest) -> Self {
        match &req.origin {
            Origin::Http {
                idempotency_key,
                request_hash,
            } => Claimant::Key {
                actor: &req.actor.id,
                key: idempotency_key.as_str(),
                request_hash,
            },
            Origin::Message {
                consumer,
                message_id,
                subject,
            } => Claimant::Inbox {
                consumer,
                message_id: *message_id,
                subject,
            },
            Origin::Direct => Claimant::Nothing,
        }
    }
}

/// `apply` without the case lock: the case was read, not locked, at
/// `as_read.lock_seq`, and the statement also makes the request's claim. If a
/// writer came in between, or the claim was made before, the statement
/// fails as a whole (see `refused`), leaving nothing behind.
pub async fn apply_unlocked(
    conn: &mut PgConnection,
    before: &Case,
    as_read: AsRead<'_>,
    decision: &Decision,
    req: &TransitionRequest,
    entry_id: Uuid,
    meta: &TimelineMeta<'_>,
) -> Result<(Case, TimelineEntry), sqlx::Error> {
    let AsRead { lock_seq, claimant } = as_read;
    let query = match claimant {
        Claimant::Key { .. } => sqlx::query(concat!(
            "WITH claim AS (INSERT INTO idempotency (actor, key, request_hash, timeline_id) \
             VALUES ($16, $17, $18, $5) RETURNING 1), ",
            unlocked_update!()
        )),
        Claimant::Inbox { .. } => sqlx::query(concat!(
            "WITH claim AS (INSERT INTO inbox (consumer, message_id, subject, case_id) \
             VALUES ($16, $17, $18, $1) RETURNING 1), ",
            unlocked_update!()
        )),
        Claimant::Nothing => sqlx::query(concat!("WITH claim AS (SELECT 1), ", unlocked_update!())),
    };
    let query = writes(query, before, decision, req, entry_id, meta).bind(lock_seq);
    let query = match claimant {
        Claimant::Key {
            actor,
            key,
            request_hash,
        } => query.bind(actor).bind(key).bind(request_hash),
        Claimant::Inbox {
            consumer,
            message_id,
            subject,
        } => query.bind(consumer).bind(message_id).bind(subject),
        Claimant::Nothing => query,
    };
    let row = query.fetch_one(&mut *conn).await?;
    applied(&row, before, req, entry_id)
}

/// The one-statement write found the case changed (`transition_refused`)
/// or the request already claimed (a duplicate, or a twin that won): the
/// locked path answers it.
pub fn refused(e: &sqlx::Error) -> bool {
    let Some(db) = e.as_database_error() else {
        return false;
    };
    match db.code().as_deref() {
        Some("40001") => true,
        Some("23505") => matches!(db.constraint(), Some("idempotency_pkey" | "inbox_pkey")),
        _ => false,
    }
}

/// Binds the parameters `$1`-`$14` of the transition's writes.
fn writes<'q>(
    query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    before: &'q Case,
    decision: &'q Decision,
    req: &'q TransitionRequest,
    entry_id: Uuid,
    meta: &'q TimelineMeta<'q>,
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    let mut after = before.clone();
    after.status = decision.to;
    after.version = before.version + 1;
    after.park_reason.clone_from(&decision.park_reason);
    let messages = messages(before, &after, entry_id, req, decision);
    let rows = outbox::Rows::of(&messages);
    query
        .bind(before.id)
        .bind(decision.to.as_str())
        .bind(&decision.park_reason)
        .bind(before.version)
        .bind(entry_id)
        .bind(req.event.as_str())
        .bind(before.status.as_str())
        .bind(&req.actor.id)
        .bind(&req.reason)
        .bind(sqlx::types::Json(meta))
        .bind(rows.ids)
        .bind(rows.subjects)
        .bind(rows.payloads)
        .bind(outbox::traceparent(&req.trace_id))
}

/// The case and the entry an accepted transition's statement returned.
fn applied(
    row: &sqlx::postgres::PgRow,
    before: &Case,
    req: &TransitionRequest,
    entry_id: Uuid,
) -> Result<(Case, TimelineEntry), sqlx::Error> {
    let after = Case::from_row(row)?;
    let entry = TimelineEntry {
        id: entry_id,
        case_id: after.id,
        kind: "transition".to_string(),
        event: Some(req.event.as_str().to_string()),
        from_status: Some(before.status.as_str().to_string()),
        to_status: Some(after.status.as_str().to_string()),
        version: after.version,
        actor: req.actor.id.clone(),
        reason: req.reason.clone(),
        rejection_code: None,
        correlation_id: after.correlation_id,
        meta: row.try_get("entry_meta")?,
        at: row.try_get("entry_at")?,
    };
    Ok((after, entry))
}

/// The case and its `lock_seq`, unlocked, for a one-statement transition.
pub async fn read_for_write(
    conn: &mut PgConnection,
    req: &TransitionRequest,
) -> Result<Option<(Case, i64)>, sqlx::Error> {
    let row = sqlx::query(concat!(
        "SELECT ",
        case_columns!(),
        ", lock_seq FROM ops_case WHERE ",
        case_in_scope!()
    ))
    .bind(req.case_id)
    .bind(req.tenants.sql())
    .fetch_optional(&mut *conn)
    .await?;
    row.map(|row| Ok((Case::from_row(&row)?, row.try_get("lock_seq")?)))
        .transpose()
}

pub async fn append_rejection(
    conn: &mut PgConnection,
    case: &Case,
    req: &TransitionRequest,
    code: &str,
    entry_id: Uuid,
    meta: &TimelineMeta<'_>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO case_timeline (id, case_id, kind, event, from_status, version, actor, \
         reason, rejection_code, correlation_id, meta) \
         VALUES ($1, $2, 'rejected', $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(entry_id)
    .bind(case.id)
    .bind(req.event.as_str())
    .bind(case.status.as_str())
    .bind(case.version)
    .bind(&req.actor.id)
    .bind(&req.reason)
    .bind(code)
    .bind(case.correlation_id)
    .bind(sqlx::types::Json(meta))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

pub struct HumanApproval {
    pub plan_id: Uuid,
    pub plan_hash: PlanHash,
    pub approver: String,
    /// The dry run the person saw (`None`: the plan has none).
    pub dryrun_digest: Option<crate::contract::DryRunDigest>,
}

pub async fn record_human_approval(
    conn: &mut PgConnection,
    approval: &HumanApproval,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO plan_approved (id, plan_id, plan_hash, approver, kind, dryrun_digest) \
         VALUES ($1, $2, $3, $4, 'human', $5) \
         ON CONFLICT ON CONSTRAINT plan_approved_once_per_dryrun DO NOTHING",
    )
    .bind(Uuid::now_v7())
    .bind(approval.plan_id)
    .bind(&approval.plan_hash)
    .bind(&approval.approver)
    .bind(&approval.dryrun_digest)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The effects' commands and the transition event, for the outbox.
/// Message ids are fixed here, so a re-publish reuses them.
fn messages(
    before: &Case,
    after: &Case,
    entry_id: Uuid,
    req: &TransitionRequest,
    decision: &Decision,
) -> Vec<Envelope> {
    // A fact's commands continue from the fact; a person's from the entry.
    let causation = match &req.origin {
        Origin::Message { message_id, .. } => *message_id,
        Origin::Http { .. } | Origin::Direct => entry_id,
    };
    let actor = &req.actor.id;
    let mut messages: Vec<_> = decision
        .effects
        .iter()
        .map(|e| Message::for_case(after, actor, Some(causation), command_for(e)).to_envelope())
        .collect();
    let transition = Fact::CaseTransition(CaseTransition {
        from: before.status,
        to: after.status,
        event: req.event,
        version: after.version,
        actor: actor.clone(),
        reason: req.reason.clone(),
        timeline_id: entry_id,
    });
    messages.push(Message::for_case(after, actor, Some(causation), transition).to_envelope());
    // A vote short of the quorum: screens and chat show the count live.
    if let (Some(tally), Some(plan_hash)) = (decision.tally, &req.plan_hash) {
        let vote = Fact::GateVote(GateVote {
            plan_hash: plan_hash.clone(),
            dryrun_digest: req.dryrun_digest.clone(),
            approver: actor.clone(),
            count: tally.count,
            required: tally.required,
            missing: tally.missing(),
            timeline_id: entry_id,
        });
        messages.push(Message::for_case(after, actor, Some(causation), vote).to_envelope());
    }
    messages
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
        Effect::DryRun { plan_hash } => CommandMsg::DryRun(plan(plan_hash)),
        Effect::EvaluateGate { plan_hash } => CommandMsg::EvaluateGate(plan(plan_hash)),
        Effect::Execute { plan_hash } => CommandMsg::Execute(plan(plan_hash)),
        Effect::Verify { plan_hash } => CommandMsg::Verify(Verify {
            plan_hash: Some(plan_hash.clone()),
        }),
        Effect::Rollback { plan_hash } => CommandMsg::Rollback(plan(plan_hash)),
    }
}
