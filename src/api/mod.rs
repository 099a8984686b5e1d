//! HTTP API (DESIGN §6): routes, auth, problem+json errors, OpenAPI,
//! `/metrics`, health.
//!
//! Handlers validate and authenticate, then hand events to the
//! orchestrator; they never write case status themselves.

pub mod cases;
pub mod error;
pub mod executions;
pub mod extract;
pub mod metrics;
pub mod plans;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use axum::{Json, Router};
use serde_json::json;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::timeout::TimeoutLayer;
use utoipa::OpenApi;

use crate::auth::TokenStore;
use crate::orchestrator::Orchestrator;
use error::{ApiError, InternalCause};

/// Request bodies above this are refused with 413.
pub const BODY_LIMIT: usize = 64 * 1024;

#[derive(Clone)]
pub struct AppState {
    pub orchestrator: Orchestrator,
    pub tokens: Arc<TokenStore>,
    /// `None` when no NATS is configured; `/readyz` then says so.
    pub nats: Option<async_nats::Client>,
    /// What proposed plans may contain beyond the schema.
    pub plan_limits: Arc<crate::planner::contract::PlanLimits>,
}

#[derive(OpenApi)]
#[openapi(
    info(title = "opsloop", description = "AI-OPS case orchestrator"),
    paths(metrics::ingest, executions::list, cases::create_case, cases::get_case, cases::list_cases, cases::timeline,
          cases::transition, plans::propose, plans::current, healthz, readyz, metrics),
    components(schemas(crate::problem::Problem, crate::workflow::Status, crate::workflow::EventKind)),
    modifiers(&BearerAuth),
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/case", post(cases::create_case))
        .route("/case/create", post(cases::create_case))
        .route("/case/{id}", get(cases::get_case))
        .route("/case/{id}/timeline", get(cases::timeline))
        .route("/case/{id}/transition", patch(cases::transition))
        .route("/case/{id}/plan", get(plans::current).post(plans::propose))
        .route("/case/{id}/executions", get(executions::list))
        .route("/schemas/changeplan.json", get(plans::schema))
        .route("/cases", get(cases::list_cases))
        .route("/metrics/ingest", post(metrics::ingest))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .fallback(|| async { ApiError::RouteNotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(middleware::from_fn(log_failures))
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::Internal(anyhow::anyhow!("handler panicked")).into_response()
        }))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            Duration::from_secs(30),
        ))
        .with_state(state)
}

/// Logs the cause chain of every 5xx; clients never see it.
async fn log_failures(req: Request, next: Next) -> Response {
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    let response = next.run(req).await;
    if let Some(InternalCause(cause)) = response.extensions().get::<InternalCause>() {
        tracing::error!(http.method = %method, http.path = %path, error.cause_chain = %cause,
                        "Request failed.");
    }
    response
}

/// The process is alive.
#[utoipa::path(get, path = "/healthz", tag = "ops", responses((status = 200)))]
pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// PostgreSQL and NATS are reachable.
#[utoipa::path(get, path = "/readyz", tag = "ops", responses((status = 200), (status = 503)))]
pub async fn readyz(State(state): State<AppState>) -> Response {
    let db = tokio::time::timeout(
        Duration::from_secs(2),
        sqlx::query("SELECT 1").execute(state.orchestrator.pool()),
    )
    .await
    .map(|r| r.is_ok())
    .unwrap_or(false);
    let nats = match &state.nats {
        Some(client) => {
            if client.connection_state() == async_nats::connection::State::Connected {
                "ok"
            } else {
                "unreachable"
            }
        }
        None => "not_configured",
    };
    let ready = db && nats != "unreachable";
    let body = json!({
        "status": if ready { "ready" } else { "not_ready" },
        "database": if db { "ok" } else { "unreachable" },
        "nats": nats,
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// Prometheus text exposition.
#[utoipa::path(get, path = "/metrics", tag = "ops", responses((status = 200, content_type = "text/plain")))]
pub async fn metrics() -> Response {
    let mut response = crate::telemetry::render().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    response
}

async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
