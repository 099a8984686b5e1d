//! `k8s.rollout` against a fake Kubernetes API server and `gateway.flip`
//! against a fake gateway admin API, through the whole loop over the real
//! NATS and PostgreSQL: the change, its dry run, the watch, and the undo
//! that puts back the state read before the change.

use std::sync::Arc;
use std::time::Duration;

use opsloop::executor::gateway::GatewayAdapter;
use opsloop::executor::k8s::K8sAdapter;
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::fake_k8s::FakeK8s;
use crate::flow::Loop;
use crate::helpers::*;
use crate::walking_skeleton::{ingest_metric, runs, steps};

/// A loop whose executor talks to `k8s`.
async fn loop_with_k8s(pool: PgPool, k8s: &FakeK8s) -> Loop {
    let mut lp = Loop::full(pool).await;
    lp.executor_mut().register(Arc::new(K8sAdapter::new(
        Some(k8s.server.url.clone()),
        None,
    )));
    lp
}

fn template(d: &Value) -> Value {
    d["spec"]["template"].clone()
}

/// The shipped restart-deployment template, chosen by the alert name:
/// dry run, patch, watch to completion, verify, CLOSED.
#[sqlx::test]
async fn a_rollout_restart_is_dry_run_then_watched_to_completion(pool: PgPool) {
    let k8s = FakeK8s::start(Duration::from_millis(300)).await;
    let name = unique("api");
    k8s.add_deployment("shop", &name, "shop/api:1.4", 3);
    let lp = loop_with_k8s(pool, &k8s).await;
    // The template's check spans 5 minutes; half of them need data.
    sqlx::query(
        "INSERT INTO metric_1m (tenant, resource, metric, ts, avg, max) \
         SELECT 't-001', $1, 'error_rate', date_trunc('minute', now()) - make_interval(mins => m), 0.001, 0.002 \
         FROM generate_series(0, 5) m",
    )
    .bind(&name)
    .execute(&lp.app.pool)
    .await
    .unwrap();
    let case = lp
        .app
        .open_case(json!({"title": "api crash-loops", "tenant": "t-001", "kind": "crashloop",
                          "labels": {"alertname": "KubePodCrashLooping", "namespace": "shop", "deployment": name}}))
        .await;
    assert_eq!(
        lp.app.event(case, OPERATOR, "start_analysis").await.status,
        200
    );
    lp.settle().await;
    lp.approve(case).await;
    assert_eq!(
        lp.app.status(case).await,
        "CLOSED",
        "{}",
        lp.app.park_reason(case).await
    );

    let d = k8s.deployment("shop", &name);
    assert!(
        d["spec"]["template"]["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"]
            .is_string(),
        "{d}"
    );
    assert_eq!(d["metadata"]["generation"], 2);
    // The dry run before the gate, the executor's own dry run of the same
    // patch at execution, then the real patch, then the watch.
    let requests = k8s.requests();
    let patches: Vec<&String> = requests.iter().filter(|r| r.starts_with("PATCH")).collect();
    assert_eq!(patches.len(), 3, "{requests:?}");
    assert!(patches[0].contains("dryRun=All"), "{requests:?}");
    assert!(patches[1].contains("dryRun=All"), "{requests:?}");
    assert!(!patches[2].contains("dryRun"), "{requests:?}");
    // What the approvers were shown: the pod template's diff, recorded
    // before the gate decided.
    let plan = lp.app.current_plan(case).await;
    let dry_run = &plan.body["dry_run"];
    assert_eq!(dry_run["outcome"], "ok", "{dry_run}");
    let step = &dry_run["artefact"]["steps"][0];
    assert_eq!(step["target"], format!("k8s:shop/{name}"));
    let diff = step["detail"]["template_diff"].as_array().unwrap();
    assert_eq!(diff.len(), 1, "{diff:?}");
    assert_eq!(diff[0]["path"], "/metadata/annotations", "{diff:?}");
    assert!(
        diff[0]["after"]["kubectl.kubernetes.io/restartedAt"].is_string(),
        "{diff:?}"
    );
    let (rehearsed, decided): (chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>) =
        sqlx::query_as(
            "SELECT r.created_at, d.decided_at FROM plan_dryrun r \
             JOIN gate_decision d ON d.plan_id = r.plan_id AND d.dryrun_digest = r.digest \
             WHERE r.case_id = $1",
        )
        .bind(case)
        .fetch_one(&lp.app.pool)
        .await
        .unwrap();
    assert!(rehearsed <= decided, "{rehearsed} {decided}");
    assert!(
        requests.iter().any(|r| r.contains("watch=true")),
        "{requests:?}"
    );

    let steps = steps(&lp, case).await;
    let step = &steps[0];
    assert_eq!(
        (step.phase.as_str(), step.status.as_str()),
        ("step", "done")
    );
    assert_eq!(step.result["dry_run"]["accepted"], true);
    assert_eq!(step.result["dry_run"]["template_changes"], true);
    assert_eq!(step.result["rollout"]["updated"], 3);
    assert_eq!(
        step.before.as_ref().unwrap()["images"][&name],
        "shop/api:1.4"
    );
}

fn image_plan(name: &str, image: &str) -> Value {
    json!({
        "title": format!("roll {name} to {image}"), "environment": "staging",
        "steps": [{"action": "k8s.rollout", "params": {"namespace": "shop", "deployment": name, "image": image},
                   "timeout_s": 30, "retry": 0}],
        "rollback": {"steps": [{"action": "k8s.rollout", "params": {"namespace": "shop", "deployment": name, "undo": true},
                                "timeout_s": 30, "retry": 0}]},
        "verify": {"checks": [{"resource": name, "metric": "error_rate", "op": "<", "threshold": 0.01, "window_s": 60}]}
    })
}

/// The new image never becomes available: the Deployment reports its
/// progress deadline exceeded, the step fails, and the rollback puts the
/// previous pod template back exactly.
#[sqlx::test]
async fn a_progress_deadline_fails_the_step_and_the_undo_restores_the_template(pool: PgPool) {
    let k8s = FakeK8s::start(Duration::from_millis(200)).await;
    let name = unique("api");
    k8s.add_deployment("shop", &name, "shop/api:1.4", 2);
    let original = template(&k8s.deployment("shop", &name));
    let lp = loop_with_k8s(pool, &k8s).await;
    let (case, _) = lp.propose(&image_plan(&name, "shop/api:1.5-broken")).await;
    lp.approve(case).await;

    assert_eq!(lp.app.status(case).await, "PARKED");
    let reason = lp.app.park_reason(case).await;
    assert!(reason.contains("progress deadline"), "{reason}");
    assert!(reason.contains("rollback succeeded"), "{reason}");
    assert_eq!(
        runs(&lp, case).await,
        [("run".into(), "rolled_back".into())]
    );
    let d = k8s.deployment("shop", &name);
    assert_eq!(template(&d), original);
    // Broken rollout, then the restore: two new generations.
    assert_eq!(d["metadata"]["generation"], 3);
    assert_eq!(d["status"]["observedGeneration"], 3);
    let steps = steps(&lp, case).await;
    assert_eq!(steps.len(), 2, "{steps:?}");
    assert_eq!(
        (steps[1].phase.as_str(), steps[1].status.as_str()),
        ("rollback", "done")
    );
    assert_eq!(steps[1].result["restored"], true);
}

/// The API server refuses the patch in the dry run before the gate: the
/// case parks with the refusal, no gate evaluation and no person is asked,
/// nothing runs and nothing is changed.
#[sqlx::test]
async fn a_refused_dry_run_parks_the_case_before_the_gate(pool: PgPool) {
    let k8s = FakeK8s::start(Duration::from_millis(100)).await;
    let name = unique("api");
    k8s.add_deployment("shop", &name, "shop/api:1.4", 1);
    let before = k8s.deployment("shop", &name);
    let lp = loop_with_k8s(pool, &k8s).await;
    let mut plan = image_plan(&name, "shop/api:invalid");
    plan["steps"][0]["retry"] = json!(2);
    let (case, _) = lp.propose(&plan).await;

    assert_eq!(lp.app.status(case).await, "PARKED");
    let reason = lp.app.park_reason(case).await;
    assert!(
        reason.starts_with("dry run failed at step 0 (k8s.rollout)"),
        "{reason}"
    );
    assert!(reason.contains("server-side dry run"), "{reason}");
    let patches: Vec<String> = k8s
        .requests()
        .into_iter()
        .filter(|r| r.starts_with("PATCH") || r.starts_with("PUT"))
        .collect();
    assert_eq!(patches.len(), 1, "{patches:?}");
    assert!(patches[0].contains("dryRun=All"));
    assert_eq!(k8s.deployment("shop", &name), before);
    assert_never_reached_the_gate(&lp, case).await;
    assert_eq!(
        lp.app.current_plan(case).await.body["dry_run"]["outcome"],
        "failed"
    );
}

/// A case whose dry run failed: parked by `dryrun_failed`, with no gate
/// decision, no approval asked or given, and no run.
async fn assert_never_reached_the_gate(lp: &Loop, case: uuid::Uuid) {
    let count = |sql: &'static str| {
        let pool = lp.app.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(sql)
                .bind(case)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    assert_eq!(
        count("SELECT count(*) FROM gate_decision d JOIN plan_proposed p ON p.id = d.plan_id WHERE p.case_id = $1").await,
        0
    );
    assert_eq!(
        count("SELECT count(*) FROM plan_approved a JOIN plan_proposed p ON p.id = a.plan_id WHERE p.case_id = $1").await,
        0
    );
    assert_eq!(
        count("SELECT count(*) FROM exec_run WHERE case_id = $1").await,
        0
    );
    assert_eq!(
        count("SELECT count(*) FROM case_timeline WHERE case_id = $1 AND event = 'dryrun_done'")
            .await,
        0,
        "only dryrun_done sends cmd.gate.eval"
    );
    let last: String = sqlx::query_scalar(
        "SELECT event FROM case_timeline WHERE case_id = $1 AND kind = 'transition' ORDER BY seq DESC LIMIT 1",
    )
    .bind(case)
    .fetch_one(&lp.app.pool)
    .await
    .unwrap();
    assert_eq!(last, "dryrun_failed");
}

use opsloop::fakes::gateway::FakeGateway as Gateway;

/// A loop whose executor knows one gateway, `edge`: `g`, served with its
/// admin API under `/admin` for as long as the returned server lives.
async fn loop_with_gateway(pool: PgPool, g: &Gateway) -> (Loop, TestServer) {
    let admin = g.start().await;
    let mut lp = Loop::full(pool).await;
    lp.executor_mut().register(Arc::new(GatewayAdapter::new(
        &[format!("edge={}/admin", admin.url).parse().unwrap()],
        None,
    )));
    (lp, admin)
}

/// Traffic is shifted, the SLO is breached anyway: the case parks and the
/// rollback puts back the weights the route had before, not the plan's
/// guess of them.
#[sqlx::test]
async fn a_breach_after_a_flip_restores_the_previous_weights(pool: PgPool) {
    let g = Gateway::default();
    let route = format!("/{}", unique("checkout"));
    g.routes
        .lock()
        .unwrap()
        .insert(route.clone(), json!({"blue": 70, "green": 30}));
    let (lp, _admin) = loop_with_gateway(pool, &g).await;
    let plan = json!({
        "title": "shift to green", "environment": "staging",
        "steps": [{"action": "gateway.flip", "params": {"gateway": "edge", "route": route, "weights": {"blue": 0, "green": 100}},
                   "timeout_s": 10, "retry": 1}],
        "rollback": {"steps": [{"action": "gateway.flip", "params": {"gateway": "edge", "route": route, "undo": true},
                                "timeout_s": 10, "retry": 1}]},
        "verify": {"checks": [{"resource": route, "metric": "latency_p95_ms", "op": "<", "threshold": 300, "window_s": 60}]}
    });
    ingest_metric(&lp, &route, "latency_p95_ms", 900.0).await;
    let (case, _) = lp.propose(&plan).await;
    let shown = lp.app.current_plan(case).await.body["dry_run"]["artefact"]["steps"][0].clone();
    assert_eq!(
        (&shown["detail"]["current"], &shown["detail"]["target"]),
        (
            &json!({"blue": 70, "green": 30}),
            &json!({"blue": 0, "green": 100})
        ),
        "{shown}"
    );
    lp.approve(case).await;

    assert_eq!(lp.app.status(case).await, "PARKED");
    assert_eq!(lp.app.park_reason(case).await, "breach");
    assert_eq!(
        runs(&lp, case).await,
        [
            ("run".into(), "done".into()),
            ("rollback".into(), "rolled_back".into())
        ]
    );
    assert_eq!(
        *g.puts.lock().unwrap(),
        [
            json!({"blue": 0, "green": 100}),
            json!({"blue": 70, "green": 30})
        ]
    );
    assert_eq!(
        g.routes.lock().unwrap()[&route],
        json!({"blue": 70, "green": 30})
    );
}

/// A gateway that cannot answer for a moment does not park the case: the
/// dry run is tried again on a later delivery, and only its final answer
/// is recorded.
#[sqlx::test]
async fn a_dry_run_that_meets_an_unavailable_target_is_tried_again(pool: PgPool) {
    let g = Gateway::default();
    let route = format!("/{}", unique("search"));
    g.routes
        .lock()
        .unwrap()
        .insert(route.clone(), json!({"blue": 100, "green": 0}));
    *g.unavailable_reads.lock().unwrap() = 1;
    let (lp, _admin) = loop_with_gateway(pool, &g).await;
    let plan = json!({
        "title": "shift", "environment": "prod",
        "steps": [{"action": "gateway.flip", "params": {"gateway": "edge", "route": route, "weights": {"blue": 50, "green": 50}},
                   "timeout_s": 10, "retry": 0}],
        "rollback": {"steps": []},
        "verify": {"checks": []}
    });
    let (case, _) = lp.propose(&plan).await;
    // The consumer delivers the command again after its back-off (2 s);
    // a settle may or may not have waited that long.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    lp.settle().await;
    assert_eq!(
        *g.unavailable_reads.lock().unwrap(),
        0,
        "the 503 was answered"
    );
    assert_eq!(
        lp.app.status(case).await,
        "WAIT_GATE",
        "prod: people judge it"
    );
    let shown = lp.app.current_plan(case).await.body;
    assert_eq!(shown["dry_run"]["outcome"], "ok", "{shown}");
    let dry_runs: i64 = sqlx::query_scalar("SELECT count(*) FROM plan_dryrun WHERE case_id = $1")
        .bind(case)
        .fetch_one(&lp.app.pool)
        .await
        .unwrap();
    assert_eq!(dry_runs, 1);
}

/// A gateway the configuration does not name is never called, and the
/// refusal is not retried.
#[sqlx::test]
async fn an_unknown_gateway_is_refused_without_a_call(pool: PgPool) {
    let g = Gateway::default();
    let (lp, _admin) = loop_with_gateway(pool, &g).await;
    let plan = json!({
        "title": "shift", "environment": "staging",
        "steps": [{"action": "gateway.flip", "params": {"gateway": "internal", "route": "/x", "weights": {"a": 100}},
                   "timeout_s": 10, "retry": 3}],
        "rollback": {"steps": []},
        "verify": {"checks": []}
    });
    let (case, _) = lp.propose(&plan).await;
    assert_eq!(lp.app.status(case).await, "PARKED");
    let reason = lp.app.park_reason(case).await;
    assert!(reason.contains("not in OPSLOOP_GATEWAYS"), "{reason}");
    assert_never_reached_the_gate(&lp, case).await;
    assert!(g.puts.lock().unwrap().is_empty());
}
