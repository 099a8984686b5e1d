//! Shared by the benchmark programs: the case walk and latency summaries.

// Each benchmark binary includes this module and uses only part of it.
#![allow(dead_code)]

use std::time::Duration;

use opsloop::orchestrator::{Actor, NewCase, Orchestrator, Origin, Outcome, TransitionRequest};
use opsloop::workflow::EventKind;
use serde_json::{Value, json};
use uuid::Uuid;

/// The walk each client repeats: into PLANNING, then PARKED <-> PLANNING.
pub fn event_at(step: u64) -> EventKind {
    match step {
        0 => EventKind::StartAnalysis,
        1 => EventKind::AnalysisDone,
        n if n % 2 == 0 => EventKind::PlanFailed,
        _ => EventKind::Resume,
    }
}

pub fn bench_actor() -> Actor {
    Actor {
        id: "bench".into(),
        human: false,
    }
}

pub async fn new_case(orchestrator: &Orchestrator) -> anyhow::Result<Uuid> {
    let new = NewCase {
        tenant: "bench".into(),
        title: "bench case".into(),
        severity: "low".into(),
        kind: None,
        labels: json!({}),
    };
    Ok(orchestrator.create_case(new, &bench_actor()).await?.id)
}

/// One transition through `Orchestrator::transition`, keyed like an HTTP request.
pub async fn orchestrator_step(
    orchestrator: &Orchestrator,
    case: Uuid,
    step: u64,
) -> anyhow::Result<()> {
    let outcome = orchestrator
        .transition(TransitionRequest {
            case_id: case,
            event: event_at(step),
            actor: bench_actor(),
            reason: None,
            plan_hash: None,
            meta: Value::Null,
            expected_version: None,
            origin: Origin::Http {
                idempotency_key: Uuid::now_v7().to_string(),
                request_hash: "0".repeat(64),
            },
            trace_id: Uuid::new_v4().simple().to_string(),
        })
        .await?;
    match outcome {
        Outcome::Applied(_) => Ok(()),
        other => anyhow::bail!("unexpected outcome {other:?}"),
    }
}

/// The `p`-quantile of sorted samples.
pub fn quantile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

pub fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// PostgreSQL from `DATABASE_URL`, migrated.
pub async fn database(max_connections: u32) -> anyhow::Result<sqlx::PgPool> {
    use anyhow::Context;
    let url = std::env::var("DATABASE_URL").context("DATABASE_URL must be set")?;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(max_connections)
        .connect(&url)
        .await?;
    opsloop::MIGRATOR.run(&pool).await?;
    Ok(pool)
}

/// NATS from `NATS_URL`, with the product's streams in place.
pub async fn jetstream() -> anyhow::Result<(async_nats::Client, async_nats::jetstream::Context)> {
    use anyhow::Context;
    let url = std::env::var("NATS_URL").context("NATS_URL must be set")?;
    let client = async_nats::connect(url.as_str()).await?;
    let js = async_nats::jetstream::new(client.clone());
    opsloop::pubsub::streams::ensure(&js, &Default::default()).await?;
    Ok((client, js))
}
