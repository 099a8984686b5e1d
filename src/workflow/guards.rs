//! Guards: one small pure function per rule of DESIGN §2, named after it.
//! All guards of a move are evaluated so a rejection lists every failure.

use std::collections::BTreeSet;

use super::types::{ApprovalKind, Facts, GuardFailure, Judgement};

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
    let for_plan = facts.approvals.iter().filter(|a| a.plan_hash == plan.hash);
    if for_plan.clone().any(|a| a.kind == ApprovalKind::Auto) {
        return Ok(());
    }
    let mut humans: BTreeSet<&str> = for_plan
        .filter(|a| a.kind == ApprovalKind::Human && a.approver != plan.author)
        .map(|a| a.approver.as_str())
        .collect();
    if let Some(j) = &facts.judgement
        && j.plan_hash.as_ref() == Some(&plan.hash)
        && j.actor != plan.author
    {
        humans.insert(j.actor.as_str());
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
