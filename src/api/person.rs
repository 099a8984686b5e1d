//! A person's action from the console or from chat: the same transition as
//! `PATCH /case/{id}/transition`, as the signed-in (or mapped) identity,
//! once per request id, answered in words. The surfaces decide what a
//! person may ask; this sends it and says what came of it.

use serde_json::Value;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::error::ApiError;
use super::state::AppState;
use crate::auth::Identity;
use crate::contract::{DryRunDigest, IdempotencyKey, PlanHash};
use crate::orchestrator::{
    Actor, Answer, ApprovalsShown, Origin, Outcome, StoredAnswer, TransitionError,
    TransitionRequest,
};
use crate::workflow::{EventKind, Rejection};

/// What a person asks, from which surface.
pub(super) struct Ask<'a> {
    pub who: &'a Identity,
    pub case_id: Uuid,
    pub event: EventKind,
    pub plan_hash: Option<PlanHash>,
    pub dryrun_digest: Option<DryRunDigest>,
    pub reason: Option<String>,
    /// `console` or `slack`: the key's prefix, and `meta.via`.
    pub via: &'static str,
    /// Kept with the timeline entry (`meta.request`).
    pub meta: Value,
    /// The surface's id of this one request (a rendered form, a chat
    /// trigger): the same id is the same request.
    pub request_id: &'a str,
}

/// Sends the transition; `Ok(words)` when it was applied (or counted),
/// `Err(words)` when nothing was done: refused before the orchestrator
/// judged it, or by the orchestrator (a stale plan, a guard), so that a
/// surface can answer a refusal as one (the console: 422).
pub(super) async fn act(
    state: &AppState,
    ask: Ask<'_>,
) -> Result<Result<String, String>, ApiError> {
    let Ask {
        who,
        case_id,
        event,
        plan_hash,
        dryrun_digest,
        reason,
        via,
        meta,
        request_id,
    } = ask;
    if !who.may_send(event) {
        return Ok(Err(format!(
            "Not allowed: {} may not send {event}.",
            who.id
        )));
    }
    let Ok(idempotency_key) = format!("{via}-{request_id}").parse::<IdempotencyKey>() else {
        return Ok(Err("The request's id is not usable as a key.".into()));
    };
    let fingerprint = format!(
        "{via}\n{}\n{event}\n{case_id}\n{}\n{}\n{}",
        who.id,
        plan_hash.as_ref().map_or("", |h| h.as_str()),
        dryrun_digest.as_ref().map_or("", |d| d.as_str()),
        reason.as_deref().unwrap_or_default()
    );
    let outcome = state
        .orchestrator
        .transition(TransitionRequest {
            case_id,
            tenants: who.tenants.clone(),
            event,
            actor: Actor {
                id: who.id.clone(),
                human: who.is_human(),
            },
            reason,
            plan_hash,
            dryrun_digest,
            meta,
            expected_version: None,
            origin: Origin::Http {
                idempotency_key,
                request_hash: hex::encode(Sha256::digest(fingerprint.as_bytes())),
            },
            trace_id: Uuid::new_v4().simple().to_string(),
        })
        .await;
    Ok(match outcome {
        Ok(Outcome::Answered(answer) | Outcome::Replayed(StoredAnswer::Typed(answer))) => {
            match answer {
                Answer::Rejected { .. } => Err(words(&answer)),
                _ => Ok(words(&answer)),
            }
        }
        Ok(Outcome::Replayed(StoredAnswer::Rendered { status, .. })) => {
            Ok(format!("Already answered ({status})."))
        }
        Ok(Outcome::Duplicate) => Ok("Already done.".into()),
        Err(TransitionError::CaseNotFound(id)) => Err(format!("No case {id} among yours.")),
        Err(TransitionError::IdempotencyKeyReused) => {
            Err("This request was already used for another action; look at the case again.".into())
        }
        Err(e @ TransitionError::VersionMismatch { .. }) => Err(e.to_string()),
        Err(TransitionError::Database(e)) => return Err(e.into()),
    })
}

/// A transition's answer as a person reads it (chat, the console).
pub(super) fn words(answer: &Answer) -> String {
    let count = |a: ApprovalsShown| {
        format!(
            "{} of {} approvals; {}",
            a.count,
            a.required,
            match a.missing {
                0 => "the quorum is met".to_string(),
                1 => "waiting for one more approver".to_string(),
                n => format!("waiting for {n} more approvers"),
            }
        )
    };
    match (answer, answer.approvals()) {
        (Answer::Applied { .. }, Some(a)) => format!("Your approval counts: {}.", count(a)),
        (Answer::Applied { case, .. }, None) => format!(
            "Done: case {} is {} (version {}).",
            case.id, case.status, case.version
        ),
        (Answer::Counted { approvals, .. }, _) => format!(
            "Your approval already counts: {}.",
            count(ApprovalsShown::of(*approvals))
        ),
        (
            Answer::Rejected {
                rejection,
                case_status,
                ..
            },
            _,
        ) => match rejection {
            Rejection::GuardFailed { failures, .. } => format!(
                "Refused: {}.",
                failures
                    .iter()
                    .map(|f| f.detail.as_str())
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
            Rejection::IllegalTransition { event, .. } => {
                format!("Refused: the case is {case_status}, where {event} does not apply.")
            }
            Rejection::StaleFact { detail } => format!("Refused: {detail}."),
        },
    }
}
