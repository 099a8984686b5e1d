use proptest::prelude::*;
use rstest::rstest;
use strum::IntoEnumIterator;

use super::*;

const H1: &str = "1111111111111111111111111111111111111111111111111111111111111111";
const H2: &str = "2222222222222222222222222222222222222222222222222222222222222222";
const D1: &str = "d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1";
const D2: &str = "d2d2d2d2d2d2d2d2d2d2d2d2d2d2d2d2d2d2d2d2d2d2d2d2d2d2d2d2d2d2d2d2";

fn h(hash: &str) -> PlanHash {
    hash.parse().unwrap()
}

fn d(digest: &str) -> DryRunDigest {
    digest.parse().unwrap()
}

/// A stored dry run of plan `hash` with `digest`.
fn dryrun(hash: &str, digest: &str, verdict: DryRunVerdict) -> Option<DryRunFact> {
    Some(DryRunFact {
        plan_hash: h(hash),
        digest: d(digest),
        verdict,
    })
}

fn plan(hash: &str) -> PlanFact {
    PlanFact {
        hash: h(hash),
        author: "planner".into(),
        schema_valid: true,
        complete: true,
        has_rollback: true,
    }
}

/// Facts under which every guard of `event`'s moves holds: the recorded
/// verification result is a failure for `verify_failed`, a pass otherwise.
fn good_for(event: EventKind) -> Facts {
    match event {
        EventKind::VerifyFailed => Facts {
            verify_passed: Some(false),
            ..all_good()
        },
        EventKind::DryrunFailed => Facts {
            dryrun: dryrun(H1, D1, DryRunVerdict::Failed),
            ..all_good()
        },
        EventKind::GateVote => one_of_two(),
        EventKind::Replan => Facts {
            replan: Some(ReplanFact {
                limit: 1,
                done: 0,
                rolled_back_after_failed_verification: true,
            }),
            ..all_good()
        },
        _ => all_good(),
    }
}

/// Bob's approval of the current plan and dry run, the first of two.
fn one_of_two() -> Facts {
    Facts {
        approvals: vec![],
        required_approvers: Some(2),
        judgement: Some(Judgement {
            actor: "bob".into(),
            plan_hash: Some(h(H1)),
            dryrun_digest: Some(d(D1)),
        }),
        ..all_good()
    }
}

/// Facts under which every guard of every move but `verify_failed` holds.
fn all_good() -> Facts {
    Facts {
        reason: Some("duplicate of INC-7".into()),
        park_reason: Some("verify breach".into()),
        plan: Some(plan(H1)),
        dryrun: dryrun(H1, D1, DryRunVerdict::Passed),
        approvals: vec![ApprovalFact {
            plan_hash: h(H1),
            approver: "gatekeeper".into(),
            kind: ApprovalKind::Auto,
            dryrun_digest: Some(d(D1)),
        }],
        required_approvers: Some(1),
        judgement: None,
        exec: Some(ExecFact {
            plan_hash: h(H1),
            all_steps_succeeded: true,
        }),
        verify_passed: Some(true),
        auto_rollback_allowed: true,
        freeze: None,
        fact: None,
        replan: None,
    }
}

/// The whole table of DESIGN §2: (from, event) -> (to, effects).
fn table() -> Vec<(Status, EventKind, Status, Vec<Effect>)> {
    use EventKind as E;
    use Status as S;
    let mut rows = vec![
        (
            S::New,
            E::StartAnalysis,
            S::Analyzing,
            vec![Effect::RunAnalysis],
        ),
        (
            S::Analyzing,
            E::AnalysisDone,
            S::Planning,
            vec![Effect::GeneratePlan { feedback: None }],
        ),
        (
            S::Planning,
            E::PlanReady,
            S::WaitGate,
            vec![Effect::DryRun { plan_hash: h(H1) }],
        ),
        (S::Planning, E::PlanFailed, S::Parked, vec![]),
        (
            S::WaitGate,
            E::DryrunDone,
            S::WaitGate,
            vec![Effect::EvaluateGate { plan_hash: h(H1) }],
        ),
        (S::WaitGate, E::DryrunFailed, S::Parked, vec![]),
        (
            S::WaitGate,
            E::GateApproved,
            S::Executing,
            vec![Effect::Execute { plan_hash: h(H1) }],
        ),
        (S::WaitGate, E::GateVote, S::WaitGate, vec![]),
        (S::WaitGate, E::GateRejected, S::Parked, vec![]),
        (
            S::Executing,
            E::ExecDone,
            S::Verifying,
            vec![Effect::Verify { plan_hash: h(H1) }],
        ),
        (S::Executing, E::ExecFailed, S::Parked, vec![]),
        (S::Verifying, E::VerifyPass, S::Closed, vec![]),
        (
            S::Verifying,
            E::VerifyFailed,
            S::Parked,
            vec![Effect::Rollback { plan_hash: h(H1) }],
        ),
        (
            S::Parked,
            E::Resume,
            S::Planning,
            vec![Effect::GeneratePlan {
                feedback: Some("verify breach".into()),
            }],
        ),
    ];
    rows.push((
        S::Parked,
        E::Replan,
        S::Planning,
        vec![Effect::GeneratePlan {
            feedback: Some("duplicate of INC-7".into()),
        }],
    ));
    for from in [S::New, S::Analyzing, S::Planning, S::WaitGate, S::Parked] {
        rows.push((from, E::Dismiss, S::Closed, vec![]));
    }
    rows
}

#[test]
fn every_pair_is_accepted_exactly_as_the_table_says() {
    let table = table();
    for from in Status::iter() {
        for event in EventKind::iter() {
            let facts = good_for(event);
            let got = decide(from, event, &facts).map(|d| (d.to, d.effects));
            match table.iter().find(|(f, e, _, _)| *f == from && *e == event) {
                Some((_, _, to, effects)) => {
                    assert_eq!(got, Ok((*to, effects.clone())), "{from} + {event}")
                }
                None => assert_eq!(
                    got,
                    Err(Rejection::IllegalTransition { from, event }),
                    "{from} + {event} must be illegal"
                ),
            }
        }
    }
}

#[test]
fn closed_accepts_nothing() {
    for event in EventKind::iter() {
        assert!(matches!(
            decide(Status::Closed, event, &all_good()),
            Err(Rejection::IllegalTransition { .. })
        ));
    }
}

fn failed_guards(status: Status, event: EventKind, facts: &Facts) -> Vec<String> {
    match decide(status, event, facts) {
        Err(Rejection::GuardFailed { failures, .. }) => {
            failures.iter().map(|g| g.guard.to_string()).collect()
        }
        other => panic!("expected a guard failure, got {other:?}"),
    }
}

#[rstest]
#[case::replan_off(Status::Parked, EventKind::Replan, Facts { replan: Some(ReplanFact { limit: 0, done: 0, rolled_back_after_failed_verification: true }), ..all_good() }, vec!["replan_allowed"])]
#[case::replan_past_the_limit(Status::Parked, EventKind::Replan, Facts { replan: Some(ReplanFact { limit: 1, done: 1, rolled_back_after_failed_verification: true }), ..all_good() }, vec!["replan_allowed"])]
#[case::replan_without_a_rollback(Status::Parked, EventKind::Replan, Facts { replan: Some(ReplanFact { limit: 2, done: 0, rolled_back_after_failed_verification: false }), ..all_good() }, vec!["replan_allowed"])]
#[case::replan_without_facts(Status::Parked, EventKind::Replan, all_good(), vec!["replan_allowed"])]
#[case::plan_ready_without_plan(Status::Planning, EventKind::PlanReady, Facts { plan: None, ..all_good() }, vec!["plan_present"])]
#[case::plan_ready_schema_invalid(Status::Planning, EventKind::PlanReady, Facts { plan: Some(PlanFact { schema_valid: false, ..plan(H1) }), ..all_good() }, vec!["plan_schema_valid"])]
#[case::plan_ready_incomplete(Status::Planning, EventKind::PlanReady, Facts { plan: Some(PlanFact { complete: false, schema_valid: false, ..plan(H1) }), ..all_good() }, vec!["plan_schema_valid", "plan_complete"])]
#[case::no_execution_without_approval(Status::WaitGate, EventKind::GateApproved, Facts { approvals: vec![], ..all_good() }, vec!["approval_for_current_plan"])]
#[case::approval_of_older_hash_does_not_count(Status::WaitGate, EventKind::GateApproved, Facts { plan: Some(plan(H2)), ..all_good() }, vec!["approval_for_current_plan"])]
#[case::human_judged_another_plan(Status::WaitGate, EventKind::GateApproved, Facts { approvals: vec![], judgement: Some(Judgement { actor: "bob".into(), plan_hash: Some(h(H2)), dryrun_digest: Some(d(D1)) }), ..all_good() }, vec!["judged_plan_is_current", "approval_for_current_plan"])]
#[case::author_cannot_approve(Status::WaitGate, EventKind::GateApproved, Facts { approvals: vec![], judgement: Some(Judgement { actor: "planner".into(), plan_hash: Some(h(H1)), dryrun_digest: Some(d(D1)) }), ..all_good() }, vec!["approver_is_not_author", "approval_for_current_plan"])]
#[case::quorum_of_two_needs_two(Status::WaitGate, EventKind::GateApproved, Facts { approvals: vec![], required_approvers: Some(2), judgement: Some(Judgement { actor: "bob".into(), plan_hash: Some(h(H1)), dryrun_digest: Some(d(D1)) }), ..all_good() }, vec!["approval_for_current_plan"])]
#[case::same_person_twice_is_one(Status::WaitGate, EventKind::GateApproved, Facts { approvals: vec![ApprovalFact { plan_hash: h(H1), approver: "bob".into(), kind: ApprovalKind::Human, dryrun_digest: Some(d(D1)) }], required_approvers: Some(2), judgement: Some(Judgement { actor: "bob".into(), plan_hash: Some(h(H1)), dryrun_digest: Some(d(D1)) }), ..all_good() }, vec!["approval_for_current_plan"])]
#[case::judged_an_older_dry_run(Status::WaitGate, EventKind::GateApproved, Facts { approvals: vec![], judgement: Some(Judgement { actor: "bob".into(), plan_hash: Some(h(H1)), dryrun_digest: Some(d(D2)) }), ..all_good() }, vec!["judged_dryrun_is_current", "approval_for_current_plan"])]
#[case::judged_without_naming_the_dry_run(Status::WaitGate, EventKind::GateApproved, Facts { approvals: vec![], judgement: Some(Judgement { actor: "bob".into(), plan_hash: Some(h(H1)), dryrun_digest: None }), ..all_good() }, vec!["judged_dryrun_is_current", "approval_for_current_plan"])]
#[case::a_new_dry_run_voids_earlier_votes(Status::WaitGate, EventKind::GateApproved, Facts { approvals: vec![ApprovalFact { plan_hash: h(H1), approver: "alice".into(), kind: ApprovalKind::Human, dryrun_digest: Some(d(D1)) }], required_approvers: Some(2), dryrun: dryrun(H1, D2, DryRunVerdict::Passed), judgement: Some(Judgement { actor: "bob".into(), plan_hash: Some(h(H1)), dryrun_digest: Some(d(D2)) }), ..all_good() }, vec!["approval_for_current_plan"])]
#[case::an_automatic_approval_of_an_older_dry_run(Status::WaitGate, EventKind::GateApproved, Facts { dryrun: dryrun(H1, D2, DryRunVerdict::Passed), ..all_good() }, vec!["approval_for_current_plan"])]
#[case::a_failed_dry_run_is_approved_by_no_one(Status::WaitGate, EventKind::GateApproved, Facts { dryrun: dryrun(H1, D1, DryRunVerdict::Failed), ..all_good() }, vec!["approval_for_current_plan"])]
#[case::dry_run_of_another_plan(Status::WaitGate, EventKind::DryrunDone, Facts { dryrun: dryrun(H2, D1, DryRunVerdict::Passed), ..all_good() }, vec!["dryrun_of_current_plan"])]
#[case::dry_run_not_stored(Status::WaitGate, EventKind::DryrunDone, Facts { dryrun: None, ..all_good() }, vec!["dryrun_of_current_plan"])]
#[case::dry_run_done_when_it_failed(Status::WaitGate, EventKind::DryrunDone, Facts { dryrun: dryrun(H1, D1, DryRunVerdict::Failed), ..all_good() }, vec!["dryrun_of_current_plan"])]
#[case::dry_run_failed_when_it_passed(Status::WaitGate, EventKind::DryrunFailed, all_good(), vec!["dryrun_of_current_plan"])]
#[case::a_vote_that_meets_the_quorum_opens_the_gate_instead(Status::WaitGate, EventKind::GateVote, Facts { required_approvers: Some(1), ..one_of_two() }, vec!["vote_short_of_quorum"])]
#[case::a_vote_by_no_person(Status::WaitGate, EventKind::GateVote, Facts { judgement: None, ..one_of_two() }, vec!["vote_short_of_quorum"])]
#[case::a_vote_on_an_unevaluated_gate(Status::WaitGate, EventKind::GateVote, Facts { required_approvers: None, ..one_of_two() }, vec!["vote_short_of_quorum"])]
#[case::a_vote_by_the_author(Status::WaitGate, EventKind::GateVote, Facts { judgement: Some(Judgement { actor: "planner".into(), plan_hash: Some(h(H1)), dryrun_digest: Some(d(D1)) }), ..one_of_two() }, vec!["approver_is_not_author"])]
#[case::a_vote_on_an_older_dry_run(Status::WaitGate, EventKind::GateVote, Facts { judgement: Some(Judgement { actor: "bob".into(), plan_hash: Some(h(H1)), dryrun_digest: Some(d(D2)) }), ..one_of_two() }, vec!["judged_dryrun_is_current"])]
#[case::inside_a_change_freeze(Status::WaitGate, EventKind::GateApproved, Facts { freeze: Some("release".into()), ..all_good() }, vec!["outside_change_freeze"])]
#[case::reject_other_plan(Status::WaitGate, EventKind::GateRejected, Facts { judgement: Some(Judgement { actor: "bob".into(), plan_hash: Some(h(H2)), dryrun_digest: Some(d(D1)) }), ..all_good() }, vec!["judged_plan_is_current"])]
#[case::no_person_opens_an_unevaluated_gate(Status::WaitGate, EventKind::GateApproved, Facts { approvals: vec![], required_approvers: None, judgement: Some(Judgement { actor: "bob".into(), plan_hash: Some(h(H1)), dryrun_digest: Some(d(D1)) }), ..all_good() }, vec!["approval_for_current_plan"])]
#[case::exec_done_without_run(Status::Executing, EventKind::ExecDone, Facts { exec: None, ..all_good() }, vec!["execution_succeeded"])]
#[case::exec_done_with_failed_step(Status::Executing, EventKind::ExecDone, Facts { exec: Some(ExecFact { plan_hash: h(H1), all_steps_succeeded: false }), ..all_good() }, vec!["execution_succeeded"])]
#[case::exec_done_of_other_plan(Status::Executing, EventKind::ExecDone, Facts { exec: Some(ExecFact { plan_hash: h(H2), all_steps_succeeded: true }), ..all_good() }, vec!["execution_succeeded"])]
#[case::verify_pass_without_result(Status::Verifying, EventKind::VerifyPass, Facts { verify_passed: None, ..all_good() }, vec!["verification_passed"])]
#[case::verify_pass_with_fail_result(Status::Verifying, EventKind::VerifyPass, Facts { verify_passed: Some(false), ..all_good() }, vec!["verification_passed"])]
#[case::dismiss_without_reason(Status::New, EventKind::Dismiss, Facts { reason: None, ..all_good() }, vec!["reason_given"])]
#[case::dismiss_with_blank_reason(Status::Parked, EventKind::Dismiss, Facts { reason: Some("  ".into()), ..all_good() }, vec!["reason_given"])]
fn guard_fails(
    #[case] status: Status,
    #[case] event: EventKind,
    #[case] facts: Facts,
    #[case] expected: Vec<&'static str>,
) {
    assert_eq!(failed_guards(status, event, &facts), expected);
}

#[rstest]
#[case::one_human_approver(Facts { approvals: vec![], judgement: Some(Judgement { actor: "bob".into(), plan_hash: Some(h(H1)), dryrun_digest: Some(d(D1)) }), ..all_good() })]
#[case::second_distinct_approver_meets_quorum(Facts { approvals: vec![ApprovalFact { plan_hash: h(H1), approver: "alice".into(), kind: ApprovalKind::Human, dryrun_digest: Some(d(D1)) }], required_approvers: Some(2), judgement: Some(Judgement { actor: "bob".into(), plan_hash: Some(h(H1)), dryrun_digest: Some(d(D1)) }), ..all_good() })]
#[case::automatic_approval(all_good())]
#[case::a_plan_without_dry_run_and_its_approvals(Facts { dryrun: None, approvals: vec![], judgement: Some(Judgement { actor: "bob".into(), plan_hash: Some(h(H1)), dryrun_digest: None }), ..all_good() })]
fn gate_opens(#[case] facts: Facts) {
    assert_eq!(
        decide(Status::WaitGate, EventKind::GateApproved, &facts).map(|d| d.to),
        Ok(Status::Executing)
    );
}

#[test]
fn a_vote_counts_its_person_and_says_how_many_are_missing() {
    let vote = decide(Status::WaitGate, EventKind::GateVote, &one_of_two()).unwrap();
    assert_eq!(vote.to, Status::WaitGate);
    assert!(vote.record_approval);
    assert_eq!(
        vote.tally,
        Some(Tally {
            count: 1,
            required: 2
        })
    );
    assert!(vote.note.contains("1 of 2"), "{}", vote.note);
    let again = Facts {
        approvals: vec![ApprovalFact {
            plan_hash: h(H1),
            approver: "bob".into(),
            kind: ApprovalKind::Human,
            dryrun_digest: Some(d(D1)),
        }],
        ..one_of_two()
    };
    assert!(already_voted(&again, "bob") && !already_voted(&again, "carol"));
    let on_older = Facts {
        dryrun: dryrun(H1, D2, DryRunVerdict::Passed),
        ..again
    };
    assert!(
        !already_voted(&on_older, "bob"),
        "a new dry run voids the vote"
    );
}

#[test]
fn verify_failed_rolls_back_only_when_plan_has_one_and_policy_allows() {
    let no_rollback = Facts {
        plan: Some(PlanFact {
            has_rollback: false,
            ..plan(H1)
        }),
        ..good_for(EventKind::VerifyFailed)
    };
    let not_allowed = Facts {
        auto_rollback_allowed: false,
        ..good_for(EventKind::VerifyFailed)
    };
    for facts in [no_rollback, not_allowed] {
        assert_eq!(
            decide(Status::Verifying, EventKind::VerifyFailed, &facts).map(|d| (d.to, d.effects)),
            Ok((Status::Parked, vec![]))
        );
    }
}

#[test]
fn statuses_and_events_use_the_wire_names() {
    assert_eq!(Status::WaitGate.to_string(), "WAIT_GATE");
    assert_eq!("PARKED".parse::<Status>(), Ok(Status::Parked));
    assert_eq!(
        serde_json::to_string(&EventKind::StartAnalysis).unwrap(),
        "\"start_analysis\""
    );
    assert_eq!(
        "gate_approved".parse::<EventKind>(),
        Ok(EventKind::GateApproved)
    );
}

// ---- what the orchestrator records ---------------------------------------

#[test]
fn parking_keeps_the_reason_and_leaving_clears_it() {
    let parked = decide(Status::Executing, EventKind::ExecFailed, &all_good()).unwrap();
    assert_eq!(parked.park_reason.as_deref(), Some("duplicate of INC-7"));
    let no_reason = Facts {
        reason: None,
        ..all_good()
    };
    let parked = decide(Status::Planning, EventKind::PlanFailed, &no_reason).unwrap();
    assert_eq!(parked.park_reason.as_deref(), Some("plan_failed"));
    let resumed = decide(Status::Parked, EventKind::Resume, &all_good()).unwrap();
    assert_eq!(resumed.park_reason, None);
    assert!(!resumed.note.is_empty());
}

#[rstest]
#[case::meets_the_quorum(Facts { approvals: vec![], judgement: Some(Judgement { actor: "bob".into(), plan_hash: Some(h(H1)), dryrun_digest: Some(d(D1)) }), ..all_good() }, true)]
#[case::short_of_the_quorum(Facts { approvals: vec![], required_approvers: Some(2), judgement: Some(Judgement { actor: "bob".into(), plan_hash: Some(h(H1)), dryrun_digest: Some(d(D1)) }), ..all_good() }, true)]
#[case::of_another_plan(Facts { approvals: vec![], required_approvers: Some(2), judgement: Some(Judgement { actor: "bob".into(), plan_hash: Some(h(H2)), dryrun_digest: Some(d(D1)) }), ..all_good() }, false)]
#[case::by_the_author(Facts { approvals: vec![], required_approvers: Some(2), judgement: Some(Judgement { actor: "planner".into(), plan_hash: Some(h(H1)), dryrun_digest: Some(d(D1)) }), ..all_good() }, false)]
#[case::automatic(all_good(), false)]
fn a_persons_approval_is_recorded_when_it_counts(#[case] facts: Facts, #[case] recorded: bool) {
    let got = match decide(Status::WaitGate, EventKind::GateApproved, &facts) {
        Ok(d) => d.record_approval,
        Err(Rejection::GuardFailed {
            record_approval, ..
        }) => record_approval,
        Err(other) => panic!("{other:?}"),
    };
    assert_eq!(got, recorded);
}

// ---- stale facts ---------------------------------------------------------

fn from_worker(expected_version: i64, plan_hash: Option<&str>) -> Facts {
    Facts {
        fact: Some(FactRef {
            expected_version: Some(expected_version),
            case_version: 5,
            plan_hash: plan_hash.map(h),
        }),
        ..all_good()
    }
}

#[rstest]
#[case::about_an_older_version(Status::Executing, EventKind::ExecDone, from_worker(4, Some(H1)))]
#[case::about_another_plan(Status::Executing, EventKind::ExecDone, from_worker(5, Some(H2)))]
#[case::proposing_a_plan_that_is_not_current(
    Status::Planning,
    EventKind::PlanReady,
    from_worker(5, Some(H2))
)]
#[case::approving_a_plan_that_is_not_current(
    Status::WaitGate,
    EventKind::GateApproved,
    from_worker(5, Some(H2))
)]
#[case::verifying_another_plan(
    Status::Verifying,
    EventKind::VerifyFailed,
    from_worker(5, Some(H2))
)]
#[case::about_a_plan_when_there_is_none(Status::Executing, EventKind::ExecFailed, Facts { plan: None, ..from_worker(5, Some(H1)) })]
fn a_stale_fact_is_rejected_as_stale(
    #[case] status: Status,
    #[case] event: EventKind,
    #[case] facts: Facts,
) {
    assert!(matches!(
        decide(status, event, &facts),
        Err(Rejection::StaleFact { .. })
    ));
}

#[rstest]
#[case::same_version_and_plan(from_worker(5, Some(H1)))]
#[case::a_fact_about_no_plan(from_worker(5, None))]
fn a_current_fact_is_decided_as_usual(#[case] facts: Facts) {
    assert_eq!(
        decide(Status::Executing, EventKind::ExecDone, &facts).map(|d| d.to),
        Ok(Status::Verifying)
    );
}

// ---- properties ----------------------------------------------------------

fn hash_strategy() -> impl Strategy<Value = PlanHash> {
    prop_oneof![Just(h(H1)), Just(h(H2))]
}

fn facts_strategy() -> impl Strategy<Value = Facts> {
    let plan = prop::option::of(
        (hash_strategy(), any::<bool>(), any::<bool>(), any::<bool>()).prop_map(
            |(hash, schema_valid, complete, has_rollback)| PlanFact {
                hash,
                author: "planner".into(),
                schema_valid,
                complete,
                has_rollback,
            },
        ),
    );
    let approval = (
        hash_strategy(),
        prop_oneof![Just("alice"), Just("bob"), Just("planner")],
        prop_oneof![Just(ApprovalKind::Auto), Just(ApprovalKind::Human)],
        digest_strategy(),
    )
        .prop_map(|(plan_hash, approver, kind, dryrun_digest)| ApprovalFact {
            plan_hash,
            approver: approver.into(),
            kind,
            dryrun_digest,
        });
    let judgement = prop::option::of(
        (
            hash_strategy(),
            prop_oneof![Just("alice"), Just("bob"), Just("planner")],
            digest_strategy(),
        )
            .prop_map(|(plan_hash, actor, dryrun_digest)| Judgement {
                actor: actor.into(),
                plan_hash: Some(plan_hash),
                dryrun_digest,
            }),
    );
    let dryrun = prop::option::of(
        (
            hash_strategy(),
            prop_oneof![Just(D1), Just(D2)],
            prop_oneof![Just(DryRunVerdict::Passed), Just(DryRunVerdict::Failed)],
        )
            .prop_map(|(plan_hash, digest, verdict)| DryRunFact {
                plan_hash,
                digest: d(digest),
                verdict,
            }),
    );
    let exec = prop::option::of((hash_strategy(), any::<bool>()).prop_map(
        |(plan_hash, all_steps_succeeded)| ExecFact {
            plan_hash,
            all_steps_succeeded,
        },
    ));
    (
        prop::option::of(prop_oneof![Just(String::new()), Just("why".to_string())]),
        plan,
        prop::collection::vec(approval, 0..3),
        prop::option::of(0u8..3),
        judgement,
        exec,
        prop::option::of(any::<bool>()),
        (any::<bool>(), dryrun),
    )
        .prop_map(
            |(
                reason,
                plan,
                approvals,
                required_approvers,
                judgement,
                exec,
                verify_passed,
                (rb, dryrun),
            )| {
                Facts {
                    reason,
                    park_reason: None,
                    plan,
                    dryrun,
                    approvals,
                    required_approvers,
                    judgement,
                    exec,
                    verify_passed,
                    auto_rollback_allowed: rb,
                    freeze: None,
                    fact: None,
                    replan: rb.then_some(ReplanFact {
                        limit: 1,
                        done: 0,
                        rolled_back_after_failed_verification: true,
                    }),
                }
            },
        )
}

fn digest_strategy() -> impl Strategy<Value = Option<DryRunDigest>> {
    prop_oneof![Just(None), Just(Some(d(D1))), Just(Some(d(D2)))]
}

fn event_strategy() -> impl Strategy<Value = EventKind> {
    prop::sample::select(EventKind::iter().collect::<Vec<_>>())
}

/// An oracle written independently of the guards: is the current plan
/// approved, with the dry run it has now (if any), by the gatekeeper or by
/// enough people other than its author?
fn approved_for_current_plan(facts: &Facts) -> bool {
    let Some(plan) = &facts.plan else {
        return false;
    };
    let seen_now =
        |digest: &Option<DryRunDigest>| digest.as_ref() == facts.dryrun.as_ref().map(|r| &r.digest);
    if facts.approvals.iter().any(|a| {
        a.kind == ApprovalKind::Auto && a.plan_hash == plan.hash && seen_now(&a.dryrun_digest)
    }) {
        return true;
    }
    let mut people: Vec<&str> = facts
        .approvals
        .iter()
        .filter(|a| {
            a.kind == ApprovalKind::Human && a.plan_hash == plan.hash && seen_now(&a.dryrun_digest)
        })
        .map(|a| a.approver.as_str())
        .chain(
            facts
                .judgement
                .iter()
                .filter(|j| j.plan_hash.as_ref() == Some(&plan.hash) && seen_now(&j.dryrun_digest))
                .map(|j| j.actor.as_str()),
        )
        .filter(|who| *who != plan.author)
        .collect();
    people.sort_unstable();
    people.dedup();
    facts
        .required_approvers
        .is_some_and(|r| people.len() >= usize::from(r.max(1)))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn executing_is_never_reached_without_an_approval_for_the_current_plan(
        steps in prop::collection::vec((event_strategy(), facts_strategy()), 0..40)
    ) {
        let mut status = Status::New;
        for (event, facts) in &steps {
            if let Ok(d) = decide(status, *event, facts) {
                if d.to == Status::Executing {
                    prop_assert!(approved_for_current_plan(facts), "{facts:?}");
                    let hash = facts.plan.as_ref().map(|p| p.hash.clone()).unwrap();
                    prop_assert_eq!(&d.effects, &vec![Effect::Execute { plan_hash: hash }]);
                }
                status = d.to;
            }
        }
    }

    #[test]
    fn the_gate_opens_only_with_an_approval_for_the_current_plan(facts in facts_strategy()) {
        if let Ok(d) = decide(Status::WaitGate, EventKind::GateApproved, &facts) {
            prop_assert_eq!(d.to, Status::Executing);
            prop_assert!(approved_for_current_plan(&facts), "{facts:?}");
        }
    }

    #[test]
    fn closed_is_absorbing(
        steps in prop::collection::vec((event_strategy(), facts_strategy()), 0..40)
    ) {
        let mut status = Status::New;
        for (event, facts) in &steps {
            let was_closed = status == Status::Closed;
            let result = decide(status, *event, facts);
            if was_closed {
                prop_assert!(result.is_err());
            }
            if let Ok(d) = result {
                status = d.to;
            }
        }
    }

    #[test]
    fn replaying_the_accepted_events_reproduces_the_final_status(
        steps in prop::collection::vec((event_strategy(), facts_strategy()), 0..60)
    ) {
        let mut status = Status::New;
        let mut accepted = Vec::new();
        for (event, facts) in &steps {
            if let Ok(d) = decide(status, *event, facts) {
                accepted.push((*event, facts));
                status = d.to;
            }
        }
        prop_assert_eq!(replay(accepted.iter().map(|(e, f)| (*e, *f))), Ok(status));
    }

    #[test]
    fn a_rejection_never_moves_and_a_decision_is_deterministic(
        status in prop::sample::select(Status::iter().collect::<Vec<_>>()),
        event in event_strategy(),
        facts in facts_strategy(),
    ) {
        prop_assert_eq!(decide(status, event, &facts), decide(status, event, &facts));
    }
}
