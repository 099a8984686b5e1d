//! The librarian's routes (issue #19): add a runbook or postmortem, search
//! within the caller's tenants (and the global scope), delete one.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::{IntoParams, ToSchema};

use super::error::{ApiError, FieldError};
use super::extract::{ApiJson, ApiQuery, Auth, CasePath};
use super::state::AppState;
use crate::auth::{Role, TenantScope};
use crate::librarian::Librarian;
use crate::librarian::store::{self, DocKind, Hit, Mode, NewDoc, Search};

/// The global scope's name in requests (`Tenant` refuses it as a tenant:
/// stored as no tenant at all).
pub const GLOBAL: &str = crate::ids::Tenant::GLOBAL;
/// Under the API's request body limit (64 KiB) with room for the rest.
const MAX_BODY_CHARS: usize = 60_000;
const MAX_LABELS: usize = 32;

/// The model, or 503: not configured here, or it could not be loaded
/// (the next request tries again).
async fn embedder(state: &AppState) -> Result<&crate::librarian::embed::Embedder, ApiError> {
    let lib: &Arc<Librarian> = state.librarian.as_ref().ok_or_else(|| {
        ApiError::Unavailable(
            "the librarian is not configured here (OPSLOOP_EMBEDDINGS_MODEL_DIR or OPSLOOP_EMBEDDINGS_URL)".into(),
        )
    })?;
    lib.embedder().await.map_err(|e| {
        tracing::error!(error = %format!("{e:#}"), "Loading the embedding model failed.");
        ApiError::Unavailable(
            "the embedding model could not be loaded; see the service's log".into(),
        )
    })
}

/// A runbook or postmortem to store (Markdown or plain text).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DocIn {
    /// A tenant of yours, or `global` (admins only: read by every tenant).
    pub tenant: String,
    /// `runbook` (default) or `postmortem`; past cases are written by the
    /// librarian itself.
    #[serde(default)]
    pub kind: Option<DocKind>,
    pub title: String,
    /// Where it comes from (a path, a URL): its name for re-ingest. By
    /// default derived from the title.
    #[serde(default)]
    pub source: Option<String>,
    /// Markdown: headings split it into sections.
    pub body: String,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub labels: Option<serde_json::Map<String, serde_json::Value>>,
}

fn no_control(s: &str) -> bool {
    !s.chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t' && c != '\r')
}

/// Adds or replaces a document (operator or admin).
#[utoipa::path(post, path = "/kb/docs", tag = "librarian", request_body = DocIn,
    responses((status = 201, body = store::Ingested, description = "stored (new or changed)"),
              (status = 200, body = store::Ingested, description = "unchanged: nothing written"),
              (status = 400, body = crate::problem::Problem),
              (status = 403, body = crate::problem::Problem),
              (status = 422, body = crate::problem::Problem, description = "doc_invalid: per-field errors"),
              (status = 503, body = crate::problem::Problem, description = "the librarian is not configured")),
    security(("bearer" = [])))]
pub async fn add(
    State(state): State<AppState>,
    Auth(who): Auth,
    ApiJson(doc): ApiJson<DocIn>,
) -> Result<Response, ApiError> {
    if !who.has(Role::Operator) {
        return Err(ApiError::Forbidden(format!(
            "{} may not add documents",
            who.id
        )));
    }
    let mut errors = Vec::new();
    let mut bad = |field: &str, message: &str| {
        errors.push(FieldError {
            field: field.into(),
            message: message.into(),
        })
    };
    let tenant = if doc.tenant == GLOBAL {
        if !who.has(Role::Admin) {
            return Err(ApiError::Forbidden(
                "only an admin may add to the global scope".into(),
            ));
        }
        None
    } else {
        match doc.tenant.parse::<crate::ids::Tenant>() {
            Ok(t) if who.may_act_for(&t) => Some(t),
            Ok(t) => {
                return Err(ApiError::TenantForbidden(format!(
                    "{} may not act for {t}",
                    who.id
                )));
            }
            Err(_) => {
                bad("tenant", "a tenant id (lowercase slug) or \"global\"");
                None
            }
        }
    };
    let kind = doc.kind.unwrap_or(DocKind::Runbook);
    if kind == DocKind::PastCase {
        bad(
            "kind",
            "past cases are written by the librarian from the record",
        );
    }
    let title = doc.title.trim();
    if title.is_empty() || title.chars().count() > 300 || title.chars().any(char::is_control) {
        bad("title", "one line of 1 to 300 characters");
    }
    if doc.body.trim().is_empty()
        || doc.body.chars().count() > MAX_BODY_CHARS
        || !no_control(&doc.body)
    {
        bad("body", "1 to 60000 characters of text");
    }
    // Labels filter searches later: a flat map of short strings, nothing
    // PostgreSQL's jsonb would refuse (a NUL).
    let labels = doc.labels.unwrap_or_default();
    // `outcome` and `case_id` are what the librarian writes on past cases
    // (the planner shows a past case's outcome to the LLM): a posted
    // document cannot pass for one.
    let label_ok = |k: &String, v: &serde_json::Value| {
        crate::ids::is_slug(k, b"_-./")
            && k != crate::librarian::past_case::OUTCOME_LABEL
            && k != crate::librarian::past_case::CASE_LABEL
            && v.as_str().is_some_and(|v| {
                !v.is_empty() && v.chars().count() <= 256 && !v.chars().any(char::is_control)
            })
    };
    if labels.len() > MAX_LABELS || !labels.iter().all(|(k, v)| label_ok(k, v)) {
        bad(
            "labels",
            "at most 32 labels: lowercase slug keys (not outcome or case_id, which past cases use), one-line string values of 1 to 256 characters",
        );
    }
    let source = doc.source.clone().unwrap_or_else(|| {
        format!(
            "inline:{}",
            &hex::encode(Sha256::digest(title.as_bytes()))[..16]
        )
    });
    if source.trim().is_empty()
        || source.chars().count() > 2000
        || source.chars().any(char::is_control)
    {
        bad("source", "one line of 1 to 2000 characters");
    }
    if !errors.is_empty() {
        return Err(ApiError::DocInvalid(errors));
    }
    let stored = store::ingest(
        state.orchestrator.pool(),
        embedder(&state).await?,
        &NewDoc {
            tenant,
            kind,
            title: title.to_string(),
            source,
            body: doc.body,
            labels: serde_json::Value::Object(labels),
        },
    )
    .await?;
    let status = if stored.unchanged {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(stored)).into_response())
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SearchQuery {
    /// What you are looking for, in words.
    q: String,
    /// How many passages (1-50, default 5).
    #[serde(default)]
    k: Option<String>,
    /// `runbook`, `past_case` or `postmortem`.
    #[serde(default)]
    kind: Option<String>,
    /// `hybrid` (default), `vector` or `text`.
    #[serde(default)]
    mode: Option<String>,
    /// Only documents with this label, as `key:value` (e.g.
    /// `service:checkout`, `outcome:rolled_back`).
    #[serde(default)]
    label: Option<String>,
    /// Only documents written or changed since this instant (RFC 3339).
    #[serde(default)]
    since: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SearchResult {
    pub query: String,
    pub hits: Vec<Hit>,
}

/// Ranked passages from the caller's tenants and the global scope.
#[utoipa::path(get, path = "/kb/search", tag = "librarian", params(SearchQuery),
    responses((status = 200, body = SearchResult),
              (status = 400, body = crate::problem::Problem),
              (status = 503, body = crate::problem::Problem, description = "the librarian is not configured")),
    security(("bearer" = [])))]
pub async fn search(
    State(state): State<AppState>,
    Auth(who): Auth,
    ApiQuery(q): ApiQuery<SearchQuery>,
) -> Result<Json<SearchResult>, ApiError> {
    let invalid = |field: &'static str, detail: &str| ApiError::InvalidField {
        field,
        detail: detail.into(),
    };
    let text = q.q.trim();
    if text.is_empty() || text.chars().count() > 1000 || !no_control(text) {
        return Err(invalid("q", "1 to 1000 characters"));
    }
    let k = match q.k.as_deref() {
        None => 5,
        Some(k) => k
            .parse::<usize>()
            .ok()
            .filter(|k| (1..=50).contains(k))
            .ok_or_else(|| invalid("k", "an integer from 1 to 50"))?,
    };
    let kind = q
        .kind
        .as_deref()
        .map(|k| {
            k.parse::<DocKind>()
                .map_err(|_| invalid("kind", "runbook, past_case or postmortem"))
        })
        .transpose()?;
    let mode = match q.mode.as_deref() {
        None | Some("hybrid") => Mode::Hybrid,
        Some("vector") => Mode::Vector,
        Some("text") => Mode::Text,
        Some(_) => return Err(invalid("mode", "hybrid, vector or text")),
    };
    let mut labels = std::collections::BTreeMap::new();
    if let Some(label) = q.label.as_deref() {
        let (key, value) = label
            .split_once(':')
            .filter(|(k, v)| {
                crate::ids::is_slug(k, b"_-./")
                    && !v.is_empty()
                    && v.chars().count() <= 256
                    && !v.chars().any(char::is_control)
            })
            .ok_or_else(|| invalid("label", "key:value, a lowercase slug key and a value"))?;
        labels.insert(key.to_string(), value.to_string());
    }
    let since = q
        .since
        .as_deref()
        .map(|t| {
            chrono::DateTime::parse_from_rfc3339(t)
                .map(|t| t.with_timezone(&chrono::Utc))
                .map_err(|_| invalid("since", "an RFC 3339 instant, e.g. 2026-11-01T00:00:00Z"))
        })
        .transpose()?;
    let scope: &TenantScope = &who.tenants;
    let hits = store::search(
        state.orchestrator.pool(),
        embedder(&state).await?,
        &Search {
            query: text,
            k,
            kind,
            scope,
            mode,
            labels,
            since,
        },
    )
    .await?;
    Ok(Json(SearchResult {
        query: text.to_string(),
        hits,
    }))
}

/// Deletes a document of one of the caller's tenants (the global ones:
/// admins only).
#[utoipa::path(delete, path = "/kb/docs/{id}", tag = "librarian",
    params(("id" = Uuid, Path)),
    responses((status = 204, description = "deleted"),
              (status = 403, body = crate::problem::Problem),
              (status = 404, body = crate::problem::Problem, description = "doc_not_found")),
    security(("bearer" = [])))]
pub async fn delete(
    State(state): State<AppState>,
    Auth(who): Auth,
    CasePath(id): CasePath,
) -> Result<StatusCode, ApiError> {
    if !who.has(Role::Operator) {
        return Err(ApiError::Forbidden(format!(
            "{} may not delete documents",
            who.id
        )));
    }
    if store::delete(
        state.orchestrator.pool(),
        id,
        &who.tenants,
        who.has(Role::Admin),
    )
    .await?
    {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::DocNotFound(id))
    }
}
