//! The `opsloop` binary: serve, migrate, token management, demo.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tracing::{info, warn};

use opsloop::api::{self, AppState};
use opsloop::auth::{self, Role, TokenStore};
use opsloop::config::{self, ServeConfig};
use opsloop::orchestrator::Orchestrator;

#[derive(Parser)]
#[command(name = "opsloop", version, about = "AI-OPS case orchestrator")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service (migrates the database first).
    Serve(ServeConfig),
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
    /// Drive a demo case through a running service and print its timeline.
    Demo {
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        url: String,
        #[arg(long, env = "OPSLOOP_DEMO_OPERATOR_TOKEN")]
        operator_token: String,
        #[arg(long, env = "OPSLOOP_DEMO_SERVICE_TOKEN")]
        service_token: String,
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
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(cfg) => serve(cfg).await,
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
        Command::Demo {
            url,
            operator_token,
            service_token,
        } => {
            opsloop::demo::run(
                &url,
                &opsloop::demo::DemoTokens {
                    operator: operator_token,
                    service: service_token,
                },
            )
            .await
        }
    }
}

async fn serve(cfg: ServeConfig) -> anyhow::Result<()> {
    opsloop::telemetry::init("info,sqlx=warn");
    let tokens = TokenStore::load(&cfg.tokens_file)?;
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
        None => {
            warn!("NATS_URL is not set: messages stay in the outbox.");
            None
        }
    };
    let state = AppState {
        orchestrator: Orchestrator::new(pool),
        tokens: Arc::new(tokens),
        nats,
    };
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("binding {}", cfg.listen))?;
    info!(listen = %cfg.listen, roles = ?cfg.roles, "opsloop serving.");
    axum::serve(listener, api::app(state))
        .with_graceful_shutdown(shutdown())
        .await?;
    info!("opsloop stopped.");
    Ok(())
}

async fn shutdown() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing SIGTERM handler");
    tokio::select! {
        _ = ctrl_c => {},
        _ = term.recv() => {},
    }
}
