//! The chaos suite (issue #22): three `opsloop serve` processes with split
//! roles on a three-node NATS cluster (R3 streams) and a PostgreSQL of
//! their own, a steady load of cases through the whole loop (template plan,
//! automatic gate, a recording script, SLO verification), and meanwhile, at
//! seeded random moments: `kill -9` of an opsloop process (restarted), the
//! stream leader's NATS node killed for a while, PostgreSQL restarted once,
//! and poison messages. Then it checks the promises and prints a report.
//!
//! Run through `bash scripts/chaos.sh [--seed N] [--seconds S] [--short]
//! [--report FILE]`, which starts the services this program breaks (never
//! the ones the other tests use) and passes them in `DATABASE_URL`,
//! `NATS_URL` (the three nodes) and `OPSLOOP_SERVICES_STATE`.
//!
//! Invariants (each one a line of the report; any failure exits 1):
//! 1. every accepted transition is published and the external subscriber
//!    sees it exactly once after de-duplication by envelope id;
//! 2. per-case versions are consecutive, in the record and on the feed;
//! 3. no step of the non-idempotent script ran twice;
//! 4. every case ends CLOSED or PARKED with a reason within 60 s after
//!    the faults stop;
//! 5. no dead letter but the injected poison.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use async_nats::jetstream::{self, consumer::pull};
use futures::StreamExt;
use opsloop::contract::{Fact, Message};
use opsloop::pubsub::streams::{self, EVT_STREAM, StreamSettings};
use serde_json::json;
use sqlx::PgPool;
use tokio::process::{Child, Command};
use uuid::Uuid;

mod common;

const TENANT: &str = "t-001";
const TEMPLATE: &str = "chaos-restart";
/// The script the steps run: it appends `start`/`done` lines per run.
const RUNS_LOG: &str = "/tmp/opsloop-test-runs.log";
/// The roles of the three processes: every worker role runs in at least two,
/// so the loop goes on while any one is down; two serve HTTP.
const PROCESSES: [(&str, &str); 3] = [
    ("p1", "api,relay,orchestrator,gatekeeper,planner,analyst"),
    ("p2", "api,relay,orchestrator,executor,verifier,analyst"),
    (
        "p3",
        "relay,orchestrator,gatekeeper,planner,executor,verifier",
    ),
];

/// Seeded, reproducible choices (splitmix64).
struct Dice(u64);

impl Dice {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A whole number in `lo..=hi`.
    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

struct Settings {
    seed: u64,
    load: Duration,
    /// How long the stream leader's node stays down.
    outage: (u64, u64),
    case_every: Duration,
    opsloop: PathBuf,
    services: PathBuf,
    report: Option<PathBuf>,
    short: bool,
}

fn settings() -> anyhow::Result<Settings> {
    let short = common::flag("--short");
    let seed = match common::arg("--seed") {
        Some(s) => s.parse().context("--seed")?,
        None => SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)?
            .as_secs(),
    };
    let seconds: u64 = match common::arg("--seconds") {
        Some(s) => s.parse().context("--seconds")?,
        None if short => 40,
        None => 100,
    };
    let opsloop = common::opsloop_binary()?;
    Ok(Settings {
        seed,
        load: Duration::from_secs(seconds.max(30)),
        outage: if short { (10, 12) } else { (10, 30) },
        case_every: Duration::from_millis(if short { 700 } else { 500 }),
        opsloop,
        services: PathBuf::from("scripts/services.sh"),
        report: common::arg("--report").map(PathBuf::from),
        short,
    })
}

/// One `opsloop serve` process of the suite.
struct Proc {
    name: &'static str,
    roles: &'static str,
    port: u16,
    child: Option<Child>,
    generation: usize,
}

/// What the processes share.
struct Stack {
    dir: PathBuf,
    database_url: String,
    nats_url: String,
    opsloop: PathBuf,
    procs: Vec<Proc>,
}

impl Stack {
    /// Starts process `i` and waits until it says it started (every
    /// consumer made, its SIGTERM handler in place): a fault aimed at it
    /// must find a running process, not one still starting.
    async fn launch(&mut self, i: usize) -> anyhow::Result<()> {
        let log = self.spawn(i)?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while !std::fs::read_to_string(&log).is_ok_and(|l| l.contains("opsloop started.")) {
            if Instant::now() > deadline {
                bail!(
                    "{} did not start within 60 s (log: {})",
                    self.procs[i].name,
                    log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    fn spawn(&mut self, i: usize) -> anyhow::Result<PathBuf> {
        let scripts = std::fs::canonicalize("tests/actions")?;
        let p = &mut self.procs[i];
        p.generation += 1;
        let log = self.dir.join(format!("{}-{}.log", p.name, p.generation));
        let child = Command::new(&self.opsloop)
            .args(["serve", "--roles", p.roles])
            .env("DATABASE_URL", &self.database_url)
            .env("NATS_URL", &self.nats_url)
            .env("OPSLOOP_STREAM_REPLICAS", "3")
            .env("OPSLOOP_LISTEN", format!("127.0.0.1:{}", p.port))
            .env("OPSLOOP_TOKENS_FILE", self.dir.join("tokens.toml"))
            .env("OPSLOOP_TARGETS_FILE", self.dir.join("targets.toml"))
            .env("OPSLOOP_TEMPLATES_DIR", self.dir.join("templates"))
            .env("OPSLOOP_SCRIPTS_DIR", scripts)
            .env("OPSLOOP_SCRIPT_ALLOWLIST", "slow-restart.sh")
            .env("OPSLOOP_VERIFY_DELAY_S", "0")
            .env("OPSLOOP_DB_POOL", "6")
            .env("OPSLOOP_SHUTDOWN_GRACE_S", "5")
            .env("OPSLOOP_DETECT_INTERVAL_MS", "60000")
            .env("RUST_LOG", "info,sqlx=warn")
            // Neither the librarian's model nor an LLM: the loop under
            // faults is what is measured.
            .env_remove("OPSLOOP_EMBEDDINGS_MODEL_DIR")
            .env_remove("OPSLOOP_EMBEDDINGS_URL")
            .env_remove("OPENAI_BASE_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", self.opsloop.display()))?;
        p.child = Some(child);
        Ok(log)
    }

    /// SIGKILL: no goodbye, no grace.
    async fn kill(&mut self, i: usize) -> anyhow::Result<()> {
        if let Some(mut child) = self.procs[i].child.take() {
            child.kill().await?;
        }
        Ok(())
    }

    /// SIGTERM, then waits (at most a minute) for the exit: whether it was
    /// clean, and how long it took.
    async fn terminate(&mut self, i: usize) -> anyhow::Result<(bool, Duration)> {
        let Some(mut child) = self.procs[i].child.take() else {
            return Ok((true, Duration::ZERO));
        };
        let asked = Instant::now();
        if let Some(pid) = child.id() {
            Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await?;
        }
        let status = tokio::time::timeout(Duration::from_secs(60), child.wait()).await;
        Ok(match status {
            Ok(Ok(s)) => (s.success(), asked.elapsed()),
            _ => {
                let _ = child.kill().await;
                (false, asked.elapsed())
            }
        })
    }

    fn api_bases(&self) -> Vec<String> {
        self.procs
            .iter()
            .filter(|p| p.roles.split(',').any(|r| r == "api"))
            .map(|p| format!("http://127.0.0.1:{}", p.port))
            .collect()
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        for p in &mut self.procs {
            if let Some(c) = p.child.as_mut() {
                let _ = c.start_kill();
            }
        }
    }
}

/// A fault as it happened, for the report.
#[derive(Debug, Clone)]
struct Fault {
    what: String,
    at: Duration,
    lasted: Duration,
}

/// What the external subscriber saw, one row per delivery.
#[derive(Debug, Clone)]
struct Seen {
    envelope: Uuid,
    case: Uuid,
    version: i64,
    timeline: Uuid,
    /// The stream's sequence: the order the relay published in.
    sequence: u64,
}

/// Shared between the tasks while the run lasts.
#[derive(Default, Clone)]
struct Record {
    seen: Vec<Seen>,
    cases: Vec<Uuid>,
    faults: Vec<Fault>,
    poison: usize,
    /// `(when, rows waiting in the outbox)`, sampled every 200 ms.
    backlog: Vec<(Instant, i64)>,
    http_retries: usize,
}

type Shared = Arc<Mutex<Record>>;

fn lock(r: &Shared) -> std::sync::MutexGuard<'_, Record> {
    r.lock().unwrap_or_else(|e| e.into_inner())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let s = settings()?;
    if !s.opsloop.exists() {
        bail!(
            "{} not found: build it first (cargo build --bin opsloop)",
            s.opsloop.display()
        );
    }
    let nats_url = std::env::var("NATS_URL").context("NATS_URL (the cluster's nodes)")?;
    if nats_url.split(',').count() < 3 {
        bail!("NATS_URL must list the three nodes of a cluster (scripts/chaos.sh starts one)");
    }
    std::env::var("OPSLOOP_SERVICES_STATE")
        .context("OPSLOOP_SERVICES_STATE: the chaos suite's own services (scripts/chaos.sh)")?;
    eprintln!(
        "chaos: seed {} load {:?}{}",
        s.seed,
        s.load,
        if s.short { " (short)" } else { "" }
    );

    let stage = common::Stage::new("opsloop_chaos", &nats_url, TENANT).await?;
    let (pool, js, dir) = (stage.pool.clone(), stage.js.clone(), stage.dir.clone());
    let r3 = StreamSettings {
        replicas: Some(3),
        ..StreamSettings::default()
    };
    streams::ensure(&js, &r3).await?;

    std::fs::create_dir_all(dir.join("templates"))?;
    write_files(&dir)?;
    let mut stack = Stack {
        dir: dir.clone(),
        database_url: stage.database_url.clone(),
        nats_url: nats_url.clone(),
        opsloop: s.opsloop.clone(),
        procs: PROCESSES
            .iter()
            .map(|&(name, roles)| Proc {
                name,
                roles,
                port: common::free_port().unwrap_or(0),
                child: None,
                generation: 0,
            })
            .collect(),
    };
    for i in 0..stack.procs.len() {
        stack.launch(i).await?;
    }
    let http = opsloop::http_client::http_client().build()?;
    for base in stack.api_bases() {
        common::wait_ready(&http, &base).await?;
    }

    let record: Shared = Arc::default();
    let stop = tokio_util::sync::CancellationToken::new();
    let observer = tokio::spawn(observe(js.clone(), record.clone(), stop.clone()));
    let sampler = tokio::spawn(sample(pool.clone(), record.clone(), stop.clone()));
    let load_stop = tokio_util::sync::CancellationToken::new();
    let feed = common::CaseFeed {
        http: http.clone(),
        bases: stack.api_bases(),
        operator: stage.operator.clone(),
        service: stage.service.clone(),
        tenant: TENANT,
        template: TEMPLATE,
        kind: "chaos",
    };
    let load = tokio::spawn(drive(
        feed,
        js.clone(),
        s.seed,
        s.case_every,
        record.clone(),
        load_stop.clone(),
    ));

    let started = Instant::now();
    let mut dice = Dice(s.seed);
    let mut failover = inject(&s, &mut dice, &mut stack, &js, &pool, &record, started).await?;
    // The load runs its full length; the faults are over.
    tokio::time::sleep(s.load.saturating_sub(started.elapsed())).await;
    load_stop.cancel();
    let _ = load.await;
    let faults_over = Instant::now();
    eprintln!(
        "chaos: load and faults over after {:?}; waiting for every case to settle",
        started.elapsed()
    );

    let cases = lock(&record).cases.clone();
    let settle = settle(&pool, &cases, Duration::from_secs(60)).await;
    let recovery = faults_over.elapsed();
    // The feed catches up with the record (the relay drains the outbox).
    let expected = transitions(&pool).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let seen: HashSet<Uuid> = lock(&record).seen.iter().map(|s| s.timeline).collect();
        if expected.keys().all(|t| seen.contains(t)) || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.cancel();
    let _ = observer.await;
    let _ = sampler.await;
    // Every process still runs: none died on its own during the run.
    for p in &mut stack.procs {
        if let Some(child) = p.child.as_mut()
            && let Ok(Some(status)) = child.try_wait()
        {
            failover.unconfirmed.push(format!(
                "{} exited on its own during the run ({status})",
                p.name
            ));
        }
    }
    let mut resumed = (Vec::new(), 0);
    for handle in std::mem::take(&mut failover.resumed) {
        let (moved, never) = handle.await.unwrap_or_default();
        resumed.0.extend(moved);
        resumed.1 += never;
    }
    let first_stored = match failover.leader_lost {
        Some(loss) => first_stored_after(&js, loss).await,
        None => None,
    };
    let report = judge(
        &s,
        &pool,
        &record,
        &expected,
        settle,
        recovery,
        &failover,
        resumed,
        first_stored,
    )
    .await?;
    println!("{}", report.text);
    if let Some(path) = &s.report {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        writeln!(f, "{}", report.text)?;
    }
    drop(stack);
    if report.failed {
        bail!("an invariant does not hold (logs in {})", dir.display());
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// The targets file and the template, beside the stage's tokens.
fn write_files(dir: &Path) -> anyhow::Result<()> {
    let shipped = std::fs::read_to_string("config/targets.toml")?;
    std::fs::write(
        dir.join("targets.toml"),
        format!(
            "{shipped}\n[[target]]\nenvironment = \"staging\"\nscript = \"slow-restart.sh\"\n\
             \n[scripts.\"slow-restart.sh\"]\ndry_run_flag = \"--dry-run\"\n"
        ),
    )?;
    let template = json!({
        "name": TEMPLATE,
        "description": "The chaos suite's remediation: a no-op, then a recording script that must never run twice.",
        "match": {"kinds": ["chaos"]},
        "labels": ["service"],
        "example": {"service": "checkout"},
        "plan": {
            "title": "Restart {{service}} under chaos",
            "rationale": "Steady load for the chaos suite.",
            "environment": "staging",
            "steps": [
                {"action": "noop", "timeout_s": 10, "retry": 0},
                {"action": "script.exec", "params": {"script": "slow-restart.sh", "args": ["--service", "{{service}}", "--seconds", "1"]},
                 "timeout_s": 30, "retry": 0}
            ],
            // A rollback keeps the risk low enough for the automatic gate.
            "rollback": {"steps": [{"action": "noop", "timeout_s": 10, "retry": 0}]},
            "verify": {"checks": [{"resource": "{{service}}", "metric": "latency_p95_ms", "stat": "avg", "op": "<", "threshold": 300, "window_s": 60}]}
        }
    });
    std::fs::write(
        dir.join("templates").join(format!("{TEMPLATE}.json")),
        serde_json::to_vec_pretty(&template)?,
    )?;
    Ok(())
}

/// The external subscriber: a durable consumer of the transition feed with
/// explicit acks, recording every delivery, redeliveries included.
async fn observe(
    js: jetstream::Context,
    record: Shared,
    stop: tokio_util::sync::CancellationToken,
) {
    let config = pull::Config {
        durable_name: Some("chaos-observer".into()),
        filter_subject: "evt.case.transition.v1".into(),
        ack_policy: jetstream::consumer::AckPolicy::Explicit,
        ack_wait: Duration::from_secs(10),
        ..Default::default()
    };
    while !stop.is_cancelled() {
        let messages = async {
            let stream = js.get_stream(EVT_STREAM).await.map_err(|e| e.to_string())?;
            let consumer: jetstream::consumer::PullConsumer = stream
                .get_or_create_consumer("chaos-observer", config.clone())
                .await
                .map_err(|e| e.to_string())?;
            consumer.messages().await.map_err(|e| e.to_string())
        };
        let mut messages = match messages.await {
            Ok(m) => m,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        loop {
            let next = tokio::select! {
                n = messages.next() => n,
                _ = stop.cancelled() => return,
            };
            let Some(Ok(msg)) = next else { break };
            let sequence = msg.info().map(|i| i.stream_sequence).unwrap_or(0);
            if let Ok(m) = Message::<Fact>::from_bytes(&msg.payload)
                && let Fact::CaseTransition(t) = &m.body
            {
                lock(&record).seen.push(Seen {
                    envelope: m.id,
                    case: m.case_id.uuid(),
                    version: t.version,
                    timeline: t.timeline_id,
                    sequence,
                });
            }
            let _ = msg.ack().await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The outbox's backlog every 200 ms (a PostgreSQL restart leaves gaps).
async fn sample(pool: PgPool, record: Shared, stop: tokio_util::sync::CancellationToken) {
    while !stop.is_cancelled() {
        if let Ok(n) = sqlx::query_scalar::<_, i64>("SELECT count(*) FROM outbox")
            .fetch_one(&pool)
            .await
        {
            lock(&record).backlog.push((Instant::now(), n));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One case every `every` through the API processes (retried on the other
/// while one is down), and now and then a poison message.
async fn drive(
    feed: common::CaseFeed,
    js: jetstream::Context,
    seed: u64,
    every: Duration,
    record: Shared,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut n = 0usize;
    let mut tick = tokio::time::interval(every);
    let poison_every = 25;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        n += 1;
        let svc = format!("chaos-{seed}-{n}-{}", Uuid::new_v4().simple());
        let (case, retries) = feed.open(n, &svc).await;
        {
            let mut r = lock(&record);
            r.http_retries += retries;
            r.cases.extend(case);
        }
        // A malformed message for the verifier's consumer: it must be
        // dead-lettered once and block nothing. Counted once JetStream
        // stored it.
        if n.is_multiple_of(poison_every) && poison(&js, n).await {
            lock(&record).poison += 1;
        }
    }
}

/// Publishes one malformed message for the verifier's consumer, with a
/// message id, sent again until JetStream acks it (at most 20 s): an ack
/// lost in a failover must not leave a stored poison uncounted.
async fn poison(js: &jetstream::Context, n: usize) -> bool {
    let id = format!("chaos-poison-{n}-{}", Uuid::new_v4());
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let publish = async_nats::jetstream::message::PublishMessage::build()
            .payload("{ this is not an envelope".into())
            .message_id(&id);
        if let Ok(ack) = js.send_publish("cmd.verify.run", publish).await
            && ack.await.is_ok()
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    false
}

/// The failover measurements, finished once the run is over.
#[derive(Default)]
struct Failover {
    /// The NATS leader's loss: when the kill was asked for, when the node
    /// was gone, the event stream's last sequence before it, and the
    /// outbox's level just before.
    leader_lost: Option<LeaderLoss>,
    /// Per `kill -9`: how long each case open at that moment took to move
    /// again, and how many never did within 90 s.
    resumed: Vec<tokio::task::JoinHandle<(Vec<Duration>, usize)>>,
    /// Faults whose effect could not be confirmed (e.g. PostgreSQL's start
    /// time did not change): the run fails on them.
    unconfirmed: Vec<String>,
}

#[derive(Clone, Copy)]
struct LeaderLoss {
    asked: SystemTime,
    gone: SystemTime,
    at: Instant,
    last_sequence: u64,
    backlog_before: i64,
}

/// The faults planned for a run, in a seeded order.
const FAULTS: [&str; 5] = ["kill", "nats", "pg", "kill", "term"];

/// The faults, at seeded moments within the load: two `kill -9` of a
/// process, a SIGTERM of one (its graceful stop under load), one NATS
/// leader loss, one PostgreSQL restart.
async fn inject(
    s: &Settings,
    dice: &mut Dice,
    stack: &mut Stack,
    js: &jetstream::Context,
    pool: &PgPool,
    record: &Shared,
    started: Instant,
) -> anyhow::Result<Failover> {
    let load = s.load.as_secs();
    let mut kinds = FAULTS;
    for i in (1..kinds.len()).rev() {
        kinds.swap(i, dice.between(0, i as u64) as usize);
    }
    // The slots cover the load's first three quarters.
    let slot = load * 3 / 4 / kinds.len() as u64;
    let mut failover = Failover::default();
    for (i, kind) in kinds.iter().enumerate() {
        let at = Duration::from_secs(5 + i as u64 * slot + dice.between(0, slot / 3));
        tokio::time::sleep(at.saturating_sub(started.elapsed())).await;
        let begun = Instant::now();
        let what = match *kind {
            "kill" => {
                let i = dice.between(0, stack.procs.len() as u64 - 1) as usize;
                let open = open_cases(pool).await.unwrap_or_default();
                stack.kill(i).await?;
                failover.resumed.push(tokio::spawn(resumed(
                    pool.clone(),
                    open,
                    begun,
                    Duration::from_secs(90),
                )));
                let down = dice.between(1, 3);
                tokio::time::sleep(Duration::from_secs(down)).await;
                stack.launch(i).await?;
                format!(
                    "`kill -9` {} ({}), restarted after {down} s",
                    stack.procs[i].name, stack.procs[i].roles
                )
            }
            "term" => {
                let i = dice.between(0, stack.procs.len() as u64 - 1) as usize;
                let (clean, took) = stack.terminate(i).await?;
                // The processes run with OPSLOOP_SHUTDOWN_GRACE_S=5.
                if took > Duration::from_secs(2 * 5 + 3) {
                    failover.unconfirmed.push(format!(
                        "{} took {:.1} s to stop after SIGTERM (more than twice its grace)",
                        stack.procs[i].name,
                        took.as_secs_f64()
                    ));
                }
                if !clean {
                    failover.unconfirmed.push(format!(
                        "{} did not exit cleanly after SIGTERM",
                        stack.procs[i].name
                    ));
                }
                stack.launch(i).await?;
                format!(
                    "SIGTERM {} ({}): exited {} after {:.1} s, started again",
                    stack.procs[i].name,
                    stack.procs[i].roles,
                    if clean { "cleanly" } else { "with an error" },
                    took.as_secs_f64()
                )
            }
            "nats" => {
                let node = leader_node(js).await?;
                let backlog_before = lock(record).backlog.last().map(|b| b.1).unwrap_or(0);
                let last_sequence = js
                    .get_stream(EVT_STREAM)
                    .await?
                    .info()
                    .await?
                    .state
                    .last_sequence;
                let asked = SystemTime::now();
                services(&s.services, &["cluster", "kill-node", &node.to_string()]).await?;
                failover.leader_lost = Some(LeaderLoss {
                    asked,
                    gone: SystemTime::now(),
                    at: begun,
                    last_sequence,
                    backlog_before,
                });
                let down = dice.between(s.outage.0, s.outage.1);
                tokio::time::sleep(Duration::from_secs(down)).await;
                services(&s.services, &["cluster", "start-node", &node.to_string()]).await?;
                format!(
                    "NATS node {node} (the event stream's leader) killed, started again after {down} s"
                )
            }
            _ => {
                let before = postmaster_start(pool).await;
                services(&s.services, &["pg-stop"]).await?;
                let down = dice.between(2, 5);
                tokio::time::sleep(Duration::from_secs(down)).await;
                services(&s.services, &["pg-start"]).await?;
                // The suite's own PostgreSQL, restarted for real: its start
                // time moved (not, say, a server the environment named).
                let mut after = None;
                for _ in 0..50 {
                    after = postmaster_start(pool).await;
                    if after.is_some() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                if before.is_none() || after.is_none() || before == after {
                    failover.unconfirmed.push(format!(
                        "PostgreSQL's start time did not change ({before:?} → {after:?})"
                    ));
                }
                format!("PostgreSQL stopped, started again after {down} s")
            }
        };
        eprintln!("chaos: {what}");
        lock(record).faults.push(Fault {
            what,
            at: begun - started,
            lasted: begun.elapsed(),
        });
    }
    Ok(failover)
}

async fn postmaster_start(pool: &PgPool) -> Option<chrono::DateTime<chrono::Utc>> {
    sqlx::query_scalar("SELECT pg_postmaster_start_time()")
        .fetch_one(pool)
        .await
        .ok()
}

/// After the run: when the first message after the leader's loss was
/// stored, from the kill's request (the stream's own timestamps).
async fn first_stored_after(js: &jetstream::Context, loss: LeaderLoss) -> Option<Duration> {
    let stream = js.get_stream(EVT_STREAM).await.ok()?;
    for seq in loss.last_sequence + 1..loss.last_sequence + 5000 {
        let msg = stream.get_raw_message(seq).await.ok()?;
        let stored = SystemTime::from(msg.time);
        // Stored by the old leader between the sequence read and its death.
        if stored <= loss.gone {
            continue;
        }
        return stored.duration_since(loss.asked).ok();
    }
    None
}

async fn services(script: &Path, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("bash").arg(script).args(args).output().await?;
    if !out.status.success() {
        bail!(
            "scripts/services.sh {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// The node (1-3, as `scripts/services.sh` numbers them) leading the
/// event stream.
async fn leader_node(js: &jetstream::Context) -> anyhow::Result<u32> {
    let mut stream = js.get_stream(EVT_STREAM).await?;
    let info = stream.info().await?;
    let leader = info
        .cluster
        .as_ref()
        .and_then(|c| c.leader.clone())
        .context("the event stream has no leader")?;
    leader
        .strip_prefix("opsloop-n")
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("unexpected server name {leader}"))
}

async fn open_cases(pool: &PgPool) -> Result<HashMap<Uuid, i64>, sqlx::Error> {
    let rows: Vec<(Uuid, i64)> =
        sqlx::query_as("SELECT id, version FROM ops_case WHERE status NOT IN ('CLOSED', 'PARKED')")
            .fetch_all(pool)
            .await?;
    Ok(rows.into_iter().collect())
}

/// For each case open at `since`, how long until its version moved; and
/// how many never moved within `within`.
async fn resumed(
    pool: PgPool,
    mut open: HashMap<Uuid, i64>,
    since: Instant,
    within: Duration,
) -> (Vec<Duration>, usize) {
    let mut out = Vec::new();
    while !open.is_empty() && since.elapsed() < within {
        let ids: Vec<Uuid> = open.keys().copied().collect();
        if let Ok(rows) =
            sqlx::query_as::<_, (Uuid, i64)>("SELECT id, version FROM ops_case WHERE id = ANY($1)")
                .bind(&ids)
                .fetch_all(&pool)
                .await
        {
            for (id, version) in rows {
                if open.get(&id).is_some_and(|&v| version > v) {
                    open.remove(&id);
                    out.push(since.elapsed());
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    (out, open.len())
}

/// From `since`, the time until the outbox's backlog was back to its
/// level before the loss (at least 20 rows of slack: the load goes on).
fn drained(backlog: &[(Instant, i64)], since: Instant, before: i64) -> Option<Duration> {
    let level = before.max(20);
    let mut rose = false;
    let mut sampled = false;
    for &(at, n) in backlog.iter().filter(|(at, _)| *at > since) {
        sampled = true;
        rose |= n > level;
        if rose && n <= level {
            return Some(at - since);
        }
    }
    // Sampled and never above the level: nothing waited.
    (sampled && !rose).then_some(Duration::ZERO)
}

/// Waits until every case rests in CLOSED or PARKED with no run going;
/// answers how long that took, or `None` when some did not within `within`.
async fn settle(pool: &PgPool, cases: &[Uuid], within: Duration) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < within {
        let moving: Result<i64, _> = sqlx::query_scalar(
            "SELECT count(*) FROM ops_case c WHERE c.id = ANY($1) AND (c.status NOT IN ('CLOSED', 'PARKED') \
             OR EXISTS (SELECT 1 FROM exec_run r WHERE r.case_id = c.id AND r.status = 'running'))",
        )
        .bind(cases)
        .fetch_one(pool)
        .await;
        if moving.is_ok_and(|n| n == 0) {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    None
}

/// The accepted transitions in the record: timeline id → (case, version).
async fn transitions(pool: &PgPool) -> anyhow::Result<HashMap<Uuid, (Uuid, i64)>> {
    let rows: Vec<(Uuid, Uuid, i64)> =
        sqlx::query_as("SELECT id, case_id, version FROM case_timeline WHERE kind = 'transition'")
            .fetch_all(pool)
            .await?;
    Ok(rows.into_iter().map(|(id, c, v)| (id, (c, v))).collect())
}

struct Report {
    text: String,
    failed: bool,
}

fn secs(d: Option<Duration>) -> String {
    d.map(|d| format!("{:.1} s", d.as_secs_f64()))
        .unwrap_or_else(|| "—".into())
}

#[allow(clippy::too_many_arguments)]
async fn judge(
    s: &Settings,
    pool: &PgPool,
    record: &Shared,
    expected: &HashMap<Uuid, (Uuid, i64)>,
    settle: Option<Duration>,
    recovery: Duration,
    failover: &Failover,
    (mut resumed, never_resumed): (Vec<Duration>, usize),
    first_stored: Option<Duration>,
) -> anyhow::Result<Report> {
    resumed.sort();
    let r = lock(record).clone();
    let mut checks: Vec<(String, bool)> = Vec::new();

    // 1. Published and seen exactly once after de-duplication by id.
    let mut by_envelope: HashMap<Uuid, &Seen> = HashMap::new();
    for seen in &r.seen {
        by_envelope.insert(seen.envelope, seen);
    }
    let duplicates = r.seen.len() - by_envelope.len();
    let mut per_timeline: HashMap<Uuid, usize> = HashMap::new();
    for seen in by_envelope.values() {
        *per_timeline.entry(seen.timeline).or_default() += 1;
    }
    let missing = expected
        .keys()
        .filter(|t| !per_timeline.contains_key(t))
        .count();
    let doubled = per_timeline.values().filter(|&&n| n > 1).count();
    let unknown = per_timeline
        .keys()
        .filter(|t| !expected.contains_key(t))
        .count();
    checks.push((
        format!(
            "every accepted transition seen exactly once after de-duplication ({} transitions; missing {missing}, published under two ids {doubled}, not in the record {unknown})",
            expected.len()
        ),
        missing == 0 && doubled == 0 && unknown == 0 && !expected.is_empty(),
    ));

    // 2. Consecutive versions, in the record and on the feed.
    let mut record_versions: BTreeMap<Uuid, Vec<i64>> = BTreeMap::new();
    for (case, version) in expected.values() {
        record_versions.entry(*case).or_default().push(*version);
    }
    let mut gaps = 0;
    for versions in record_versions.values_mut() {
        versions.sort_unstable();
        if *versions != (2..2 + versions.len() as i64).collect::<Vec<_>>() {
            gaps += 1;
        }
    }
    // On the feed, in the stream's order (what the relay published in;
    // a redelivery after a lost ack may reach the subscriber later than a
    // newer version, which is at-least-once delivery, not disorder).
    let mut in_stream: Vec<&Seen> = by_envelope.values().copied().collect();
    in_stream.sort_by_key(|x| x.sequence);
    let mut feed_versions: BTreeMap<Uuid, Vec<i64>> = BTreeMap::new();
    for seen in in_stream {
        feed_versions
            .entry(seen.case)
            .or_default()
            .push(seen.version);
    }
    let mut out_of_order = 0;
    for (case, versions) in &feed_versions {
        if Some(versions) != record_versions.get(case) {
            out_of_order += 1;
        }
    }
    checks.push((
        format!(
            "per-case versions consecutive, in the record and in the stream's order ({gaps} cases with a gap in the record, {out_of_order} out of order or incomplete on the feed)"
        ),
        gaps == 0 && out_of_order == 0 && !record_versions.is_empty(),
    ));

    // 3. No step of the recording script ran twice.
    let runs = std::fs::read_to_string(RUNS_LOG).unwrap_or_default();
    let mut starts: HashMap<&str, usize> = HashMap::new();
    let prefix = format!("chaos-{}-", s.seed);
    for line in runs.lines() {
        let mut words = line.split(' ');
        if let (Some("start"), Some(svc)) = (words.next(), words.next())
            && svc.starts_with(&prefix)
        {
            *starts.entry(svc).or_default() += 1;
        }
    }
    let twice = starts.values().filter(|&&n| n > 1).count();
    // Not vacuous: every closed case ran the script (its log is read).
    let closed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM ops_case WHERE id = ANY($1) AND status = 'CLOSED'",
    )
    .bind(&r.cases)
    .fetch_one(pool)
    .await?;
    checks.push((
        format!(
            "no step of the non-idempotent script ran twice ({} runs for {closed} closed cases, {twice} twice)",
            starts.len()
        ),
        twice == 0 && closed > 0 && starts.len() as i64 >= closed,
    ));

    // 4. Every case ended with a reason, within 60 s after the faults.
    let ends: Vec<(String, Option<String>)> =
        sqlx::query_as("SELECT status, park_reason FROM ops_case WHERE id = ANY($1)")
            .bind(&r.cases)
            .fetch_all(pool)
            .await?;
    let closed = ends.iter().filter(|(s, _)| s == "CLOSED").count();
    let parked: Vec<&str> = ends
        .iter()
        .filter(|(s, _)| s == "PARKED")
        .map(|(_, why)| why.as_deref().unwrap_or(""))
        .collect();
    let unexplained = parked.iter().filter(|why| why.is_empty()).count();
    let mut reasons: BTreeMap<&str, usize> = BTreeMap::new();
    for why in &parked {
        *reasons
            .entry(why.split(':').next().unwrap_or(why))
            .or_default() += 1;
    }
    checks.push((
        format!(
            "every case CLOSED or PARKED with a reason within 60 s of the faults' end ({} cases: {closed} closed, {} parked {reasons:?}; settled in {})",
            r.cases.len(),
            parked.len(),
            secs(settle)
        ),
        settle.is_some()
            && !r.cases.is_empty()
            && closed + parked.len() == r.cases.len()
            && unexplained == 0,
    ));

    // 5. Dead letters: the poison and nothing else.
    let dead: Vec<(String, String)> =
        sqlx::query_as("SELECT reason, subject FROM dead_letter ORDER BY id")
            .fetch_all(pool)
            .await?;
    let poison = dead
        .iter()
        .filter(|(reason, subject)| reason == "malformed_envelope" && subject == "cmd.verify.run")
        .count();
    checks.push((
        format!(
            "no dead letters but the injected poison ({} injected, {poison} dead-lettered as poison, {} other)",
            r.poison,
            dead.len() - poison
        ),
        poison == r.poison && dead.len() == poison && r.poison > 0,
    ));

    // 6. The faults happened as planned (and did what they say).
    checks.push((
        format!(
            "every planned fault injected and confirmed ({} of {}{})",
            r.faults.len(),
            FAULTS.len(),
            if failover.unconfirmed.is_empty() {
                String::new()
            } else {
                format!("; not confirmed: {}", failover.unconfirmed.join("; "))
            }
        ),
        r.faults.len() == FAULTS.len() && failover.unconfirmed.is_empty(),
    ));

    let failed = checks.iter().any(|(_, ok)| !ok);
    let backlog_drained = failover
        .leader_lost
        .and_then(|loss| drained(&r.backlog, loss.at, loss.backlog_before));
    let mut text = format!(
        "### Chaos run, seed {} ({}{} s of load, {})\n\n",
        s.seed,
        if s.short { "short form, " } else { "" },
        s.load.as_secs(),
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC")
    );
    text += &format!(
        "Cases {}, transitions {}, deliveries to the subscriber {} (duplicates before de-duplication {duplicates}), HTTP retries {}, faults {}; every case settled {:.1} s after the load and the faults ended.\n\n",
        r.cases.len(),
        expected.len(),
        r.seen.len(),
        r.http_retries,
        r.faults.len() + usize::from(r.poison > 0),
        recovery.as_secs_f64()
    );
    text += "| at | fault | took |\n|---:|---|---:|\n";
    for f in &r.faults {
        text += &format!(
            "| {:.1} s | {} | {:.1} s |\n",
            f.at.as_secs_f64(),
            f.what,
            f.lasted.as_secs_f64()
        );
    }
    text += &format!(
        "| — | {} poison messages on `cmd.verify.run` | — |\n\n",
        r.poison
    );
    text += &format!(
        "Failover: NATS leader killed → first message stored by the new leader {}; → outbox back to its level {}. \
         `kill -9` → open cases moving again: median {}, worst {} ({} cases; {never_resumed} never moved within 90 s).\n\n",
        secs(first_stored),
        secs(backlog_drained),
        secs(common_quantile(&resumed, 0.5)),
        secs(resumed.last().copied()),
        resumed.len()
    );
    for (what, ok) in &checks {
        text += &format!("- [{}] {what}\n", if *ok { "x" } else { " " });
    }
    Ok(Report { text, failed })
}

fn common_quantile(sorted: &[Duration], p: f64) -> Option<Duration> {
    (!sorted.is_empty()).then(|| common::quantile(sorted, p))
}
