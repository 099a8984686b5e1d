//! One SLO check and its verdict, judged from a window's figures. Pure.

use serde::Deserialize;
use serde_json::{Value, json};

use crate::contract::fact::VerifyFailure;
use crate::contract::plan::{self, Op, Stat};

/// The verdict on one check, and on the whole (the worst check wins:
/// breach, then no_data, then inconclusive, then pass).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, strum::IntoStaticStr, strum::Display,
)]
#[strum(serialize_all = "snake_case")]
pub enum Verdict {
    Pass,
    Inconclusive,
    NoData,
    Breach,
}

impl Verdict {
    /// Why the case fails verification, unless it passed.
    pub fn failure(self) -> Option<VerifyFailure> {
        match self {
            Verdict::Pass => None,
            Verdict::Inconclusive => Some(VerifyFailure::Inconclusive),
            Verdict::NoData => Some(VerifyFailure::NoData),
            Verdict::Breach => Some(VerifyFailure::Breach),
        }
    }
}

/// One entry of `verify_result.checks` as the verifier writes it, read
/// back (by the librarian's past cases and the re-plan's feedback).
#[derive(Debug, Clone, Deserialize)]
pub struct CheckJudged {
    #[serde(default)]
    pub check: Option<plan::Check>,
    pub verdict: String,
    #[serde(default)]
    pub detail: Option<JudgedDetail>,
    #[serde(default)]
    pub why: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct JudgedDetail {
    #[serde(default)]
    pub figure: Option<f64>,
}

/// "latency_p95_ms avg 950.0 (< 300: breach)", one per check, for people
/// and for the planner.
pub fn describe_judged(checks: &[CheckJudged]) -> String {
    checks
        .iter()
        .map(|c| match &c.check {
            Some(check) => format!(
                "{} {} {} ({} {}: {})",
                check.metric,
                check.stat.map_or("avg", |s| s.as_str()),
                c.detail
                    .as_ref()
                    .and_then(|d| d.figure)
                    .map_or("no figure".into(), |f| format!("{f:.1}")),
                check.op,
                check.threshold,
                c.verdict
            ),
            None => format!("{}: {}", c.verdict, c.why.as_deref().unwrap_or("")),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// One check of the plan, with its resource settled.
#[derive(Debug, Clone)]
pub struct Check {
    pub resource: String,
    pub metric: String,
    pub stat: Stat,
    pub op: Op,
    pub threshold: f64,
    pub window_s: i64,
}

impl Check {
    pub(crate) fn from_plan(
        check: &plan::Check,
        default_resource: Option<&str>,
    ) -> Result<Check, String> {
        let resource = check
            .resource
            .as_deref()
            .or(default_resource)
            .ok_or("a check names no resource and the case has no resource label")?;
        Ok(Check {
            resource: resource.to_string(),
            metric: check.metric.clone(),
            stat: check.stat.unwrap_or(Stat::Avg),
            op: check.op,
            threshold: check
                .threshold
                .as_f64()
                .ok_or("a check whose threshold is not a number")?,
            window_s: i64::try_from(check.window_s).unwrap_or(i64::MAX).max(60),
        })
    }

    /// The verdict on a figure read from any source.
    pub(crate) fn verdict(&self, figure: f64) -> Verdict {
        if self.op.holds(figure, self.threshold) {
            Verdict::Pass
        } else {
            Verdict::Breach
        }
    }
}

/// Judges a check from the per-minute values in its window (pure).
pub fn judge(check: &Check, values: &[f64], min_coverage: f64) -> (Verdict, Value) {
    let expected = (check.window_s / 60).max(1) as usize;
    if values.is_empty() {
        return (Verdict::NoData, json!({"points": 0, "expected": expected}));
    }
    if (values.len() as f64) < (expected as f64 * min_coverage).ceil() {
        return (
            Verdict::Inconclusive,
            json!({"points": values.len(), "expected": expected,
                   "why": "too few minutes with data in the window"}),
        );
    }
    let figure = match check.stat {
        Stat::Max | Stat::P95 => values.iter().copied().fold(f64::MIN, f64::max),
        Stat::Avg => values.iter().sum::<f64>() / values.len() as f64,
    };
    (
        check.verdict(figure),
        json!({"points": values.len(), "expected": expected, "figure": figure}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(op: &str, threshold: f64, window_s: i64) -> Check {
        Check {
            resource: "checkout".into(),
            metric: "latency_p95_ms".into(),
            stat: Stat::Avg,
            op: serde_json::from_value(json!(op)).unwrap(),
            threshold,
            window_s,
        }
    }

    #[test]
    fn no_points_is_no_data_and_few_points_inconclusive() {
        assert_eq!(judge(&check("<", 300.0, 300), &[], 0.5).0, Verdict::NoData);
        assert_eq!(
            judge(&check("<", 300.0, 300), &[100.0, 120.0], 0.5).0,
            Verdict::Inconclusive
        );
        assert_eq!(
            judge(&check("<", 300.0, 300), &[100.0, 120.0, 90.0], 0.5).0,
            Verdict::Pass
        );
    }

    #[test]
    fn the_figure_is_compared_with_the_operator() {
        assert_eq!(
            judge(&check("<", 300.0, 60), &[350.0], 0.5).0,
            Verdict::Breach
        );
        assert_eq!(
            judge(&check("<=", 300.0, 60), &[300.0], 0.5).0,
            Verdict::Pass
        );
        assert_eq!(
            judge(&check(">", 0.99, 60), &[0.98], 0.5).0,
            Verdict::Breach
        );
        assert_eq!(judge(&check(">=", 0.99, 60), &[0.99], 0.5).0, Verdict::Pass);
    }

    #[test]
    fn the_worst_verdict_wins() {
        assert!(Verdict::Breach > Verdict::NoData);
        assert!(Verdict::NoData > Verdict::Inconclusive);
        assert!(Verdict::Inconclusive > Verdict::Pass);
    }
}
