//! Re-drive endpoints (issue #17, deliverable 4): an operator re-issues the
//! command the case's status waits for, when the first was lost; never in
//! another status, never while a run is in flight, never by other roles.

use reqwest::Method;
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use crate::flow::Loop;
use crate::helpers::*;

async fn redrive(app: &TestApp, path: &str, token: &str, body: Value) -> TestResponse {
    app.send(Method::POST, path, Some(token), &[], Some(body.to_string()))
        .await
}

/// Drops the case's waiting commands of `subject`: the command was lost.
async fn lose(app: &TestApp, case: Uuid, subject: &str) -> u64 {
    sqlx::query("DELETE FROM outbox WHERE case_id = $1 AND subject = $2")
        .bind(case)
        .bind(subject)
        .execute(&app.pool)
        .await
        .unwrap()
        .rows_affected()
}

#[sqlx::test]
async fn a_lost_plan_command_is_redriven_and_the_case_moves_on(pool: PgPool) {
    let lp = Loop::new(pool).await;
    let app = &lp.app;
    let case = app
        .open_case(json!({"title": "checkout slow", "tenant": "t-001", "kind": "demo"}))
        .await;
    assert_eq!(
        app.event(case, OPERATOR, "start_analysis").await.status,
        200
    );
    assert_eq!(app.event(case, ANALYST, "analysis_done").await.status, 200);
    assert_eq!(lose(app, case, "cmd.plan.generate").await, 1);
    lp.settle().await;
    assert_eq!(
        app.status(case).await,
        "PLANNING",
        "nothing plans a lost command"
    );

    let r = redrive(app, "/plan/generate", OPERATOR, json!({"case_id": case})).await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    assert_eq!(r.body["subject"], "cmd.plan.generate");
    let command: Uuid = r.body["command_id"].as_str().unwrap().parse().unwrap();
    let (kind, actor, status, meta): (String, String, String, Value) =
        sqlx::query_as("SELECT kind, actor, to_status, meta FROM case_timeline WHERE id = $1")
            .bind(
                r.body["timeline_id"]
                    .as_str()
                    .unwrap()
                    .parse::<Uuid>()
                    .unwrap(),
            )
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(
        (kind.as_str(), actor.as_str(), status.as_str()),
        ("redrive", "alice", "PLANNING")
    );
    assert_eq!(meta["redrive"], "plan.generate");
    assert_eq!(meta["command_id"], command.to_string());
    lp.settle().await;
    assert_ne!(
        app.status(case).await,
        "PLANNING",
        "the re-driven command planned the case"
    );
    // The timeline API shows the entry among the transitions, version unchanged.
    let r = app
        .send(
            Method::GET,
            &format!("/case/{case}/timeline"),
            Some(VIEWER),
            &[],
            None,
        )
        .await;
    let entries = r.body["items"].as_array().unwrap();
    let redriven = entries
        .iter()
        .find(|e| e["kind"] == "redrive")
        .expect("listed");
    assert_eq!(redriven["version"], 3);
    assert!(redriven["event"].is_null());
}

#[sqlx::test]
async fn redrives_refuse_other_statuses_roles_cases_and_bodies(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let case = app.case_in("PLANNING").await;
    for path in ["/gate/eval", "/adapter/exec", "/verify/run"] {
        let r = redrive(&app, path, OPERATOR, json!({"case_id": case})).await;
        assert_eq!(
            (r.status, r.code()),
            (409, "wrong_status"),
            "{path}: {:?}",
            r.body
        );
    }
    for token in [VIEWER, APPROVER, SERVICE, ANALYST] {
        let r = redrive(&app, "/plan/generate", token, json!({"case_id": case})).await;
        assert_eq!(
            (r.status, r.code()),
            (403, "forbidden"),
            "{token}: {:?}",
            r.body
        );
    }
    // The first command has not even been sent: nothing to re-drive yet.
    let r = redrive(&app, "/plan/generate", OPERATOR, json!({"case_id": case})).await;
    assert_eq!(
        (r.status, r.code()),
        (409, "command_pending"),
        "{:?}",
        r.body
    );
    assert_eq!(lose(&app, case, "cmd.plan.generate").await, 1);
    let r = redrive(&app, "/plan/generate", ADMIN, json!({"case_id": case})).await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    // A plan proposed since the case entered PLANNING: its fact is what
    // is missing, not a plan; planning again would offer the same one.
    lose(&app, case, "cmd.plan.generate").await;
    app.store_plan(case, "planner", None).await;
    let r = redrive(&app, "/plan/generate", OPERATOR, json!({"case_id": case})).await;
    assert_eq!((r.status, r.code()), (409, "plan_exists"), "{:?}", r.body);
    let r = redrive(
        &app,
        "/plan/generate",
        OPERATOR,
        json!({"case_id": Uuid::now_v7()}),
    )
    .await;
    assert_eq!(
        (r.status, r.code()),
        (404, "case_not_found"),
        "{:?}",
        r.body
    );
    let r = redrive(
        &app,
        "/gate/eval",
        OPERATOR,
        json!({"case_id": case, "template": "x"}),
    )
    .await;
    assert_eq!(r.status, 400, "{:?}", r.body);
    let r = redrive(
        &app,
        "/plan/generate",
        OPERATOR,
        json!({"case_id": case, "template": "Bad Name"}),
    )
    .await;
    assert_eq!((r.status, r.code()), (400, "invalid_field"), "{:?}", r.body);
    let r = app
        .send(
            Method::POST,
            "/verify/run",
            None,
            &[],
            Some(json!({"case_id": case}).to_string()),
        )
        .await;
    assert_eq!(r.status, 401);
    // Each refusal wrote nothing; the admin's re-drive is the one entry.
    let entries: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM case_timeline WHERE case_id = $1 AND kind = 'redrive'",
    )
    .bind(case)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(entries, 1);
}

#[sqlx::test]
async fn an_execution_is_never_redriven_while_a_run_is_in_flight(pool: PgPool) {
    let lp = Loop::new(pool).await;
    let plan = json!({
        "title": "observe", "environment": "staging",
        "steps": [{"action": "noop", "timeout_s": 10, "retry": 0}],
        "rollback": {"steps": []},
        "verify": {"checks": [{"metric": "latency_ms", "op": "<", "threshold": 800, "window_s": 300}]}
    });
    let (case, hash) = lp.propose(&plan).await;
    lp.approve(case).await;
    let app = &lp.app;
    assert_eq!(app.status(case).await, "EXECUTING");
    // The command was published (settled) and waits in the stream for an
    // executor: it may still arrive, so a second one is refused.
    let r = redrive(app, "/adapter/exec", OPERATOR, json!({"case_id": case})).await;
    assert_eq!(
        (r.status, r.code()),
        (409, "command_not_lost"),
        "{:?}",
        r.body
    );
    // The executor's consumer gave up on it (dead letter): now it is lost.
    sqlx::query(
        "INSERT INTO dead_letter (consumer, subject, case_id, reason, detail, payload) \
         VALUES ('executor', 'cmd.exec.run', $1, 'max_deliver_exceeded', 'test', '\\x00')",
    )
    .bind(case)
    .execute(&app.pool)
    .await
    .unwrap();
    // A run of this version exists: in flight, or ended without its fact.
    let version: i64 = sqlx::query_scalar("SELECT version FROM ops_case WHERE id = $1")
        .bind(case)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let run = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO exec_run (id, case_id, plan_hash, kind, attempt_id, case_version, status) \
         VALUES ($1, $2, $3, 'run', $4, $5, 'running')",
    )
    .bind(run)
    .bind(case)
    .bind(&hash)
    .bind(Uuid::now_v7())
    .bind(version)
    .execute(&app.pool)
    .await
    .unwrap();
    let r = redrive(app, "/adapter/exec", OPERATOR, json!({"case_id": case})).await;
    assert_eq!((r.status, r.code()), (409, "run_in_flight"), "{:?}", r.body);
    sqlx::query("UPDATE exec_run SET status = 'done', finished_at = now() WHERE id = $1")
        .bind(run)
        .execute(&app.pool)
        .await
        .unwrap();
    let r = redrive(app, "/adapter/exec", OPERATOR, json!({"case_id": case})).await;
    assert_eq!((r.status, r.code()), (409, "run_exists"), "{:?}", r.body);
    // No run, the command dead-lettered: the re-drive sends the current plan.
    sqlx::query("DELETE FROM exec_run WHERE id = $1")
        .bind(run)
        .execute(&app.pool)
        .await
        .unwrap();
    let r = redrive(app, "/adapter/exec", OPERATOR, json!({"case_id": case})).await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    assert_eq!(r.body["subject"], "cmd.exec.run");
    let payloads = app.outbox_payloads(case, "cmd.exec.run").await;
    let sent = payloads
        .iter()
        .find(|p| p["id"] == r.body["command_id"])
        .expect("the command waits in the outbox");
    assert_eq!(sent["data"]["plan_hash"], hash.as_str());
}

/// A re-driven gate evaluation judges the plan again; the record keeps
/// both decisions (the plan's columns hold the latest).
#[sqlx::test]
async fn a_reevaluated_gate_keeps_both_decisions_in_the_provenance(pool: PgPool) {
    let lp = Loop::new(pool)
        .await
        .with_cluster(&[("payments", "api")])
        .await;
    // An unknown namespace is prod: people must approve, the case waits.
    let plan = json!({
        "title": "restart api", "environment": "prod",
        "steps": [{"action": "k8s.rollout", "params": {"namespace": "payments", "deployment": "api", "restart": true},
                   "timeout_s": 600, "retry": 1}],
        "rollback": {"steps": []},
        "verify": {"checks": [{"metric": "latency_ms", "op": "<", "threshold": 800, "window_s": 300}]}
    });
    let (case, hash) = lp.propose(&plan).await;
    let app = &lp.app;
    assert_eq!(app.status(case).await, "WAIT_GATE");
    let r = redrive(app, "/gate/eval", OPERATOR, json!({"case_id": case})).await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    lp.settle().await;
    assert_eq!(app.status(case).await, "WAIT_GATE");
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
    let gates: Vec<&Value> = r.body["chain"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["stage"] == "gate")
        .collect();
    assert_eq!(gates.len(), 2, "{:#?}", r.body["chain"]);
    for g in &gates {
        assert_eq!(g["plan_hash"], hash.as_str());
        assert_eq!(g["verdict"], "require_approvers");
    }
    assert!(gates[0]["at"].as_str().unwrap() < gates[1]["at"].as_str().unwrap());
}
