//! bench_outbox: the outbox relay under load, against the real PostgreSQL
//! and NATS JetStream, with its baselines measured in the same run.
//!
//! 1. peak: closed-loop transitions (8 clients, orchestrator path) with the
//!    relay off, then with the relay on (ratio = relay overhead);
//! 2. steady open-loop load at 50 % and 90 % of that peak with the relay on:
//!    commit -> ack lag p50/p99/max (from `outbox.created_at` to the acked
//!    row's deletion, PostgreSQL clock), backlog sampled over time;
//! 3. relay capacity: drain a backlog built with the relay off, rows/s:
//!    once with the peak's 8 cases of thousands of transitions each (the
//!    worst case for per-case order: one row per case in flight), once with
//!    the backlog spread over many cases of `--per-case` transitions;
//! 4. baseline: raw JetStream ack'd publishes (async, windowed) of the same
//!    payload size, msgs/s.
//!
//! Usage: DATABASE_URL=... NATS_URL=... bench_outbox [--seconds 6] [--clients 8] [--batch 256]

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, message::PublishMessage};
use opsloop::orchestrator::Orchestrator;
use opsloop::pubsub::relay::{Relay, RelaySettings};
use opsloop::pubsub::streams::StreamSettings;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

mod common;

use common::{
    arg, database, jetstream as connect_jetstream, ms, new_case, orchestrator_step, quantile,
};

/// Runs `clients` walkers for `seconds`; with `rate` (transitions/s in
/// total) they pace themselves (open loop), otherwise they go flat out.
/// With `per_case`, a walker moves on to a new case after that many
/// transitions; otherwise it walks one case all along.
async fn load(
    orchestrator: &Orchestrator,
    clients: usize,
    seconds: f64,
    rate: Option<f64>,
    per_case: Option<u64>,
) -> anyhow::Result<(usize, f64)> {
    let mut cases = Vec::new();
    for _ in 0..clients {
        cases.push(new_case(orchestrator).await?);
    }
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::new();
    for case in cases {
        let orchestrator = orchestrator.clone();
        let interval = rate.map(|r| Duration::from_secs_f64(clients as f64 / r));
        tasks.push(tokio::spawn(async move {
            let (mut case, mut step, mut total) = (case, 0u64, 0usize);
            let mut next = Instant::now();
            while Instant::now() < deadline {
                if let Some(i) = interval {
                    tokio::time::sleep_until(next.into()).await;
                    next += i;
                }
                if per_case.is_some_and(|n| step >= n) {
                    case = new_case(&orchestrator).await?;
                    step = 0;
                }
                orchestrator_step(&orchestrator, case, step).await?;
                step += 1;
                total += 1;
            }
            anyhow::Ok(total)
        }));
    }
    let mut n = 0;
    for t in tasks {
        n += t.await??;
    }
    Ok((n, started.elapsed().as_secs_f64()))
}

struct RelayHandle {
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

fn start_relay(relay: &Relay, orchestrator: &Orchestrator) -> RelayHandle {
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(
        relay
            .clone()
            .run(orchestrator.outbox_ready(), shutdown.clone()),
    );
    RelayHandle { shutdown, task }
}

impl RelayHandle {
    async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
    }
}

async fn drain(relay: &Relay) -> anyhow::Result<usize> {
    let mut n = 0;
    loop {
        let r = relay.relay_once().await?;
        if r.published + r.failed == 0 {
            return Ok(n);
        }
        n += r.published;
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let seconds: f64 = arg("--seconds").map_or(Ok(6.0), |s| s.parse())?;
    let clients: usize = arg("--clients").map_or(Ok(8), |s| s.parse())?;
    let pool = database(u32::try_from(clients + 8)?).await?;
    let (client, js) = connect_jetstream().await?;
    let orchestrator = Orchestrator::new(pool.clone());
    let lag_samples = Arc::new(std::sync::Mutex::new(Vec::new()));
    let settings = RelaySettings {
        lag_samples: Some(lag_samples.clone()),
        batch: arg("--batch").map_or(Ok(RelaySettings::default().batch), |s| s.parse())?,
        ..RelaySettings::default()
    };
    let workers: usize = arg("--relays").map_or(Ok(1), |s| s.parse())?;
    println!(
        "relay batch size {}, {workers} relay loop(s)",
        settings.batch
    );
    let relay = Relay::new(pool.clone(), client.clone(), settings);
    drain(&relay).await?; // start from an empty backlog

    println!("bench_outbox: {clients} clients, {seconds} s per phase");

    // 1. Peak without and with the relay.
    let (n, secs) = load(&orchestrator, clients, seconds, None, None).await?;
    let peak = n as f64 / secs;
    let rows_before: i64 =
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE failed_at IS NULL")
            .fetch_one(&pool)
            .await?;
    let rows_per_transition = rows_before as f64 / n as f64;
    // A real transition event, for the raw-publish baseline's payload size.
    let payload: String = sqlx::query_scalar(
        "SELECT payload FROM outbox WHERE subject = 'evt.case.transition.v1' ORDER BY id DESC LIMIT 1",
    )
    .fetch_one(&pool)
    .await?;

    let drain_started = Instant::now();
    let drained: usize = futures::future::try_join_all((0..workers).map(|_| drain(&relay)))
        .await?
        .into_iter()
        .sum();
    let capacity = drained as f64 / drain_started.elapsed().as_secs_f64();

    let handle = start_relay(&relay, &orchestrator);
    let (n, secs) = load(&orchestrator, clients, seconds, None, None).await?;
    handle.stop().await;
    drain(&relay).await?;
    let with_relay = n as f64 / secs;
    println!(
        "peak transitions/s: relay off {peak:.0}, relay on {with_relay:.0} (ratio {:.2}, target >= 0.80)",
        with_relay / peak
    );
    println!(
        "outbox rows per transition {rows_per_transition:.2}; row rate at peak {:.0}/s",
        peak * rows_per_transition
    );
    println!(
        "relay capacity (drain of a {drained}-row backlog of {clients} cases): {capacity:.0} rows/s = {:.1}x the row rate at peak (target >= 3x)",
        capacity / (peak * rows_per_transition)
    );

    // 3b. The same drain when the backlog spreads over many cases, as an
    // outage's backlog does: each walker moves to a new case every
    // `per_case` transitions (a case's whole life is about ten).
    let per_case: u64 = arg("--per-case").map_or(Ok(20), |s| s.parse())?;
    load(&orchestrator, clients, seconds, None, Some(per_case)).await?;
    let spread_cases: i64 =
        sqlx::query_scalar("SELECT count(DISTINCT case_id) FROM outbox WHERE failed_at IS NULL")
            .fetch_one(&pool)
            .await?;
    let spread_started = Instant::now();
    let spread_drained: usize = futures::future::try_join_all((0..workers).map(|_| drain(&relay)))
        .await?
        .into_iter()
        .sum();
    let spread = spread_drained as f64 / spread_started.elapsed().as_secs_f64();
    println!(
        "relay capacity (drain of a {spread_drained}-row backlog of {spread_cases} cases, {per_case} transitions each): {spread:.0} rows/s = {:.1}x the row rate at peak",
        spread / (peak * rows_per_transition)
    );

    // 2. Steady load at 50 % and 90 % of peak, relay on.
    for share in [0.5, 0.9] {
        let rate = peak * share;
        let handle = start_relay(&relay, &orchestrator);
        lag_samples.lock().expect("lag samples").clear();
        let sampler = {
            let relay = relay.clone();
            tokio::spawn(async move {
                let mut samples = Vec::new();
                let start = Instant::now();
                while start.elapsed().as_secs_f64() < seconds {
                    samples.push(relay.backlog().await.unwrap_or(-1));
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                samples
            })
        };
        let (n, secs) = load(&orchestrator, clients, seconds, Some(rate), None).await?;
        let backlog = sampler.await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        handle.stop().await;
        drain(&relay).await?;
        let mut lags: Vec<Duration> = lag_samples
            .lock()
            .expect("lag samples")
            .iter()
            .map(|s| Duration::from_secs_f64(s.max(0.0)))
            .collect();
        lags.sort_unstable();
        println!(
            "load {:>3.0}% ({:.0} transitions/s offered, {:.0} achieved): lag p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms over {} rows; backlog every 0.5 s: {:?}",
            share * 100.0,
            rate,
            n as f64 / secs,
            ms(quantile(&lags, 0.5)),
            ms(quantile(&lags, 0.99)),
            ms(lags.last().copied().unwrap_or_default()),
            lags.len(),
            backlog
        );
    }

    // 4. Raw JetStream publish baseline with the same payload size, windowed.
    // Its own stream, configured like the product's, so the baseline's
    // messages never reach opsloop's consumers.
    let raw_stream = "OPSLOOP_BENCH_RAW";
    js.create_or_update_stream(jetstream::stream::Config {
        name: raw_stream.into(),
        subjects: vec!["bench.raw".into()],
        storage: jetstream::stream::StorageType::File,
        duplicate_window: Duration::from_secs(StreamSettings::default().duplicate_window_s),
        ..Default::default()
    })
    .await?;
    let total = 20_000;
    let window = 256;
    let started = Instant::now();
    let mut in_flight = std::collections::VecDeque::new();
    for _ in 0..total {
        let publish = PublishMessage::build()
            .payload(payload.clone().into())
            .message_id(Uuid::now_v7().to_string());
        in_flight.push_back(js.send_publish("bench.raw", publish).await?);
        if in_flight.len() >= window
            && let Some(ack) = in_flight.pop_front()
        {
            ack.await?;
        }
    }
    for ack in in_flight {
        ack.await?;
    }
    let raw = f64::from(total) / started.elapsed().as_secs_f64();
    js.delete_stream(raw_stream).await?;
    println!(
        "raw JetStream publish ({} B payload, window {window}): {raw:.0} msgs/s; relay capacity = {:.0}% of it with {clients} cases, {:.0}% with {spread_cases} cases (target >= 50%)",
        payload.len(),
        100.0 * capacity / raw,
        100.0 * spread / raw
    );
    Ok(())
}
