//! The whole loop over the real NATS and PostgreSQL, every role in this
//! process: create → analyse → plan → gate → execute → verify → close, or
//! park with the reason (and roll back). Plus the executor's crash and
//! fencing rules, and metrics intake.

use chrono::{Timelike, Utc};
use opsloop::contract::fact::{RunEnded, RunKind, RunStatus};
use opsloop::contract::{Fact, Message};
use opsloop::pubsub::consumer::{Delivery, Disposition, Handler};
use opsloop::pubsub::{Envelope, outbox};
use opsloop::store::read_case;
use reqwest::Method;
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use crate::flow::Loop;
use crate::helpers::*;

/// The current minute, as metric rows want it.
pub(crate) fn this_minute() -> String {
    let now = Utc::now();
    now.with_second(0)
        .and_then(|t| t.with_nanosecond(0))
        .unwrap()
        .to_rfc3339()
}

async fn ingest(lp: &Loop, service: &str, latency: f64) {
    ingest_metric(lp, service, "latency_p95_ms", latency).await;
}

/// One `metric_1m` row for this minute, through the API.
pub(crate) async fn ingest_metric(lp: &Loop, resource: &str, metric: &str, value: f64) {
    let r = lp
        .app
        .send(
            Method::POST,
            "/metrics/ingest",
            Some(SERVICE),
            &[],
            Some(
                json!({"rows": [{"tenant": "t-001", "resource": resource, "metric": metric,
                                  "bucket": this_minute(), "avg": value, "max": value + 10.0}]})
                .to_string(),
            ),
        )
        .await;
    assert_eq!(r.status, 202, "{:?}", r.body);
}

/// A degraded-service case (the restart-service template matches it),
/// started into analysis.
pub(crate) async fn degraded_case(lp: &Loop, service: &str) -> Uuid {
    let case = lp
        .app
        .open_case(
            json!({"title": format!("{service} slow"), "tenant": "t-001", "kind": "service",
                   "labels": {"alertname": "ServiceDegraded", "service": service}}),
        )
        .await;
    let r = lp.app.event(case, OPERATOR, "start_analysis").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    case
}

pub(crate) async fn statuses(lp: &Loop, case: Uuid) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT to_status FROM case_timeline WHERE case_id = $1 AND kind = 'transition' ORDER BY seq",
    )
    .bind(case)
    .fetch_all(&lp.app.pool)
    .await
    .unwrap()
}

/// (kind, status) of the case's runs, oldest first.
pub(crate) async fn runs(lp: &Loop, case: Uuid) -> Vec<(String, String)> {
    sqlx::query_as("SELECT kind, status FROM exec_run WHERE case_id = $1 ORDER BY started_at")
        .bind(case)
        .fetch_all(&lp.app.pool)
        .await
        .unwrap()
}

/// One step the executor stored for a case.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct StepRow {
    /// The run's kind: `run` or `rollback`.
    pub kind: String,
    pub phase: String,
    pub idx: i32,
    pub status: String,
    pub tries: i32,
    pub result: Value,
    pub before: Option<Value>,
}

/// The case's steps: oldest run first, forward steps before rollback steps.
pub(crate) async fn steps(lp: &Loop, case: Uuid) -> Vec<StepRow> {
    sqlx::query_as(
        "SELECT r.kind, s.phase, s.idx, s.status, s.tries, s.result, s.before \
         FROM exec_step s JOIN exec_run r ON r.id = s.run_id \
         WHERE r.case_id = $1 ORDER BY r.started_at, s.phase DESC, s.idx",
    )
    .bind(case)
    .fetch_all(&lp.app.pool)
    .await
    .unwrap()
}

#[sqlx::test]
async fn a_healthy_service_goes_from_new_to_closed(pool: PgPool) {
    let lp = Loop::full(pool).await;
    let svc = service();
    ingest(&lp, &svc, 120.0).await;
    let case = degraded_case(&lp, &svc).await;
    lp.settle().await;
    assert_eq!(
        statuses(&lp, case).await,
        [
            "ANALYZING",
            "PLANNING",
            "WAIT_GATE",
            "WAIT_GATE",
            "EXECUTING",
            "VERIFYING",
            "CLOSED"
        ]
    );
    // Findings were gathered, stored as evidence and kept with the move.
    let findings: Value = sqlx::query_scalar(
        "SELECT meta #> '{fact,findings}' FROM case_timeline WHERE case_id = $1 AND event = 'analysis_done'",
    )
    .bind(case)
    .fetch_one(&lp.app.pool)
    .await
    .unwrap();
    assert_eq!(findings["resource"], svc);
    assert_eq!(findings["metrics"]["latency_p95_ms"]["minutes"], 1);
    let evidence: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM evidence_link WHERE case_id = $1 AND role = 'findings'",
    )
    .bind(case)
    .fetch_one(&lp.app.pool)
    .await
    .unwrap();
    assert_eq!(evidence, 1);
    // The script ran once, with its argv, and its output is stored.
    let step = &steps(&lp, case).await[0];
    assert_eq!((step.status.as_str(), step.tries), ("done", 1));
    assert_eq!(step.result["stdout"]["text"], format!("restarted {svc}\n"));
    let outcome: String =
        sqlx::query_scalar("SELECT outcome FROM verify_result WHERE case_id = $1")
            .bind(case)
            .fetch_one(&lp.app.pool)
            .await
            .unwrap();
    assert_eq!(outcome, "pass");
    assert_eq!(runs(&lp, case).await, [("run".into(), "done".into())]);
    // Targets are free again.
    let locks: i64 = sqlx::query_scalar("SELECT count(*) FROM exec_target_lock")
        .fetch_one(&lp.app.pool)
        .await
        .unwrap();
    assert_eq!(locks, 0);
}

#[sqlx::test]
async fn a_breach_parks_the_case_and_rolls_back(pool: PgPool) {
    let lp = Loop::full(pool).await;
    let svc = service();
    let case = degraded_case(&lp, &svc).await;
    ingest(&lp, &svc, 950.0).await;
    lp.settle().await;
    assert_eq!(lp.app.status(case).await, "PARKED");
    assert_eq!(lp.app.park_reason(case).await, "breach");
    assert_eq!(
        runs(&lp, case).await,
        [
            ("run".into(), "done".into()),
            ("rollback".into(), "rolled_back".into())
        ]
    );
    let steps = steps(&lp, case).await;
    let undo = &steps.iter().find(|s| s.kind == "rollback").unwrap().result;
    assert_eq!(
        undo["stdout"]["text"],
        format!("restored previous instance of {svc}\n")
    );
}

#[sqlx::test]
async fn no_data_parks_and_never_passes(pool: PgPool) {
    let lp = Loop::full(pool).await;
    let case = degraded_case(&lp, &service()).await;
    lp.settle().await;
    assert_eq!(lp.app.status(case).await, "PARKED");
    assert_eq!(lp.app.park_reason(case).await, "no_data");
    assert!(!statuses(&lp, case).await.contains(&"CLOSED".to_string()));
}

/// A plan whose second step fails although its dry run passed (a script
/// that only fails for real): its rollback runs, the case parks with both
/// facts in the reason.
#[sqlx::test]
async fn a_failing_step_runs_the_rollback_and_parks(pool: PgPool) {
    let lp = Loop::full(pool).await;
    let svc = service();
    let plan = json!({
        "title": "restart", "environment": "staging",
        "steps": [{"action": "noop", "timeout_s": 10, "retry": 0},
                  {"action": "script.exec", "params": {"script": "fails-for-real.sh", "args": []},
                   "timeout_s": 10, "retry": 2}],
        "rollback": {"steps": [{"action": "script.exec",
                                "params": {"script": "restart-service.sh", "args": ["--service", svc, "--undo"]},
                                "timeout_s": 10, "retry": 0}]},
        "verify": {"checks": [{"resource": svc, "metric": "latency_p95_ms", "op": "<", "threshold": 300, "window_s": 60}]}
    });
    let (case, _) = lp.propose(&plan).await;
    assert_eq!(lp.app.status(case).await, "PARKED");
    let reason = lp.app.park_reason(case).await;
    assert!(
        reason.contains("step 1 (script.exec) failed after 3 tries"),
        "{reason}"
    );
    assert!(reason.contains("rollback succeeded"), "{reason}");
    assert_eq!(
        runs(&lp, case).await,
        [("run".into(), "rolled_back".into())]
    );
    // A failed exit is tried again, within the step's retry.
    let tries = steps(&lp, case)
        .await
        .iter()
        .find(|s| s.phase == "step" && s.idx == 1)
        .unwrap()
        .tries;
    assert_eq!(tries, 3);

    // resume → PLANNING → a person's new plan goes through again.
    let r = lp.app.event(case, OPERATOR, "resume").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let r = lp
        .app
        .post_plan(
            case,
            OPERATOR,
            &json!({
                "title": "observe", "environment": "staging",
                "steps": [{"action": "noop", "timeout_s": 10, "retry": 0}],
                "rollback": {"steps": []},
                "verify": {"checks": [{"resource": svc, "metric": "latency_p95_ms", "op": "<", "threshold": 300, "window_s": 60}]}
            }),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    ingest(&lp, &svc, 100.0).await;
    lp.settle().await;
    assert_eq!(lp.app.status(case).await, "CLOSED");
}

/// An exec command for the case as it is now, and the plan it names.
async fn exec_command(lp: &Loop, case: Uuid) -> Delivery {
    let case_row = read_case(&lp.app.pool, case).await.unwrap().unwrap();
    let hash: String = sqlx::query_scalar(
        "SELECT plan_hash FROM plan_proposed WHERE case_id = $1 ORDER BY seq DESC LIMIT 1",
    )
    .bind(case)
    .fetch_one(&lp.app.pool)
    .await
    .unwrap();
    Delivery {
        envelope: Envelope {
            id: Uuid::now_v7(),
            kind: "cmd.exec.run".into(),
            case_id: Some(case),
            tenant: case_row.tenant.to_string(),
            occurred_at: Utc::now(),
            actor: "orchestrator".into(),
            correlation_id: case_row.correlation_id,
            causation_id: None,
            expected_version: Some(case_row.version),
            data: json!({"effect": "execute", "plan_hash": hash}),
        },
        subject: "cmd.exec.run".into(),
        traceparent: None,
        delivered: 2,
    }
}

/// A case in EXECUTING, driven there by `lp`, a loop without an executor:
/// its `cmd.exec.run` is never consumed, so a test hands the executor its
/// own command.
async fn executing_case(lp: &Loop, steps: Value) -> Uuid {
    let plan = json!({
        "title": "t", "environment": "staging", "steps": steps,
        "rollback": {"steps": []}, "verify": {"checks": []}
    });
    // Without the downstream roles the case stops in EXECUTING.
    let (case, _) = lp.propose(&plan).await;
    lp.approve(case).await;
    case
}

/// Pretends an earlier executor process died while `step` was running.
async fn crashed_run(lp: &Loop, d: &Delivery, action: &str) -> Uuid {
    let env = &d.envelope;
    let run = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO exec_run (id, case_id, plan_hash, kind, attempt_id, case_version, status) \
         VALUES ($1, $2, $3, 'run', $4, $5, 'running')",
    )
    .bind(run)
    .bind(env.case_id)
    .bind(env.data["plan_hash"].as_str())
    .bind(env.id)
    .bind(env.expected_version)
    .execute(&lp.app.pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO exec_step (run_id, phase, idx, action, status, tries) VALUES ($1, 'step', 0, $2, 'running', 1)",
    )
    .bind(run)
    .bind(action)
    .execute(&lp.app.pool)
    .await
    .unwrap();
    run
}

#[sqlx::test]
async fn a_step_found_running_after_a_crash_is_not_silently_counted_done(pool: PgPool) {
    let lp = Loop::full(pool.clone()).await;
    let plain = Loop::new(pool).await;
    let svc = service();
    let case = executing_case(
        &plain,
        json!([{"action": "script.exec", "params": {"script": "restart-service.sh", "args": ["--service", svc]},
                "timeout_s": 10, "retry": 0}]),
    )
    .await;
    assert_eq!(lp.app.status(case).await, "EXECUTING");
    let d = exec_command(&lp, case).await;
    let run = crashed_run(&lp, &d, "script.exec").await;
    assert_eq!(lp.executor().handle(&d).await, Disposition::Done);
    lp.settle().await;
    plain.settle().await;
    let (status, error): (String, String) =
        sqlx::query_as("SELECT status, error FROM exec_run WHERE id = $1")
            .bind(run)
            .fetch_one(&lp.app.pool)
            .await
            .unwrap();
    assert_eq!(status, "interrupted");
    assert!(error.contains("not safe to repeat"), "{error}");
    // The script was not run again.
    let (step, tries): (String, i32) =
        sqlx::query_as("SELECT status, tries FROM exec_step WHERE run_id = $1")
            .bind(run)
            .fetch_one(&lp.app.pool)
            .await
            .unwrap();
    assert_eq!((step.as_str(), tries), ("failed", 1));
    assert_eq!(lp.app.status(case).await, "PARKED");
    assert!(lp.app.park_reason(case).await.starts_with("interrupted:"));
}

#[sqlx::test]
async fn an_idempotent_step_is_rerun_and_finished_steps_never_are(pool: PgPool) {
    let lp = Loop::full(pool.clone()).await;
    let plain = Loop::new(pool).await;
    let case = executing_case(
        &plain,
        json!([{"action": "noop", "timeout_s": 10, "retry": 0},
               {"action": "noop", "timeout_s": 10, "retry": 0}]),
    )
    .await;
    let d = exec_command(&lp, case).await;
    let run = crashed_run(&lp, &d, "noop").await;
    assert_eq!(lp.executor().handle(&d).await, Disposition::Done);
    // Redelivered again: the finished run is not touched.
    assert_eq!(lp.executor().handle(&d).await, Disposition::Done);
    let steps: Vec<(i32, String, i32)> =
        sqlx::query_as("SELECT idx, status, tries FROM exec_step WHERE run_id = $1 ORDER BY idx")
            .bind(run)
            .fetch_all(&lp.app.pool)
            .await
            .unwrap();
    assert_eq!(steps, [(0, "done".into(), 2), (1, "done".into(), 1)]);
    lp.settle().await;
    plain.settle().await;
    assert!(statuses(&lp, case).await.contains(&"VERIFYING".to_string()));
    let finished: String = sqlx::query_scalar("SELECT status FROM exec_run WHERE id = $1")
        .bind(run)
        .fetch_one(&lp.app.pool)
        .await
        .unwrap();
    assert_eq!(finished, "done");
}

#[sqlx::test]
async fn a_stale_attempts_result_is_rejected(pool: PgPool) {
    let lp = Loop::full(pool).await;
    let svc = service();
    ingest(&lp, &svc, 100.0).await;
    let case = degraded_case(&lp, &svc).await;
    lp.settle().await;
    assert_eq!(lp.app.status(case).await, "CLOSED");
    let version = read_case(&lp.app.pool, case)
        .await
        .unwrap()
        .unwrap()
        .version;
    // A late exec.failed from the attempt that ran at EXECUTING's version.
    let executing_version: i64 = sqlx::query_scalar(
        "SELECT version FROM case_timeline WHERE case_id = $1 AND to_status = 'EXECUTING'",
    )
    .bind(case)
    .fetch_one(&lp.app.pool)
    .await
    .unwrap();
    let case_row = read_case(&lp.app.pool, case).await.unwrap().unwrap();
    let plan_hash = sqlx::query_scalar(
        "SELECT plan_hash FROM plan_proposed WHERE case_id = $1 ORDER BY seq DESC LIMIT 1",
    )
    .bind(case)
    .fetch_one(&lp.app.pool)
    .await
    .unwrap();
    let ended = RunEnded {
        run_id: Uuid::now_v7(),
        attempt_id: Uuid::now_v7(),
        plan_hash,
        kind: RunKind::Run,
        status: RunStatus::Failed,
        reason: Some("late result of an old attempt".into()),
    };
    let mut late = Message::for_case(&case_row, "executor", None, Fact::ExecFailed(ended));
    late.expected_version = Some(executing_version.try_into().unwrap());
    let late = late.to_envelope();
    let mut tx = lp.app.pool.begin().await.unwrap();
    outbox::enqueue(&mut tx, Some(case), &[late], "")
        .await
        .unwrap();
    tx.commit().await.unwrap();
    lp.settle().await;
    let code: String = sqlx::query_scalar(
        "SELECT rejection_code FROM case_timeline WHERE case_id = $1 AND kind = 'rejected' ORDER BY seq DESC LIMIT 1",
    )
    .bind(case)
    .fetch_one(&lp.app.pool)
    .await
    .unwrap();
    assert_eq!(code, "stale_fact");
    let after = read_case(&lp.app.pool, case)
        .await
        .unwrap()
        .unwrap()
        .version;
    assert_eq!(after, version);
    assert_eq!(lp.app.status(case).await, "CLOSED");
}

#[sqlx::test]
async fn metric_rows_are_validated_row_by_row_and_stored_whole_or_not_at_all(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let good = json!({"tenant": "t-001", "resource": "api", "metric": "error_rate",
                      "bucket": this_minute(), "avg": 0.01, "max": 0.02});
    let body = json!({"rows": [
        good,
        {"tenant": "t-001", "resource": "", "metric": "m", "bucket": "2026-11-21T10:00:30Z", "avg": 1, "max": 2},
        {"tenant": "t-001", "resource": "api", "metric": "m", "bucket": "yesterday", "avg": "NaN", "max": 0, "extra": 1},
        {"tenant": "t-001", "resource": "api", "metric": "m", "bucket": this_minute(), "avg": 5, "max": 1},
        good,
        {"tenant": "t-001", "resource": "api", "metric": "m", "bucket": "0001-01-01T00:00:00Z", "avg": -1e308, "max": 1e308},
        {"resource": "api", "metric": "m", "bucket": this_minute(), "avg": 1, "max": 1, "labels": {"a": 1}},
        {"tenant": "t-001", "resource": "api", "metric": "m", "bucket": this_minute(), "ts": this_minute(), "avg": 1, "max": 1}
    ]});
    let r = app
        .send(
            Method::POST,
            "/metrics/ingest",
            Some(SERVICE),
            &[],
            Some(body.to_string()),
        )
        .await;
    assert_eq!(r.status, 422, "{:?}", r.body);
    assert_eq!(r.body["code"], "rows_invalid");
    let errors = r.body["errors"].as_array().unwrap();
    let at = |row: u64, field: &str| {
        errors
            .iter()
            .any(|e| e["row"] == row && e["field"] == field)
    };
    assert!(at(1, "resource") && at(1, "bucket"));
    assert!(at(2, "bucket") && at(2, "avg") && at(2, "extra"));
    assert!(at(3, "avg"));
    assert!(at(4, "bucket"), "a duplicate minute is named: {errors:?}");
    assert!(
        at(5, "bucket") && at(5, "avg") && at(5, "max"),
        "implausible values are refused: {errors:?}"
    );
    assert!(at(6, "tenant") && at(6, "labels"), "{errors:?}");
    assert!(at(7, "ts"), "`ts` and `bucket` together: {errors:?}");
    assert!(!errors.iter().any(|e| e["row"] == 0));
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM metric_1m")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(stored, 0);

    // `ts` is still accepted for `bucket`, and `labels` are kept.
    let mut older = good.clone();
    older["ts"] = older["bucket"].take();
    older.as_object_mut().unwrap().remove("bucket");
    older["labels"] = json!({"region": "eu-1"});
    let r = app
        .send(
            Method::POST,
            "/metrics/ingest",
            Some(SERVICE),
            &[],
            Some(json!({"rows": [older]}).to_string()),
        )
        .await;
    assert_eq!((r.status, r.body["stored"].as_i64()), (202, Some(1)));
    let labels: Value = sqlx::query_scalar("SELECT labels FROM metric_1m WHERE tenant = 't-001'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(labels, json!({"region": "eu-1"}));
    let r = app
        .send(
            Method::POST,
            "/metrics/ingest",
            Some(VIEWER),
            &[],
            Some(json!({"rows": [good]}).to_string()),
        )
        .await;
    assert_eq!(r.status, 403);
    let r = app
        .send(
            Method::POST,
            "/metrics/ingest",
            Some(SERVICE),
            &[],
            Some(json!({"rows": []}).to_string()),
        )
        .await;
    assert_eq!(r.status, 400);
}

/// The hole of issue #13: rows had no tenant, so an operator could
/// overwrite the minutes another tenant's verification trusts. Now a batch
/// with one row of a tenant the token lacks is refused whole (403), and
/// the same resource name in two tenants is two series: a case is judged
/// from its own tenant's rows only.
#[sqlx::test]
async fn an_operator_cannot_write_or_read_another_tenants_metrics(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let row = |tenant: &str, v: f64| {
        json!({"tenant": tenant, "resource": "checkout", "metric": "latency_p95_ms",
               "bucket": this_minute(), "avg": v, "max": v})
    };
    let r = app
        .send(
            Method::POST,
            "/metrics/ingest",
            Some(OPERATOR),
            &[],
            Some(json!({"rows": [row("t-001", 100.0), row("t-002", 9999.0)]}).to_string()),
        )
        .await;
    assert_eq!(
        (r.status, r.code()),
        (403, "tenant_forbidden"),
        "{:?}",
        r.body
    );
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM metric_1m")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(stored, 0, "the whole batch is refused, the own row too");

    for (token, tenant, v) in [(OPERATOR, "t-001", 100.0), (ADMIN, "t-002", 9999.0)] {
        let r = app
            .send(
                Method::POST,
                "/metrics/ingest",
                Some(token),
                &[],
                Some(json!({"rows": [row(tenant, v)]}).to_string()),
            )
            .await;
        assert_eq!(r.status, 202, "{:?}", r.body);
    }
    let series: Vec<(String, f64)> =
        sqlx::query_as("SELECT tenant, avg FROM metric_1m ORDER BY tenant")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(
        series,
        [("t-001".to_string(), 100.0), ("t-002".to_string(), 9999.0)],
        "one minute per tenant: t-002's row did not overwrite t-001's"
    );
}

/// Defence in depth: a `cmd.exec.run` whose plan's approvals do not meet
/// the quorum the gate recorded (forged, or sent before the gate opened)
/// runs nothing, even though one approval of that very hash exists.
#[sqlx::test]
async fn a_forged_exec_command_short_of_the_quorum_runs_nothing(pool: PgPool) {
    let lp = Loop::full(pool).await;
    let plan = json!({
        "title": "t", "environment": "prod",
        "steps": [{"action": "script.exec", "params": {"script": "restart-service.sh", "args": ["--service", service()]},
                   "timeout_s": 10, "retry": 0}],
        "rollback": {"steps": []}, "verify": {"checks": []}
    });
    let (case, hash) = lp.propose(&plan).await;
    assert_eq!(
        lp.app.status(case).await,
        "WAIT_GATE",
        "production needs two people"
    );
    let r = lp
        .app
        .patch(
            case,
            APPROVER,
            "one-of-two",
            json!({"event": "gate_approved", "plan_hash": hash,
                   "dryrun_digest": lp.app.dryrun_digest(case).await}),
        )
        .await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    let approvals: i64 = sqlx::query_scalar("SELECT count(*) FROM plan_approved")
        .fetch_one(&lp.app.pool)
        .await
        .unwrap();
    assert_eq!(approvals, 1, "the one approval is recorded");

    let forged = exec_command(&lp, case).await;
    let disposition = lp.executor().handle(&forged).await;
    assert!(
        matches!(disposition, Disposition::DeadLetter(..)),
        "{disposition:?}"
    );
    let runs: i64 = sqlx::query_scalar("SELECT count(*) FROM exec_run WHERE case_id = $1")
        .bind(case)
        .fetch_one(&lp.app.pool)
        .await
        .unwrap();
    assert_eq!(runs, 0, "nothing ran");
    assert_eq!(lp.app.status(case).await, "WAIT_GATE");
}

/// A change freeze that starts after the gate approved a plan still stops
/// its execution: the executor checks the freeze before each forward step
/// (fail closed), and only a break-glass approval lets a step through.
#[sqlx::test]
async fn a_freeze_that_starts_after_the_gate_blocks_execution(pool: PgPool) {
    let mut lp = Loop::full(pool).await;
    let mut policy = crate::flow::policy();
    policy.freeze_windows = vec![freeze_now("release-freeze")];
    lp.executor_mut().set_policy(std::sync::Arc::new(policy));
    let svc = service();
    let plan = json!({
        "title": "restart", "environment": "staging",
        "steps": [{"action": "script.exec", "params": {"script": "restart-service.sh", "args": ["--service", svc]},
                   "timeout_s": 10, "retry": 0}],
        "rollback": {"steps": [{"action": "noop", "timeout_s": 10, "retry": 0}]},
        "verify": {"checks": []}
    });
    // The gate (no freeze in its policy) approves it on its own.
    let (case, _) = lp.propose(&plan).await;
    assert_eq!(lp.app.status(case).await, "PARKED");
    let reason = lp.app.park_reason(case).await;
    assert!(reason.contains("change freeze release-freeze"), "{reason}");
    let step = steps(&lp, case)
        .await
        .into_iter()
        .find(|s| s.phase == "step" && s.idx == 0)
        .unwrap();
    assert_eq!(step.status, "failed");
    assert_eq!(step.tries, 0, "the script never ran");
}
