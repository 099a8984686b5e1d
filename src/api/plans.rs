//! Plan routes: a person proposes a ChangePlan; anyone reads the current one.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Value, json};
use sqlx::Row;
use uuid::Uuid;

use super::error::ApiError;
use super::extract::{ApiJson, Auth, CasePath};
use super::state::AppState;
use crate::auth::Role;
use crate::contract::fact::DryRunArtefact;
use crate::contract::{DryRunDigest, Fact, Message, PlanHash};
use crate::planner::{self, ProposeError, Source, contract};
use crate::problem::Problem;
use crate::pubsub::outbox;
use crate::store::{lock_case_in, read_case_in};
use crate::telemetry;
use crate::workflow::Status;

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Proposed {
    plan_id: Uuid,
    #[schema(value_type = String)]
    plan_hash: PlanHash,
    source: String,
    author: String,
}

/// Propose a human-written ChangePlan for a case in PLANNING. It is checked
/// against the schema and the completeness guard; `evt.plan.proposed.v1`
/// then moves the case to the gate.
#[utoipa::path(post, path = "/case/{id}/plan", tag = "plans",
    params(("id" = Uuid, Path)), request_body(content = Object, description = "a ChangePlan"),
    responses((status = 201, body = Proposed), (status = 403, body = Problem, description = "forbidden: operators propose plans"),
              (status = 404, body = Problem),
              (status = 409, body = Problem, description = "not in PLANNING, or the same plan again"),
              (status = 422, body = Problem, description = "plan_invalid, with violations")),
    security(("bearer" = [])))]
pub async fn propose(
    State(state): State<AppState>,
    Auth(who): Auth,
    CasePath(id): CasePath,
    ApiJson(plan): ApiJson<Value>,
) -> Result<Response, ApiError> {
    if !who.has(Role::Operator) {
        return Err(ApiError::Forbidden(format!(
            "{} may not propose plans",
            who.id
        )));
    }
    // The case first: whether a plan is expected at all does not depend
    // on the plan, and a plan for no case (or one not planning) is refused
    // as such, whatever it holds.
    let mut tx = state.orchestrator.pool().begin().await?;
    let case = lock_case_in(&mut tx, id, &who.tenants)
        .await?
        .ok_or(ApiError::CaseNotFound(id))?;
    if case.status != Status::Planning {
        return Err(ApiError::Conflict {
            code: "plan_not_expected",
            detail: format!(
                "a plan is accepted in PLANNING; the case is in {}",
                case.status
            ),
        });
    }
    let checked = contract::check(&plan, &state.plan_limits).map_err(|violations| {
        telemetry::plan_validation_failed("human");
        ApiError::PlanInvalid(violations)
    })?;
    let proposed = planner::propose(&mut tx, &case, &checked, Source::Human, &who.id, None)
        .await
        .map_err(|e| match e {
            ProposeError::Duplicate => ApiError::Conflict {
                code: "duplicate_plan",
                detail: e.to_string(),
            },
            ProposeError::Database(e) => e.into(),
        })?;
    let plan_id = proposed.plan_id;
    let message = Message::for_case(&case, &who.id, None, Fact::PlanProposed(proposed));
    outbox::enqueue_caused(&mut tx, case.id, &[message.to_envelope()], None).await?;
    tx.commit().await?;
    state.orchestrator.outbox_ready().wake();
    let body = Proposed {
        plan_id,
        plan_hash: checked.hash,
        source: Source::Human.to_string(),
        author: who.id,
    };
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// The current plan of a case: content, hash, source, author, the approvals
/// of this exact hash, and what the gate still requires.
#[utoipa::path(get, path = "/case/{id}/plan", tag = "plans",
    params(("id" = Uuid, Path)),
    responses((status = 200, description = "the current plan"), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn current(
    State(state): State<AppState>,
    Auth(who): Auth,
    CasePath(id): CasePath,
) -> Result<Json<Value>, ApiError> {
    let pool = state.orchestrator.pool();
    let row = sqlx::query(
        "SELECT id, plan, plan_hash, source, author, required_approvers, created_at, \
         gate_verdict, gate_risk, gate_reasons, gate_freeze, gate_auto_rollback, \
         dryrun_digest, gate_dryrun_digest \
         FROM plan_proposed WHERE case_id = $1 \
         AND EXISTS (SELECT 1 FROM ops_case c WHERE c.id = $1 \
                     AND ($2::text[] IS NULL OR c.tenant = ANY($2))) \
         ORDER BY seq DESC LIMIT 1",
    )
    .bind(id)
    .bind(who.tenants.sql())
    .fetch_optional(pool)
    .await?;
    let Some(row) = row else {
        // Another tenant's case is as unknown as a case that never was.
        return Err(match read_case_in(pool, id, &who.tenants).await? {
            None => ApiError::CaseNotFound(id),
            Some(_) => ApiError::PlanNotFound(id),
        });
    };
    let plan_id: Uuid = row.try_get("id")?;
    let hash: String = row.try_get("plan_hash")?;
    // The current dry run: the one the orchestrator accepted last.
    let dry_run: Option<DryRunShown> = sqlx::query_as(
        "SELECT d.digest, d.outcome, d.artefact, d.created_at AS at FROM plan_proposed p \
         JOIN plan_dryrun d ON d.plan_id = p.id AND d.digest = p.dryrun_digest WHERE p.id = $1",
    )
    .bind(plan_id)
    .fetch_optional(pool)
    .await?;
    // Approvals count for the latest dry run only (a new one voids them).
    let approvals: Vec<ApprovalShown> = sqlx::query_as(
        "SELECT approver, kind, decided_at, dryrun_digest, \
         dryrun_digest IS NOT DISTINCT FROM $3 AS counts \
         FROM plan_approved WHERE plan_id = $1 AND plan_hash = $2 ORDER BY decided_at",
    )
    .bind(plan_id)
    .bind(&hash)
    .bind(dry_run.as_ref().map(|d| &d.digest))
    .fetch_all(pool)
    .await?;
    // A decision on an older dry run asks nothing: the gatekeeper judges
    // the current one first.
    let required = crate::store::quorum_on_current_dryrun(
        row.try_get("required_approvers")?,
        row.try_get::<Option<DryRunDigest>, _>("gate_dryrun_digest")?
            .as_ref(),
        row.try_get::<Option<DryRunDigest>, _>("dryrun_digest")?
            .as_ref(),
    )
    .map(i16::from);
    let counting = || approvals.iter().filter(|a| a.counts);
    let automatic = counting().any(|a| a.kind == "auto");
    let humans = counting().filter(|a| a.kind == "human").count();
    Ok(Json(json!({
        "plan_id": plan_id,
        "plan_hash": hash,
        "source": row.try_get::<String, _>("source")?,
        "author": row.try_get::<String, _>("author")?,
        "created_at": row.try_get::<chrono::DateTime<chrono::Utc>, _>("created_at")?,
        "plan": row.try_get::<Value, _>("plan")?,
        "approvals": approvals,
        "dry_run": dry_run,
        "gate": {
            "evaluated": required.is_some() || automatic,
            "required_approvers": required,
            "decision": GateShown::from_row(&row, required)?,
            "approved": automatic || required.is_some_and(|r| humans >= r as usize),
        },
    })))
}

/// One approval of the current plan.
#[derive(Debug, Serialize, sqlx::FromRow)]
struct ApprovalShown {
    approver: String,
    /// `auto` (the gatekeeper) or `human`.
    kind: String,
    decided_at: chrono::DateTime<chrono::Utc>,
    /// The dry run the approval judged.
    dryrun_digest: Option<DryRunDigest>,
    /// Given on the plan's latest dry run; an older one's vote is void.
    counts: bool,
}

/// The plan's latest dry run, as approvers see it before they judge.
#[derive(Debug, Serialize, sqlx::FromRow)]
struct DryRunShown {
    digest: DryRunDigest,
    /// `ok`, `failed` or `unavailable`.
    outcome: String,
    artefact: sqlx::types::Json<DryRunArtefact>,
    at: chrono::DateTime<chrono::Utc>,
}

/// The gatekeeper's decision as `GET /case/{id}/plan` has always shown it.
#[derive(Debug, Serialize)]
struct GateShown {
    verdict: String,
    /// Distinct approvers required (`require_approvers`, `break_glass`).
    #[serde(skip_serializing_if = "Option::is_none")]
    count: Option<i16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    freeze: Option<String>,
    risk: f64,
    reasons: Vec<String>,
    auto_rollback: bool,
}

impl GateShown {
    /// `None` until the gatekeeper has decided.
    fn from_row(
        row: &sqlx::postgres::PgRow,
        required: Option<i16>,
    ) -> Result<Option<GateShown>, sqlx::Error> {
        let Some(verdict) = row.try_get::<Option<String>, _>("gate_verdict")? else {
            return Ok(None);
        };
        Ok(Some(GateShown {
            verdict,
            count: required,
            freeze: row.try_get("gate_freeze")?,
            risk: row.try_get("gate_risk")?,
            reasons: row.try_get("gate_reasons")?,
            auto_rollback: row.try_get("gate_auto_rollback")?,
        }))
    }
}

/// Every approval of every plan of the case, oldest first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Approvals {
    pub items: Vec<ApprovalListed>,
}

/// One approval: who judged which plan (and dry run), when, and whether it
/// counts for the case's current plan and dry run now.
#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct ApprovalListed {
    pub approver: String,
    /// `auto` (the gatekeeper) or `human`.
    pub kind: String,
    #[schema(value_type = String)]
    pub plan_hash: PlanHash,
    #[schema(value_type = Option<String>)]
    pub dryrun_digest: Option<DryRunDigest>,
    pub decided_at: chrono::DateTime<chrono::Utc>,
    /// For the current plan and its current dry run, which did not fail:
    /// what the gate counts.
    pub counts: bool,
}

/// Who approved which plan of a case (DESIGN §13): every approval of every
/// plan, with the hash and dry run it named.
#[utoipa::path(get, path = "/case/{id}/approvals", tag = "plans",
    params(("id" = Uuid, Path)),
    responses((status = 200, body = Approvals), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn approvals(
    State(state): State<AppState>,
    Auth(who): Auth,
    CasePath(id): CasePath,
) -> Result<Json<Approvals>, ApiError> {
    let pool = state.orchestrator.pool();
    // Another tenant's case is as unknown as a case that never was.
    read_case_in(pool, id, &who.tenants)
        .await?
        .ok_or(ApiError::CaseNotFound(id))?;
    let items: Vec<ApprovalListed> = sqlx::query_as(
        "SELECT a.approver, a.kind, a.plan_hash, a.dryrun_digest, a.decided_at, \
         (p.seq = (SELECT max(seq) FROM plan_proposed WHERE case_id = $1) \
          AND a.dryrun_digest IS NOT DISTINCT FROM p.dryrun_digest \
          AND NOT EXISTS (SELECT 1 FROM plan_dryrun d WHERE d.plan_id = p.id \
                          AND d.digest = p.dryrun_digest AND d.outcome = 'failed')) AS counts \
         FROM plan_approved a JOIN plan_proposed p ON p.id = a.plan_id \
         WHERE p.case_id = $1 ORDER BY a.decided_at, a.approver",
    )
    .bind(id)
    .fetch_all(pool)
    .await?;
    Ok(Json(Approvals { items }))
}

/// The ChangePlan JSON Schema, as validated.
pub async fn schema() -> Response {
    let mut response = contract::SCHEMA_JSON.into_response();
    response.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/schema+json"),
    );
    response
}
