//! The gate loop over the real NATS: plan proposed → WAIT_GATE → the
//! gatekeeper's decision → EXECUTING, pending people, or PARKED.

use opsloop::gatekeeper::policy::Policy;
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::flow::Loop;
use crate::helpers::*;

/// The deployments the plans below restart, for their dry runs.
const CLUSTER: &[(&str, &str)] = &[("shop", "api"), ("payments", "api"), ("kube-system", "api")];

fn plan(env: &str, namespace: &str) -> Value {
    json!({
        "title": "restart api", "environment": env,
        "steps": [{"action": "noop", "timeout_s": 10, "retry": 0},
                  {"action": "k8s.rollout", "params": {"namespace": namespace, "deployment": "api", "restart": true},
                   "timeout_s": 120, "retry": 0}],
        "rollback": {"steps": [{"action": "noop", "timeout_s": 10, "retry": 0}]},
        "verify": {"checks": []}
    })
}

fn low_risk() -> Value {
    json!({
        "title": "noop", "environment": "staging", "risk_score": 0.1,
        "steps": [{"action": "noop", "timeout_s": 10, "retry": 0}],
        "rollback": {"steps": [{"action": "noop", "timeout_s": 10, "retry": 0}]},
        "verify": {"checks": []}
    })
}

#[sqlx::test]
async fn a_low_risk_plan_is_approved_automatically_and_executes(pool: PgPool) {
    let lp = Loop::new(pool).await.with_cluster(CLUSTER).await;
    let (case, hash) = lp.propose(&low_risk()).await;
    assert_eq!(lp.app.status(case).await, "EXECUTING");
    let (approver, kind, approved_hash): (String, String, String) =
        sqlx::query_as("SELECT approver, kind, plan_hash FROM plan_approved")
            .fetch_one(&lp.app.pool)
            .await
            .unwrap();
    assert_eq!(
        (approver.as_str(), kind.as_str(), approved_hash),
        ("gatekeeper", "auto", hash.clone())
    );
    let (actor, judged): (String, String) = sqlx::query_as(
        "SELECT actor, meta->'facts'->'plan'->>'hash' FROM case_timeline \
         WHERE case_id = $1 AND event = 'gate_approved' AND kind = 'transition'",
    )
    .bind(case)
    .fetch_one(&lp.app.pool)
    .await
    .unwrap();
    assert_eq!(
        (actor.as_str(), judged),
        ("gatekeeper", hash),
        "the gate opened for the approved hash"
    );
}

#[sqlx::test]
async fn a_production_plan_waits_for_two_distinct_people(pool: PgPool) {
    let lp = Loop::new(pool).await.with_cluster(CLUSTER).await;
    let (case, hash) = lp.propose(&plan("prod", "shop")).await;
    assert_eq!(lp.app.status(case).await, "WAIT_GATE");
    let got = lp.app.current_plan(case).await;
    assert_eq!(got.body["gate"]["required_approvers"], 2);
    assert_eq!(got.body["gate"]["approved"], false);

    let digest = lp.app.dryrun_digest(case).await;
    let judge = json!({"event": "gate_approved", "plan_hash": hash, "dryrun_digest": digest});
    let first = lp.app.patch(case, APPROVER, "p-1", judge.clone()).await;
    assert_eq!(first.status, 202, "{:?}", first.body);
    assert_eq!(first.body["approvals"]["missing"], 1);
    assert_eq!(lp.app.status(case).await, "WAIT_GATE");
    let second = lp.app.patch(case, APPROVER2, "p-2", judge).await;
    assert_eq!(second.status, 200, "{:?}", second.body);
    assert_eq!(lp.app.status(case).await, "EXECUTING");
}

/// The hole of issue #13: the gate took the environment from the plan. A
/// plan for a namespace the operator's targets file does not put below
/// prod needs two people, whether it names no environment or says
/// staging; and a script with an argv no rule knows is never approved
/// automatically.
#[sqlx::test]
async fn the_environment_comes_from_the_targets_file_not_the_plan(pool: PgPool) {
    let lp = Loop::new(pool).await.with_cluster(CLUSTER).await;
    let mut unnamed = plan("x", "payments");
    unnamed.as_object_mut().unwrap().remove("environment");
    let script = json!({
        "title": "restart", "environment": "staging",
        "steps": [{"action": "script.exec",
                   "params": {"script": "restart-service.sh", "args": ["--undo", "--service", "checkout"]},
                   "timeout_s": 10, "retry": 0}],
        "rollback": {"steps": [{"action": "noop", "timeout_s": 10, "retry": 0}]},
        "verify": {"checks": []}
    });
    for p in [unnamed, plan("staging", "payments"), script] {
        let (case, _) = lp.propose(&p).await;
        assert_eq!(lp.app.status(case).await, "WAIT_GATE", "{p}");
        let got = lp.app.current_plan(case).await;
        assert_eq!(got.body["gate"]["required_approvers"], 2, "{}", got.body);
        let reasons = got.body["gate"]["decision"]["reasons"].to_string();
        assert!(reasons.contains("no rule of the targets file"), "{reasons}");
    }
    // The shipped file puts `shop` in staging: one approver, as before.
    let (case, _) = lp.propose(&plan("staging", "shop")).await;
    let got = lp.app.current_plan(case).await;
    assert_eq!(got.body["gate"]["required_approvers"], 1, "{}", got.body);
}

#[sqlx::test]
async fn a_plan_touching_a_forbidden_target_is_denied_and_parked(pool: PgPool) {
    let lp = Loop::new(pool).await.with_cluster(CLUSTER).await;
    let (case, _) = lp.propose(&plan("staging", "kube-system")).await;
    assert_eq!(lp.app.status(case).await, "PARKED");
    let reason = lp.app.park_reason(case).await;
    assert!(
        reason.contains("target kube-system is forbidden"),
        "{reason}"
    );
    let approvals: i64 = sqlx::query_scalar("SELECT count(*) FROM plan_approved")
        .fetch_one(&lp.app.pool)
        .await
        .unwrap();
    assert_eq!(approvals, 0);
}

/// The loop without a person: analysis done → a template plan → the gate → EXECUTING.
#[sqlx::test]
async fn a_template_plan_goes_through_the_gate_on_its_own(pool: PgPool) {
    let lp = Loop::new(pool).await.with_cluster(CLUSTER).await;
    let case = lp
        .app
        .open_case(json!({"title": "p95 high", "tenant": "t-001", "kind": "latency"}))
        .await;
    lp.app.event(case, OPERATOR, "start_analysis").await;
    lp.app.event(case, ANALYST, "analysis_done").await;
    lp.settle().await;
    assert_eq!(lp.app.status(case).await, "EXECUTING");
    let (source, author): (String, String) =
        sqlx::query_as("SELECT source, author FROM plan_proposed WHERE case_id = $1")
            .bind(case)
            .fetch_one(&lp.app.pool)
            .await
            .unwrap();
    assert_eq!((source.as_str(), author.as_str()), ("template", "planner"));
}

#[sqlx::test]
async fn without_a_matching_template_the_case_parks_with_the_reason(pool: PgPool) {
    let lp = Loop::new(pool).await.with_cluster(CLUSTER).await;
    let case = lp.app.create_case().await; // no kind, no alertname
    lp.app.event(case, OPERATOR, "start_analysis").await;
    lp.app.event(case, ANALYST, "analysis_done").await;
    lp.settle().await;
    assert_eq!(lp.app.status(case).await, "PARKED");
    let reason = lp.app.park_reason(case).await;
    assert!(reason.starts_with("no template matches"), "{reason}");
}

#[sqlx::test]
async fn a_change_freeze_needs_a_recorded_break_glass_quorum(pool: PgPool) {
    let policy: Policy = toml::from_str(
        r#"
        [[freeze_windows]]
        name = "incident-freeze"
        from = "2000-01-01T00:00:00Z"
        until = "2100-01-01T00:00:00Z"
        environments = ["staging"]
        "#,
    )
    .unwrap();
    let lp = Loop::with_policy(pool, policy)
        .await
        .with_cluster(CLUSTER)
        .await;
    let (case, hash) = lp.propose(&low_risk()).await;
    assert_eq!(
        lp.app.status(case).await,
        "WAIT_GATE",
        "even a low-risk plan waits in a freeze"
    );
    // Overriding a freeze needs a reason: without one, 400 and no vote.
    let digest = lp.app.dryrun_digest(case).await;
    let bare = json!({"event": "gate_approved", "plan_hash": hash, "dryrun_digest": digest});
    let r = lp.app.patch(case, APPROVER, "bg-0", bare).await;
    assert_eq!((r.status, r.code()), (400, "invalid_field"), "{:?}", r.body);
    assert_eq!(r.body["field"], "break_glass");
    let judge = json!({"event": "gate_approved", "plan_hash": hash, "dryrun_digest": digest,
                       "break_glass": {"reason": "checkout is down; the freeze is for releases"}});
    assert_eq!(
        lp.app
            .patch(case, APPROVER, "bg-1", judge.clone())
            .await
            .status,
        202
    );
    assert_eq!(
        lp.app.patch(case, APPROVER2, "bg-2", judge).await.status,
        200
    );
    assert_eq!(lp.app.status(case).await, "EXECUTING");
    let reasons: Vec<serde_json::Value> = sqlx::query_scalar(
        "SELECT meta #> '{request,break_glass,reason}' FROM case_timeline \
         WHERE case_id = $1 AND event IN ('gate_vote', 'gate_approved') ORDER BY seq",
    )
    .bind(case)
    .fetch_all(&lp.app.pool)
    .await
    .unwrap();
    assert_eq!(
        reasons.len(),
        2,
        "both votes are recorded with their reason"
    );
    assert!(
        reasons
            .iter()
            .all(|r| r.as_str().is_some_and(|r| r.contains("checkout is down")))
    );

    let got = lp.app.current_plan(case).await;
    assert_eq!(got.body["gate"]["decision"]["verdict"], "break_glass");
    assert_eq!(got.body["gate"]["decision"]["freeze"], "incident-freeze");
    let approvers: Vec<&str> = got.body["approvals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["approver"].as_str().unwrap())
        .collect();
    assert_eq!(
        approvers,
        ["bob", "carol"],
        "the override's approvers are recorded"
    );
}

/// A plan stored before the typed model, that the model cannot read, is
/// denied with the reason: the case parks instead of waiting at the gate.
#[sqlx::test]
async fn a_stored_plan_the_model_cannot_read_is_denied(pool: PgPool) {
    let lp = Loop::new(pool).await.with_cluster(CLUSTER).await;
    let case = lp.app.case_in("PLANNING").await;
    let mut odd = plan("staging", "shop");
    odd["steps"][1]["params"]["restart"] = json!("yes");
    let hash = {
        use sha2::{Digest, Sha256};
        hex::encode(Sha256::digest(odd.to_string().as_bytes()))
    };
    sqlx::query(
        "INSERT INTO plan_proposed (id, case_id, plan, plan_hash, source, author, schema_valid, complete) \
         VALUES ($1, $2, $3, $4, 'template', 'planner', true, true)",
    )
    .bind(uuid::Uuid::now_v7())
    .bind(case)
    .bind(&odd)
    .bind(&hash)
    .execute(&lp.app.pool)
    .await
    .unwrap();
    assert_eq!(lp.app.event(case, SERVICE, "plan_ready").await.status, 200);
    lp.settle().await;
    assert_eq!(lp.app.status(case).await, "PARKED");
    let reason: String = sqlx::query_scalar("SELECT park_reason FROM ops_case WHERE id = $1")
        .bind(case)
        .fetch_one(&lp.app.pool)
        .await
        .unwrap();
    assert!(
        reason.contains("the stored plan does not parse"),
        "{reason}"
    );
    let dead: i64 = sqlx::query_scalar("SELECT count(*) FROM dead_letter")
        .fetch_one(&lp.app.pool)
        .await
        .unwrap();
    assert_eq!(dead, 0);
}
