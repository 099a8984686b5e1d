//! The web console at `/ui` (DESIGN §13), first step: signing in with a
//! token, the session, and the case list. Server-rendered HTML (maud,
//! escaped by construction), no script, no external asset.
//!
//! A session: the browser holds an opaque random id in an `HttpOnly`,
//! `SameSite=Strict` cookie (`Secure` with `OPSLOOP_COOKIE_SECURE`), never
//! the token; the database keeps the id's SHA-256 with the token's
//! SHA-256 (`ui_session`), and every request looks the identity up in the
//! process's token store again, so the console has exactly the API's
//! roles and tenant scope (a token taken out of the file ends its sessions
//! when the process reloads the file, i.e. restarts).
//! Idle expiry 8 h, absolute 24 h. Every form that changes something
//! carries the session's CSRF token; without it, 403.

use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Form, Router};
use maud::{DOCTYPE, Markup, html};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::error::ApiError;
use super::state::AppState;
use crate::auth::Identity;
use crate::contract::Tenant;
use crate::model::Case;
use crate::workflow::Status;

const COOKIE: &str = "opsloop_session";
const IDLE_HOURS: i32 = 8;
const ABSOLUTE_HOURS: i32 = 24;
const PAGE: i64 = 50;
const STYLE: &str = include_str!("console.css");
const SCRIPT: &str = include_str!("console.js");

pub fn routes() -> Router<AppState> {
    use axum::routing::{get, post};
    Router::new()
        .route("/ui", get(home))
        .route("/ui/login", get(login_page).post(login))
        .route("/ui/logout", post(logout))
        .route("/ui/cases", get(cases))
        .route("/ui/case/{id}", get(case_page))
        .route("/ui/case/{id}/act", post(act))
        .route("/ui/console.css", get(style))
        .route("/ui/console.js", get(script))
        .route("/ui/events", get(events))
}

/// A signed-in browser: who, and the token its forms must carry.
pub struct Session {
    pub who: Identity,
    pub csrf: String,
}

fn random_hex() -> Result<String, ApiError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("drawing random bytes: {e}")))?;
    Ok(hex::encode(bytes))
}

fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// Every value the request sends under the session cookie's name (a
/// cookie planted for a narrower path or by a sibling host may come first).
fn cookies(headers: &HeaderMap) -> Vec<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .filter(|(k, v)| *k == COOKIE && v.len() == 64)
        .map(|(_, v)| v)
        .collect()
}

async fn session(state: &AppState, headers: &HeaderMap) -> Result<Option<Session>, ApiError> {
    Ok(live(state, headers).await?.map(|(s, _)| s))
}

/// The request's live session and its cookie value, touched (its idle
/// clock restarts).
async fn live(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<Option<(Session, String)>, ApiError> {
    for id in cookies(headers) {
        if let Some(s) = live_one(state, id).await? {
            return Ok(Some((s, id.to_string())));
        }
    }
    Ok(None)
}

async fn live_one(state: &AppState, id: &str) -> Result<Option<Session>, ApiError> {
    let row: Option<(String, String)> = sqlx::query_as(
        "UPDATE ui_session SET last_seen_at = now() WHERE id_sha256 = $1 \
         AND created_at > now() - make_interval(hours => $2) \
         AND last_seen_at > now() - make_interval(hours => $3) \
         RETURNING token_sha256, csrf",
    )
    .bind(sha256_hex(id))
    .bind(ABSOLUTE_HOURS)
    .bind(IDLE_HOURS)
    .fetch_optional(state.orchestrator.pool())
    .await?;
    Ok(row.and_then(|(token, csrf)| {
        // A service identity has no business in a browser.
        let who = state.tokens.by_token_sha256(&token)?.clone();
        who.is_human().then_some(Session { who, csrf })
    }))
}

fn set_cookie(state: &AppState, value: &str, max_age_s: i64) -> HeaderValue {
    let secure = if state.cookie_secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{COOKIE}={value}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={max_age_s}{secure}"
    ))
    .expect("a cookie of hex digits is a valid header")
}

fn page(title: &str, who: Option<&Session>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · opsloop" }
                link rel="stylesheet" href="/ui/console.css";
            }
            body {
                header {
                    a href="/ui/cases" class="brand" { "opsloop" }
                    @if let Some(s) = who {
                        span class="who" { "Signed in as " strong { (s.who.id) } }
                        form method="post" action="/ui/logout" class="inline" {
                            input type="hidden" name="csrf" value=(s.csrf);
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main {
                    @if who.is_some() { p id="live" class="hint" aria-live="polite" {} }
                    (body)
                }
                @if who.is_some() { script src="/ui/console.js" defer {} }
            }
        }
    }
}

fn html_response(status: StatusCode, markup: Markup) -> Response {
    let mut response = (status, markup).into_response();
    let headers = response.headers_mut();
    // No other origin frames or scripts the console; its own script
    // (a file, never inline) may open the event stream.
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'self'; \
             form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

async fn script() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        SCRIPT,
    )
        .into_response()
}

/// Live updates: the case feed (`evt.case.transition.v1` and
/// `evt.case.created.v1`, core subscriptions on the api process's NATS
/// connection) as Server-Sent Events (`transition`, `created`), only of
/// the session's tenants. Without NATS: 503, and the page
/// falls back to refreshing itself, and says so.
///
/// A page names what it showed (`mark`: a case page its case's version,
/// `case` its id; the list the newest timeline entry's id): what happened
/// between the page's rendering and the stream's start (a page reloads
/// while the next move is published) is not lost: the stream then opens
/// with a `stale` event.
async fn events(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(seen): Query<Seen>,
) -> Result<Response, ApiError> {
    use axum::response::sse::{Event, KeepAlive, Sse};
    use futures::StreamExt;
    let Some(s) = session(&state, &headers).await? else {
        return Ok(StatusCode::UNAUTHORIZED.into_response());
    };
    let Some(nats) = state.nats.clone() else {
        return Ok((StatusCode::SERVICE_UNAVAILABLE, "no transition feed").into_response());
    };
    let subscribe = |subject: &'static str| {
        let nats = nats.clone();
        async move {
            nats.subscribe(subject)
                .await
                .map_err(|e| ApiError::Unavailable(format!("the case feed ({subject}): {e}")))
        }
    };
    // A new case is news to a list, as a move is.
    let feed = futures::stream::select(
        subscribe(crate::contract::fact::EVT_CASE_TRANSITION).await?,
        subscribe(crate::contract::fact::EVT_CASE_CREATED).await?,
    );
    // Subscribed first, compared second: nothing falls between the two.
    let pool = state.orchestrator.pool();
    let now = match (seen.case, seen.mark.as_deref()) {
        (_, None) => None,
        (Some(case), Some(_)) => crate::store::read_case_in(pool, case, &s.who.tenants)
            .await?
            .map(|c| c.version.to_string()),
        (None, Some(_)) => Some(timeline_mark(pool).await?),
    };
    let stale = (seen.mark.is_some() && now != seen.mark)
        .then(|| Ok::<_, std::convert::Infallible>(Event::default().event("stale").data("{}")));
    let scope = s.who.tenants;
    let stream = feed.filter_map(move |m| {
        let shown = serde_json::from_slice::<crate::pubsub::Envelope>(&m.payload)
            .ok()
            .and_then(|env| {
                crate::contract::Message::<crate::contract::Fact>::from_envelope(&env).ok()
            })
            .filter(|msg| scope.includes(&msg.tenant))
            .and_then(|msg| match msg.body {
                crate::contract::Fact::CaseTransition(t) => Some((
                    "transition",
                    serde_json::json!({"case_id": msg.case_id.uuid(), "from": t.from,
                                       "to": t.to, "event": t.event, "version": t.version}),
                )),
                crate::contract::Fact::CaseCreated(_) => Some((
                    "created",
                    serde_json::json!({"case_id": msg.case_id.uuid()}),
                )),
                _ => None,
            })
            .map(|(name, data)| {
                Ok::<_, std::convert::Infallible>(
                    Event::default().event(name).data(data.to_string()),
                )
            });
        std::future::ready(shown)
    });
    Ok(Sse::new(futures::stream::iter(stale).chain(stream))
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// What a page showed, as its event stream is opened.
#[derive(Debug, Deserialize)]
struct Seen {
    #[serde(default)]
    mark: Option<String>,
    #[serde(default)]
    case: Option<Uuid>,
}

/// The newest timeline entry's id (UUIDv7: later entries sort after it),
/// found through the primary key; empty before the first entry.
async fn timeline_mark(pool: &sqlx::PgPool) -> Result<String, ApiError> {
    let mark: Option<Uuid> =
        sqlx::query_scalar("SELECT id FROM case_timeline ORDER BY id DESC LIMIT 1")
            .fetch_optional(pool)
            .await?;
    Ok(mark.map(|m| m.to_string()).unwrap_or_default())
}

async fn style() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        STYLE,
    )
        .into_response()
}

async fn home(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    Ok(match session(&state, &headers).await? {
        Some(_) => Redirect::to("/ui/cases").into_response(),
        None => Redirect::to("/ui/login").into_response(),
    })
}

fn login_form(problem: Option<&str>) -> Markup {
    html! {
        h1 { "Sign in" }
        @if let Some(p) = problem {
            p class="error" role="alert" { (p) }
        }
        form method="post" action="/ui/login" {
            label for="token" { "Access token" }
            input id="token" name="token" type="password" autocomplete="off" required;
            button type="submit" { "Sign in" }
        }
        p class="hint" { "The same token as for the API; the browser keeps only a session id." }
    }
}

async fn login_page() -> Response {
    html_response(StatusCode::OK, page("Sign in", None, login_form(None)))
}

#[derive(Debug, Deserialize)]
struct LoginForm {
    token: String,
}

/// A sign-in posted from another site (login CSRF: being signed in as
/// someone else, and acting as them unknowingly) is refused.
///
/// A browser that sends `Sec-Fetch-Site` is believed: only `same-origin`
/// (our own form) and `none` (typed by the user) pass; a sibling host
/// (`same-site`) is another site here. Its `Origin` may well be `null`:
/// Chromium sends that for a form under our `Referrer-Policy:
/// no-referrer`. Without the header (older browsers, scripts), the
/// `Origin`, when sent, must name this host.
fn cross_site(headers: &HeaderMap) -> bool {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(site) = header("sec-fetch-site") {
        return !matches!(site, "same-origin" | "none");
    }
    match (header("origin"), header("host")) {
        (Some(origin), Some(host)) => origin
            .split_once("://")
            .is_none_or(|(_, authority)| authority != host),
        (Some(_), None) => true,
        (None, _) => false,
    }
}

async fn login(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Result<Response, ApiError> {
    if cross_site(&headers) {
        return Ok(forbidden("A sign-in from another site is refused."));
    }
    // Ended sessions leave with each new one.
    sqlx::query(
        "DELETE FROM ui_session WHERE created_at < now() - make_interval(hours => $1) \
         OR last_seen_at < now() - make_interval(hours => $2)",
    )
    .bind(ABSOLUTE_HOURS)
    .bind(IDLE_HOURS)
    .execute(state.orchestrator.pool())
    .await?;
    let who = state.tokens.authenticate(form.token.trim());
    let Some(who) = who.filter(|w| w.is_human()) else {
        let form = login_form(Some("That token is not known, or is a service's."));
        return Ok(html_response(
            StatusCode::UNAUTHORIZED,
            page("Sign in", None, form),
        ));
    };
    let id = random_hex()?;
    sqlx::query("INSERT INTO ui_session (id_sha256, token_sha256, csrf) VALUES ($1, $2, $3)")
        .bind(sha256_hex(&id))
        .bind(crate::auth::token_sha256(form.token.trim()))
        .bind(random_hex()?)
        .execute(state.orchestrator.pool())
        .await?;
    tracing::info!(identity = %who.id, "Console session opened.");
    let mut response = Redirect::to("/ui/cases").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        set_cookie(&state, &id, i64::from(ABSOLUTE_HOURS) * 3600),
    );
    Ok(response)
}

#[derive(Debug, Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

fn forbidden(why: &str) -> Response {
    html_response(
        StatusCode::FORBIDDEN,
        page(
            "Refused",
            None,
            html! { h1 { "Refused" } p role="alert" { (why) } },
        ),
    )
}

async fn logout(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Result<Response, ApiError> {
    let Some((s, id)) = live(&state, &headers).await? else {
        return Ok(Redirect::to("/ui/login").into_response());
    };
    if form.csrf != s.csrf {
        return Ok(forbidden(
            "The form did not carry this session's token (CSRF): nothing was done.",
        ));
    }
    sqlx::query("DELETE FROM ui_session WHERE id_sha256 = $1")
        .bind(sha256_hex(&id))
        .execute(state.orchestrator.pool())
        .await?;
    let mut response = Redirect::to("/ui/login").into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, set_cookie(&state, "", 0));
    Ok(response)
}

#[derive(Debug, Default, Deserialize)]
struct ListFilter {
    #[serde(default)]
    status: String,
    #[serde(default)]
    tenant: String,
    #[serde(default)]
    severity: String,
    #[serde(default)]
    before: String,
}

const SEVERITIES: [&str; 5] = ["critical", "high", "medium", "low", "info"];

fn age(case: &Case) -> String {
    let minutes = (chrono::Utc::now() - case.created_at).num_minutes().max(0);
    match minutes {
        0..60 => format!("{minutes} min"),
        60..2880 => format!("{} h", minutes / 60),
        _ => format!("{} d", minutes / 1440),
    }
}

async fn cases(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(f): Query<ListFilter>,
) -> Result<Response, ApiError> {
    let Some(s) = session(&state, &headers).await? else {
        return Ok(Redirect::to("/ui/login").into_response());
    };
    // A filter that is not a status, tenant or severity is shown as no
    // filter, and said so, rather than answered with an error page.
    let status = f.status.parse::<Status>().ok();
    let tenant = Tenant::try_from(f.tenant.clone())
        .ok()
        .filter(|t| s.who.may_act_for(t));
    let severity = SEVERITIES
        .contains(&f.severity.as_str())
        .then_some(f.severity.as_str());
    let before = Uuid::parse_str(&f.before).ok();
    let mark = timeline_mark(state.orchestrator.pool()).await?;
    let (items, more) = crate::store::cases::page(
        state.orchestrator.pool(),
        crate::store::cases::CaseFilter {
            scope: &s.who.tenants,
            status,
            tenant: tenant.as_ref(),
            severity,
            before,
            limit: PAGE,
        },
    )
    .await?;
    let ignored: Vec<&str> = [
        (!f.status.is_empty() && status.is_none()).then_some("status"),
        (!f.tenant.is_empty() && tenant.is_none()).then_some("tenant"),
        (!f.severity.is_empty() && severity.is_none()).then_some("severity"),
    ]
    .into_iter()
    .flatten()
    .collect();
    let next = more
        .then(|| items.last().map(|c| c.id))
        .flatten()
        .map(|last| {
            serde_urlencoded::to_string([
                ("status", f.status.as_str()),
                ("tenant", f.tenant.as_str()),
                ("severity", f.severity.as_str()),
                ("before", &last.to_string()),
            ])
            .unwrap_or_default()
        });
    let body = html! {
        h1 data-mark=(mark) { "Cases" }
        form method="get" action="/ui/cases" class="filters" {
            label for="status" { "Status" }
            select id="status" name="status" {
                option value="" { "any" }
                @for st in <Status as strum::IntoEnumIterator>::iter() {
                    option value=(st.as_str()) selected[status == Some(st)] { (st.as_str()) }
                }
            }
            label for="severity" { "Severity" }
            select id="severity" name="severity" {
                option value="" { "any" }
                @for sev in SEVERITIES {
                    option value=(sev) selected[severity == Some(sev)] { (sev) }
                }
            }
            label for="tenant" { "Tenant" }
            input id="tenant" name="tenant" value=(f.tenant) placeholder="any of yours";
            button type="submit" { "Filter" }
        }
        @if !ignored.is_empty() {
            p class="error" role="alert" { "Not a valid filter, shown as any: " (ignored.join(", ")) }
        }
        @if items.is_empty() {
            p { "No case matches." }
        } @else {
            table {
                caption { "Newest first" }
                thead { tr { th scope="col" { "Case" } th scope="col" { "Status" } th scope="col" { "Severity" } th scope="col" { "Tenant" } th scope="col" { "Age" } } }
                tbody {
                    @for c in &items {
                        tr {
                            td { a href={"/ui/case/" (c.id)} { (c.title) } br; code { (c.id) } }
                            td { span class={"status s-" (c.status.as_str())} { (c.status.as_str()) } }
                            td { (c.severity) }
                            td { (c.tenant) }
                            td { (age(c)) }
                        }
                    }
                }
            }
        }
        @if let Some(q) = next {
            p { a href={"/ui/cases?" (q)} { "Older cases" } }
        }
    };
    Ok(html_response(StatusCode::OK, page("Cases", Some(&s), body)))
}

/// The current plan of a case as its page shows it.
struct PlanView {
    hash: String,
    author: String,
    plan: Option<crate::contract::ChangePlan>,
    verdict: Option<String>,
    risk: Option<f64>,
    reasons: Vec<String>,
    required: Option<u8>,
    dryrun: Option<(String, String, crate::contract::fact::DryRunArtefact)>,
    /// (approver, counts)
    approvals: Vec<(String, bool)>,
}

async fn plan_view(state: &AppState, case: Uuid) -> Result<Option<PlanView>, ApiError> {
    type Row = (
        Uuid,
        String,
        String,
        serde_json::Value,
        Option<String>,
        Option<f64>,
        Option<Vec<String>>,
        Option<i16>,
        Option<crate::contract::DryRunDigest>,
        Option<crate::contract::DryRunDigest>,
    );
    let pool = state.orchestrator.pool();
    let row: Option<Row> = sqlx::query_as(
        "SELECT id, plan_hash, author, plan, gate_verdict, gate_risk, gate_reasons, \
         required_approvers, dryrun_digest, gate_dryrun_digest FROM plan_proposed \
         WHERE case_id = $1 ORDER BY seq DESC LIMIT 1",
    )
    .bind(case)
    .fetch_optional(pool)
    .await?;
    let Some((id, hash, author, plan, verdict, risk, reasons, required, current, judged)) = row
    else {
        return Ok(None);
    };
    let dryrun: Option<(
        String,
        String,
        sqlx::types::Json<crate::contract::fact::DryRunArtefact>,
    )> = sqlx::query_as(
        "SELECT digest, outcome, artefact FROM plan_dryrun WHERE plan_id = $1 AND digest = $2",
    )
    .bind(id)
    .bind(&current)
    .fetch_optional(pool)
    .await?;
    let approvals: Vec<(String, bool)> = sqlx::query_as(
        "SELECT approver, dryrun_digest IS NOT DISTINCT FROM $2 FROM plan_approved \
         WHERE plan_id = $1 ORDER BY decided_at",
    )
    .bind(id)
    .bind(&current)
    .fetch_all(pool)
    .await?;
    Ok(Some(PlanView {
        hash,
        author,
        plan: crate::contract::ChangePlan::from_stored(&plan).ok(),
        verdict,
        risk,
        reasons: reasons.unwrap_or_default(),
        required: crate::store::quorum_on_current_dryrun(
            required,
            judged.as_ref(),
            current.as_ref(),
        ),
        dryrun: dryrun.map(|(d, o, a)| (d, o, a.0)),
        approvals,
    }))
}

/// Why this person cannot approve the plan shown, if they cannot.
fn cannot_approve(s: &Session, case: &Case, p: &PlanView) -> Option<String> {
    if case.status != Status::WaitGate {
        return Some(format!(
            "the case is {}, not waiting at the gate",
            case.status
        ));
    }
    if !s.who.may_send(crate::workflow::EventKind::GateApproved) {
        return Some(format!("{} is not an approver", s.who.id));
    }
    if s.who.id == p.author {
        return Some("you wrote this plan and cannot approve it".into());
    }
    if p.required.is_none() {
        return Some("the gatekeeper has not judged the current dry run yet".into());
    }
    if p.verdict.as_deref() == Some("break_glass") {
        return Some(
            "inside a change freeze: a break-glass approval needs a reason, through the API".into(),
        );
    }
    if p.approvals
        .iter()
        .any(|(who, counts)| *counts && *who == s.who.id)
    {
        return Some("your approval already counts".into());
    }
    None
}

async fn case_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Response, ApiError> {
    let Some(s) = session(&state, &headers).await? else {
        return Ok(Redirect::to("/ui/login").into_response());
    };
    let pool = state.orchestrator.pool();
    let case = match Uuid::parse_str(&id) {
        Ok(id) => crate::store::read_case_in(pool, id, &s.who.tenants).await?,
        Err(_) => None,
    };
    let Some(case) = case else {
        let body =
            html! { h1 { "No such case" } p { "There is no case " code { (id) } " among yours." } };
        return Ok(html_response(
            StatusCode::NOT_FOUND,
            page("Not found", Some(&s), body),
        ));
    };
    let timeline: Vec<crate::model::TimelineEntry> = sqlx::query_as(concat!(
        "SELECT ",
        crate::timeline_columns!(),
        " FROM case_timeline WHERE case_id = $1 ORDER BY seq LIMIT 500"
    ))
    .bind(case.id)
    .fetch_all(pool)
    .await?;
    let plan = plan_view(&state, case.id).await?;
    let runs = super::executions::runs_of(pool, case.id, 20).await?;
    let verifications = super::executions::verifications_of(pool, case.id, 20).await?;
    let findings = findings_of(&state, case.id).await?;
    let mut charts = Vec::new();
    for v in verifications.iter().take(3) {
        charts.push(charted(&state, &case, v).await?);
    }
    Ok(html_response(
        StatusCode::OK,
        page(
            &case.title,
            Some(&s),
            case_body(
                &s,
                &case,
                &CaseView {
                    timeline: &timeline,
                    plan: plan.as_ref(),
                    runs: &runs,
                    verifications: &verifications,
                    charts: &charts,
                    findings: findings.as_ref(),
                },
            )?,
        ),
    ))
}

/// Everything the case page shows besides the case itself.
struct CaseView<'a> {
    timeline: &'a [crate::model::TimelineEntry],
    plan: Option<&'a PlanView>,
    runs: &'a [super::executions::RunShown],
    verifications: &'a [super::executions::VerificationShown],
    charts: &'a [Vec<Charted>],
    findings: Option<&'a crate::contract::fact::FindingsReport>,
}

fn case_body(s: &Session, case: &Case, view: &CaseView) -> Result<Markup, ApiError> {
    let CaseView {
        timeline,
        plan,
        runs,
        verifications,
        charts,
        findings,
    } = *view;
    let request_id = random_hex()?;
    let operator = s.who.may_send(crate::workflow::EventKind::Dismiss);
    Ok(html! {
        h1 { (case.title) }
        p class="meta" data-mark=(case.version) {
            span class={"status s-" (case.status.as_str())} { (case.status.as_str()) }
            " · " (case.severity) " · tenant " (case.tenant) " · opened " (age(case)) " ago · version " (case.version)
            br; code { (case.id) }
        }
        @if let Some(f) = findings { (findings_section(f)) }
        @if let Some(p) = plan {
            section aria-labelledby="plan" {
                h2 id="plan" { "Plan " code { (&p.hash[..12]) } }
                @if let Some(cp) = &p.plan {
                    p { strong { (cp.title) } " · by " (p.author) }
                    h3 { "Steps" }
                    ol { @for st in &cp.steps { li { code { (st.action.name()) } " " (st.action.target().unwrap_or_default()) } } }
                    h3 { "Rollback" }
                    @if cp.rollback.steps.is_empty() {
                        p { "None: this plan cannot be undone automatically." }
                    } @else {
                        ol { @for st in &cp.rollback.steps { li { code { (st.action.name()) } " " (st.action.target().unwrap_or_default()) } } }
                    }
                    h3 { "Checks after the change" }
                    @if cp.verify.checks.is_empty() {
                        p { "None." }
                    } @else {
                        ul { @for c in &cp.verify.checks {
                            li { (c.stat.map_or("avg", |st| st.as_str())) " of " code { (c.metric) }
                                 @if let Some(r) = &c.resource { " of " (r) }
                                 " " (c.op) " " (c.threshold) " over " (c.window_s) " s" }
                        } }
                    }
                }
                @if let Some((digest, outcome, artefact)) = &p.dryrun {
                    h3 { "Dry run " code { (&digest[..12]) } ": " (outcome) }
                    ul { @for st in &artefact.steps {
                        li { (st.index) ". " code { (st.action) } " " (st.outcome.to_string()) @if let Some(e) = &st.error { " — " (e) } }
                    } }
                } @else {
                    p { "No dry run yet." }
                }
                h3 { "Gate" }
                @match (&p.verdict, p.risk) {
                    (Some(v), Some(r)) => p { (v) ", risk " (format!("{r:.2}")) ": " (p.reasons.join("; ")) },
                    _ => p { "The gatekeeper has not decided yet." },
                }
                @let counted = p.approvals.iter().filter(|a| a.1).count();
                @if let Some(req) = p.required {
                    p class="approvals" { (counted) " of " (req) " approvals"
                        @if counted < usize::from(req) { "; waiting for " (usize::from(req) - counted) " more" } }
                }
                @if !p.approvals.is_empty() {
                    p { "Approved by: " @for (who, counts) in &p.approvals { (who) @if !counts { " (an older dry run)" } " " } }
                }
                @match cannot_approve(s, case, p) {
                    // Away from the gate there is nothing to approve.
                    Some(_) if case.status != Status::WaitGate => {},
                    // An approver sees the button they would use, disabled,
                    // and why; anyone else sees no button at all.
                    Some(why) if s.who.may_send(crate::workflow::EventKind::GateApproved) => div class="inline" {
                        button type="button" disabled aria-describedby="cannot-approve" { "Approve plan " (&p.hash[..12]) }
                        p class="hint" id="cannot-approve" { "You cannot approve: " (why) "." }
                    },
                    Some(why) => p class="hint" { "You cannot approve: " (why) "." },
                    None => form method="post" action={"/ui/case/" (case.id) "/act"} class="inline" {
                        input type="hidden" name="csrf" value=(s.csrf);
                        input type="hidden" name="request_id" value=(request_id);
                        input type="hidden" name="event" value="gate_approved";
                        input type="hidden" name="plan_hash" value=(p.hash);
                        @if let Some((d, _, _)) = &p.dryrun { input type="hidden" name="dryrun_digest" value=(d); }
                        button type="submit" { "Approve plan " (&p.hash[..12]) }
                    },
                }
                @if case.status == Status::WaitGate && s.who.may_send(crate::workflow::EventKind::GateRejected) {
                    form method="post" action={"/ui/case/" (case.id) "/act"} class="inline" {
                        input type="hidden" name="csrf" value=(s.csrf);
                        input type="hidden" name="request_id" value=(request_id);
                        input type="hidden" name="event" value="gate_rejected";
                        input type="hidden" name="plan_hash" value=(p.hash);
                        label for="reject-reason" { "Reason" }
                        input id="reject-reason" name="reason" required;
                        button type="submit" { "Reject" }
                    }
                }
            }
        }
        @if operator && matches!(case.status, Status::Parked | Status::New | Status::Analyzing | Status::Planning | Status::WaitGate) {
            section aria-labelledby="steer" {
                h2 id="steer" { "Steer" }
                @for (event, label) in [("dismiss", "Dismiss"), ("resume", "Resume")] {
                    @if event == "dismiss" || case.status == Status::Parked {
                        form method="post" action={"/ui/case/" (case.id) "/act"} class="inline" {
                            input type="hidden" name="csrf" value=(s.csrf);
                            input type="hidden" name="request_id" value=(request_id);
                            input type="hidden" name="event" value=(event);
                            label for={(event) "-reason"} { "Reason" }
                            input id={(event) "-reason"} name="reason" required;
                            button type="submit" { (label) }
                        }
                    }
                }
            }
        }
        section aria-labelledby="timeline" {
            h2 id="timeline" { "Timeline" }
            table {
                thead { tr { th scope="col" { "v" } th scope="col" { "What" } th scope="col" { "Who" } th scope="col" { "Why" } } }
                tbody { @for e in timeline {
                    tr {
                        td { (e.version) }
                        td { (e.kind) " " (e.event.as_deref().unwrap_or("")) " "
                             (e.from_status.as_deref().unwrap_or("")) " → " (e.to_status.as_deref().unwrap_or("")) }
                        td { (e.actor) }
                        td { (e.rejection_code.as_deref().or(e.reason.as_deref()).unwrap_or("")) }
                    }
                } }
            }
        }
        @if !runs.is_empty() {
            section aria-labelledby="runs" {
                h2 id="runs" { "Executions" }
                @for r in runs {
                    h3 { (r.kind) " " code { (&r.id.to_string()[..8]) } ": " (r.status) }
                    ul { @for st in &r.steps {
                        li { (st.phase) " " (st.index) " " code { (st.action) } " " (st.status) " (tries " (st.tries) ") "
                             @if let Some(out) = step_output(&st.result) { pre { (out) } } }
                    } }
                }
            }
        }
        @if !verifications.is_empty() {
            section aria-labelledby="verify" {
                h2 id="verify" { "Verification" }
                @for (i, v) in verifications.iter().enumerate() {
                    p { (v.outcome) " over " (v.window_from.format("%H:%M")) "–" (v.window_to.format("%H:%M")) " UTC" }
                    @if let Some(cs) = charts.get(i) { @for c in cs { (chart(c)) } }
                }
            }
        }
    })
}

#[derive(Debug, Deserialize)]
struct ActForm {
    #[serde(default)]
    csrf: String,
    request_id: String,
    event: String,
    #[serde(default)]
    plan_hash: Option<String>,
    #[serde(default)]
    dryrun_digest: Option<String>,
    #[serde(default)]
    reason: Option<String>,
}

/// An action from the case page: the same transition as the API's, as the
/// signed-in person, once per rendered form (its request id is the key).
async fn act(
    State(state): State<AppState>,
    headers: HeaderMap,
    axum::extract::Path(id): axum::extract::Path<Uuid>,
    Form(form): Form<ActForm>,
) -> Result<Response, ApiError> {
    let Some(s) = session(&state, &headers).await? else {
        return Ok(Redirect::to("/ui/login").into_response());
    };
    if form.csrf != s.csrf {
        return Ok(forbidden(
            "The form did not carry this session's token (CSRF): nothing was done.",
        ));
    }
    let (status, said) = match console_transition(&state, &s, id, &form).await? {
        Ok(words) => (StatusCode::OK, words),
        // Refused before the orchestrator was asked.
        Err(words) => (StatusCode::UNPROCESSABLE_ENTITY, words),
    };
    let body = html! {
        h1 { "Case " code { (id) } }
        p role="status" { (said) }
        p { a href={"/ui/case/" (id)} { "Back to the case" } }
    };
    Ok(html_response(status, page("Done", Some(&s), body)))
}

async fn console_transition(
    state: &AppState,
    s: &Session,
    case_id: Uuid,
    form: &ActForm,
) -> Result<Result<String, String>, ApiError> {
    use crate::workflow::EventKind as E;
    // The page's four actions, nothing else.
    let event = match form.event.parse::<E>() {
        Ok(e @ (E::GateApproved | E::GateRejected | E::Dismiss | E::Resume)) => e,
        Ok(_) | Err(_) => return Ok(Err(format!("{:?} is not an action here.", form.event))),
    };
    // Inside a change freeze an approval is a break-glass override, which
    // needs its reason recorded: the API asks for one; the console takes no
    // such approval at all (the page says so; a direct post is refused the
    // same).
    if event == E::GateApproved && s.who.may_send(event) {
        let verdict: Option<String> = sqlx::query_scalar(
            "SELECT gate_verdict FROM plan_proposed WHERE case_id = $1 AND plan_hash = $2",
        )
        .bind(case_id)
        .bind(form.plan_hash.as_deref().unwrap_or_default())
        .fetch_optional(state.orchestrator.pool())
        .await?
        .flatten();
        if verdict.as_deref() == Some("break_glass") {
            return Ok(Err("Inside a change freeze: a break-glass approval needs a reason, given through the API.".into()));
        }
    }
    let plan_hash = match form
        .plan_hash
        .as_deref()
        .filter(|h| !h.is_empty())
        .map(|h| h.parse::<crate::contract::PlanHash>())
    {
        Some(Err(_)) => return Ok(Err("The form's plan hash is not one.".into())),
        Some(Ok(h)) => Some(h),
        None => None,
    };
    let dryrun_digest = match form
        .dryrun_digest
        .as_deref()
        .filter(|d| !d.is_empty())
        .map(|d| d.parse::<crate::contract::DryRunDigest>())
    {
        Some(Err(_)) => return Ok(Err("The form's dry-run digest is not one.".into())),
        Some(Ok(d)) => Some(d),
        None => None,
    };
    let reason = match crate::chatops::command::reason(form.reason.as_deref().unwrap_or_default()) {
        Ok(reason) => reason,
        Err(why) => return Ok(Err(why)),
    };
    super::person::act(
        state,
        super::person::Ask {
            who: &s.who,
            case_id,
            event,
            plan_hash,
            dryrun_digest,
            reason,
            via: "console",
            meta: serde_json::json!({"via": "console"}),
            request_id: &form.request_id,
        },
    )
    .await
}

/// What a script step printed, if the step is one (other adapters' results
/// have no `stdout`).
fn step_output(result: &serde_json::Value) -> Option<String> {
    serde_json::from_value::<crate::executor::script::ScriptResult>(result.clone())
        .ok()?
        .stdout
        .map(|c| c.text)
}

/// One checked metric of a verification, as its chart needs it.
struct Charted {
    label: String,
    verdict: String,
    threshold: f64,
    points: Vec<(chrono::DateTime<chrono::Utc>, f64)>,
}

/// The checks of a verification with the minutes of `metric_1m` it judged
/// (the verifier's own source when no Prometheus query is set).
async fn charted(
    state: &AppState,
    case: &Case,
    v: &super::executions::VerificationShown,
) -> Result<Vec<Charted>, ApiError> {
    #[derive(Deserialize)]
    struct Judged {
        check: Option<crate::contract::plan::Check>,
        #[serde(default)]
        resource: Option<String>,
        #[serde(default)]
        verdict: String,
    }
    let judged: Vec<Judged> = serde_json::from_value(v.checks.clone()).unwrap_or_default();
    let mut out = Vec::new();
    for j in judged {
        let Some(check) = j.check else { continue };
        // The very minutes and statistic the verifier judged.
        let Ok(judged) = crate::verifier::Check::from_plan(&check, j.resource.as_deref()) else {
            continue;
        };
        let points = crate::verifier::minutes_judged(
            state.orchestrator.pool(),
            &judged,
            &case.tenant,
            v.window_to,
        )
        .await?;
        out.push(Charted {
            label: format!(
                "{} of {} of {} {} {}",
                judged.stat.as_str(),
                check.metric,
                judged.resource,
                check.op,
                check.threshold
            ),
            verdict: j.verdict,
            threshold: check.threshold.as_f64().unwrap_or(0.0),
            points,
        });
    }
    Ok(out)
}

/// A small line chart of a checked metric over the verification window,
/// with its threshold: inline SVG, drawn here (no chart service, no script).
fn chart(c: &Charted) -> Markup {
    const W: f64 = 320.0;
    const H: f64 = 80.0;
    let values = c.points.iter().map(|p| p.1).chain([c.threshold]);
    let (lo, hi) = values.fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    // From zero for figures that cannot go below it (latency, rates), with
    // headroom above: the distance to the threshold reads true.
    let lo = lo.min(0.0);
    let hi = hi + (hi - lo) * 0.15;
    let span = if hi > lo { hi - lo } else { 1.0 };
    let y = |v: f64| H - 4.0 - (v - lo) / span * (H - 8.0);
    let n = c.points.len().max(2) as f64 - 1.0;
    let line: Vec<String> = c
        .points
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let x = if c.points.len() == 1 {
                W / 2.0
            } else {
                i as f64 / n * W
            };
            format!("{x:.1},{:.1}", y(p.1))
        })
        .collect();
    let ty = y(c.threshold);
    html! {
        figure {
            svg width=(W) height=(H) viewBox={"0 0 " (W) " " (H)} role="img"
                aria-label={(c.label) ": " (c.points.len()) " minutes, " (c.verdict)} {
                line x1="0" y1=(format!("{ty:.1}")) x2=(W) y2=(format!("{ty:.1}")) class="threshold" {}
                text x=(W - 4.0) y=(format!("{:.1}", if ty < 14.0 { ty + 12.0 } else { ty - 3.0 })) class="label" text-anchor="end" { (c.threshold) }
                @if line.len() > 1 { polyline points=(line.join(" ")) class="series" {} }
                // A short window's few minutes are dots as well: one
                // minute alone would draw no line at all.
                @if line.len() <= 60 { @for xy in &line {
                    @let (x, y) = xy.split_once(',').unwrap_or(("0", "0"));
                    circle cx=(x) cy=(y) r="3" class="point" {}
                } }
            }
            figcaption { (c.label) " — " strong { (c.verdict) } " (" (c.points.len()) " minutes)" }
        }
    }
}

/// The analyst's findings of the case (its latest `analysis_done`).
async fn findings_of(
    state: &AppState,
    case: Uuid,
) -> Result<Option<crate::contract::fact::FindingsReport>, ApiError> {
    let raw: Option<serde_json::Value> = sqlx::query_scalar(
        "SELECT meta #> '{fact,findings}' FROM case_timeline WHERE case_id = $1 AND kind = 'transition' \
         AND event = 'analysis_done' ORDER BY seq DESC LIMIT 1",
    )
    .bind(case)
    .fetch_optional(state.orchestrator.pool())
    .await?
    .flatten();
    // Findings written by a release this one cannot read are not shown,
    // rather than shown wrong.
    Ok(raw.and_then(|v| serde_json::from_value(v).ok()))
}

fn findings_section(f: &crate::contract::fact::FindingsReport) -> Markup {
    html! {
        section aria-labelledby="findings" {
            h2 id="findings" { "Findings" }
            p { (f.summary) }
            @if !f.metrics.is_empty() {
                table {
                    caption { "Metrics of " (f.resource.as_deref().unwrap_or("the case")) " over the last 30 minutes" }
                    thead { tr { th scope="col" { "Metric" } th scope="col" { "Last" } th scope="col" { "Mean" } th scope="col" { "Peak" } th scope="col" { "Baseline" } } }
                    tbody { @for (name, m) in &f.metrics {
                        tr {
                            td { (name) }
                            td { (m.last_avg.map_or("-".into(), |v| format!("{v:.2}"))) }
                            td { (format!("{:.2}", m.mean_avg)) }
                            td { (format!("{:.2}", m.peak)) }
                            td { (m.baseline.map_or("-".into(), |v| format!("{v:.2}"))) }
                        }
                    } }
                }
            }
            @if !f.signals.is_empty() {
                p { (f.signals.len()) " signal(s) linked; " (f.correlated.len()) " other alert(s) of the tenant firing around them." }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    /// What Chromium sends for our own sign-in form (its `Origin` is
    /// `null` under `Referrer-Policy: no-referrer`), and what other sites
    /// and old clients send.
    #[test]
    fn a_sign_in_is_cross_site_unless_the_browser_or_the_origin_says_ours() {
        let ours = [
            &[
                ("sec-fetch-site", "same-origin"),
                ("origin", "null"),
                ("host", "h:1"),
            ][..],
            &[("sec-fetch-site", "none"), ("host", "h:1")],
            &[("origin", "http://h:1"), ("host", "h:1")],
            &[("host", "h:1")],
        ];
        for h in ours {
            assert!(!cross_site(&headers(h)), "{h:?}");
        }
        let theirs = [
            &[
                ("sec-fetch-site", "cross-site"),
                ("origin", "http://h:1"),
                ("host", "h:1"),
            ][..],
            &[
                ("sec-fetch-site", "same-site"),
                ("origin", "http://x.h:1"),
                ("host", "h:1"),
            ],
            &[("origin", "null"), ("host", "h:1")],
            &[("origin", "https://evil.example"), ("host", "h:1")],
            &[("origin", "http://h:1")],
        ];
        for h in theirs {
            assert!(cross_site(&headers(h)), "{h:?}");
        }
    }
}
