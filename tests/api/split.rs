//! The whole loop with its roles split across two `opsloop serve`
//! processes, the way production runs them: process A holds the API, the
//! relay, the orchestrator, the gatekeeper and the planner; process B the
//! analyst, the executor and the verifier (and a relay of its own for the
//! facts it writes). They share only PostgreSQL and NATS. Each path of the
//! in-process tests runs here too: happy path to CLOSED, breach, no data,
//! step failure with rollback, and resume to a new plan.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::process::{Child, Command};
use uuid::Uuid;

use crate::fake_llm::{FakeLlm, Reply};
use crate::helpers::{database_url, service};
use crate::nats::{TestCluster, TestNats, free_port};

struct Service {
    child: Child,
    /// stderr, where the service logs.
    log: PathBuf,
    base: String,
}

/// The NATS the processes share.
pub enum Bus {
    Single(TestNats),
    Cluster(TestCluster),
}

impl Bus {
    fn url(&self) -> String {
        match self {
            Bus::Single(n) => n.url.clone(),
            Bus::Cluster(c) => c.url(),
        }
    }
}

/// Two serving processes and what they need; their logs are printed when
/// a test fails.
struct Split {
    a: Service,
    b: Service,
    http: reqwest::Client,
    operator: String,
    service: String,
    pool: PgPool,
    _bus: Bus,
    /// What every process of this split is started with.
    env: Vec<(String, String)>,
    dir: PathBuf,
}

impl Drop for Split {
    fn drop(&mut self) {
        let _ = self.a.child.start_kill();
        let _ = self.b.child.start_kill();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
            return;
        }
        for s in [&self.a, &self.b] {
            let log = std::fs::read_to_string(&s.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("--- {} (last lines) ---", s.log.display());
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

fn manifest(path: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(path)
        .to_string_lossy()
        .into_owned()
}

async fn token(file: &Path, identity: &str, roles: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_opsloop"))
        .args([
            "token",
            "create",
            "--identity",
            identity,
            "--roles",
            roles,
            "--tenants",
            "t-001",
            "--file",
        ])
        .arg(file)
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Starts `opsloop serve --roles roles` with `env`, logging to `dir/name.log`.
fn launch(dir: &Path, env: &[(String, String)], name: &str, roles: &str) -> Service {
    let port = free_port();
    let log = dir.join(format!("{name}.log"));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_opsloop"));
    cmd.args(["serve", "--roles", roles])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("OPSLOOP_LISTEN", format!("127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .kill_on_drop(true);
    Service {
        child: cmd.spawn().expect("starting opsloop serve"),
        log,
        base: format!("http://127.0.0.1:{port}"),
    }
}

/// Waits until the process logging to `log` says it started.
async fn started(log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(log).is_ok_and(|l| l.contains("opsloop started.")) {
        assert!(Instant::now() < deadline, "{} never started", log.display());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Process A's roles; B runs the rest (and a relay for its own facts).
const ROLES_A: &str = "api,relay,orchestrator,gatekeeper,planner";
const ROLES_B: &str = "analyst,executor,verifier,relay";

impl Split {
    async fn start(pool: PgPool, llm: &FakeLlm) -> Split {
        Split::start_on(pool, llm, Bus::Single(TestNats::start().await), &[]).await
    }

    /// Both processes on `bus`, with `env` added to their environment.
    async fn start_on(pool: PgPool, llm: &FakeLlm, bus: Bus, env: &[(&str, &str)]) -> Split {
        let dir = std::env::temp_dir().join(format!("opsloop-split-{}", Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let tokens = dir.join("tokens.toml");
        let operator = token(&tokens, "alice", "operator,approver").await;
        let service = token(&tokens, "metrics-feed", "service").await;
        let targets = dir.join("targets.toml");
        std::fs::write(&targets, crate::flow::targets_text()).unwrap();
        let path = |p: &Path| p.to_string_lossy().into_owned();
        let mut common: Vec<(String, String)> = [
            ("DATABASE_URL", database_url(&pool)),
            ("NATS_URL", bus.url()),
            ("OPSLOOP_TOKENS_FILE", path(&tokens)),
            ("OPSLOOP_TARGETS_FILE", path(&targets)),
            ("OPSLOOP_DB_POOL", "6".into()),
            ("OPSLOOP_TEMPLATES_DIR", manifest("templates")),
            ("OPSLOOP_SCRIPTS_DIR", manifest("tests/actions")),
            (
                "OPSLOOP_SCRIPT_ALLOWLIST",
                "restart-service.sh,restart-checkout.sh,fails-for-real.sh,no-rehearsal.sh,slow-restart.sh"
                    .into(),
            ),
            ("OPSLOOP_VERIFY_DELAY_S", "0".into()),
            ("OPSLOOP_DETECT_INTERVAL_MS", "200".into()),
            ("OPSLOOP_STEP_BACKOFF_SCALE", "0.01".into()),
            ("OPENAI_BASE_URL", llm.base_url.clone()),
            ("OPENAI_API_KEY", "test-key".into()),
            ("OPSLOOP_LLM_MODEL", "fake-model".into()),
            ("RUST_LOG", "info,sqlx=warn".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        common.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let a = launch(&dir, &common, "a", ROLES_A);
        let b = launch(&dir, &common, "b", ROLES_B);
        let split = Split {
            a,
            b,
            http: opsloop::http_client::http_client().build().unwrap(),
            operator,
            service,
            pool,
            _bus: bus,
            env: common,
            dir,
        };
        // B serves no HTTP (no api role): its log says when every consumer
        // exists (they would pick up what was published before, but a
        // test that stops B must not stop it while it still starts).
        split.ready(&split.a.base).await;
        started(&split.b.log).await;
        split
    }

    /// Stops process B with SIGTERM and waits for it (at most `within`):
    /// whether it exited cleanly, and how long it took.
    async fn terminate_b(&mut self, within: Duration) -> (bool, Duration) {
        let pid = self.b.child.id().expect("B is running");
        let asked = Instant::now();
        let sent = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await
            .unwrap();
        assert!(sent.success());
        let status = tokio::time::timeout(within, self.b.child.wait())
            .await
            .unwrap_or_else(|_| panic!("B did not stop within {within:?} of SIGTERM"))
            .unwrap();
        (status.success(), asked.elapsed())
    }

    /// A new process B (the old one's log is kept beside it).
    fn restart_b(&mut self, generation: usize) {
        self.b = launch(&self.dir, &self.env, &format!("b{generation}"), ROLES_B);
    }

    async fn ready(&self, base: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(r) = self.http.get(format!("{base}/readyz")).send().await
                && r.status() == 200
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{base} never became ready");
    }

    async fn call(&self, method: reqwest::Method, path: &str, token: &str, body: Value) -> Value {
        let r = self
            .http
            .request(method, format!("{}{path}", self.a.base))
            .bearer_auth(token)
            .header("Idempotency-Key", Uuid::new_v4().to_string())
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "{path}: {status} {body}");
        body
    }

    async fn ingest(&self, resource: &str, latency: f64) {
        let ts = crate::walking_skeleton::this_minute();
        self.call(
            reqwest::Method::POST,
            "/metrics/ingest",
            &self.service,
            json!({"rows": [{"tenant": "t-001", "resource": resource, "metric": "latency_p95_ms", "bucket": ts, "avg": latency, "max": latency}]}),
        )
        .await;
    }

    /// A degraded-service case, started into analysis; the processes take
    /// it from there.
    async fn open(&self, service: &str, template: bool) -> Uuid {
        // With an LLM configured, only a named template keeps it out.
        let labels = match template {
            true => json!({"template": "restart-service", "service": service}),
            false => json!({"service": service}),
        };
        let case = self
            .call(
                reqwest::Method::POST,
                "/case",
                &self.operator,
                json!({"title": format!("{service} slow"), "tenant": "t-001", "kind": "latency-report", "labels": labels}),
            )
            .await;
        let id: Uuid = case["id"].as_str().unwrap().parse().unwrap();
        self.event(id, "start_analysis").await;
        id
    }

    async fn event(&self, case: Uuid, event: &str) {
        self.call(
            reqwest::Method::PATCH,
            &format!("/case/{case}/transition"),
            &self.operator,
            json!({"event": event}),
        )
        .await;
    }

    /// Waits until the case rests in CLOSED or PARKED; its status then.
    async fn rests(&self, case: Uuid) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (status,): (String,) = sqlx::query_as("SELECT status FROM ops_case WHERE id = $1")
                .bind(case)
                .fetch_one(&self.pool)
                .await
                .unwrap();
            let running: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM exec_run WHERE case_id = $1 AND status = 'running'",
            )
            .bind(case)
            .fetch_one(&self.pool)
            .await
            .unwrap();
            if ["CLOSED", "PARKED"].contains(&status.as_str()) && running == 0 {
                return status;
            }
            assert!(Instant::now() < deadline, "case {case} still {status}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn park_reason(&self, case: Uuid) -> String {
        sqlx::query_scalar("SELECT park_reason FROM ops_case WHERE id = $1")
            .bind(case)
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    /// (kind, status) of the case's runs, oldest first, once the rollback
    /// a parked case may still get has finished.
    async fn runs(&self, case: Uuid, expected: usize) -> Vec<(String, String)> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let runs: Vec<(String, String)> = sqlx::query_as(
                "SELECT kind, status FROM exec_run WHERE case_id = $1 ORDER BY started_at",
            )
            .bind(case)
            .fetch_all(&self.pool)
            .await
            .unwrap();
            let settled = runs.iter().all(|(_, s)| s != "running");
            if (runs.len() >= expected && settled) || Instant::now() > deadline {
                return runs;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn llm_plan(steps: Value, rollback: Value, svc: &str) -> Reply {
    Reply::Content(
        json!({
            "title": "restart checkout", "environment": "staging", "rationale": "test",
            "steps": steps, "rollback": {"steps": rollback},
            "verify": {"checks": [{"resource": svc, "metric": "latency_p95_ms", "op": "<", "threshold": 300, "window_s": 60}]}
        })
        .to_string(),
    )
}

#[sqlx::test]
async fn roles_split_across_two_processes_take_every_path(pool: PgPool) {
    let failing = service();
    // The LLM's first plan runs a script whose dry run passes and whose run
    // fails; after `resume` its second plan is a no-op.
    let llm = FakeLlm::start(vec![
        llm_plan(
            json!([{"action": "noop", "timeout_s": 10, "retry": 0},
                   {"action": "script.exec", "params": {"script": "fails-for-real.sh", "args": []}, "timeout_s": 10, "retry": 0}]),
            json!([{"action": "script.exec", "params": {"script": "restart-service.sh", "args": ["--service", failing, "--undo"]},
                    "timeout_s": 10, "retry": 0}]),
            &failing,
        ),
        llm_plan(json!([{"action": "noop", "timeout_s": 10, "retry": 0}]), json!([]), &failing),
    ])
    .await;
    let split = Split::start(pool, &llm).await;

    // Happy path: template plan, healthy after the restart → CLOSED.
    let healthy = service();
    split.ingest(&healthy, 120.0).await;
    let case = split.open(&healthy, true).await;
    assert_eq!(split.rests(case).await, "CLOSED");
    assert_eq!(split.runs(case, 1).await, [("run".into(), "done".into())]);

    // Breach: PARKED, and process B runs the rollback the FSM asked for.
    let slow = service();
    split.ingest(&slow, 900.0).await;
    let case = split.open(&slow, true).await;
    assert_eq!(split.rests(case).await, "PARKED");
    assert_eq!(split.park_reason(case).await, "breach");
    assert_eq!(
        split.runs(case, 2).await,
        [
            ("run".into(), "done".into()),
            ("rollback".into(), "rolled_back".into())
        ]
    );

    // No data: never a pass.
    let silent = service();
    let case = split.open(&silent, true).await;
    assert_eq!(split.rests(case).await, "PARKED");
    assert_eq!(split.park_reason(case).await, "no_data");

    // A failing step: the rollback runs, the case parks with both facts.
    let case = split.open(&failing, false).await;
    assert_eq!(split.rests(case).await, "PARKED");
    let reason = split.park_reason(case).await;
    assert!(reason.contains("step 1 (script.exec) failed"), "{reason}");
    assert!(reason.contains("rollback succeeded"), "{reason}");

    // resume → PLANNING → the LLM's new plan → CLOSED.
    split.ingest(&failing, 100.0).await;
    split.event(case, "resume").await;
    assert_eq!(split.rests(case).await, "CLOSED");
    assert_eq!(llm.requests().len(), 2);
    let sources: Vec<String> =
        sqlx::query_scalar("SELECT source FROM plan_proposed WHERE case_id = $1 ORDER BY seq")
            .bind(case)
            .fetch_all(&split.pool)
            .await
            .unwrap();
    assert_eq!(sources, ["llm", "llm"]);

    // Nobody opens the last case: process A stores a regression's metrics,
    // process B's analyst detects it and opens and starts the case itself.
    let regressed = service();
    let now = chrono::DateTime::parse_from_rfc3339(&crate::walking_skeleton::this_minute())
        .unwrap()
        .to_utc();
    let rows: Vec<Value> = (0..36 * 60_i64)
        .map(|ago| {
            let v = if (3..9).contains(&ago) { 900.0 } else { 120.0 + (ago % 7) as f64 };
            json!({"tenant": "t-001", "resource": regressed, "metric": "latency_p95_ms",
                   "bucket": (now - chrono::Duration::minutes(ago)).to_rfc3339(), "avg": v, "max": v})
        })
        .collect();
    split
        .call(
            reqwest::Method::POST,
            "/metrics/ingest",
            &split.service,
            json!({ "rows": rows }),
        )
        .await;
    // The case, and who started its analysis.
    let deadline = Instant::now() + Duration::from_secs(30);
    let starter: String = loop {
        let found: Option<String> = sqlx::query_scalar(
            "SELECT t.actor FROM signal s JOIN ops_case c ON c.id = s.case_id \
             JOIN case_timeline t ON t.case_id = c.id AND t.event = 'start_analysis' \
             WHERE s.source = 'detector' AND c.labels->>'service' = $1",
        )
        .bind(&regressed)
        .fetch_optional(&split.pool)
        .await
        .unwrap();
        if let Some(actor) = found {
            break actor;
        }
        assert!(
            Instant::now() < deadline,
            "the detector in process B started no case"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(starter, "analyst");
}

/// (starts, ends) of `slow-restart.sh` runs for `service`, from the file
/// the script appends to.
fn slow_runs(service: &str) -> (usize, usize) {
    let log = std::fs::read_to_string("/tmp/opsloop-test-runs.log").unwrap_or_default();
    let count = |what: &str| {
        log.lines()
            .filter(|l| l.split(' ').take(2).eq([what, service]))
            .count()
    };
    (count("start"), count("done"))
}

async fn until_started(service: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while slow_runs(service).0 == 0 {
        assert!(Instant::now() < deadline, "the slow step never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn slow_plan(service: &str, seconds: u32) -> Reply {
    llm_plan(
        json!([{"action": "script.exec", "timeout_s": 60, "retry": 0,
                "params": {"script": "slow-restart.sh", "args": ["--service", service, "--seconds", seconds.to_string()]}}]),
        // A rollback keeps the risk low enough for the automatic gate.
        json!([{"action": "noop", "timeout_s": 10, "retry": 0}]),
        service,
    )
}

/// On a three-node NATS cluster with R3 streams: SIGTERM to the process
/// whose executor is in the middle of a step stops its intake, lets the
/// step finish within the grace period, publishes the fact it committed,
/// and exits cleanly; the next process B takes the case on to CLOSED, and
/// the step ran once.
#[sqlx::test]
async fn a_stopping_worker_finishes_its_step_on_a_cluster_and_the_next_one_closes_the_case(
    pool: PgPool,
) {
    let svc = service();
    let llm = FakeLlm::start(vec![slow_plan(&svc, 3)]).await;
    let bus = Bus::Cluster(TestCluster::start().await);
    let mut split = Split::start_on(
        pool,
        &llm,
        bus,
        &[
            ("OPSLOOP_STREAM_REPLICAS", "3"),
            ("OPSLOOP_SHUTDOWN_GRACE_S", "20"),
        ],
    )
    .await;
    split.ingest(&svc, 120.0).await;
    let case = split.open(&svc, false).await;
    until_started(&svc).await;

    let (clean, took) = split.terminate_b(Duration::from_secs(45)).await;
    assert!(clean, "B exits 0 after SIGTERM");
    assert_eq!(
        slow_runs(&svc),
        (1, 1),
        "the step in hand finished before B stopped"
    );
    assert!(
        took < Duration::from_secs(20),
        "within the grace period: {took:?}"
    );
    let log = std::fs::read_to_string(&split.b.log).unwrap();
    assert!(log.contains("Stopping: no new work is taken"), "{log}");
    assert!(
        !log.contains("released a message"),
        "nothing was cut off: {log}"
    );
    // Its fact reached the orchestrator (process A): the case waits for a
    // verifier, and none runs.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status: String = sqlx::query_scalar("SELECT status FROM ops_case WHERE id = $1")
            .bind(case)
            .fetch_one(&split.pool)
            .await
            .unwrap();
        if status == "VERIFYING" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the case is {status}, not VERIFYING"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    split.restart_b(2);
    assert_eq!(split.rests(case).await, "CLOSED");
    assert_eq!(split.runs(case, 1).await, [("run".into(), "done".into())]);
    assert_eq!(slow_runs(&svc), (1, 1), "never run a second time");
}

/// A step longer than the grace period is not waited for: its message is
/// handed back at once (not after the 30 s ack deadline), the next process
/// finds the step started and, the script not being idempotent, parks the
/// case as interrupted instead of running it again.
#[sqlx::test]
async fn a_step_longer_than_the_grace_period_is_released_and_never_run_twice(pool: PgPool) {
    let svc = service();
    // 41 s: a sleep no other test runs, to find it by its command line.
    let llm = FakeLlm::start(vec![slow_plan(&svc, 41)]).await;
    let mut split = Split::start_on(
        pool,
        &llm,
        Bus::Single(TestNats::start().await),
        &[("OPSLOOP_SHUTDOWN_GRACE_S", "1")],
    )
    .await;
    split.ingest(&svc, 120.0).await;
    let case = split.open(&svc, false).await;
    until_started(&svc).await;

    let (_, took) = split.terminate_b(Duration::from_secs(10)).await;
    assert!(
        took < Duration::from_secs(5),
        "B kept its grace period: {took:?}"
    );
    let log = std::fs::read_to_string(&split.b.log).unwrap();
    assert!(log.contains("released a message still in hand"), "{log}");
    // The script's own child went with it: nothing keeps changing the target.
    let left: Vec<_> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
        .filter(|argv| argv == b"sleep\x0041\x00")
        .collect();
    assert!(
        left.is_empty(),
        "the released step's process group was killed"
    );
    let stopped = Instant::now();
    split.restart_b(2);
    assert_eq!(split.rests(case).await, "PARKED");
    let reason = split.park_reason(case).await;
    assert!(reason.contains("interrupted"), "{reason}");
    assert!(
        stopped.elapsed() < Duration::from_secs(20),
        "the released message came back before its 30 s ack deadline: {:?}",
        stopped.elapsed()
    );
    assert_eq!(
        slow_runs(&svc),
        (1, 0),
        "started once, cut off, never started again"
    );
}
