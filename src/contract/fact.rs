//! Facts: what happened, one struct per `evt.*` subject. Workers report
//! their results as facts; the orchestrator turns the ones that drive the
//! FSM into events; `evt.case.transition.v1` is the feed for everyone.
//!
//! The JSON of each is documented in `docs/events.md` and pinned by the
//! golden files in `tests/golden/`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use super::ids::{DryRunDigest, PlanHash};
use super::message::{Body, ContractError, MAX_REASON, invalid};
use crate::workflow::{EventKind, Status};

pub const EVT_CASE_TRANSITION: &str = "evt.case.transition.v1";
pub const EVT_CASE_CREATED: &str = "evt.case.created.v1";
pub const EVT_FINDINGS: &str = "evt.analysis.findings.v1";
pub const EVT_PLAN_PROPOSED: &str = "evt.plan.proposed.v1";
pub const EVT_PLAN_FAILED: &str = "evt.plan.failed.v1";
pub const EVT_GATE_PENDING: &str = "evt.gate.pending.v1";
pub const EVT_GATE_VOTE: &str = "evt.gate.vote.v1";
pub const EVT_PLAN_APPROVED: &str = "evt.plan.approved.v1";
pub const EVT_PLAN_REJECTED: &str = "evt.plan.rejected.v1";
pub const EVT_EXEC_DRYRUN: &str = "evt.exec.dryrun.v1";
pub const EVT_STEP_RESULT: &str = "evt.exec.step_result.v1";
pub const EVT_EXEC_DONE: &str = "evt.exec.done.v1";
pub const EVT_EXEC_FAILED: &str = "evt.exec.failed.v1";
pub const EVT_ROLLED_BACK: &str = "evt.exec.rolled_back.v1";
pub const EVT_VERIFY_PASS: &str = "evt.verify.pass.v1";
pub const EVT_VERIFY_FAILED: &str = "evt.verify.failed.v1";

/// Facts for other readers (the feed, notifiers, people), not for the FSM.
/// The orchestrator acknowledges them unread: a subscriber's concern is not
/// a reason to dead-letter them there.
pub const INFORMATIONAL: [&str; 6] = [
    EVT_CASE_TRANSITION,
    EVT_CASE_CREATED,
    EVT_GATE_PENDING,
    EVT_GATE_VOTE,
    EVT_STEP_RESULT,
    EVT_ROLLED_BACK,
];

#[derive(Debug, Clone, PartialEq)]
pub enum Fact {
    /// The orchestrator, for every accepted transition; for UIs, ChatOps
    /// and external subscribers.
    CaseTransition(CaseTransition),
    /// Whoever created a case (a person, a service, signal intake), in the
    /// creating transaction; for the same readers.
    CaseCreated(CaseCreated),
    /// The analyst → `analysis_done`.
    Findings(Findings),
    /// The planner (or a person's plan) → `plan_ready`.
    PlanProposed(PlanProposed),
    /// The planner → `plan_failed`.
    PlanFailed(PlanFailed),
    /// The gatekeeper: people must approve. Informational.
    GatePending(GatePending),
    /// The orchestrator: a person's approval counted, the quorum not met
    /// yet (`gate_vote`). Informational.
    GateVote(GateVote),
    /// The gatekeeper's automatic approval → `gate_approved`.
    PlanApproved(GateJudged),
    /// The gatekeeper's denial → `gate_rejected`.
    PlanRejected(PlanRejected),
    /// The executor's rehearsal of a plan before the gate → `dryrun_done`
    /// (outcome `ok` or `unavailable`) or `dryrun_failed`.
    DryRun(DryRunReport),
    /// The executor, per finished step. Informational.
    StepResult(StepResult),
    /// The executor → `exec_done`.
    ExecDone(RunEnded),
    /// The executor → `exec_failed`.
    ExecFailed(RunEnded),
    /// The executor, after a rollback command. Informational: the case is
    /// already PARKED.
    RolledBack(RunEnded),
    /// The verifier → `verify_pass`.
    VerifyPass(VerifyPassed),
    /// The verifier → `verify_failed`.
    VerifyFailed(VerifyFailed),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaseTransition {
    pub from: Status,
    pub to: Status,
    pub event: EventKind,
    /// The case version after the transition.
    pub version: i64,
    pub actor: String,
    pub reason: Option<String>,
    pub timeline_id: Uuid,
}

/// A new case as it was created (version 1, status NEW).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaseCreated {
    pub title: String,
    pub severity: String,
    pub kind: Option<String>,
    pub labels: Value,
    pub created_by: String,
    /// The `created` timeline entry.
    pub timeline_id: Uuid,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Findings {
    /// The `event_envelope` row that keeps them as evidence.
    pub evidence_id: Uuid,
    pub findings: FindingsReport,
}

/// What the analyst found: figures, no model involved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FindingsReport {
    pub resource: Option<String>,
    pub summary: String,
    pub metrics: BTreeMap<String, MetricSummary>,
    pub signals: Vec<SignalRef>,
    /// Other alerts of the same tenant, firing around this case's own
    /// (absent in findings written before signal intake).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub correlated: Vec<CorrelatedSignal>,
    /// The detector's detections of the same tenant in the window, this
    /// case's own included (absent before the detector existed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub anomalies: Vec<AnomalyRef>,
}

/// One detection of the analyst's detector over `metric_1m`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnomalyRef {
    pub resource: String,
    pub metric: String,
    pub rule: String,
    /// `firing` or `resolved`.
    pub status: String,
    /// The minute judged.
    pub minute: chrono::DateTime<chrono::Utc>,
    /// The rule's figures (baseline: value, baseline, scale, deviation;
    /// burn rate: long_burn, short_burn, factor, slo_target, windows).
    pub figures: Value,
    /// The case the detection went to, when intake took it.
    pub case_id: Option<Uuid>,
}

/// An alert of another open case, active in the window around this one's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CorrelatedSignal {
    pub case_id: Uuid,
    pub fingerprint: String,
    pub alertname: Option<String>,
    pub status: String,
    pub notifications: i32,
    pub last_at: chrono::DateTime<chrono::Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricSummary {
    pub minutes: usize,
    pub last_avg: Option<f64>,
    pub mean_avg: f64,
    pub peak: f64,
    /// The detector's view at its last judged minute: the seasonal
    /// baseline, the robust σ, and how many of them the value sat above
    /// (below, for a `down` rule: negative). Absent when the detector has
    /// not judged the series (no rule, or still warming up).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deviation: Option<f64>,
}

/// A signal linked to the case, as stored (its data is the signal's own).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SignalRef {
    pub id: Uuid,
    #[serde(rename = "type")]
    pub kind: String,
    pub data: Value,
}

/// Who wrote a plan.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, strum::IntoStaticStr, strum::Display,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum PlanSource {
    Template,
    Llm,
    Human,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanProposed {
    pub plan_id: Uuid,
    pub plan_hash: PlanHash,
    pub source: PlanSource,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanFailed {
    pub reason: String,
}

/// The gatekeeper's judgement of a plan: its computed risk and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateJudged {
    pub plan_hash: PlanHash,
    /// The dry run judged with the plan (absent: the plan had none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dryrun_digest: Option<DryRunDigest>,
    pub risk: f64,
    pub reasons: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GatePending {
    #[serde(flatten)]
    pub judged: GateJudged,
    pub required_approvers: u8,
    /// Set when the plan falls in a change freeze: the approvals are a
    /// break-glass override.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub break_glass: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub freeze: Option<String>,
}

/// A counted vote short of the quorum, with the count after it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateVote {
    pub plan_hash: PlanHash,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dryrun_digest: Option<DryRunDigest>,
    pub approver: String,
    pub count: u8,
    pub required: u8,
    pub missing: u8,
    /// The `gate_vote` timeline entry.
    pub timeline_id: Uuid,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanRejected {
    #[serde(flatten)]
    pub judged: GateJudged,
    pub reason: String,
}

/// How a dry run of a plan ended. `unavailable`: some step's target cannot
/// rehearse (a script without a declared dry-run flag); not a failure, but
/// the gate wants a person for such a plan.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    strum::IntoStaticStr,
    strum::Display,
    strum::EnumString,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum DryRunOutcome {
    Ok,
    Failed,
    Unavailable,
}

/// A dry run of one plan, as stored in `plan_dryrun`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DryRunReport {
    pub plan_hash: PlanHash,
    /// SHA-256 of the plan hash, outcome and artefact: what approvals bind to.
    pub digest: DryRunDigest,
    pub outcome: DryRunOutcome,
    pub artefact: DryRunArtefact,
}

/// What the executor saw when it rehearsed each forward step of a plan.
/// Rollback steps are not rehearsed: an `undo` restores a state that only
/// exists once the forward steps ran.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DryRunArtefact {
    /// When the targets were read: a later dry run is another digest.
    pub observed_at: chrono::DateTime<chrono::Utc>,
    pub steps: Vec<StepRehearsal>,
}

/// One forward step's rehearsal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRehearsal {
    pub index: i32,
    pub action: String,
    /// The resource it would change (`k8s:shop/api`, `gateway:edge/api`,
    /// `script:restart.sh`); none for `noop`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    pub outcome: DryRunOutcome,
    /// Why it failed or could not be rehearsed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What the target said: the pod-template diff, the current and
    /// target weights, the script's dry-run output.
    pub detail: Value,
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, strum::IntoStaticStr, strum::Display,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum StepPhase {
    Step,
    Rollback,
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, strum::IntoStaticStr, strum::Display,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum StepStatus {
    Done,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepResult {
    pub run_id: Uuid,
    /// The command's envelope id.
    pub attempt_id: Uuid,
    pub phase: StepPhase,
    pub index: i32,
    pub action: String,
    pub status: StepStatus,
    pub tries: i32,
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, strum::IntoStaticStr, strum::Display,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum RunKind {
    Run,
    Rollback,
}

/// How a run ended (`exec_run.status`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, strum::IntoStaticStr, strum::Display,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum RunStatus {
    Done,
    Failed,
    RolledBack,
    Interrupted,
    Blocked,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunEnded {
    pub run_id: Uuid,
    pub attempt_id: Uuid,
    pub plan_hash: PlanHash,
    pub kind: RunKind,
    pub status: RunStatus,
    pub reason: Option<String>,
}

/// Why verification did not pass; missing data is never a pass.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, strum::IntoStaticStr, strum::Display,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum VerifyFailure {
    Breach,
    NoData,
    Inconclusive,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VerifyPassed {
    /// The plan whose checks were judged. Absent in messages of releases
    /// before it was added: those are judged against the current plan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan_hash: Option<PlanHash>,
    /// Each check's verdict and figures, as stored in `verify_result`.
    pub checks: Vec<Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VerifyFailed {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan_hash: Option<PlanHash>,
    pub reason: VerifyFailure,
    pub checks: Vec<Value>,
}

impl DryRunReport {
    /// The report of `artefact`: failed when a step failed, else
    /// unavailable when a step could not be rehearsed, else ok; the digest
    /// covers the plan hash, the outcome and every byte of the artefact.
    pub fn of(plan_hash: PlanHash, artefact: DryRunArtefact) -> DryRunReport {
        let outcome = [DryRunOutcome::Failed, DryRunOutcome::Unavailable]
            .into_iter()
            .find(|o| artefact.steps.iter().any(|s| s.outcome == *o))
            .unwrap_or(DryRunOutcome::Ok);
        let digest = DryRunReport::digest_of(&plan_hash, outcome, &artefact);
        DryRunReport {
            plan_hash,
            digest,
            outcome,
            artefact,
        }
    }

    /// serde_json writes struct fields in declaration order and maps in
    /// key order, so the same report always hashes the same.
    pub fn digest_of(
        plan_hash: &PlanHash,
        outcome: DryRunOutcome,
        artefact: &DryRunArtefact,
    ) -> DryRunDigest {
        let canonical =
            serde_json::to_vec(&(plan_hash, outcome, artefact)).expect("a dry run serialises");
        DryRunDigest::of(&canonical)
    }

    /// Why a failed dry run parks the case: the first failed step's error,
    /// cut to what a park reason holds.
    pub fn failure(&self) -> String {
        let step = self
            .artefact
            .steps
            .iter()
            .find(|s| s.outcome == DryRunOutcome::Failed);
        let why = match step {
            Some(s) => format!(
                "dry run failed at step {} ({}): {}",
                s.index,
                s.action,
                s.error.as_deref().unwrap_or("no detail")
            ),
            None => "dry run failed".to_string(),
        };
        why.chars().take(MAX_REASON).collect()
    }
}

impl Fact {
    /// The FSM event this fact proposes; `None` for informational facts.
    pub fn event(&self) -> Option<EventKind> {
        use EventKind as E;
        Some(match self {
            Fact::Findings(_) => E::AnalysisDone,
            Fact::PlanProposed(_) => E::PlanReady,
            Fact::PlanFailed(_) => E::PlanFailed,
            Fact::PlanApproved(_) => E::GateApproved,
            Fact::PlanRejected(_) => E::GateRejected,
            Fact::DryRun(r) if r.outcome == DryRunOutcome::Failed => E::DryrunFailed,
            Fact::DryRun(_) => E::DryrunDone,
            Fact::ExecDone(_) => E::ExecDone,
            Fact::ExecFailed(_) => E::ExecFailed,
            Fact::VerifyPass(_) => E::VerifyPass,
            Fact::VerifyFailed(_) => E::VerifyFailed,
            Fact::CaseTransition(_)
            | Fact::CaseCreated(_)
            | Fact::GatePending(_)
            | Fact::GateVote(_)
            | Fact::StepResult(_)
            | Fact::RolledBack(_) => return None,
        })
    }

    /// The plan the fact is about; the orchestrator rejects a fact about a
    /// plan that is no longer the case's current one as stale.
    pub fn plan_hash(&self) -> Option<&PlanHash> {
        match self {
            Fact::PlanProposed(p) => Some(&p.plan_hash),
            Fact::PlanApproved(j) | Fact::GatePending(GatePending { judged: j, .. }) => {
                Some(&j.plan_hash)
            }
            Fact::GateVote(v) => Some(&v.plan_hash),
            Fact::PlanRejected(r) => Some(&r.judged.plan_hash),
            Fact::DryRun(r) => Some(&r.plan_hash),
            Fact::ExecDone(r) | Fact::ExecFailed(r) | Fact::RolledBack(r) => Some(&r.plan_hash),
            Fact::VerifyPass(v) => v.plan_hash.as_ref(),
            Fact::VerifyFailed(v) => v.plan_hash.as_ref(),
            Fact::CaseTransition(_)
            | Fact::CaseCreated(_)
            | Fact::Findings(_)
            | Fact::PlanFailed(_)
            | Fact::StepResult(_) => None,
        }
    }

    /// The dry run a `evt.exec.dryrun.v1` reports; the orchestrator loads
    /// that stored dry run for the guard.
    pub fn dryrun_digest(&self) -> Option<&DryRunDigest> {
        match self {
            Fact::DryRun(r) => Some(&r.digest),
            Fact::CaseTransition(_)
            | Fact::CaseCreated(_)
            | Fact::Findings(_)
            | Fact::PlanProposed(_)
            | Fact::PlanFailed(_)
            | Fact::GatePending(_)
            | Fact::GateVote(_)
            | Fact::PlanApproved(_)
            | Fact::PlanRejected(_)
            | Fact::StepResult(_)
            | Fact::ExecDone(_)
            | Fact::ExecFailed(_)
            | Fact::RolledBack(_)
            | Fact::VerifyPass(_)
            | Fact::VerifyFailed(_) => None,
        }
    }

    /// The reason the transition records (and a park keeps).
    pub fn reason(&self) -> Option<String> {
        match self {
            Fact::PlanFailed(f) => Some(f.reason.clone()),
            Fact::PlanRejected(r) => Some(r.reason.clone()),
            Fact::DryRun(r) if r.outcome == DryRunOutcome::Failed => Some(r.failure()),
            Fact::ExecDone(r) | Fact::ExecFailed(r) | Fact::RolledBack(r) => r.reason.clone(),
            Fact::VerifyFailed(v) => Some(v.reason.to_string()),
            Fact::CaseTransition(t) => t.reason.clone(),
            Fact::CaseCreated(_)
            | Fact::Findings(_)
            | Fact::PlanProposed(_)
            | Fact::GatePending(_)
            | Fact::GateVote(_)
            | Fact::PlanApproved(_)
            | Fact::DryRun(_)
            | Fact::StepResult(_)
            | Fact::VerifyPass(_) => None,
        }
    }

    fn data<T: Serialize>(inner: &T) -> Value {
        serde_json::to_value(inner).expect("facts serialise")
    }
}

fn parse<T: for<'de> Deserialize<'de>>(subject: &str, data: &Value) -> Result<T, ContractError> {
    T::deserialize(data).map_err(|e| invalid(subject, e))
}

impl Body for Fact {
    fn subject(&self) -> &'static str {
        match self {
            Fact::CaseTransition(_) => EVT_CASE_TRANSITION,
            Fact::CaseCreated(_) => EVT_CASE_CREATED,
            Fact::Findings(_) => EVT_FINDINGS,
            Fact::PlanProposed(_) => EVT_PLAN_PROPOSED,
            Fact::PlanFailed(_) => EVT_PLAN_FAILED,
            Fact::GatePending(_) => EVT_GATE_PENDING,
            Fact::GateVote(_) => EVT_GATE_VOTE,
            Fact::PlanApproved(_) => EVT_PLAN_APPROVED,
            Fact::PlanRejected(_) => EVT_PLAN_REJECTED,
            Fact::DryRun(_) => EVT_EXEC_DRYRUN,
            Fact::StepResult(_) => EVT_STEP_RESULT,
            Fact::ExecDone(_) => EVT_EXEC_DONE,
            Fact::ExecFailed(_) => EVT_EXEC_FAILED,
            Fact::RolledBack(_) => EVT_ROLLED_BACK,
            Fact::VerifyPass(_) => EVT_VERIFY_PASS,
            Fact::VerifyFailed(_) => EVT_VERIFY_FAILED,
        }
    }

    fn to_data(&self) -> Value {
        match self {
            Fact::CaseTransition(x) => Fact::data(x),
            Fact::CaseCreated(x) => Fact::data(x),
            Fact::Findings(x) => Fact::data(x),
            Fact::PlanProposed(x) => Fact::data(x),
            Fact::PlanFailed(x) => Fact::data(x),
            Fact::GatePending(x) => Fact::data(x),
            Fact::GateVote(x) => Fact::data(x),
            Fact::PlanApproved(x) => Fact::data(x),
            Fact::PlanRejected(x) => Fact::data(x),
            Fact::DryRun(x) => Fact::data(x),
            Fact::StepResult(x) => Fact::data(x),
            Fact::ExecDone(x) | Fact::ExecFailed(x) | Fact::RolledBack(x) => Fact::data(x),
            Fact::VerifyPass(x) => Fact::data(x),
            Fact::VerifyFailed(x) => Fact::data(x),
        }
    }

    fn parse(subject: &str, data: &Value) -> Result<Self, ContractError> {
        let s = subject;
        let fact = match subject {
            EVT_CASE_TRANSITION => Fact::CaseTransition(parse(s, data)?),
            EVT_CASE_CREATED => Fact::CaseCreated(parse(s, data)?),
            EVT_FINDINGS => Fact::Findings(parse(s, data)?),
            EVT_PLAN_PROPOSED => Fact::PlanProposed(parse(s, data)?),
            EVT_PLAN_FAILED => Fact::PlanFailed(parse(s, data)?),
            EVT_GATE_PENDING => Fact::GatePending(parse(s, data)?),
            EVT_GATE_VOTE => Fact::GateVote(parse(s, data)?),
            EVT_PLAN_APPROVED => Fact::PlanApproved(parse(s, data)?),
            EVT_PLAN_REJECTED => Fact::PlanRejected(parse(s, data)?),
            EVT_EXEC_DRYRUN => Fact::DryRun(parse(s, data)?),
            EVT_STEP_RESULT => Fact::StepResult(parse(s, data)?),
            EVT_EXEC_DONE => Fact::ExecDone(parse(s, data)?),
            EVT_EXEC_FAILED => Fact::ExecFailed(parse(s, data)?),
            EVT_ROLLED_BACK => Fact::RolledBack(parse(s, data)?),
            EVT_VERIFY_PASS => Fact::VerifyPass(parse(s, data)?),
            EVT_VERIFY_FAILED => Fact::VerifyFailed(parse(s, data)?),
            other => return Err(ContractError::UnknownType(other.to_string())),
        };
        if let Some(reason) = fact.reason()
            && (reason.chars().count() > MAX_REASON || reason.contains('\0'))
        {
            return Err(ContractError::Invalid(
                "data.reason must be a string of at most 2000 characters, without NUL".into(),
            ));
        }
        Ok(fact)
    }
}
