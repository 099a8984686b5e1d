//! The SLO verifier: consumes `cmd.verify.run`, evaluates the approved
//! plan's `verify.checks` over the window that ends now, stores a
//! `verify_result`, and reports `evt.verify.pass.v1` or
//! `evt.verify.failed.v1` with reason `breach`, `no_data` or `inconclusive`.
//!
//! A check is answered by Prometheus when the operator's queries file has a
//! query for its (metric, stat) (`prometheus.rs`), else from `metric_1m`.
//! Both are read before the transaction that claims the command and records
//! the result: no network call inside it.
//!
//! Missing or thin data is never a pass: NO_DATA and INCONCLUSIVE park the
//! case like a breach does (without the automatic rollback decision, which
//! is the orchestrator's and the policy's).

mod check;
pub mod prometheus;
mod settings;

pub use check::{Check, Verdict, judge};
pub use settings::VerifySettings;

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use self::prometheus::Prometheus;
use crate::contract::fact::{VerifyFailed, VerifyPassed};
use crate::contract::{ChangePlan, CommandMsg, Fact, Message, PlanHash};
use crate::model::Case;
use crate::pubsub::consumer::{DeadReason, Delivery, Disposition, Handler};
use crate::pubsub::{inbox, outbox};
use crate::store::read_case;
use crate::telemetry;
use crate::workflow::Status;

pub const CONSUMER: &str = "verifier";

pub struct Verifier {
    pool: PgPool,
    settings: VerifySettings,
    prometheus: Option<Prometheus>,
}

impl Handler for Verifier {
    fn name(&self) -> &str {
        CONSUMER
    }

    async fn handle(&self, d: &Delivery) -> Disposition {
        let cmd = match Message::<CommandMsg>::from_envelope(&d.envelope) {
            Ok(cmd) => cmd,
            Err(e) => return e.into(),
        };
        let CommandMsg::Verify(args) = &cmd.body else {
            return Disposition::unknown_type(&d.envelope.kind);
        };
        let Some(version) = cmd.expected_version else {
            return Disposition::DeadLetter(
                DeadReason::InvalidData,
                "cmd.verify.run needs expected_version".into(),
            );
        };
        let started = Instant::now();
        let result = self
            .verify(&cmd, d, version.get(), args.plan_hash.as_ref())
            .await;
        telemetry::verify_latency(started.elapsed().as_secs_f64());
        result.unwrap_or_else(|e| Disposition::Retry(e.to_string()))
    }
}

/// The checks of one plan, judged.
struct Evaluation {
    overall: Verdict,
    results: Vec<Value>,
    widest: i64,
}

impl Verifier {
    /// Fails when the Prometheus settings are unusable (URL, queries file,
    /// templates), so a mistake stops the start-up.
    pub fn new(
        pool: PgPool,
        settings: VerifySettings,
    ) -> Result<Verifier, prometheus::ConfigError> {
        let prometheus = Prometheus::from_settings(&settings)?;
        if let Some(p) = &prometheus {
            tracing::info!(
                queries = p.queries().len(),
                "Prometheus answers the checks its queries file names."
            );
        }
        Ok(Verifier {
            pool,
            settings,
            prometheus,
        })
    }

    async fn verify(
        &self,
        cmd: &Message<CommandMsg>,
        d: &Delivery,
        version: i64,
        ran: Option<&PlanHash>,
    ) -> Result<Disposition, sqlx::Error> {
        let case_id = cmd.case_id.uuid();
        // Wait (outside any transaction) until the window after the
        // execution has passed.
        let finished: Option<DateTime<Utc>> = sqlx::query_scalar(
            "SELECT finished_at FROM exec_run WHERE case_id = $1 AND kind = 'run' \
             AND status = 'done' ORDER BY started_at DESC LIMIT 1",
        )
        .bind(case_id)
        .fetch_optional(&self.pool)
        .await?
        .flatten();
        if let Some(finished) = finished {
            let due = finished + chrono::Duration::seconds(self.settings.delay_s as i64);
            if let Ok(wait) = (due - Utc::now()).to_std() {
                tokio::time::sleep(wait.min(Duration::from_secs(3600))).await;
            }
        }

        // Judge the checks before the transaction: Prometheus is a network
        // call. Every check shares one window end.
        let now = Utc::now();
        let mut judged = None;
        if let Some(case) = read_case(&self.pool, case_id).await?
            && case.status == Status::Verifying
            && case.version == version
            && let Some((plan, plan_hash)) = plan_to_judge(&self.pool, case_id, ran).await?
        {
            judged = Some((plan_hash, self.evaluate(&case, &plan, now).await?));
        }

        let mut tx = self.pool.begin().await?;
        let case = match inbox::claim_case(&mut tx, CONSUMER, cmd.id, &d.subject, case_id).await? {
            Ok(case) => case,
            Err(nothing_to_do) => return Ok(nothing_to_do),
        };
        if case.status != Status::Verifying || case.version != version {
            tx.commit().await?;
            return Ok(Disposition::Done);
        }
        // Versions only grow and a plan changes only with the version, so
        // the unlocked read above saw this very case and plan.
        let Some((plan_hash, judged)) = judged else {
            tx.commit().await?;
            return Ok(Disposition::DeadLetter(
                DeadReason::InvalidData,
                "a case in VERIFYING without a plan".into(),
            ));
        };
        let Evaluation {
            overall,
            results,
            widest,
        } = judged;
        sqlx::query(
            "INSERT INTO verify_result (id, case_id, plan_hash, command_id, case_version, outcome, checks, window_from, window_to) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(Uuid::now_v7())
        .bind(case_id)
        .bind(&plan_hash)
        .bind(cmd.id)
        .bind(version)
        .bind(<&'static str>::from(overall))
        .bind(json!(results))
        .bind(now - chrono::Duration::seconds(widest))
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let plan_hash = Some(plan_hash);
        let body = match overall.failure() {
            None => Fact::VerifyPass(VerifyPassed {
                plan_hash,
                checks: results,
            }),
            Some(reason) => Fact::VerifyFailed(VerifyFailed {
                plan_hash,
                reason,
                checks: results,
            }),
        };
        let fact = Message::for_case(&case, CONSUMER, Some(cmd.id), body);
        outbox::enqueue_fact(&mut tx, fact.to_envelope(), d.traceparent.as_deref()).await?;
        tx.commit().await?;
        tracing::info!(case.id = %case.id, outcome = %overall, "Verification recorded.");
        Ok(Disposition::Done)
    }

    /// Judges each check of `plan` over the window ending at `now`, from
    /// Prometheus when its queries name the check, else from `metric_1m`.
    /// Runs outside any transaction.
    async fn evaluate(
        &self,
        case: &Case,
        plan: &Value,
        now: DateTime<Utc>,
    ) -> Result<Evaluation, sqlx::Error> {
        let default_resource = resource_of(case);
        let mut results = Vec::new();
        let mut overall = Verdict::Pass;
        let mut widest = 60;
        let checks = match ChangePlan::from_stored(plan) {
            Ok(plan) => plan.verify.checks,
            Err(why) => {
                return Ok(Evaluation {
                    overall: Verdict::Inconclusive,
                    results: vec![json!({"verdict": "inconclusive", "why": why})],
                    widest,
                });
            }
        };
        if checks.is_empty() {
            // Nothing to measure is not evidence of health.
            overall = Verdict::Inconclusive;
            results
                .push(json!({"verdict": "inconclusive", "why": "the plan has no verify checks"}));
        }
        for raw in &checks {
            let check = match Check::from_plan(raw, default_resource.as_deref()) {
                Ok(c) => c,
                Err(why) => {
                    overall = overall.max(Verdict::Inconclusive);
                    results.push(json!({"check": raw, "verdict": "inconclusive", "why": why}));
                    continue;
                }
            };
            widest = widest.max(check.window_s);
            let prometheus = self
                .prometheus
                .as_ref()
                .and_then(|p| Some((p, p.template_for(&check)?)));
            let (verdict, detail) = match prometheus {
                Some((p, template)) => p.evaluate(&check, template, now).await,
                None => self.judge_from_metric_1m(&check, now).await?,
            };
            overall = overall.max(verdict);
            results.push(json!({
                "check": raw, "resource": check.resource, "verdict": verdict.to_string(), "detail": detail
            }));
        }
        Ok(Evaluation {
            overall,
            results,
            widest,
        })
    }

    /// A row covers the minute starting at its `ts`: every minute that
    /// overlaps the window counts, hence the extra 60 s in the query.
    async fn judge_from_metric_1m(
        &self,
        check: &Check,
        now: DateTime<Utc>,
    ) -> Result<(Verdict, Value), sqlx::Error> {
        let values: Vec<f64> = sqlx::query_scalar(
            "SELECT v FROM (SELECT ts, CASE $5 WHEN 'max' THEN max WHEN 'p95' THEN p95 ELSE avg END AS v \
             FROM metric_1m WHERE resource = $1 AND metric = $2 \
             AND ts > $3 - make_interval(secs => $4 + 60) AND ts <= $3) w WHERE v IS NOT NULL ORDER BY ts",
        )
        .bind(&check.resource)
        .bind(&check.metric)
        .bind(now)
        .bind(check.window_s as f64)
        .bind(check.stat.as_str())
        .fetch_all(&self.pool)
        .await?;
        let (verdict, mut detail) = judge(check, &values, self.settings.min_coverage);
        detail["source"] = json!("metric_1m");
        Ok((verdict, detail))
    }
}

/// The plan the command names, or (for a command of an older release
/// that names none) the case's latest plan; and its hash.
async fn plan_to_judge(
    pool: &PgPool,
    case_id: Uuid,
    ran: Option<&PlanHash>,
) -> Result<Option<(Value, PlanHash)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT plan, plan_hash FROM plan_proposed WHERE case_id = $1 \
         AND ($2::text IS NULL OR plan_hash = $2) ORDER BY seq DESC LIMIT 1",
    )
    .bind(case_id)
    .bind(ran)
    .fetch_optional(pool)
    .await
}

/// The resource a case is about: its `resource` label, else `service`.
pub fn resource_of(case: &Case) -> Option<String> {
    ["resource", "service"]
        .iter()
        .find_map(|k| case.labels.get(*k).and_then(Value::as_str))
        .map(str::to_string)
}
