//! Re-drive endpoints (DESIGN §6): `POST /plan/generate`, `/gate/eval`,
//! `/adapter/exec`, `/verify/run`. An operator (or admin) re-issues the
//! command the case's current status waits for; 202 with the command's id,
//! 409 in another status or while a run of the case is in flight. The
//! timeline records who did (`orchestrator::redrive`).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::error::ApiError;
use super::extract::{ApiJson, Auth};
use super::state::AppState;
use crate::auth::Identity;
use crate::orchestrator::redrive::{Redrive, RedriveError};

/// The case whose command is re-driven.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CaseRef {
    pub case_id: Uuid,
}

/// `POST /plan/generate`: the case, and optionally a template by name
/// instead of the planner's own choice.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanGenerate {
    pub case_id: Uuid,
    #[schema(pattern = "^[a-z0-9][a-z0-9_.-]{0,63}$")]
    pub template: Option<String>,
}

/// A re-driven command, waiting in the outbox.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Redriven {
    pub case_id: Uuid,
    /// The command's envelope id (its `Nats-Msg-Id`).
    pub command_id: Uuid,
    /// `cmd.plan.generate`, `cmd.gate.eval`, `cmd.exec.run` or `cmd.verify.run`.
    pub subject: String,
    /// The `redrive` timeline entry.
    pub timeline_id: Uuid,
}

async fn redrive(
    state: &AppState,
    who: &Identity,
    case_id: Uuid,
    what: Redrive,
) -> Result<(StatusCode, Json<Redriven>), ApiError> {
    if !who.may_redrive() {
        return Err(ApiError::Forbidden(format!(
            "{} may not re-drive a case: an operator does",
            who.id
        )));
    }
    let done = state
        .orchestrator
        .redrive(case_id, &who.tenants, &who.id, what)
        .await
        .map_err(|e| match e {
            RedriveError::CaseNotFound(id) => ApiError::CaseNotFound(id),
            e @ RedriveError::WrongStatus { .. } => ApiError::Conflict {
                code: "wrong_status",
                detail: e.to_string(),
            },
            e @ RedriveError::RunInFlight(_) => ApiError::Conflict {
                code: "run_in_flight",
                detail: e.to_string(),
            },
            e @ RedriveError::NoPlan => ApiError::Conflict {
                code: "no_plan",
                detail: e.to_string(),
            },
            e @ RedriveError::RunExists(..) => ApiError::Conflict {
                code: "run_exists",
                detail: e.to_string(),
            },
            e @ RedriveError::CommandPending(_) => ApiError::Conflict {
                code: "command_pending",
                detail: e.to_string(),
            },
            e @ RedriveError::CommandNotLost(_) => ApiError::Conflict {
                code: "command_not_lost",
                detail: e.to_string(),
            },
            e @ RedriveError::PlanExists(_) => ApiError::Conflict {
                code: "plan_exists",
                detail: e.to_string(),
            },
            RedriveError::Database(e) => ApiError::from(e),
        })?;
    Ok((
        StatusCode::ACCEPTED,
        Json(Redriven {
            case_id: done.case.id,
            command_id: done.command_id,
            subject: done.subject,
            timeline_id: done.timeline_id,
        }),
    ))
}

/// Re-issues `cmd.plan.generate` for a case in PLANNING.
#[utoipa::path(post, path = "/plan/generate", tag = "redrive", request_body = PlanGenerate,
    responses((status = 202, body = Redriven),
              (status = 403, body = crate::problem::Problem, description = "forbidden: not an operator or admin"),
              (status = 404, body = crate::problem::Problem),
              (status = 409, body = crate::problem::Problem, description = "wrong_status: the case is not in PLANNING; command_pending: the first command has not been sent yet; plan_exists: a plan was proposed since the case entered PLANNING")),
    security(("bearer" = [])))]
pub async fn plan_generate(
    State(state): State<AppState>,
    Auth(who): Auth,
    ApiJson(body): ApiJson<PlanGenerate>,
) -> Result<(StatusCode, Json<Redriven>), ApiError> {
    if let Some(t) = &body.template
        && !crate::ids::is_slug(t, b"_.-")
    {
        return Err(ApiError::InvalidField {
            field: "template",
            detail: "a template name: 1-64 of [a-z0-9_.-], starting with a letter or digit".into(),
        });
    }
    let what = Redrive::GeneratePlan {
        template: body.template,
    };
    redrive(&state, &who, body.case_id, what).await
}

/// Takes the current plan through the gate again, for a case in WAIT_GATE:
/// a new dry run (`cmd.exec.dryrun`), then the gatekeeper's evaluation of
/// it. Votes given on the older dry run no longer count.
#[utoipa::path(post, path = "/gate/eval", tag = "redrive", request_body = CaseRef,
    responses((status = 202, body = Redriven),
              (status = 403, body = crate::problem::Problem, description = "forbidden: not an operator or admin"),
              (status = 404, body = crate::problem::Problem),
              (status = 409, body = crate::problem::Problem, description = "wrong_status: the case is not in WAIT_GATE; command_pending; no_plan")),
    security(("bearer" = [])))]
pub async fn gate_eval(
    State(state): State<AppState>,
    Auth(who): Auth,
    ApiJson(body): ApiJson<CaseRef>,
) -> Result<(StatusCode, Json<Redriven>), ApiError> {
    redrive(&state, &who, body.case_id, Redrive::EvaluateGate).await
}

/// Re-issues `cmd.exec.run` of the approved current plan (never an ad-hoc
/// command), for a case in EXECUTING with no run in flight.
#[utoipa::path(post, path = "/adapter/exec", tag = "redrive", request_body = CaseRef,
    responses((status = 202, body = Redriven),
              (status = 403, body = crate::problem::Problem, description = "forbidden: not an operator or admin"),
              (status = 404, body = crate::problem::Problem),
              (status = 409, body = crate::problem::Problem, description = "wrong_status: the case is not in EXECUTING; run_in_flight / run_exists: this version already has a run; command_pending; command_not_lost: no cmd.exec.run of the case was dead-lettered or failed to publish (the first may still arrive); no_plan")),
    security(("bearer" = [])))]
pub async fn adapter_exec(
    State(state): State<AppState>,
    Auth(who): Auth,
    ApiJson(body): ApiJson<CaseRef>,
) -> Result<(StatusCode, Json<Redriven>), ApiError> {
    redrive(&state, &who, body.case_id, Redrive::Execute).await
}

/// Re-issues `cmd.verify.run` of the current plan, for a case in VERIFYING.
#[utoipa::path(post, path = "/verify/run", tag = "redrive", request_body = CaseRef,
    responses((status = 202, body = Redriven),
              (status = 403, body = crate::problem::Problem, description = "forbidden: not an operator or admin"),
              (status = 404, body = crate::problem::Problem),
              (status = 409, body = crate::problem::Problem, description = "wrong_status: the case is not in VERIFYING; command_pending; no_plan")),
    security(("bearer" = [])))]
pub async fn verify_run(
    State(state): State<AppState>,
    Auth(who): Auth,
    ApiJson(body): ApiJson<CaseRef>,
) -> Result<(StatusCode, Json<Redriven>), ApiError> {
    redrive(&state, &who, body.case_id, Redrive::Verify).await
}

#[cfg(test)]
mod tests {
    use crate::ids::is_slug;

    /// Template names are slugs, as kinds are.
    #[test]
    fn template_names() {
        let valid_template = |t: &str| is_slug(t, b"_.-");
        assert!(valid_template("restart-service"));
        assert!(valid_template("a"));
        assert!(!valid_template(""));
        assert!(!valid_template("-x"));
        assert!(!valid_template("Restart"));
        assert!(!valid_template("a b"));
        assert!(!valid_template(&"a".repeat(65)));
    }
}
