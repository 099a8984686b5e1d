//! Service configuration from flags and environment variables.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

#[derive(Debug, Clone, clap::Args)]
pub struct ServeConfig {
    /// PostgreSQL (with pgvector) to use.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: String,
    /// NATS server with JetStream; without it `/readyz` reports `not_configured`.
    #[arg(long, env = "NATS_URL")]
    pub nats_url: Option<String>,
    /// Address the HTTP API listens on.
    #[arg(long, env = "OPSLOOP_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Seconds a client has to send a request's headers (slow clients are
    /// cut off).
    #[arg(long, env = "OPSLOOP_HTTP_HEADER_TIMEOUT_S", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=300))]
    pub http_header_timeout_s: u64,
    /// HTTP connections open at once; more are closed when accepted.
    #[arg(long, env = "OPSLOOP_HTTP_MAX_CONNECTIONS", default_value_t = 1024,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=100_000))]
    pub http_max_connections: usize,
    /// TOML file of bearer-token digests (see `opsloop token create`).
    #[arg(
        long,
        env = "OPSLOOP_TOKENS_FILE",
        default_value = "config/tokens.toml"
    )]
    pub tokens_file: PathBuf,
    /// Size of the PostgreSQL connection pool.
    #[arg(long, env = "OPSLOOP_DB_POOL", default_value_t = 16)]
    pub db_pool: u32,
    /// Folder of ChangePlan templates (`*.json`), checked at start-up.
    #[arg(long, env = "OPSLOOP_TEMPLATES_DIR", default_value = "templates")]
    pub templates_dir: PathBuf,
    /// Gate policy (TOML); the default policy of DESIGN §4 without it.
    #[arg(long, env = "OPSLOOP_POLICY_FILE")]
    pub policy_file: Option<PathBuf>,
    /// The operator's targets file (TOML): the environment of each
    /// namespace, gateway and script a plan may touch. Without it every
    /// target counts as `prod` (two approvers, no automatic approval).
    #[arg(
        long,
        env = "OPSLOOP_TARGETS_FILE",
        default_value = "config/targets.toml"
    )]
    pub targets_file: PathBuf,
    /// The Slack app's signing secret, in a file. Set: ChatOps is on (the
    /// `/chatops/slack/*` routes verify every request with it).
    #[arg(long, env = "OPSLOOP_SLACK_SIGNING_SECRET_FILE")]
    pub slack_signing_secret_file: Option<PathBuf>,
    /// The ChatOps file: chat users to opsloop identities (read when the
    /// signing secret is set), per-tenant webhooks (read by the notifier).
    #[arg(
        long,
        env = "OPSLOOP_CHATOPS_FILE",
        default_value = "config/chatops.example.toml"
    )]
    pub chatops_file: PathBuf,
    /// The console's session cookie is sent only over TLS (`Secure`): set
    /// it when the service sits behind HTTPS.
    #[arg(long, env = "OPSLOOP_COOKIE_SECURE", default_value_t = false)]
    pub cookie_secure: bool,
    #[command(flatten)]
    pub embeddings: crate::librarian::EmbeddingSettings,
    /// Runbook and past-case passages the LLM planner is given (0: none).
    #[arg(long, env = "OPSLOOP_PLAN_PASSAGES", default_value_t = 5,
          value_parser = clap::value_parser!(u16).range(0..=20))]
    pub plan_passages: u16,
    /// Hours during which the template planner skips a template whose plan
    /// failed verification on the same resource (0: never skips).
    #[arg(long, env = "OPSLOOP_PLAN_SKIP_FAILED_H", default_value_t = 24,
          value_parser = clap::value_parser!(u32).range(0..=8760))]
    pub plan_skip_failed_h: u32,
    /// Comma-separated roles: api, relay, orchestrator, gatekeeper, planner,
    /// analyst, executor, verifier, notifier, librarian, or all.
    #[arg(
        long,
        env = "OPSLOOP_ROLES",
        default_value = "all",
        value_delimiter = ','
    )]
    pub roles: Vec<String>,
    /// Messages one process handles at once per role, where the default
    /// does not suit (`planner=8,executor=16`; defaults: gatekeeper,
    /// planner, analyst and notifier 4, executor and verifier 8; the
    /// orchestrator and the librarian keep the feed's order at 1).
    #[arg(long, env = "OPSLOOP_ROLE_CONCURRENCY", default_value = "")]
    pub role_concurrency: crate::roles::Concurrency,
    /// Seconds a stopping process (SIGTERM, Ctrl-C) gives the requests and
    /// messages in hand to finish, and again its relay to publish what they
    /// committed: a process ends within about twice this. Keep it below
    /// half the kill timeout (Kubernetes: `terminationGracePeriodSeconds`,
    /// 30 by default).
    #[arg(long, env = "OPSLOOP_SHUTDOWN_GRACE_S", default_value_t = 12,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub shutdown_grace_s: u64,
    #[command(flatten)]
    pub streams: crate::pubsub::streams::StreamSettings,
    /// Outbox rows the relay claims per transaction.
    #[arg(long, env = "OPSLOOP_RELAY_BATCH", default_value_t = 1024,
          value_parser = clap::value_parser!(i64).range(1..=65_536))]
    pub relay_batch: i64,
    /// Relay batches in flight at once while a backlog lasts; each extra
    /// loop only wakes when the first finds a full batch.
    #[arg(long, env = "OPSLOOP_RELAY_LOOPS", default_value_t = 3,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=16))]
    pub relay_loops: usize,
    /// After a commit wakes the relay, it waits this long (ms) for more
    /// commits to take in the same batch; 0 publishes at once.
    #[arg(long, env = "OPSLOOP_RELAY_LINGER_MS", default_value_t = 1,
          value_parser = clap::value_parser!(u64).range(0..=1000))]
    pub relay_linger_ms: u64,
    /// Milliseconds a relayed publish waits for JetStream's ack before
    /// the relay gives it up and sends it again (same `Nats-Msg-Id`).
    #[arg(long, env = "OPSLOOP_RELAY_ACK_TIMEOUT_MS", default_value_t = 2000,
          value_parser = clap::value_parser!(u64).range(100..=60_000))]
    pub relay_ack_timeout_ms: u64,
    /// Deleted outbox rows after which the relay runs `VACUUM outbox`
    /// itself (0: leave it to autovacuum).
    #[arg(
        long,
        env = "OPSLOOP_RELAY_VACUUM_AFTER_ROWS",
        default_value_t = 20_000
    )]
    pub relay_vacuum_after_rows: u64,
    /// Hours an `Idempotency-Key` and its answer are kept (DESIGN §3:
    /// 7 days); after that the same key is a new request.
    #[arg(long, env = "OPSLOOP_IDEMPOTENCY_RETENTION_H", default_value_t = 168,
          value_parser = clap::value_parser!(u64).range(1..=8760))]
    pub idempotency_retention_h: u64,
    /// Script names `script.exec` steps may use (comma-separated file names
    /// in the scripts folder). The default is the shipped demo script.
    #[arg(
        long,
        env = "OPSLOOP_SCRIPT_ALLOWLIST",
        value_delimiter = ',',
        default_value = "restart-service.sh"
    )]
    pub script_allowlist: Vec<String>,
    #[command(flatten)]
    pub llm: crate::planner::llm::LlmSettings,
    #[command(flatten)]
    pub exec: crate::executor::ExecSettings,
    #[command(flatten)]
    pub verify: crate::verifier::VerifySettings,
    #[command(flatten)]
    pub intake: crate::analyst::intake::IntakeSettings,
    #[command(flatten)]
    pub detect: crate::analyst::sweep::DetectSettings,
}

pub async fn connect_db(url: &str, max: u32) -> Result<PgPool, sqlx::Error> {
    PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(Duration::from_secs(5))
        // No ping before each use: it is a round trip on every
        // transaction (one in nine of a transition's). A connection that
        // died while idle fails its next statement instead; sqlx drops it,
        // and the caller's retry is safe (Idempotency-Key, redelivery).
        .test_before_acquire(false)
        .connect(url)
        .await
}
