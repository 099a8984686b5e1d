//! Guards: one small pure function per rule of DESIGN §2, named after it.
//! All guards of a move are evaluated so a rejection lists every failure.

use std::collections::BTreeSet;

use super::types::{
    ApprovalKind, DryRunDigest, DryRunVerdict, Facts, GuardFailure, Judgement, PlanHash, Tally,
};

type Guard = Result<(), GuardFailure>;

fn fail(guard: &'static str, detail: impl Into<String>) -> Guard {
    Err(GuardFailure {
        guard: guard.into(),
        detail: detail.into(),
    })
}

pub(super) fn failures(results: &[Guard]) -> Vec<GuardFailure> {
    results.iter().filter_map(|r| r.clone().err()).collect()
}

pub(super) fn plan_present(facts: &Facts) -> Guard {
    match facts.plan {
        Some(_) => Ok(()),
        None => fail("plan_present", "no plan is stored for this case"),
    }
}

pub(super) fn plan_schema_valid(facts: &Facts) -> Guard {
    match &facts.plan {
        Some(p) if !p.schema_valid => fail(
            "plan_schema_valid",
            "the current plan does not pass the ChangePlan schema",
        ),
        Some(_) | None => Ok(()),
    }
}

pub(super) fn plan_complete(facts: &Facts) -> Guard {
    match &facts.plan {
        Some(p) if !p.complete => fail(
            "plan_complete",
            "the current plan fails the completeness guard",
        ),
        Some(_) | None => Ok(()),
    }
}

/// A person judges a specific plan; judging an older one counts for nothing.
pub(super) fn judged_plan_is_current(facts: &Facts) -> Guard {
    match (&facts.judgement, &facts.plan) {
        (
            Some(Judgement {
                plan_hash: None, ..
            }),
            _,
        ) => fail("judged_plan_is_current", "the judgement names no plan_hash"),
        (
            Some(Judgement {
                plan_hash: Some(judged),
                ..
            }),
            Some(p),
        ) if *judged != p.hash => fail(
            "judged_plan_is_current",
            format!(
                "plan_hash {} is not the current plan {}",
                judged.short(),
                p.hash.short()
            ),
        ),
        (Some(_), None) => fail("judged_plan_is_current", "no plan is stored for this case"),
        (Some(_), Some(_)) | (None, _) => Ok(()),
    }
}

/// A `dryrun_*` fact is about a stored dry run of the current plan, and
/// says what that dry run says.
pub(super) fn dryrun_of_current_plan(facts: &Facts, expected: DryRunVerdict) -> Guard {
    let name = "dryrun_of_current_plan";
    match (&facts.dryrun, &facts.plan) {
        (None, _) => fail(name, "no stored dry run has the digest the fact names"),
        (Some(_), None) => fail(name, "no plan is stored for this case"),
        (Some(d), Some(p)) if d.plan_hash != p.hash => fail(
            name,
            format!(
                "the dry run is of plan {}, the current plan is {}",
                d.plan_hash.short(),
                p.hash.short()
            ),
        ),
        (Some(d), Some(_)) if d.verdict != expected => fail(
            name,
            format!(
                "the stored dry run {} is {:?}, the fact says {expected:?}",
                d.digest.short(),
                d.verdict
            ),
        ),
        (Some(_), Some(_)) => Ok(()),
    }
}

/// A person judges the dry run they saw: when the plan has one, the
/// judgement names its latest digest; an older one counts for nothing.
pub(super) fn judged_dryrun_is_current(facts: &Facts) -> Guard {
    let name = "judged_dryrun_is_current";
    let (Some(judgement), Some(current)) = (&facts.judgement, &facts.dryrun) else {
        return Ok(());
    };
    match &judgement.dryrun_digest {
        None => fail(
            name,
            format!(
                "the judgement names no dryrun_digest; the plan's dry run is {}",
                current.digest
            ),
        ),
        Some(seen) if *seen != current.digest => fail(
            name,
            format!(
                "dryrun_digest {} is not the plan's latest dry run {}",
                seen.short(),
                current.digest.short()
            ),
        ),
        Some(_) => Ok(()),
    }
}

pub(super) fn approver_is_not_author(facts: &Facts) -> Guard {
    match (&facts.judgement, &facts.plan) {
        (Some(j), Some(p)) if j.actor == p.author => fail(
            "approver_is_not_author",
            format!("{} wrote this plan and cannot approve it", j.actor),
        ),
        (Some(_), Some(_)) | (_, None) | (None, _) => Ok(()),
    }
}

/// The gate holds for the current hash: an automatic approval, or enough
/// distinct human approvers (stored ones plus this request's, never the
/// author).
pub(super) fn approval_for_current_plan(facts: &Facts) -> Guard {
    let Some(plan) = &facts.plan else {
        return fail("approval_for_current_plan", "no plan is stored");
    };
    // A plan whose dry run failed is approved by no one, whatever was
    // recorded before the failure was.
    if let Some(dryrun) = &facts.dryrun
        && dryrun.verdict == DryRunVerdict::Failed
    {
        return fail(
            "approval_for_current_plan",
            format!("the dry run {} of the plan failed", dryrun.digest.short()),
        );
    }
    let humans = counted_humans(facts);
    if facts
        .approvals
        .iter()
        .any(|a| a.kind == ApprovalKind::Auto && counts_now(facts, &a.plan_hash, &a.dryrun_digest))
    {
        return Ok(());
    }
    let Some(required) = facts.required_approvers else {
        return fail(
            "approval_for_current_plan",
            format!(
                "the gatekeeper has not evaluated plan {} yet",
                plan.hash.short()
            ),
        );
    };
    let required = usize::from(required.max(1));
    if humans.len() >= required {
        Ok(())
    } else {
        fail(
            "approval_for_current_plan",
            format!(
                "{} of {} required approvals for plan {}",
                humans.len(),
                required,
                plan.hash.short()
            ),
        )
    }
}

/// Whether an approval of `plan_hash` on dry run `digest` counts now: for
/// the current plan and its current dry run only (a new dry run voids the
/// votes, and the automatic approval, given on an older one).
fn counts_now(facts: &Facts, plan_hash: &PlanHash, digest: &Option<DryRunDigest>) -> bool {
    facts.plan.as_ref().is_some_and(|p| p.hash == *plan_hash)
        && digest.as_ref() == facts.dryrun.as_ref().map(|d| &d.digest)
}

/// Distinct people whose approval counts: stored ones and this request's,
/// never the plan's author.
fn counted_humans(facts: &Facts) -> BTreeSet<&str> {
    let Some(plan) = &facts.plan else {
        return BTreeSet::new();
    };
    let stored = facts
        .approvals
        .iter()
        .filter(|a| {
            a.kind == ApprovalKind::Human && counts_now(facts, &a.plan_hash, &a.dryrun_digest)
        })
        .map(|a| a.approver.as_str());
    let judged = facts
        .judgement
        .iter()
        .filter(|j| {
            j.plan_hash
                .as_ref()
                .is_some_and(|h| counts_now(facts, h, &j.dryrun_digest))
        })
        .map(|j| j.actor.as_str());
    stored
        .chain(judged)
        .filter(|who| *who != plan.author)
        .collect()
}

/// Whether `actor` already has a stored approval that counts now.
pub(super) fn stored_vote_of(facts: &Facts, actor: &str) -> bool {
    facts.approvals.iter().any(|a| {
        a.kind == ApprovalKind::Human
            && a.approver == actor
            && counts_now(facts, &a.plan_hash, &a.dryrun_digest)
    })
}

/// The people who count against the gate's quorum.
pub(super) fn tally(facts: &Facts) -> Option<Tally> {
    let required = facts.required_approvers?.max(1);
    let count = u8::try_from(counted_humans(facts).len()).unwrap_or(u8::MAX);
    Some(Tally { count, required })
}

/// `gate_vote`: a person's approval that counts, while the quorum is not
/// met yet (once it is, `gate_approved` opens the gate instead).
pub(super) fn vote_short_of_quorum(facts: &Facts) -> Guard {
    let name = "vote_short_of_quorum";
    if facts.judgement.is_none() {
        return fail(name, "a vote is a person's approval");
    }
    if facts
        .dryrun
        .as_ref()
        .is_some_and(|d| d.verdict == DryRunVerdict::Failed)
    {
        return fail(name, "the plan's dry run failed");
    }
    match tally(facts) {
        None => fail(
            name,
            "the gatekeeper has not evaluated the current plan and dry run",
        ),
        Some(t) if t.count >= t.required => fail(
            name,
            format!("{} of {} approvals meet the quorum", t.count, t.required),
        ),
        Some(_) => Ok(()),
    }
}

pub(super) fn execution_succeeded(facts: &Facts) -> Guard {
    match (&facts.exec, &facts.plan) {
        (Some(e), Some(p)) if e.plan_hash == p.hash && e.all_steps_succeeded => Ok(()),
        (Some(e), Some(p)) if e.plan_hash != p.hash => fail(
            "execution_succeeded",
            "the finished run is not of the approved plan",
        ),
        (Some(_), _) => fail("execution_succeeded", "not every step of the run succeeded"),
        (None, _) => fail("execution_succeeded", "no finished execution run"),
    }
}

pub(super) fn verification_passed(facts: &Facts) -> Guard {
    match facts.verify_passed {
        Some(true) => Ok(()),
        Some(false) => fail("verification_passed", "the verification result is not pass"),
        None => fail("verification_passed", "no verification result"),
    }
}

/// Nothing executes inside a change freeze unless the gate's verdict was a
/// break-glass override (then the quorum approved it as such).
pub(super) fn outside_change_freeze(facts: &Facts) -> Guard {
    match &facts.freeze {
        Some(name) => fail(
            "outside_change_freeze",
            format!(
                "inside change freeze {name}: execution needs a break-glass override approved by the quorum"
            ),
        ),
        None => Ok(()),
    }
}

/// `verify_failed` parks the case and may roll the change back: its
/// evidence is a recorded result of this attempt that did not pass.
pub(super) fn verification_failed(facts: &Facts) -> Guard {
    match facts.verify_passed {
        Some(false) => Ok(()),
        Some(true) => fail("verification_failed", "the verification result is pass"),
        None => fail("verification_failed", "no verification result"),
    }
}

pub(super) fn reason_given(facts: &Facts) -> Guard {
    match facts.reason.as_deref().map(str::trim) {
        Some(r) if !r.is_empty() => Ok(()),
        Some(_) | None => fail("reason_given", "a reason is required"),
    }
}

/// `replan`: automatic re-plans are on, the case has had fewer than the
/// limit, and its current plan failed verification and was rolled back.
pub(super) fn replan_allowed(facts: &Facts) -> Guard {
    match facts.replan {
        None => fail("replan_allowed", "no re-plan facts were loaded"),
        Some(r) if r.limit == 0 => fail(
            "replan_allowed",
            "automatic re-plans are off (policy replan.max_per_case = 0)",
        ),
        Some(r) if r.done >= r.limit => fail(
            "replan_allowed",
            format!(
                "the case has had {} automatic re-plan(s), the policy's limit (replan.max_per_case = {}); a person decides now",
                r.done, r.limit
            ),
        ),
        Some(r) if !r.rolled_back_after_failed_verification => fail(
            "replan_allowed",
            "the current plan did not fail verification and get rolled back",
        ),
        Some(_) => Ok(()),
    }
}
