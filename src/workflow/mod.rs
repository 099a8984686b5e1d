//! Pure decisions for cases: statuses, events, guards and `decide`.
//!
//! Owns the legal moves of DESIGN §2. Must not do IO, read a clock, draw
//! randomness or know about SQL: callers load [`Facts`], call [`decide`],
//! and persist the [`Decision`] (the orchestrator is the only caller that
//! writes).

mod guards;
#[cfg(test)]
mod tests;

use serde::{Deserialize, Serialize};

pub use crate::contract::ids::PlanHash;
pub use guards::GuardFailure;

/// Where a case is in its life. Serialised as `NEW` … `PARKED`.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    strum::Display,
    strum::EnumString,
    strum::EnumIter,
    strum::IntoStaticStr,
    utoipa::ToSchema,
)]
#[strum(serialize_all = "SCREAMING_SNAKE_CASE")]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    New,
    Analyzing,
    Planning,
    WaitGate,
    Executing,
    Verifying,
    Closed,
    Parked,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    pub fn is_terminal(self) -> bool {
        self == Status::Closed
    }
}

/// What happened to a case (the input of `decide`). Serialised snake_case.
///
/// Emitters: operators and approvers over HTTP/ChatOps (`start_analysis`,
/// `resume`, `dismiss`, `gate_*`), and workers through their `evt.*` facts
/// mapped by the orchestrator consumer (`analysis_done`, `plan_*`, `gate_*`,
/// `exec_*`, `verify_*`).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    strum::Display,
    strum::EnumString,
    strum::EnumIter,
    strum::IntoStaticStr,
    utoipa::ToSchema,
)]
#[strum(serialize_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    StartAnalysis,
    AnalysisDone,
    PlanReady,
    PlanFailed,
    GateApproved,
    GateRejected,
    ExecDone,
    ExecFailed,
    VerifyPass,
    VerifyFailed,
    Resume,
    Dismiss,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// What we intend to happen after commit: one outbox command each
/// (`contract::CommandMsg` is its wire form). Every variant names its
/// consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// `cmd.analysis.run`, consumed by the analyst.
    RunAnalysis,
    /// `cmd.plan.generate`, consumed by the planner; `feedback` carries the
    /// park reason when a parked case is resumed.
    GeneratePlan { feedback: Option<String> },
    /// `cmd.gate.eval`, consumed by the gatekeeper for this exact plan.
    EvaluateGate { plan_hash: PlanHash },
    /// `cmd.exec.run`, consumed by the executor for the approved plan.
    Execute { plan_hash: PlanHash },
    /// `cmd.verify.run`, consumed by the verifier, for the plan that ran.
    Verify { plan_hash: PlanHash },
    /// `cmd.exec.rollback`, consumed by the executor.
    Rollback { plan_hash: PlanHash },
}

/// The current plan as stored for the case (the latest one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanFact {
    pub hash: PlanHash,
    pub author: String,
    pub schema_valid: bool,
    pub complete: bool,
    pub has_rollback: bool,
}

/// Whether an approval was given by the gatekeeper or by a person.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalKind {
    Auto,
    Human,
}

/// A stored approval, bound to the plan hash it judged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalFact {
    pub plan_hash: PlanHash,
    pub approver: String,
    pub kind: ApprovalKind,
}

/// A person's judgement carried by this very request (`gate_*` over HTTP).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Judgement {
    pub actor: String,
    /// `None` when the person named no plan: then the judgement counts for
    /// nothing (fail-closed), whatever else holds.
    pub plan_hash: Option<PlanHash>,
}

/// What a worker's fact claims to be about: the case version it was
/// issued at and, for facts about a plan, that plan. A fact about a version
/// or a plan the case has left is stale.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FactRef {
    /// The case version when the fact was asked for, and the version now.
    pub expected_version: Option<i64>,
    pub case_version: i64,
    pub plan_hash: Option<PlanHash>,
}

/// The result of the last execution run of the case.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecFact {
    pub plan_hash: PlanHash,
    pub all_steps_succeeded: bool,
}

/// What the guards need, loaded by the orchestrator before calling `decide`.
/// Stored with every timeline entry so a timeline can be replayed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Facts {
    /// The reason given with the request, if any.
    pub reason: Option<String>,
    /// Why the case was parked (feedback for the next plan on `resume`).
    pub park_reason: Option<String>,
    pub plan: Option<PlanFact>,
    pub approvals: Vec<ApprovalFact>,
    /// Distinct human approvers the gatekeeper requires for the current plan;
    /// `None` until it has evaluated the plan (then no person can open the gate).
    pub required_approvers: Option<u8>,
    pub judgement: Option<Judgement>,
    pub exec: Option<ExecFact>,
    /// Whether the verification result of the current run is `pass`.
    pub verify_passed: Option<bool>,
    pub auto_rollback_allowed: bool,
    /// Set when the event comes from a worker's fact (not from a person).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fact: Option<FactRef>,
}

/// An accepted move: the next status and the commands to emit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub to: Status,
    pub effects: Vec<Effect>,
}

impl Decision {
    fn to(to: Status) -> Self {
        Decision {
            to,
            effects: Vec::new(),
        }
    }

    fn effect(mut self, effect: Effect) -> Self {
        self.effects.push(effect);
        self
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("{event} is not accepted in {from}")]
    IllegalTransition { from: Status, event: EventKind },
    #[error("guards failed: {}", .0.iter().map(|g| g.guard).collect::<Vec<_>>().join(", "))]
    GuardFailed(Vec<GuardFailure>),
    /// A worker's fact about a case version or a plan the case has left:
    /// recorded and acknowledged, never retried.
    #[error("stale fact: {0}")]
    StaleFact(String),
}

/// Decides the move for `event` in `status`, given `facts`. Pure.
pub fn decide(status: Status, event: EventKind, facts: &Facts) -> Result<Decision, Rejection> {
    use self::{EventKind as E, Status as S};
    if let Some(fact) = &facts.fact {
        stale(fact, facts.plan.as_ref()).map_or(Ok(()), |why| Err(Rejection::StaleFact(why)))?;
    }
    match (status, event) {
        (S::New, E::StartAnalysis) => Ok(Decision::to(S::Analyzing).effect(Effect::RunAnalysis)),
        (S::Analyzing, E::AnalysisDone) => {
            Ok(Decision::to(S::Planning).effect(Effect::GeneratePlan { feedback: None }))
        }
        (S::Planning, E::PlanReady) => {
            let plan = guards::check(&[
                guards::plan_present(facts),
                guards::plan_schema_valid(facts),
                guards::plan_complete(facts),
            ])
            .map(|()| current_plan_hash(facts))?;
            Ok(Decision::to(S::WaitGate).effect(Effect::EvaluateGate { plan_hash: plan }))
        }
        (S::Planning, E::PlanFailed) => Ok(Decision::to(S::Parked)),
        (S::WaitGate, E::GateApproved) => {
            guards::check(&[
                guards::plan_present(facts),
                guards::judged_plan_is_current(facts),
                guards::approver_is_not_author(facts),
                guards::approval_for_current_plan(facts),
            ])?;
            let plan_hash = current_plan_hash(facts);
            Ok(Decision::to(S::Executing).effect(Effect::Execute { plan_hash }))
        }
        (S::WaitGate, E::GateRejected) => {
            guards::check(&[guards::judged_plan_is_current(facts)])?;
            Ok(Decision::to(S::Parked))
        }
        (S::Executing, E::ExecDone) => {
            guards::check(&[guards::execution_succeeded(facts)])?;
            let plan_hash = current_plan_hash(facts);
            Ok(Decision::to(S::Verifying).effect(Effect::Verify { plan_hash }))
        }
        (S::Executing, E::ExecFailed) => Ok(Decision::to(S::Parked)),
        (S::Verifying, E::VerifyPass) => {
            guards::check(&[guards::verification_passed(facts)])?;
            Ok(Decision::to(S::Closed))
        }
        (S::Verifying, E::VerifyFailed) => {
            let decision = Decision::to(S::Parked);
            match &facts.plan {
                Some(plan) if plan.has_rollback && facts.auto_rollback_allowed => Ok(decision
                    .effect(Effect::Rollback {
                        plan_hash: plan.hash.clone(),
                    })),
                Some(_) | None => Ok(decision),
            }
        }
        (S::Parked, E::Resume) => Ok(Decision::to(S::Planning).effect(Effect::GeneratePlan {
            feedback: facts.park_reason.clone(),
        })),
        (S::New | S::Analyzing | S::Planning | S::WaitGate | S::Parked, E::Dismiss) => {
            guards::check(&[guards::reason_given(facts)])?;
            Ok(Decision::to(S::Closed))
        }
        (from, event) => Err(Rejection::IllegalTransition { from, event }),
    }
}

/// Why a worker's fact no longer applies, if it does not: the case moved
/// past the version it was issued at, or its plan is not the current one.
fn stale(fact: &FactRef, plan: Option<&PlanFact>) -> Option<String> {
    if let Some(expected) = fact.expected_version
        && expected != fact.case_version
    {
        return Some(format!(
            "fact about version {expected}, case is at {}",
            fact.case_version
        ));
    }
    match (&fact.plan_hash, plan) {
        (Some(named), Some(current)) if *named != current.hash => Some(format!(
            "fact about plan {}, the current plan is {}",
            named.short(),
            current.hash.short()
        )),
        (Some(named), None) => Some(format!(
            "fact about plan {}, the case has no plan",
            named.short()
        )),
        (Some(_), Some(_)) | (None, _) => None,
    }
}

/// Only called after `plan_present` held.
fn current_plan_hash(facts: &Facts) -> PlanHash {
    facts
        .plan
        .as_ref()
        .map(|p| p.hash.clone())
        .expect("plan_present held")
}

/// Replays accepted `(event, facts)` pairs from `NEW`; the status they lead
/// to must equal the case's stored status.
pub fn replay<'a>(
    entries: impl IntoIterator<Item = (EventKind, &'a Facts)>,
) -> Result<Status, Rejection> {
    entries
        .into_iter()
        .try_fold(Status::New, |status, (event, facts)| {
            decide(status, event, facts).map(|d| d.to)
        })
}
