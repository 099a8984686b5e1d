//! bench_signals: Alertmanager webhook intake (issue #16).
//!
//! The product's own API in-process, `clients` concurrent webhook senders,
//! each alert a new fingerprint (a new case) or a repeat (a deduplicated
//! one), in batches of 1 and of 50 alerts per notification. The baseline,
//! in the same run and at the same concurrency: a plain one-row `INSERT`
//! per alert (a transaction each) of the same alert JSON into a table of
//! its own, which is the least a durable intake can cost. Severity `info`,
//! so no case starts by itself, and no group window, so every new
//! fingerprint opens a case: the figures are intake's own, on its
//! costliest path.
//!
//! ```sh
//! cargo build --release --bin bench_signals
//! target/release/bench_signals --seconds 5 --clients 8
//! ```
//!
//! Anomaly detection (the issue's second figure) is not built yet, so it
//! is not measured here.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use opsloop::api::AppState;
use opsloop::auth::{Identity, Role, TenantScope, TokenStore};
use opsloop::orchestrator::Orchestrator;
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

mod common;

use common::{arg, fresh_database, ms, quantile};

const TOKEN: &str = "bench-alertmanager";

/// A fresh migrated database, with the baseline's table.
async fn database(max_connections: u32) -> anyhow::Result<PgPool> {
    let url = fresh_database("opsloop_signals").await?;
    let pool = opsloop::config::connect_db(&url, max_connections).await?;
    opsloop::MIGRATOR.run(&pool).await?;
    sqlx::raw_sql(
        "CREATE TABLE bench_alert (id uuid PRIMARY KEY, tenant text NOT NULL, \
         fingerprint text NOT NULL, alert jsonb NOT NULL, at timestamptz NOT NULL DEFAULT now())",
    )
    .execute(&pool)
    .await?;
    Ok(pool)
}

fn alert(fingerprint: &str) -> Value {
    json!({
        "status": "firing",
        "labels": {"alertname": "CheckoutErrors", "severity": "info", "tenant": "bench",
                   "service": "checkout", "instance": fingerprint},
        "annotations": {"summary": "checkout errors above 5 %"},
        "startsAt": "2026-11-30T06:00:00Z",
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus:9090/graph?g0.expr=errors",
        "fingerprint": fingerprint,
    })
}

fn notification(alerts: Vec<Value>) -> String {
    json!({
        "version": "4", "groupKey": "{}:{alertname=\"CheckoutErrors\"}", "status": "firing",
        "receiver": "opsloop", "externalURL": "http://alertmanager:9093",
        "groupLabels": {}, "commonLabels": {"alertname": "CheckoutErrors"},
        "commonAnnotations": {}, "truncatedAlerts": 0, "alerts": alerts,
    })
    .to_string()
}

#[derive(Clone, Copy, PartialEq)]
enum Path {
    /// The webhook, every alert a new fingerprint.
    Fresh,
    /// The webhook, fingerprints already open (deduplicated).
    Repeat,
    /// One plain INSERT per alert.
    Baseline,
}

struct Cell {
    alerts_per_s: f64,
    p50: Duration,
    p99: Duration,
}

async fn run(
    path: Path,
    http: &reqwest::Client,
    base: &str,
    pool: &PgPool,
    clients: usize,
    batch: usize,
    seconds: u64,
) -> anyhow::Result<Cell> {
    let counter = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for client in 0..clients {
        let (http, base, pool, counter) = (
            http.clone(),
            base.to_string(),
            pool.clone(),
            counter.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut n = 0u64;
            while Instant::now() < deadline {
                let fingerprints: Vec<String> = (0..batch)
                    .map(|i| match path {
                        // The first cell's fingerprints again, already open.
                        Path::Repeat => format!("c{client}-{}", (n as usize * batch + i) % 500),
                        Path::Fresh | Path::Baseline => Uuid::now_v7().simple().to_string(),
                    })
                    .collect();
                let t = Instant::now();
                if path == Path::Baseline {
                    for f in &fingerprints {
                        sqlx::query(
                            "INSERT INTO bench_alert (id, tenant, fingerprint, alert) \
                             VALUES ($1, 'bench', $2, $3)",
                        )
                        .bind(Uuid::now_v7())
                        .bind(f)
                        .bind(alert(f))
                        .execute(&pool)
                        .await?;
                    }
                } else {
                    let r = http
                        .post(format!("{base}/signals/alertmanager"))
                        .bearer_auth(TOKEN)
                        .header("content-type", "application/json")
                        .body(notification(
                            fingerprints.iter().map(|f| alert(f)).collect(),
                        ))
                        .send()
                        .await?;
                    anyhow::ensure!(r.status() == 202, "HTTP {}", r.status());
                    r.bytes().await?;
                }
                lat.push(t.elapsed());
                counter.fetch_add(batch as u64, Ordering::Relaxed);
                n += 1;
            }
            anyhow::Ok(lat)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    all.sort_unstable();
    Ok(Cell {
        alerts_per_s: counter.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64(),
        p50: quantile(&all, 0.5),
        p99: quantile(&all, 0.99),
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let seconds: u64 = arg("--seconds").map_or(Ok(5), |s| s.parse())?;
    let clients: usize = arg("--clients").map_or(Ok(8), |s| s.parse())?;
    let pool = database(u32::try_from(clients + 4)?).await?;
    let mut tokens = TokenStore::default();
    tokens.insert(
        TOKEN,
        Identity {
            id: "alertmanager".into(),
            roles: [Role::Service].into(),
            tenants: TenantScope::All,
            acts_as: None,
        },
    );
    let state = AppState {
        orchestrator: Orchestrator::new(pool.clone()),
        tokens: Arc::new(tokens),
        nats: None,
        plan_limits: Arc::new(Default::default()),
        // Every new fingerprint opens its own case (the costliest path):
        // a notification's alerts share one group, which would join them.
        intake: Arc::new(opsloop::analyst::intake::IntakeSettings {
            group_window_s: 0,
            ..Default::default()
        }),
    };
    let base = common::serve_api(state).await?;
    let http = opsloop::http_client::http_client()
        .pool_max_idle_per_host(clients)
        .build()?;
    // Open the fingerprints the repeat cells send again, and warm up.
    run(Path::Fresh, &http, &base, &pool, clients, 1, 1).await?;
    for client in 0..clients {
        for chunk in (0..500).collect::<Vec<_>>().chunks(50) {
            let alerts = chunk
                .iter()
                .map(|i| alert(&format!("c{client}-{i}")))
                .collect();
            let r = http
                .post(format!("{base}/signals/alertmanager"))
                .bearer_auth(TOKEN)
                .header("content-type", "application/json")
                .body(notification(alerts))
                .send()
                .await?;
            anyhow::ensure!(r.status() == 202, "HTTP {}", r.status());
        }
    }
    println!(
        "bench_signals: {clients} clients, {seconds} s per cell; baseline = one plain INSERT per alert"
    );
    println!(
        "{:<6} {:<28} {:>10} {:>12} {:>12} {:>11}",
        "batch", "path", "alerts/s", "p50 ms/req", "p99 ms/req", "vs baseline"
    );
    for batch in [1usize, 50] {
        let baseline = run(Path::Baseline, &http, &base, &pool, clients, batch, seconds).await?;
        for (name, path) in [
            ("plain INSERT (baseline)", Path::Baseline),
            ("webhook, new fingerprints", Path::Fresh),
            ("webhook, repeats (dedup)", Path::Repeat),
        ] {
            let measured = match path {
                Path::Baseline => None,
                Path::Fresh | Path::Repeat => {
                    Some(run(path, &http, &base, &pool, clients, batch, seconds).await?)
                }
            };
            let c = measured.as_ref().unwrap_or(&baseline);
            println!(
                "{batch:<6} {name:<28} {:>10.0} {:>12.2} {:>12.2} {:>10.0}%",
                c.alerts_per_s,
                ms(c.p50),
                ms(c.p99),
                100.0 * c.alerts_per_s / baseline.alerts_per_s
            );
        }
    }
    Ok(())
}
