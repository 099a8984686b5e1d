//! `GET /case/{id}/provenance` (issue #17, deliverable 3): one ordered
//! chain from the alert to the verification, for a case that went through
//! every stage with an LLM planner that needed a repair.

use opsloop::planner::llm::LlmPlanner;
use reqwest::Method;
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use crate::fake_llm::{FakeLlm, Reply};
use crate::flow::Loop;
use crate::helpers::*;

fn plan(svc: &str) -> Value {
    json!({
        "title": format!("restart {svc}"), "environment": "staging", "risk_score": 0.1,
        "rationale": "latency rose; a restart clears stuck workers",
        "steps": [{"action": "script.exec", "params": {"script": "restart-service.sh", "args": ["--service", svc]},
                   "timeout_s": 30, "retry": 0}],
        "rollback": {"steps": [{"action": "noop", "timeout_s": 10, "retry": 0}]},
        "verify": {"checks": [{"resource": svc, "metric": "latency_p95_ms", "op": "<", "threshold": 300, "window_s": 60}]}
    })
}

#[sqlx::test]
async fn the_chain_runs_from_the_alert_to_the_verification_in_order(pool: PgPool) {
    let svc = service();
    // The first answer is prose (an invalid attempt, repaired), the second a plan.
    let fake = FakeLlm::start(vec![
        Reply::Content("Sure! I would restart the service.".into()),
        Reply::Content(plan(&svc).to_string()),
    ])
    .await;
    let llm = LlmPlanner::from_settings(&crate::llm::settings(&fake.base_url))
        .unwrap()
        .expect("configured");
    let lp = Loop::full_with_llm(pool, llm).await;
    let app = &lp.app;
    let minute = crate::walking_skeleton::this_minute();
    let r = app
        .send(
            Method::POST,
            "/metrics/ingest",
            Some(SERVICE),
            &[],
            Some(
                json!({"rows": [{"tenant": "t-001", "resource": svc, "metric": "latency_p95_ms",
                                  "bucket": minute, "avg": 120.0, "max": 130.0}]})
                .to_string(),
            ),
        )
        .await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    let alert = json!({"version": "4", "groupKey": format!("{{}}:{{service=\"{svc}\"}}"),
        "status": "firing", "receiver": "opsloop", "externalURL": "http://alertmanager:9093",
        "alerts": [{"status": "firing", "fingerprint": Uuid::new_v4().simple().to_string()[..16],
                    "labels": {"alertname": "ServiceSlow", "severity": "critical", "tenant": "t-001", "service": svc},
                    "annotations": {"summary": format!("{svc} is slow")},
                    "startsAt": minute}]});
    let r = app
        .send(
            Method::POST,
            "/signals/alertmanager",
            Some(SERVICE),
            &[],
            Some(alert.to_string()),
        )
        .await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    let case: Uuid = r.body["alerts"][0]["case_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    lp.settle().await;
    lp.approve(case).await;
    lp.settle().await;
    assert_eq!(
        app.status(case).await,
        "CLOSED",
        "{}",
        app.park_reason(case).await
    );

    let r = app
        .send(
            Method::GET,
            &format!("/case/{case}/provenance"),
            Some(VIEWER),
            &[],
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["case"]["id"], case.to_string());
    let chain = r.body["chain"].as_array().unwrap();
    let stages: Vec<&str> = chain.iter().map(|l| l["stage"].as_str().unwrap()).collect();
    assert_eq!(
        stages,
        [
            "signal",
            "findings",
            "plan_attempt",
            "plan_attempt",
            "plan",
            "dry_run",
            "gate",
            "approval",
            "execution",
            "verification"
        ],
        "{chain:#?}"
    );
    let times: Vec<&str> = chain.iter().map(|l| l["at"].as_str().unwrap()).collect();
    let parsed: Vec<chrono::DateTime<chrono::Utc>> =
        times.iter().map(|t| t.parse().unwrap()).collect();
    assert!(parsed.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    // Each link says what an auditor needs of it.
    assert_eq!(chain[0]["kind"], "signal.alertmanager");
    assert_eq!(chain[0]["data"]["alert"]["labels"]["service"], svc.as_str());
    assert_eq!(chain[2]["outcome"], "invalid");
    assert!(
        !chain[2]["errors"].as_array().unwrap().is_empty(),
        "{}",
        chain[2]
    );
    assert_eq!(chain[3]["outcome"], "valid");
    assert_eq!(chain[3]["model"], "fake-model");
    assert_eq!(chain[3]["prompt_version"], "plan-v2");
    let hash = chain[4]["plan_hash"].as_str().unwrap();
    assert_eq!(chain[3]["plan_hash"], hash);
    assert_eq!(chain[4]["source"], "llm");
    // The dry run came before the gate; the gate and the approval name it.
    assert_eq!(chain[5]["plan_hash"], hash);
    assert_eq!(chain[5]["outcome"], "ok");
    let digest = chain[5]["digest"].as_str().unwrap();
    assert!(
        chain[5]["artefact"]["steps"][0]["detail"]["stdout"]["text"]
            .as_str()
            .unwrap()
            .contains("would restart"),
        "{}",
        chain[5]
    );
    assert_eq!(chain[6]["plan_hash"], hash);
    assert_eq!(chain[6]["dryrun_digest"], digest);
    assert_eq!(chain[6]["verdict"], "auto_approve");
    assert!(
        !chain[6]["reasons"].as_array().unwrap().is_empty(),
        "{}",
        chain[6]
    );
    assert_eq!(chain[7]["plan_hash"], hash);
    assert_eq!(chain[7]["dryrun_digest"], digest);
    assert_eq!(chain[7]["kind"], "auto");
    assert_eq!(chain[8]["status"], "done");
    assert_eq!(chain[8]["steps"][0]["action"], "script.exec");
    assert!(
        chain[8]["steps"][0]["result"]["stdout"]["text"]
            .as_str()
            .unwrap()
            .contains(&svc),
        "{}",
        chain[8]
    );
    assert_eq!(chain[9]["outcome"], "pass");
    assert_eq!(chain[9]["checks"][0]["check"]["metric"], "latency_p95_ms");
    assert_eq!(chain[9]["checks"][0]["verdict"], "pass");

    // Another tenant's case, or none, is not found.
    let r = app
        .send(
            Method::GET,
            &format!("/case/{}/provenance", Uuid::now_v7()),
            Some(VIEWER),
            &[],
            None,
        )
        .await;
    assert_eq!(
        (r.status, r.code()),
        (404, "case_not_found"),
        "{:?}",
        r.body
    );
}
