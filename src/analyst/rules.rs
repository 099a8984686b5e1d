//! The signals file (`OPSLOOP_SIGNALS_FILE`, TOML), owned by operators:
//! which series the detector watches and with which rules, what a detection
//! is called when it becomes a case, and each tenant's intake policy.
//!
//! Without a file: one baseline rule over every metric (upward anomalies,
//! alert `MetricAnomaly`, severity `warning`), no burn-rate rule, and the
//! intake policy of `OPSLOOP_SIGNAL_AUTOSTART` for every tenant.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::Deserialize;

use super::detect::{DRIFT_K_SLOW, Params};

/// Alertmanager's severity words a rule may use (intake maps them as it
/// maps an alert's `severity` label).
pub const SEVERITIES: [&str; 6] = ["critical", "error", "high", "warning", "info", "none"];
/// Case severities an intake policy may start.
const CASE_SEVERITIES: [&str; 5] = ["critical", "high", "medium", "low", "info"];

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignalsFile {
    #[serde(default)]
    pub intake: Intake,
    /// First matching rule wins, per series.
    #[serde(default = "default_baselines")]
    pub baseline: Vec<BaselineRule>,
    #[serde(default)]
    pub burn_rate: Vec<BurnRule>,
}

impl Default for SignalsFile {
    fn default() -> Self {
        SignalsFile {
            intake: Intake::default(),
            baseline: default_baselines(),
            burn_rate: Vec::new(),
        }
    }
}

fn default_baselines() -> Vec<BaselineRule> {
    vec![BaselineRule::default()]
}

/// Per-tenant intake policy: which case severities start analysis by
/// themselves. A tenant not named here follows `OPSLOOP_SIGNAL_AUTOSTART`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Intake {
    #[serde(default)]
    pub tenants: BTreeMap<String, TenantIntake>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantIntake {
    pub autostart: BTreeSet<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BaselineRule {
    /// In the signal's fingerprint and `anomalies_detected_total{rule}`.
    pub name: String,
    /// Metrics watched; empty: every metric.
    pub metrics: BTreeSet<String>,
    /// Tenants watched; empty: every tenant.
    pub tenants: BTreeSet<String>,
    /// `up` (the default: latency, errors) or `down` (throughput, hit
    /// ratios): the direction that is an anomaly.
    pub direction: Direction,
    /// The alert name of the case (templates match on it).
    pub alertname: String,
    pub severity: String,
    /// The case label that names the series' resource, besides `resource`
    /// (templates read e.g. `service`).
    pub resource_label: String,
    /// Threshold in robust σ and minutes in a row above it.
    pub k: f64,
    pub persist: usize,
    /// The slow rule for drifts; off by default (it costs precision,
    /// docs/BENCHMARKS.md).
    pub drift: bool,
}

impl Default for BaselineRule {
    fn default() -> Self {
        let p = Params::default();
        BaselineRule {
            name: "baseline".into(),
            metrics: BTreeSet::new(),
            tenants: BTreeSet::new(),
            direction: Direction::Up,
            alertname: "MetricAnomaly".into(),
            severity: "warning".into(),
            resource_label: "resource".into(),
            k: p.k,
            persist: p.persist,
            drift: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Up,
    Down,
}

impl BaselineRule {
    pub fn params(&self) -> Params {
        Params {
            k: self.k,
            persist: self.persist,
            k_slow: if self.drift {
                DRIFT_K_SLOW
            } else {
                f64::INFINITY
            },
            ..Params::default()
        }
    }

    /// The value the detector judges (it looks for rises).
    pub fn oriented(&self, x: f64) -> f64 {
        match self.direction {
            Direction::Up => x,
            Direction::Down => -x,
        }
    }

    fn watches(&self, tenant: &str, metric: &str) -> bool {
        (self.metrics.is_empty() || self.metrics.contains(metric))
            && (self.tenants.is_empty() || self.tenants.contains(tenant))
    }
}

/// A multi-window burn-rate rule (the SRE workbook's): fires when the error
/// ratio's mean over both the long and the short window burns the error
/// budget (`1 - slo_target`) at least `factor` times as fast as allowed;
/// resolves when either window drops below.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BurnRule {
    pub name: String,
    /// The error-ratio metric (its per-minute `avg`, 0..1).
    pub metric: String,
    pub slo_target: f64,
    pub long_minutes: u32,
    pub short_minutes: u32,
    pub factor: f64,
    #[serde(default = "critical")]
    pub severity: String,
    #[serde(default = "burn_alertname")]
    pub alertname: String,
    #[serde(default)]
    pub tenants: BTreeSet<String>,
    #[serde(default = "resource_label")]
    pub resource_label: String,
}

fn critical() -> String {
    "critical".into()
}
fn burn_alertname() -> String {
    "SLOBurnRate".into()
}
fn resource_label() -> String {
    "resource".into()
}

impl BurnRule {
    pub fn budget(&self) -> f64 {
        1.0 - self.slo_target
    }

    fn watches(&self, tenant: &str, metric: &str) -> bool {
        self.metric == metric && (self.tenants.is_empty() || self.tenants.contains(tenant))
    }
}

/// Alert names become case kinds and labels: the same characters as a
/// Prometheus label value that templates can match.
fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'))
}

impl SignalsFile {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
        let file: SignalsFile =
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        file.check()
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        Ok(file)
    }

    /// Every mistake an operator can make in the file, refused at start-up.
    pub fn check(&self) -> Result<(), String> {
        let mut names = BTreeSet::new();
        for (tenant, policy) in &self.intake.tenants {
            if let Some(bad) = policy
                .autostart
                .iter()
                .find(|s| !CASE_SEVERITIES.contains(&s.as_str()))
            {
                return Err(format!(
                    "intake.tenants.{tenant}.autostart: {bad:?} is not a case severity ({})",
                    CASE_SEVERITIES.join(", ")
                ));
            }
        }
        let rules = self
            .baseline
            .iter()
            .map(|r| (&r.name, &r.alertname, &r.severity, &r.resource_label))
            .chain(
                self.burn_rate
                    .iter()
                    .map(|r| (&r.name, &r.alertname, &r.severity, &r.resource_label)),
            );
        for (name, alertname, severity, label) in rules {
            if !valid_name(name) || !names.insert(name.clone()) {
                return Err(format!(
                    "rule {name:?}: names are 1-64 of [A-Za-z0-9_.:-] and unique"
                ));
            }
            // The fixed labels of a detection are not the resource's to take.
            if ["alertname", "severity", "tenant", "metric", "rule"].contains(&label.as_str()) {
                return Err(format!(
                    "rule {name}: resource_label {label:?} would overwrite a detection's own label"
                ));
            }
            if !valid_name(alertname) || !valid_name(label) {
                return Err(format!(
                    "rule {name}: alertname and resource_label are 1-64 of [A-Za-z0-9_.:-]"
                ));
            }
            if !SEVERITIES.contains(&severity.as_str()) {
                return Err(format!(
                    "rule {name}: severity {severity:?} is not one of {}",
                    SEVERITIES.join(", ")
                ));
            }
        }
        for r in &self.baseline {
            if !(r.k.is_finite() && r.k > 0.0 && (1..=60).contains(&r.persist)) {
                return Err(format!(
                    "rule {}: k > 0 and persist in 1..=60 minutes",
                    r.name
                ));
            }
        }
        for r in &self.burn_rate {
            if !(r.slo_target > 0.0 && r.slo_target < 1.0) {
                return Err(format!("rule {}: slo_target is in (0, 1)", r.name));
            }
            if !(r.factor.is_finite() && r.factor > 0.0) {
                return Err(format!("rule {}: factor > 0", r.name));
            }
            if r.short_minutes == 0
                || r.short_minutes >= r.long_minutes
                || r.long_minutes > MAX_BURN_WINDOW
            {
                return Err(format!(
                    "rule {}: 0 < short_minutes < long_minutes <= {MAX_BURN_WINDOW}",
                    r.name
                ));
            }
        }
        Ok(())
    }

    /// The baseline rule of a series, if any watches it.
    pub fn baseline_for(&self, tenant: &str, metric: &str) -> Option<&BaselineRule> {
        self.baseline.iter().find(|r| r.watches(tenant, metric))
    }

    pub fn burn_rules_for<'a>(
        &'a self,
        tenant: &'a str,
        metric: &'a str,
    ) -> impl Iterator<Item = &'a BurnRule> + 'a {
        self.burn_rate
            .iter()
            .filter(move |r| r.watches(tenant, metric))
    }

    /// Whether a case of `severity` for `tenant` starts by itself, or
    /// `None` when the file says nothing of the tenant.
    pub fn autostarts(&self, tenant: &str, severity: &str) -> Option<bool> {
        self.intake
            .tenants
            .get(tenant)
            .map(|t| t.autostart.contains(severity))
    }
}

/// The longest burn-rate window: three days, the workbook's slowest.
pub const MAX_BURN_WINDOW: u32 = 3 * 1440;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_file_loads() {
        let file = SignalsFile::load(Path::new("config/signals.toml")).expect("loads");
        assert!(file.baseline_for("t-001", "latency_p95_ms").is_some());
        assert!(!file.burn_rate.is_empty());
    }

    #[test]
    fn no_file_watches_every_metric_upward() {
        let file = SignalsFile::default();
        let rule = file.baseline_for("any", "anything").expect("a rule");
        assert_eq!(rule.direction, Direction::Up);
        assert_eq!(file.autostarts("any", "high"), None);
        assert_eq!(file.check(), Ok(()));
    }

    #[test]
    fn mistakes_are_refused() {
        let bad = [
            "[[burn_rate]]\nname='a'\nmetric='e'\nslo_target=1.0\nlong_minutes=60\nshort_minutes=5\nfactor=14.4",
            "[[burn_rate]]\nname='a'\nmetric='e'\nslo_target=0.99\nlong_minutes=5\nshort_minutes=60\nfactor=14.4",
            "[[baseline]]\nname='a b'",
            "[[baseline]]\nname='a'\n[[baseline]]\nname='a'",
            "[[baseline]]\nname='a'\nseverity='urgent'",
            "[[baseline]]\nname='a'\nk=0",
            "[intake.tenants.acme]\nautostart=['warning']",
            "[[baseline]]\nname='a'\nresource_label='severity'",
        ];
        for text in bad {
            let file: SignalsFile = toml::from_str(text).expect("parses");
            assert!(file.check().is_err(), "accepted: {text}");
        }
        assert!(toml::from_str::<SignalsFile>("[[baseline]]\nnmae='a'").is_err());
    }

    #[test]
    fn per_tenant_policy_and_rule_scope() {
        let file: SignalsFile = toml::from_str(
            "[intake.tenants.acme]\nautostart=['critical']\n\
             [[baseline]]\nname='lat'\nmetrics=['latency']\ntenants=['acme']\ndirection='down'",
        )
        .expect("parses");
        assert_eq!(file.check(), Ok(()));
        assert_eq!(file.autostarts("acme", "critical"), Some(true));
        assert_eq!(file.autostarts("acme", "high"), Some(false));
        assert_eq!(file.autostarts("other", "high"), None);
        assert!(file.baseline_for("acme", "latency").is_some());
        assert!(file.baseline_for("other", "latency").is_none());
        assert!(file.baseline_for("acme", "errors").is_none());
        assert_eq!(
            file.baseline_for("acme", "latency")
                .map(|r| r.oriented(2.0)),
            Some(-2.0)
        );
    }
}
