//! The analyst's detector over `metric_1m` (issue #16, deliverable 4):
//! rows ingested through the API, a sweep judges only new minutes, a
//! detection goes through signal intake and opens one case by itself.

use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, Duration, Timelike, Utc};
use opsloop::analyst::intake::IntakeSettings;
use opsloop::analyst::rules::SignalsFile;
use opsloop::analyst::sweep::{DetectSettings, SweepReport, Sweeper, fingerprint};
use reqwest::Method;
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use crate::flow::Loop;
use crate::helpers::*;

fn this_minute() -> DateTime<Utc> {
    let now = Utc::now();
    now.with_second(0)
        .and_then(|t| t.with_nanosecond(0))
        .unwrap()
}

/// A latency of about 120 ms with a little deterministic noise.
fn healthy(i: i64) -> f64 {
    120.0 + ((i * 7919) % 23) as f64 / 23.0 * 8.0
}

/// Ingests `(minutes ago, value)` rows of one series through the API.
async fn ingest(app: &TestApp, tenant: &str, resource: &str, metric: &str, rows: &[(i64, f64)]) {
    let now = this_minute();
    for chunk in rows.chunks(5000) {
        let rows: Vec<Value> = chunk
            .iter()
            .map(|(ago, v)| {
                json!({"tenant": tenant, "resource": resource, "metric": metric,
                       "bucket": (now - Duration::minutes(*ago)).to_rfc3339(),
                       "avg": v, "max": v * 1.1})
            })
            .collect();
        let r = app
            .send(
                Method::POST,
                "/metrics/ingest",
                Some(SERVICE),
                &[],
                Some(json!({ "rows": rows }).to_string()),
            )
            .await;
        assert_eq!(r.status, 202, "{:?}", r.body);
    }
}

fn sweeper(app: &TestApp, signals: SignalsFile) -> Sweeper {
    Sweeper {
        pool: app.pool.clone(),
        orchestrator: app.orchestrator.clone(),
        intake: Arc::new(IntakeSettings {
            signals: Arc::new(signals),
            ..IntakeSettings::default()
        }),
        settings: DetectSettings {
            max_age_min: 60,
            ..DetectSettings::default()
        },
    }
}

fn shipped() -> SignalsFile {
    SignalsFile::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("config/signals.toml")).unwrap()
}

/// A day and a half of healthy latency, then `bad` minutes at 900 ms
/// ending `ends_ago` minutes ago.
fn regression(bad: i64, ends_ago: i64) -> Vec<(i64, f64)> {
    let start = ends_ago + bad + 36 * 60;
    (ends_ago..=start)
        .rev()
        .map(|ago| {
            let v = if ago < ends_ago + bad {
                900.0
            } else {
                healthy(ago)
            };
            (ago, v)
        })
        .collect()
}

async fn anomalies(
    app: &TestApp,
    resource: &str,
) -> Vec<(String, String, Option<Uuid>, Option<String>)> {
    sqlx::query_as(
        "SELECT rule, status, case_id, outcome FROM anomaly WHERE resource = $1 ORDER BY minute",
    )
    .bind(resource)
    .fetch_all(&app.pool)
    .await
    .unwrap()
}

#[sqlx::test]
async fn a_regression_opens_one_case_by_itself_and_its_end_dismisses_it(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let svc = service();
    let sweep = sweeper(&app, shipped());
    ingest(&app, "acme", &svc, "latency_p95_ms", &regression(6, 34)).await;

    let r = sweep.sweep().await.unwrap();
    assert_eq!((r.series, r.detections, r.taken), (1, 1, 1), "{r:?}");
    let found = anomalies(&app, &svc).await;
    assert_eq!(found.len(), 1, "{found:?}");
    let (rule, status, case, outcome) = &found[0];
    assert_eq!(
        (rule.as_str(), status.as_str(), outcome.as_deref()),
        ("latency", "firing", Some("accepted"))
    );
    let case = case.expect("the detection went to a case");
    let (kind, severity, labels, tenant): (String, String, Value, String) =
        sqlx::query_as("SELECT kind, severity, labels, tenant FROM ops_case WHERE id = $1")
            .bind(case)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(
        (kind.as_str(), severity.as_str(), tenant.as_str()),
        ("servicedegraded", "medium", "acme")
    );
    assert_eq!(labels["service"], svc.as_str(), "{labels}");
    assert_eq!(labels["metric"], "latency_p95_ms");
    // Medium starts by itself (the default intake policy), as the analyst.
    assert_eq!(app.status(case).await, "ANALYZING");
    let starter: String = sqlx::query_scalar(
        "SELECT actor FROM case_timeline WHERE case_id = $1 AND event = 'start_analysis'",
    )
    .bind(case)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(starter, "analyst");
    let (source, fp): (String, String) =
        sqlx::query_as("SELECT source, fingerprint FROM signal WHERE case_id = $1")
            .bind(case)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(source, "detector");
    assert_eq!(fp, fingerprint("acme", &svc, "latency_p95_ms", "latency"));
    assert!(
        app.outbox_subjects(case)
            .await
            .iter()
            .any(|s| s == "evt.case.created.v1")
    );

    // Nothing new: nothing judged again.
    assert_eq!(sweep.sweep().await.unwrap(), SweepReport::default());
    // The regression goes on: the same episode, no second case.
    ingest(
        &app,
        "acme",
        &svc,
        "latency_p95_ms",
        &[(33, 910.0), (32, 905.0)],
    )
    .await;
    let r = sweep.sweep().await.unwrap();
    assert_eq!((r.series, r.minutes, r.detections), (1, 2, 0), "{r:?}");
    // Back to normal for 31 minutes: the episode ends, the resolution
    // dismisses the case (it never reached the gate).
    let back: Vec<(i64, f64)> = (0..=31).rev().map(|ago| (ago, healthy(ago))).collect();
    ingest(&app, "acme", &svc, "latency_p95_ms", &back).await;
    let r = sweep.sweep().await.unwrap();
    assert_eq!((r.detections, r.taken), (1, 1), "{r:?}");
    let found = anomalies(&app, &svc).await;
    assert_eq!(found[1].1, "resolved");
    assert_eq!(found[1].2, Some(case));
    assert_eq!(app.status(case).await, "CLOSED");
    let cases: i64 =
        sqlx::query_scalar("SELECT count(DISTINCT case_id) FROM signal WHERE fingerprint = $1")
            .bind(&fp)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(cases, 1);
}

#[sqlx::test]
async fn an_slo_burning_fast_pages_through_the_burn_rate_rule(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let svc = service();
    let sweep = sweeper(&app, shipped());
    let before = app
        .metric("anomalies_detected_total{rule=\"slo-burn-fast\"}")
        .await;
    // 2 % errors for an hour and ten minutes: 20x the budget of 99.9 %.
    let rows: Vec<(i64, f64)> = (6..76).rev().map(|ago| (ago, 0.02)).collect();
    ingest(&app, "acme", &svc, "error_ratio", &rows).await;
    let r = sweep.sweep().await.unwrap();
    // The fast rule fires once its hour is half covered; the slow one
    // (6 h) has too little history; the baseline rule is warming up.
    assert_eq!(r.detections, 1, "{r:?}");
    let found = anomalies(&app, &svc).await;
    assert_eq!(found[0].0, "slo-burn-fast");
    let case = found[0].2.unwrap();
    let (kind, severity): (String, String) =
        sqlx::query_as("SELECT kind, severity FROM ops_case WHERE id = $1")
            .bind(case)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(
        (kind.as_str(), severity.as_str()),
        ("sloburnrate", "critical")
    );
    let figures: Value = sqlx::query_scalar("SELECT figures FROM anomaly WHERE case_id = $1")
        .bind(case)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let burn = figures["long_burn"].as_f64().unwrap();
    assert!((burn - 20.0).abs() < 1e-6, "{figures}");
    assert_eq!(
        app.metric("anomalies_detected_total{rule=\"slo-burn-fast\"}")
            .await,
        before + 1.0
    );
    assert_eq!(app.status(case).await, "ANALYZING");
    // Errors stop: within minutes the short window drops under the factor
    // (the long one still burns), the alert resolves, the case is dismissed.
    let rows: Vec<(i64, f64)> = (0..6).rev().map(|ago| (ago, 0.0)).collect();
    ingest(&app, "acme", &svc, "error_ratio", &rows).await;
    let r = sweep.sweep().await.unwrap();
    assert_eq!(r.detections, 1, "{r:?}");
    let found = anomalies(&app, &svc).await;
    assert_eq!((found[1].1.as_str(), found[1].2), ("resolved", Some(case)));
    assert_eq!(app.status(case).await, "CLOSED");
}

#[sqlx::test]
async fn two_analysts_sweeping_at_once_judge_each_series_once(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let names: Vec<String> = (0..6).map(|_| service()).collect();
    for svc in &names {
        ingest(&app, "acme", svc, "latency_p95_ms", &regression(5, 0)).await;
    }
    let mut one = sweeper(&app, shipped());
    let mut two = sweeper(&app, shipped());
    // Small batches, so both have work at the same time.
    one.settings.batch = 2;
    two.settings.batch = 2;
    let mut judged = 0;
    let mut detections = 0;
    for _ in 0..3 {
        let (a, b) = tokio::join!(one.sweep(), two.sweep());
        let (a, b) = (a.unwrap(), b.unwrap());
        judged += a.series + b.series;
        detections += a.detections + b.detections;
    }
    assert_eq!(judged, names.len());
    assert_eq!(detections, names.len());
    let cases: i64 =
        sqlx::query_scalar("SELECT count(DISTINCT case_id) FROM anomaly WHERE resource = ANY($1)")
            .bind(&names)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(cases, names.len() as i64);
}

#[sqlx::test]
async fn a_tenants_intake_policy_decides_what_starts_by_itself(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let mut signals = shipped();
    signals.intake = toml::from_str("[tenants.acme]\nautostart = ['critical']").unwrap();
    let sweep = sweeper(&app, signals);
    let (quiet, other) = (service(), service());
    ingest(&app, "acme", &quiet, "latency_p95_ms", &regression(5, 0)).await;
    ingest(&app, "t", &other, "latency_p95_ms", &regression(5, 0)).await;
    sweep.sweep().await.unwrap();
    let acme = anomalies(&app, &quiet).await[0].2.unwrap();
    let t = anomalies(&app, &other).await[0].2.unwrap();
    // acme starts only critical cases; tenant t follows the default.
    assert_eq!(app.status(acme).await, "NEW");
    assert_eq!(app.status(t).await, "ANALYZING");
}

#[sqlx::test]
async fn an_old_backfill_is_history_not_a_page(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let svc = service();
    let sweep = sweeper(&app, shipped());
    // The regression ended three hours ago; everything since is healthy.
    ingest(&app, "acme", &svc, "latency_p95_ms", &regression(10, 180)).await;
    let after: Vec<(i64, f64)> = (0..180).rev().map(|ago| (ago, healthy(ago))).collect();
    ingest(&app, "acme", &svc, "latency_p95_ms", &after).await;
    let r = sweep.sweep().await.unwrap();
    assert!(r.minutes > 2000, "{r:?}");
    assert_eq!(r.detections, 0, "{r:?}");
    assert!(anomalies(&app, &svc).await.is_empty());
}

/// The demo's third act as a test: a regression ingested, the detector
/// opens the case, and the whole loop runs it to CLOSED on recovered
/// figures, with the detector's view in the findings.
#[sqlx::test]
async fn a_detected_case_runs_the_whole_loop(pool: PgPool) {
    let lp = Loop::full(pool).await;
    let app = &lp.app;
    let svc = service();
    let sweep = sweeper(app, shipped());
    let mut rows = regression(6, 3);
    rows.extend((0..3).rev().map(|ago| (ago, healthy(ago))));
    ingest(app, "t-001", &svc, "latency_p95_ms", &rows).await;
    let r = sweep.sweep().await.unwrap();
    assert_eq!(r.taken, 1, "{r:?}");
    let case = anomalies(app, &svc).await[0].2.unwrap();
    lp.settle().await;
    lp.approve(case).await;
    lp.settle().await;
    assert_eq!(
        app.status(case).await,
        "CLOSED",
        "{:?}",
        app.park_reason(case).await
    );
    let findings: Value = sqlx::query_scalar(
        "SELECT e.data FROM evidence_link l JOIN event_envelope e ON e.id = l.envelope_id \
         WHERE l.case_id = $1 AND l.role = 'findings'",
    )
    .bind(case)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    let latency = &findings["metrics"]["latency_p95_ms"];
    assert!(latency["baseline"].as_f64().unwrap() < 130.0, "{findings}");
    assert!(latency["scale"].as_f64().unwrap() > 0.0, "{findings}");
    let anomaly = &findings["anomalies"][0];
    assert_eq!(anomaly["rule"], "latency", "{findings}");
    assert_eq!(anomaly["case_id"], case.to_string());
    assert!(
        anomaly["figures"]["deviation"].as_f64().unwrap() > 3.0,
        "{findings}"
    );
    assert_eq!(
        findings["signals"][0]["type"], "signal.detector",
        "{findings}"
    );
}

/// An episode that begins and ends within one sweep: both detections are
/// taken, the firing one first (it opens the case, the resolution then
/// dismisses it), and taking them never waits on itself (the resolution's
/// dismissal locks the case the firing detection was marked against).
#[sqlx::test]
async fn an_episode_within_one_sweep_opens_and_resolves_in_order(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let svc = service();
    let sweep = sweeper(&app, shipped());
    let mut rows: Vec<(i64, f64)> = (6..76).rev().map(|ago| (ago, 0.02)).collect();
    rows.extend((0..6).rev().map(|ago| (ago, 0.0)));
    ingest(&app, "acme", &svc, "error_ratio", &rows).await;
    let r = tokio::time::timeout(std::time::Duration::from_secs(30), sweep.sweep())
        .await
        .expect("the sweep finishes")
        .unwrap();
    assert_eq!((r.detections, r.taken), (2, 2), "{r:?}");
    let found = anomalies(&app, &svc).await;
    let outcomes: Vec<(&str, Option<&str>)> = found
        .iter()
        .map(|a| (a.1.as_str(), a.3.as_deref()))
        .collect();
    assert_eq!(
        outcomes,
        [
            ("firing", Some("accepted")),
            ("resolved", Some("deduplicated"))
        ]
    );
    let case = found[0].2.unwrap();
    assert_eq!(found[1].2, Some(case));
    assert_eq!(app.status(case).await, "CLOSED");
}
