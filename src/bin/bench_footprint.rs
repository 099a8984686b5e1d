//! Memory of an all-roles `opsloop serve` (issue #22): resident set size at
//! idle and while an HTTP load drives cases through the whole loop
//! (template plan, automatic gate, a script step, verification), without
//! the embedding model and with it; then the time SIGTERM takes to stop it.
//!
//! `bash scripts/capacity.sh footprint [--seconds 60] [--rate 4]` runs it on a
//! database and a nats-server of its own, with the release build.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::process::Command;

mod common;

const TENANT: &str = "t-001";

/// VmRSS of `pid` in MiB.
fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

struct Variant {
    name: &'static str,
    model_dir: Option<String>,
}

struct Figures {
    idle: f64,
    peak: f64,
    end: f64,
    opened: usize,
    closed: i64,
    stop: Duration,
    clean: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let seconds: u64 = common::arg("--seconds").map_or(Ok(60), |s| s.parse())?;
    let rate: f64 = common::arg("--rate").map_or(Ok(4.0), |s| s.parse())?;
    let opsloop = common::opsloop_binary()?;
    let nats_url = std::env::var("NATS_URL").context("NATS_URL")?;
    let mut variants = vec![Variant {
        name: "without the embedding model",
        model_dir: None,
    }];
    match std::env::var("OPSLOOP_EMBEDDINGS_MODEL_DIR") {
        Ok(dir) if !dir.is_empty() => variants.push(Variant {
            name: "with the embedding model (librarian on)",
            model_dir: Some(dir),
        }),
        _ => eprintln!(
            "footprint: OPSLOOP_EMBEDDINGS_MODEL_DIR is not set: only the run without the model"
        ),
    }
    println!(
        "bench_footprint: opsloop serve --roles all, {seconds} s of load at {rate} cases/s through the HTTP API\n"
    );
    println!(
        "| variant | idle RSS | peak RSS under load | RSS at the end | cases opened / closed | SIGTERM → exit |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for v in &variants {
        let f = run(&opsloop, &nats_url, v, seconds, rate).await?;
        println!(
            "| {} | {:.1} MiB | {:.1} MiB | {:.1} MiB | {} / {} | {:.2} s{} |",
            v.name,
            f.idle,
            f.peak,
            f.end,
            f.opened,
            f.closed,
            f.stop.as_secs_f64(),
            if f.clean { "" } else { " (not clean)" }
        );
    }
    Ok(())
}

async fn run(
    opsloop: &PathBuf,
    nats_url: &str,
    v: &Variant,
    seconds: u64,
    rate: f64,
) -> anyhow::Result<Figures> {
    let stage = common::Stage::new("opsloop_footprint", nats_url, TENANT).await?;
    let (pool, dir, tokens) = (&stage.pool, &stage.dir, &stage.tokens);
    let port = common::free_port()?;
    let mut cmd = Command::new(opsloop);
    cmd.args(["serve", "--roles", "all"])
        .env("DATABASE_URL", &stage.database_url)
        .env("NATS_URL", nats_url)
        .env("OPSLOOP_LISTEN", format!("127.0.0.1:{port}"))
        .env("OPSLOOP_TOKENS_FILE", tokens)
        .env("OPSLOOP_VERIFY_DELAY_S", "0")
        .env_remove("OPENAI_BASE_URL")
        .env_remove("OPSLOOP_EMBEDDINGS_URL")
        .env_remove("OPSLOOP_EMBEDDINGS_MODEL_DIR")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("opsloop.log"))?)
        .kill_on_drop(true);
    if let Some(model) = &v.model_dir {
        cmd.env("OPSLOOP_EMBEDDINGS_MODEL_DIR", model);
    }
    let mut child = cmd.spawn()?;
    let pid = child.id().context("no pid")?;
    let base = format!("http://127.0.0.1:{port}");
    let http = opsloop::http_client::http_client().build()?;
    common::wait_ready(&http, &base)
        .await
        .with_context(|| format!("logs in {}", dir.display()))?;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let idle = rss_mib(pid).context("reading RSS")?;

    let feed = common::CaseFeed {
        http,
        bases: vec![base],
        operator: stage.operator.clone(),
        service: stage.service.clone(),
        tenant: TENANT,
        template: "restart-service",
        kind: "service",
    };
    let mut peak = idle;
    let mut opened = 0;
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    let mut n = 0;
    while started.elapsed() < Duration::from_secs(seconds) {
        tick.tick().await;
        n += 1;
        let svc = format!("footprint-{n}-{}", uuid::Uuid::new_v4().simple());
        if feed.open(n, &svc).await.0.is_some() {
            opened += 1;
        }
        peak = peak.max(rss_mib(pid).unwrap_or(0.0));
    }
    // Let the last cases finish while watching the peak.
    let settle = Instant::now();
    while settle.elapsed() < Duration::from_secs(15) {
        peak = peak.max(rss_mib(pid).unwrap_or(0.0));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let end = rss_mib(pid).unwrap_or(0.0);
    let closed: i64 = sqlx::query_scalar("SELECT count(*) FROM ops_case WHERE status = 'CLOSED'")
        .fetch_one(pool)
        .await?;
    let asked = Instant::now();
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .await?;
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait()).await??;
    let stop = asked.elapsed();
    let _ = std::fs::remove_dir_all(dir);
    Ok(Figures {
        idle,
        peak,
        end,
        opened,
        closed,
        stop,
        clean: status.success(),
    })
}
