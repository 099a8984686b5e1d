//! The `opsloop` binary: serve, migrate, token management, demo.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tracing::{info, warn};

use opsloop::analyst;
use opsloop::api::{self, AppState};
use opsloop::auth::{self, Role, TokenStore};
use opsloop::config::{self, ServeConfig};
use opsloop::contract::Message;
use opsloop::contract::command as subjects;
use opsloop::contract::fact::{EVT_CASE_TRANSITION, Fact};
use opsloop::executor;
use opsloop::gatekeeper::{self, Gatekeeper, policy::Policy};
use opsloop::orchestrator::Orchestrator;
use opsloop::orchestrator::consumer as consumer_mod;
use opsloop::planner::contract::PlanLimits;
use opsloop::planner::llm::LlmPlanner;
use opsloop::planner::templates::Templates;
use opsloop::planner::worker as planner_worker;
use opsloop::pubsub::consumer::{self, ConsumerSpec};
use opsloop::pubsub::relay::{Relay, RelaySettings};
use opsloop::pubsub::streams::{self, CMD_STREAM, EVT_STREAM, StreamSettings};
use opsloop::verifier;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(name = "opsloop", version, about = "AI-OPS case orchestrator")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service (migrates the database first).
    Serve(Box<ServeConfig>),
    /// Apply database migrations and exit.
    Migrate {
        #[arg(long, env = "DATABASE_URL")]
        database_url: String,
    },
    /// Manage bearer tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Print case transitions live from `evt.case.transition.v1`.
    Tail {
        #[arg(long, env = "NATS_URL")]
        nats_url: String,
        /// Start from the oldest retained transition instead of new ones.
        #[arg(long)]
        all: bool,
        /// Only this case.
        #[arg(long)]
        case: Option<uuid::Uuid>,
    },
    /// Drive a demo case through a running service and print its timeline.
    Demo {
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        url: String,
        #[arg(long, env = "OPSLOOP_DEMO_OPERATOR_TOKEN")]
        operator_token: String,
        #[arg(long, env = "OPSLOOP_DEMO_SERVICE_TOKEN")]
        service_token: String,
        /// Also read the case's transitions back from NATS.
        #[arg(long, env = "NATS_URL")]
        nats_url: Option<String>,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a token; prints it once, stores only its SHA-256 digest.
    Create {
        #[arg(long)]
        identity: String,
        /// Comma-separated: viewer, operator, approver, admin, service.
        #[arg(long, value_delimiter = ',', required = true)]
        roles: Vec<Role>,
        #[arg(
            long,
            env = "OPSLOOP_TOKENS_FILE",
            default_value = "config/tokens.toml"
        )]
        file: PathBuf,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    opsloop::http_client::install_tls_provider();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(cfg) => serve(*cfg).await,
        Command::Migrate { database_url } => {
            opsloop::telemetry::init("info");
            let pool = config::connect_db(&database_url, 2).await?;
            opsloop::MIGRATOR.run(&pool).await.context("migrating")?;
            println!("migrations applied");
            Ok(())
        }
        Command::Token {
            command:
                TokenCommand::Create {
                    identity,
                    roles,
                    file,
                },
        } => {
            if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
            }
            let token = auth::create_token(&file, &identity, &roles)?;
            println!("{token}");
            Ok(())
        }
        Command::Tail {
            nats_url,
            all,
            case,
        } => tail(&nats_url, all, case).await,
        Command::Demo {
            url,
            operator_token,
            service_token,
            nats_url,
        } => {
            opsloop::demo::run(
                &url,
                &opsloop::demo::DemoTokens {
                    operator: operator_token,
                    service: service_token,
                },
                nats_url.as_deref(),
            )
            .await
        }
    }
}

async fn serve(cfg: ServeConfig) -> anyhow::Result<()> {
    opsloop::telemetry::init("info,sqlx=warn");
    let roles = Roles::parse(&cfg.roles)?;
    // Read the tokens before anything starts, so a bad file fails fast.
    let tokens = if roles.api {
        Some(TokenStore::load(&cfg.tokens_file)?)
    } else {
        None
    };
    let pool = config::connect_db(&cfg.database_url, cfg.db_pool)
        .await
        .context("connecting to PostgreSQL")?;
    opsloop::MIGRATOR.run(&pool).await.context("migrating")?;
    let nats = match &cfg.nats_url {
        Some(url) => Some(
            async_nats::ConnectOptions::new()
                .retry_on_initial_connect()
                .connect(url.as_str())
                .await
                .context("connecting to NATS")?,
        ),
        None if roles.any_worker() => {
            anyhow::bail!("only the api role runs without NATS_URL")
        }
        None => {
            warn!("NATS_URL is not set: messages stay in the outbox.");
            None
        }
    };
    let orchestrator = Orchestrator::new(pool.clone());
    let shutdown = CancellationToken::new();
    let plan_limits = PlanLimits {
        script_allowlist: cfg.script_allowlist.iter().cloned().collect(),
        ..PlanLimits::default()
    };
    let mut tasks = Vec::new();

    if let Some(client) = nats.clone() {
        let js = async_nats::jetstream::new(client.clone());
        ensure_streams(&js, &cfg.streams).await?;
        if roles.relay {
            let settings = RelaySettings {
                batch: cfg.relay_batch,
                loops: cfg.relay_loops,
                linger: Duration::from_millis(cfg.relay_linger_ms),
                stall_after_publish: std::env::var("OPSLOOP_FAULT_RELAY_STALL_AFTER_PUBLISH")
                    .is_ok_and(|v| v == "1"),
                ..RelaySettings::default()
            };
            let relay = Relay::new(pool.clone(), client.clone(), settings);
            tasks.push(tokio::spawn(
                relay.run(orchestrator.outbox_ready(), shutdown.clone()),
            ));
        }
        if roles.planner {
            let templates =
                Templates::load(&cfg.templates_dir, &plan_limits).with_context(|| {
                    format!("loading templates from {}", cfg.templates_dir.display())
                })?;
            info!(templates = templates.len(), "Template planner ready.");
            let spec = ConsumerSpec::new(
                CMD_STREAM,
                planner_worker::CONSUMER,
                subjects::CMD_PLAN_GENERATE,
            )
            .with_concurrency(4);
            let handler = planner_worker::Planner {
                pool: pool.clone(),
                templates,
                limits: plan_limits.clone(),
                llm: LlmPlanner::from_settings(&cfg.llm)?,
            };
            match &handler.llm {
                Some(llm) => info!(model = %cfg.llm.model, prompt = %llm.prompt().version,
                                   prompt.hash = %llm.prompt().hash, "LLM planner ready."),
                None => info!("No LLM configured (OPENAI_BASE_URL): templates only."),
            }
            tasks.push(spawn_consumer(&js, &spec, &pool, handler, &shutdown).await?);
        }
        if roles.gatekeeper {
            let policy = match &cfg.policy_file {
                Some(path) => Policy::load(path)?,
                None => Policy::default(),
            };
            let spec = ConsumerSpec::new(CMD_STREAM, gatekeeper::CONSUMER, subjects::CMD_GATE_EVAL)
                .with_concurrency(4);
            let handler = Gatekeeper {
                pool: pool.clone(),
                policy,
            };
            tasks.push(spawn_consumer(&js, &spec, &pool, handler, &shutdown).await?);
        }
        if roles.analyst {
            let spec = ConsumerSpec::new(CMD_STREAM, analyst::CONSUMER, subjects::CMD_ANALYSIS_RUN)
                .with_concurrency(4);
            let handler = analyst::Analyst { pool: pool.clone() };
            tasks.push(spawn_consumer(&js, &spec, &pool, handler, &shutdown).await?);
        }
        if roles.executor {
            // Both exec subjects on one consumer: a rollback and a run of the
            // same target share the executor's target locks.
            let spec =
                ConsumerSpec::new(CMD_STREAM, executor::CONSUMER, "cmd.exec.>").with_concurrency(8);
            let handler = executor::Executor::new(pool.clone(), &cfg.exec, &cfg.script_allowlist);
            tasks.push(spawn_consumer(&js, &spec, &pool, handler, &shutdown).await?);
        }
        if roles.verifier {
            let spec = ConsumerSpec::new(CMD_STREAM, verifier::CONSUMER, subjects::CMD_VERIFY_RUN)
                .with_concurrency(8);
            let handler = verifier::Verifier::new(pool.clone(), cfg.verify.clone())
                .context("configuring the verifier")?;
            tasks.push(spawn_consumer(&js, &spec, &pool, handler, &shutdown).await?);
        }
        if roles.orchestrator {
            // One at a time: facts are applied in the order the relay
            // published them (per-case order, docs/events.md).
            let spec = ConsumerSpec::new(EVT_STREAM, consumer_mod::CONSUMER, "evt.>");
            let handler = consumer_mod::FactConsumer {
                orchestrator: orchestrator.clone(),
            };
            tasks.push(spawn_consumer(&js, &spec, &pool, handler, &shutdown).await?);
        }
    }
    info!(roles = ?cfg.roles, "opsloop started.");

    if let Some(tokens) = tokens {
        let state = AppState {
            orchestrator,
            tokens: Arc::new(tokens),
            nats,
            plan_limits: Arc::new(plan_limits),
        };
        let listener = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .with_context(|| format!("binding {}", cfg.listen))?;
        info!(listen = %cfg.listen, "HTTP API serving.");
        axum::serve(listener, api::app(state))
            .with_graceful_shutdown(shutdown_signal())
            .await?;
    } else {
        shutdown_signal().await;
    }
    shutdown.cancel();
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
    }
    info!("opsloop stopped.");
    Ok(())
}

/// Creates (or updates) the durable consumer and runs `handler` on it until
/// shutdown.
async fn spawn_consumer<H: consumer::Handler + 'static>(
    js: &async_nats::jetstream::Context,
    spec: &ConsumerSpec,
    pool: &sqlx::PgPool,
    handler: H,
    shutdown: &CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let consumer = consumer::durable(js, spec)
        .await
        .map_err(|e| anyhow::anyhow!("creating the {} consumer: {e}", spec.durable))?;
    Ok(tokio::spawn(consumer::run(
        consumer,
        pool.clone(),
        handler,
        spec.concurrency,
        shutdown.clone(),
    )))
}

/// Streams are created at start-up; while NATS is unreachable we wait for it
/// rather than fail, since the outbox keeps every message meanwhile.
async fn ensure_streams(
    js: &async_nats::jetstream::Context,
    settings: &StreamSettings,
) -> anyhow::Result<()> {
    let mut delay = Duration::from_millis(200);
    loop {
        match streams::ensure(js, settings).await {
            Ok(()) => return Ok(()),
            Err(e @ streams::StreamSetupError::WindowTooShort(_)) => return Err(e.into()),
            Err(e) => {
                warn!(error = %e, "Cannot set up JetStream streams yet; retrying.");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

#[derive(Default)]
struct Roles {
    api: bool,
    relay: bool,
    orchestrator: bool,
    gatekeeper: bool,
    planner: bool,
    analyst: bool,
    executor: bool,
    verifier: bool,
}

const ROLE_NAMES: &str =
    "api, relay, orchestrator, gatekeeper, planner, analyst, executor, verifier";

impl Roles {
    fn parse(names: &[String]) -> anyhow::Result<Roles> {
        let mut roles = Roles::default();
        for name in names {
            let all = name.trim() == "all";
            let flag = match name.trim() {
                "all" => None,
                "api" => Some(&mut roles.api),
                "relay" => Some(&mut roles.relay),
                "orchestrator" => Some(&mut roles.orchestrator),
                "gatekeeper" => Some(&mut roles.gatekeeper),
                "planner" => Some(&mut roles.planner),
                "analyst" => Some(&mut roles.analyst),
                "executor" => Some(&mut roles.executor),
                "verifier" => Some(&mut roles.verifier),
                other => anyhow::bail!("unknown role {other:?}: expected {ROLE_NAMES} or all"),
            };
            match flag {
                Some(f) => *f = true,
                None if all => {
                    roles = Roles {
                        api: true,
                        relay: true,
                        orchestrator: true,
                        gatekeeper: true,
                        planner: true,
                        analyst: true,
                        executor: true,
                        verifier: true,
                    }
                }
                None => {}
            }
        }
        Ok(roles)
    }

    fn any_worker(&self) -> bool {
        self.relay
            || self.orchestrator
            || self.gatekeeper
            || self.planner
            || self.analyst
            || self.executor
            || self.verifier
    }
}

async fn tail(nats_url: &str, all: bool, case: Option<uuid::Uuid>) -> anyhow::Result<()> {
    use futures::StreamExt;
    let mut messages = opsloop::pubsub::feed::follow(nats_url, EVT_CASE_TRANSITION, all).await?;
    eprintln!("tail: following {EVT_CASE_TRANSITION} (Ctrl-C to stop)");
    while let Some(msg) = messages.next().await {
        let msg = msg.map_err(|e| anyhow::anyhow!("receiving: {e}"))?;
        let message = match Message::<Fact>::from_bytes(&msg.payload) {
            Ok(message) => message,
            Err(e) => {
                eprintln!("tail: skipping a message: {e}");
                continue;
            }
        };
        let Fact::CaseTransition(t) = &message.body else {
            continue;
        };
        if case.is_some_and(|c| c != message.case_id.uuid()) {
            continue;
        }
        println!(
            "{} case={} v{} {} -> {} event={} actor={}{}",
            message
                .occurred_at
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            message.case_id,
            t.version,
            t.from,
            t.to,
            t.event,
            t.actor,
            t.reason
                .as_deref()
                .map(|r| format!(" reason={r:?}"))
                .unwrap_or_default(),
        );
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing SIGTERM handler");
    tokio::select! {
        _ = ctrl_c => {},
        _ = term.recv() => {},
    }
}
