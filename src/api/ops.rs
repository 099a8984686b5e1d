//! Operations endpoints: liveness, readiness, Prometheus metrics.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::state::AppState;

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
