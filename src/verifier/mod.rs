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

pub mod check;
pub mod prometheus;
mod settings;

pub use check::{Check, Verdict, judge};
pub use settings::VerifySettings;

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use self::prometheus::Prometheus;
use crate::contract::fact::{VerifyFailed, VerifyPassed};
use crate::contract::{ChangePlan, CommandMsg, Fact, Message, PlanHash, Tenant};
use crate::model::Case;
use crate::pubsub::consumer::Delivery;
use crate::store::read_case;
use crate::telemetry;
use crate::worker::{CaseWorker, WorkError};
use crate::workflow::Status;

pub const CONSUMER: &str = "verifier";

pub struct Verifier {
    pool: PgPool,
    settings: VerifySettings,
    prometheus: Option<Prometheus>,
}

impl CaseWorker for Verifier {
    /// The plan judged, its checks' verdicts, and the window's end; `None`
    /// when the case was no longer verifying when the checks were read.
    type Prepared = Option<(PlanHash, Evaluation, DateTime<Utc>)>;

    fn name(&self) -> &'static str {
        CONSUMER
    }

    fn accepts(&self, cmd: &CommandMsg) -> bool {
        matches!(cmd, CommandMsg::Verify(_))
    }

    async fn prepare(
        &self,
        cmd: &Message<CommandMsg>,
        _: &Delivery,
    ) -> Result<Self::Prepared, WorkError> {
        let started = Instant::now();
        let prepared = self.judge(cmd).await;
        telemetry::verify_latency(started.elapsed().as_secs_f64());
        prepared
    }

    fn applies(&self, cmd: &Message<CommandMsg>, case: &Case) -> bool {
        case.status == Status::Verifying
            && cmd.expected_version.map(i64::from) == Some(case.version)
    }

    async fn apply(
        &self,
        tx: &mut PgConnection,
        cmd: &Message<CommandMsg>,
        case: &Case,
        judged: Self::Prepared,
    ) -> Result<Vec<Fact>, WorkError> {
        // Versions only grow and a plan changes only with the version, so
        // the unlocked read in `prepare` saw this very case and plan.
        let Some((plan_hash, judged, now)) = judged else {
            return Err(WorkError::Invalid(
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
        .bind(case.id)
        .bind(&plan_hash)
        .bind(cmd.id)
        .bind(case.version)
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
        tracing::info!(case.id = %case.id, outcome = %overall, "Verification recorded.");
        Ok(vec![body])
    }
}

/// The checks of one plan, judged.
pub struct Evaluation {
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

    /// Waits until the window after the execution has passed, then judges
    /// the plan's checks (Prometheus is a network call: never inside a
    /// transaction). Every check shares one window end.
    async fn judge(
        &self,
        cmd: &Message<CommandMsg>,
    ) -> Result<Option<(PlanHash, Evaluation, DateTime<Utc>)>, WorkError> {
        let case_id = cmd.case_id.uuid();
        let CommandMsg::Verify(args) = &cmd.body else {
            return Err(WorkError::Invalid("not a cmd.verify.run".into()));
        };
        let Some(version) = cmd.expected_version else {
            return Err(WorkError::Invalid(
                "cmd.verify.run needs expected_version".into(),
            ));
        };
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
        let now = Utc::now();
        if let Some(case) = read_case(&self.pool, case_id).await?
            && case.status == Status::Verifying
            && case.version == version.get()
            && let Some((plan, plan_hash)) =
                plan_to_judge(&self.pool, case_id, args.plan_hash.as_ref()).await?
        {
            return Ok(Some((
                plan_hash,
                self.evaluate(&case, &plan, now).await?,
                now,
            )));
        }
        Ok(None)
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
                Some((p, template)) => p.evaluate(&check, &case.tenant, template, now).await,
                None => self.judge_from_metric_1m(&check, &case.tenant, now).await?,
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

    async fn judge_from_metric_1m(
        &self,
        check: &Check,
        tenant: &Tenant,
        now: DateTime<Utc>,
    ) -> Result<(Verdict, Value), sqlx::Error> {
        let values: Vec<f64> = minutes_judged(&self.pool, check, tenant, now)
            .await?
            .into_iter()
            .map(|(_, v)| v)
            .collect();
        let (verdict, mut detail) = judge(check, &values, self.settings.min_coverage);
        detail["source"] = json!("metric_1m");
        Ok((verdict, detail))
    }
}

/// The minutes of `metric_1m` a check judges at `now`, oldest first, with
/// the check's statistic. A row covers the minute starting at its `ts`:
/// every minute that overlaps the window counts, hence the extra 60 s.
/// The case's tenant's rows only: another tenant's figures for a resource
/// of the same name never judge this case. (The console charts the same
/// minutes.)
pub async fn minutes_judged(
    pool: &PgPool,
    check: &Check,
    tenant: &Tenant,
    now: DateTime<Utc>,
) -> Result<Vec<(DateTime<Utc>, f64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT ts, v FROM (SELECT ts, CASE $5 WHEN 'max' THEN max WHEN 'p95' THEN p95 ELSE avg END AS v \
         FROM metric_1m WHERE tenant = $6 AND resource = $1 AND metric = $2 \
         AND ts > $3 - make_interval(secs => $4 + 60) AND ts <= $3) w WHERE v IS NOT NULL ORDER BY ts",
    )
    .bind(&check.resource)
    .bind(&check.metric)
    .bind(now)
    .bind(check.window_s as f64)
    .bind(check.stat.as_str())
    .bind(tenant.as_str())
    .fetch_all(pool)
    .await
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
