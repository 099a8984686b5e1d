//! `GET /case/{id}/executions`: the case's execution runs with their steps
//! and its verification results, newest first; what a person reads to see
//! what was changed, with which output, and what the SLO said.

use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use super::cases::fetch_case;
use super::error::ApiError;
use super::extract::{Auth, CasePath};
use super::state::AppState;

/// Runs and verifications read at most, each.
const SHOWN: i64 = 50;

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Executions {
    pub runs: Vec<RunShown>,
    pub verifications: Vec<VerificationShown>,
}

/// A run (or rollback) of a plan.
#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct RunShown {
    pub id: Uuid,
    /// `run` or `rollback`.
    pub kind: String,
    pub status: String,
    pub plan_hash: String,
    pub attempt_id: Option<Uuid>,
    pub error: Option<String>,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    #[sqlx(skip)]
    pub steps: Vec<StepShown>,
}

/// One step of a run, forward or rollback, with its output.
#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct StepShown {
    #[serde(skip)]
    pub run_id: Uuid,
    /// `step` or `rollback`.
    pub phase: String,
    pub index: i32,
    pub action: String,
    pub status: String,
    pub tries: i32,
    /// The adapter's result: exit code, output, what it saw before.
    #[schema(value_type = Object)]
    pub result: Value,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// A verification with its figures.
#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct VerificationShown {
    /// `pass`, `breach`, `no_data` or `inconclusive`.
    pub outcome: String,
    pub plan_hash: String,
    /// Each check with its verdict and figures.
    #[schema(value_type = Vec<Object>)]
    pub checks: Value,
    pub window_from: DateTime<Utc>,
    pub window_to: DateTime<Utc>,
    pub at: DateTime<Utc>,
}

/// The case's newest `limit` runs, newest first, each with its steps.
pub async fn runs_of(pool: &PgPool, case: Uuid, limit: i64) -> Result<Vec<RunShown>, sqlx::Error> {
    let mut runs: Vec<RunShown> = sqlx::query_as(
        "SELECT id, kind, status, plan_hash, attempt_id, error, started_at, finished_at \
         FROM exec_run WHERE case_id = $1 ORDER BY started_at DESC LIMIT $2",
    )
    .bind(case)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    let ids: Vec<Uuid> = runs.iter().map(|r| r.id).collect();
    let steps: Vec<StepShown> = sqlx::query_as(
        "SELECT run_id, phase, idx AS index, action, status, tries, result, started_at, finished_at \
         FROM exec_step WHERE run_id = ANY($1) ORDER BY phase DESC, idx",
    )
    .bind(&ids)
    .fetch_all(pool)
    .await?;
    for step in steps {
        if let Some(run) = runs.iter_mut().find(|r| r.id == step.run_id) {
            run.steps.push(step);
        }
    }
    Ok(runs)
}

/// The case's newest `limit` verifications, newest first.
pub async fn verifications_of(
    pool: &PgPool,
    case: Uuid,
    limit: i64,
) -> Result<Vec<VerificationShown>, sqlx::Error> {
    sqlx::query_as(
        "SELECT outcome, plan_hash, checks, window_from, window_to, at FROM verify_result \
         WHERE case_id = $1 ORDER BY at DESC LIMIT $2",
    )
    .bind(case)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Execution runs (with steps) and verification results of a case.
#[utoipa::path(get, path = "/case/{id}/executions", tag = "cases",
    params(("id" = uuid::Uuid, Path)),
    responses((status = 200, body = Executions, description = "runs (with steps) and verifications, newest first, 50 of each at most"),
              (status = 404, body = crate::problem::Problem)),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    Auth(who): Auth,
    CasePath(id): CasePath,
) -> Result<Json<Executions>, ApiError> {
    // Runs and results are read only for a case in the caller's tenants.
    fetch_case(&state, &who, id).await?;
    let pool = state.orchestrator.pool();
    Ok(Json(Executions {
        runs: runs_of(pool, id, SHOWN).await?,
        verifications: verifications_of(pool, id, SHOWN).await?,
    }))
}
