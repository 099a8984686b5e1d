//! bench_transition: transitions/s and latency at 1, 8 and 32 concurrent
//! clients, each walking its own case, measured
//!   (a) through `Orchestrator::transition`,
//!   (b) through HTTP (`PATCH /case/{id}/transition`, the real router on a
//!       loopback socket), and
//!   (c) the raw-SQL baseline: the same statements issued directly with sqlx,
//!       no FSM, no facts, no HTTP,
//! all in the same run against the same PostgreSQL. Prints the ratios to (c).
//!
//! Usage: DATABASE_URL=... bench_transition [--seconds 3] [--rounds 3] [--clients 1,8,32]

use std::sync::Arc;
use std::time::{Duration, Instant};

use opsloop::api::{self, AppState};
use opsloop::auth::{Identity, Role, TenantScope, TokenStore};
use opsloop::orchestrator::Orchestrator;
use opsloop::roles::Role as WorkerRole;
use opsloop::workflow::EventKind;
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

mod common;

use common::{arg, database, event_at, ms, new_case, orchestrator_step, quantile};

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
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Raw => "(c) raw SQL",
            Mode::Orchestrator => "(a) orchestrator",
            Mode::Http => "(b) HTTP",
        }
    }
}

struct Cell {
    rate: f64,
    p50: Duration,
    p99: Duration,
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

struct Ctx {
    pool: PgPool,
    orchestrator: Orchestrator,
    http: reqwest::Client,
    base: String,
}

/// One transition through the raw statements the orchestrator issues.
async fn raw_step(pool: &PgPool, case: Uuid, step: u64, meta: &Value) -> anyhow::Result<()> {
    let key = Uuid::now_v7().to_string();
    let event = event_at(step).as_str();
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO idempotency (actor, key, request_hash) VALUES ($1, $2, $3) \
         ON CONFLICT (actor, key) DO NOTHING",
    )
    .bind("bench")
    .bind(&key)
    .bind("0".repeat(64))
    .execute(&mut *tx)
    .await?;
    let (from, correlation): (String, Uuid) =
        sqlx::query_as("SELECT status, correlation_id FROM ops_case WHERE id = $1 FOR UPDATE")
            .bind(case)
            .fetch_one(&mut *tx)
            .await?;
    let (version,): (i64,) = sqlx::query_as(
        "UPDATE ops_case SET status = $2, version = version + 1, park_reason = NULL, \
         updated_at = now() WHERE id = $1 RETURNING version",
    )
    .bind(case)
    .bind(status_after(step))
    .fetch_one(&mut *tx)
    .await?;
    let timeline_id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO case_timeline (id, case_id, kind, event, from_status, to_status, version, \
         actor, reason, correlation_id, meta) \
         VALUES ($1, $2, 'transition', $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(timeline_id)
    .bind(case)
    .bind(event)
    .bind(&from)
    .bind(status_after(step))
    .bind(version)
    .bind("bench")
    .bind(None::<String>)
    .bind(correlation)
    .bind(meta)
    .execute(&mut *tx)
    .await?;
    let payload = json!({"id": Uuid::now_v7(), "type": "evt.case.transition.v1", "case_id": case,
                         "tenant": "bench", "occurred_at": chrono::Utc::now(), "actor": "bench",
                         "correlation_id": correlation, "causation_id": timeline_id,
                         "expected_version": version,
                         "data": {"from": from, "to": status_after(step), "event": event,
                                  "version": version, "actor": "bench", "reason": null,
                                  "timeline_id": timeline_id}});
    sqlx::query(
        "INSERT INTO outbox (message_id, case_id, subject, payload, traceparent) \
         SELECT m, $1, s, p, $5 FROM UNNEST($2::uuid[], $3::text[], $4::text[]) AS t(m, s, p)",
    )
    .bind(case)
    .bind(vec![Uuid::now_v7(), Uuid::now_v7()])
    .bind(vec![
        "cmd.plan.generate".to_string(),
        "evt.case.transition.v1".to_string(),
    ])
    .bind(vec![payload.to_string(), payload.to_string()])
    .bind("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
    .execute(&mut *tx)
    .await?;
    sqlx::query("UPDATE idempotency SET answer = $3, case_id = $4 WHERE actor = $1 AND key = $2")
        .bind("bench")
        .bind(&key)
        .bind(meta)
        .bind(case)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
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
    let mut cases = Vec::new();
    for _ in 0..clients {
        cases.push(new_case(&ctx.orchestrator).await?);
    }
    let meta = json!({"trace_id": "0af7651916cd43dd8448eb211c80319c",
                      "facts": {"reason": null, "park_reason": null, "plan": null, "approvals": [],
                                "required_approvers": 1, "judgement": null, "exec": null,
                                "verify_passed": null, "auto_rollback_allowed": false}});
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for case in cases {
        let ctx = ctx.clone();
        let meta = meta.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut step = 0u64;
            while Instant::now() < deadline {
                let t = Instant::now();
                match mode {
                    Mode::Raw => raw_step(&ctx.pool, case, step, &meta).await?,
                    Mode::Orchestrator => {
                        orchestrator_step(&ctx.orchestrator, case, step).await?;
                    }
                    Mode::Http => http_step(&ctx, case, step).await?,
                }
                lat.push(t.elapsed());
                step += 1;
            }
            anyhow::Ok(lat)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort_unstable();
    Ok(Cell {
        rate: all.len() as f64 / elapsed,
        p50: quantile(&all, 0.50),
        p99: quantile(&all, 0.99),
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let seconds: u64 = arg("--seconds").map_or(Ok(3), |s| s.parse())?;
    let rounds: usize = arg("--rounds").map_or(Ok(3), |s| s.parse())?;
    let client_counts: Vec<usize> = arg("--clients")
        .unwrap_or_else(|| "1,8,32".into())
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let max_clients = client_counts.iter().copied().max().unwrap_or(1);
    let pool = database(u32::try_from(max_clients + 4)?).await?;

    let orchestrator = Orchestrator::new(pool.clone());
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
    let state = AppState {
        orchestrator: orchestrator.clone(),
        tokens: Arc::new(tokens),
        nats: None,
        plan_limits: Arc::new(Default::default()),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    // The product's own accept loop, as `opsloop serve` runs it.
    tokio::spawn(api::serve(
        listener,
        api::app(state),
        api::ServeSettings::default(),
        std::future::pending(),
    ));
    let ctx = Arc::new(Ctx {
        pool,
        orchestrator,
        http: opsloop::http_client::http_client()
            .pool_max_idle_per_host(max_clients)
            .build()?,
        base,
    });

    // Warm up connections and caches so the first cell is not penalised.
    run_cell(ctx.clone(), Mode::Raw, max_clients, 1).await?;
    run_cell(ctx.clone(), Mode::Http, max_clients, 1).await?;

    println!(
        "bench_transition: {rounds} interleaved rounds of {seconds} s per path, median round shown; each client walks its own case"
    );
    println!(
        "{:>7}  {:<18} {:>12} {:>9} {:>9} {:>10}",
        "clients", "path", "transitions/s", "p50 ms", "p99 ms", "vs (c)"
    );
    // The machine is shared and noisy: the three paths run interleaved, in
    // several rounds, and each row reports its median round, so a burst of
    // background load hits all paths alike.
    let modes = [Mode::Raw, Mode::Orchestrator, Mode::Http];
    for &clients in &client_counts {
        let mut cells: Vec<Vec<Cell>> = modes.iter().map(|_| Vec::new()).collect();
        for _ in 0..rounds {
            for (i, mode) in modes.iter().enumerate() {
                cells[i].push(run_cell(ctx.clone(), *mode, clients, seconds).await?);
            }
        }
        let median: Vec<Cell> = cells
            .into_iter()
            .map(|mut c| {
                c.sort_by(|a, b| a.rate.total_cmp(&b.rate));
                c.swap_remove(c.len() / 2)
            })
            .collect();
        for (mode, cell) in modes.iter().zip(&median) {
            print_row(clients, *mode, cell, median[0].rate);
        }
    }
    Ok(())
}

fn print_row(clients: usize, mode: Mode, cell: &Cell, baseline: f64) {
    println!(
        "{:>7}  {:<18} {:>12.0} {:>9.2} {:>9.2} {:>9.0}%",
        clients,
        mode.name(),
        cell.rate,
        ms(cell.p50),
        ms(cell.p99),
        100.0 * cell.rate / baseline
    );
}
