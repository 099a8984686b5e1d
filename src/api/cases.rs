//! Case routes: create, read, list, timeline, transition.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::error::{ApiError, PROBLEM_JSON};
use super::extract::{ApiJson, ApiQuery, Auth, CasePath};
use super::state::AppState;
use crate::auth::Identity;
use crate::contract::{DryRunDigest, IdempotencyKey, PlanHash, Tenant};
use crate::ids::is_slug;
use crate::model::{Case, TimelineEntry};
use crate::orchestrator::{
    Actor, Answer, ApprovalsShown, Created, Origin, Outcome, StoredAnswer, TransitionRequest,
};
use crate::problem::Problem;
use crate::store::{NewCase, read_case_in};
use crate::telemetry;
use crate::timeline_columns;
use crate::workflow::Rejection;
use crate::workflow::{EventKind, Status};

const SEVERITIES: [&str; 5] = ["critical", "high", "medium", "low", "info"];
const MAX_LABELS: usize = 32;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCase {
    title: String,
    tenant: String,
    severity: Option<String>,
    kind: Option<String>,
    labels: Option<BTreeMap<String, String>>,
}

fn has_control(s: &str, allow_newlines: bool) -> bool {
    s.chars()
        .any(|c| c.is_control() && !(allow_newlines && (c == '\n' || c == '\t')))
}

/// PostgreSQL's jsonb cannot store U+0000, anywhere in a document.
fn contains_nul(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(contains_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || contains_nul(v)),
        Value::Null | Value::Bool(_) | Value::Number(_) => false,
    }
}

fn invalid(field: &'static str, detail: &str) -> ApiError {
    ApiError::InvalidField {
        field,
        detail: detail.to_string(),
    }
}

impl CreateCase {
    fn validate(self) -> Result<NewCase, ApiError> {
        let title = self.title.trim().to_string();
        if title.is_empty() || title.chars().count() > 200 || has_control(&title, false) {
            return Err(invalid(
                "title",
                "1-200 characters without control characters",
            ));
        }
        let tenant =
            Tenant::try_from(self.tenant).map_err(|_| invalid("tenant", Tenant::EXPECTED))?;
        let severity = self.severity.unwrap_or_else(|| "medium".into());
        if !SEVERITIES.contains(&severity.as_str()) {
            return Err(invalid(
                "severity",
                "one of critical, high, medium, low, info",
            ));
        }
        if let Some(kind) = &self.kind
            && !is_slug(kind, b"_.-")
        {
            return Err(invalid(
                "kind",
                "1-64 of [a-z0-9_.-], starting alphanumeric",
            ));
        }
        let labels = self.labels.unwrap_or_default();
        if labels.len() > MAX_LABELS {
            return Err(invalid("labels", "at most 32 labels"));
        }
        for (k, v) in &labels {
            let key_ok = (1..=63).contains(&k.len())
                && k.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.-/".contains(&b));
            if !key_ok || v.chars().count() > 256 || has_control(v, false) {
                return Err(invalid(
                    "labels",
                    "keys 1-63 of [A-Za-z0-9_.-/], values up to 256 characters without control characters",
                ));
            }
        }
        Ok(NewCase {
            tenant,
            title,
            severity,
            kind: self.kind,
            labels: serde_json::to_value(labels).unwrap_or_default(),
        })
    }
}

fn with_etag(status: StatusCode, case: &Case, body: impl Serialize) -> Response {
    let mut response = (status, Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("\"{}\"", case.version)) {
        response.headers_mut().insert(header::ETAG, v);
    }
    response
}

/// Create a case in `NEW`. With an `Idempotency-Key` (optional here; same
/// rules as for transitions), a repeat of the request answers the case as
/// it was created, with `Idempotent-Replayed: true`.
#[utoipa::path(post, path = "/case", request_body = CreateCase, tag = "cases",
    params(("Idempotency-Key" = Option<String>, Header, description = "optional: 1-200 visible ASCII characters; a repeat of the same request replays the creation")),
    responses((status = 201, body = Case), (status = 400, body = Problem), (status = 401, body = Problem),
              (status = 403, body = Problem, description = "forbidden (role), tenant_forbidden (a tenant the caller lacks)"),
              (status = 422, body = Problem, description = "idempotency_key_reuse: the key was used for another request")),
    security(("bearer" = [])))]
pub async fn create_case(
    State(state): State<AppState>,
    Auth(who): Auth,
    headers: HeaderMap,
    ApiJson(raw): ApiJson<Value>,
) -> Result<Response, ApiError> {
    if !who.may_create_cases() {
        return Err(ApiError::Forbidden(format!(
            "{} may not create cases",
            who.id
        )));
    }
    let key = match headers.contains_key("idempotency-key") {
        true => Some(idempotency_key(&headers)?),
        false => None,
    };
    // serde_json's map is ordered, so this serialisation is canonical.
    let request_hash = hex::encode(Sha256::digest(format!("POST /case\n{raw}")));
    let body: CreateCase = serde_json::from_value(raw)
        .map_err(|e| ApiError::Malformed(format!("invalid body: {e}")))?;
    let new = body.validate()?;
    if !who.may_act_for(&new.tenant) {
        return Err(tenant_forbidden(&who, &new.tenant));
    }
    let actor = Actor {
        id: who.id.clone(),
        human: who.is_human(),
    };
    let Some(key) = key else {
        let case = state.orchestrator.create_case(new, &actor).await?;
        return Ok(with_etag(StatusCode::CREATED, &case, &case));
    };
    Ok(
        match state
            .orchestrator
            .create_case_once(new, &actor, &key, &request_hash)
            .await?
        {
            Created::New(case) => with_etag(StatusCode::CREATED, &case, &*case),
            Created::Replayed(case) => {
                let mut response = with_etag(StatusCode::CREATED, &case, &*case);
                response
                    .headers_mut()
                    .insert("idempotent-replayed", HeaderValue::from_static("true"));
                response
            }
        },
    )
}

/// One case, with `ETag: "<version>"`.
#[utoipa::path(get, path = "/case/{id}", tag = "cases",
    params(("id" = Uuid, Path)),
    responses((status = 200, body = Case), (status = 400, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn get_case(
    State(state): State<AppState>,
    Auth(who): Auth,
    CasePath(id): CasePath,
) -> Result<Response, ApiError> {
    let case = fetch_case(&state, &who, id).await?;
    Ok(with_etag(StatusCode::OK, &case, &case))
}

/// The case if `who` acts for its tenant; another tenant's case is not
/// found, with the same answer as an id that exists nowhere.
pub async fn fetch_case(state: &AppState, who: &Identity, id: Uuid) -> Result<Case, ApiError> {
    read_case_in(state.orchestrator.pool(), id, &who.tenants)
        .await?
        .ok_or(ApiError::CaseNotFound(id))
}

/// A write (or a filter) names a tenant the caller does not act for.
pub fn tenant_forbidden(who: &Identity, tenant: &Tenant) -> ApiError {
    ApiError::TenantForbidden(format!("{} does not act for tenant {tenant}", who.id))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// `NEW` … `PARKED`.
    status: Option<String>,
    tenant: Option<String>,
    /// 1-200, default 50.
    limit: Option<u32>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CaseList {
    items: Vec<Case>,
    /// Pass as `cursor` for the next page; absent on the last page.
    next_cursor: Option<String>,
}

/// Cases, newest first.
#[utoipa::path(get, path = "/cases", tag = "cases", params(ListQuery),
    responses((status = 200, body = CaseList), (status = 400, body = Problem),
              (status = 403, body = Problem, description = "tenant_forbidden: a tenant filter the caller lacks")),
    security(("bearer" = [])))]
pub async fn list_cases(
    State(state): State<AppState>,
    Auth(who): Auth,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<CaseList>, ApiError> {
    let status = q
        .status
        .as_deref()
        .map(|s| s.parse::<Status>())
        .transpose()
        .map_err(|_| {
            invalid(
                "status",
                "one of NEW, ANALYZING, PLANNING, WAIT_GATE, EXECUTING, VERIFYING, CLOSED, PARKED",
            )
        })?;
    let tenant = q
        .tenant
        .map(Tenant::try_from)
        .transpose()
        .map_err(|_| invalid("tenant", Tenant::EXPECTED))?;
    if let Some(t) = &tenant
        && !who.may_act_for(t)
    {
        return Err(tenant_forbidden(&who, t));
    }
    let limit = q.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(invalid("limit", "between 1 and 200"));
    }
    let cursor = q
        .cursor
        .as_deref()
        .map(Uuid::parse_str)
        .transpose()
        .map_err(|_| invalid("cursor", "not a cursor this API returned"))?;
    let (items, more) = crate::store::cases::page(
        state.orchestrator.pool(),
        crate::store::cases::CaseFilter {
            scope: &who.tenants,
            status,
            tenant: tenant.as_ref(),
            severity: None,
            before: cursor,
            limit: i64::from(limit),
        },
    )
    .await?;
    let next_cursor = more
        .then(|| items.last().map(|c| c.id.to_string()))
        .flatten();
    Ok(Json(CaseList { items, next_cursor }))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Timeline {
    items: Vec<TimelineEntry>,
    /// Pass as `cursor` for the next page; absent on the last page.
    next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct TimelineQuery {
    /// 1-1000, default 100.
    limit: Option<u32>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// A timeline entry with its position, for paging.
#[derive(sqlx::FromRow)]
struct Positioned {
    seq: i64,
    #[sqlx(flatten)]
    entry: TimelineEntry,
}

/// Accepted and rejected entries, oldest first, a page at a time.
#[utoipa::path(get, path = "/case/{id}/timeline", tag = "cases",
    params(("id" = Uuid, Path), TimelineQuery),
    responses((status = 200, body = Timeline), (status = 400, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn timeline(
    State(state): State<AppState>,
    Auth(who): Auth,
    CasePath(id): CasePath,
    ApiQuery(q): ApiQuery<TimelineQuery>,
) -> Result<Json<Timeline>, ApiError> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(invalid("limit", "between 1 and 1000"));
    }
    let after = q
        .cursor
        .as_deref()
        .map(|c| c.parse::<i64>().ok().filter(|n| *n >= 0))
        .map(|c| c.ok_or_else(|| invalid("cursor", "not a cursor this API returned")))
        .transpose()?;
    let pool = state.orchestrator.pool();
    let mut rows: Vec<Positioned> = sqlx::query_as(concat!(
        "SELECT seq, ",
        timeline_columns!(),
        " FROM case_timeline WHERE case_id = $1 AND ($2::bigint IS NULL OR seq > $2) \
         AND EXISTS (SELECT 1 FROM ops_case c WHERE c.id = $1 \
                     AND ($4::text[] IS NULL OR c.tenant = ANY($4))) \
         ORDER BY seq LIMIT $3"
    ))
    .bind(id)
    .bind(after)
    .bind(i64::from(limit) + 1)
    .bind(who.tenants.sql())
    .fetch_all(pool)
    .await?;
    // Every case has its `created` entry: no rows on the first page means
    // no case (in the caller's tenants); a later page may be empty for a
    // real one.
    if rows.is_empty() && (after.is_none() || read_case_in(pool, id, &who.tenants).await?.is_none())
    {
        return Err(ApiError::CaseNotFound(id));
    }
    let more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let next_cursor = more
        .then(|| rows.last().map(|r| r.seq.to_string()))
        .flatten();
    Ok(Json(Timeline {
        items: rows.into_iter().map(|r| r.entry).collect(),
        next_cursor,
    }))
}

/// What a caller may store in a transition's `meta`, serialised.
const MAX_META_BYTES: usize = 16 * 1024;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TransitionBody {
    /// `start_analysis` … `dismiss`.
    event: String,
    reason: Option<String>,
    /// The hash of the plan judged: required with `gate_approved` and
    /// `gate_rejected`, whoever sends them.
    #[schema(value_type = Option<String>, pattern = "^[0-9a-f]{64}$")]
    plan_hash: Option<String>,
    /// The digest of the dry run judged (`GET /case/{id}/plan` shows it as
    /// `dry_run.digest`): required with a person's `gate_approved` once the
    /// plan has a dry run, and with the executor's `dryrun_done` /
    /// `dryrun_failed` (the stored dry run they report).
    #[schema(value_type = Option<String>, pattern = "^[0-9a-f]{64}$")]
    dryrun_digest: Option<String>,
    /// Free-form context kept in the timeline meta.
    #[schema(value_type = Object)]
    meta: Option<Value>,
    /// A person's approval of a plan the gate judged inside a change
    /// freeze (verdict `break_glass`) says why: `{"reason": "…"}`.
    #[schema(value_type = Option<Object>)]
    break_glass: Option<BreakGlass>,
    /// A worker fact's evidence, the record it reports: `verify_*` name
    /// `{"verify_result_id": "<uuid>"}`, `exec_*` `{"exec_run_id": "<uuid>"}`.
    #[schema(value_type = Option<Object>)]
    evidence: Option<Value>,
}

#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BreakGlass {
    reason: String,
}

/// What the timeline keeps of a person's request: its own `meta`, and
/// beside it the evidence and the break-glass reason it gave.
#[derive(Serialize)]
struct RequestMeta {
    #[serde(flatten)]
    meta: serde_json::Map<String, Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    evidence: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    break_glass: Option<BreakGlass>,
}

impl RequestMeta {
    /// `null` when the request gave none of them (`meta` was checked to be
    /// an object).
    fn stored(
        meta: Option<Value>,
        evidence: Option<Value>,
        break_glass: Option<BreakGlass>,
    ) -> Value {
        if meta.is_none() && evidence.is_none() && break_glass.is_none() {
            return Value::Null;
        }
        let meta = match meta {
            Some(Value::Object(map)) => map,
            _ => serde_json::Map::new(),
        };
        serde_json::to_value(RequestMeta {
            meta,
            evidence,
            break_glass,
        })
        .unwrap_or(Value::Null)
    }
}

/// A person approving a plan the gate judged inside a change freeze must
/// say why (DESIGN §10); the reason is kept with the approval's timeline
/// entry. Read within the caller's tenants: another tenant's plan is not
/// looked at.
async fn check_break_glass(
    state: &AppState,
    who: &Identity,
    case_id: Uuid,
    plan_hash: &PlanHash,
    given: bool,
) -> Result<(), ApiError> {
    // A reason given needs no look-up: it is kept whether or not the
    // plan needed one.
    if given {
        return Ok(());
    }
    let freeze: Option<Option<String>> = sqlx::query_scalar(
        "SELECT gate_freeze FROM plan_proposed WHERE case_id = $1 AND plan_hash = $2 \
         AND gate_verdict = 'break_glass' AND EXISTS (SELECT 1 FROM ops_case c WHERE c.id = $1 \
         AND ($3::text[] IS NULL OR c.tenant = ANY($3)))",
    )
    .bind(case_id)
    .bind(plan_hash.as_str())
    .bind(who.tenants.sql())
    .fetch_optional(state.orchestrator.pool())
    .await?;
    match freeze {
        None => Ok(()),
        Some(freeze) => Err(invalid(
            "break_glass",
            &format!(
                "the plan is judged inside change freeze {}: approving it overrides the freeze; \
                 give {{\"break_glass\": {{\"reason\": \"…\"}}}} (1-2000 characters)",
                freeze.unwrap_or_default()
            ),
        )),
    }
}

/// What a worker fact over HTTP names as its evidence (DESIGN §10): the
/// key in `evidence`, the query for the recorded row's outcome (of this
/// case), and which outcomes fit the event.
type EvidenceRule = (&'static str, &'static str, fn(&str) -> bool);

fn evidence_rule(event: EventKind) -> Option<EvidenceRule> {
    const RESULT: &str = "SELECT outcome FROM verify_result WHERE id = $1 AND case_id = $2";
    const RUN: &str = "SELECT status FROM exec_run WHERE id = $1 AND case_id = $2 AND kind = 'run'";
    Some(match event {
        EventKind::VerifyPass => ("verify_result_id", RESULT, |o| o == "pass"),
        EventKind::VerifyFailed => ("verify_result_id", RESULT, |o| o != "pass"),
        EventKind::ExecDone => ("exec_run_id", RUN, |s| s == "done"),
        EventKind::ExecFailed => ("exec_run_id", RUN, |s| !matches!(s, "done" | "running")),
        _ => return None,
    })
}

/// The recorded row a worker fact reports: named by the request, of this
/// case, with an outcome that fits the event.
async fn check_evidence(
    state: &AppState,
    case_id: Uuid,
    event: EventKind,
    evidence: Option<&Value>,
) -> Result<(), ApiError> {
    let Some((key, query, fits)) = evidence_rule(event) else {
        return Ok(());
    };
    let id = evidence
        .and_then(|e| e.get(key))
        .and_then(Value::as_str)
        .and_then(|s| Uuid::parse_str(s).ok())
        .ok_or_else(|| ApiError::InvalidField {
            field: "evidence",
            detail: format!("{event} names the record it reports: {{\"{key}\": \"<uuid>\"}}"),
        })?;
    let outcome: Option<String> = sqlx::query_scalar(query)
        .bind(id)
        .bind(case_id)
        .fetch_optional(state.orchestrator.pool())
        .await?;
    if outcome.as_deref().is_some_and(fits) {
        Ok(())
    } else {
        Err(ApiError::EvidenceInvalid(format!(
            "{key} {id} is not a record of case {case_id} that fits {event}"
        )))
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TransitionReply {
    case: Case,
    transition: TimelineEntry,
}

/// A 200: an applied move, or a vote already counted.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum TransitionOk {
    Applied(Box<TransitionReply>),
    Counted(Box<CountedReply>),
}

/// A person's second approval: nothing recorded, the count as it is.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CountedReply {
    case: Case,
    approvals: ApprovalsShown,
}

/// A counted approval short of the quorum.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct VoteReply {
    case: Case,
    /// The `gate_vote` entry.
    transition: TimelineEntry,
    approvals: ApprovalsShown,
}

fn idempotency_key(headers: &HeaderMap) -> Result<IdempotencyKey, ApiError> {
    let value = headers
        .get("idempotency-key")
        .ok_or(ApiError::IdempotencyKeyMissing)?;
    let key = value
        .to_str()
        .map_err(|_| invalid("Idempotency-Key", "visible ASCII only"))?;
    key.parse()
        .map_err(|_| invalid("Idempotency-Key", IdempotencyKey::EXPECTED))
}

fn if_match(headers: &HeaderMap) -> Result<Option<i64>, ApiError> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .map(|v| v.trim().trim_matches('"'))
        .and_then(|v| v.parse::<i64>().ok())
        // Any version number is a precondition; one the case is not at
        // (0 included) is a mismatch, answered 412 by the orchestrator.
        .filter(|v| *v >= 0)
        .map(Some)
        .ok_or_else(|| invalid("If-Match", "a case version as returned in ETag, e.g. \"3\""))
}

/// Apply an event to a case (DESIGN §3). `Idempotency-Key` is required;
/// `If-Match: "<version>"` guards against concurrent changes.
#[utoipa::path(patch, path = "/case/{id}/transition", tag = "cases",
    params(("id" = Uuid, Path),
           ("Idempotency-Key" = String, Header, description = "required; replays return the stored reply"),
           ("If-Match" = Option<String>, Header, description = "the case version expected, as in ETag")),
    request_body = TransitionBody,
    responses((status = 200, body = TransitionOk, description = "applied (`{case, transition}`); or a person's second approval of a plan their first already counts for (`{case, approvals}`), nothing recorded"),
              (status = 202, body = VoteReply, description = "a person's approval counted, the quorum not met yet (`gate_vote`)"),
              (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem),
              (status = 404, body = Problem), (status = 409, body = Problem, description = "illegal_transition"),
              (status = 412, body = Problem, description = "version_mismatch"),
              (status = 422, body = Problem, description = "guard_failed, idempotency_key_reuse"),
              (status = 428, body = Problem, description = "Idempotency-Key missing")),
    security(("bearer" = [])))]
pub async fn transition(
    State(state): State<AppState>,
    Auth(who): Auth,
    CasePath(id): CasePath,
    headers: HeaderMap,
    ApiJson(raw): ApiJson<Value>,
) -> Result<Response, ApiError> {
    let key = idempotency_key(&headers)?;
    let expected_version = if_match(&headers)?;
    let request_hash = {
        // serde_json's map is ordered, so this serialisation is canonical.
        let mut h = Sha256::new();
        h.update(format!("PATCH /case/{id}/transition\n"));
        h.update(raw.to_string());
        hex::encode(h.finalize())
    };
    let body: TransitionBody = serde_json::from_value(raw)
        .map_err(|e| ApiError::Malformed(format!("invalid body: {e}")))?;
    let event: EventKind = body
        .event
        .parse()
        .map_err(|_| ApiError::UnknownEvent(body.event.clone()))?;
    if !who.may_send(event) {
        return Err(ApiError::Forbidden(format!(
            "{} may not send {event}",
            who.id
        )));
    }
    if let Some(reason) = &body.reason
        && (reason.chars().count() > 2000 || has_control(reason, true))
    {
        return Err(invalid(
            "reason",
            "up to 2000 characters without control characters",
        ));
    }
    if let Some(meta) = &body.meta
        && (!meta.is_object() || contains_nul(meta))
    {
        return Err(invalid("meta", "must be an object without NUL characters"));
    }
    if let Some(evidence) = &body.evidence
        && (!evidence.is_object() || contains_nul(evidence))
    {
        return Err(invalid(
            "evidence",
            "must be an object without NUL characters",
        ));
    }
    check_evidence(&state, id, event, body.evidence.as_ref()).await?;
    if let Some(b) = &body.break_glass
        && (b.reason.trim().is_empty()
            || b.reason.chars().count() > 2000
            || has_control(&b.reason, true))
    {
        return Err(invalid(
            "break_glass",
            "reason: 1-2000 characters without control characters",
        ));
    }
    let given_break_glass = body.break_glass.is_some();
    let meta = RequestMeta::stored(body.meta, body.evidence, body.break_glass);
    if meta.to_string().len() > MAX_META_BYTES {
        return Err(ApiError::PayloadTooLarge(format!(
            "meta is stored with the timeline entry: at most {MAX_META_BYTES} bytes"
        )));
    }
    // Every gate verdict names the plan it judges, whoever gives it.
    let verdict = matches!(event, EventKind::GateApproved | EventKind::GateRejected);
    let plan_hash = body
        .plan_hash
        .map(PlanHash::try_from)
        .transpose()
        .map_err(|_| invalid("plan_hash", PlanHash::EXPECTED))?;
    if plan_hash.is_none() && verdict {
        return Err(invalid(
            "plan_hash",
            "required: the hash of the plan you judge",
        ));
    }
    let dryrun_digest = body
        .dryrun_digest
        .map(DryRunDigest::try_from)
        .transpose()
        .map_err(|_| invalid("dryrun_digest", DryRunDigest::EXPECTED))?;
    if matches!(event, EventKind::DryrunDone | EventKind::DryrunFailed)
        && (dryrun_digest.is_none() || plan_hash.is_none())
    {
        return Err(invalid(
            "dryrun_digest",
            "required with plan_hash: the stored dry run this reports",
        ));
    }
    if let (EventKind::GateApproved, Some(hash)) = (event, &plan_hash)
        && who.is_human()
    {
        check_break_glass(&state, &who, id, hash, given_break_glass).await?;
    }
    let trace_id =
        telemetry::trace_id_from(headers.get("traceparent").and_then(|v| v.to_str().ok()));
    let outcome = state
        .orchestrator
        .transition(TransitionRequest {
            case_id: id,
            tenants: who.tenants.clone(),
            event,
            actor: Actor {
                id: who.id.clone(),
                human: who.is_human(),
            },
            reason: body.reason,
            plan_hash,
            dryrun_digest,
            meta,
            expected_version,
            origin: Origin::Http {
                idempotency_key: key,
                request_hash,
            },
            trace_id,
        })
        .await?;
    Ok(match outcome {
        Outcome::Answered(answer) => reply_response(render(&answer), false),
        Outcome::Replayed(StoredAnswer::Typed(answer)) => reply_response(render(&answer), true),
        Outcome::Replayed(StoredAnswer::Rendered { status, body }) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            // Stored by an older release: its version is in the stored body.
            let version = body["case"]["version"].as_i64();
            reply_response((status, body, version), true)
        }
        Outcome::Duplicate => {
            return Err(ApiError::Internal(anyhow::anyhow!(
                "an HTTP request was treated as a duplicate message"
            )));
        }
    })
}

/// The HTTP form of a transition's answer: 200 `{case, transition}`, or the
/// rejection as problem+json. The same answer always renders the same
/// bytes (bodies go through `Value`, whose keys are sorted), which is what
/// makes an idempotent replay identical to the first reply. An applied
/// answer also gives the case version it leaves (the reply's `ETag`).
fn render(answer: &Answer) -> (StatusCode, Value, Option<i64>) {
    match answer {
        Answer::Applied { case, transition } => match answer.approvals() {
            // A vote short of the quorum: accepted, the gate still waits.
            Some(approvals) => (
                StatusCode::ACCEPTED,
                json!({"case": case, "transition": transition, "approvals": approvals}),
                Some(case.version),
            ),
            None => (
                StatusCode::OK,
                json!({"case": case, "transition": transition}),
                Some(case.version),
            ),
        },
        Answer::Counted { case, .. } => (
            StatusCode::OK,
            json!({"case": case, "approvals": answer.approvals()}),
            Some(case.version),
        ),
        Answer::Rejected {
            rejection,
            case_status,
            case_version,
        } => {
            let problem = match rejection {
                Rejection::IllegalTransition { from, event } => Problem::new(
                    409,
                    rejection.code(),
                    "Illegal transition",
                    format!("{event} is not accepted in {from}"),
                )
                .with("case_status", json!(case_status))
                .with("version", json!(case_version)),
                Rejection::StaleFact { detail } => {
                    Problem::new(409, rejection.code(), "Stale fact", detail.clone())
                }
                Rejection::GuardFailed { failures, .. } => Problem::new(
                    422,
                    rejection.code(),
                    "Guard failed",
                    failures
                        .iter()
                        .map(|f| format!("{}: {}", f.guard, f.detail))
                        .collect::<Vec<_>>()
                        .join("; "),
                )
                .with("guards", json!(failures))
                .with("version", json!(case_version)),
            };
            let status =
                StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            (status, problem.to_value(), None)
        }
    }
}

fn reply_response(
    (status, body, version): (StatusCode, Value, Option<i64>),
    replayed: bool,
) -> Response {
    let mut response = (status, Json(body)).into_response();
    let headers = response.headers_mut();
    if status.is_client_error() {
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    }
    if let Some(v) = version
        && let Ok(v) = HeaderValue::from_str(&format!("\"{v}\""))
    {
        headers.insert(header::ETAG, v);
    }
    if replayed {
        headers.insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    response
}
