//! Golden tests: the JSON of every subject, as `docs/events.md` documents
//! it and as earlier releases wrote it, parses into the typed contract and
//! serialises back unchanged. A message already in the outbox or a stream
//! at upgrade time is one of these.

use serde_json::{Value, json};

use super::{Body, CommandMsg, Fact, Message, PlanHash, command, fact};
use crate::pubsub::Envelope;

macro_rules! golden {
    ($($subject:literal),+ $(,)?) => {
        [$(($subject, include_str!(concat!("../../tests/golden/", $subject, ".json")))),+]
    };
}

const COMMANDS: [(&str, &str); 7] = golden!(
    "cmd.analysis.run",
    "cmd.plan.generate",
    "cmd.exec.dryrun",
    "cmd.gate.eval",
    "cmd.exec.run",
    "cmd.exec.rollback",
    "cmd.verify.run",
);

const FACTS: [(&str, &str); 16] = golden!(
    "evt.case.transition.v1",
    "evt.analysis.findings.v1",
    "evt.plan.proposed.v1",
    "evt.plan.failed.v1",
    "evt.gate.pending.v1",
    "evt.plan.approved.v1",
    "evt.plan.rejected.v1",
    "evt.exec.step_result.v1",
    "evt.exec.done.v1",
    "evt.exec.failed.v1",
    "evt.exec.rolled_back.v1",
    "evt.verify.pass.v1",
    "evt.verify.failed.v1",
    "evt.case.created.v1",
    "evt.exec.dryrun.v1",
    "evt.gate.vote.v1",
);

fn round_trip<B: Body + std::fmt::Debug>(subject: &str, text: &str) -> Message<B> {
    let golden: Value = serde_json::from_str(text).unwrap();
    let envelope: Envelope = serde_json::from_value(golden.clone()).unwrap();
    let message = Message::<B>::from_envelope(&envelope)
        .unwrap_or_else(|e| panic!("{subject} does not parse: {e}"));
    assert_eq!(message.body.subject(), subject);
    let again = serde_json::to_value(message.to_envelope()).unwrap();
    assert_eq!(again, golden, "{subject} serialises differently");
    message
}

#[test]
fn every_command_subject_keeps_its_json() {
    for (subject, text) in COMMANDS {
        round_trip::<CommandMsg>(subject, text);
    }
    assert_eq!(COMMANDS.map(|c| c.0), command::ALL);
}

#[test]
fn every_fact_subject_keeps_its_json() {
    for (subject, text) in FACTS {
        round_trip::<Fact>(subject, text);
    }
}

/// The orchestrator skips `INFORMATIONAL` subjects before parsing them; that
/// list must name exactly the facts that propose no FSM event.
#[test]
fn informational_subjects_are_the_facts_without_an_event() {
    for (subject, text) in FACTS {
        let fact = round_trip::<Fact>(subject, text);
        assert_eq!(
            fact::INFORMATIONAL.contains(&subject),
            fact.body.event().is_none(),
            "{subject}"
        );
    }
}

/// Verification facts now name their plan; those written before still
/// parse (judged against the current plan), and the new field is the only
/// difference.
#[test]
fn verification_facts_add_only_their_plan_hash() {
    let hash: PlanHash = "a".repeat(64).parse().unwrap();
    for (subject, text) in &FACTS[11..13] {
        let mut message = round_trip::<Fact>(subject, text);
        assert_eq!(message.body.plan_hash(), None);
        match &mut message.body {
            Fact::VerifyPass(v) => v.plan_hash = Some(hash.clone()),
            Fact::VerifyFailed(v) => v.plan_hash = Some(hash.clone()),
            other => panic!("{other:?}"),
        }
        let mut expected: Value = serde_json::from_str(text).unwrap();
        expected["data"]["plan_hash"] = json!(hash);
        assert_eq!(
            serde_json::to_value(message.to_envelope()).unwrap(),
            expected
        );
    }
}

/// The documented dry run's digest is the one the executor would compute
/// for it, and it survives a round trip through jsonb-like reordering.
#[test]
fn a_dry_run_digest_covers_the_plan_outcome_and_artefact() {
    let (subject, text) = FACTS[14];
    let Fact::DryRun(report) = round_trip::<Fact>(subject, text).body else {
        panic!("{subject} is not a dry run");
    };
    let again = fact::DryRunReport::of(report.plan_hash.clone(), report.artefact.clone());
    assert_eq!(
        (again.outcome, &again.digest),
        (report.outcome, &report.digest)
    );
    assert_eq!(
        fact::Fact::DryRun(report.clone()).event(),
        Some(crate::workflow::EventKind::DryrunDone),
        "unavailable is not a failure"
    );
    let mut failed = report.artefact.clone();
    failed.steps[0].outcome = fact::DryRunOutcome::Failed;
    failed.steps[0].error = Some("admission webhook denied".into());
    let failed = fact::DryRunReport::of(report.plan_hash.clone(), failed);
    assert_ne!(failed.digest, report.digest);
    assert_eq!(
        fact::Fact::DryRun(failed.clone()).event(),
        Some(crate::workflow::EventKind::DryrunFailed)
    );
    assert_eq!(
        fact::Fact::DryRun(failed).reason().as_deref(),
        Some("dry run failed at step 0 (k8s.rollout): admission webhook denied")
    );
}

#[test]
fn a_break_glass_pending_fact_keeps_its_freeze() {
    let data = json!({"plan_hash": "b".repeat(64), "risk": 0.35, "reasons": ["freeze"],
                      "required_approvers": 2, "break_glass": true, "freeze": "black-friday"});
    let parsed = Fact::parse(fact::EVT_GATE_PENDING, &data).unwrap();
    assert_eq!(parsed.to_data(), data);
}

#[test]
fn bad_payloads_are_refused_with_the_reason() {
    let cases = [
        (
            fact::EVT_PLAN_PROPOSED,
            json!({"plan_hash": "nope", "plan_id": uuid::Uuid::nil(), "source": "llm"}),
        ),
        (fact::EVT_PLAN_FAILED, json!({"reason": "x".repeat(2001)})),
        (fact::EVT_PLAN_FAILED, json!({"reason": "nul\0"})),
        (fact::EVT_EXEC_DONE, json!({"reason": "no run"})),
        (command::CMD_EXEC_RUN, json!({"effect": "verify"})),
        (command::CMD_GATE_EVAL, json!([])),
    ];
    for (subject, data) in cases {
        let refused = if subject.starts_with("cmd.") {
            CommandMsg::parse(subject, &data).err()
        } else {
            Fact::parse(subject, &data).err()
        };
        assert!(
            matches!(refused, Some(super::ContractError::Invalid(_))),
            "{subject} {data}: {refused:?}"
        );
    }
    assert!(matches!(
        Fact::parse("evt.mystery.v1", &json!({})),
        Err(super::ContractError::UnknownType(_))
    ));
}

#[test]
fn a_verify_command_adds_only_its_plan_hash() {
    let (subject, text) = COMMANDS[6];
    let mut message = round_trip::<CommandMsg>(subject, text);
    let hash: PlanHash = "c".repeat(64).parse().unwrap();
    let CommandMsg::Verify(v) = &mut message.body else {
        panic!("{message:?}");
    };
    v.plan_hash = Some(hash.clone());
    let mut expected: Value = serde_json::from_str(text).unwrap();
    expected["data"]["plan_hash"] = json!(hash);
    assert_eq!(
        serde_json::to_value(message.to_envelope()).unwrap(),
        expected
    );
}
