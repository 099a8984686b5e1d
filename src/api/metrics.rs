//! `POST /metrics/ingest`: one-minute metric aggregates for the analyst and
//! the verifier. A batch is stored whole or not at all: any bad row refuses
//! the batch with an error per row, so nothing is silently dropped.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use std::collections::BTreeMap;

use chrono::{DateTime, Timelike, Utc};
use serde_json::{Value, json};

use super::cases::tenant_forbidden;
use super::error::{ApiError, RowError};
use super::extract::{ApiJson, Auth};
use super::state::AppState;
use crate::auth::Role;
use crate::contract::Tenant;

/// Stores a batch of rows (`$1`: a JSON array of `{tenant, resource,
/// metric, ts, avg, max, p95?, count?, labels?}`) and answers how many. The
/// series' newest minute goes to `metric_series` in the same statement (the
/// detector finds new minutes there, `analyst::sweep`), and a series seen
/// for the first time gets its detector state row, so no sweep has to look
/// for new series. Rows and series rows are written in key order, so two
/// batches touching the same keys wait for each other instead of
/// deadlocking. `bench_signals` runs this statement too.
pub const STORE_ROWS: &str = "WITH stored AS ( \
       INSERT INTO metric_1m (tenant, resource, metric, ts, avg, max, p95, count, labels) \
       SELECT r->>'tenant', r->>'resource', r->>'metric', (r->>'ts')::timestamptz, \
              (r->>'avg')::float8, (r->>'max')::float8, (r->>'p95')::float8, (r->>'count')::int, \
              r->'labels' \
       FROM jsonb_array_elements($1) AS r \
       ORDER BY r->>'tenant', r->>'resource', r->>'metric', (r->>'ts')::timestamptz \
       ON CONFLICT (tenant, resource, metric, ts) DO UPDATE SET avg = EXCLUDED.avg, \
       max = EXCLUDED.max, p95 = EXCLUDED.p95, count = EXCLUDED.count, labels = EXCLUDED.labels \
       RETURNING tenant, resource, metric, ts), \
     series AS ( \
       INSERT INTO metric_series (tenant, resource, metric, last_ts) \
       SELECT tenant, resource, metric, max(ts) FROM stored GROUP BY 1, 2, 3 ORDER BY 1, 2, 3 \
       ON CONFLICT (tenant, resource, metric) DO UPDATE SET last_ts = EXCLUDED.last_ts \
       WHERE metric_series.last_ts < EXCLUDED.last_ts \
       RETURNING tenant, resource, metric, xmax = 0 AS fresh), \
     state AS ( \
       INSERT INTO detector_state (tenant, resource, metric) \
       SELECT tenant, resource, metric FROM series WHERE fresh ORDER BY 1, 2, 3 \
       ON CONFLICT DO NOTHING) \
     SELECT count(*) FROM stored";

/// Rows accepted in one request.
pub const MAX_ROWS: usize = 5000;
const ROW_FIELDS: [&str; 10] = [
    "bucket", "ts", "tenant", "resource", "metric", "avg", "max", "p95", "count", "labels",
];
/// Larger magnitudes are not measurements but accidents (or attempts to
/// overflow whoever sums them).
const MAX_MAGNITUDE: f64 = 1e15;
const MAX_LABELS: usize = 32;

#[derive(Debug, Clone, PartialEq)]
pub struct MetricRow {
    pub tenant: Tenant,
    pub resource: String,
    pub metric: String,
    pub bucket: DateTime<Utc>,
    pub avg: f64,
    pub max: f64,
    pub p95: Option<f64>,
    pub count: i32,
    pub labels: BTreeMap<String, String>,
}

/// The earliest minute a row may be for: older is a clock or encoding
/// error (year 0001 is what a zero timestamp becomes).
fn earliest_bucket() -> DateTime<Utc> {
    DateTime::from_timestamp(946_684_800, 0).unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// The row's tenant as written, when it is one: checked before anything
/// else, so a batch naming a tenant the caller lacks is refused whole.
pub fn row_tenant(v: &Value) -> Option<Tenant> {
    v.get("tenant")
        .and_then(Value::as_str)
        .and_then(|t| Tenant::try_from(t.to_string()).ok())
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
    let tenant = row_tenant(v);
    if tenant.is_none() {
        err("tenant", Tenant::EXPECTED);
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
    // `ts` is the older name of `bucket`; one of them, not both.
    let (field, raw) = match (obj.get("bucket"), obj.get("ts")) {
        (Some(_), Some(_)) => {
            err("ts", "`ts` is another name for `bucket`: send one of them");
            ("bucket", None)
        }
        (Some(b), None) => ("bucket", Some(b)),
        (None, t) => ("ts", t),
    };
    let bucket = match raw
        .and_then(Value::as_str)
        .map(DateTime::parse_from_rfc3339)
    {
        Some(Ok(t)) => {
            let t = t.with_timezone(&Utc);
            if t.second() != 0 || t.nanosecond() != 0 {
                err(field, "must be the start of a minute (seconds = 0)");
            }
            if t > Utc::now() + chrono::Duration::minutes(5) {
                err(field, "is in the future");
            }
            if t < earliest_bucket() {
                err(
                    field,
                    "is before 2000-01-01: not a plausible measurement time",
                );
            }
            t
        }
        _ => {
            err(
                field,
                "an RFC 3339 timestamp (`bucket`, the minute's start)",
            );
            DateTime::<Utc>::MIN_UTC
        }
    };
    let mut number = |k: &str, required: bool| -> Option<f64> {
        match obj.get(k) {
            None | Some(Value::Null) if !required => None,
            Some(Value::Number(n))
                if n.as_f64()
                    .is_some_and(|x| x.is_finite() && x.abs() <= MAX_MAGNITUDE) =>
            {
                n.as_f64()
            }
            _ => {
                err(k, "a finite number of magnitude at most 1e15");
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
    let labels = match obj.get("labels") {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(Value::Object(map))
            if map.len() <= MAX_LABELS
                && map.iter().all(|(k, v)| {
                    (1..=63).contains(&k.len())
                        && k.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"_.-/".contains(&b))
                        && v.as_str().is_some_and(|v| {
                            v.chars().count() <= 256 && !v.chars().any(char::is_control)
                        })
                }) =>
        {
            map.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        }
        Some(_) => {
            err(
                "labels",
                "at most 32 string labels, keys 1-63 of [A-Za-z0-9_.-/], values up to 256 characters",
            );
            BTreeMap::new()
        }
    };
    match tenant {
        Some(tenant) if errors.is_empty() => Ok(MetricRow {
            tenant,
            resource,
            metric,
            bucket,
            avg: avg.unwrap_or_default(),
            max: max.unwrap_or_default(),
            p95,
            count,
            labels,
        }),
        _ => Err(errors),
    }
}

/// Store one-minute metric rows (`{"rows": [...]}`, DESIGN §6); a row for
/// the same tenant, resource, metric and minute replaces the earlier one.
/// A row for a tenant the token does not act for refuses the whole batch.
#[utoipa::path(post, path = "/metrics/ingest", tag = "metrics",
    request_body(content = Object, description = "{\"rows\": [{bucket, tenant, resource, metric, avg, max, p95?, labels?, count?}]} (`ts`: another name for `bucket`)"),
    responses((status = 202, description = "rows stored"), (status = 400, body = crate::problem::Problem),
              (status = 403, body = crate::problem::Problem, description = "forbidden, tenant_forbidden"),
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
    // Permission before validation: whether the batch may be written at
    // all does not depend on the other rows being well formed.
    if let Some(foreign) = rows
        .iter()
        .filter_map(row_tenant)
        .find(|t| !who.may_act_for(t))
    {
        return Err(tenant_forbidden(&who, &foreign));
    }
    let mut parsed = Vec::with_capacity(rows.len());
    let mut errors = Vec::new();
    let mut seen = std::collections::HashMap::new();
    for (i, row) in rows.iter().enumerate() {
        match parse_row(i, row) {
            Ok(r) => {
                let key = (
                    r.tenant.clone(),
                    r.resource.clone(),
                    r.metric.clone(),
                    r.bucket,
                );
                if let Some(first) = seen.insert(key, i) {
                    errors.push(RowError {
                        row: i,
                        field: "bucket".into(),
                        message: format!("same tenant, resource, metric and minute as row {first}"),
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
    let stored: i64 = sqlx::query_scalar(STORE_ROWS)
        .bind(json!(col(|r| json!({
            "tenant": r.tenant, "resource": r.resource, "metric": r.metric,
            "ts": r.bucket.to_rfc3339(), "avg": r.avg, "max": r.max, "p95": r.p95,
            "count": r.count, "labels": r.labels
        }))))
        .fetch_one(state.orchestrator.pool())
        .await?;
    Ok((StatusCode::ACCEPTED, Json(json!({"stored": stored}))).into_response())
}
