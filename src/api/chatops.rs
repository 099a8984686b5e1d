//! ChatOps routes (DESIGN §13): `POST /chatops/slack/commands` (the
//! `/opsloop` slash command) and `POST /chatops/slack/interactions`
//! (message buttons). Slack posts a form; the raw body is verified with the
//! signing secret before anything is read (401 otherwise). The chat user
//! acts as the opsloop identity `config/chatops.toml` maps them to, and
//! that identity's roles, tenants and the gate's rules apply unchanged;
//! every action is a transition recorded with that identity.
//!
//! Answers are 200 with an ephemeral message in words, also for a user who
//! may not act (Slack shows a non-2xx as an error, not as a reason).

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::error::ApiError;
use super::state::AppState;
use crate::auth::Identity;
use crate::chatops::command::{self, ChatCommand};
use crate::chatops::{ChatOps, signature};
use crate::contract::{DryRunDigest, PlanHash};
use crate::store::read_case_in;
use crate::workflow::EventKind;

/// The fields of a slash command's form that opsloop reads (Slack sends
/// more; they are ignored).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct SlashForm {
    user_id: String,
    #[serde(default)]
    text: String,
    #[serde(default)]
    trigger_id: Option<String>,
}

/// An interaction's form: one field, `payload`, holding the
/// `block_actions` JSON.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct InteractionForm {
    payload: String,
}

#[derive(Debug, Deserialize)]
struct Interaction {
    user: ChatUser,
    #[serde(default)]
    trigger_id: Option<String>,
    #[serde(default)]
    actions: Vec<ButtonAction>,
}

#[derive(Debug, Deserialize)]
struct ChatUser {
    id: String,
}

#[derive(Debug, Deserialize)]
struct ButtonAction {
    action_id: String,
    #[serde(default)]
    value: String,
    #[serde(default)]
    action_ts: Option<String>,
}

/// What a chat user is told (only they see it).
fn say(text: impl Into<String>) -> Json<Value> {
    Json(json!({"response_type": "ephemeral", "text": text.into()}))
}

/// Without a signing secret the chat routes do not exist.
fn configured(state: &AppState) -> Result<&ChatOps, ApiError> {
    state.chatops.as_deref().ok_or(ApiError::RouteNotFound)
}

/// The request is Slack's, signed within the last five minutes.
fn verified(chat: &ChatOps, headers: &HeaderMap, body: &[u8]) -> Result<(), ApiError> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    signature::verify(
        &chat.signing_secret,
        header("x-slack-request-timestamp"),
        header("x-slack-signature"),
        body,
        chrono::Utc::now().timestamp(),
    )
    .map_err(|e| ApiError::SignatureInvalid(e.to_string()))
}

/// ChatOps, and the request's form once its signature verified (nothing of
/// the body is read before).
fn signed_form<'a, T: serde::de::DeserializeOwned>(
    state: &'a AppState,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(&'a ChatOps, T), ApiError> {
    let chat = configured(state)?;
    verified(chat, headers, body)?;
    let form = serde_urlencoded::from_bytes(body)
        .map_err(|e| ApiError::Malformed(format!("the form Slack posts: {e}")))?;
    Ok((chat, form))
}

/// What makes a chat request one request: Slack's trigger id, else the
/// signed timestamp and body (only a replay of the very request repeats
/// them, never the same words typed again later).
fn request_id(given: Option<&str>, headers: &HeaderMap, body: &[u8]) -> String {
    match given.filter(|g| !g.is_empty()) {
        Some(id) => id.to_string(),
        None => {
            let ts = headers
                .get("x-slack-request-timestamp")
                .map(|v| v.as_bytes())
                .unwrap_or_default();
            let mut h = Sha256::new();
            h.update(ts);
            h.update(b":");
            h.update(body);
            hex::encode(h.finalize())[..32].to_string()
        }
    }
}

fn not_mapped(chat_user: &str) -> Json<Value> {
    say(format!(
        "Not allowed: chat user {chat_user} is not mapped to an opsloop identity."
    ))
}

/// The identity a chat user acts as, if the operator mapped one that the
/// tokens file knows.
fn identity<'a>(state: &'a AppState, chat: &ChatOps, user: &str) -> Option<&'a Identity> {
    state.tokens.person(chat.identity_of(user)?)
}

/// The `/opsloop` slash command.
#[utoipa::path(post, path = "/chatops/slack/commands", tag = "chatops",
    request_body(content = SlashForm, content_type = "application/x-www-form-urlencoded",
                 description = "Slack's slash-command form, signed (X-Slack-Signature, X-Slack-Request-Timestamp)"),
    responses((status = 200, description = "an ephemeral message in words (also for a refusal)", body = Object),
              (status = 401, body = crate::problem::Problem, description = "signature_invalid: bad or missing signature, or older than five minutes"),
              (status = 400, body = crate::problem::Problem, description = "a signed form that is not Slack's"),
              (status = 404, body = crate::problem::Problem, description = "ChatOps is not configured (no OPSLOOP_SLACK_SIGNING_SECRET_FILE)")))]
pub async fn commands(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let (chat, form): (_, SlashForm) = signed_form(&state, &headers, &body)?;
    let Some(who) = identity(&state, chat, &form.user_id) else {
        return Ok(not_mapped(&form.user_id));
    };
    let asked = match command::parse(&form.text) {
        Ok(asked) => asked,
        Err(why) => return Ok(say(why)),
    };
    let key = request_id(form.trigger_id.as_deref(), &headers, &body);
    Ok(say(act(&state, who, &form.user_id, asked, &key).await?))
}

/// A button of a notification (Approve, Reject).
#[utoipa::path(post, path = "/chatops/slack/interactions", tag = "chatops",
    request_body(content = InteractionForm, content_type = "application/x-www-form-urlencoded",
                 description = "Slack's interaction form, signed (X-Slack-Signature, X-Slack-Request-Timestamp)"),
    responses((status = 200, description = "an ephemeral message in words (also for a refusal)", body = Object),
              (status = 401, body = crate::problem::Problem, description = "signature_invalid"),
              (status = 400, body = crate::problem::Problem, description = "a signed form that is not Slack's"),
              (status = 404, body = crate::problem::Problem, description = "ChatOps is not configured (no OPSLOOP_SLACK_SIGNING_SECRET_FILE)")))]
pub async fn interactions(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let (chat, form): (_, InteractionForm) = signed_form(&state, &headers, &body)?;
    let interaction: Interaction = serde_json::from_str(&form.payload)
        .map_err(|e| ApiError::Malformed(format!("the interaction's payload: {e}")))?;
    let Some(who) = identity(&state, chat, &interaction.user.id) else {
        return Ok(not_mapped(&interaction.user.id));
    };
    let Some(action) = interaction.actions.first() else {
        return Ok(say("The interaction carries no action."));
    };
    let asked = match command::parse_button(&action.action_id, &action.value) {
        Ok(asked) => asked,
        Err(why) => return Ok(say(why)),
    };
    // One click is one request: Slack retries it with the same trigger.
    let given = interaction
        .trigger_id
        .as_deref()
        .or(action.action_ts.as_deref());
    let key = request_id(given, &headers, &body);
    Ok(say(
        act(&state, who, &interaction.user.id, asked, &key).await?
    ))
}

/// The current plan of a case the identity may see, and its current dry
/// run: what a prefix is matched against.
struct Current {
    hash: PlanHash,
    dryrun: Option<DryRunDigest>,
    break_glass: bool,
}

async fn current_plan(state: &AppState, case: Uuid) -> Result<Option<Current>, ApiError> {
    let row: Option<(PlanHash, Option<DryRunDigest>, Option<String>)> = sqlx::query_as(
        "SELECT plan_hash, dryrun_digest, gate_verdict FROM plan_proposed WHERE case_id = $1 \
         ORDER BY seq DESC LIMIT 1",
    )
    .bind(case)
    .fetch_optional(state.orchestrator.pool())
    .await?;
    Ok(row.map(|(hash, dryrun, verdict)| Current {
        hash,
        dryrun,
        break_glass: verdict.as_deref() == Some("break_glass"),
    }))
}

/// Carries out a chat command as `who`; the answer in words.
async fn act(
    state: &AppState,
    who: &Identity,
    chat_user: &str,
    asked: ChatCommand,
    request_id: &str,
) -> Result<String, ApiError> {
    let pool = state.orchestrator.pool();
    let case_of = |asked: &ChatCommand| match asked {
        ChatCommand::Show { case }
        | ChatCommand::Approve { case, .. }
        | ChatCommand::Reject { case, .. }
        | ChatCommand::Dismiss { case, .. } => Some(*case),
        ChatCommand::Help => None,
    };
    let Some(case_id) = case_of(&asked) else {
        return Ok(command::USAGE.into());
    };
    // Another tenant's case is as unknown as one that never was.
    let Some(case) = read_case_in(pool, case_id, &who.tenants).await? else {
        return Ok(format!("No case {case_id}."));
    };
    let current = current_plan(state, case_id).await?;
    let (event, plan_hash, dryrun_digest, reason) = match asked {
        ChatCommand::Help => return Ok(command::USAGE.into()),
        ChatCommand::Show { .. } => {
            let plan = current.as_ref().map_or("no plan yet".to_string(), |c| {
                format!(
                    "plan {} (dry run {})",
                    &c.hash.as_str()[..12],
                    c.dryrun
                        .as_ref()
                        .map_or("none".to_string(), |d| d.short().to_string())
                )
            });
            return Ok(format!(
                "Case {} \"{}\" ({}, {}): {}, version {}; {plan}.",
                case.id, case.title, case.tenant, case.severity, case.status, case.version
            ));
        }
        ChatCommand::Approve { plan, dryrun, .. } => {
            let Some(current) = current else {
                return Ok(format!("Case {case_id} has no plan to approve."));
            };
            if !current.hash.as_str().starts_with(&plan) {
                return Ok(format!(
                    "{plan} is not the current plan of case {case_id} (it is {}): look again before you approve.",
                    current.hash.short()
                ));
            }
            if current.break_glass {
                return Ok("This plan falls in a change freeze: a break-glass approval needs a reason, given through the API or the console.".into());
            }
            let seen = match (dryrun, &current.dryrun) {
                (Some(p), Some(d)) if d.as_str().starts_with(&p) => Some(d.clone()),
                (Some(p), _) => {
                    return Ok(format!(
                        "{p} is not the plan's current dry run: look at the new evidence before you approve."
                    ));
                }
                // An approval names the evidence its giver saw: once the
                // plan has a dry run, one that names none is not taken as
                // an approval of whichever is current now.
                (None, Some(d)) => {
                    return Ok(format!(
                        "Name the dry run you judged: approve {case_id} {plan} {} (see `case {case_id}`).",
                        d.short()
                    ));
                }
                (None, None) => None,
            };
            (EventKind::GateApproved, Some(current.hash), seen, None)
        }
        ChatCommand::Reject { plan, reason, .. } => {
            let Some(current) = current.filter(|c| c.hash.as_str().starts_with(&plan)) else {
                return Ok(format!("{plan} is not the current plan of case {case_id}."));
            };
            (EventKind::GateRejected, Some(current.hash), None, reason)
        }
        ChatCommand::Dismiss { reason, .. } => (EventKind::Dismiss, None, None, Some(reason)),
    };
    let answered = super::person::act(
        state,
        super::person::Ask {
            who,
            case_id,
            event,
            plan_hash,
            dryrun_digest,
            reason,
            via: "slack",
            meta: json!({"via": "slack", "chat_user": chat_user}),
            request_id,
        },
    )
    .await?;
    Ok(answered.unwrap_or_else(|refused| refused))
}
