//! The analysis step: consumes `cmd.analysis.run`, gathers the evidence we
//! hold for the case (recent `metric_1m` rows of its resource, the signals
//! linked to it), stores the findings as an `event_envelope` linked to the
//! case, and reports `evt.analysis.findings.v1` (the orchestrator applies
//! it as `analysis_done`; the planner shows the findings to the LLM).
//!
//! Deterministic: a summary of figures, no model involved.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use crate::pubsub::consumer::{Delivery, Disposition, Handler};
use crate::pubsub::{Envelope, inbox, outbox, subjects};
use crate::verifier::resource_of;
use crate::workflow::Status;

pub const CONSUMER: &str = "analyst";
pub const EVT_FINDINGS: &str = "evt.analysis.findings.v1";
/// How far back the metrics of the resource are read.
const LOOKBACK_MINUTES: i32 = 30;

/// (metric, avg, max, p95) of one minute.
type MetricPoint = (String, f64, f64, Option<f64>);

pub struct Analyst {
    pub pool: PgPool,
}

impl Handler for Analyst {
    fn name(&self) -> &str {
        CONSUMER
    }

    async fn handle(&self, d: &Delivery) -> Disposition {
        let case_id = match d.case_command(subjects::CMD_ANALYSIS_RUN) {
            Ok(id) => id,
            Err(dead) => return dead,
        };
        self.analyse(&d.envelope, d, case_id)
            .await
            .unwrap_or_else(|e| Disposition::Retry(e.to_string()))
    }
}

impl Analyst {
    async fn analyse(
        &self,
        cmd: &Envelope,
        d: &Delivery,
        case_id: Uuid,
    ) -> Result<Disposition, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let case = match inbox::claim_case(&mut tx, CONSUMER, cmd.id, &d.subject, case_id).await? {
            Ok(case) => case,
            Err(nothing_to_do) => return Ok(nothing_to_do),
        };
        if case.status != Status::Analyzing {
            tx.commit().await?;
            return Ok(Disposition::Done);
        }
        let resource = resource_of(&case);
        let rows: Vec<MetricPoint> = match &resource {
            Some(r) => {
                sqlx::query_as(
                    "SELECT metric, avg, max, p95 FROM metric_1m WHERE resource = $1 \
                     AND ts > now() - make_interval(mins => $2) ORDER BY metric, ts",
                )
                .bind(r)
                .bind(LOOKBACK_MINUTES)
                .fetch_all(&mut *tx)
                .await?
            }
            None => Vec::new(),
        };
        let mut metrics: BTreeMap<String, Vec<(f64, f64, Option<f64>)>> = BTreeMap::new();
        for (metric, avg, max, p95) in &rows {
            metrics
                .entry(metric.clone())
                .or_default()
                .push((*avg, *max, *p95));
        }
        let metrics: BTreeMap<String, Value> = metrics
            .into_iter()
            .map(|(name, points)| {
                let n = points.len() as f64;
                let last = points.last().map(|p| p.0);
                let peak = points.iter().map(|p| p.1).fold(f64::MIN, f64::max);
                let mean = points.iter().map(|p| p.0).sum::<f64>() / n;
                (name, json!({"minutes": points.len(), "last_avg": last, "mean_avg": mean, "peak": peak}))
            })
            .collect();
        let signals: Vec<(Uuid, String, Value)> = sqlx::query_as(
            "SELECT e.id, e.type, e.data FROM evidence_link l JOIN event_envelope e ON e.id = l.envelope_id \
             WHERE l.case_id = $1 AND l.role = 'signal' ORDER BY e.at DESC LIMIT 20",
        )
        .bind(case_id)
        .fetch_all(&mut *tx)
        .await?;
        let summary = match (&resource, metrics.is_empty()) {
            (None, _) => "the case names no resource; no metrics gathered".to_string(),
            (Some(r), true) => format!("no metrics for {r} in the last {LOOKBACK_MINUTES} minutes"),
            (Some(r), false) => format!(
                "{} metric(s) of {r} over the last {LOOKBACK_MINUTES} minutes",
                metrics.len()
            ),
        };
        let findings = json!({
            "resource": resource,
            "summary": summary,
            "metrics": metrics,
            "signals": signals.iter().map(|(id, t, data)| json!({"id": id, "type": t, "data": data})).collect::<Vec<_>>(),
        });
        let envelope_id = Uuid::now_v7();
        sqlx::query("INSERT INTO event_envelope (id, type, source, data) VALUES ($1, $2, $3, $4)")
            .bind(envelope_id)
            .bind(EVT_FINDINGS)
            .bind(CONSUMER)
            .bind(&findings)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO evidence_link (case_id, envelope_id, role) VALUES ($1, $2, 'findings')",
        )
        .bind(case_id)
        .bind(envelope_id)
        .execute(&mut *tx)
        .await?;
        let fact = Envelope::for_case(
            &case,
            EVT_FINDINGS,
            CONSUMER,
            Some(cmd.id),
            json!({"evidence_id": envelope_id, "findings": findings}),
        );
        outbox::enqueue_fact(&mut tx, fact, d.traceparent.as_deref()).await?;
        tx.commit().await?;
        tracing::info!(case.id = %case.id, summary = %summary, "Findings recorded.");
        Ok(Disposition::Done)
    }
}
