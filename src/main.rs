//! The `opsloop` binary: serve, migrate, token management, demo.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tracing::{info, warn};

use opsloop::analyst;
use opsloop::api::{self, AppState};
use opsloop::auth::{self, TokenStore};
use opsloop::config::{self, ServeConfig};
use opsloop::contract::Message;
use opsloop::contract::fact::{EVT_CASE_TRANSITION, Fact};
use opsloop::executor;
use opsloop::gatekeeper::targets::Targets;
use opsloop::gatekeeper::{Gatekeeper, policy::Policy};
use opsloop::orchestrator::Orchestrator;
use opsloop::orchestrator::consumer as consumer_mod;
use opsloop::planner::contract::PlanLimits;
use opsloop::planner::llm::LlmPlanner;
use opsloop::planner::templates::Templates;
use opsloop::planner::worker as planner_worker;
use opsloop::pubsub::consumer;
use opsloop::pubsub::relay::{NoHooks, Relay, RelaySettings, StallAfterPublish};
use opsloop::pubsub::streams::{self, StreamSettings};
use opsloop::roles::{self, Role, Roles};
use opsloop::verifier;
use opsloop::worker::Runner;
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
    /// Re-run recorded cases through today's FSM and a gate policy, in a
    /// read-only transaction, and report where decisions would differ.
    /// Writes nothing, publishes nothing.
    Replay {
        #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
        database_url: String,
        /// Only cases created at or after this instant (RFC 3339).
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        tenant: Option<String>,
        /// The gate policy to judge by (TOML); the shipped defaults if
        /// absent.
        #[arg(long)]
        policy: Option<PathBuf>,
        /// The targets file to judge by.
        #[arg(long, default_value = "config/targets.toml")]
        targets: PathBuf,
        /// Print the report as JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Scripted operational problems against a stack of their own.
    Scenario {
        #[command(subcommand)]
        command: ScenarioCommand,
    },
    /// The librarian's documents.
    Kb {
        #[command(subcommand)]
        command: KbCommand,
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
enum ScenarioCommand {
    /// Run scenario files (each starts this binary's `serve` against
    /// DATABASE_URL and NATS_URL) and report the time to detect, plan,
    /// approve, mitigate and verify; fails if any scenario does.
    Run {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Also write the report (Markdown) to this file.
        #[arg(long)]
        report: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum KbCommand {
    /// Load every .md and .txt file of a folder (its README aside) through
    /// the API (`POST /kb/docs`): unchanged files are not written again.
    Import {
        dir: PathBuf,
        /// A tenant of the token's, or `global` (admin tokens only).
        #[arg(long)]
        tenant: String,
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        url: String,
        #[arg(long, env = "OPSLOOP_TOKEN", hide_env_values = true)]
        token: String,
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
        roles: Vec<auth::Role>,
        /// Comma-separated tenants the identity acts for, or `*` for every
        /// tenant (platform admins).
        #[arg(long, value_delimiter = ',', required = true)]
        tenants: Vec<String>,
        /// For a `service` identity: the worker role it acts as (analyst,
        /// planner, gatekeeper, executor, verifier, orchestrator); the
        /// worker facts it may send. One identity per role.
        #[arg(long)]
        acts_as: Option<String>,
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
                    tenants,
                    acts_as,
                    file,
                },
        } => {
            let tenants = auth::TenantScope::parse(&tenants)
                .map_err(|e| anyhow::anyhow!("--tenants: {e}"))?;
            if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
            }
            let token = auth::create_token(&file, &identity, &roles, &tenants, acts_as.as_deref())?;
            println!("{token}");
            Ok(())
        }
        Command::Tail {
            nats_url,
            all,
            case,
        } => tail(&nats_url, all, case).await,
        Command::Replay {
            database_url,
            since,
            tenant,
            policy,
            targets,
            json,
        } => {
            let since = since
                .map(|s| {
                    chrono::DateTime::parse_from_rfc3339(&s)
                        .map(|t| t.with_timezone(&chrono::Utc))
                        .map_err(|e| anyhow::anyhow!("--since {s:?}: {e} (RFC 3339 expected)"))
                })
                .transpose()?;
            let policy = match &policy {
                Some(path) => Policy::load(path)?,
                None => Policy::default(),
            }
            .with_targets(Targets::load(&targets)?)?;
            let pool = config::connect_db(&database_url, 2).await?;
            let report =
                opsloop::replay::run(&pool, &opsloop::replay::Scope { since, tenant }, &policy)
                    .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.text());
            }
            Ok(())
        }
        Command::Scenario {
            command: ScenarioCommand::Run { files, report },
        } => {
            let started = std::time::Instant::now();
            let outcomes = opsloop::scenario::run_all(&files).await?;
            let shown: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
            let mut text = opsloop::scenario::report(
                &outcomes,
                &format!("opsloop scenario run {}", shown.join(" ")),
            );
            text.push_str(&format!(
                "\nThe whole set took {:.0} s.\n",
                started.elapsed().as_secs_f64()
            ));
            println!("\n{text}");
            if let Some(path) = report {
                let head = "# Scenario report (issue #20)\n\n\
                    Each scenario ran on a stack of its own (`opsloop serve`, every role, \
                    against the local PostgreSQL and NATS), started by the command; the \
                    analyst's detector opened every case from ingested metrics. Times in \
                    milliseconds: detect (metrics ingested → case opened), plan (opened → \
                    plan_ready), approve (plan_ready → gate_approved, with the dry run and \
                    the gate), mitigate (approved → exec_done), verify (exec_done → \
                    verdict). `-`: the stage was not reached. The verifier judged at once \
                    (`OPSLOOP_VERIFY_DELAY_S=0`) and the detector swept every 0.5 s; in \
                    production verification waits 60 s by default and the detector sweeps \
                    every 5 s.\n\n";
                std::fs::write(&path, format!("{head}{text}"))
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            let failed = outcomes.iter().filter(|o| !o.passed).count();
            anyhow::ensure!(failed == 0, "{failed} scenario(s) failed");
            Ok(())
        }
        Command::Kb {
            command:
                KbCommand::Import {
                    dir,
                    tenant,
                    url,
                    token,
                },
        } => opsloop::librarian::import::import(&url, &token, &dir, &tenant).await,
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

async fn serve(mut cfg: ServeConfig) -> anyhow::Result<()> {
    cfg.intake = cfg.intake.clone().load()?;
    let intake = Arc::new(cfg.intake.clone());
    opsloop::telemetry::init("info,sqlx=warn");
    // Stops intake first: HTTP, pulls, the detector's sweeps. The relay
    // stops last, once the workers' final commits are in the outbox.
    let shutdown = CancellationToken::new();
    // From the start, so that a SIGTERM during start-up (streams or
    // consumers still being set up on a busy cluster) stops cleanly too.
    // One signal starts the shutdown; a second one ends the process at
    // once (what it held is redelivered after its ack deadline).
    let signalled = Arc::new(std::sync::OnceLock::new());
    {
        // Registered here, not in the task: a SIGTERM before the task first
        // runs would otherwise still kill the process the default way.
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing the SIGTERM handler")?;
        let (stop, signalled) = (shutdown.clone(), signalled.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            let _ = signalled.set(tokio::time::Instant::now());
            stop.cancel();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            warn!("A second signal: stopping at once.");
            std::process::exit(130);
        });
    }
    let roles = Roles::parse(&cfg.roles).map_err(anyhow::Error::msg)?;
    // Read the tokens before anything starts, so a bad file fails fast.
    let tokens = if roles.has(Role::Api) {
        Some(TokenStore::load(&cfg.tokens_file)?)
    } else {
        None
    };
    let pool = config::connect_db(&cfg.database_url, cfg.db_pool)
        .await
        .context("connecting to PostgreSQL")?;
    opsloop::MIGRATOR.run(&pool).await.context("migrating")?;
    let nats = match &cfg.nats_url {
        Some(url) => {
            let target = opsloop::pubsub::target(url).context("NATS_URL")?;
            Some(
                target
                    .options
                    .retry_on_initial_connect()
                    .connect(target.servers)
                    .await
                    .context("connecting to NATS")?,
            )
        }
        None if roles.any_worker() => {
            anyhow::bail!("only the api role runs without NATS_URL")
        }
        None => {
            warn!("NATS_URL is not set: messages stay in the outbox.");
            None
        }
    };
    // The gatekeeper decides with the policy; the orchestrator (a guard on
    // `gate_approved`) and the executor (before each step) enforce its
    // change freezes again. All read the same file.
    let policy = match &cfg.policy_file {
        Some(path) => Policy::load(path)?,
        None => Policy::default(),
    };
    let targets = if cfg.targets_file.exists() {
        Targets::load(&cfg.targets_file)?
    } else {
        warn!(path = %cfg.targets_file.display(),
              "No targets file: every target counts as prod (two approvers, no automatic approval).");
        Targets::default()
    };
    let policy = Arc::new(policy.with_targets(targets)?);
    let orchestrator = Orchestrator::new(pool.clone()).with_policy(policy.clone());
    let relay_stop = CancellationToken::new();
    let grace = Duration::from_secs(cfg.shutdown_grace_s);
    let mut relay_task = None;
    let plan_limits = PlanLimits {
        script_allowlist: cfg.script_allowlist.iter().cloned().collect(),
        ..PlanLimits::default()
    };
    let mut tasks = Vec::new();
    // Made once, for the roles that embed: a process without them never
    // touches the model or the embeddings server.
    let librarian = if roles.any_embeds() {
        opsloop::librarian::Librarian::from_settings(&cfg.embeddings)
            .await
            .context("configuring the librarian")?
            .map(Arc::new)
    } else {
        None
    };

    if let Some(client) = nats.clone() {
        let js = async_nats::jetstream::new(client.clone());
        if !ensure_streams(&js, &cfg.streams, &shutdown).await? {
            info!("Stopped before the streams were set up.");
            return Ok(());
        }
        let consumers = Consumers {
            js: &js,
            pool: &pool,
            concurrency: &cfg.role_concurrency,
            shutdown: &shutdown,
            grace,
        };
        if roles.has(Role::Relay) {
            let settings = RelaySettings {
                batch: cfg.relay_batch,
                loops: cfg.relay_loops,
                linger: Duration::from_millis(cfg.relay_linger_ms),
                idempotency_retention: Duration::from_secs(cfg.idempotency_retention_h * 3600),
                hooks: if std::env::var("OPSLOOP_FAULT_RELAY_STALL_AFTER_PUBLISH")
                    .is_ok_and(|v| v == "1")
                {
                    Arc::new(StallAfterPublish)
                } else {
                    Arc::new(NoHooks)
                },
                flush_on_stop: grace,
                ack_timeout: Duration::from_millis(cfg.relay_ack_timeout_ms),
                vacuum_after_rows: cfg.relay_vacuum_after_rows,
                ..RelaySettings::default()
            };
            let relay = Relay::new(pool.clone(), client.clone(), settings);
            relay_task = Some(tokio::spawn(
                relay.run(orchestrator.outbox_ready(), relay_stop.clone()),
            ));
        }
        let wake = orchestrator.outbox_ready();
        if roles.has(Role::Planner) {
            let templates =
                Templates::load(&cfg.templates_dir, &plan_limits).with_context(|| {
                    format!("loading templates from {}", cfg.templates_dir.display())
                })?;
            info!(templates = templates.len(), "Template planner ready.");
            let planner = planner_worker::Planner {
                pool: pool.clone(),
                templates,
                limits: plan_limits.clone(),
                llm: LlmPlanner::from_settings(&cfg.llm)?,
                memory: planner_worker::Memory {
                    librarian: librarian.clone(),
                    passages: usize::from(cfg.plan_passages),
                    skip_failed: Duration::from_secs(u64::from(cfg.plan_skip_failed_h) * 3600),
                },
            };
            match &planner.llm {
                Some(llm) => info!(model = %cfg.llm.model, prompt = %llm.prompt().version,
                                   prompt.hash = %llm.prompt().hash, "LLM planner ready."),
                None => info!("No LLM configured (OPENAI_BASE_URL): templates only."),
            }
            let handler = Runner::new(planner, pool.clone(), wake.clone());
            tasks.push(consumers.spawn(Role::Planner, handler).await?);
        }
        if roles.has(Role::Gatekeeper) {
            let handler = Runner::new(
                Gatekeeper {
                    policy: (*policy).clone(),
                },
                pool.clone(),
                wake.clone(),
            );
            tasks.push(consumers.spawn(Role::Gatekeeper, handler).await?);
        }
        if roles.has(Role::Analyst) {
            let handler = Runner::new(analyst::Analyst, pool.clone(), wake.clone());
            tasks.push(consumers.spawn(Role::Analyst, handler).await?);
            let sweeper = analyst::sweep::Sweeper {
                pool: pool.clone(),
                orchestrator: orchestrator.clone(),
                intake: intake.clone(),
                settings: cfg.detect.clone(),
            };
            info!(
                baseline_rules = intake.signals.baseline.len(),
                burn_rate_rules = intake.signals.burn_rate.len(),
                "Detector sweeping metric_1m."
            );
            tasks.push(tokio::spawn(sweeper.run(shutdown.clone())));
        }
        if roles.has(Role::Executor) {
            let mut handler = executor::Executor::new(
                pool.clone(),
                &cfg.exec,
                &cfg.script_allowlist,
                wake.clone(),
            );
            handler.set_policy(policy.clone());
            tasks.push(consumers.spawn(Role::Executor, handler).await?);
        }
        if roles.has(Role::Verifier) {
            let verifier = verifier::Verifier::new(pool.clone(), cfg.verify.clone())
                .context("configuring the verifier")?;
            let handler = Runner::new(verifier, pool.clone(), wake.clone());
            tasks.push(consumers.spawn(Role::Verifier, handler).await?);
        }
        if roles.has(Role::Notifier) {
            let file = if cfg.chatops_file.exists() {
                opsloop::chatops::ChatOpsFile::load(&cfg.chatops_file)
                    .context("reading the ChatOps file")?
            } else {
                warn!(path = %cfg.chatops_file.display(),
                      "No ChatOps file: the notifier tells no channel.");
                opsloop::chatops::ChatOpsFile::default()
            };
            let handler = opsloop::chatops::notifier::Notifier::new(pool.clone(), file);
            tasks.push(consumers.spawn(Role::Notifier, handler).await?);
        }
        if roles.has(Role::Librarian) {
            match &librarian {
                Some(librarian) => {
                    let handler = opsloop::librarian::worker::PastCaseWriter {
                        pool: pool.clone(),
                        librarian: librarian.clone(),
                    };
                    tasks.push(consumers.spawn(Role::Librarian, handler).await?);
                }
                // Named on its own it is a configuration error; as part
                // of `all` the other roles still run.
                None if cfg.roles.iter().any(|r| r.trim() == "librarian") => anyhow::bail!(
                    "the librarian role needs OPSLOOP_EMBEDDINGS_MODEL_DIR or OPSLOOP_EMBEDDINGS_URL"
                ),
                None => warn!(
                    "No embeddings configured (OPSLOOP_EMBEDDINGS_MODEL_DIR or OPSLOOP_EMBEDDINGS_URL): \
                     the librarian role does not run and ended cases are not remembered."
                ),
            }
        }
        if roles.has(Role::Orchestrator) {
            let handler = consumer_mod::FactConsumer {
                orchestrator: orchestrator.clone(),
            };
            tasks.push(consumers.spawn(Role::Orchestrator, handler).await?);
        }
    }
    info!(roles = ?cfg.roles, "opsloop started.");

    if let Some(tokens) = tokens {
        let chatops = match &cfg.slack_signing_secret_file {
            Some(secret) => Some(Arc::new(
                opsloop::chatops::ChatOps::load(&cfg.chatops_file, secret)
                    .context("configuring ChatOps")?,
            )),
            None => None,
        };
        let state = AppState {
            orchestrator,
            tokens: Arc::new(tokens),
            nats,
            plan_limits: Arc::new(plan_limits),
            intake,
            chatops,
            cookie_secure: cfg.cookie_secure,
            librarian,
        };
        let listener = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .with_context(|| format!("binding {}", cfg.listen))?;
        info!(listen = %cfg.listen, "HTTP API serving.");
        let settings = api::ServeSettings {
            header_timeout: Duration::from_secs(cfg.http_header_timeout_s),
            max_connections: cfg.http_max_connections,
            drain: grace,
        };
        api::serve(
            listener,
            api::app(state),
            settings,
            shutdown.clone().cancelled_owned(),
        )
        .await;
    } else {
        shutdown.cancelled().await;
    }
    info!(
        grace_s = grace.as_secs(),
        "Stopping: no new work is taken; work in hand may finish."
    );
    // Counted from the signal, as the consumers count their grace, not from
    // the end of the HTTP drain (an open console stream lasts all of it).
    let deadline = signalled
        .get()
        .copied()
        .unwrap_or_else(tokio::time::Instant::now)
        + grace;
    // The consumers end within the grace period on their own (what is
    // unfinished then is handed back); the extra second covers the nak.
    for t in tasks {
        let _ = tokio::time::timeout_at(deadline + Duration::from_secs(1), t).await;
    }
    relay_stop.cancel();
    if let Some(relay) = relay_task {
        // It publishes what the workers committed, for at most the grace
        // period again; rows left wait in the outbox for the next relay.
        let _ = tokio::time::timeout(grace + Duration::from_secs(1), relay).await;
    }
    info!("opsloop stopped.");
    Ok(())
}

/// What every consumer of this process shares.
struct Consumers<'a> {
    js: &'a async_nats::jetstream::Context,
    pool: &'a sqlx::PgPool,
    concurrency: &'a roles::Concurrency,
    shutdown: &'a CancellationToken,
    grace: Duration,
}

impl Consumers<'_> {
    /// Creates (or updates) the durable consumer `role` reads and runs
    /// `handler` on it until shutdown.
    async fn spawn<H: consumer::Handler + 'static>(
        &self,
        role: Role,
        handler: H,
    ) -> anyhow::Result<tokio::task::JoinHandle<()>> {
        let spec = self
            .concurrency
            .consumer(role)
            .ok_or_else(|| anyhow::anyhow!("the {role} role reads no stream"))?;
        // Stopping while still starting (a slow cluster): take no more
        // work, and a consumer that could not be made is no error then.
        let stopped = || Ok(tokio::spawn(async {}));
        if self.shutdown.is_cancelled() {
            return stopped();
        }
        let created = tokio::select! {
            c = roles::spawn_consumer(self.js, &spec, self.pool, handler, self.shutdown, self.grace) => c,
            _ = self.shutdown.cancelled() => return stopped(),
        };
        match created {
            Ok(task) => Ok(task),
            Err(_) if self.shutdown.is_cancelled() => stopped(),
            Err(e) => Err(anyhow::anyhow!(
                "creating the {} consumer: {e}",
                spec.durable
            )),
        }
    }
}

/// Streams are created at start-up; while NATS is unreachable we wait for it
/// rather than fail, since the outbox keeps every message meanwhile.
/// `false` when a shutdown came first.
async fn ensure_streams(
    js: &async_nats::jetstream::Context,
    settings: &StreamSettings,
    shutdown: &CancellationToken,
) -> anyhow::Result<bool> {
    let mut delay = Duration::from_millis(200);
    loop {
        let ensured = tokio::select! {
            r = streams::ensure(js, settings) => r,
            _ = shutdown.cancelled() => return Ok(false),
        };
        match ensured {
            Ok(()) => return Ok(true),
            Err(e) if e.is_settings() => return Err(e.into()),
            Err(e) => {
                warn!(error = %e, "Cannot set up JetStream streams yet; retrying.");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.cancelled() => return Ok(false),
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
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

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Two flattened settings with a field of the same name would make
    /// every `opsloop` start panic; clap checks that here.
    #[test]
    fn the_command_line_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
