//! bench_exec: the executor's step latency for `noop` and `script.exec`,
//! and the happy path end to end, with every role running in this process
//! against the real PostgreSQL and NATS (relay, orchestrator consumer,
//! analyst, planner, gatekeeper, executor, verifier) and cases arriving at
//! a steady rate.
//!
//! Two phases with a template plan each: `observe` (one `noop` step) and
//! `restart-service` (one `script.exec` of the shipped demo script). For
//! every case: `start_analysis` → CLOSED (timeline times, PostgreSQL's
//! clock), healthy metrics already ingested, verification without delay.
//! Step latency is what the executor records for the step (`exec_step`
//! started → finished: the try plus its records and fact).
//!
//! Baselines in the same run: each adapter called directly, with no
//! records and no messages (the step's cost over the bare action), and one
//! JetStream hop (publish, pull, ack; the loop makes about eleven).
//!
//! Usage: DATABASE_URL=... NATS_URL=... bench_exec [--cases 40] [--rate 4]

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use async_nats::jetstream;
use clap::Parser;
use opsloop::analyst::Analyst;
use opsloop::contract::plan::{Action, ScriptParams};
use opsloop::executor::adapter::{Adapter, Noop};
use opsloop::executor::script::ScriptAdapter;
use opsloop::executor::{ExecSettings, Executor};
use opsloop::gatekeeper::Gatekeeper;
use opsloop::orchestrator::Orchestrator;
use opsloop::planner::contract::PlanLimits;
use opsloop::planner::templates::Templates;
use opsloop::planner::worker::Planner;
use opsloop::roles::Role;
use opsloop::store::NewCase;
use opsloop::verifier::{Verifier, VerifySettings};
use opsloop::workflow::EventKind;
use serde_json::json;

mod common;

use common::{
    Workers, arg, bench_actor, between, database, direct_step, hop_baseline,
    jetstream as connect_jetstream, ms, quantile, shipped_policy,
};

const SCRIPT: &str = "restart-service.sh";

/// The settings the service would take from flags, with this program's
/// choices: no verification delay, the shipped scripts folder.
#[derive(Parser)]
struct Settings {
    #[command(flatten)]
    exec: ExecSettings,
    #[command(flatten)]
    verify: VerifySettings,
}

fn settings() -> Settings {
    Settings::parse_from([
        "bench_exec",
        "--scripts-dir",
        "scripts/actions",
        "--delay-s",
        "0",
    ])
}

struct Phase {
    e2e: Vec<Duration>,
    steps: Vec<Duration>,
    closed: usize,
}

/// Healthy minutes for the resource, enough for both templates' checks.
async fn healthy_metrics(pool: &sqlx::PgPool, resource: &str) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO metric_1m (tenant, resource, metric, ts, avg, max) \
         SELECT 'bench', $1, m.metric, date_trunc('minute', now()) - make_interval(mins => g), m.v, m.v \
         FROM generate_series(0, 5) g, (VALUES ('error_rate', 0.001), ('latency_p95_ms', 120.0)) m(metric, v) \
         ON CONFLICT DO NOTHING",
    )
    .bind(resource)
    .execute(pool)
    .await?;
    Ok(())
}

async fn run_phase(
    pool: &sqlx::PgPool,
    client: &async_nats::Client,
    js: &jetstream::Context,
    template: &str,
    cases: usize,
    rate: f64,
) -> anyhow::Result<Phase> {
    let orchestrator = Orchestrator::new(pool.clone());
    let mut workers = Workers::start(pool, client, js, &orchestrator).await?;
    let limits = PlanLimits {
        script_allowlist: [SCRIPT.to_string()].into(),
        ..PlanLimits::default()
    };
    let templates = Templates::load(Path::new("templates"), &limits)
        .context("run from the repository root (templates/)")?;
    let s = settings();
    workers.add_worker(Role::Analyst, Analyst).await?;
    let planner = Planner {
        pool: pool.clone(),
        templates,
        limits,
        llm: None,
        memory: Default::default(),
    };
    workers.add_worker(Role::Planner, planner).await?;
    // The shipped targets file: the demo script runs in staging and
    // declares its dry-run flag, as in the service.
    let policy = shipped_policy()?;
    let gate = Gatekeeper {
        policy: policy.clone(),
    };
    workers.add_worker(Role::Gatekeeper, gate).await?;
    let mut executor = Executor::new(pool.clone(), &s.exec, &[SCRIPT.to_string()], workers.wake());
    executor.set_policy(std::sync::Arc::new(policy));
    workers.add(Role::Executor, executor).await?;
    let verifier = Verifier::new(pool.clone(), s.verify.clone())?;
    workers.add_worker(Role::Verifier, verifier).await?;

    let interval = Duration::from_secs_f64(1.0 / rate);
    let mut ids = Vec::with_capacity(cases);
    let mut next = Instant::now();
    for i in 0..cases {
        tokio::time::sleep_until(next.into()).await;
        next += interval;
        // One service per case: the executor runs one change per target.
        let service = format!("bench-{}-{i}", std::process::id());
        healthy_metrics(pool, &service).await?;
        let new = NewCase {
            tenant: "bench".parse().expect("a valid tenant"),
            title: "bench exec".into(),
            severity: "low".into(),
            kind: Some("service".into()),
            labels: json!({"template": template, "service": service}),
        };
        let case = orchestrator.create_case(new, &bench_actor()).await?.id;
        direct_step(&orchestrator, case, EventKind::StartAnalysis).await?;
        ids.push(case);
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let resting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM ops_case WHERE id = ANY($1) AND status IN ('CLOSED', 'PARKED')",
        )
        .bind(&ids)
        .fetch_one(pool)
        .await?;
        if resting as usize == cases || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    workers.stop().await;
    let closed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM ops_case WHERE id = ANY($1) AND status = 'CLOSED'",
    )
    .bind(&ids)
    .fetch_one(pool)
    .await?;
    let mut steps: Vec<Duration> = sqlx::query_scalar::<_, f64>(
        "SELECT extract(epoch FROM s.finished_at - s.started_at)::float8 FROM exec_step s \
         JOIN exec_run r ON r.id = s.run_id WHERE r.case_id = ANY($1) AND s.phase = 'step' AND s.status = 'done'",
    )
    .bind(&ids)
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(Duration::from_secs_f64)
    .collect();
    steps.sort_unstable();
    Ok(Phase {
        e2e: between(pool, &ids, "start_analysis", "verify_pass").await?,
        steps,
        closed: closed as usize,
    })
}

/// The adapter alone, `rounds` times in a row.
async fn adapter_alone(adapter: &dyn Adapter, params: &Action, rounds: usize) -> Vec<Duration> {
    let mut out = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t = Instant::now();
        if let Err(e) = adapter.run(params, Duration::from_secs(30)).await {
            eprintln!("adapter failed: {}", e.message);
        }
        out.push(t.elapsed());
    }
    out.sort_unstable();
    out
}

fn line(label: &str, d: &[Duration]) -> String {
    format!(
        "{label}: n {}, p50 {:.2} ms, p95 {:.2} ms, max {:.2} ms",
        d.len(),
        ms(quantile(d, 0.5)),
        ms(quantile(d, 0.95)),
        ms(d.last().copied().unwrap_or_default())
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cases: usize = arg("--cases").map_or(Ok(40), |s| s.parse())?;
    let rate: f64 = arg("--rate").map_or(Ok(4.0), |s| s.parse())?;
    let pool = database(16).await?;
    let (client, js) = connect_jetstream().await?;
    println!("bench_exec: {cases} cases at {rate}/s per phase, all roles in one process");

    let noop = run_phase(&pool, &client, &js, "observe", cases, rate).await?;
    let script = run_phase(&pool, &client, &js, "restart-service", cases, rate).await?;

    let s = settings();
    let direct = ScriptAdapter {
        dir: s.exec.scripts_dir.clone(),
        allowlist: [SCRIPT.to_string()].into(),
        env_allowlist: s.exec.script_env.clone(),
        output_cap: s.exec.output_cap,
    };
    let script_params = Action::ScriptExec(ScriptParams {
        script: SCRIPT.into(),
        args: Some(vec!["--service".into(), "bench-direct".into()]),
    });
    let noop_alone = adapter_alone(&Noop, &Action::Noop, 200).await;
    let script_alone = adapter_alone(&direct, &script_params, cases.max(20)).await;
    let hop = hop_baseline(&js, 200).await?;

    for (label, phase, alone) in [
        ("noop", &noop, &noop_alone),
        ("script.exec", &script, &script_alone),
    ] {
        println!("[{label}] {} of {cases} cases CLOSED", phase.closed);
        println!(
            "  {}",
            line("step, as the executor records it", &phase.steps)
        );
        println!("  {}", line("baseline: the adapter alone", alone));
        let (step, bare) = (quantile(&phase.steps, 0.5), quantile(alone, 0.5));
        let ratio = match bare.as_secs_f64() {
            // Under a microsecond (noop): a ratio would only show the noise.
            b if b < 1e-6 => "n/a, the adapter alone takes under 1 us".to_string(),
            b => format!("{:.2}x", step.as_secs_f64() / b),
        };
        println!(
            "  step / adapter alone, p50: {ratio} (+{:.2} ms for the step's records and fact)",
            ms(step.saturating_sub(bare))
        );
        println!(
            "  {} (target p50 < 2000 ms)",
            line("happy path start_analysis -> CLOSED", &phase.e2e)
        );
        println!(
            "  happy path p50 = {:.1} JetStream hops (hop p50 {:.2} ms)",
            quantile(&phase.e2e, 0.5).as_secs_f64() / quantile(&hop, 0.5).as_secs_f64().max(1e-9),
            ms(quantile(&hop, 0.5))
        );
    }
    Ok(())
}
