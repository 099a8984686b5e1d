//! The web console at `/ui` (DESIGN §13), first step: signing in with a
//! token, the session, and the case list. Server-rendered HTML (maud,
//! escaped by construction), no script, no external asset.
//!
//! A session: the browser holds an opaque random id in an `HttpOnly`,
//! `SameSite=Strict` cookie (`Secure` with `OPSLOOP_COOKIE_SECURE`), never
//! the token; the database keeps the id's SHA-256 with the token's
//! SHA-256 (`ui_session`), and every request looks the identity up in the
//! tokens file again, so the console has exactly the API's roles and
//! tenant scope, and a token taken out of the file ends its sessions.
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

pub fn routes() -> Router<AppState> {
    use axum::routing::{get, post};
    Router::new()
        .route("/ui", get(home))
        .route("/ui/login", get(login_page).post(login))
        .route("/ui/logout", post(logout))
        .route("/ui/cases", get(cases))
        .route("/ui/console.css", get(style))
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

/// The session cookie's value, if the request has one.
fn cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v)
}

/// The request's live session, touched (its idle clock restarts).
async fn session(state: &AppState, headers: &HeaderMap) -> Result<Option<Session>, ApiError> {
    let Some(id) = cookie(headers) else {
        return Ok(None);
    };
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
                main { (body) }
            }
        }
    }
}

fn html_response(status: StatusCode, markup: Markup) -> Response {
    let mut response = (status, markup).into_response();
    let headers = response.headers_mut();
    // No other origin frames or scripts the console.
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'self'; frame-ancestors 'none'; form-action 'self'"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

async fn style() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE).into_response()
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

async fn login(
    State(state): State<AppState>,
    Form(form): Form<LoginForm>,
) -> Result<Response, ApiError> {
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
    let Some(s) = session(&state, &headers).await? else {
        return Ok(Redirect::to("/ui/login").into_response());
    };
    if form.csrf != s.csrf {
        return Ok(forbidden(
            "The form did not carry this session's token (CSRF): nothing was done.",
        ));
    }
    if let Some(id) = cookie(&headers) {
        sqlx::query("DELETE FROM ui_session WHERE id_sha256 = $1")
            .bind(sha256_hex(id))
            .execute(state.orchestrator.pool())
            .await?;
    }
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
    let mut items: Vec<Case> = sqlx::query_as(concat!(
        "SELECT ",
        crate::case_columns!(),
        " FROM ops_case WHERE ($1::text IS NULL OR status = $1) \
         AND ($2::text IS NULL OR tenant = $2) AND ($3::text IS NULL OR severity = $3) \
         AND ($4::uuid IS NULL OR id < $4) AND ($5::text[] IS NULL OR tenant = ANY($5)) \
         ORDER BY id DESC LIMIT $6"
    ))
    .bind(status.map(Status::as_str))
    .bind(tenant.as_ref().map(Tenant::as_str))
    .bind(severity)
    .bind(before)
    .bind(s.who.tenants.sql())
    .bind(PAGE + 1)
    .fetch_all(state.orchestrator.pool())
    .await?;
    let more = items.len() > PAGE as usize;
    items.truncate(PAGE as usize);
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
        h1 { "Cases" }
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
                            td { (c.title) br; code { (c.id) } }
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
