//! `ApiError`: every way a request fails, mapped exhaustively to a status and
//! a stable `code`, answered as `application/problem+json`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::json;
use uuid::Uuid;

use crate::orchestrator::TransitionError;
use crate::problem::Problem;

pub const PROBLEM_JSON: &str = "application/problem+json";

/// One invalid row of a `/metrics/ingest` request: where, and why.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RowError {
    /// Index of the row in `rows`.
    pub row: usize,
    pub field: String,
    pub message: String,
}

pub use crate::problem::FieldError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Malformed(String),
    #[error("{field}: {detail}")]
    InvalidField { field: &'static str, detail: String },
    #[error("unknown event {0:?}")]
    UnknownEvent(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("missing bearer token")]
    Unauthenticated,
    #[error("invalid bearer token")]
    InvalidToken,
    /// A chat request whose signature does not verify (or is too old).
    #[error("{0}")]
    SignatureInvalid(String),
    #[error("{0}")]
    Forbidden(String),
    /// The request names a tenant the caller does not act for.
    #[error("{0}")]
    TenantForbidden(String),
    #[error("case {0} not found")]
    CaseNotFound(Uuid),
    #[error("case {0} has no plan")]
    PlanNotFound(Uuid),
    #[error("{} field(s) are invalid; nothing was stored", .0.len())]
    DocInvalid(Vec<FieldError>),
    #[error("document {0} not found")]
    DocNotFound(Uuid),
    #[error("{} row(s) are invalid; nothing was stored", .0.len())]
    InvalidRows(Vec<RowError>),
    #[error("the plan breaks {} rule(s) of the ChangePlan contract", .0.len())]
    PlanInvalid(Vec<crate::planner::contract::Violation>),
    #[error("{detail}")]
    Conflict { code: &'static str, detail: String },
    /// A webhook notification as a whole cannot be taken (422).
    #[error("{0}")]
    WebhookInvalid(String),
    /// A worker fact's `evidence` names nothing it could be.
    #[error("{0}")]
    EvidenceInvalid(String),
    #[error("no route for this path")]
    RouteNotFound,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("If-Match names version {expected}, the case is at version {actual}")]
    VersionMismatch { expected: i64, actual: i64 },
    #[error("this Idempotency-Key was already used for a different request")]
    IdempotencyKeyReused,
    #[error("the Idempotency-Key header is required")]
    IdempotencyKeyMissing,
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error")]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            Self::Malformed(_) | Self::InvalidField { .. } | Self::UnknownEvent(_) => {
                StatusCode::BAD_REQUEST
            }
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Unauthenticated | Self::InvalidToken | Self::SignatureInvalid(_) => {
                StatusCode::UNAUTHORIZED
            }
            Self::Forbidden(_) | Self::TenantForbidden(_) => StatusCode::FORBIDDEN,
            Self::CaseNotFound(_)
            | Self::PlanNotFound(_)
            | Self::DocNotFound(_)
            | Self::RouteNotFound => StatusCode::NOT_FOUND,
            Self::PlanInvalid(_)
            | Self::DocInvalid(_)
            | Self::InvalidRows(_)
            | Self::EvidenceInvalid(_)
            | Self::WebhookInvalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Conflict { .. } => StatusCode::CONFLICT,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::VersionMismatch { .. } => StatusCode::PRECONDITION_FAILED,
            Self::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            Self::IdempotencyKeyMissing => StatusCode::PRECONDITION_REQUIRED,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "malformed_request",
            Self::InvalidField { .. } => "invalid_field",
            Self::UnknownEvent(_) => "unknown_event",
            Self::PayloadTooLarge(_) => "payload_too_large",
            Self::UnsupportedMediaType(_) => "unsupported_media_type",
            Self::Unauthenticated => "unauthenticated",
            Self::InvalidToken => "invalid_token",
            Self::SignatureInvalid(_) => "signature_invalid",
            Self::Forbidden(_) => "forbidden",
            Self::TenantForbidden(_) => "tenant_forbidden",
            Self::CaseNotFound(_) => "case_not_found",
            Self::PlanNotFound(_) => "plan_not_found",
            Self::DocNotFound(_) => "doc_not_found",
            Self::DocInvalid(_) => "doc_invalid",
            Self::PlanInvalid(_) => "plan_invalid",
            Self::InvalidRows(_) => "rows_invalid",
            Self::EvidenceInvalid(_) => "evidence_invalid",
            Self::WebhookInvalid(_) => "webhook_invalid",
            Self::Conflict { code, .. } => code,
            Self::RouteNotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::VersionMismatch { .. } => "version_mismatch",
            Self::IdempotencyKeyReused => "idempotency_key_reuse",
            Self::IdempotencyKeyMissing => "idempotency_key_missing",
            Self::Unavailable(_) => "unavailable",
            Self::Internal(_) => "internal_error",
        }
    }

    fn title(&self) -> &'static str {
        match self {
            Self::Malformed(_) | Self::InvalidField { .. } | Self::UnknownEvent(_) => "Bad request",
            Self::PayloadTooLarge(_) => "Payload too large",
            Self::UnsupportedMediaType(_) => "Unsupported media type",
            Self::Unauthenticated | Self::InvalidToken | Self::SignatureInvalid(_) => {
                "Unauthorized"
            }
            Self::Forbidden(_) | Self::TenantForbidden(_) => "Forbidden",
            Self::CaseNotFound(_)
            | Self::PlanNotFound(_)
            | Self::DocNotFound(_)
            | Self::RouteNotFound => "Not found",
            Self::DocInvalid(_) => "Invalid document",
            Self::PlanInvalid(_) => "Invalid plan",
            Self::EvidenceInvalid(_) => "Invalid evidence",
            Self::WebhookInvalid(_) => "Invalid webhook",
            Self::InvalidRows(_) => "Invalid rows",
            Self::Conflict { .. } => "Conflict",
            Self::MethodNotAllowed => "Method not allowed",
            Self::VersionMismatch { .. } => "Version mismatch",
            Self::IdempotencyKeyReused => "Idempotency key reused",
            Self::IdempotencyKeyMissing => "Idempotency key required",
            Self::Unavailable(_) => "Service unavailable",
            Self::Internal(_) => "Internal error",
        }
    }
}

impl From<TransitionError> for ApiError {
    fn from(e: TransitionError) -> Self {
        match e {
            TransitionError::CaseNotFound(id) => ApiError::CaseNotFound(id),
            TransitionError::VersionMismatch { expected, actual } => {
                ApiError::VersionMismatch { expected, actual }
            }
            TransitionError::IdempotencyKeyReused => ApiError::IdempotencyKeyReused,
            e @ TransitionError::Database(_) => {
                ApiError::Internal(anyhow::Error::new(e).context("applying transition"))
            }
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        ApiError::Internal(anyhow::Error::new(e))
    }
}

/// The cause chain of a 5xx, left in the response extensions for the
/// logging middleware; clients only see "internal error".
#[derive(Clone, Debug)]
pub struct InternalCause(pub String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let detail = match &self {
            ApiError::Internal(_) => "internal error".to_string(),
            other => other.to_string(),
        };
        let mut problem = Problem::new(status.as_u16(), self.code(), self.title(), detail);
        match &self {
            ApiError::InvalidField { field, .. } => {
                problem = problem.with("field", json!(field));
            }
            ApiError::VersionMismatch { actual, .. } => {
                problem = problem.with("version", json!(actual));
            }
            ApiError::PlanInvalid(violations) => {
                problem = problem.with("violations", json!(violations));
            }
            ApiError::InvalidRows(errors) => {
                problem = problem.with("errors", json!(errors));
            }
            ApiError::DocInvalid(errors) => {
                problem = problem.with("errors", json!(errors));
            }
            _ => {}
        }
        let mut response = problem_response(status, &problem);
        match &self {
            ApiError::Unauthenticated | ApiError::InvalidToken => {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            ApiError::Internal(e) => {
                response
                    .extensions_mut()
                    .insert(InternalCause(format!("{e:#}")));
            }
            _ => {}
        }
        response
    }
}

pub fn problem_response(status: StatusCode, problem: &Problem) -> Response {
    let mut response = (status, axum::Json(problem)).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    response
}
