use opsloop::workflow::{self, EventKind, Facts, Status};
use serde_json::json;
use sqlx::PgPool;

use crate::helpers::*;

/// DESIGN §2: replaying a case's accepted timeline entries through `decide`
/// from NEW reproduces its current status (facts are stored with each entry).
#[sqlx::test]
async fn replaying_the_stored_timeline_reproduces_the_status(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let case = app.case_in("PARKED").await;
    app.event(case, OPERATOR, "resume").await;
    app.event(case, SERVICE, "plan_ready").await; // rejected: no plan
    let hash = app.store_plan(case, "planner", Some(1)).await;
    app.event(case, SERVICE, "plan_ready").await;
    app.patch(
        case,
        APPROVER,
        "judge",
        json!({"event": "gate_approved", "plan_hash": hash}),
    )
    .await;
    assert_eq!(app.status(case).await, "EXECUTING");

    let rows: Vec<(String, serde_json::Value)> = sqlx::query_as(
        "SELECT event, meta FROM case_timeline WHERE case_id = $1 AND kind = 'transition' ORDER BY seq",
    )
    .bind(case)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let entries: Vec<(EventKind, Facts)> = rows
        .into_iter()
        .map(|(e, meta)| {
            (
                e.parse().unwrap(),
                serde_json::from_value(meta["facts"].clone()).unwrap(),
            )
        })
        .collect();
    assert_eq!(entries.len(), 6);
    let replayed = workflow::replay(entries.iter().map(|(e, f)| (*e, f))).unwrap();
    assert_eq!(replayed, Status::Executing);
    assert_eq!(replayed.to_string(), app.status(case).await);
}

/// Row counts of every table a replay could write.
async fn record_size(pool: &PgPool) -> Vec<i64> {
    let mut sizes = Vec::new();
    for table in [
        "ops_case",
        "case_timeline",
        "outbox",
        "inbox",
        "idempotency",
        "plan_proposed",
        "plan_approved",
        "gate_decision",
        "plan_dryrun",
        "exec_run",
        "verify_result",
        "dead_letter",
    ] {
        // The names are this list's own literals.
        let sql = sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}"));
        let n: i64 = sqlx::query_scalar(sql).fetch_one(pool).await.unwrap();
        sizes.push(n);
    }
    sizes
}

/// The record and the streams.
async fn loop_size(lp: &crate::flow::Loop) -> Vec<i64> {
    let mut sizes = record_size(&lp.app.pool).await;
    let js = lp.jetstream().await;
    for stream in ["OPSLOOP_EVT", "OPSLOOP_CMD"] {
        sizes.push(crate::nats::stream_count(&js, stream).await as i64);
    }
    sizes
}

/// `opsloop replay` with these files; its standard output.
async fn replay_cli(pool: &PgPool, args: &[&str]) -> String {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_opsloop"))
        .arg("replay")
        .args(args)
        .env("DATABASE_URL", database_url(pool))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "replay failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Issue #20: recorded cases judged again by another policy and targets;
/// the differences are reported and nothing is written.
#[sqlx::test]
async fn replay_reports_what_another_policy_would_decide_and_writes_nothing(pool: PgPool) {
    let lp = crate::flow::Loop::full(pool.clone()).await;
    let svc = service();
    crate::walking_skeleton::ingest_metric(&lp, &svc, "latency_p95_ms", 120.0).await;
    let case = crate::walking_skeleton::degraded_case(&lp, &svc).await;
    lp.settle().await;
    assert_eq!(lp.app.status(case).await, "CLOSED");
    let hash: String = sqlx::query_scalar("SELECT plan_hash FROM plan_proposed WHERE case_id = $1")
        .bind(case)
        .fetch_one(&pool)
        .await
        .unwrap();
    let before = loop_size(&lp).await;

    // The same files as the service ran with: nothing differs.
    let same = replay_cli(&pool, &[]).await;
    assert!(
        same.contains("| 1 | 1 | 0 | 0 | 0 | 0 |"),
        "one case, unchanged:\n{same}"
    );

    // The restart script's targets are prod now: two approvers.
    let dir = std::env::temp_dir().join(format!("opsloop-replay-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let shipped = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/targets.toml"),
    )
    .unwrap();
    let prod = shipped.replace(
        "environment = \"staging\"\nscript = \"restart-service.sh\"",
        "environment = \"prod\"\nscript = \"restart-service.sh\"",
    );
    assert_ne!(prod, shipped);
    let targets = dir.join("targets.toml");
    std::fs::write(&targets, prod).unwrap();
    let report = replay_cli(&pool, &["--targets", targets.to_str().unwrap()]).await;
    let line = format!(
        "  gate  plan {}: auto-approved then, needs 2 approvers now",
        &hash[..12]
    );
    assert!(report.contains(&line), "{line:?} not in:\n{report}");
    assert!(
        report.contains(&format!("case {case} (t-001, CLOSED)")),
        "{report}"
    );
    assert!(report.contains("| 1 | 0 | 1 | 0 | 1 | 0 |"), "{report}");

    // A policy that forbids the script: denied.
    let policy = dir.join("policy.toml");
    std::fs::write(
        &policy,
        "forbidden_targets = [\"kube-system\", \"restart-service.sh\"]\n",
    )
    .unwrap();
    let report = replay_cli(&pool, &["--policy", policy.to_str().unwrap()]).await;
    assert!(
        report.contains("auto-approved then, denied now")
            && report.contains("target restart-service.sh is forbidden"),
        "{report}"
    );
    // Another tenant's scope reads no case.
    let other = replay_cli(&pool, &["--tenant", "t-002"]).await;
    assert!(other.contains("| 0 | 0 | 0 | 0 | 0 | 0 |"), "{other}");

    assert_eq!(loop_size(&lp).await, before, "replay wrote nothing");
}

/// The recorded set (tests/replays: the demo's record of eight cases) under
/// the shipped files, with the restart script's targets in prod, and with
/// a policy that forbids it: the reports are the expected ones, and the
/// record is unchanged.
#[sqlx::test]
async fn the_recorded_set_replays_to_the_expected_reports(pool: PgPool) {
    sqlx::raw_sql(sqlx::AssertSqlSafe(include_str!("../replays/recorded.sql")))
        .execute(&pool)
        .await
        .unwrap();
    let before = record_size(&pool).await;
    assert_eq!(before[0], 8, "eight recorded cases");
    let mut reports: Vec<String> = Vec::new();
    for (args, expected) in [
        (vec![], include_str!("../replays/expected-shipped.txt")),
        (
            vec!["--targets", "tests/replays/prod-targets.toml"],
            include_str!("../replays/expected-prod-targets.txt"),
        ),
        (
            vec!["--policy", "tests/replays/forbid-restart.policy.toml"],
            include_str!("../replays/expected-forbid-restart.txt"),
        ),
    ] {
        let report = replay_cli(&pool, &args).await;
        assert_eq!(report, expected, "opsloop replay {args:?}");
        reports.push(report);
    }
    assert_eq!(
        reports[1]
            .matches("auto-approved then, needs 2 approvers now")
            .count(),
        6,
        "every automatic approval of the restart needs two people in prod"
    );
    assert_eq!(record_size(&pool).await, before, "replay wrote nothing");
}
