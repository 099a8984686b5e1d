//! The detector over `metric_1m`, run by every analyst process on a short
//! schedule. Ingest (in the api process) records each series' newest minute
//! in `metric_series` and gives a new series its `detector_state` row; a
//! sweep claims series with minutes it has not judged (`detector_state`,
//! `FOR UPDATE SKIP LOCKED`, so analysts in several
//! processes share the work), reads only the windows the rules need, steps
//! the stored detector over the new minutes, and stores the state and its
//! detections (`anomaly`) in one transaction. Detections are then taken
//! through signal intake like an Alertmanager alert: a fingerprint of
//! (tenant, resource, metric, rule), one open case per fingerprint.
//!
//! History is never rescanned: a series is judged from its stored state,
//! and at most `max_minutes` of new minutes per sweep (a backfill older
//! than that is history for the baseline, not judged). Detections at
//! minutes older than `max_age_min` update the state but open nothing: a
//! backfilled incident of last week is not today's page.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::detect::{DAY, Detector, Params, Step, window_mean};
use super::intake::{
    self, Alert, AlertStatus, Annotations, IntakeSettings, Labels, Notice, Source,
};
use super::rules::{BaselineRule, BurnRule, SignalsFile};
use crate::contract::Tenant;
use crate::orchestrator::{Orchestrator, TransitionError};
use crate::roles::Role;

#[derive(Debug, Clone, clap::Args)]
pub struct DetectSettings {
    /// Milliseconds between detector sweeps when nothing is due.
    #[arg(long = "detect-interval-ms", env = "OPSLOOP_DETECT_INTERVAL_MS", default_value_t = 5000,
          value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
    pub interval_ms: u64,
    /// Series claimed per sweep transaction.
    #[arg(long = "detect-batch", env = "OPSLOOP_DETECT_BATCH", default_value_t = 500,
          value_parser = clap::value_parser!(i64).range(1..=100_000))]
    pub batch: i64,
    /// Detections at minutes older than this open nothing (backfills).
    #[arg(long = "detect-max-age-min", env = "OPSLOOP_DETECT_MAX_AGE_MIN", default_value_t = 30,
          value_parser = clap::value_parser!(i64).range(1..=10_080))]
    pub max_age_min: i64,
    /// New minutes judged per series and sweep at most; older new minutes
    /// serve as history only.
    #[arg(long = "detect-max-minutes", env = "OPSLOOP_DETECT_MAX_MINUTES", default_value_t = 2880,
          value_parser = clap::value_parser!(i64).range(1..=100_000))]
    pub max_minutes: i64,
}

impl Default for DetectSettings {
    fn default() -> Self {
        DetectSettings {
            interval_ms: 5000,
            batch: 500,
            max_age_min: 30,
            max_minutes: 2880,
        }
    }
}

/// What one sweep did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Series claimed and judged.
    pub series: usize,
    /// Minutes judged (over all series).
    pub minutes: usize,
    /// Points read from `metric_1m` (new minutes and their windows).
    pub points_read: usize,
    /// Detections stored (firing and resolved).
    pub detections: usize,
    /// Detections taken through intake.
    pub taken: usize,
}

pub struct Sweeper {
    pub pool: PgPool,
    pub orchestrator: Orchestrator,
    pub intake: Arc<IntakeSettings>,
    pub settings: DetectSettings,
}

/// A claimed series.
struct Due {
    tenant: String,
    resource: String,
    metric: String,
    evaluated_to: Option<DateTime<Utc>>,
    rule: Option<String>,
    state: Option<Vec<u8>>,
    burning: Vec<String>,
    last_ts: DateTime<Utc>,
}

/// A series after judging: what is stored back.
struct Judged {
    evaluated_to: DateTime<Utc>,
    rule: Option<String>,
    state: Option<Vec<u8>>,
    burning: Vec<String>,
    shape: Option<(f64, f64, f64)>,
}

/// How a rule's detections are named on their case.
struct Naming {
    rule: String,
    alertname: String,
    severity: String,
    resource_label: String,
}

impl From<&BaselineRule> for Naming {
    fn from(r: &BaselineRule) -> Self {
        Naming {
            rule: r.name.clone(),
            alertname: r.alertname.clone(),
            severity: r.severity.clone(),
            resource_label: r.resource_label.clone(),
        }
    }
}

impl From<&BurnRule> for Naming {
    fn from(r: &BurnRule) -> Self {
        Naming {
            rule: r.name.clone(),
            alertname: r.alertname.clone(),
            severity: r.severity.clone(),
            resource_label: r.resource_label.clone(),
        }
    }
}

struct Detection {
    naming: Naming,
    status: AlertStatus,
    minute: i64,
    summary: String,
    figures: Value,
}

/// The minute (since the epoch) `ts` falls in.
pub fn minute_of(ts: DateTime<Utc>) -> i64 {
    ts.timestamp().div_euclid(60)
}

/// The start of `minute` (since the epoch).
pub fn ts_of(minute: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(minute * 60, 0).unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// The fingerprint of a detector signal: (tenant, resource, metric, rule),
/// 16 hex digits like Alertmanager's.
pub fn fingerprint(tenant: &str, resource: &str, metric: &str, rule: &str) -> String {
    let digest = Sha256::digest(format!("{tenant}\0{resource}\0{metric}\0{rule}").as_bytes());
    hex::encode(&digest[..8])
}

/// A measurement for a person: four significant digits, no float noise
/// (`900`, `123.8`, `0.01234`).
fn figure(x: f64) -> String {
    if x == 0.0 || !x.is_finite() {
        return format!("{x}");
    }
    let digits = 3 - x.abs().log10().floor() as i32;
    let rounded = format!("{:.*}", digits.max(0) as usize, x);
    if rounded.contains('.') {
        rounded
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
    } else {
        rounded
    }
}

/// Sorted, merged closed ranges.
fn merge(mut ranges: Vec<(i64, i64)>) -> Vec<(i64, i64)> {
    ranges.sort_unstable();
    let mut out: Vec<(i64, i64)> = Vec::with_capacity(ranges.len());
    for (lo, hi) in ranges {
        match out.last_mut() {
            Some(last) if lo <= last.1 + 1 => last.1 = last.1.max(hi),
            _ => out.push((lo, hi)),
        }
    }
    out
}

impl Sweeper {
    fn rules(&self) -> &SignalsFile {
        &self.intake.signals
    }

    /// Sweeps until shutdown: at once while series are due, else every
    /// `interval_ms`.
    pub async fn run(self, shutdown: CancellationToken) {
        let interval = Duration::from_millis(self.settings.interval_ms);
        loop {
            let pause = match self.sweep().await {
                Ok(r) if r.series as i64 >= self.settings.batch => Duration::ZERO,
                Ok(_) => interval,
                Err(e) => {
                    tracing::warn!(error = %e, "Detector sweep failed; trying again.");
                    interval
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// One sweep: judge up to `batch` due series, then take every pending
    /// detection through intake.
    pub async fn sweep(&self) -> Result<SweepReport, TransitionError> {
        let started = std::time::Instant::now();
        let mut report = self.judge_due(Utc::now()).await?;
        report.taken = self.take_pending().await?;
        crate::telemetry::detector_sweep(started.elapsed().as_secs_f64());
        Ok(report)
    }

    /// Claims due series, judges their new minutes as of `now`, and stores
    /// states and detections in one transaction.
    pub async fn judge_due(&self, now: DateTime<Utc>) -> Result<SweepReport, sqlx::Error> {
        // Ingest gives a new series its state row (api::metrics::STORE_ROWS).
        let mut tx = self.pool.begin().await?;
        let due: Vec<Due> = sqlx::query_as::<_, (String, String, String, Option<DateTime<Utc>>, Option<String>, Option<Vec<u8>>, Vec<String>, DateTime<Utc>)>(
            "SELECT d.tenant, d.resource, d.metric, d.evaluated_to, d.rule, d.state, d.burning, s.last_ts \
             FROM detector_state d JOIN metric_series s USING (tenant, resource, metric) \
             WHERE d.evaluated_to IS NULL OR s.last_ts > d.evaluated_to \
             ORDER BY d.evaluated_to NULLS FIRST LIMIT $1 FOR UPDATE OF d SKIP LOCKED",
        )
        .bind(self.settings.batch)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .map(|(tenant, resource, metric, evaluated_to, rule, state, burning, last_ts)| Due {
            tenant,
            resource,
            metric,
            evaluated_to,
            rule,
            state,
            burning,
            last_ts,
        })
        .collect();
        let mut report = SweepReport {
            series: due.len(),
            ..SweepReport::default()
        };
        if due.is_empty() {
            return Ok(report);
        }
        // The minutes each series needs: its new minutes and the windows
        // the baseline and the burn-rate rules read before them.
        let mut range_of = Vec::new();
        let mut plans = Vec::with_capacity(due.len());
        for (i, d) in due.iter().enumerate() {
            let last = minute_of(d.last_ts);
            let from = d
                .evaluated_to
                .map_or(i64::MIN, |e| minute_of(e) + 1)
                .max(last - self.settings.max_minutes + 1);
            let baseline = self.rules().baseline_for(&d.tenant, &d.metric);
            let burns: Vec<&BurnRule> = self.rules().burn_rules_for(&d.tenant, &d.metric).collect();
            let mut ranges = Vec::new();
            if baseline.is_some() || !burns.is_empty() {
                let p = baseline.map(BaselineRule::params).unwrap_or_default();
                let back = burns
                    .iter()
                    .map(|r| i64::from(r.long_minutes))
                    .chain([p.trailing as i64])
                    .max()
                    .unwrap_or(0);
                ranges.push((from - back, last));
                if baseline.is_some() {
                    let (day, w) = (DAY as i64, p.window as i64);
                    ranges.extend(
                        (1..=p.days as i64).map(|k| (from - k * day - w, last - k * day + w)),
                    );
                }
            }
            for (lo, hi) in merge(ranges) {
                range_of.push((i as i32, lo, hi));
            }
            plans.push((from, last, baseline, burns));
        }
        let rows: Vec<(i32, DateTime<Utc>, f64)> = sqlx::query_as(
            "SELECT q.i, m.ts, m.avg \
             FROM unnest($1::int4[], $2::int4[], $3::timestamptz[], $4::timestamptz[]) AS q(i, s, lo, hi) \
             JOIN unnest($5::text[], $6::text[], $7::text[]) WITH ORDINALITY AS k(tenant, resource, metric, n) \
               ON k.n = q.s + 1 \
             CROSS JOIN LATERAL (SELECT ts, avg FROM metric_1m m WHERE m.tenant = k.tenant \
                 AND m.resource = k.resource AND m.metric = k.metric AND m.ts BETWEEN q.lo AND q.hi \
                 ORDER BY ts LIMIT $8) m",
        )
        .bind((0..range_of.len() as i32).collect::<Vec<_>>())
        .bind(range_of.iter().map(|r| r.0).collect::<Vec<_>>())
        .bind(range_of.iter().map(|r| ts_of(r.1)).collect::<Vec<_>>())
        .bind(range_of.iter().map(|r| ts_of(r.2)).collect::<Vec<_>>())
        .bind(due.iter().map(|d| d.tenant.as_str()).collect::<Vec<_>>())
        .bind(due.iter().map(|d| d.resource.as_str()).collect::<Vec<_>>())
        .bind(due.iter().map(|d| d.metric.as_str()).collect::<Vec<_>>())
        // A range holds at most one row per minute. The limit keeps each
        // range an index scan of its own: without it, a custom plan that
        // sees thousands of ranges may scan the whole table (17 s instead
        // of 0.8 s for 1 000 series in bench_signals).
        .bind(range_of.iter().map(|r| r.2 - r.1 + 1).max().unwrap_or(1))
        .fetch_all(&mut *tx)
        .await?;
        report.points_read = rows.len();
        let mut points: Vec<Vec<(i64, f64)>> = vec![Vec::new(); due.len()];
        for (q, ts, avg) in rows {
            let series = range_of[q as usize].0 as usize;
            points[series].push((minute_of(ts), avg));
        }
        let now_minute = minute_of(now);
        let mut judged = Vec::with_capacity(due.len());
        let mut detections: Vec<(usize, Detection)> = Vec::new();
        for (i, (d, (from, last, baseline, burns))) in due.iter().zip(plans).enumerate() {
            let history = &mut points[i];
            history.sort_unstable_by_key(|p| p.0);
            history.dedup_by_key(|p| p.0);
            let mut found = Vec::new();
            let (j, minutes) = judge_series(d, history, from, last, baseline, &burns, &mut found);
            report.minutes += minutes;
            judged.push(j);
            detections.extend(
                found
                    .into_iter()
                    .filter(|x| x.minute >= now_minute - self.settings.max_age_min)
                    .map(|x| (i, x)),
            );
        }
        report.detections = detections.len();
        sqlx::query(
            "UPDATE detector_state d SET evaluated_to = u.evaluated_to, rule = u.rule, state = u.state, \
                    burning = string_to_array(u.burning, ','), value = u.value, baseline = u.baseline, \
                    scale = u.scale, updated_at = now() \
             FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::text[], $6::bytea[], \
                         $7::text[], $8::float8[], $9::float8[], $10::float8[]) \
                  AS u(tenant, resource, metric, evaluated_to, rule, state, burning, value, baseline, scale) \
             WHERE d.tenant = u.tenant AND d.resource = u.resource AND d.metric = u.metric",
        )
        .bind(due.iter().map(|d| d.tenant.as_str()).collect::<Vec<_>>())
        .bind(due.iter().map(|d| d.resource.as_str()).collect::<Vec<_>>())
        .bind(due.iter().map(|d| d.metric.as_str()).collect::<Vec<_>>())
        .bind(judged.iter().map(|j| j.evaluated_to).collect::<Vec<_>>())
        .bind(judged.iter().map(|j| j.rule.clone()).collect::<Vec<_>>())
        .bind(judged.iter().map(|j| j.state.clone()).collect::<Vec<_>>())
        .bind(judged.iter().map(|j| j.burning.join(",")).collect::<Vec<_>>())
        .bind(judged.iter().map(|j| j.shape.map(|s| s.0)).collect::<Vec<_>>())
        .bind(judged.iter().map(|j| j.shape.map(|s| s.1)).collect::<Vec<_>>())
        .bind(judged.iter().map(|j| j.shape.map(|s| s.2)).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?;
        for (i, x) in &detections {
            let d = &due[*i];
            let n = &x.naming;
            let mut other = BTreeMap::from([
                ("tenant".to_string(), d.tenant.clone()),
                ("resource".to_string(), d.resource.clone()),
                ("metric".to_string(), d.metric.clone()),
                ("rule".to_string(), n.rule.clone()),
            ]);
            other.insert(n.resource_label.clone(), d.resource.clone());
            let labels = Labels {
                alertname: Some(n.alertname.clone()),
                severity: Some(n.severity.clone()),
                other,
            };
            let annotations = Annotations {
                summary: Some(x.summary.clone()),
                other: BTreeMap::new(),
            };
            sqlx::query(
                "INSERT INTO anomaly (id, tenant, resource, metric, rule, fingerprint, status, minute, \
                                      labels, annotations, figures) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            )
            .bind(Uuid::now_v7())
            .bind(&d.tenant)
            .bind(&d.resource)
            .bind(&d.metric)
            .bind(&n.rule)
            .bind(fingerprint(&d.tenant, &d.resource, &d.metric, &n.rule))
            .bind(x.status.as_str())
            .bind(ts_of(x.minute))
            .bind(sqlx::types::Json(labels))
            .bind(sqlx::types::Json(annotations))
            .bind(&x.figures)
            .execute(&mut *tx)
            .await?;
            if x.status == AlertStatus::Firing {
                crate::telemetry::anomaly_detected(&n.rule);
            }
        }
        tx.commit().await?;
        Ok(report)
    }

    /// Takes stored detections through intake as the analyst's identity,
    /// each fingerprint's in the order of their minutes. Returns how many
    /// were taken.
    ///
    /// An analyst claims the earliest pending detection of each fingerprint
    /// for a short lease (a row another analyst holds keeps its fingerprint
    /// waiting, so a resolution is never taken before its firing); intake
    /// marks the row taken in its own transaction. No lock is held across
    /// intake, which takes case locks of its own.
    pub async fn take_pending(&self) -> Result<usize, TransitionError> {
        type Pending = (
            Uuid,
            String,
            String,
            String,
            String,
            DateTime<Utc>,
            sqlx::types::Json<Labels>,
            sqlx::types::Json<Annotations>,
            Value,
        );
        let actor = <&str>::from(Role::Analyst);
        let mut taken = 0;
        loop {
            let mut pending: Vec<Pending> = sqlx::query_as(
                "UPDATE anomaly a SET claimed_until = now() + interval '2 minutes' \
                 WHERE a.id IN (SELECT DISTINCT ON (tenant, fingerprint) id FROM anomaly \
                                WHERE taken_at IS NULL ORDER BY tenant, fingerprint, minute, id) \
                   AND (a.claimed_until IS NULL OR a.claimed_until < now()) \
                 RETURNING a.id, a.tenant, a.rule, a.fingerprint, a.status, a.minute, a.labels, \
                           a.annotations, a.figures",
            )
            .fetch_all(&self.pool)
            .await?;
            if pending.is_empty() {
                return Ok(taken);
            }
            pending.sort_by_key(|p| (p.5, p.0));
            for (id, tenant, rule, fingerprint, status, minute, labels, annotations, figures) in
                pending
            {
                taken += 1;
                let Ok(t) = Tenant::try_from(tenant) else {
                    // Ingest refuses such a tenant; an old row is no
                    // reason to stop taking the others.
                    sqlx::query(
                        "UPDATE anomaly SET taken_at = now(), outcome = 'refused' WHERE id = $1",
                    )
                    .bind(id)
                    .execute(&self.pool)
                    .await?;
                    continue;
                };
                let firing = status == AlertStatus::Firing.as_str();
                let alert = Alert {
                    status: AlertStatus::from_firing(firing),
                    labels: labels.0,
                    annotations: annotations.0,
                    starts_at: firing.then_some(minute),
                    ends_at: (!firing).then_some(minute),
                    generator_url: None,
                    fingerprint,
                };
                let mut context = serde_json::Map::new();
                context.insert("anomaly_id".into(), json!(id));
                context.insert("figures".into(), figures);
                let notice = Notice {
                    source: Source::Detector,
                    group_key: None,
                    origin: format!("detector/{rule}"),
                    context,
                    anomaly: Some(id),
                };
                intake::take_alert(&self.orchestrator, &self.intake, actor, &t, &notice, &alert)
                    .await?;
            }
        }
    }
}

/// Steps one series over its new minutes `from..=last`; `history` holds the
/// points read (sorted). Returns what to store and how many minutes were
/// judged; detections go to `found`.
fn judge_series(
    d: &Due,
    history: &[(i64, f64)],
    from: i64,
    last: i64,
    baseline: Option<&BaselineRule>,
    burns: &[&BurnRule],
    found: &mut Vec<Detection>,
) -> (Judged, usize) {
    let new: Vec<(i64, f64)> = history
        .iter()
        .copied()
        .filter(|(m, _)| (from..=last).contains(m))
        .collect();
    let mut judged = Judged {
        evaluated_to: d.last_ts,
        rule: None,
        state: None,
        burning: Vec::new(),
        shape: None,
    };
    if let Some(rule) = baseline {
        let p: Params = rule.params();
        let oriented: Vec<(i64, f64)> = history
            .iter()
            .map(|(m, v)| (*m, rule.oriented(*v)))
            .collect();
        let stored = (d.rule.as_deref() == Some(rule.name.as_str()))
            .then(|| d.state.as_deref().and_then(|s| Detector::decode(s, &p)))
            .flatten();
        let mut detector = stored
            .unwrap_or_else(|| Detector::new(oriented.first().map_or(from, |p| p.0.min(from)), &p));
        let mut buf = Vec::new();
        let stepped = detector.last;
        for (t, x) in new.iter().filter(|(t, _)| *t > stepped) {
            let step = detector.step(&oriented, *t, rule.oriented(*x), &p, &mut buf);
            if matches!(step, Step::Fired | Step::Ended) {
                let s = detector.shape;
                let (value, base) = (rule.oriented(s.value), rule.oriented(s.baseline));
                let firing = step == Step::Fired;
                found.push(Detection {
                    naming: Naming::from(rule),
                    status: AlertStatus::from_firing(firing),
                    minute: *t,
                    summary: if firing {
                        format!(
                            "{} of {} at {} against a baseline of {} ({:.1} robust σ {})",
                            d.metric,
                            d.resource,
                            figure(value),
                            figure(base),
                            s.deviation(),
                            if rule.oriented(1.0) > 0.0 {
                                "above"
                            } else {
                                "below"
                            }
                        )
                    } else {
                        format!(
                            "{} of {} back to its baseline ({})",
                            d.metric,
                            d.resource,
                            figure(base)
                        )
                    },
                    figures: json!({
                        "value": value, "baseline": base, "scale": s.scale,
                        "deviation": s.deviation(), "k": p.k, "persist": p.persist,
                    }),
                });
            }
        }
        let s = detector.shape;
        if s.scale > 0.0 {
            judged.shape = Some((rule.oriented(s.value), rule.oriented(s.baseline), s.scale));
        }
        judged.rule = Some(rule.name.clone());
        judged.state = Some(detector.encode());
    }
    for rule in burns {
        let mut burning = d.burning.contains(&rule.name);
        for (t, _) in &new {
            let rates = window_mean(history, *t, rule.long_minutes)
                .zip(window_mean(history, *t, rule.short_minutes))
                .map(|(l, s)| (l / rule.budget(), s / rule.budget()));
            let Some((long, short)) = rates else {
                continue;
            };
            let now_burning = long >= rule.factor && short >= rule.factor;
            if now_burning == burning {
                continue;
            }
            burning = now_burning;
            found.push(Detection {
                naming: Naming::from(*rule),
                status: AlertStatus::from_firing(burning),
                minute: *t,
                summary: format!(
                    "{} of {} burns the error budget of a {} % SLO {long:.1}x over {} min and {short:.1}x over {} min (alerting at {}x)",
                    d.metric,
                    d.resource,
                    rule.slo_target * 100.0,
                    rule.long_minutes,
                    rule.short_minutes,
                    rule.factor
                ),
                figures: json!({
                    "long_burn": long, "short_burn": short, "factor": rule.factor,
                    "slo_target": rule.slo_target, "long_minutes": rule.long_minutes,
                    "short_minutes": rule.short_minutes,
                }),
            });
        }
        if burning {
            judged.burning.push(rule.name.clone());
        }
    }
    (judged, new.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_read_like_measurements() {
        assert_eq!(figure(900.0), "900");
        assert_eq!(figure(123.826_1), "123.8");
        assert_eq!(figure(0.012_345_6), "0.01235");
        assert_eq!(figure(15_234.7), "15235");
        assert_eq!(figure(-2.5), "-2.5");
        assert_eq!(figure(0.0), "0");
    }

    #[test]
    fn ranges_merge() {
        assert_eq!(
            merge(vec![(5, 9), (0, 3), (4, 4), (20, 30), (25, 26)]),
            vec![(0, 9), (20, 30)]
        );
        assert_eq!(merge(Vec::new()), Vec::<(i64, i64)>::new());
    }

    #[test]
    fn fingerprints_name_the_series_and_rule() {
        let a = fingerprint("t", "checkout", "latency", "baseline");
        assert_eq!(a.len(), 16);
        assert_eq!(a, fingerprint("t", "checkout", "latency", "baseline"));
        assert_ne!(a, fingerprint("t", "checkout", "latency", "burn"));
        // The separator keeps (ab, c) and (a, bc) apart.
        assert_ne!(
            fingerprint("t", "ab", "c", "r"),
            fingerprint("t", "a", "bc", "r")
        );
    }
}
