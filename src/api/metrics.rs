//! `POST /metrics/ingest`: one-minute metric aggregates for the analyst and
//! the verifier. A batch is stored whole or not at all: any bad row refuses
//! the batch with an error per row, so nothing is silently dropped.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Timelike, Utc};
use serde_json::{Value, json};

use super::error::{ApiError, RowError};
use super::extract::{ApiJson, Auth};
use super::state::AppState;
use crate::auth::Role;

/// Rows accepted in one request.
pub const MAX_ROWS: usize = 5000;
const ROW_FIELDS: [&str; 7] = ["resource", "metric", "ts", "avg", "max", "p95", "count"];

#[derive(Debug, Clone, PartialEq)]
pub struct MetricRow {
    pub resource: String,
    pub metric: String,
    pub ts: DateTime<Utc>,
    pub avg: f64,
    pub max: f64,
    pub p95: Option<f64>,
    pub count: i32,
}

/// Checks one row; every problem is reported, not just the first.
pub fn parse_row(i: usize, v: &Value) -> Result<MetricRow, Vec<RowError>> {
    let mut errors = Vec::new();
    let mut err = |field: &str, message: &str| {
        errors.push(RowError {
            row: i,
            field: field.to_string(),
            message: message.to_string(),
        })
    };
    let Some(obj) = v.as_object() else {
        err("", "a row is an object");
        return Err(errors);
    };
    for k in obj.keys().filter(|k| !ROW_FIELDS.contains(&k.as_str())) {
        err(k, "unknown field");
    }
    let name = |k: &str, err: &mut dyn FnMut(&str, &str)| -> String {
        match obj.get(k).and_then(Value::as_str) {
            Some(s) if (1..=200).contains(&s.len()) && !s.chars().any(char::is_control) => {
                s.to_string()
            }
            _ => {
                err(k, "a string of 1-200 characters without control characters");
                String::new()
            }
        }
    };
    let resource = name("resource", &mut err);
    let metric = name("metric", &mut err);
    let ts = match obj
        .get("ts")
        .and_then(Value::as_str)
        .map(DateTime::parse_from_rfc3339)
    {
        Some(Ok(t)) => {
            let t = t.with_timezone(&Utc);
            if t.second() != 0 || t.nanosecond() != 0 {
                err("ts", "must be the start of a minute (seconds = 0)");
            }
            if t > Utc::now() + chrono::Duration::minutes(5) {
                err("ts", "is in the future");
            }
            t
        }
        _ => {
            err("ts", "an RFC 3339 timestamp");
            DateTime::<Utc>::MIN_UTC
        }
    };
    let mut number = |k: &str, required: bool| -> Option<f64> {
        match obj.get(k) {
            None | Some(Value::Null) if !required => None,
            Some(Value::Number(n)) if n.as_f64().is_some_and(f64::is_finite) => n.as_f64(),
            _ => {
                err(k, "a finite number");
                None
            }
        }
    };
    let avg = number("avg", true);
    let max = number("max", true);
    let p95 = number("p95", false);
    let count = match obj.get("count") {
        None => 1,
        Some(c) => match c.as_i64() {
            Some(n) if (1..=i32::MAX as i64).contains(&n) => n as i32,
            _ => {
                err("count", "a positive integer");
                1
            }
        },
    };
    if let (Some(a), Some(m)) = (avg, max)
        && a > m
    {
        err("avg", "is greater than max");
    }
    if errors.is_empty() {
        Ok(MetricRow {
            resource,
            metric,
            ts,
            avg: avg.unwrap_or_default(),
            max: max.unwrap_or_default(),
            p95,
            count,
        })
    } else {
        Err(errors)
    }
}

/// Store one-minute metric rows (`{"rows": [...]}`); a row for the same
/// resource, metric and minute replaces the earlier one.
#[utoipa::path(post, path = "/metrics/ingest", tag = "metrics",
    request_body(content = Object, description = "{\"rows\": [{resource, metric, ts, avg, max, p95?, count?}]}"),
    responses((status = 200, description = "rows stored"), (status = 400, body = crate::problem::Problem),
              (status = 422, body = crate::problem::Problem, description = "rows_invalid, with an error per row")),
    security(("bearer" = [])))]
pub async fn ingest(
    State(state): State<AppState>,
    Auth(who): Auth,
    ApiJson(body): ApiJson<Value>,
) -> Result<Response, ApiError> {
    if !(who.has(Role::Operator) || who.has(Role::Service)) {
        return Err(ApiError::Forbidden(format!(
            "{} may not ingest metrics",
            who.id
        )));
    }
    let rows = match body.as_object().map(|o| (o.get("rows"), o.len())) {
        Some((Some(Value::Array(rows)), 1)) => rows,
        _ => {
            return Err(ApiError::InvalidField {
                field: "rows",
                detail: "the body is {\"rows\": [...]} and nothing else".into(),
            });
        }
    };
    if rows.is_empty() || rows.len() > MAX_ROWS {
        return Err(ApiError::InvalidField {
            field: "rows",
            detail: format!("between 1 and {MAX_ROWS} rows per request"),
        });
    }
    let mut parsed = Vec::with_capacity(rows.len());
    let mut errors = Vec::new();
    let mut seen = std::collections::HashMap::new();
    for (i, row) in rows.iter().enumerate() {
        match parse_row(i, row) {
            Ok(r) => {
                if let Some(first) = seen.insert((r.resource.clone(), r.metric.clone(), r.ts), i) {
                    errors.push(RowError {
                        row: i,
                        field: "ts".into(),
                        message: format!("same resource, metric and minute as row {first}"),
                    });
                }
                parsed.push(r);
            }
            Err(e) => errors.extend(e),
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::InvalidRows(errors));
    }
    let col = |f: fn(&MetricRow) -> Value| parsed.iter().map(f).collect::<Vec<_>>();
    let stored = sqlx::query(
        "INSERT INTO metric_1m (resource, metric, ts, avg, max, p95, count) \
         SELECT r->>'resource', r->>'metric', (r->>'ts')::timestamptz, (r->>'avg')::float8, \
                (r->>'max')::float8, (r->>'p95')::float8, (r->>'count')::int \
         FROM jsonb_array_elements($1) AS r \
         ON CONFLICT (resource, metric, ts) DO UPDATE SET avg = EXCLUDED.avg, max = EXCLUDED.max, \
         p95 = EXCLUDED.p95, count = EXCLUDED.count",
    )
    .bind(json!(col(|r| json!({
        "resource": r.resource, "metric": r.metric, "ts": r.ts.to_rfc3339(),
        "avg": r.avg, "max": r.max, "p95": r.p95, "count": r.count
    }))))
    .execute(state.orchestrator.pool())
    .await?
    .rows_affected();
    Ok((StatusCode::OK, Json(json!({"stored": stored}))).into_response())
}
