//! How the whole loop's throughput moves with the number of worker
//! processes (issue #22, docs/CAPACITY.md): one `opsloop serve` process with
//! the API, the relay and the orchestrator, plus 1, 2 or 3 processes each
//! running every worker role (and a relay and an orchestrator of their
//! own), all on one PostgreSQL and one NATS. A burst of cases is opened
//! through the API by concurrent clients (template plan, automatic gate, a
//! script step, verification); the figure is cases closed per second from
//! the first opening to the last close, with the transitions and the CPU
//! the machine spent per case.
//!
//! `bash scripts/capacity.sh` runs it (and bench_footprint) on a database
//! and a nats-server of their own, with the release build.

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use opsloop::pubsub::streams::{CMD_STREAM, EVT_STREAM};
use tokio::process::{Child, Command};

mod common;

const TENANT: &str = "t-001";
const FRONT: &str = "api,relay,orchestrator";
const WORKER: &str = "gatekeeper,planner,analyst,executor,verifier,relay,orchestrator";

fn spawn(
    opsloop: &Path,
    dir: &Path,
    env: &[(&str, String)],
    name: &str,
    roles: &str,
    port: u16,
) -> anyhow::Result<Child> {
    Ok(Command::new(opsloop)
        .args(["serve", "--roles", roles])
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("OPSLOOP_LISTEN", format!("127.0.0.1:{port}"))
        .env_remove("OPENAI_BASE_URL")
        .env_remove("OPSLOOP_EMBEDDINGS_URL")
        .env_remove("OPSLOOP_EMBEDDINGS_MODEL_DIR")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join(format!("{name}.log")))?)
        .kill_on_drop(true)
        .spawn()?)
}

struct Figures {
    cases: usize,
    closed: i64,
    seconds: f64,
    transitions: i64,
    busy_ms_per_case: f64,
    messages_per_case: f64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cases: usize = common::arg("--cases").map_or(Ok(300), |s| s.parse())?;
    let clients: usize = common::arg("--clients").map_or(Ok(8), |s| s.parse())?;
    let opsloop = common::opsloop_binary()?;
    let nats_url = std::env::var("NATS_URL").context("NATS_URL")?;
    println!(
        "bench_scale: {cases} cases opened by {clients} clients through one API process; worker processes run every worker role\n"
    );
    println!(
        "| worker processes | cases closed / opened | seconds | cases/s | ratio to 1 | transitions/s | NATS messages per case | machine busy CPU ms per case |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut base = None;
    for workers in 1..=3 {
        let f = run(&opsloop, &nats_url, workers, cases, clients).await?;
        let rate = f.closed as f64 / f.seconds;
        let base_rate = *base.get_or_insert(rate);
        println!(
            "| {workers} | {} / {} | {:.1} | {rate:.1} | {:.2} | {:.0} | {:.1} | {:.1} |",
            f.closed,
            f.cases,
            f.seconds,
            rate / base_rate,
            f.transitions as f64 / f.seconds,
            f.messages_per_case,
            f.busy_ms_per_case
        );
    }
    Ok(())
}

async fn run(
    opsloop: &Path,
    nats_url: &str,
    workers: usize,
    cases: usize,
    clients: usize,
) -> anyhow::Result<Figures> {
    let stage = common::Stage::new("opsloop_scale", nats_url, TENANT).await?;
    let (pool, js, dir) = (&stage.pool, &stage.js, &stage.dir);
    let env = [
        ("DATABASE_URL", stage.database_url.clone()),
        ("NATS_URL", nats_url.to_string()),
        (
            "OPSLOOP_TOKENS_FILE",
            stage.tokens.to_string_lossy().into_owned(),
        ),
        ("OPSLOOP_VERIFY_DELAY_S", "0".into()),
        ("OPSLOOP_DB_POOL", "8".into()),
    ];
    let port = common::free_port()?;
    let mut children = vec![spawn(opsloop, dir, &env, "front", FRONT, port)?];
    for w in 0..workers {
        let p = common::free_port()?;
        children.push(spawn(
            opsloop,
            dir,
            &env,
            &format!("worker-{w}"),
            WORKER,
            p,
        )?);
    }
    let base = format!("http://127.0.0.1:{port}");
    let http = opsloop::http_client::http_client().build()?;
    common::wait_ready(&http, &base)
        .await
        .with_context(|| format!("logs in {}", dir.display()))?;
    // The workers' consumers exist once their processes logged it; a short
    // wait keeps their start-up out of the measured time.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let feed = Arc::new(common::CaseFeed {
        http,
        bases: vec![base],
        operator: stage.operator.clone(),
        service: stage.service.clone(),
        tenant: TENANT,
        template: "restart-service",
        kind: "service",
    });
    let cpu = common::cpu::CpuMark::now();
    let started = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut feeders = Vec::new();
    for _ in 0..clients {
        let (feed, next) = (feed.clone(), next.clone());
        feeders.push(tokio::spawn(async move {
            let mut opened = Vec::new();
            loop {
                let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if n >= cases {
                    return opened;
                }
                let svc = format!("scale-{n}-{}", uuid::Uuid::new_v4().simple());
                opened.extend(feed.open(n, &svc).await.0);
            }
        }));
    }
    let mut opened = Vec::new();
    for f in feeders {
        opened.extend(f.await?);
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    let (closed, last) = loop {
        let (ended, closed, last): (i64, i64, Option<chrono::DateTime<chrono::Utc>>) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE status IN ('CLOSED', 'PARKED')), \
             count(*) FILTER (WHERE status = 'CLOSED'), max(updated_at) FROM ops_case WHERE id = ANY($1)",
        )
        .bind(&opened)
        .fetch_one(pool)
        .await?;
        if ended as usize == opened.len() || Instant::now() > deadline {
            break (closed, last);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let spent = cpu.until(&common::cpu::CpuMark::now());
    let first: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT min(created_at) FROM ops_case")
            .fetch_one(pool)
            .await?;
    let seconds = match (first, last) {
        (Some(a), Some(b)) => (b - a).as_seconds_f64(),
        _ => started.elapsed().as_secs_f64(),
    };
    let transitions: i64 =
        sqlx::query_scalar("SELECT count(*) FROM case_timeline WHERE kind = 'transition'")
            .fetch_one(pool)
            .await?;
    let mut messages = 0;
    for name in [CMD_STREAM, EVT_STREAM] {
        messages += js.get_stream(name).await?.info().await?.state.messages;
    }
    let busy_ms = spent.machine * 1000.0;
    drop(children);
    let _ = std::fs::remove_dir_all(dir);
    Ok(Figures {
        cases: opened.len(),
        closed,
        seconds,
        transitions,
        busy_ms_per_case: busy_ms / opened.len().max(1) as f64,
        messages_per_case: messages as f64 / opened.len().max(1) as f64,
    })
}
