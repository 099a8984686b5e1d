//! The verifier with Prometheus as its source. A fake Prometheus (a real HTTP
//! server on loopback speaking `GET /api/v1/query`, keeping every query it
//! received) answers the checks the operator's queries file names; the case
//! goes through the real loop (`Loop::full_with_verify`, every role consuming
//! its commands from NATS): analyst → restart-service template → gate →
//! execution (scripts/actions/restart-service.sh) → VERIFYING, judged by a
//! Prometheus-backed verifier → CLOSED or PARKED.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::{DateTime, Utc};
use opsloop::verifier::prometheus::Prometheus;
use opsloop::verifier::{Check, Verdict, Verifier, VerifySettings};
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use crate::flow::Loop;
use crate::helpers::*;
use crate::walking_skeleton::{ingest_metric, statuses};

/// The shipped restart-service template checks `latency_p95_ms` (avg) < 300
/// over 60 s.
const LATENCY: &str = "histogram_quantile(0.95, sum by (le) (rate(http_request_duration_seconds_bucket{service=\"{{resource}}\"}[{{window}}]))) * 1000";

fn latency_query(service: &str, window: &str) -> String {
    LATENCY
        .replace("{{resource}}", service)
        .replace("{{window}}", window)
}

/// What the fake answers to every query.
#[derive(Debug, Clone)]
enum Answer {
    /// One series, `{"job": "fake"}`, with this value.
    Value(&'static str),
    /// A vector without series.
    Empty,
    /// This status with a plain-text body, as a proxy in front would send.
    Status(u16),
    /// A Prometheus API error: HTTP 422, `errorType` execution.
    Error(&'static str),
    /// No answer for this long, then a value.
    Hang(Duration),
}

struct Fake {
    answer: Answer,
    /// (query, time) of each request.
    received: Vec<(String, String)>,
}

struct FakePrometheus {
    server: TestServer,
    state: Arc<Mutex<Fake>>,
}

impl FakePrometheus {
    async fn start(answer: Answer) -> FakePrometheus {
        let state = Arc::new(Mutex::new(Fake {
            answer,
            received: Vec::new(),
        }));
        let app = axum::Router::new()
            .route("/api/v1/query", get(instant_query))
            .with_state(state.clone());
        FakePrometheus {
            server: TestServer::start(app).await,
            state,
        }
    }

    fn received(&self) -> Vec<(String, String)> {
        self.state.lock().unwrap().received.clone()
    }

    fn queries(&self) -> Vec<String> {
        self.received().into_iter().map(|(q, _)| q).collect()
    }
}

async fn instant_query(
    State(state): State<Arc<Mutex<Fake>>>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let (Some(query), Some(time)) = (params.get("query"), params.get("time")) else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"status": "error", "errorType": "bad_data", "error": "query and time expected"})),
        )
            .into_response();
    };
    let answer = {
        let mut s = state.lock().unwrap();
        s.received.push((query.clone(), time.clone()));
        s.answer.clone()
    };
    let at: f64 = time.parse().unwrap_or(0.0);
    let vector = |result: Value| {
        Json(json!({"status": "success", "data": {"resultType": "vector", "result": result}}))
            .into_response()
    };
    match answer {
        Answer::Value(v) => vector(json!([{"metric": {"job": "fake"}, "value": [at, v]}])),
        Answer::Empty => vector(json!([])),
        Answer::Status(code) => (
            StatusCode::from_u16(code).unwrap(),
            "internal server error\n",
        )
            .into_response(),
        Answer::Error(error) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({"status": "error", "errorType": "execution", "error": error})),
        )
            .into_response(),
        Answer::Hang(d) => {
            tokio::time::sleep(d).await;
            vector(json!([{"metric": {"job": "fake"}, "value": [at, "1"]}]))
        }
    }
}

/// A queries file in the temp dir, removed on drop.
struct QueriesFile(PathBuf);

impl QueriesFile {
    fn new(text: &str) -> QueriesFile {
        let path = std::env::temp_dir().join(format!("opsloop-promql-{}.toml", Uuid::new_v4()));
        std::fs::write(&path, text).unwrap();
        QueriesFile(path)
    }

    /// The restart-service template's check, and one for another metric.
    fn latency() -> QueriesFile {
        QueriesFile::new(&format!(
            "[latency_p95_ms]\navg = '{LATENCY}'\n[error_rate]\navg = 'sum(rate(http_requests_total{{service=\"{{{{resource}}}}\",code=~\"5..\"}}[{{{{window}}}}]))'\n"
        ))
    }
}

impl Drop for QueriesFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn settings(url: &str, queries: &QueriesFile, timeout_ms: u64) -> VerifySettings {
    VerifySettings {
        delay_s: 0,
        min_coverage: 0.5,
        prometheus_url: Some(url.to_string()),
        prometheus_queries: Some(queries.0.clone()),
        prometheus_timeout_ms: timeout_ms,
    }
}

/// A degraded-service case for a fresh service (the restart-service
/// template matches it), opened and put to analysis: the analyst role does
/// the rest once the loop settles.
async fn degraded_case(lp: &Loop) -> (String, Uuid) {
    let svc = service();
    let case = crate::walking_skeleton::degraded_case(lp, &svc).await;
    (svc, case)
}

/// The path every case here takes up to its verdict (`end`).
fn path_to(end: &str) -> Vec<String> {
    [
        "ANALYZING",
        "PLANNING",
        "WAIT_GATE",
        "WAIT_GATE",
        "EXECUTING",
        "VERIFYING",
        end,
    ]
    .map(String::from)
    .to_vec()
}

/// (outcome, checks, window_to) of the case's verification.
async fn verify_result(lp: &Loop, case: Uuid) -> (String, Value, DateTime<Utc>) {
    sqlx::query_as("SELECT outcome, checks, window_to FROM verify_result WHERE case_id = $1")
        .bind(case)
        .fetch_one(&lp.app.pool)
        .await
        .unwrap()
}

/// What one loop test holds: the fake, the queries file (removed on drop),
/// the loop, and its degraded-service case.
struct Run {
    prom: FakePrometheus,
    _queries: QueriesFile,
    lp: Loop,
    svc: String,
    case: Uuid,
}

/// A loop whose verifier asks a fake Prometheus answering `answer`, with
/// the latency queries file, and a fresh degraded-service case in it.
async fn run(pool: PgPool, answer: Answer) -> Run {
    run_with(pool, answer, QueriesFile::latency()).await
}

async fn run_with(pool: PgPool, answer: Answer, queries: QueriesFile) -> Run {
    let prom = FakePrometheus::start(answer).await;
    let lp = Loop::full_with_verify(pool, settings(&prom.server.url, &queries, 5000)).await;
    let (svc, case) = degraded_case(&lp).await;
    Run {
        prom,
        _queries: queries,
        lp,
        svc,
        case,
    }
}

/// Lets the loop settle, checks that the case took the path to `end`, and
/// returns its verification.
async fn settled(lp: &Loop, case: Uuid, end: &str) -> (String, Value, DateTime<Utc>) {
    lp.settle().await;
    assert_eq!(lp.app.status(case).await, end);
    assert_eq!(statuses(lp, case).await, path_to(end));
    verify_result(lp, case).await
}

#[sqlx::test]
async fn a_figure_under_the_threshold_closes_the_case(pool: PgPool) {
    let Run {
        prom,
        _queries,
        lp,
        svc,
        case,
    } = run(pool, Answer::Value("120.5")).await;

    let (outcome, checks, window_to) = settled(&lp, case, "CLOSED").await;
    let expected = latency_query(&svc, "60s");
    assert_eq!(prom.queries(), std::slice::from_ref(&expected));
    assert_eq!(outcome, "pass");
    let check = &checks[0];
    assert_eq!(check["verdict"], "pass");
    assert_eq!(check["resource"], svc.as_str());
    let detail = &check["detail"];
    assert_eq!(detail["source"], "prometheus");
    assert_eq!(detail["query"], expected.as_str());
    assert!(
        detail["query"]
            .as_str()
            .unwrap()
            .contains(&format!("service=\"{svc}\"}}[60s]"))
    );
    assert_eq!(detail["figure"], 120.5);
    assert_eq!(detail["series"], json!({"job": "fake"}));
    // Evaluated at the window's end.
    let (_, time) = &prom.received()[0];
    let sent: f64 = time.parse().unwrap();
    let end = window_to.timestamp_micros() as f64 / 1e6;
    assert!(
        (sent - end).abs() < 0.002,
        "time={time}, window_to={window_to}"
    );
    assert_eq!(detail["time"], time.as_str());
}

#[sqlx::test]
async fn a_figure_over_the_threshold_parks_with_breach(pool: PgPool) {
    let Run {
        prom,
        _queries,
        lp,
        svc,
        case,
    } = run(pool, Answer::Value("950")).await;

    let (outcome, checks, _) = settled(&lp, case, "PARKED").await;
    assert_eq!(lp.app.park_reason(case).await, "breach");
    assert_eq!(outcome, "breach");
    assert_eq!(checks[0]["detail"]["figure"], 950.0);
    assert_eq!(checks[0]["detail"]["source"], "prometheus");
    assert_eq!(prom.queries(), [latency_query(&svc, "60s")]);
}

#[sqlx::test]
async fn an_empty_answer_parks_with_no_data(pool: PgPool) {
    let Run {
        prom,
        _queries,
        lp,
        svc: _,
        case,
    } = run(pool, Answer::Empty).await;

    let (outcome, checks, _) = settled(&lp, case, "PARKED").await;
    assert_eq!(lp.app.park_reason(case).await, "no_data");
    assert_eq!(outcome, "no_data");
    let why = checks[0]["detail"]["why"].as_str().unwrap();
    assert!(why.contains("no series"), "{why}");
    assert_eq!(prom.queries().len(), 1);
}

#[sqlx::test]
async fn a_server_error_parks_inconclusive(pool: PgPool) {
    let Run {
        prom: _prom,
        _queries,
        lp,
        svc,
        case,
    } = run(pool, Answer::Status(500)).await;

    let (outcome, checks, _) = settled(&lp, case, "PARKED").await;
    assert_eq!(lp.app.park_reason(case).await, "inconclusive");
    assert_eq!(outcome, "inconclusive");
    let detail = &checks[0]["detail"];
    let why = detail["why"].as_str().unwrap();
    assert!(why.contains("HTTP 500"), "{why}");
    assert_eq!(detail["query"], latency_query(&svc, "60s").as_str());
}

#[sqlx::test]
async fn a_prometheus_error_status_parks_inconclusive(pool: PgPool) {
    let Run {
        prom: _prom,
        _queries,
        lp,
        svc: _,
        case,
    } = run(
        pool,
        Answer::Error("query processing would load too many samples into memory"),
    )
    .await;

    let (_, checks, _) = settled(&lp, case, "PARKED").await;
    assert_eq!(lp.app.park_reason(case).await, "inconclusive");
    let why = checks[0]["detail"]["why"].as_str().unwrap();
    assert!(
        why.contains("execution") && why.contains("too many samples"),
        "{why}"
    );
}

#[sqlx::test]
async fn a_check_without_a_query_is_judged_from_metric_1m(pool: PgPool) {
    // Only error_rate has a query: the template's latency check is not
    // Prometheus's.
    let queries = QueriesFile::new(
        "[error_rate]\navg = 'sum(rate(http_requests_total{service=\"{{resource}}\"}[{{window}}]))'\n",
    );
    let Run {
        prom,
        _queries,
        lp,
        svc,
        case,
    } = run_with(pool, Answer::Value("950"), queries).await;
    ingest_metric(&lp, &svc, "latency_p95_ms", 120.0).await;

    let (outcome, checks, _) = settled(&lp, case, "CLOSED").await;
    assert!(prom.queries().is_empty(), "{:?}", prom.queries());
    assert_eq!(outcome, "pass");
    assert_eq!(checks[0]["detail"]["source"], "metric_1m");
    assert_eq!(checks[0]["detail"]["figure"], 120.0);
}

fn check(resource: &str) -> Check {
    Check {
        resource: resource.into(),
        metric: "latency_p95_ms".into(),
        stat: opsloop::contract::plan::Stat::Avg,
        op: opsloop::contract::plan::Op::Lt,
        threshold: 300.0,
        window_s: 300,
    }
}

async fn prometheus(url: &str, queries: &QueriesFile, timeout_ms: u64) -> Prometheus {
    Prometheus::from_settings(&settings(url, queries, timeout_ms))
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn a_resource_that_could_inject_promql_is_never_sent() {
    let prom = FakePrometheus::start(Answer::Value("1")).await;
    let queries = QueriesFile::latency();
    let p = prometheus(&prom.server.url, &queries, 5000).await;
    for resource in ["x\"} or vector(1) #", "x\"}", "a b", ""] {
        let c = check(resource);
        let template = p.template_for(&c).unwrap();
        let (verdict, detail) = p
            .evaluate(
                &c,
                &"t-001".to_string().try_into().unwrap(),
                template,
                Utc::now(),
            )
            .await;
        assert_eq!(verdict, Verdict::Inconclusive, "{resource:?}");
        assert_eq!(detail["source"], "prometheus");
        let why = detail["why"].as_str().unwrap();
        assert!(why.contains("resource"), "{resource:?}: {why}");
    }
    assert!(prom.queries().is_empty(), "{:?}", prom.queries());
    // The same check with a plain resource is sent.
    let c = check("checkout");
    let (verdict, _) = p
        .evaluate(
            &c,
            &"t-001".to_string().try_into().unwrap(),
            p.template_for(&c).unwrap(),
            Utc::now(),
        )
        .await;
    assert_eq!(verdict, Verdict::Pass);
    assert_eq!(prom.queries(), [latency_query("checkout", "300s")]);
}

#[tokio::test]
async fn a_silent_or_absent_server_is_inconclusive() {
    let prom = FakePrometheus::start(Answer::Hang(Duration::from_secs(5))).await;
    let queries = QueriesFile::latency();
    let p = prometheus(&prom.server.url, &queries, 200).await;
    let c = check("checkout");
    let started = std::time::Instant::now();
    let (verdict, detail) = p
        .evaluate(
            &c,
            &"t-001".to_string().try_into().unwrap(),
            p.template_for(&c).unwrap(),
            Utc::now(),
        )
        .await;
    assert_eq!(verdict, Verdict::Inconclusive);
    assert!(started.elapsed() < Duration::from_secs(3));
    let why = detail["why"].as_str().unwrap();
    assert!(why.contains("no answer within 200 ms"), "{why}");

    // Nobody listens there.
    let p = prometheus("http://127.0.0.1:1", &queries, 1000).await;
    let (verdict, detail) = p
        .evaluate(
            &c,
            &"t-001".to_string().try_into().unwrap(),
            p.template_for(&c).unwrap(),
            Utc::now(),
        )
        .await;
    assert_eq!(verdict, Verdict::Inconclusive);
    let why = detail["why"].as_str().unwrap();
    assert!(why.contains("127.0.0.1:1"), "{why}");
}

#[tokio::test]
async fn a_bad_queries_file_stops_the_start_up() {
    let pool = PgPool::connect_lazy("postgres://127.0.0.1:1/unused").unwrap();
    let bad = QueriesFile::new("[latency_p95_ms]\navg = 'up{service=\"{{service}}\"}'\n");
    let e = Verifier::new(pool.clone(), settings("http://127.0.0.1:9090", &bad, 5000))
        .err()
        .expect("an unknown placeholder is refused");
    let text = e.to_string();
    assert!(
        text.contains("[latency_p95_ms] avg") && text.contains("unknown placeholder {{service}}"),
        "{text}"
    );
    let bad = QueriesFile::new("[latency_p95_ms\navg = 'up'\n");
    let e = Verifier::new(pool.clone(), settings("http://127.0.0.1:9090", &bad, 5000))
        .err()
        .expect("bad TOML is refused");
    assert!(e.to_string().contains("is not TOML"), "{e}");
    let good = QueriesFile::latency();
    assert!(Verifier::new(pool, settings("http://127.0.0.1:9090", &good, 5000)).is_ok());
}
