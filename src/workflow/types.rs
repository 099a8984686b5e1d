//! The vocabulary of the state machine: statuses, events, effects, the
//! facts guards read, and what `decide` answers.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

pub use crate::ids::{DryRunDigest, PlanHash};

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
)]
#[strum(serialize_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    StartAnalysis,
    AnalysisDone,
    PlanReady,
    PlanFailed,
    DryrunDone,
    DryrunFailed,
    GateApproved,
    GateRejected,
    /// A person's approval that counts but does not meet the quorum yet;
    /// the orchestrator records it in place of a `gate_approved` that
    /// falls short (never sent by anyone).
    GateVote,
    ExecDone,
    ExecFailed,
    VerifyPass,
    VerifyFailed,
    Resume,
    Dismiss,
    /// An automatic re-plan after a failed verification was rolled back,
    /// within the policy's limit; only the orchestrator sends it.
    Replan,
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
    /// `cmd.exec.dryrun`, consumed by the executor: rehearse this exact
    /// plan before the gate judges it.
    DryRun { plan_hash: PlanHash },
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

/// A stored approval, bound to the plan hash and the dry run it judged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalFact {
    pub plan_hash: PlanHash,
    pub approver: String,
    pub kind: ApprovalKind,
    /// `None` for approvals of plans that had no dry run (before dry runs
    /// existed); then only such an approval matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dryrun_digest: Option<DryRunDigest>,
}

/// Whether a dry run said the plan can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DryRunVerdict {
    /// Every step rehearsed fine, or some could not be rehearsed.
    Passed,
    Failed,
}

/// A stored dry run of a plan: the one a worker's fact names
/// (`dryrun_*`), or the plan's latest (`gate_approved`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DryRunFact {
    pub plan_hash: PlanHash,
    pub digest: DryRunDigest,
    pub verdict: DryRunVerdict,
}

/// A person's judgement carried by this very request (`gate_*` over HTTP).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Judgement {
    pub actor: String,
    /// `None` when the person named no plan: then the judgement counts for
    /// nothing (fail-closed), whatever else holds.
    pub plan_hash: Option<PlanHash>,
    /// The dry run the person saw; must be the plan's latest when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dryrun_digest: Option<DryRunDigest>,
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
    /// `dryrun_*`: the dry run the fact names; `gate_approved`: the current
    /// plan's latest dry run (`None`: the plan has none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dryrun: Option<DryRunFact>,
    pub approvals: Vec<ApprovalFact>,
    /// Distinct human approvers the gatekeeper requires for the current plan;
    /// `None` until it has evaluated the plan (then no person can open the gate).
    pub required_approvers: Option<u8>,
    pub judgement: Option<Judgement>,
    pub exec: Option<ExecFact>,
    /// Whether the verification result of the current attempt is `pass`
    /// (`verify_pass` needs it, `verify_failed` needs its opposite).
    pub verify_passed: Option<bool>,
    pub auto_rollback_allowed: bool,
    /// A change freeze that covers the current plan now, when the gate did
    /// not approve a break-glass override for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub freeze: Option<String>,
    /// Set when the event comes from a worker's fact (not from a person).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fact: Option<FactRef>,
    /// `replan`: the policy's limit and what happened to the current plan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replan: Option<ReplanFact>,
}

/// What `replan` needs: the policy's limit, the automatic re-plans the case
/// has had, and whether its current plan failed verification and was
/// rolled back (a re-plan is for a change that was tried and undone, never
/// for one still in place).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplanFact {
    /// `replan.max_per_case`; 0: automatic re-plans are off.
    pub limit: u32,
    pub done: u32,
    pub rolled_back_after_failed_verification: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuardFailure {
    /// Stable name of the guard, e.g. `approval_for_current_plan`.
    pub guard: Cow<'static, str>,
    /// What an on-call reader needs to know.
    pub detail: String,
}

/// An accepted move: the next status, the commands to emit, and what the
/// orchestrator must record with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub to: Status,
    pub effects: Vec<Effect>,
    /// Why, for the on-call reader; kept in the timeline entry's meta.
    pub note: String,
    /// The case's park reason after the move: entering PARKED keeps why
    /// (feedback for the next plan), any other status clears it.
    pub park_reason: Option<String>,
    /// The person's approval carried by this request counts and is recorded.
    pub record_approval: bool,
    /// `gate_vote`: the approvals that count now, this one included.
    pub tally: Option<Tally>,
}

/// Distinct people whose approval of the current plan (and dry run) counts,
/// against the quorum the gate decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    pub count: u8,
    pub required: u8,
}

impl Tally {
    pub fn missing(self) -> u8 {
        self.required.saturating_sub(self.count)
    }
}

/// Why a move was refused. Stored with an idempotent request's answer, so
/// it must read back exactly as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "rejection", rename_all = "snake_case")]
pub enum Rejection {
    #[error("{event} is not accepted in {from}")]
    IllegalTransition { from: Status, event: EventKind },
    #[error("guards failed: {}", .failures.iter().map(|g| g.guard.as_ref()).collect::<Vec<_>>().join(", "))]
    GuardFailed {
        failures: Vec<GuardFailure>,
        /// A person's approval that counts although the quorum is not met
        /// yet: it is recorded all the same.
        #[serde(default)]
        record_approval: bool,
    },
    /// A worker's fact about a case version or a plan the case has left:
    /// recorded and acknowledged, never retried.
    #[error("stale fact: {detail}")]
    StaleFact { detail: String },
}

impl Rejection {
    /// The stable code of the rejection (timeline `rejection_code`,
    /// `conflict_total{reason}`, the problem's `code`).
    pub fn code(&self) -> &'static str {
        match self {
            Rejection::IllegalTransition { .. } => "illegal_transition",
            Rejection::GuardFailed { .. } => "guard_failed",
            Rejection::StaleFact { .. } => "stale_fact",
        }
    }
}
