//! `POST /signals/alertmanager`: Alertmanager's webhook (version 4).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::error::ApiError;
use super::extract::{ApiJson, Auth};
use super::state::AppState;
use crate::analyst::intake::{self, AlertmanagerWebhook};
use crate::auth::Role;

/// Takes an Alertmanager notification. Each alert gets its own outcome
/// (202 `{alerts: [{fingerprint, outcome, reason?, case_id?}]}`): one alert
/// refused (a tenant the token lacks) never loses the others, because
/// Alertmanager does not retry a 4xx. Every accepted or deduplicated alert
/// is committed before the answer.
#[utoipa::path(post, path = "/signals/alertmanager", tag = "signals",
    request_body(content = Object, description = "Alertmanager's webhook body, version 4: {version: \"4\", groupKey, receiver, status, externalURL, commonLabels, alerts: [{status, labels, annotations, startsAt, endsAt, generatorURL, fingerprint}]}"),
    responses((status = 202, description = "{alerts: [{fingerprint, outcome: accepted | deduplicated | ignored | refused, reason?, case_id?}]}"),
              (status = 400, body = crate::problem::Problem), (status = 401, body = crate::problem::Problem),
              (status = 403, body = crate::problem::Problem, description = "forbidden: not a service identity"),
              (status = 422, body = crate::problem::Problem, description = "webhook_invalid: a version other than 4, or no alerts")),
    security(("bearer" = [])))]
pub async fn alertmanager(
    State(state): State<AppState>,
    Auth(who): Auth,
    ApiJson(hook): ApiJson<AlertmanagerWebhook>,
) -> Result<Response, ApiError> {
    if !who.has(Role::Service) {
        return Err(ApiError::Forbidden(format!(
            "{} may not send signals: a service identity does",
            who.id
        )));
    }
    intake::check(&hook).map_err(ApiError::WebhookInvalid)?;
    let started = std::time::Instant::now();
    let outcomes = intake::take(&state.orchestrator, &state.intake, &who, &hook).await?;
    crate::telemetry::signal_intake(started.elapsed().as_secs_f64());
    Ok((StatusCode::ACCEPTED, Json(json!({"alerts": outcomes}))).into_response())
}
