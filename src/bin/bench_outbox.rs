//! bench_outbox: the outbox relay under load, against the real PostgreSQL
//! and NATS JetStream, with its baselines measured in the same run.
//!
//! In `--rounds` rounds (medians reported; each ratio pairs figures of the
//! same round, as this VM's background load swings single phases by 20 %
//! and more):
//! 1. peak: closed-loop transitions (8 clients, orchestrator path) with the
//!    relay off and on (ratio = relay overhead);
//! 3. relay capacity: the relay's run loop drains a backlog built with the
//!    relay off, rows/s: the peak's 8 cases of thousands of transitions each
//!    (the worst case for per-case order: one row per case and subject in
//!    flight), and a backlog spread over many cases of `--per-case`
//!    transitions;
//! 4. baseline: raw JetStream ack'd publishes (async, window 256) of the
//!    same message (payload and traceparent header) right after the drains;
//!    and with a window of two per case, the most the 8-case drain may have
//!    in flight.
//!
//! Then once:
//! 2. steady open-loop load at 50 % and 90 % of the median peak with the
//!    relay on: commit -> ack lag p50/p99/max of every transition event
//!    (from the instant `Orchestrator::transition` returned after its commit
//!    to the instant the relay took the event's JetStream ack, both on this
//!    process's clock), beside the relay's own insert -> ack figure over all
//!    rows (`outbox_lag_seconds`); backlog sampled over time.
//!
//! Usage: DATABASE_URL=... NATS_URL=... bench_outbox [--seconds 6] [--clients 8]
//!        [--rounds 3] [--batch 1024] [--loops 3] [--linger-us 1000] [--per-case 20]
//!        [--vacuum-after ROWS]   (0: leave the outbox to autovacuum)

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use opsloop::contract::Message;
use opsloop::contract::fact::{EVT_CASE_TRANSITION, Fact};
use opsloop::orchestrator::Orchestrator;
use opsloop::pubsub::relay::{self, Relay, RelayHooks, RelaySettings};
use opsloop::pubsub::streams::StreamSettings;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

mod common;

use common::cpu::CpuMark;
use common::{
    arg, database, jetstream as connect_jetstream, ms, new_case, orchestrator_step, quantile,
};

/// When each transition's commit returned, by case and version.
type Commits = HashMap<(Uuid, i64), Instant>;

/// What a load phase did.
struct Load {
    seconds: f64,
    commits: Commits,
}

impl Load {
    fn rate(&self) -> f64 {
        self.commits.len() as f64 / self.seconds
    }
}

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
) -> anyhow::Result<Load> {
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
            let (mut case, mut step) = (case, 0u64);
            let mut commits = Vec::new();
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
                let version = orchestrator_step(&orchestrator, case, step).await?;
                commits.push(((case, version), Instant::now()));
                step += 1;
            }
            anyhow::Ok(commits)
        }));
    }
    let mut commits = Commits::new();
    for t in tasks {
        commits.extend(t.await??);
    }
    Ok(Load {
        seconds: started.elapsed().as_secs_f64(),
        commits,
    })
}

/// Commit -> ack of every transition event acked in `acks` whose commit is
/// in `commits`, sorted; and how many acks came before their commit's
/// return was noted (the two tasks' scheduling; counted as zero).
fn commit_to_ack(acks: &[AckSample], commits: &Commits) -> (Vec<Duration>, usize) {
    let mut lags = Vec::new();
    let mut early = 0;
    for ack in acks.iter().filter(|a| a.subject == EVT_CASE_TRANSITION) {
        let Ok(message) = Message::<Fact>::from_bytes(ack.payload.as_bytes()) else {
            continue;
        };
        let Fact::CaseTransition(t) = &message.body else {
            continue;
        };
        let (case, version) = (message.case_id.uuid(), t.version);
        if let Some(committed) = commits.get(&(case, version)) {
            early += usize::from(ack.acked_at < *committed);
            lags.push(ack.acked_at.saturating_duration_since(*committed));
        }
    }
    lags.sort_unstable();
    (lags, early)
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

/// One acked row as the relay saw it.
#[derive(Debug, Clone)]
pub struct AckSample {
    pub subject: String,
    pub payload: String,
    /// When the relay took the ack, on this process's clock.
    pub acked_at: Instant,
    /// From the row's insert to its ack (`outbox_lag_seconds`).
    pub lag: Duration,
}

/// Every row the relay acked, for the lag figures (the relay's hook).
#[derive(Debug, Default)]
struct Acks(Mutex<Vec<AckSample>>);

impl RelayHooks for Acks {
    fn acked(&self, subject: &str, payload: &str, acked_at: Instant, lag: Duration) {
        let sample = AckSample {
            subject: subject.to_string(),
            payload: payload.to_string(),
            acked_at,
            lag,
        };
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(sample);
    }
}

impl Acks {
    fn lock(&self) -> std::sync::LockResult<std::sync::MutexGuard<'_, Vec<AckSample>>> {
        self.0.lock()
    }
}

/// Drains the waiting backlog with the relay's own run loop (helpers
/// included), counting acked rows as they are deleted; rows/s.
async fn capacity(relay: &Relay, orchestrator: &Orchestrator, acks: &Acks, rows: usize) -> f64 {
    acks.lock().expect("acks").clear();
    let started = Instant::now();
    let handle = start_relay(relay, orchestrator);
    while acks.lock().expect("acks").len() < rows {
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    handle.stop().await;
    rows as f64 / secs
}

/// Raw JetStream ack'd publishes of `message` (payload and traceparent, so
/// the same bytes as the relay's messages), `window` in flight, to a stream
/// of its own configured like the product's (its messages never reach
/// opsloop's consumers); msgs/s.
async fn raw_publish(
    js: &jetstream::Context,
    message: &(String, Option<String>),
    window: usize,
    total: u32,
) -> anyhow::Result<f64> {
    let (payload, traceparent) = message;
    // A fresh stream for every measurement, so each starts from the same state.
    let raw_stream = "OPSLOOP_BENCH_RAW";
    js.create_or_update_stream(jetstream::stream::Config {
        name: raw_stream.into(),
        subjects: vec!["bench.raw".into()],
        storage: jetstream::stream::StorageType::File,
        duplicate_window: Duration::from_secs(StreamSettings::default().duplicate_window_s),
        ..Default::default()
    })
    .await?;
    let started = Instant::now();
    let mut in_flight = std::collections::VecDeque::new();
    for _ in 0..total {
        let publish = relay::message(payload, traceparent.as_deref(), Uuid::now_v7());
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
    Ok(raw)
}

/// Figures of every round, in round order.
#[derive(Default)]
struct Rounds {
    off: Vec<f64>,
    on: Vec<f64>,
    capacity_8: Vec<f64>,
    spread: Vec<f64>,
    spread_cases: Vec<f64>,
    raw: Vec<f64>,
    raw_narrow: Vec<f64>,
    /// CPU ms per transition at the peak, relay off and on.
    cpu_off: Vec<CpuMark>,
    cpu_on: Vec<CpuMark>,
    /// CPU ms per row while the relay drains the spread backlog alone.
    cpu_drain: Vec<CpuMark>,
}

/// Where the CPU of a transition goes with the relay off and on (medians
/// of the rounds, field by field), and the difference: what the relay
/// costs, split between this process (the relay itself), the NATS server
/// (storing and acking the messages), PostgreSQL (the relay's claims and
/// deletes, and the vacuum they cause) and the kernel (loopback traffic).
fn cpu_split(r: &Rounds) {
    let field = |marks: &[CpuMark], f: fn(&CpuMark) -> f64| {
        median(&marks.iter().map(f).collect::<Vec<_>>())
    };
    type Part = (&'static str, fn(&CpuMark) -> f64);
    let parts: [Part; 5] = [
        ("this process", |m| m.me),
        ("NATS server", |m| m.nats),
        ("PostgreSQL", |m| m.postgres),
        ("kernel, other", CpuMark::rest),
        ("machine", |m| m.machine),
    ];
    println!(
        "CPU ms per transition at the peak, and per row of the spread backlog drained alone (median of the rounds):"
    );
    println!(
        "  {:<18} {:>9} {:>9} {:>9} {:>11}",
        "", "relay off", "relay on", "on - off", "drain, /row"
    );
    for (name, f) in parts {
        let (off, on) = (field(&r.cpu_off, f), field(&r.cpu_on, f));
        let drain = field(&r.cpu_drain, f);
        println!(
            "  {name:<18} {off:>9.3} {on:>9.3} {:>+9.3} {drain:>11.4}",
            on - off
        );
    }
}

fn median(xs: &[f64]) -> f64 {
    let mut xs = xs.to_vec();
    xs.sort_by(f64::total_cmp);
    xs.get(xs.len() / 2).copied().unwrap_or(f64::NAN)
}

/// `scale * a[i] / b[i]` for each round.
fn ratios(a: &[f64], b: &[f64], scale: f64) -> Vec<f64> {
    a.iter().zip(b).map(|(a, b)| scale * a / b).collect()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let seconds: f64 = arg("--seconds").map_or(Ok(6.0), |s| s.parse())?;
    let clients: usize = arg("--clients").map_or(Ok(8), |s| s.parse())?;
    let rounds: usize = arg("--rounds").map_or(Ok(3), |s| s.parse())?;
    let pool = database(u32::try_from(clients + 8)?).await?;
    let (client, js) = connect_jetstream().await?;
    let orchestrator = Orchestrator::new(pool.clone());
    let acks = Arc::new(Acks::default());
    let defaults = RelaySettings::default();
    let settings = RelaySettings {
        hooks: acks.clone(),
        batch: arg("--batch").map_or(Ok(defaults.batch), |s| s.parse())?,
        loops: arg("--loops").map_or(Ok(defaults.loops), |s| s.parse())?,
        vacuum_after_rows: arg("--vacuum-after")
            .map_or(Ok(defaults.vacuum_after_rows), |s| s.parse())?,
        linger: arg("--linger-us").map_or(Ok(defaults.linger), |s| {
            s.parse().map(Duration::from_micros)
        })?,
        ..defaults
    };
    println!(
        "bench_outbox: {clients} clients, {seconds} s per phase; relay batch {}, {} loop(s), linger {:?}",
        settings.batch, settings.loops, settings.linger
    );
    let relay = Relay::new(pool.clone(), client.clone(), settings);
    drain(&relay).await?; // start from an empty backlog

    // 1 and 3. Rounds (this VM's background load swings single phases by
    // 20 % and more, so every figure is paired with its baseline from the
    // same round, and medians are reported). A round: peak with the relay
    // off, whose backlog (the peak's 8 cases of thousands of transitions
    // each: the worst case for per-case order, one row per case and subject
    // in flight) the relay's run loop drains; peak with the relay on; a
    // backlog spread over many cases, as an outage leaves behind (each
    // walker moves to a new case every `per_case` transitions; a case's
    // whole life is about ten), drained; then the raw publish baseline.
    let per_case: u64 = arg("--per-case").map_or(Ok(20), |s| s.parse())?;
    let mut r = Rounds::default();
    let mut message = (String::new(), None);
    let mut rows_per_transition = 0.0;
    for round in 0..rounds {
        let mark = CpuMark::now();
        let off = load(&orchestrator, clients, seconds, None, None).await?;
        r.cpu_off
            .push(mark.until(&CpuMark::now()).ms_per(off.commits.len()));
        r.off.push(off.rate());
        let backlog_8 = usize::try_from(relay.backlog().await?)?;
        if round == 0 {
            rows_per_transition = backlog_8 as f64 / off.commits.len() as f64;
            // A real transition event, for the raw baseline's message.
            message = sqlx::query_as(
                "SELECT payload, traceparent FROM outbox WHERE subject = 'evt.case.transition.v1' ORDER BY id DESC LIMIT 1",
            )
            .fetch_one(&pool)
            .await?;
        }
        r.capacity_8
            .push(capacity(&relay, &orchestrator, &acks, backlog_8).await);
        drain(&relay).await?;

        let handle = start_relay(&relay, &orchestrator);
        let mark = CpuMark::now();
        let on = load(&orchestrator, clients, seconds, None, None).await?;
        r.cpu_on
            .push(mark.until(&CpuMark::now()).ms_per(on.commits.len()));
        handle.stop().await;
        drain(&relay).await?;
        r.on.push(on.rate());

        load(&orchestrator, clients, seconds, None, Some(per_case)).await?;
        let cases: i64 = sqlx::query_scalar("SELECT count(DISTINCT case_id) FROM outbox")
            .fetch_one(&pool)
            .await?;
        r.spread_cases.push(cases as f64);
        let rows = usize::try_from(relay.backlog().await?)?;
        let mark = CpuMark::now();
        r.spread
            .push(capacity(&relay, &orchestrator, &acks, rows).await);
        r.cpu_drain.push(mark.until(&CpuMark::now()).ms_per(rows));
        drain(&relay).await?;
        r.raw.push(raw_publish(&js, &message, 256, 20_000).await?);
        r.raw_narrow
            .push(raw_publish(&js, &message, clients * 2, 20_000).await?);
        println!(
            "round {}: peak off {:.0}/s, on {:.0}/s; drain {} rows of {clients} cases {:.0} rows/s, {rows} rows of {cases} cases {:.0} rows/s; raw publish window 256 {:.0}/s, window {} {:.0}/s",
            round + 1,
            r.off[round],
            r.on[round],
            backlog_8,
            r.capacity_8[round],
            r.spread[round],
            r.raw[round],
            clients * 2,
            r.raw_narrow[round],
        );
    }
    let peak = median(&r.off);
    let row_rate = peak * rows_per_transition;
    let on_off = ratios(&r.on, &r.off, 1.0);
    let hot_of_raw = ratios(&r.capacity_8, &r.raw, 100.0);
    let spread_of_raw = ratios(&r.spread, &r.raw, 100.0);
    println!(
        "peak transitions/s (median of {rounds} rounds): relay off {peak:.0}, relay on {:.0}; on/off per round {:.2?}, median {:.2} (target >= 0.80 in #3, >= 0.9 in #15)",
        median(&r.on),
        on_off,
        median(&on_off)
    );
    println!(
        "outbox rows per transition {rows_per_transition:.2}; row rate at peak {row_rate:.0}/s"
    );
    cpu_split(&r);
    println!(
        "relay capacity, {clients} cases: median {:.0} rows/s = {:.1}x the row rate at peak (target >= 3x); {:.0}% of raw publish at window 256 (per round {:.0?}), {:.0}% of raw publish at window {} (its ceiling)",
        median(&r.capacity_8),
        median(&r.capacity_8) / row_rate,
        median(&hot_of_raw),
        hot_of_raw,
        median(&ratios(&r.capacity_8, &r.raw_narrow, 100.0)),
        clients * 2
    );
    println!(
        "relay capacity, ~{:.0} cases of {per_case} transitions: median {:.0} rows/s = {:.1}x the row rate at peak; {:.0}% of raw publish at window 256 (per round {:.0?}; target >= 50%)",
        median(&r.spread_cases),
        median(&r.spread),
        median(&r.spread) / row_rate,
        median(&spread_of_raw),
        spread_of_raw,
    );
    println!(
        "raw JetStream publish ({} B payload + traceparent): window 256 median {:.0} msgs/s, window {} median {:.0} msgs/s",
        message.0.len(),
        median(&r.raw),
        clients * 2,
        median(&r.raw_narrow)
    );

    // 2. Steady load at 50 % and 90 % of peak, relay on; or, with
    // `--rates r1,r2`, at fixed rates (transitions/s), to compare builds
    // whose peaks differ at the same absolute load.
    let rates: Vec<(String, f64)> = match arg("--rates") {
        Some(list) => list
            .split(',')
            .map(|r| r.parse::<f64>().map(|r| (format!("{r:.0}/s"), r)))
            .collect::<Result<_, _>>()?,
        None => [0.5, 0.9]
            .into_iter()
            .map(|share| (format!("{:>3.0}%", share * 100.0), peak * share))
            .collect(),
    };
    for (label, rate) in rates {
        let handle = start_relay(&relay, &orchestrator);
        acks.lock().expect("acks").clear();
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
        let steady = load(&orchestrator, clients, seconds, Some(rate), None).await?;
        let backlog = sampler.await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        handle.stop().await;
        drain(&relay).await?;
        let acks = std::mem::take(&mut *acks.lock().expect("acks"));
        let (lags, early) = commit_to_ack(&acks, &steady.commits);
        let mut inserted: Vec<Duration> = acks.iter().map(|a| a.lag).collect();
        inserted.sort_unstable();
        println!(
            "load {label} ({:.0} transitions/s offered, {:.0} achieved): commit -> ack lag p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms over {} of {} transition events ({early} acked before the commit's return was noted); insert -> ack (all {} rows) p50 {:.2} ms, p99 {:.2} ms; backlog every 0.5 s: {:?}",
            rate,
            steady.rate(),
            ms(quantile(&lags, 0.5)),
            ms(quantile(&lags, 0.99)),
            ms(lags.last().copied().unwrap_or_default()),
            lags.len(),
            steady.commits.len(),
            inserted.len(),
            ms(quantile(&inserted, 0.5)),
            ms(quantile(&inserted, 0.99)),
            backlog
        );
    }

    Ok(())
}
