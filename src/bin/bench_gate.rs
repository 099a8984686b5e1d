//! bench_gate: how long after a case enters WAIT_GATE the gatekeeper's
//! automatic decision has moved it to EXECUTING, with every role running in
//! this process against the real PostgreSQL and NATS (relay, orchestrator
//! consumer, planner, gatekeeper), cases arriving at a steady rate.
//!
//! Latency = timeline time of the `gate_approved` transition minus that of
//! `plan_ready` (both PostgreSQL's clock): relay -> JetStream -> gatekeeper ->
//! relay -> JetStream -> orchestrator. Baseline in the same run: one
//! JetStream publish -> durable pull -> ack round trip (the path has two).
//!
//! A second phase runs the same load with the LLM planner against a fake
//! OpenAI-compatible server started in this process (answering a fixed
//! valid plan after `--llm-delay-ms`), and reports PLANNING -> WAIT_GATE for
//! both planners (the template phase is the LLM path's baseline) and the
//! LLM request round trip recorded in `plan_attempt`.
//!
//! Usage: DATABASE_URL=... NATS_URL=... bench_gate [--cases 200] [--rate 20] [--llm-delay-ms 0]

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use async_nats::jetstream;
use opsloop::gatekeeper::Gatekeeper;
use opsloop::orchestrator::Orchestrator;
use opsloop::planner::contract::PlanLimits;
use opsloop::planner::llm::{LlmPlanner, LlmSettings};
use opsloop::planner::templates::Templates;
use opsloop::planner::worker::Planner;
use opsloop::roles::Role;
use opsloop::store::NewCase;
use opsloop::workflow::EventKind;
use serde_json::json;
use uuid::Uuid;

mod common;
#[path = "common/fake_llm.rs"]
mod fake_llm;

use common::{
    Workers, arg, bench_actor, between, database, direct_step, hop_baseline,
    jetstream as connect_jetstream, ms, quantile,
};

struct Phase {
    /// analysis_done -> plan_ready: relay, planner (template or LLM), relay, orchestrator.
    planning: Vec<Duration>,
    /// plan_ready -> gate_approved.
    gate: Vec<Duration>,
    executing: usize,
    ids: Vec<Uuid>,
}

fn report(label: &str, cases: usize, p: &Phase) {
    println!(
        "[{label}] PLANNING -> WAIT_GATE over {} cases: p50 {:.1} ms, p99 {:.1} ms; WAIT_GATE -> EXECUTING p50 {:.1} ms, p99 {:.1} ms; {} of {cases} reached EXECUTING",
        p.planning.len(),
        ms(quantile(&p.planning, 0.5)),
        ms(quantile(&p.planning, 0.99)),
        ms(quantile(&p.gate, 0.5)),
        ms(quantile(&p.gate, 0.99)),
        p.executing
    );
}

fn llm_settings(base_url: &str) -> LlmSettings {
    LlmSettings {
        base_url: Some(base_url.to_string()),
        api_key: String::new(),
        model: "bench-fake".into(),
        timeout_ms: 10_000,
        max_repairs: 2,
        max_retries: 2,
        backoff_ms: 100,
        structured_output: true,
        max_tokens: 1024,
        prompts_dir: "prompts".into(),
        prompt: "plan-v2".into(),
        context_tokens: None,
        example_plan: false,
    }
}

/// One phase: `cases` cases reach PLANNING at `rate`/s; every role runs
/// on consumers of this phase only.
async fn run_phase(
    pool: &sqlx::PgPool,
    client: &async_nats::Client,
    js: &jetstream::Context,
    cases: usize,
    rate: f64,
    llm_url: Option<&str>,
) -> anyhow::Result<Phase> {
    let orchestrator = Orchestrator::new(pool.clone());
    let mut workers = Workers::start(pool, client, js, &orchestrator).await?;
    let limits = PlanLimits {
        script_allowlist: ["restart-service.sh".to_string()].into(),
        ..PlanLimits::default()
    };
    let templates = Templates::load(Path::new("templates"), &limits)
        .context("run from the repository root (templates/)")?;
    let llm = match llm_url {
        None => None,
        Some(url) => LlmPlanner::from_settings(&llm_settings(url))?,
    };
    let planner = Planner {
        pool: pool.clone(),
        templates,
        limits,
        llm,
        memory: Default::default(),
    };
    workers.add_worker(Role::Planner, planner).await?;
    // The shipped targets file: the demo script runs in staging and
    // declares its dry-run flag, as in the service. The executor rehearses
    // each plan before the gate (only `cmd.exec.dryrun` reaches it here:
    // the measured span ends at EXECUTING).
    let policy = common::shipped_policy()?;
    let gate = Gatekeeper {
        policy: policy.clone(),
    };
    workers.add_worker(Role::Gatekeeper, gate).await?;
    let executor = common::shipped_executor(pool, workers.wake(), policy);
    let dry_runs = opsloop::pubsub::consumer::ConsumerSpec::new(
        opsloop::pubsub::streams::CMD_STREAM,
        "executor-dryrun",
        opsloop::contract::command::CMD_EXEC_DRYRUN,
    )
    .with_concurrency(8);
    workers.add_on(dry_runs, executor).await?;

    let interval = Duration::from_secs_f64(1.0 / rate);
    let mut ids = Vec::with_capacity(cases);
    let mut next = Instant::now();
    for _ in 0..cases {
        tokio::time::sleep_until(next.into()).await;
        next += interval;
        let new = NewCase {
            tenant: "bench".parse().expect("a valid tenant"),
            title: "bench gate".into(),
            severity: "low".into(),
            kind: Some("demo".into()),
            labels: json!({}),
        };
        let case = orchestrator.create_case(new, &bench_actor()).await?.id;
        direct_step(&orchestrator, case, EventKind::StartAnalysis).await?;
        direct_step(&orchestrator, case, EventKind::AnalysisDone).await?;
        ids.push(case);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let executing = loop {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM ops_case WHERE id = ANY($1) AND status = 'EXECUTING'",
        )
        .bind(&ids)
        .fetch_one(pool)
        .await?;
        if n as usize == cases || Instant::now() > deadline {
            break n;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    workers.stop().await;
    let planning = between(pool, &ids, "analysis_done", "plan_ready").await?;
    let gate = between(pool, &ids, "plan_ready", "gate_approved").await?;
    Ok(Phase {
        planning,
        gate,
        executing: executing as usize,
        ids,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cases: usize = arg("--cases").map_or(Ok(200), |s| s.parse())?;
    let rate: f64 = arg("--rate").map_or(Ok(20.0), |s| s.parse())?;
    let llm_delay: u64 = arg("--llm-delay-ms").map_or(Ok(0), |s| s.parse())?;
    let pool = database(16).await?;
    let (client, js) = connect_jetstream().await?;
    println!("bench_gate: {cases} cases at {rate}/s per phase, all roles in one process");

    let template = run_phase(&pool, &client, &js, cases, rate, None).await?;
    report("template planner", cases, &template);
    let fake = fake_llm::start(Duration::from_millis(llm_delay)).await?;
    let llm = run_phase(&pool, &client, &js, cases, rate, Some(&fake.base_url)).await?;
    report(
        &format!("LLM planner, fake server answering after {llm_delay} ms"),
        cases,
        &llm,
    );
    let attempts: Vec<Duration> = sqlx::query_scalar::<_, i32>(
        "SELECT latency_ms FROM plan_attempt WHERE case_id = ANY($1) ORDER BY latency_ms",
    )
    .bind(&llm.ids)
    .fetch_all(&pool)
    .await?
    .into_iter()
    .map(|ms| Duration::from_millis(ms as u64))
    .collect();
    println!(
        "LLM requests (async-openai round trip to the fake server, from plan_attempt): {} requests, p50 {:.1} ms, p99 {:.1} ms",
        attempts.len(),
        ms(quantile(&attempts, 0.5)),
        ms(quantile(&attempts, 0.99))
    );
    println!(
        "LLM path vs template path, PLANNING -> WAIT_GATE p50: {:.2}x",
        quantile(&llm.planning, 0.5).as_secs_f64()
            / quantile(&template.planning, 0.5).as_secs_f64().max(1e-9)
    );

    let gate = &template.gate;
    let hop = hop_baseline(&js, 200).await?;
    println!(
        "template phase, WAIT_GATE -> EXECUTING over {} of {cases} cases ({} reached EXECUTING): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (target p99 < 1000 ms)",
        gate.len(),
        template.executing,
        ms(quantile(gate, 0.5)),
        ms(quantile(gate, 0.99)),
        ms(gate.last().copied().unwrap_or_default())
    );
    println!(
        "baseline JetStream hop (publish, pull, ack): p50 {:.2} ms, p99 {:.2} ms; gate p50 = {:.1} hops",
        ms(quantile(&hop, 0.5)),
        ms(quantile(&hop, 0.99)),
        quantile(gate, 0.5).as_secs_f64() / quantile(&hop, 0.5).as_secs_f64().max(1e-9)
    );
    Ok(())
}
