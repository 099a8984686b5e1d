//! The analysis step: consumes `cmd.analysis.run`, gathers the evidence we
//! hold for the case (recent `metric_1m` rows of its resource with the
//! detector's baseline and deviation, the signals linked to it, other open
//! cases' alerts and the detector's detections of the tenant), stores the findings as an `event_envelope` linked to the
//! case, and reports `evt.analysis.findings.v1` (the orchestrator applies
//! it as `analysis_done`; the planner shows the findings to the LLM).
//!
//! Deterministic: a summary of figures, no model involved.

pub mod detect;
pub mod intake;
pub mod rules;
pub mod sweep;

use std::collections::BTreeMap;

use serde_json::{Value, json};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::contract::fact::{
    AnomalyRef, CorrelatedSignal, EVT_FINDINGS, Findings, FindingsReport, MetricSummary, SignalRef,
};
use crate::contract::{CommandMsg, Fact, Message};
use crate::model::Case;
use crate::pubsub::consumer::Delivery;
use crate::verifier::resource_of;
use crate::worker::{CaseWorker, WorkError};
use crate::workflow::Status;

pub const CONSUMER: &str = "analyst";
/// How far back the metrics of the resource are read.
const LOOKBACK_MINUTES: i32 = 30;

/// (metric, avg, max, p95) of one minute.
type MetricPoint = (String, f64, f64, Option<f64>);

/// The analysis step; run it with `worker::Runner`.
pub struct Analyst;

impl CaseWorker for Analyst {
    type Prepared = ();

    fn name(&self) -> &'static str {
        CONSUMER
    }

    fn accepts(&self, cmd: &CommandMsg) -> bool {
        matches!(cmd, CommandMsg::RunAnalysis(_))
    }

    async fn prepare(&self, _: &Message<CommandMsg>, _: &Delivery) -> Result<(), WorkError> {
        Ok(())
    }

    fn applies(&self, _: &Message<CommandMsg>, case: &Case) -> bool {
        case.status == Status::Analyzing
    }

    async fn apply(
        &self,
        tx: &mut PgConnection,
        _: &Message<CommandMsg>,
        case: &Case,
        (): (),
    ) -> Result<Vec<Fact>, WorkError> {
        let case_id = case.id;
        let resource = resource_of(case);
        let rows: Vec<MetricPoint> = match &resource {
            Some(r) => sqlx::query_as(
                "SELECT metric, avg, max, p95 FROM metric_1m WHERE tenant = $3 AND resource = $1 \
                     AND ts > now() - make_interval(mins => $2) ORDER BY metric, ts",
            )
            .bind(r)
            .bind(LOOKBACK_MINUTES)
            .bind(case.tenant.as_str())
            .fetch_all(&mut *tx)
            .await?,
            None => Vec::new(),
        };
        let mut metrics: BTreeMap<String, Vec<(f64, f64, Option<f64>)>> = BTreeMap::new();
        for (metric, avg, max, p95) in &rows {
            metrics
                .entry(metric.clone())
                .or_default()
                .push((*avg, *max, *p95));
        }
        // The detector's last view of each series of the resource.
        let shapes: BTreeMap<String, (f64, f64, f64)> = match &resource {
            Some(r) => sqlx::query_as::<_, (String, f64, f64, f64)>(
                "SELECT metric, value, baseline, scale FROM detector_state \
                 WHERE tenant = $1 AND resource = $2 AND scale > 0",
            )
            .bind(case.tenant.as_str())
            .bind(r)
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .map(|(m, v, b, s)| (m, (v, b, s)))
            .collect(),
            None => BTreeMap::new(),
        };
        let metrics: BTreeMap<String, MetricSummary> = metrics
            .into_iter()
            .map(|(name, points)| {
                let n = points.len() as f64;
                let shape = shapes.get(&name);
                let summary = MetricSummary {
                    minutes: points.len(),
                    last_avg: points.last().map(|p| p.0),
                    mean_avg: points.iter().map(|p| p.0).sum::<f64>() / n,
                    peak: points.iter().map(|p| p.1).fold(f64::MIN, f64::max),
                    baseline: shape.map(|s| s.1),
                    scale: shape.map(|s| s.2),
                    deviation: shape.map(|s| (s.0 - s.1) / s.2),
                };
                (name, summary)
            })
            .collect();
        let anomalies: Vec<AnomalyRef> = sqlx::query_as(
            "SELECT resource, metric, rule, status, minute, figures, case_id FROM anomaly \
             WHERE tenant = $1 AND (case_id = $2 OR detected_at > now() - make_interval(mins => $3)) \
             ORDER BY detected_at DESC LIMIT 20",
        )
        .bind(case.tenant.as_str())
        .bind(case_id)
        .bind(LOOKBACK_MINUTES)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .map(
            |(resource, metric, rule, status, minute, figures, case_id)| AnomalyRef {
                resource,
                metric,
                rule,
                status,
                minute,
                figures,
                case_id,
            },
        )
        .collect();
        let signals: Vec<(Uuid, String, Value)> = sqlx::query_as(
            "SELECT e.id, e.type, e.data FROM evidence_link l JOIN event_envelope e ON e.id = l.envelope_id \
             WHERE l.case_id = $1 AND l.role = 'signal' ORDER BY e.at DESC LIMIT 20",
        )
        .bind(case_id)
        .fetch_all(&mut *tx)
        .await?;
        // Alerts of other open cases of the tenant, active within the
        // window around this case's own: what else is burning.
        let correlated: Vec<CorrelatedSignal> = sqlx::query_as(
            "SELECT o.case_id, o.fingerprint, c.labels->>'alertname', o.status, o.notifications, \
                    o.last_at \
             FROM signal o JOIN ops_case c ON c.id = o.case_id \
             WHERE o.tenant = $2 AND o.case_id <> $1 AND c.status <> 'CLOSED' \
               AND o.last_at > now() - make_interval(mins => $3) \
             ORDER BY o.last_at DESC LIMIT 20",
        )
        .bind(case_id)
        .bind(case.tenant.as_str())
        .bind(LOOKBACK_MINUTES)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .map(
            |(case_id, fingerprint, alertname, status, notifications, last_at)| CorrelatedSignal {
                case_id,
                fingerprint,
                alertname,
                status,
                notifications,
                last_at,
            },
        )
        .collect();
        let summary = match (&resource, metrics.is_empty()) {
            (None, _) => "the case names no resource; no metrics gathered".to_string(),
            (Some(r), true) => format!("no metrics for {r} in the last {LOOKBACK_MINUTES} minutes"),
            (Some(r), false) => format!(
                "{} metric(s) of {r} over the last {LOOKBACK_MINUTES} minutes",
                metrics.len()
            ),
        };
        let findings = FindingsReport {
            resource,
            summary: summary.clone(),
            metrics,
            signals: signals
                .into_iter()
                .map(|(id, kind, data)| SignalRef { id, kind, data })
                .collect(),
            correlated,
            anomalies,
        };
        let envelope_id = Uuid::now_v7();
        sqlx::query("INSERT INTO event_envelope (id, type, source, data) VALUES ($1, $2, $3, $4)")
            .bind(envelope_id)
            .bind(EVT_FINDINGS)
            .bind(CONSUMER)
            .bind(json!(findings))
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO evidence_link (case_id, envelope_id, role) VALUES ($1, $2, 'findings')",
        )
        .bind(case_id)
        .bind(envelope_id)
        .execute(&mut *tx)
        .await?;
        tracing::info!(case.id = %case.id, summary = %summary, "Findings recorded.");
        Ok(vec![Fact::Findings(Findings {
            evidence_id: envelope_id,
            findings,
        })])
    }
}
