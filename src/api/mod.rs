//! HTTP API (DESIGN §6): routes, auth, problem+json errors, OpenAPI,
//! `/metrics`, health.
//!
//! Handlers validate and authenticate, then hand events to the
//! orchestrator; they never write case status themselves.

pub mod cases;
pub mod chatops;
pub mod console;
pub mod error;
pub mod executions;
pub mod extract;
pub mod kb;
pub mod metrics;
pub mod openapi;
pub mod ops;
mod person;
pub mod plans;
pub mod provenance;
pub mod redrive;
pub mod schema;
pub mod serve;
pub mod signals;
pub mod state;

use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use tower_http::catch_panic::CatchPanicLayer;

use error::{ApiError, InternalCause};
pub use openapi::ApiDoc;
pub use serve::{ServeSettings, serve};
pub use state::AppState;

/// Request bodies above this are refused with 413.
pub const BODY_LIMIT: usize = 64 * 1024;
/// The limit of the bulk routes: a metrics batch of `metrics::MAX_ROWS`
/// rows, an Alertmanager notification of a large group (Alertmanager sends
/// every alert of a group at once and does not retry a 413).
pub const BULK_BODY_LIMIT: usize = 4 * 1024 * 1024;

/// The body limit of a request path.
pub fn body_limit(path: &str) -> usize {
    match path {
        "/metrics/ingest" | "/signals/alertmanager" => BULK_BODY_LIMIT,
        _ => BODY_LIMIT,
    }
}

/// How long a request may take before it is answered 503.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

pub fn app(state: AppState) -> Router {
    app_with(state, REQUEST_TIMEOUT)
}

/// The app with its own request deadline (tests shorten it).
pub fn app_with(state: AppState, request_timeout: Duration) -> Router {
    Router::new()
        .merge(console::routes())
        .route("/case", post(cases::create_case))
        .route("/case/create", post(cases::create_case))
        .route("/case/{id}", get(cases::get_case))
        .route("/case/{id}/timeline", get(cases::timeline))
        .route("/case/{id}/transition", patch(cases::transition))
        .route("/case/{id}/plan", get(plans::current).post(plans::propose))
        .route("/case/{id}/executions", get(executions::list))
        .route("/case/{id}/provenance", get(provenance::chain))
        .route("/case/{id}/approvals", get(plans::approvals))
        .route("/chatops/slack/commands", post(chatops::commands))
        .route("/chatops/slack/interactions", post(chatops::interactions))
        .route("/schemas/changeplan.json", get(plans::schema))
        .route("/cases", get(cases::list_cases))
        .route("/kb/docs", post(kb::add))
        .route("/kb/docs/{id}", axum::routing::delete(kb::delete))
        .route("/kb/search", get(kb::search))
        .route("/plan/generate", post(redrive::plan_generate))
        .route("/gate/eval", post(redrive::gate_eval))
        .route("/adapter/exec", post(redrive::adapter_exec))
        .route("/verify/run", post(redrive::verify_run))
        .route(
            "/metrics/ingest",
            post(metrics::ingest).layer(DefaultBodyLimit::max(BULK_BODY_LIMIT)),
        )
        .route(
            "/signals/alertmanager",
            post(signals::alertmanager).layer(DefaultBodyLimit::max(BULK_BODY_LIMIT)),
        )
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/openapi.json", get(openapi::serve))
        .fallback(|| async { ApiError::RouteNotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(middleware::from_fn(refuse_oversize))
        .layer(middleware::from_fn(log_failures))
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::Internal(anyhow::anyhow!("handler panicked")).into_response()
        }))
        .layer(middleware::from_fn_with_state(
            request_timeout,
            within_deadline,
        ))
        .with_state(state)
}

/// A request that does not finish by the deadline is answered 503 with a
/// problem body. Its work is dropped where it stood: a transaction not yet
/// committed rolls back, and a retry with the same `Idempotency-Key` tells
/// whether one had committed.
async fn within_deadline(
    axum::extract::State(deadline): axum::extract::State<Duration>,
    req: Request,
    next: Next,
) -> Response {
    match tokio::time::timeout(deadline, next.run(req)).await {
        Ok(response) => response,
        Err(_) => ApiError::Unavailable(format!(
            "the request did not finish within {} s; retry it (with the same Idempotency-Key) to learn its outcome",
            deadline.as_secs()
        ))
        .into_response(),
    }
}

/// A declared body above the limit is refused from the headers: the client
/// learns at once, and nothing waits for (or reads) a body it will refuse.
async fn refuse_oversize(req: Request, next: Next) -> Response {
    let declared = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let limit = body_limit(req.uri().path());
    match declared {
        Some(n) if n > limit as u64 => ApiError::PayloadTooLarge(format!(
            "the request body is {n} bytes; the limit is {limit}"
        ))
        .into_response(),
        Some(_) | None => next.run(req).await,
    }
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
