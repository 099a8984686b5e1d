//! Shared by the benchmark programs: the case walk and latency summaries.

// Each benchmark binary includes this module and uses only part of it.
#![allow(dead_code)]

pub mod cpu;

use std::time::{Duration, Instant};

use anyhow::Context;
use async_nats::jetstream::{self, consumer::PullConsumer};
use futures::StreamExt;
use opsloop::orchestrator::consumer::FactConsumer;
use opsloop::pubsub::consumer::{self, ConsumerSpec, Handler};
use opsloop::pubsub::outbox::CommitWake;
use opsloop::pubsub::relay::{Relay, RelaySettings};
use opsloop::roles::Role;
use opsloop::worker::{CaseWorker, Runner};
use tokio_util::sync::CancellationToken;

use opsloop::orchestrator::{Actor, Answer, Orchestrator, Origin, Outcome, TransitionRequest};
use opsloop::store::NewCase;
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
        tenant: "bench".parse().expect("a valid tenant"),
        title: "bench case".into(),
        severity: "low".into(),
        kind: None,
        labels: json!({}),
    };
    Ok(orchestrator.create_case(new, &bench_actor()).await?.id)
}

/// One transition through `Orchestrator::transition`, keyed like an HTTP
/// request; the case's version after it.
pub async fn orchestrator_step(
    orchestrator: &Orchestrator,
    case: Uuid,
    step: u64,
) -> anyhow::Result<i64> {
    let outcome = orchestrator
        .transition(TransitionRequest {
            case_id: case,
            tenants: opsloop::auth::TenantScope::All,
            event: event_at(step),
            actor: bench_actor(),
            reason: None,
            plan_hash: None,
            dryrun_digest: None,
            meta: Value::Null,
            expected_version: None,
            origin: Origin::Http {
                idempotency_key: Uuid::now_v7().to_string().parse().expect("a valid key"),
                request_hash: "0".repeat(64),
            },
            trace_id: Uuid::new_v4().simple().to_string(),
        })
        .await?;
    match outcome {
        Outcome::Answered(Answer::Applied { case, .. }) => Ok(case.version),
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

/// Whether the flag `name` was given.
pub fn flag(name: &str) -> bool {
    std::env::args().any(|a| a == name)
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// PostgreSQL from `DATABASE_URL`, migrated.
pub async fn database(max_connections: u32) -> anyhow::Result<sqlx::PgPool> {
    let url = std::env::var("DATABASE_URL").context("DATABASE_URL must be set")?;
    // The service's own pool settings: the path measured is the product's.
    let pool = opsloop::config::connect_db(&url, max_connections).await?;
    opsloop::MIGRATOR.run(&pool).await?;
    Ok(pool)
}

/// NATS from `NATS_URL`, with the product's streams in place.
pub async fn jetstream() -> anyhow::Result<(async_nats::Client, async_nats::jetstream::Context)> {
    let url = std::env::var("NATS_URL").context("NATS_URL must be set")?;
    let client = opsloop::pubsub::connect(&url)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let js = async_nats::jetstream::new(client.clone());
    opsloop::pubsub::streams::ensure(&js, &Default::default()).await?;
    Ok((client, js))
}

/// A consumer of this run only: it starts at new messages, so the backlog
/// This process's name for a benchmark's durable consumer `name`.
fn durable_name(name: &str) -> String {
    format!("bench-{name}-{}", std::process::id())
}

/// other programs left in the streams does not count in the figures.
pub async fn durable(
    js: &jetstream::Context,
    stream: &'static str,
    name: &str,
    subject: &str,
) -> anyhow::Result<PullConsumer> {
    let spec = ConsumerSpec {
        deliver_policy: jetstream::consumer::DeliverPolicy::New,
        ..ConsumerSpec::new(stream, &durable_name(name), subject)
    };
    consumer::durable(js, &spec)
        .await
        .map_err(|e| anyhow::anyhow!("consumer {name}: {e}"))
}

/// One JetStream hop as the workers see it: publish with ack, pull, ack.
pub async fn hop_baseline(js: &jetstream::Context, rounds: usize) -> anyhow::Result<Vec<Duration>> {
    let stream = "OPSLOOP_BENCH_HOP";
    js.create_or_update_stream(jetstream::stream::Config {
        name: stream.into(),
        subjects: vec!["bench.hop".into()],
        storage: jetstream::stream::StorageType::File,
        ..Default::default()
    })
    .await?;
    let c = durable(js, "OPSLOOP_BENCH_HOP", "hop", "bench.hop").await?;
    let mut messages = c.messages().await?;
    let mut out = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t = Instant::now();
        js.publish("bench.hop", "x".repeat(500).into())
            .await?
            .await?;
        let msg = messages.next().await.context("hop stream ended")??;
        msg.ack().await.map_err(|e| anyhow::anyhow!("{e}"))?;
        out.push(t.elapsed());
    }
    js.delete_stream(stream).await?;
    out.sort_unstable();
    Ok(out)
}

/// One transition applied directly (no HTTP, no idempotency record).
pub async fn direct_step(
    orchestrator: &Orchestrator,
    case: Uuid,
    event: EventKind,
) -> anyhow::Result<()> {
    orchestrator
        .transition(TransitionRequest {
            case_id: case,
            tenants: opsloop::auth::TenantScope::All,
            event,
            actor: bench_actor(),
            reason: None,
            plan_hash: None,
            dryrun_digest: None,
            meta: serde_json::Value::Null,
            expected_version: None,
            origin: Origin::Direct,
            trace_id: Uuid::new_v4().simple().to_string(),
        })
        .await?;
    Ok(())
}

/// Per case, the time from its `from` transition to its `to` transition
/// (PostgreSQL's clock, from the timeline), sorted.
pub async fn between(
    pool: &sqlx::PgPool,
    ids: &[Uuid],
    from: &str,
    to: &str,
) -> anyhow::Result<Vec<Duration>> {
    let mut out: Vec<Duration> = sqlx::query_scalar::<_, f64>(
        "SELECT extract(epoch FROM b.at - a.at)::float8 FROM case_timeline a \
         JOIN case_timeline b ON b.case_id = a.case_id AND b.event = $3 AND b.kind = 'transition' \
         WHERE a.case_id = ANY($1) AND a.event = $2 AND a.kind = 'transition'",
    )
    .bind(ids)
    .bind(from)
    .bind(to)
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|s| Duration::from_secs_f64(s.max(0.0)))
    .collect();
    out.sort_unstable();
    Ok(out)
}

/// The relay and the workers of one benchmark phase, each worker on a
/// consumer of this run only (see `durable`); `stop` removes them.
pub struct Workers {
    js: jetstream::Context,
    pool: sqlx::PgPool,
    wake: CommitWake,
    shutdown: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    consumers: Vec<(&'static str, String)>,
}

impl Workers {
    /// Starts a relay woken by `orchestrator`'s commits, and `orchestrator`
    /// applying the workers' facts (one at a time, as `opsloop serve` does).
    pub async fn start(
        pool: &sqlx::PgPool,
        client: &async_nats::Client,
        js: &jetstream::Context,
        orchestrator: &Orchestrator,
    ) -> anyhow::Result<Workers> {
        let shutdown = CancellationToken::new();
        let relay = Relay::new(pool.clone(), client.clone(), RelaySettings::default());
        let relay = tokio::spawn(relay.run(orchestrator.outbox_ready(), shutdown.clone()));
        let mut workers = Workers {
            js: js.clone(),
            pool: pool.clone(),
            wake: orchestrator.outbox_ready(),
            shutdown,
            tasks: vec![relay],
            consumers: Vec::new(),
        };
        let facts = FactConsumer {
            orchestrator: orchestrator.clone(),
        };
        workers.add(Role::Orchestrator, facts).await?;
        Ok(workers)
    }

    /// Runs `handler` as `role` runs in `opsloop serve` (its subjects and
    /// concurrency), on a consumer of this run only.
    pub async fn add<H: Handler + 'static>(
        &mut self,
        role: Role,
        handler: H,
    ) -> anyhow::Result<()> {
        let spec = role
            .consumer()
            .ok_or_else(|| anyhow::anyhow!("{role} consumes nothing"))?;
        self.add_on(spec, handler).await
    }

    /// Runs `handler` on a consumer of `spec` (a role's, or a narrower one).
    pub async fn add_on<H: Handler + 'static>(
        &mut self,
        spec: ConsumerSpec,
        handler: H,
    ) -> anyhow::Result<()> {
        let consumer = durable(&self.js, spec.stream, &spec.durable, &spec.filter_subject).await?;
        self.consumers.push((spec.stream, spec.durable.clone()));
        self.tasks.push(tokio::spawn(consumer::run(
            consumer,
            self.pool.clone(),
            handler,
            spec.concurrency,
            self.shutdown.clone(),
            Duration::from_secs(5),
        )));
        Ok(())
    }

    /// Runs a case worker as `role`, waking this run's relay on its commits.
    pub async fn add_worker<W: CaseWorker>(&mut self, role: Role, worker: W) -> anyhow::Result<()> {
        let runner = Runner::new(worker, self.pool.clone(), self.wake.clone());
        self.add(role, runner).await
    }

    /// This run's commit wake-up (the orchestrator's).
    pub fn wake(&self) -> CommitWake {
        self.wake.clone()
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
        for (stream, name) in &self.consumers {
            let _ = self
                .js
                .delete_consumer_from_stream(&durable_name(name), *stream)
                .await;
        }
    }
}

/// The product's API on a loopback port, through its own accept loop (as
/// `opsloop serve` runs it); its base URL.
pub async fn serve_api(state: opsloop::api::AppState) -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    tokio::spawn(opsloop::api::serve(
        listener,
        opsloop::api::app(state),
        opsloop::api::ServeSettings::default(),
        std::future::pending(),
    ));
    Ok(base)
}

/// A fresh database on `DATABASE_URL`'s server (dropped first), and its URL.
pub async fn fresh_database(name: &'static str) -> anyhow::Result<String> {
    create_database(name, None).await
}

/// `fresh_database` as a copy of `template`.
pub async fn database_copy(name: &str, template: &str) -> anyhow::Result<String> {
    create_database(name, Some(template)).await
}

/// Drops `name` on `DATABASE_URL`'s server, if it is there.
pub async fn drop_database(name: &str) -> anyhow::Result<()> {
    let admin = admin().await?;
    // Names are the benchmarks' constants or made from an index, never input.
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&admin)
    .await?;
    admin.close().await;
    Ok(())
}

async fn create_database(name: &str, template: Option<&str>) -> anyhow::Result<String> {
    drop_database(name).await?;
    let admin = admin().await?;
    let from = template
        .map(|t| format!(" TEMPLATE {t}"))
        .unwrap_or_default();
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}{from}")))
        .execute(&admin)
        .await?;
    admin.close().await;
    let mut url = reqwest::Url::parse(&std::env::var("DATABASE_URL")?)?;
    url.set_path(name);
    Ok(url.to_string())
}

/// One connection to `DATABASE_URL`, to create and drop databases.
async fn admin() -> anyhow::Result<sqlx::PgPool> {
    Ok(sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&std::env::var("DATABASE_URL")?)
        .await?)
}

/// The gate's policy with the shipped targets file, as `opsloop serve`
/// runs it from the repository root (the demo script in staging, its
/// dry-run flag declared).
pub fn shipped_policy() -> anyhow::Result<opsloop::gatekeeper::policy::Policy> {
    let targets =
        opsloop::gatekeeper::targets::Targets::load(std::path::Path::new("config/targets.toml"))?;
    Ok(opsloop::gatekeeper::policy::Policy::default().with_targets(targets)?)
}

/// An executor as the service builds it, with the shipped scripts folder
/// and `policy` (the gate's: change freezes, the scripts' dry-run flags).
pub fn shipped_executor(
    pool: &sqlx::PgPool,
    wake: CommitWake,
    policy: opsloop::gatekeeper::policy::Policy,
) -> opsloop::executor::Executor {
    use clap::Parser;
    #[derive(Parser)]
    struct Settings {
        #[command(flatten)]
        exec: opsloop::executor::ExecSettings,
    }
    let settings = Settings::parse_from(["bench", "--scripts-dir", "scripts/actions"]);
    let mut executor = opsloop::executor::Executor::new(
        pool.clone(),
        &settings.exec,
        &["restart-service.sh".to_string()],
        wake,
    );
    executor.set_policy(std::sync::Arc::new(policy));
    executor
}

/// Opens cases through the HTTP API as a client does while processes die:
/// healthy latency for the case's service, the case (template and service
/// labels), then `start_analysis`; each request goes to the next API process
/// and is retried on the others with the same `Idempotency-Key`.
pub struct CaseFeed {
    pub http: reqwest::Client,
    pub bases: Vec<String>,
    pub operator: String,
    pub service: String,
    pub tenant: &'static str,
    pub template: &'static str,
    pub kind: &'static str,
}

#[derive(serde::Deserialize)]
struct Created {
    id: Uuid,
}

impl CaseFeed {
    /// The case opened for `svc` (`None` when the API refused or stayed
    /// away for 30 s), and how many requests had to be sent again.
    pub async fn open(&self, n: usize, svc: &str) -> (Option<Uuid>, usize) {
        let now = chrono::Utc::now();
        let rows: Vec<Value> = (0..3)
            .map(|ago| {
                let bucket = now - chrono::Duration::minutes(ago);
                json!({"tenant": self.tenant, "resource": svc, "metric": "latency_p95_ms",
                       "bucket": bucket.format("%Y-%m-%dT%H:%M:00Z").to_string(), "avg": 120.0, "max": 130.0})
            })
            .collect();
        let mut retries = 0;
        let (ingested, r) = self
            .call(
                n,
                reqwest::Method::POST,
                "/metrics/ingest",
                &self.service,
                &json!({"rows": rows}),
            )
            .await;
        retries += r;
        if ingested.is_none() {
            return (None, retries);
        }
        let body = json!({"title": format!("{svc} slow"), "tenant": self.tenant, "kind": self.kind,
                          "labels": {"template": self.template, "service": svc}});
        let (created, r) = self
            .call(n, reqwest::Method::POST, "/case", &self.operator, &body)
            .await;
        retries += r;
        let Some(case) = created.and_then(|v| serde_json::from_value::<Created>(v).ok()) else {
            return (None, retries);
        };
        let path = format!("/case/{}/transition", case.id);
        let (_, r) = self
            .call(
                n,
                reqwest::Method::PATCH,
                &path,
                &self.operator,
                &json!({"event": "start_analysis"}),
            )
            .await;
        (Some(case.id), retries + r)
    }

    async fn call(
        &self,
        n: usize,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: &Value,
    ) -> (Option<Value>, usize) {
        let key = Uuid::new_v4().to_string();
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut attempt = 0;
        loop {
            let base = &self.bases[(n + attempt) % self.bases.len()];
            let sent = self
                .http
                .request(method.clone(), format!("{base}{path}"))
                .bearer_auth(token)
                .header("Idempotency-Key", &key)
                .timeout(Duration::from_secs(5))
                .json(body)
                .send()
                .await;
            match sent {
                // A body cut off in transit is asked for again: the same
                // key replays the answer.
                Ok(r) if r.status().is_success() => {
                    if let Ok(body) = r.json::<Value>().await {
                        return (Some(body), attempt);
                    }
                }
                // A refusal is final (a request with the same key waits
                // for the first one and replays its answer, never 409s).
                Ok(r) if r.status().is_client_error() => {
                    eprintln!("{method} {path}: {}", r.status());
                    return (None, attempt);
                }
                _ => {}
            }
            attempt += 1;
            if Instant::now() > deadline {
                return (None, attempt);
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
}

/// A clean stage for a benchmark that runs `opsloop serve` processes: a new
/// database (migrated), no streams left on `nats_url` from an earlier run,
/// and a folder holding a tokens file with an operator's and a metrics
/// feed's token for `tenant`.
pub struct Stage {
    pub database_url: String,
    pub pool: sqlx::PgPool,
    pub js: jetstream::Context,
    pub dir: std::path::PathBuf,
    pub tokens: std::path::PathBuf,
    pub operator: String,
    pub service: String,
}

impl Stage {
    /// `name`: the database and the folder's prefix (a constant of the
    /// calling program).
    pub async fn new(name: &'static str, nats_url: &str, tenant: &str) -> anyhow::Result<Stage> {
        let database_url = fresh_database(name).await?;
        // A short acquire timeout: the chaos suite restarts this server.
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(3))
            .connect(&database_url)
            .await?;
        opsloop::MIGRATOR.run(&pool).await?;
        let client = opsloop::pubsub::connect(nats_url)
            .await
            .map_err(|e| anyhow::anyhow!("connecting to NATS: {e}"))?;
        let js = jetstream::new(client);
        // An earlier run's messages and consumers would be this run's. A
        // cluster just started may not have the streams' leaders yet: ask
        // again for up to 30 s.
        for stream in [
            opsloop::pubsub::streams::CMD_STREAM,
            opsloop::pubsub::streams::EVT_STREAM,
        ] {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                match js.delete_stream(stream).await {
                    Ok(_) => break,
                    Err(e)
                        if matches!(e.kind(), jetstream::context::DeleteStreamErrorKind::JetStream(j)
                            if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND) =>
                    {
                        break;
                    }
                    Err(e) if Instant::now() > deadline => {
                        anyhow::bail!("deleting the stream {stream}: {e}")
                    }
                    Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
                }
            }
        }
        let dir = std::env::temp_dir().join(format!("{name}-{}", Uuid::new_v4()));
        std::fs::create_dir_all(&dir)?;
        let tokens = dir.join("tokens.toml");
        let scope = opsloop::auth::TenantScope::parse(&[tenant]).map_err(anyhow::Error::msg)?;
        let token = |who: &str, role| {
            opsloop::auth::create_token(&tokens, &format!("{name}-{who}"), &[role], &scope, None)
        };
        let operator = token("operator", opsloop::auth::Role::Operator)?;
        let service = token("metrics", opsloop::auth::Role::Service)?;
        Ok(Stage {
            database_url,
            pool,
            js,
            dir,
            tokens,
            operator,
            service,
        })
    }
}

/// A port free on loopback now.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Until `base` answers `/readyz` (at most a minute).
pub async fn wait_ready(http: &reqwest::Client, base: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !http
        .get(format!("{base}/readyz"))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        if Instant::now() > deadline {
            anyhow::bail!("{base} did not become ready in 60 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

/// The `opsloop` binary the benchmark starts: `--opsloop PATH`, else the
/// one built beside this program.
pub fn opsloop_binary() -> anyhow::Result<std::path::PathBuf> {
    Ok(match arg("--opsloop") {
        Some(p) => std::path::PathBuf::from(p),
        None => std::env::current_exe()?.with_file_name("opsloop"),
    })
}
