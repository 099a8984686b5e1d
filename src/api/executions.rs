//! `GET /case/{id}/executions`: the case's execution runs with their steps
//! and its verification results, newest first; what a person reads to see
//! what was changed, with which output, and what the SLO said.

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use super::cases::fetch_case;
use super::error::ApiError;
use super::extract::{Auth, CasePath};
use super::state::AppState;

/// Execution runs (with steps) and verification results of a case.
#[utoipa::path(get, path = "/case/{id}/executions", tag = "cases",
    params(("id" = uuid::Uuid, Path)),
    responses((status = 200, description = "{runs: [...], verifications: [...]}"),
              (status = 404, body = crate::problem::Problem)),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    Auth(who): Auth,
    CasePath(id): CasePath,
) -> Result<Json<Value>, ApiError> {
    // Runs and results are read only for a case in the caller's tenants.
    fetch_case(&state, &who, id).await?;
    let pool = state.orchestrator.pool();
    let runs: Vec<Value> = sqlx::query_scalar(
        "SELECT jsonb_build_object('id', r.id, 'kind', r.kind, 'status', r.status, 'plan_hash', r.plan_hash, \
           'attempt_id', r.attempt_id, 'error', r.error, 'started_at', r.started_at, 'finished_at', r.finished_at, \
           'steps', COALESCE((SELECT jsonb_agg(jsonb_build_object('phase', s.phase, 'index', s.idx, \
              'action', s.action, 'status', s.status, 'tries', s.tries, 'result', s.result) \
              ORDER BY s.phase DESC, s.idx) FROM exec_step s WHERE s.run_id = r.id), '[]'::jsonb)) \
         FROM exec_run r WHERE r.case_id = $1 ORDER BY r.started_at DESC LIMIT 50",
    )
    .bind(id)
    .fetch_all(pool)
    .await?;
    let verifications: Vec<Value> = sqlx::query_scalar(
        "SELECT jsonb_build_object('outcome', outcome, 'plan_hash', plan_hash, 'checks', checks, \
           'window_from', window_from, 'window_to', window_to, 'at', at) \
         FROM verify_result WHERE case_id = $1 ORDER BY at DESC LIMIT 50",
    )
    .bind(id)
    .fetch_all(pool)
    .await?;
    Ok(Json(json!({"runs": runs, "verifications": verifications})))
}
