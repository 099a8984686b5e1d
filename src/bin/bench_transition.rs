//! bench_transition: transitions/s and latency at 1, 8 and 32 concurrent
//! clients, each walking its own case, measured
//!   (a) through `Orchestrator::transition`,
//!   (b) through HTTP (`PATCH /case/{id}/transition`, the real router on a
//!       loopback socket), and
//!   (c) the raw-SQL baseline: the same statements issued directly with sqlx,
//!       no FSM, no facts, no HTTP,
//!   (d) the database's own ceiling: an equivalent transition transaction
//!       (lock, update, timeline row, two outbox rows, an idempotency row)
//!       run by `pgbench -M prepared`, PostgreSQL's C client (issue #15),
//! all in the same run against the same PostgreSQL, interleaved. Each path
//! runs in a fresh database of its own (`opsloop_bench_a`, `_b`, `_c` and
//! `opsloop_pgbench`), each created with 100 000 cases, so no path meets an
//! earlier run's bloat or another path's; and each cell is followed by a
//! `VACUUM` of its path's database, outside the measured time, so that no
//! path's cell pays for the vacuum of another path's writes (`--no-vacuum`:
//! leave it to autovacuum, which then runs in whichever cell comes next).
//! Prints the ratios to (c) and to (d), and the CPU per transaction of the
//! client and of the rest of the machine (the server).
//!
//! Usage: DATABASE_URL=... bench_transition [--seconds 3] [--rounds 3] [--clients 1,8,32]
//!        [--paths abcd] [--table-only] [--no-vacuum] [--floor | --floor-only]
//!        [--ledger | --ledger-only]   (where (a)'s and (b)'s CPU goes, at min(clients, 8))
//!        [--pgbench PATH]   (default: `pgbench` of the PostgreSQL in .opsloop/, else PATH)

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::cpu::CpuMark;
use opsloop::api::AppState;
use opsloop::auth::{Identity, Role, TenantScope, TokenStore};
use opsloop::orchestrator::Orchestrator;
use opsloop::roles::Role as WorkerRole;
use opsloop::workflow::EventKind;
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

mod common;

use common::{
    arg, database_copy, drop_database, event_at, flag, fresh_database, ms, new_case,
    orchestrator_step, quantile,
};

/// One identity per sender, as DESIGN §10 requires: a person for
/// `start_analysis`/`resume`, the analyst and the planner for their facts.
const TOKENS: [(&str, Option<WorkerRole>); 3] = [
    ("bench-operator", None),
    ("bench-analyst", Some(WorkerRole::Analyst)),
    ("bench-planner", Some(WorkerRole::Planner)),
];

fn token_for(event: EventKind) -> &'static str {
    match event {
        EventKind::AnalysisDone => TOKENS[1].0,
        EventKind::PlanFailed => TOKENS[2].0,
        _ => TOKENS[0].0,
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Raw,
    Orchestrator,
    Http,
    PgBench,
}

impl Mode {
    /// The letter `--paths` selects it by.
    fn letter(self) -> char {
        match self {
            Mode::Orchestrator => 'a',
            Mode::Http => 'b',
            Mode::Raw => 'c',
            Mode::PgBench => 'd',
        }
    }

    fn name(self) -> &'static str {
        match self {
            Mode::Raw => "(c) raw SQL",
            Mode::Orchestrator => "(a) orchestrator",
            Mode::Http => "(b) HTTP",
            Mode::PgBench => "(d) pgbench",
        }
    }
}

struct Cell {
    rate: f64,
    p50: Duration,
    p99: Duration,
    /// CPU per transaction (ms): the client's (this process, or pgbench),
    /// and the rest of the machine's, which is mostly PostgreSQL's.
    client_cpu_ms: f64,
    server_cpu_ms: f64,
    /// Of the server's share, PostgreSQL's (its processes, with the
    /// backends and workers it reaped); the rest is mostly the kernel's.
    postgres_cpu_ms: f64,
    /// WAL written per transaction (server-wide; the paths run one at a
    /// time) and growth of the path's database per transaction, in bytes.
    wal_bytes: f64,
    stored_bytes: f64,
}

impl Cell {
    /// A cell from its latencies (sorted here), its rate, the CPU the
    /// machine spent and the client's part of it, in seconds; storage is
    /// filled in by the paths that measure it.
    fn new(mut all: Vec<Duration>, rate: f64, spent: &CpuMark, client: f64) -> Cell {
        all.sort_unstable();
        let n = all.len().max(1) as f64;
        Cell {
            rate,
            p50: quantile(&all, 0.50),
            p99: quantile(&all, 0.99),
            client_cpu_ms: 1000.0 * client / n,
            server_cpu_ms: 1000.0 * (spent.machine - client).max(0.0) / n,
            postgres_cpu_ms: 1000.0 * spent.postgres / n,
            wal_bytes: 0.0,
            stored_bytes: 0.0,
        }
    }

    /// The median of `cells` by rate: the round a row reports.
    fn median(mut cells: Vec<Cell>) -> Cell {
        cells.sort_by(|a, b| a.rate.total_cmp(&b.rate));
        cells.swap_remove(cells.len() / 2)
    }
}

/// The WAL position and the size of `database`, to measure a cell by.
async fn storage_mark(pool: &PgPool, database: &str) -> anyhow::Result<(String, i64)> {
    Ok(
        sqlx::query_as("SELECT pg_current_wal_lsn()::text, pg_database_size($1)")
            .bind(database)
            .fetch_one(pool)
            .await?,
    )
}

/// (WAL bytes, database bytes) since `mark`, per transaction.
async fn storage_since(
    pool: &PgPool,
    database: &str,
    mark: &(String, i64),
    transactions: f64,
) -> anyhow::Result<(f64, f64)> {
    let (wal, size): (f64, i64) = sqlx::query_as(
        "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $2::pg_lsn)::float8, pg_database_size($1)",
    )
    .bind(database)
    .bind(&mark.0)
    .fetch_one(pool)
    .await?;
    let n = transactions.max(1.0);
    Ok((wal / n, (size - mark.1) as f64 / n))
}

/// The transaction of issue #15, for pgbench: the same work as a
/// transition (lock the case row, update status and version, a timeline
/// row, two outbox rows, an idempotency row) on tables with one index each.
const PGBENCH_SCRIPT: &str = r#"\set cid random(1, 100000)
BEGIN;
SELECT status AS st, version AS ver FROM ops_case WHERE id = :cid FOR UPDATE \gset
UPDATE ops_case SET status = CASE :st::text WHEN 'open' THEN 'in_progress' WHEN 'in_progress' THEN 'resolved' ELSE 'open' END, version = version + 1, updated_at = now() WHERE id = :cid AND version = :ver;
INSERT INTO case_timeline (case_id, from_status, to_status, version, meta) VALUES (:cid, :st, 'next', :ver::bigint + 1, '{"actor":"bench","reason":"pgbench transition","source":"api","request_id":"0f8fad5b-d9cb-469f-a165-70867728950e"}');
INSERT INTO outbox (topic, key, payload) VALUES ('case.transitioned', :cid::text, jsonb_build_object('case_id', :cid::bigint, 'from', :st::text, 'version', :ver::bigint + 1, 'pad', repeat('x', 120)));
INSERT INTO outbox (topic, key, payload) VALUES ('case.notify', :cid::text, jsonb_build_object('case_id', :cid::bigint, 'version', :ver::bigint + 1));
INSERT INTO idempotency (key, response) VALUES (gen_random_uuid()::text, jsonb_build_object('case_id', :cid::bigint, 'version', :ver::bigint + 1, 'status', 'ok'));
END;
"#;

const PGBENCH_SCHEMA: &str = "
CREATE TABLE ops_case (id bigint PRIMARY KEY, status text NOT NULL, version bigint NOT NULL DEFAULT 1,
                       updated_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE case_timeline (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, case_id bigint NOT NULL,
                            from_status text, to_status text, version bigint, meta jsonb,
                            at timestamptz NOT NULL DEFAULT now());
CREATE TABLE outbox (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, topic text NOT NULL,
                     key text NOT NULL, payload jsonb NOT NULL, created_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE idempotency (key text PRIMARY KEY, response jsonb NOT NULL,
                          created_at timestamptz NOT NULL DEFAULT now());
INSERT INTO ops_case (id, status) SELECT g, 'open' FROM generate_series(1, 100000) g;
";

/// A product database: migrated, with 100 000 cases and their `created`
/// timeline entries.
async fn product_database(name: &'static str, max_connections: u32) -> anyhow::Result<PgPool> {
    let url = fresh_database(name).await?;
    // The service's own pool settings: the path measured is the product's.
    let pool = opsloop::config::connect_db(&url, max_connections).await?;
    opsloop::MIGRATOR.run(&pool).await?;
    sqlx::query(
        "INSERT INTO ops_case (id, tenant, title, severity, correlation_id, created_by) \
         SELECT gen_random_uuid(), 'bench', 'filler case', 'low', gen_random_uuid(), 'bench' \
         FROM generate_series(1, 100000)",
    )
    .execute(&pool)
    .await?;
    sqlx::query(
        "INSERT INTO case_timeline (id, case_id, kind, to_status, version, actor, correlation_id) \
         SELECT gen_random_uuid(), id, 'created', 'NEW', 1, 'bench', correlation_id FROM ops_case",
    )
    .execute(&pool)
    .await?;
    sqlx::query("VACUUM ANALYZE").execute(&pool).await?;
    Ok(pool)
}

/// (d)'s database and pgbench, or why (d) is skipped.
struct PgBench {
    bin: std::path::PathBuf,
    url: reqwest::Url,
    dir: std::path::PathBuf,
    /// The script's file in `dir`.
    script: &'static str,
    /// One connection to its database, for vacuums and table sizes.
    pool: PgPool,
}

impl PgBench {
    /// The same database and folder, running `script` (a file in `dir`).
    fn running(&self, script: &'static str) -> PgBench {
        PgBench {
            bin: self.bin.clone(),
            url: self.url.clone(),
            dir: self.dir.clone(),
            script,
            pool: self.pool.clone(),
        }
    }
}

async fn pgbench_setup() -> anyhow::Result<Result<PgBench, String>> {
    let bin = match arg("--pgbench") {
        Some(p) => std::path::PathBuf::from(p),
        None => {
            let local = std::path::Path::new(".opsloop/pg/pgserver/pginstall/bin/pgbench");
            if local.exists() {
                // pgbench runs in its own folder: the path must not be relative.
                local.canonicalize()?
            } else {
                std::path::PathBuf::from("pgbench")
            }
        }
    };
    if std::process::Command::new(&bin)
        .arg("--version")
        .output()
        .is_err()
    {
        return Ok(Err(format!("{} not found", bin.display())));
    }
    let url = fresh_database("opsloop_pgbench").await?;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&url)
        .await?;
    let version: i32 = sqlx::query_scalar("SELECT current_setting('server_version_num')::int")
        .fetch_one(&pool)
        .await?;
    if version < 180000 {
        return Ok(Err(format!("the server is {version}, older than 18")));
    }
    sqlx::raw_sql(PGBENCH_SCHEMA).execute(&pool).await?;
    // Outside the schema's implicit transaction, which VACUUM refuses.
    sqlx::query("VACUUM ANALYZE").execute(&pool).await?;
    let dir = std::env::temp_dir().join(format!("opsloop-pgbench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("transition.sql"), PGBENCH_SCRIPT)?;
    Ok(Ok(PgBench {
        bin,
        url: reqwest::Url::parse(&url)?,
        dir,
        script: "transition.sql",
        pool,
    }))
}

/// One pgbench cell: `clients` connections for `seconds`, latencies from
/// its per-transaction log.
fn pgbench_cell(pg: &PgBench, clients: usize, seconds: u64) -> anyhow::Result<Cell> {
    for f in std::fs::read_dir(&pg.dir)? {
        let f = f?.path();
        if f.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("log"))
        {
            std::fs::remove_file(f)?;
        }
    }
    let before = CpuMark::now();
    let out = std::process::Command::new(&pg.bin)
        .current_dir(&pg.dir)
        .env("PGHOST", pg.url.host_str().unwrap_or("127.0.0.1"))
        .env("PGPORT", pg.url.port().unwrap_or(5432).to_string())
        .env("PGUSER", pg.url.username())
        .env("PGPASSWORD", pg.url.password().unwrap_or(""))
        .env("PGDATABASE", pg.url.path().trim_start_matches('/'))
        .args([
            "-n",
            "-M",
            "prepared",
            "-f",
            pg.script,
            "-l",
            "--log-prefix=log",
        ])
        .args([
            "-c",
            &clients.to_string(),
            "-j",
            &clients.min(2).to_string(),
        ])
        .args(["-T", &seconds.to_string()])
        .output()?;
    let spent = before.until(&CpuMark::now());
    anyhow::ensure!(
        out.status.success(),
        "pgbench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let rate: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no tps in pgbench's output: {text}"))?;
    let mut all = Vec::new();
    for f in std::fs::read_dir(&pg.dir)? {
        let f = f?.path();
        if !f
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("log"))
        {
            continue;
        }
        for line in std::fs::read_to_string(&f)?.lines() {
            // client_id transaction_no time_us script_no epoch epoch_us
            if let Some(us) = line
                .split_whitespace()
                .nth(2)
                .and_then(|v| v.parse::<u64>().ok())
            {
                all.push(Duration::from_micros(us));
            }
        }
    }
    Ok(Cell::new(all, rate, &spent, spent.children))
}

/// The status the walk reaches after `step` (the raw path writes it itself).
fn status_after(step: u64) -> &'static str {
    match step {
        0 => "ANALYZING",
        1 => "PLANNING",
        n if n % 2 == 0 => "PARKED",
        _ => "PLANNING",
    }
}

/// A path's own database, created with 100 000 cases: no path's writes,
/// bloat or vacuum land in another's.
struct PathDb {
    name: &'static str,
    pool: PgPool,
    /// Creates the walked cases, and is (a)'s and (b)'s orchestrator.
    orchestrator: Orchestrator,
}

impl PathDb {
    async fn new(name: &'static str, max_connections: u32) -> anyhow::Result<PathDb> {
        let pool = product_database(name, max_connections).await?;
        Ok(PathDb {
            name,
            orchestrator: Orchestrator::new(pool.clone()),
            pool,
        })
    }
}

struct Ctx {
    /// (a), (b) and (c)'s databases.
    a: PathDb,
    b: PathDb,
    c: PathDb,
    http: reqwest::Client,
    /// Serves (b), on `b`'s database.
    base: String,
    pgbench: Option<PgBench>,
    /// `VACUUM` a path's database after each of its cells (default).
    vacuum: bool,
}

impl Ctx {
    fn db(&self, mode: Mode) -> &PathDb {
        match mode {
            Mode::Orchestrator | Mode::PgBench => &self.a,
            Mode::Http => &self.b,
            Mode::Raw => &self.c,
        }
    }
}

/// One transition through the raw statements the orchestrator issues
/// (its one-statement path): the case read without a lock, then the claim,
/// the conditional status update, the timeline entry and the outbox rows in
/// one statement, outside any explicit transaction.
async fn raw_step(pool: &PgPool, case: Uuid, step: u64, meta: &Value) -> anyhow::Result<()> {
    let key = Uuid::now_v7().to_string();
    let event = event_at(step).as_str();
    let timeline_id = Uuid::now_v7();
    let mut conn = pool.acquire().await?;
    let (from, version, correlation, lock_seq): (String, i64, Uuid, i64) = sqlx::query_as(
        "SELECT status, version, correlation_id, lock_seq FROM ops_case \
         WHERE id = $1 AND ($2::text[] IS NULL OR tenant = ANY($2))",
    )
    .bind(case)
    .bind(None::<Vec<String>>)
    .fetch_one(&mut *conn)
    .await?;
    let payload = json!({"id": Uuid::now_v7(), "type": "evt.case.transition.v1", "case_id": case,
                         "tenant": "bench", "occurred_at": chrono::Utc::now(), "actor": "bench",
                         "correlation_id": correlation, "causation_id": timeline_id,
                         "expected_version": version + 1,
                         "data": {"from": from, "to": status_after(step), "event": event,
                                  "version": version + 1, "actor": "bench", "reason": null,
                                  "timeline_id": timeline_id}});
    sqlx::query(
        "WITH claim AS (INSERT INTO idempotency (actor, key, request_hash, timeline_id) \
         VALUES ($12, $13, $14, $4) RETURNING 1), \
         upd AS (UPDATE ops_case SET status = $2, version = version + 1, park_reason = NULL, \
         updated_at = now() WHERE id = $1 AND version = $3 AND lock_seq = $15 \
         AND EXISTS (SELECT 1 FROM claim) RETURNING id, status, version, correlation_id, park_reason), \
         ent AS (INSERT INTO case_timeline (id, case_id, kind, event, from_status, to_status, \
         version, actor, reason, correlation_id, meta, park_reason) \
         SELECT $4, id, 'transition', $5, $6, status, version, 'bench', NULL, correlation_id, $7, \
         park_reason FROM upd RETURNING meta, at), \
         ob AS (INSERT INTO outbox (message_id, case_id, subject, payload, traceparent) \
         SELECT m, $1, s, p, $11 FROM UNNEST($8::uuid[], $9::text[], $10::text[]) AS t(m, s, p) \
         WHERE EXISTS (SELECT 1 FROM ent)) \
         SELECT upd.version, ent.at FROM (SELECT count(*) AS n FROM upd) u \
         LEFT JOIN (upd CROSS JOIN ent) ON true \
         WHERE CASE WHEN u.n = 1 THEN true ELSE transition_refused() END",
    )
    .bind(case)
    .bind(status_after(step))
    .bind(version)
    .bind(timeline_id)
    .bind(event)
    .bind(&from)
    .bind(meta)
    .bind(vec![Uuid::now_v7(), Uuid::now_v7()])
    .bind(vec![
        "cmd.plan.generate".to_string(),
        "evt.case.transition.v1".to_string(),
    ])
    .bind(vec![payload.to_string(), payload.to_string()])
    .bind("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
    .bind("bench")
    .bind(&key)
    .bind("0".repeat(64))
    .bind(lock_seq)
    .fetch_one(&mut *conn)
    .await?;
    Ok(())
}

async fn http_step(ctx: &Ctx, case: Uuid, step: u64) -> anyhow::Result<()> {
    let resp = ctx
        .http
        .patch(format!("{}/case/{case}/transition", ctx.base))
        .bearer_auth(token_for(event_at(step)))
        .header("idempotency-key", Uuid::now_v7().to_string())
        .json(&json!({"event": event_at(step).as_str()}))
        .send()
        .await?;
    anyhow::ensure!(resp.status() == 200, "HTTP {}", resp.status());
    resp.bytes().await?;
    Ok(())
}

async fn run_cell(ctx: Arc<Ctx>, mode: Mode, clients: usize, seconds: u64) -> anyhow::Result<Cell> {
    if mode == Mode::PgBench {
        let pg = ctx
            .pgbench
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("no pgbench"))?;
        let mark = storage_mark(&ctx.a.pool, "opsloop_pgbench").await?;
        let mut cell = pgbench_cell(pg, clients, seconds)?;
        let n = cell.rate * seconds as f64;
        (cell.wal_bytes, cell.stored_bytes) =
            storage_since(&ctx.a.pool, "opsloop_pgbench", &mark, n).await?;
        if ctx.vacuum {
            sqlx::query("VACUUM").execute(&pg.pool).await?;
        }
        return Ok(cell);
    }
    let db = ctx.db(mode);
    let mut cases = Vec::new();
    for _ in 0..clients {
        cases.push(new_case(&db.orchestrator).await?);
    }
    let meta = json!({"trace_id": "0af7651916cd43dd8448eb211c80319c",
                      "facts": {"reason": null, "park_reason": null, "plan": null, "approvals": [],
                                "required_approvers": 1, "judgement": null, "exec": null,
                                "verify_passed": null, "auto_rollback_allowed": false}});
    let meta = Arc::new(meta);
    let mark = storage_mark(&db.pool, db.name).await?;
    let run = closed_loop(clients, seconds, {
        let ctx = ctx.clone();
        move |client, step| {
            let (ctx, meta, case) = (ctx.clone(), meta.clone(), cases[client]);
            async move {
                match mode {
                    Mode::Raw => raw_step(&ctx.c.pool, case, step, &meta).await?,
                    Mode::Orchestrator => {
                        orchestrator_step(&ctx.a.orchestrator, case, step).await?;
                    }
                    Mode::Http => http_step(&ctx, case, step).await?,
                    Mode::PgBench => unreachable!("pgbench runs as its own process"),
                }
                Ok(())
            }
        }
    })
    .await?;
    let n = run.latencies.len().max(1) as f64;
    let mut cell = Cell::new(run.latencies, run.rate, &run.spent, run.spent.me);
    (cell.wal_bytes, cell.stored_bytes) = storage_since(&db.pool, db.name, &mark, n).await?;
    if ctx.vacuum {
        sqlx::query("VACUUM").execute(&db.pool).await?;
    }
    Ok(cell)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // sqlx reports each statement as a `sqlx::query` event at debug level:
    // counted, never printed, and only while the round trips are counted.
    // When the level is on, sqlx also formats each statement for its log,
    // which would bill the measured paths for work a service does not do.
    let statements = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counting = Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        use tracing_subscriber::prelude::*;
        let on = counting.clone();
        tracing_subscriber::registry()
            .with(StatementCounter(statements.clone()).with_filter(
                tracing_subscriber::filter::dynamic_filter_fn(move |meta, _| {
                    on.load(std::sync::atomic::Ordering::Relaxed)
                        && meta.target() == "sqlx::query"
                        && *meta.level() <= tracing::Level::DEBUG
                }),
            ))
            .init();
    }
    let seconds: u64 = arg("--seconds").map_or(Ok(3), |s| s.parse())?;
    let rounds: usize = arg("--rounds").map_or(Ok(3), |s| s.parse())?;
    let client_counts: Vec<usize> = arg("--clients")
        .unwrap_or_else(|| "1,8,32".into())
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let max_clients = client_counts.iter().copied().max().unwrap_or(1);
    let connections = u32::try_from(max_clients + 4)?;
    let (a, b, c) = (
        PathDb::new("opsloop_bench_a", connections).await?,
        PathDb::new("opsloop_bench_b", connections).await?,
        PathDb::new("opsloop_bench_c", connections).await?,
    );
    let pgbench = match pgbench_setup().await? {
        Ok(pg) => Some(pg),
        Err(why) => {
            println!("bench_transition: (d) skipped: {why}");
            None
        }
    };

    let mut tokens = TokenStore::default();
    for (token, acts_as) in TOKENS {
        let roles = match acts_as {
            Some(_) => [Role::Service].into(),
            None => [Role::Operator].into(),
        };
        tokens.insert(
            token,
            Identity {
                id: token.into(),
                roles,
                tenants: TenantScope::All,
                acts_as,
            },
        );
    }
    let state = AppState::bare(b.orchestrator.clone(), tokens);
    let base = common::serve_api(state).await?;
    let ctx = Arc::new(Ctx {
        a,
        b,
        c,
        vacuum: !flag("--no-vacuum"),
        http: opsloop::http_client::http_client()
            .pool_max_idle_per_host(max_clients)
            .build()?,
        base,
        pgbench,
    });

    let result = run(
        &ctx,
        &client_counts,
        seconds,
        rounds,
        &counting,
        &statements,
    )
    .await;
    // pgbench's folder goes, whatever the run did.
    if let Some(pg) = &ctx.pgbench {
        std::fs::remove_dir_all(&pg.dir)?;
    }
    result
}

/// What the flags ask for, in order: the main table, then the stored bytes,
/// the round trips, the ledger and the floor; or `--floor-only`,
/// `--ledger-only` or `--table-only`.
async fn run(
    ctx: &Arc<Ctx>,
    client_counts: &[usize],
    seconds: u64,
    rounds: usize,
    counting: &std::sync::atomic::AtomicBool,
    statements: &std::sync::atomic::AtomicU64,
) -> anyhow::Result<()> {
    let max_clients = client_counts.iter().copied().max().unwrap_or(1);
    // `--floor-only`: the floor's table alone (see `floor`).
    if flag("--floor-only") {
        match &ctx.pgbench {
            Some(pg) => floor(pg, max_clients.min(8), seconds, rounds).await?,
            None => println!("floor: skipped, no pgbench"),
        }
        return Ok(());
    }

    // `--ledger-only`: the ledger alone (see `ledger`).
    if flag("--ledger-only") {
        ledger(ctx, max_clients.min(8), seconds, rounds).await?;
        return Ok(());
    }

    // Warm up connections and caches so the first cell is not penalised.
    run_cell(ctx.clone(), Mode::Raw, max_clients, 1).await?;
    run_cell(ctx.clone(), Mode::Http, max_clients, 1).await?;

    println!(
        "bench_transition: {rounds} interleaved rounds of {seconds} s per path, median round shown; each client walks its own case"
    );
    println!(
        "{:>7}  {:<18} {:>12} {:>9} {:>9} {:>8} {:>8} {:>13} {:>13} {:>9} {:>9}",
        "clients",
        "path",
        "transitions/s",
        "p50 ms",
        "p99 ms",
        "vs (c)",
        "vs (d)",
        "client CPU ms",
        "server CPU ms",
        "WAL B/tx",
        "disk B/tx"
    );
    // The machine is shared and noisy: the three paths run interleaved, in
    // several rounds, and each row reports its median round, so a burst of
    // background load hits all paths alike.
    // `--paths ad`: only those paths (to profile one, or to spend the
    // rounds on the ratios that matter); (c) is the "vs (c)" baseline when
    // it runs.
    let paths = arg("--paths").unwrap_or_else(|| "abcd".into());
    let modes: Vec<Mode> = [Mode::Raw, Mode::Orchestrator, Mode::Http, Mode::PgBench]
        .into_iter()
        .filter(|m| paths.contains(m.letter()))
        .filter(|m| *m != Mode::PgBench || ctx.pgbench.is_some())
        .collect();
    for &clients in client_counts {
        let mut cells: Vec<Vec<Cell>> = modes.iter().map(|_| Vec::new()).collect();
        for _ in 0..rounds {
            for (i, mode) in modes.iter().enumerate() {
                cells[i].push(run_cell(ctx.clone(), *mode, clients, seconds).await?);
            }
        }
        let median: Vec<Cell> = cells.into_iter().map(Cell::median).collect();
        let ceiling = modes
            .iter()
            .position(|m| *m == Mode::PgBench)
            .map(|i| median[i].rate);
        let baseline = modes
            .iter()
            .position(|m| *m == Mode::Raw)
            .map(|i| median[i].rate);
        for (mode, cell) in modes.iter().zip(&median) {
            print_row(clients, *mode, cell, baseline, ceiling);
        }
    }
    // `--table-only`: stop after the main table (the breakdown, the round
    // trips and the floor take minutes more).
    if flag("--table-only") {
        return Ok(());
    }
    breakdown(ctx, max_clients.min(8), seconds).await?;
    counting.store(true, std::sync::atomic::Ordering::Relaxed);
    round_trips(ctx, statements).await?;
    if flag("--ledger") {
        ledger(ctx, max_clients.min(8), seconds, rounds).await?;
    }
    if flag("--floor") {
        match &ctx.pgbench {
            Some(pg) => floor(pg, max_clients.min(8), seconds, rounds).await?,
            None => println!("\nfloor: skipped, no pgbench"),
        }
    }
    Ok(())
}

/// The product's transition as the orchestrator sends it (its one-statement
/// path: the case read without a lock, then claim, conditional update,
/// timeline entry and two outbox rows in one statement, no explicit
/// transaction), for pgbench. The case is picked through `bench_ids` inside
/// the read (an index probe, no extra round trip); the payloads have the
/// length of the real envelopes.
const PRODUCT_SCRIPT: &str = r#"\set n random(1, 100000)
\set k random(1, 900000000000000)
SELECT c.id AS cid, c.status AS st, c.version AS ver, c.lock_seq AS seq FROM ops_case c WHERE c.id = (SELECT id FROM bench_ids WHERE n = :n) AND (NULL::text[] IS NULL OR c.tenant = ANY(NULL::text[])) \gset
WITH claim AS (INSERT INTO idempotency (actor, key, request_hash, timeline_id) VALUES ('bench', :k::text, '0000000000000000000000000000000000000000000000000000000000000000', gen_random_uuid()) RETURNING 1), upd AS (UPDATE ops_case SET status = CASE :st::text WHEN 'PLANNING' THEN 'PARKED' ELSE 'PLANNING' END, version = version + 1, park_reason = NULL, updated_at = now() WHERE id = :cid AND version = :ver AND lock_seq = :seq AND EXISTS (SELECT 1 FROM claim) RETURNING id, status, version, correlation_id, park_reason), ent AS (INSERT INTO case_timeline (id, case_id, kind, event, from_status, to_status, version, actor, reason, correlation_id, meta, park_reason) SELECT gen_random_uuid(), id, 'transition', 'resume', :st, status, version, 'bench', NULL, correlation_id, '{"facts": {"exec": null, "plan": null, "reason": null, "approvals": [], "judgement": null, "park_reason": null, "verify_passed": null, "required_approvers": 1, "auto_rollback_allowed": false}, "trace_id": "0af7651916cd43dd8448eb211c80319c"}', park_reason FROM upd RETURNING meta, at), ob AS (INSERT INTO outbox (message_id, case_id, subject, payload, traceparent) SELECT m, :cid, s, p, '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01' FROM UNNEST(ARRAY[gen_random_uuid(), gen_random_uuid()], ARRAY['cmd.plan.generate', 'evt.case.transition.v1'], ARRAY[repeat('x', 480), repeat('y', 480)]) AS t(m, s, p) WHERE EXISTS (SELECT 1 FROM ent)) SELECT upd.version FROM (SELECT count(*) AS n FROM upd) u LEFT JOIN (upd CROSS JOIN ent) ON true WHERE CASE WHEN u.n = 1 THEN true ELSE transition_refused() END;
"#;

/// What remains between the product's transaction and (d), removed one
/// part at a time (cumulatively) from a scratch copy of the schema.
const FLOOR_STEPS: [(&str, &str); 6] = [
    ("as shipped", ""),
    (
        "- CHECK constraints",
        "DO $$DECLARE r record; BEGIN FOR r IN SELECT conrelid::regclass AS t, conname FROM pg_constraint \
         WHERE contype = 'c' AND conrelid::regclass::text IN ('ops_case', 'case_timeline', 'outbox', 'idempotency') \
         LOOP EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', r.t, r.conname); END LOOP; END$$",
    ),
    (
        "- foreign keys",
        "ALTER TABLE case_timeline DROP CONSTRAINT case_timeline_case_id_fkey; \
         ALTER TABLE idempotency DROP CONSTRAINT idempotency_case_id_fkey",
    ),
    (
        "- status indexes (HOT)",
        "DROP INDEX ops_case_by_status; DROP INDEX ops_case_by_tenant",
    ),
    (
        "- timeline 2nd indexes",
        "DROP INDEX case_timeline_by_case; DROP INDEX case_timeline_one_entry_per_version",
    ),
    (
        "- outbox/idem 2nd idx",
        "DROP INDEX outbox_by_case; DROP INDEX idempotency_by_age",
    ),
];

/// `--floor`: the product's statements run by pgbench (no Rust client, so
/// only the database's share) on fresh product databases, one per step of
/// `FLOOR_STEPS` (each a copy of one template with the parts up to that
/// step removed), in interleaved rounds with (d), after a warm-up cell of
/// each: drift on the shared machine and table growth hit every step alike.
async fn floor(pg: &PgBench, clients: usize, seconds: u64, rounds: usize) -> anyhow::Result<()> {
    floor_template(pg).await?;
    let mut steps = Vec::new();
    for (i, (name, _)) in FLOOR_STEPS.iter().enumerate() {
        let ddl: Vec<&str> = FLOOR_STEPS[1..=i].iter().map(|(_, d)| *d).collect();
        let bench = floor_copy(pg, &format!("opsloop_floor_{i}"), &ddl).await?;
        pgbench_cell(&bench, clients, 1)?;
        steps.push((*name, bench, Vec::new()));
    }
    pgbench_cell(pg, clients, 1)?;
    let mut theirs = Vec::new();
    for _ in 0..rounds {
        for (_, bench, cells) in &mut steps {
            cells.push(pgbench_cell(bench, clients, seconds)?);
        }
        theirs.push(pgbench_cell(pg, clients, seconds)?);
    }
    let t = Cell::median(theirs);
    println!(
        "\nwhat the floor is made of ({clients} clients, {rounds} interleaved rounds of {seconds} s): \
         the product's statements by pgbench, on copies of one database with the parts removed cumulatively"
    );
    println!(
        "{:<26} {:>9} {:>8} {:>15}",
        "step", "tps", "vs (d)", "server ms/tx"
    );
    for (name, _, cells) in steps {
        let m = Cell::median(cells);
        println!(
            "{name:<26} {:>9.0} {:>7.0}% {:>15.3}",
            m.rate,
            100.0 * m.rate / t.rate,
            m.server_cpu_ms,
        );
    }
    println!(
        "{:<26} {:>9.0} {:>7.0}% {:>15.3}",
        "(d) pgbench", t.rate, 100.0, t.server_cpu_ms
    );
    for i in 0..FLOOR_STEPS.len() {
        drop_database(&format!("opsloop_floor_{i}")).await?;
    }
    Ok(())
}

/// Two statements with nothing in them per script run, a parameter each:
/// what two round trips cost from pgbench's C client.
const ROUND_TRIPS_SCRIPT: &str = "\\set one 1\nSELECT :one::int;\nSELECT :one::int;\n";

/// What the ledger measures in this process besides (a) and (b).
#[derive(Clone, Copy)]
enum Probe {
    /// Two round trips of `SELECT $1::int` on one pooled connection, as
    /// (a) takes one connection for its read and its write.
    SqlxRoundTrips,
    /// `GET /healthz` through the same client and server as (b): an HTTP
    /// exchange with no work behind it.
    Healthz,
}

/// `clients` tasks doing `probe` for `seconds`.
async fn probe_cell(
    ctx: &Arc<Ctx>,
    probe: Probe,
    clients: usize,
    seconds: u64,
) -> anyhow::Result<Cell> {
    let run = closed_loop(clients, seconds, {
        let ctx = ctx.clone();
        move |_, _| {
            let ctx = ctx.clone();
            async move {
                match probe {
                    Probe::SqlxRoundTrips => {
                        let mut conn = ctx.a.pool.acquire().await?;
                        for _ in 0..2 {
                            sqlx::query_scalar::<_, i32>("SELECT $1::int")
                                .bind(1)
                                .fetch_one(&mut *conn)
                                .await?;
                        }
                    }
                    Probe::Healthz => {
                        let resp = ctx.http.get(format!("{}/healthz", ctx.base)).send().await?;
                        anyhow::ensure!(resp.status() == 200, "HTTP {}", resp.status());
                        resp.bytes().await?;
                    }
                }
                Ok(())
            }
        }
    })
    .await?;
    Ok(Cell::new(run.latencies, run.rate, &run.spent, run.spent.me))
}

/// What a closed loop of clients did.
struct ClosedLoop {
    latencies: Vec<Duration>,
    /// Units of work per second.
    rate: f64,
    /// The CPU spent from just before the clock started to its end.
    spent: CpuMark,
}

/// `clients` tasks, each doing `step(client, n)` for its n-th unit of work,
/// back to back, for `seconds`.
async fn closed_loop<S, F>(clients: usize, seconds: u64, step: S) -> anyhow::Result<ClosedLoop>
where
    S: Fn(usize, u64) -> F + Send + Sync + 'static,
    F: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let step = Arc::new(step);
    // Read /proc before the clock starts: the reading is not the path's work.
    let before = CpuMark::now();
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for client in 0..clients {
        let step = step.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut n = 0u64;
            while Instant::now() < deadline {
                let t = Instant::now();
                step(client, n).await?;
                lat.push(t.elapsed());
                n += 1;
            }
            anyhow::Ok(lat)
        }));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let spent = before.until(&CpuMark::now());
    Ok(ClosedLoop {
        rate: latencies.len() as f64 / elapsed,
        latencies,
        spent,
    })
}

/// A cell of the ledger.
#[derive(Clone, Copy)]
enum Ledger {
    PgBench,
    ProductStatements,
    Orchestrator,
    PgBenchRoundTrips,
    SqlxRoundTrips,
    Http,
    Healthz,
}

/// The ledger's cells, in the order they run in each round.
const LEDGER: [Ledger; 7] = [
    Ledger::PgBench,
    Ledger::ProductStatements,
    Ledger::Orchestrator,
    Ledger::PgBenchRoundTrips,
    Ledger::SqlxRoundTrips,
    Ledger::Http,
    Ledger::Healthz,
];

impl Ledger {
    fn name(self) -> &'static str {
        match self {
            Ledger::PgBench => "(d) pgbench",
            Ledger::ProductStatements => "product statements, pgbench",
            Ledger::Orchestrator => "(a) orchestrator",
            Ledger::PgBenchRoundTrips => "2 round trips, pgbench",
            Ledger::SqlxRoundTrips => "2 round trips, sqlx",
            Ledger::Http => "(b) HTTP",
            Ledger::Healthz => "GET /healthz",
        }
    }
}

/// `--ledger`: where a transition's machine CPU goes, at `clients`. (a),
/// (b), (d), the product's own statements run by pgbench, two empty round
/// trips from pgbench and from sqlx, and an empty HTTP exchange through
/// (b)'s client and server, in interleaved rounds; then (a) and (b) are
/// split into what the database does for the product's statements, what
/// the Rust client's round trips cost over pgbench's, one HTTP exchange,
/// and the remainder: the orchestrator's own work, and the rest of the
/// HTTP path (its handler, and the wake-ups of an exchange that waits on
/// the database).
async fn ledger(ctx: &Arc<Ctx>, clients: usize, seconds: u64, rounds: usize) -> anyhow::Result<()> {
    let Some(pg) = &ctx.pgbench else {
        println!("\nledger: skipped, no pgbench");
        return Ok(());
    };
    floor_template(pg).await?;
    let product = floor_copy(pg, "opsloop_floor_ledger", &[]).await?;
    std::fs::write(pg.dir.join("round_trips.sql"), ROUND_TRIPS_SCRIPT)?;
    let round_trips = pg.running("round_trips.sql");
    let cell = |which: Ledger| {
        let (ctx, product, round_trips) = (ctx.clone(), &product, &round_trips);
        async move {
            match which {
                Ledger::PgBench => run_cell(ctx, Mode::PgBench, clients, seconds).await,
                Ledger::ProductStatements => {
                    let c = pgbench_cell(product, clients, seconds)?;
                    sqlx::query("VACUUM").execute(&product.pool).await?;
                    Ok(c)
                }
                Ledger::Orchestrator => run_cell(ctx, Mode::Orchestrator, clients, seconds).await,
                Ledger::PgBenchRoundTrips => pgbench_cell(round_trips, clients, seconds),
                Ledger::SqlxRoundTrips => {
                    probe_cell(&ctx, Probe::SqlxRoundTrips, clients, seconds).await
                }
                Ledger::Http => run_cell(ctx, Mode::Http, clients, seconds).await,
                Ledger::Healthz => probe_cell(&ctx, Probe::Healthz, clients, seconds).await,
            }
        }
    };
    for which in LEDGER {
        cell(which).await?;
    }
    let mut cells: Vec<Vec<Cell>> = LEDGER.iter().map(|_| Vec::new()).collect();
    for _ in 0..rounds {
        for (which, cells) in LEDGER.into_iter().zip(&mut cells) {
            cells.push(cell(which).await?);
        }
    }
    let cores = std::thread::available_parallelism().map_or(1, usize::from) as f64;
    println!(
        "\nledger ({clients} clients, {rounds} interleaved rounds of {seconds} s, median rounds): the machine's CPU per transition, \
         and how busy the machine was ({cores} cores)"
    );
    println!(
        "{:<30} {:>9} {:>11} {:>13} {:>13} {:>8}",
        "cell", "per s", "machine ms", "client ms", "postgres ms", "busy"
    );
    let mut machine = Vec::new();
    for (which, cells) in LEDGER.into_iter().zip(cells) {
        let m = Cell::median(cells);
        let total = m.client_cpu_ms + m.server_cpu_ms;
        println!(
            "{:<30} {:>9.0} {total:>11.3} {:>13.3} {:>13.3} {:>7.0}%",
            which.name(),
            m.rate,
            m.client_cpu_ms,
            m.postgres_cpu_ms,
            100.0 * total * m.rate / 1000.0 / cores,
        );
        machine.push(total);
    }
    let [d, p, a, r, s, b, h] = machine[..] else {
        unreachable!("one figure per ledger cell")
    };
    println!(
        "(a) = product statements {p:.3} + sqlx's round trips over pgbench's {:.3} + the orchestrator's own work {:.3}",
        s - r,
        a - p - (s - r)
    );
    println!(
        "(b) = (a) {a:.3} + one HTTP exchange {h:.3} + the rest of the HTTP path {:.3}",
        b - a - h
    );
    println!(
        "at full load the machine's CPU bounds (a)/(d) by {:.2} and (b)/(d) by {:.2}; \
         with no work of the product's own in the process, by {:.2} and {:.2}",
        d / a,
        d / b,
        d / (p + s - r),
        d / (p + s - r + h),
    );
    product.pool.close().await;
    drop_database("opsloop_floor_ledger").await?;
    Ok(())
}

/// The floor's template database: a fresh product database with the
/// `bench_ids` map the product script picks its case through, and the
/// script itself in pgbench's folder.
async fn floor_template(pg: &PgBench) -> anyhow::Result<()> {
    let pool = product_database("opsloop_floor", 2).await?;
    sqlx::query(
        "CREATE TABLE bench_ids AS SELECT row_number() OVER (ORDER BY id) AS n, id FROM ops_case",
    )
    .execute(&pool)
    .await?;
    sqlx::query("ALTER TABLE bench_ids ADD PRIMARY KEY (n)")
        .execute(&pool)
        .await?;
    sqlx::query("VACUUM ANALYZE").execute(&pool).await?;
    pool.close().await;
    std::fs::write(pg.dir.join("product.sql"), PRODUCT_SCRIPT)?;
    Ok(())
}

/// A copy of the floor's template as `db` (a constant or made from an
/// index here, never input), with `ddl` run on it, for the product script.
async fn floor_copy(pg: &PgBench, db: &str, ddl: &[&str]) -> anyhow::Result<PgBench> {
    let url = reqwest::Url::parse(&database_copy(db, "opsloop_floor").await?)?;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(url.as_str())
        .await?;
    for statement in ddl {
        sqlx::raw_sql(sqlx::AssertSqlSafe(*statement))
            .execute(&pool)
            .await?;
    }
    Ok(PgBench {
        url,
        pool,
        ..pg.running("product.sql")
    })
}

/// Counts the statements sqlx reports (its `sqlx::query` events, one per
/// round trip; `COMMIT` is reported, the `BEGIN` of `pool.begin()` is not).
struct StatementCounter(Arc<std::sync::atomic::AtomicU64>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for StatementCounter {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if event.metadata().target() == "sqlx::query" {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// Round trips per transition of (a) and (c): `n` transitions of one case,
/// one at a time, with sqlx's statement events counted.
async fn round_trips(ctx: &Arc<Ctx>, counter: &std::sync::atomic::AtomicU64) -> anyhow::Result<()> {
    use std::sync::atomic::Ordering;
    let n = 200u64;
    let meta = json!({"facts": {}});
    println!(
        "\nround trips per transition ({n} transitions): sqlx's reported statements (a `BEGIN`, which sqlx does not report, would be one more; the one-statement path sends none)"
    );
    for mode in [Mode::Raw, Mode::Orchestrator] {
        let case = new_case(&ctx.db(mode).orchestrator).await?;
        let before = counter.load(Ordering::Relaxed);
        for step in 0..n {
            match mode {
                Mode::Raw => raw_step(&ctx.c.pool, case, step, &meta).await?,
                _ => {
                    orchestrator_step(&ctx.a.orchestrator, case, step).await?;
                }
            }
        }
        let per = (counter.load(Ordering::Relaxed) - before) as f64 / n as f64;
        println!("{:<18} {per:>6.2}", mode.name());
    }
    Ok(())
}

/// Heap bytes, index bytes and index count of each table of a database.
async fn table_sizes(pool: &PgPool) -> anyhow::Result<BTreeMap<String, (i64, i64, i64)>> {
    let rows: Vec<(String, i64, i64, i64)> = sqlx::query_as(
        "SELECT c.relname::text, pg_relation_size(c.oid), pg_indexes_size(c.oid), \
                (SELECT count(*) FROM pg_index i WHERE i.indrelid = c.oid) \
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = 'public' AND c.relkind = 'r' AND c.relname <> '_sqlx_migrations'",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(t, h, i, n)| (t, (h, i, n)))
        .collect())
}

/// Where a transition's stored bytes go, table by table: one more cell of
/// (a) and of (d), with every table's heap and index sizes before and
/// after (issue #15, deliverable 2).
async fn breakdown(ctx: &Arc<Ctx>, clients: usize, seconds: u64) -> anyhow::Result<()> {
    let mut paths: Vec<(Mode, PgPool)> = vec![(Mode::Orchestrator, ctx.a.pool.clone())];
    if let Some(pg) = &ctx.pgbench {
        paths.push((Mode::PgBench, pg.pool.clone()));
    }
    println!(
        "\nbytes stored per transition by table ({clients} clients, {seconds} s, one cell each):"
    );
    println!(
        "{:<18} {:<16} {:>9} {:>10} {:>8}",
        "path", "table", "heap B/tx", "index B/tx", "indexes"
    );
    for (mode, pool) in paths {
        let before = table_sizes(&pool).await?;
        let cell = run_cell(ctx.clone(), mode, clients, seconds).await?;
        let after = table_sizes(&pool).await?;
        let n = (cell.rate * seconds as f64).max(1.0);
        for (table, (heap, index, count)) in &after {
            let (h0, i0, _) = before.get(table).copied().unwrap_or_default();
            if heap == &h0 && index == &i0 {
                continue;
            }
            println!(
                "{:<18} {:<16} {:>9.0} {:>10.0} {:>8}",
                mode.name(),
                table,
                (heap - h0) as f64 / n,
                (index - i0) as f64 / n,
                count
            );
        }
    }
    Ok(())
}

fn print_row(clients: usize, mode: Mode, cell: &Cell, baseline: Option<f64>, ceiling: Option<f64>) {
    let ratio = |of: Option<f64>| {
        of.map_or("-".to_string(), |r| {
            format!("{:.0}%", 100.0 * cell.rate / r)
        })
    };
    let (vs_c, vs_d) = (ratio(baseline), ratio(ceiling));
    println!(
        "{:>7}  {:<18} {:>12.0} {:>9.2} {:>9.2} {:>8} {:>8} {:>13.3} {:>13.3} {:>9.0} {:>9.0}",
        clients,
        mode.name(),
        cell.rate,
        ms(cell.p50),
        ms(cell.p99),
        vs_c,
        vs_d,
        cell.client_cpu_ms,
        cell.server_cpu_ms,
        cell.wal_bytes,
        cell.stored_bytes
    );
}
