//! Re-plan with evidence (issue #20, DESIGN §2 `replan`), over real NATS
//! and PostgreSQL with a fake OpenAI-compatible server: after a failed
//! verification's rollback the orchestrator asks for another plan with the
//! figures, at most the policy's number of times; with re-plans off the
//! case parks at once, as before.

use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use crate::fake_llm::{FakeLlm, Reply};
use crate::flow::Loop;
use crate::helpers::service;
use crate::walking_skeleton::{degraded_case, ingest_metric};

/// A restart of `svc` checked against p95 < 300 ms; `timeout_s` tells the
/// two plans apart (another hash).
fn restart(svc: &str, title: &str, timeout_s: u64) -> Value {
    json!({
        "title": title, "environment": "staging", "risk_score": 0.1,
        "rationale": "p95 latency is high; a restart clears stuck workers",
        "steps": [{"action": "script.exec", "params": {"script": "restart-service.sh", "args": ["--service", svc]},
                   "timeout_s": timeout_s, "retry": 0}],
        "rollback": {"steps": [{"action": "script.exec",
                                "params": {"script": "restart-service.sh", "args": ["--service", svc, "--undo"]},
                                "timeout_s": 30, "retry": 0}]},
        "verify": {"checks": [{"resource": svc, "metric": "latency_p95_ms", "op": "<", "threshold": 300, "window_s": 60}]}
    })
}

struct Run {
    lp: Loop,
    fake: FakeLlm,
    case: Uuid,
}

/// A degraded service whose latency stays at 950 ms whatever is done; the
/// LLM answers `plans(service)` in turn.
async fn breaching(pool: PgPool, replans: u32, plans: impl Fn(&str) -> Vec<Value>) -> Run {
    let svc = service();
    let plans = plans(&svc);
    let fake = FakeLlm::start(
        plans
            .iter()
            .map(|p| Reply::Content(p.to_string()))
            .collect(),
    )
    .await;
    let llm =
        opsloop::planner::llm::LlmPlanner::from_settings(&crate::llm::settings(&fake.base_url))
            .unwrap()
            .unwrap();
    let lp = Loop::full_with_llm(pool, llm).await.with_replans(replans);
    ingest_metric(&lp, &svc, "latency_p95_ms", 950.0).await;
    let case = degraded_case(&lp, &svc).await;
    lp.settle().await;
    Run { lp, fake, case }
}

impl Run {
    async fn entries(&self) -> Vec<(String, Option<String>, Option<String>, Option<String>)> {
        sqlx::query_as(
            "SELECT kind, event, to_status, reason FROM case_timeline WHERE case_id = $1 ORDER BY seq",
        )
        .bind(self.case)
        .fetch_all(&self.lp.app.pool)
        .await
        .unwrap()
    }

    async fn runs(&self) -> Vec<(String, String)> {
        crate::walking_skeleton::runs(&self.lp, self.case).await
    }

    fn context(&self, request: usize) -> Value {
        let r = &self.fake.requests()[request];
        serde_json::from_str(r["messages"][1]["content"].as_str().unwrap()).unwrap()
    }
}

#[sqlx::test]
async fn one_automatic_replan_with_the_figures_then_parked(pool: PgPool) {
    let run = breaching(pool, 1, |svc| {
        vec![
            restart(svc, "Restart the service", 30),
            restart(svc, "Restart the service with a longer timeout", 60),
        ]
    })
    .await;
    assert_eq!(run.lp.app.status(run.case).await, "PARKED");
    // Two plans, each run, verified, breached and rolled back.
    assert_eq!(
        run.runs().await,
        [
            ("run".into(), "done".into()),
            ("rollback".into(), "rolled_back".into()),
            ("run".into(), "done".into()),
            ("rollback".into(), "rolled_back".into())
        ]
    );
    assert_eq!(run.fake.requests().len(), 2);
    // The second request carries the figures of the first plan's failure.
    let feedback = run.context(1)["feedback"].as_str().unwrap().to_string();
    for part in [
        "plan \"Restart the service\"",
        "failed verification (breach) over 60 s",
        "latency_p95_ms avg 950.0 (< 300: breach)",
        "it was rolled back",
    ] {
        assert!(feedback.contains(part), "{part:?} not in {feedback:?}");
    }
    assert!(run.context(0)["feedback"].is_null());
    let entries = run.entries().await;
    let replans: Vec<_> = entries
        .iter()
        .filter(|(_, e, _, _)| e.as_deref() == Some("replan"))
        .collect();
    // One accepted (PARKED -> PLANNING, by the orchestrator), then one
    // refused by the policy's limit: the case stays parked for a person.
    assert_eq!(replans.len(), 2, "{entries:#?}");
    assert_eq!(
        (replans[0].0.as_str(), replans[0].2.as_deref()),
        ("transition", Some("PLANNING"))
    );
    assert_eq!(replans[1].0, "rejected");
    let (actor, code, meta): (String, String, Value) = sqlx::query_as(
        "SELECT actor, rejection_code, meta FROM case_timeline WHERE case_id = $1 AND kind = 'rejected' \
         AND event = 'replan'",
    )
    .bind(run.case)
    .fetch_one(&run.lp.app.pool)
    .await
    .unwrap();
    assert_eq!(
        (actor.as_str(), code.as_str()),
        ("orchestrator", "guard_failed")
    );
    assert!(
        meta.to_string()
            .contains("the policy's limit (replan.max_per_case = 1)"),
        "{meta}"
    );
    assert_eq!(run.lp.app.park_reason(run.case).await, "breach");
}

#[sqlx::test]
async fn with_replans_off_a_rolled_back_case_parks_at_once(pool: PgPool) {
    let run = breaching(pool, 0, |svc| vec![restart(svc, "Restart the service", 30)]).await;
    assert_eq!(run.lp.app.status(run.case).await, "PARKED");
    assert_eq!(run.fake.requests().len(), 1);
    assert!(
        run.entries()
            .await
            .iter()
            .all(|(_, e, _, _)| e.as_deref() != Some("replan"))
    );
}

/// Only the orchestrator re-plans: over HTTP nobody may send `replan`,
/// not an operator, an admin or any worker's identity.
#[sqlx::test]
async fn nobody_sends_replan_over_http(pool: PgPool) {
    use crate::helpers::*;
    let app = TestApp::new(pool).await;
    let case = app.case_in("PARKED").await;
    for token in [OPERATOR, ADMIN, SERVICE, EXECUTOR, VERIFIER] {
        let r = app.event(case, token, "replan").await;
        assert_eq!(
            (r.status, r.code()),
            (403, "forbidden"),
            "{token}: {:?}",
            r.body
        );
    }
    assert_eq!(app.status(case).await, "PARKED");
}
