//! bench_console: the web console's case page for a case with 200
//! timeline entries (issue #18: under 150 KB transferred, server-rendered
//! in p95 < 50 ms).
//!
//! The product's own API in-process on loopback, one signed-in session,
//! `--requests` sequential `GET /ui/case/{id}` of a case that also has a
//! plan, a dry run, approvals, a run and a charted verification;
//! reported: the page's bytes
//! as transferred (no compression layer: the body as sent) and the
//! latency quantiles. The baseline, in the same run and the same way: the
//! API's `GET /case/{id}/timeline?limit=200` of the same case (the JSON of
//! the entries the page renders, with none of the page's other reads).
//!
//! ```sh
//! cargo build --release --bin bench_console
//! target/release/bench_console --requests 500
//! ```

use std::time::{Duration, Instant};

use opsloop::api::AppState;
use opsloop::auth::{Identity, Role, TenantScope, TokenStore};
use opsloop::orchestrator::Orchestrator;
use opsloop::store::NewCase;
use opsloop::workflow::EventKind;
use serde_json::json;

mod common;

use common::{arg, bench_actor, direct_step, fresh_database, ms, quantile};

const TOKEN: &str = "bench-console-viewer";

async fn timed(
    http: &reqwest::Client,
    url: &str,
    cookie: Option<&str>,
    token: Option<&str>,
    n: usize,
) -> anyhow::Result<(Vec<Duration>, usize)> {
    let mut times = Vec::with_capacity(n);
    let mut bytes = 0;
    for _ in 0..n {
        let mut request = http.get(url);
        if let Some(c) = cookie {
            request = request.header("cookie", c);
        }
        if let Some(t) = token {
            request = request.bearer_auth(t);
        }
        let started = Instant::now();
        let response = request.send().await?;
        anyhow::ensure!(
            response.status() == 200,
            "{url}: HTTP {}",
            response.status()
        );
        let body = response.bytes().await?;
        times.push(started.elapsed());
        bytes = body.len();
    }
    Ok((times, bytes))
}

/// What the case page reads besides the timeline, as the real loop writes
/// it (the shapes copied from a case the browser test ran): the plan with
/// its gate decision and two approvals, its dry run, a run whose step
/// printed 1 KB, and a passed verification over 30 minutes of
/// `metric_1m` (a chart of 31 minutes).
async fn with_plan_run_and_chart(pool: &sqlx::PgPool, case: uuid::Uuid) -> anyhow::Result<()> {
    use uuid::Uuid;
    let check = json!({"resource": "checkout", "metric": "latency_p95_ms", "stat": "avg",
                       "op": "<", "threshold": 300, "window_s": 1800});
    let step = |undo: bool| {
        let mut args = vec!["--service", "checkout"];
        if undo {
            args.push("--undo");
        }
        json!({"action": "script.exec", "params": {"script": "restart-service.sh", "args": args},
               "timeout_s": 30, "retry": 1})
    };
    let plan = json!({"title": "Restart service checkout", "environment": "staging",
        "rationale": "The service is degraded; a restart clears stuck workers.",
        "steps": [step(false)], "rollback": {"steps": [step(true)]}, "verify": {"checks": [check]}});
    let hash = "a".repeat(64);
    let digest = "d".repeat(64);
    let plan_id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO plan_proposed (id, case_id, plan, plan_hash, source, author, schema_valid, complete, \
         required_approvers, gate_verdict, gate_risk, gate_reasons, gate_auto_rollback, gate_decided_at, dryrun_digest, \
         gate_dryrun_digest) VALUES ($1, $2, $3, $4, 'template', 'planner', true, true, 2, \
         'require_approvers', 0.5, $5, true, now(), $6, $6)",
    )
    .bind(plan_id)
    .bind(case)
    .bind(&plan)
    .bind(&hash)
    .bind(vec![
        "riskiest action weighs 0.20".to_string(),
        "environment prod adds 0.30".into(),
        "2 distinct approvers: production".into(),
    ])
    .bind(&digest)
    .execute(pool)
    .await?;
    let out = opsloop::executor::script::Captured::of;
    sqlx::query(
        "INSERT INTO plan_dryrun (id, case_id, plan_id, plan_hash, digest, outcome, artefact, attempt_id) \
         VALUES ($1, $2, $3, $4, $5, 'ok', $6, $7)",
    )
    .bind(Uuid::now_v7())
    .bind(case)
    .bind(plan_id)
    .bind(&hash)
    .bind(&digest)
    .bind(json!({"observed_at": chrono::Utc::now(), "steps": [{"index": 0, "action": "script.exec",
        "target": "script:restart-service.sh:[\"--service\",\"checkout\"]", "outcome": "ok",
        "detail": {"script": "restart-service.sh", "args": ["--dry-run", "--service", "checkout"],
                   "exit_code": 0, "elapsed_ms": 2, "stdout": out("would restart checkout\n"), "stderr": out("")}}]}))
    .bind(Uuid::now_v7())
    .execute(pool)
    .await?;
    for approver in ["bob", "carol"] {
        sqlx::query(
            "INSERT INTO plan_approved (id, plan_id, plan_hash, approver, kind, dryrun_digest) \
             VALUES ($1, $2, $3, $4, 'human', $5)",
        )
        .bind(Uuid::now_v7())
        .bind(plan_id)
        .bind(&hash)
        .bind(approver)
        .bind(&digest)
        .execute(pool)
        .await?;
    }
    let run = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO exec_run (id, case_id, plan_hash, kind, attempt_id, case_version, status, finished_at) \
         VALUES ($1, $2, $3, 'run', $4, 200, 'done', now())",
    )
    .bind(run)
    .bind(case)
    .bind(&hash)
    .bind(Uuid::now_v7())
    .execute(pool)
    .await?;
    let printed = "restarting worker pool of checkout: draining, stopping, starting\n".repeat(16);
    sqlx::query(
        "INSERT INTO exec_step (run_id, phase, idx, action, status, tries, result, finished_at, target) \
         VALUES ($1, 'step', 0, 'script.exec', 'done', 1, $2, now(), $3)",
    )
    .bind(run)
    .bind(json!({"exit_code": 0, "stdout": out(&printed), "stderr": out("")}))
    .bind("script:restart-service.sh:[\"--service\",\"checkout\"]")
    .execute(pool)
    .await?;
    let now = chrono::Utc::now();
    sqlx::query(
        "INSERT INTO metric_1m (tenant, resource, metric, ts, avg, max) \
         SELECT 'bench', 'checkout', 'latency_p95_ms', date_trunc('minute', $1::timestamptz) - m * interval '1 minute', \
                120 + 15 * sin(m), 140 + 15 * sin(m) FROM generate_series(0, 30) m",
    )
    .bind(now)
    .execute(pool)
    .await?;
    sqlx::query(
        "INSERT INTO verify_result (id, case_id, plan_hash, command_id, case_version, outcome, checks, \
         window_from, window_to) VALUES ($1, $2, $3, $4, 201, 'pass', $5, $6, $7)",
    )
    .bind(Uuid::now_v7())
    .bind(case)
    .bind(&hash)
    .bind(Uuid::now_v7())
    .bind(json!([{"check": check, "resource": "checkout", "verdict": "pass",
                  "detail": {"figure": 121.0, "points": 31, "source": "metric_1m", "expected": 30}}]))
    .bind(now - chrono::Duration::seconds(1800))
    .bind(now)
    .execute(pool)
    .await?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let requests: usize = arg("--requests").map_or(Ok(500), |s| s.parse())?;
    let url = fresh_database("opsloop_console").await?;
    let pool = opsloop::config::connect_db(&url, 8).await?;
    opsloop::MIGRATOR.run(&pool).await?;
    let mut tokens = TokenStore::default();
    tokens.insert(
        TOKEN,
        Identity {
            id: "viewer".into(),
            roles: [Role::Viewer].into(),
            tenants: TenantScope::All,
            acts_as: None,
        },
    );
    let orchestrator = Orchestrator::new(pool.clone());
    let state = AppState::bare(orchestrator.clone(), tokens);
    // A case with 200 timeline entries: created, analysed, then 99 rounds
    // of plan_failed / resume (each a transition with its reason).
    let new = NewCase {
        tenant: "bench".parse().expect("a valid tenant"),
        title: "checkout latency regression after deploy 4711".into(),
        severity: "high".into(),
        kind: Some("service".into()),
        labels: json!({"service": "checkout", "alertname": "ServiceDegraded"}),
    };
    let case = orchestrator.create_case(new, &bench_actor()).await?.id;
    direct_step(&orchestrator, case, EventKind::StartAnalysis).await?;
    direct_step(&orchestrator, case, EventKind::AnalysisDone).await?;
    for _ in 0..99 {
        direct_step(&orchestrator, case, EventKind::PlanFailed).await?;
        direct_step(&orchestrator, case, EventKind::Resume).await?;
    }
    with_plan_run_and_chart(&pool, case).await?;
    let entries: i64 = sqlx::query_scalar("SELECT count(*) FROM case_timeline WHERE case_id = $1")
        .bind(case)
        .fetch_one(&pool)
        .await?;
    // A signed-in browser: the session row as sign-in writes it.
    let session = "5".repeat(64);
    sqlx::query("INSERT INTO ui_session (id_sha256, token_sha256, csrf) VALUES ($1, $2, $3)")
        .bind(hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
            session.as_bytes(),
        )))
        .bind(opsloop::auth::token_sha256(TOKEN))
        .bind("6".repeat(64))
        .execute(&pool)
        .await?;
    let base = common::serve_api(state).await?;
    let http = opsloop::http_client::http_client().build()?;
    let cookie = format!("opsloop_session={session}");
    let page = format!("{base}/ui/case/{case}");
    let api = format!("{base}/case/{case}/timeline?limit=200");
    // The page measured is the whole one: plan, dry run, run output, chart.
    let shown = http
        .get(&page)
        .header("cookie", &cookie)
        .send()
        .await?
        .text()
        .await?;
    for part in [
        "Checks after the change",
        "Dry run",
        "2 of 2 approvals",
        "restarting worker pool",
        "class=\"point\"",
    ] {
        anyhow::ensure!(shown.contains(part), "the case page lacks {part:?}");
    }
    // Warm both paths, then measure them interleaved in 5 rounds.
    timed(&http, &page, Some(&cookie), None, 20).await?;
    timed(&http, &api, None, Some(TOKEN), 20).await?;
    let (mut page_times, mut api_times) = (Vec::new(), Vec::new());
    let (mut page_bytes, mut api_bytes) = (0, 0);
    for _ in 0..5 {
        let (t, b) = timed(&http, &page, Some(&cookie), None, requests / 5).await?;
        page_times.extend(t);
        page_bytes = b;
        let (t, b) = timed(&http, &api, None, Some(TOKEN), requests / 5).await?;
        api_times.extend(t);
        api_bytes = b;
    }
    page_times.sort();
    api_times.sort();
    let (p50, p95) = (quantile(&page_times, 0.5), quantile(&page_times, 0.95));
    let (a50, a95) = (quantile(&api_times, 0.5), quantile(&api_times, 0.95));
    println!(
        "case page, {entries} timeline entries: {} requests, {:.1} KB, p50 {:.2} ms, p95 {:.2} ms (target < 150 KB, p95 < 50 ms)",
        page_times.len(),
        page_bytes as f64 / 1024.0,
        ms(p50),
        ms(p95)
    );
    println!(
        "baseline GET /case/{{id}}/timeline?limit=200: {:.1} KB, p50 {:.2} ms, p95 {:.2} ms",
        api_bytes as f64 / 1024.0,
        ms(a50),
        ms(a95)
    );
    println!(
        "page / baseline: bytes {:.2}x, p95 {:.2}x",
        page_bytes as f64 / api_bytes.max(1) as f64,
        ms(p95) / ms(a95).max(1e-9)
    );
    Ok(())
}
