//! bench_signals: Alertmanager webhook intake and the anomaly detector's
//! cost (issue #16).
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
//! The detector: `--series` series (default 1 000) of one-minute latency
//! with 6 days and 2 hours of history (a diurnal sine and noise, no
//! anomaly), so every earlier-day window the baseline reads is full,
//! vacuumed and checkpointed as old history would be; a catch-up sweep
//! warms every series' state over its last 12 hours; then, per measured
//! minute, one new row per series is stored by the ingest statement
//! (`api::metrics::STORE_ROWS`) and the sweep that judges it is timed (`Sweeper::judge_due`, the product's code: claim, one read of
//! every window, stepping, storing the states). The baseline, in the same
//! run: a plain one-statement `INSERT` of the same rows into a table with
//! `metric_1m`'s columns and key. The cost per 10 000 series is scaled
//! linearly from `--series` (a sweep judges series independently, in
//! batches of `OPSLOOP_DETECT_BATCH`).
//!
//! ```sh
//! cargo build --release --bin bench_signals
//! target/release/bench_signals --seconds 5 --clients 8 [--series 1000 --minutes 5]
//! target/release/bench_signals --detector-only
//! target/release/bench_signals --series 0            # the webhook only
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use opsloop::analyst::sweep::{DetectSettings, Sweeper, ts_of};
use opsloop::api::AppState;
use opsloop::auth::{Identity, Role, TenantScope, TokenStore};
use opsloop::orchestrator::Orchestrator;
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

mod common;

use common::{arg, flag, fresh_database, ms, quantile};

const TOKEN: &str = "bench-alertmanager";

/// A fresh migrated database, with the baseline's table.
async fn database(max_connections: u32) -> anyhow::Result<PgPool> {
    let url = fresh_database("opsloop_signals").await?;
    let pool = opsloop::config::connect_db(&url, max_connections).await?;
    opsloop::MIGRATOR.run(&pool).await?;
    sqlx::raw_sql(
        "CREATE TABLE bench_alert (id uuid PRIMARY KEY, tenant text NOT NULL, \
         fingerprint text NOT NULL, alert jsonb NOT NULL, at timestamptz NOT NULL DEFAULT now()); \
         CREATE TABLE bench_metric (LIKE metric_1m INCLUDING DEFAULTS INCLUDING CONSTRAINTS); \
         ALTER TABLE bench_metric ADD PRIMARY KEY (tenant, resource, metric, ts);",
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
    // Whatever an earlier run left to write is written before measuring.
    sqlx::query("CHECKPOINT").execute(&pool).await?;
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
        // Every new fingerprint opens its own case (the costliest path):
        // a notification's alerts share one group, which would join them.
        intake: Arc::new(opsloop::analyst::intake::IntakeSettings {
            group_window_s: 0,
            ..Default::default()
        }),
        ..AppState::bare(Orchestrator::new(pool.clone()), tokens)
    };
    if flag("--detector-only") {
        return detector(&pool, &state).await;
    }
    let base = common::serve_api(state.clone()).await?;
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
    detector(&pool, &state).await
}

/// One minute of data for every series: (resources, values).
fn minute_rows(series: usize, minute: i64) -> (Vec<String>, Vec<f64>) {
    let resources = (0..series).map(|i| format!("svc-{i}")).collect();
    let values = (0..series)
        .map(|i| {
            let phase = (minute as f64 / 1440.0 + i as f64 / series as f64) * std::f64::consts::TAU;
            100.0 + 3.0 * phase.sin() + ((minute * 7919 + i as i64 * 104_729) % 97) as f64 / 97.0
        })
        .collect();
    (resources, values)
}

async fn detector(pool: &PgPool, state: &AppState) -> anyhow::Result<()> {
    let series: usize = arg("--series").map_or(Ok(1000), |s| s.parse())?;
    let minutes: i64 = arg("--minutes").map_or(Ok(5), |s| s.parse())?;
    if series == 0 {
        return Ok(());
    }
    let now = Utc::now().timestamp().div_euclid(60);
    let first_measured = now - minutes;
    let history = 6 * 1440 + 120;
    let started = Instant::now();
    sqlx::query(
        "INSERT INTO metric_1m (tenant, resource, metric, ts, avg, max) \
         SELECT 'bench', 'svc-' || s, 'latency', to_timestamp(m * 60), v, v * 1.1 \
         FROM generate_series(0, $1 - 1) s, generate_series($2, $3) m, \
              LATERAL (SELECT 100 + 3 * sin(2 * pi() * (m / 1440.0 + s::float8 / $1)) + random() AS v) x",
    )
    .bind(series as i64)
    .bind(first_measured - history)
    .bind(first_measured - 1)
    .execute(pool)
    .await?;
    sqlx::query(
        "WITH s AS (INSERT INTO metric_series (tenant, resource, metric, last_ts) \
           SELECT tenant, resource, metric, max(ts) FROM metric_1m WHERE tenant = 'bench' GROUP BY 1, 2, 3 \
           RETURNING tenant, resource, metric) \
         INSERT INTO detector_state (tenant, resource, metric) SELECT * FROM s",
    )
    .execute(pool)
    .await?;
    // History in production was written long before it is read: its hint
    // bits and visibility map are set. Without this the first sweeps pay
    // for setting them (writing most of the table again), which is the
    // load's cost, not the detector's.
    sqlx::query("VACUUM (FREEZE, ANALYZE) metric_1m")
        .execute(pool)
        .await?;
    sqlx::query("CHECKPOINT").execute(pool).await?;
    println!(
        "\ndetector: {series} series x {history} minutes of history stored in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let sweeper = |max_minutes| Sweeper {
        pool: pool.clone(),
        orchestrator: state.orchestrator.clone(),
        intake: state.intake.clone(),
        settings: DetectSettings {
            max_minutes,
            ..DetectSettings::default()
        },
    };
    // Catch-up: the states learn their last 12 h (the scale's window).
    let warm = sweeper(720);
    let started = Instant::now();
    let mut judged = 0;
    loop {
        let r = warm.judge_due(Utc::now()).await?;
        if r.series == 0 {
            break;
        }
        judged += r.minutes;
    }
    let catch_up = started.elapsed();
    println!(
        "detector: catch-up sweep judged {judged} minutes in {:.1} s ({:.1} µs per series-minute)",
        catch_up.as_secs_f64(),
        catch_up.as_secs_f64() * 1e6 / judged.max(1) as f64
    );
    let live = sweeper(DetectSettings::default().max_minutes);
    println!(
        "{:<8} {:>14} {:>14} {:>12} {:>12} {:>16} {:>12}",
        "minute", "INSERT ms", "ingest ms", "sweep ms", "rows read", "per 10k series", "vs INSERT"
    );
    let mut ratios = Vec::new();
    for minute in first_measured..first_measured + minutes {
        let (resources, values) = minute_rows(series, minute);
        let ts = ts_of(minute);
        let t = Instant::now();
        sqlx::query(
            "INSERT INTO bench_metric (tenant, resource, metric, ts, avg, max) \
             SELECT 'bench', r, 'latency', $2, v, v * 1.1 FROM unnest($1::text[], $3::float8[]) AS u(r, v)",
        )
        .bind(&resources)
        .bind(ts)
        .bind(&values)
        .execute(pool)
        .await?;
        let insert = t.elapsed();
        let t = Instant::now();
        // The product's own ingest statement, rows as the handler builds them.
        let rows: Vec<serde_json::Value> = resources
            .iter()
            .zip(&values)
            .map(|(r, v)| {
                json!({"tenant": "bench", "resource": r, "metric": "latency",
                       "ts": ts.to_rfc3339(), "avg": v, "max": v * 1.1, "p95": null,
                       "count": 1, "labels": {}})
            })
            .collect();
        sqlx::query_scalar::<_, i64>(opsloop::api::metrics::STORE_ROWS)
            .bind(json!(rows))
            .fetch_one(pool)
            .await?;
        let ingest = t.elapsed();
        let t = Instant::now();
        let (mut read, mut judged_series) = (0, 0);
        loop {
            let r = live.judge_due(Utc::now()).await?;
            if r.series == 0 {
                break;
            }
            read += r.points_read;
            judged_series += r.series;
        }
        let sweep = t.elapsed();
        anyhow::ensure!(
            judged_series == series,
            "judged {judged_series} of {series} series"
        );
        let ratio = sweep.as_secs_f64() / insert.as_secs_f64();
        ratios.push(ratio);
        println!(
            "{:<8} {:>14.1} {:>14.1} {:>12.1} {:>12} {:>14.0}ms {:>11.1}x",
            minute - first_measured + 1,
            ms(insert),
            ms(ingest),
            ms(sweep),
            read,
            ms(sweep) * 10_000.0 / series as f64,
            ratio
        );
    }
    ratios.sort_by(f64::total_cmp);
    let detections: i64 = sqlx::query_scalar("SELECT count(*) FROM anomaly WHERE tenant = 'bench'")
        .fetch_one(pool)
        .await?;
    println!(
        "detector: median sweep / plain INSERT of the same rows = {:.1}x; detections on clean series: {detections}",
        ratios[ratios.len() / 2]
    );
    Ok(())
}
