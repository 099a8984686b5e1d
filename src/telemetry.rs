//! Logs and metrics. Metric names, help texts and one function per metric
//! live here; call sites never spell a metric name. Labels stay
//! low-cardinality (never a case id).

use std::sync::OnceLock;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};
use tracing_subscriber::{EnvFilter, fmt, prelude::*};

struct Metrics {
    registry: Registry,
    case_transition: IntCounterVec,
    conflict: IntCounterVec,
    idempotent_replay: IntCounter,
    outbox_publish: IntCounterVec,
    outbox_lag: Histogram,
    outbox_backlog: IntGauge,
    inbox_dedup: IntCounterVec,
    consumer_released: IntCounterVec,
    transition_write: IntCounterVec,
    dead_letter: IntCounterVec,
    llm_request: HistogramVec,
    plan_validation_failures: IntCounterVec,
    adapter_step_latency: HistogramVec,
    verify_latency: Histogram,
    executions_in_flight: IntGauge,
    signals_received: IntCounterVec,
    signals_deduplicated: IntCounter,
    signal_intake: Histogram,
    anomalies_detected: IntCounterVec,
    detector_sweep: Histogram,
    chat_notifications: IntCounterVec,
    past_cases: IntCounterVec,
    plan_retrieval: IntCounterVec,
}

fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        let registry = Registry::new();
        let case_transition = IntCounterVec::new(
            Opts::new("case_transition_total", "Accepted case transitions."),
            &["from", "to", "event"],
        )
        .expect("valid metric");
        let conflict = IntCounterVec::new(
            Opts::new(
                "conflict_total",
                "Transition requests refused: illegal_transition, guard_failed, version_mismatch, idempotency_key_reuse.",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let idempotent_replay = IntCounter::new(
            "idempotent_replay_total",
            "Requests answered from a stored Idempotency-Key response.",
        )
        .expect("valid metric");
        let outbox_publish = IntCounterVec::new(
            Opts::new(
                "outbox_publish_total",
                "Outbox rows handed to JetStream: status ok, duplicate (de-duplicated by Nats-Msg-Id), failed (never publishable), error (retried).",
            ),
            &["topic", "status"],
        )
        .expect("valid metric");
        let outbox_lag = Histogram::with_opts(
            HistogramOpts::new(
                "outbox_lag_seconds",
                "From the outbox insert to its JetStream ack (insert age at the claim on the database clock, plus claim to ack on the relay's).",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
        )
        .expect("valid metric");
        let outbox_backlog = IntGauge::new(
            "outbox_backlog",
            "Outbox rows waiting to be published, as last seen by this relay.",
        )
        .expect("valid metric");
        let inbox_dedup = IntCounterVec::new(
            Opts::new(
                "inbox_dedup_total",
                "Messages a consumer had already applied (recognised by envelope id).",
            ),
            &["consumer"],
        )
        .expect("valid metric");
        let consumer_released = IntCounterVec::new(
            Opts::new(
                "consumer_released_total",
                "Messages a stopping process handed back unfinished (nak) when its grace period ended.",
            ),
            &["consumer"],
        )
        .expect("valid metric");
        let transition_write = IntCounterVec::new(
            Opts::new(
                "transition_write_total",
                "How transitions were written: `one_statement` (read, decide, one conditional write), `refused` (the case changed in between, or the request was a duplicate; then answered under the lock), `locked` (under the case lock from the start). Each request counts once.",
            ),
            &["path"],
        )
        .expect("valid metric");
        let dead_letter = IntCounterVec::new(
            Opts::new(
                "dead_letter_total",
                "Messages written to dead_letter and terminated.",
            ),
            &["consumer", "reason"],
        )
        .expect("valid metric");
        let seconds_buckets = vec![
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
        ];
        let llm_request = HistogramVec::new(
            HistogramOpts::new(
                "llm_request_seconds",
                "LLM planner requests by outcome: valid, invalid, timeout, http_error, garbage.",
            )
            .buckets(seconds_buckets.clone()),
            &["outcome"],
        )
        .expect("valid metric");
        let plan_validation_failures = IntCounterVec::new(
            Opts::new(
                "plan_validation_failures_total",
                "Plans refused by the schema or the completeness guard, by source.",
            ),
            &["source"],
        )
        .expect("valid metric");
        let adapter_step_latency = HistogramVec::new(
            HistogramOpts::new(
                "adapter_step_latency_seconds",
                "Executor step run time per adapter, each try included.",
            )
            .buckets(seconds_buckets.clone()),
            &["adapter"],
        )
        .expect("valid metric");
        let verify_latency = Histogram::with_opts(
            HistogramOpts::new(
                "verify_latency_seconds",
                "From a verify command's arrival to its stored result.",
            )
            .buckets(seconds_buckets),
        )
        .expect("valid metric");
        let executions_in_flight = IntGauge::new(
            "executions_in_flight",
            "Plan executions (or rollbacks) this process is running now.",
        )
        .expect("valid metric");
        let signals_received = IntCounterVec::new(
            Opts::new(
                "signals_received_total",
                "Alerts received, by source and outcome: accepted, deduplicated, ignored, refused.",
            ),
            &["source", "status"],
        )
        .expect("valid metric");
        let signals_deduplicated = IntCounter::new(
            "signals_deduplicated_total",
            "Alerts that joined the open case of their fingerprint instead of opening one.",
        )
        .expect("valid metric");
        let signal_intake = Histogram::with_opts(
            HistogramOpts::new(
                "signal_intake_seconds",
                "From a webhook's arrival to its answer, every alert committed.",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
        )
        .expect("valid metric");
        let anomalies_detected = IntCounterVec::new(
            Opts::new(
                "anomalies_detected_total",
                "Detections of the analyst's detector over metric_1m, by rule (firing only).",
            ),
            &["rule"],
        )
        .expect("valid metric");
        let detector_sweep = Histogram::with_opts(
            HistogramOpts::new(
                "detector_sweep_seconds",
                "One detector sweep: claiming due series, reading their windows, judging, storing.",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
        )
        .expect("valid metric");
        let chat_notifications = IntCounterVec::new(
            Opts::new(
                "chat_notifications_total",
                "Chat notifications by outcome: posted, retried (a failed try), failed (given up).",
            ),
            &["outcome"],
        )
        .expect("valid metric");
        let past_cases = IntCounterVec::new(
            Opts::new(
                "librarian_past_cases_total",
                "Past-case documents the librarian role stored for ended cases: written, or unchanged (the same text was there).",
            ),
            &["outcome"],
        )
        .expect("valid metric");
        let plan_retrieval = IntCounterVec::new(
            Opts::new(
                "planner_retrievals_total",
                "Librarian searches for the LLM planner's context: ok, or failed (the plan was asked for without passages).",
            ),
            &["outcome"],
        )
        .expect("valid metric");
        for c in [
            Box::new(case_transition.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(past_cases.clone()),
            Box::new(plan_retrieval.clone()),
            Box::new(chat_notifications.clone()),
            Box::new(anomalies_detected.clone()),
            Box::new(detector_sweep.clone()),
            Box::new(signal_intake.clone()),
            Box::new(signals_received.clone()),
            Box::new(signals_deduplicated.clone()),
            Box::new(conflict.clone()),
            Box::new(idempotent_replay.clone()),
            Box::new(outbox_publish.clone()),
            Box::new(outbox_lag.clone()),
            Box::new(outbox_backlog.clone()),
            Box::new(inbox_dedup.clone()),
            Box::new(consumer_released.clone()),
            Box::new(transition_write.clone()),
            Box::new(dead_letter.clone()),
            Box::new(llm_request.clone()),
            Box::new(plan_validation_failures.clone()),
            Box::new(adapter_step_latency.clone()),
            Box::new(verify_latency.clone()),
            Box::new(executions_in_flight.clone()),
        ] {
            registry.register(c).expect("metric registered once");
        }
        Metrics {
            registry,
            case_transition,
            conflict,
            idempotent_replay,
            outbox_publish,
            outbox_lag,
            outbox_backlog,
            inbox_dedup,
            consumer_released,
            transition_write,
            dead_letter,
            llm_request,
            plan_validation_failures,
            adapter_step_latency,
            verify_latency,
            executions_in_flight,
            signals_received,
            signals_deduplicated,
            signal_intake,
            anomalies_detected,
            detector_sweep,
            chat_notifications,
            past_cases,
            plan_retrieval,
        }
    })
}

pub fn chat_notification(outcome: &str) {
    metrics()
        .chat_notifications
        .with_label_values(&[outcome])
        .inc();
}

pub fn past_case_written(outcome: &str) {
    metrics().past_cases.with_label_values(&[outcome]).inc();
}

pub fn plan_retrieval(outcome: &str) {
    metrics().plan_retrieval.with_label_values(&[outcome]).inc();
}

pub fn signal_received(source: &str, status: &str) {
    metrics()
        .signals_received
        .with_label_values(&[source, status])
        .inc();
}

pub fn signal_intake(seconds: f64) {
    metrics().signal_intake.observe(seconds);
}

pub fn anomaly_detected(rule: &str) {
    metrics()
        .anomalies_detected
        .with_label_values(&[rule])
        .inc();
}

pub fn detector_sweep(seconds: f64) {
    metrics().detector_sweep.observe(seconds);
}

pub fn signal_deduplicated() {
    metrics().signals_deduplicated.inc();
}

pub fn case_transitioned(from: &str, to: &str, event: &str) {
    metrics()
        .case_transition
        .with_label_values(&[from, to, event])
        .inc();
}

pub fn conflict(reason: &str) {
    metrics().conflict.with_label_values(&[reason]).inc();
}

pub fn idempotent_replay() {
    metrics().idempotent_replay.inc();
}

pub fn outbox_published(topic: &str, status: &str) {
    metrics()
        .outbox_publish
        .with_label_values(&[topic, status])
        .inc();
}

pub fn llm_request(outcome: &str, seconds: f64) {
    metrics()
        .llm_request
        .with_label_values(&[outcome])
        .observe(seconds);
}

pub fn plan_validation_failed(source: &str) {
    metrics()
        .plan_validation_failures
        .with_label_values(&[source])
        .inc();
}

pub fn adapter_step(adapter: &str, seconds: f64) {
    metrics()
        .adapter_step_latency
        .with_label_values(&[adapter])
        .observe(seconds);
}

pub fn verify_latency(seconds: f64) {
    metrics().verify_latency.observe(seconds);
}

/// Counts an execution in flight until the returned guard drops.
pub fn execution_started() -> InFlight {
    metrics().executions_in_flight.inc();
    InFlight(())
}

pub struct InFlight(());

impl Drop for InFlight {
    fn drop(&mut self) {
        metrics().executions_in_flight.dec();
    }
}

pub fn outbox_lag(seconds: f64) {
    metrics().outbox_lag.observe(seconds);
}

pub fn outbox_backlog(rows: i64) {
    metrics().outbox_backlog.set(rows);
}

/// A consumer starts: its `inbox_dedup_total` series exists (at 0) from
/// now on, so a dashboard sees it before the first duplicate.
pub fn consumer_started(consumer: &str) {
    metrics().inbox_dedup.with_label_values(&[consumer]);
}

/// `path`: `one_statement`, `refused` or `locked`.
pub fn transition_write(path: &str) {
    metrics().transition_write.with_label_values(&[path]).inc();
}

pub fn consumer_released(consumer: &str) {
    metrics()
        .consumer_released
        .with_label_values(&[consumer])
        .inc();
}

pub fn inbox_dedup(consumer: &str) {
    metrics().inbox_dedup.with_label_values(&[consumer]).inc();
}

pub fn dead_letter(consumer: &str, reason: &str) {
    metrics()
        .dead_letter
        .with_label_values(&[consumer, reason])
        .inc();
}

/// Prometheus text exposition of every opsloop metric.
pub fn render() -> String {
    let mut buf = Vec::new();
    let families = metrics().registry.gather();
    if TextEncoder::new().encode(&families, &mut buf).is_err() {
        return String::new();
    }
    String::from_utf8(buf).unwrap_or_default()
}

/// Installs the global subscriber once: JSON lines unless `OPSLOOP_LOG_FORMAT=text`.
pub fn init(default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let text = std::env::var("OPSLOOP_LOG_FORMAT").is_ok_and(|v| v == "text");
    let registry = tracing_subscriber::registry().with(filter);
    let result = if text {
        registry
            .with(fmt::layer().with_writer(std::io::stderr))
            .try_init()
    } else {
        registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_writer(std::io::stderr),
            )
            .try_init()
    };
    // A second init (tests, benches) keeps the first subscriber.
    drop(result);
}

/// A W3C trace id: taken from an incoming `traceparent`, else fresh.
pub fn trace_id_from(traceparent: Option<&str>) -> String {
    traceparent
        .and_then(|tp| {
            let mut parts = tp.split('-');
            let (_version, trace) = (parts.next()?, parts.next()?);
            let ok = trace.len() == 32
                && trace.bytes().all(|b| b.is_ascii_hexdigit())
                && trace != "00000000000000000000000000000000";
            ok.then(|| trace.to_ascii_lowercase())
        })
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string())
}
