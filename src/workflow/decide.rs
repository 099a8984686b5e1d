//! `decide`: the one match on (status, event) that says every legal move.

use super::guards;
use super::types::{
    Decision, DryRunVerdict, Effect, EventKind, FactRef, Facts, GuardFailure, PlanFact, PlanHash,
    Rejection, Status, Tally,
};

/// Decides the move for `event` in `status`, given `facts`. Pure.
pub fn decide(status: Status, event: EventKind, facts: &Facts) -> Result<Decision, Rejection> {
    use self::{EventKind as E, Status as S};
    if let Some(fact) = &facts.fact
        && let Some(why) = stale(fact, facts.plan.as_ref())
    {
        return Err(Rejection::StaleFact { detail: why });
    }
    let to = |to: Status, note: String| Decision {
        to,
        effects: Vec::new(),
        note,
        // Why the case parks is what the next plan is asked to fix.
        park_reason: (to == S::Parked).then(|| {
            facts
                .reason
                .clone()
                .unwrap_or_else(|| event.as_str().to_string())
        }),
        record_approval: false,
        tally: None,
    };
    match (status, event) {
        (S::New, E::StartAnalysis) => {
            Ok(to(S::Analyzing, "analysis requested".into()).effect(Effect::RunAnalysis))
        }
        (S::Analyzing, E::AnalysisDone) => {
            Ok(to(S::Planning, "findings in; a plan is requested".into())
                .effect(Effect::GeneratePlan { feedback: None }))
        }
        (S::Planning, E::PlanReady) => {
            check(&[
                guards::plan_present(facts),
                guards::plan_schema_valid(facts),
                guards::plan_complete(facts),
            ])?;
            let plan_hash = current_plan_hash(facts)?;
            let note = format!(
                "plan {} passed the contract; the executor rehearses it before the gate",
                plan_hash.short()
            );
            Ok(to(S::WaitGate, note).effect(Effect::DryRun { plan_hash }))
        }
        (S::Planning, E::PlanFailed) => Ok(to(S::Parked, "no plan could be made".into())),
        (S::WaitGate, E::DryrunDone) => {
            check(&[guards::dryrun_of_current_plan(facts, DryRunVerdict::Passed)])?;
            let plan_hash = current_plan_hash(facts)?;
            let note = format!(
                "dry run of plan {} in; the gate evaluates it (earlier votes are void)",
                plan_hash.short()
            );
            Ok(to(S::WaitGate, note).effect(Effect::EvaluateGate { plan_hash }))
        }
        (S::WaitGate, E::DryrunFailed) => {
            check(&[guards::dryrun_of_current_plan(facts, DryRunVerdict::Failed)])?;
            Ok(to(
                S::Parked,
                "the dry run failed; no one is asked to approve".into(),
            ))
        }
        (S::WaitGate, E::GateApproved) => {
            let failures = guards::failures(&[
                guards::plan_present(facts),
                guards::judged_plan_is_current(facts),
                guards::judged_dryrun_is_current(facts),
                guards::approver_is_not_author(facts),
                guards::approval_for_current_plan(facts),
                guards::outside_change_freeze(facts),
            ]);
            // A person's approval of the current plan counts once every
            // other guard held, even while the quorum is not met yet.
            let counts = facts.judgement.is_some()
                && failures
                    .iter()
                    .all(|f| f.guard == "approval_for_current_plan");
            if !failures.is_empty() {
                return Err(Rejection::GuardFailed {
                    failures,
                    record_approval: counts,
                });
            }
            let plan_hash = current_plan_hash(facts)?;
            let by = facts
                .judgement
                .as_ref()
                .map_or("the gatekeeper", |j| j.actor.as_str());
            let note = format!(
                "plan {} approved ({by}); execution requested",
                plan_hash.short()
            );
            let mut decision = to(S::Executing, note).effect(Effect::Execute { plan_hash });
            decision.record_approval = counts;
            Ok(decision)
        }
        (S::WaitGate, E::GateVote) => {
            check(&[
                guards::plan_present(facts),
                guards::judged_plan_is_current(facts),
                guards::judged_dryrun_is_current(facts),
                guards::approver_is_not_author(facts),
                guards::outside_change_freeze(facts),
                guards::vote_short_of_quorum(facts),
            ])?;
            let tally = guards::tally(facts);
            let note = match tally {
                Some(t) => format!(
                    "approval {} of {} for plan {}; {} more needed",
                    t.count,
                    t.required,
                    current_plan_hash(facts)?.short(),
                    t.missing()
                ),
                None => "approval recorded".into(),
            };
            let mut decision = to(S::WaitGate, note);
            decision.record_approval = true;
            decision.tally = tally;
            Ok(decision)
        }
        (S::WaitGate, E::GateRejected) => {
            check(&[guards::judged_plan_is_current(facts)])?;
            Ok(to(S::Parked, "the plan was rejected at the gate".into()))
        }
        (S::Executing, E::ExecDone) => {
            check(&[guards::execution_succeeded(facts)])?;
            let plan_hash = current_plan_hash(facts)?;
            let note = format!(
                "every step of plan {} succeeded; verification requested",
                plan_hash.short()
            );
            Ok(to(S::Verifying, note).effect(Effect::Verify { plan_hash }))
        }
        (S::Executing, E::ExecFailed) => Ok(to(S::Parked, "the execution failed".into())),
        (S::Verifying, E::VerifyPass) => {
            check(&[guards::verification_passed(facts)])?;
            Ok(to(S::Closed, "verification passed".into()))
        }
        (S::Verifying, E::VerifyFailed) => {
            match check(&[guards::verification_failed(facts)]).map(|()| &facts.plan)? {
                Some(plan) if plan.has_rollback && facts.auto_rollback_allowed => {
                    let note = format!(
                        "verification failed; rolling back plan {}",
                        plan.hash.short()
                    );
                    Ok(to(S::Parked, note).effect(Effect::Rollback {
                        plan_hash: plan.hash.clone(),
                    }))
                }
                Some(plan) if plan.has_rollback => Ok(to(
                    S::Parked,
                    "verification failed; policy leaves the rollback to a person".into(),
                )),
                Some(_) | None => Ok(to(
                    S::Parked,
                    "verification failed; the plan has no rollback".into(),
                )),
            }
        }
        (S::Parked, E::Resume) => Ok(to(
            S::Planning,
            "resumed; a new plan is requested with the park reason".into(),
        )
        .effect(Effect::GeneratePlan {
            feedback: facts.park_reason.clone(),
        })),
        (S::Parked, E::Replan) => {
            check(&[guards::replan_allowed(facts)])?;
            let (done, limit) = facts.replan.map_or((0, 0), |r| (r.done + 1, r.limit));
            Ok(to(
                S::Planning,
                format!(
                    "the change failed verification and was rolled back; automatic re-plan {done} of {limit}, with the figures"
                ),
            )
            .effect(Effect::GeneratePlan {
                feedback: facts.reason.clone(),
            }))
        }
        (S::New | S::Analyzing | S::Planning | S::WaitGate | S::Parked, E::Dismiss) => {
            check(&[guards::reason_given(facts)])?;
            Ok(to(S::Closed, "dismissed".into()))
        }
        (from, event) => Err(Rejection::IllegalTransition { from, event }),
    }
}

/// Whether the approvals recorded for the current plan meet the quorum the
/// gate recorded: an automatic approval, or enough distinct people, never
/// the plan's author. The same rule as the gate's guard, asked again by the
/// executor before it runs anything (a forged or early `cmd.exec.run`).
pub fn approvals_meet_quorum(facts: &Facts) -> Result<(), GuardFailure> {
    guards::approval_for_current_plan(&Facts {
        judgement: None,
        ..facts.clone()
    })
}

/// The people whose approval counts now (this request's included) against
/// the gate's quorum; `None` until the gatekeeper decided one.
pub fn tally(facts: &Facts) -> Option<Tally> {
    guards::tally(facts)
}

/// Whether `actor`'s approval of the current plan and dry run is stored
/// already: a second vote by the same person changes nothing.
pub fn already_voted(facts: &Facts, actor: &str) -> bool {
    guards::stored_vote_of(facts, actor)
}

/// Every guard of a move is evaluated, so a rejection lists each failure.
fn check(results: &[Result<(), GuardFailure>]) -> Result<(), Rejection> {
    let failures = guards::failures(results);
    if failures.is_empty() {
        Ok(())
    } else {
        Err(Rejection::GuardFailed {
            failures,
            record_approval: false,
        })
    }
}

impl Decision {
    fn effect(mut self, effect: Effect) -> Self {
        self.effects.push(effect);
        self
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

/// The current plan's hash; a move that needs one and finds no plan fails
/// `plan_present` (never a panic, whatever the other guards let through).
fn current_plan_hash(facts: &Facts) -> Result<PlanHash, Rejection> {
    match &facts.plan {
        Some(plan) => Ok(plan.hash.clone()),
        None => Err(Rejection::GuardFailed {
            failures: guards::failures(&[guards::plan_present(facts)]),
            record_approval: false,
        }),
    }
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
