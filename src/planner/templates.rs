//! The template planner: parameterised ChangePlans in `templates/*.json`,
//! chosen by an explicit name, else the case's `alertname` label, else its
//! kind; `{{label}}` placeholders are filled from the case labels.
//!
//! Every template is rendered with its `example` labels and checked against
//! the ChangePlan contract when loaded, so a broken template is a start-up
//! error, not a surprise during an incident.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use super::contract::{self, CheckedPlan, PlanLimits};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Template {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(rename = "match", default)]
    pub matches: Match,
    /// Case labels the placeholders need.
    #[serde(default)]
    pub labels: Vec<String>,
    /// Labels used to check the template at load time.
    #[serde(default)]
    pub example: BTreeMap<String, String>,
    pub plan: Value,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Match {
    #[serde(default)]
    pub kinds: Vec<String>,
    #[serde(default)]
    pub alertnames: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("cannot read templates from {0}: {1}")]
    Read(String, std::io::Error),
    #[error("template file {0} is not valid: {1}")]
    Parse(String, serde_json::Error),
    #[error("template {name} breaks the ChangePlan contract: {detail}")]
    Invalid { name: String, detail: String },
    #[error("two templates are named {0}")]
    Duplicate(String),
}

/// Why no plan could be made from templates.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoPlan {
    #[error("no template named {0}")]
    UnknownTemplate(String),
    #[error("no template matches alertname {alertname:?} or kind {kind:?}")]
    NoMatch {
        alertname: Option<String>,
        kind: Option<String>,
    },
    #[error("template {template} needs case label(s) {missing:?}")]
    MissingLabels {
        template: String,
        missing: Vec<String>,
    },
    #[error("template {template} rendered an invalid plan: {detail}")]
    Invalid { template: String, detail: String },
    /// Every candidate's plan failed verification on the same resource
    /// lately (the planner's memory of past cases).
    #[error("every matching template was skipped: {}", .reasons.join("; "))]
    AllSkipped { reasons: Vec<String> },
}

/// Why a rendered template is not proposed again: `None` to propose it.
pub type Skip<'a> = &'a dyn Fn(&str, &CheckedPlan) -> Option<String>;

/// The loaded, checked templates, in name order.
#[derive(Debug, Clone, Default)]
pub struct Templates {
    by_name: BTreeMap<String, Template>,
}

/// Replaces `{{label}}` in every string of `value`.
fn render(value: &Value, labels: &BTreeMap<String, String>) -> Value {
    match value {
        Value::String(s) => {
            let mut out = s.clone();
            for (k, v) in labels {
                out = out.replace(&format!("{{{{{k}}}}}"), v);
            }
            Value::String(out)
        }
        Value::Array(items) => Value::Array(items.iter().map(|v| render(v, labels)).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), render(v, labels)))
                .collect(),
        ),
        other => other.clone(),
    }
}

fn describe(violations: &[contract::Violation]) -> String {
    violations
        .iter()
        .map(|v| format!("{} {}", v.path, v.message))
        .collect::<Vec<_>>()
        .join("; ")
}

impl Templates {
    /// Loads every `*.json` in `dir` and checks each with its example labels.
    pub fn load(dir: &Path, limits: &PlanLimits) -> Result<Templates, TemplateError> {
        let shown = dir.display().to_string();
        let mut paths: Vec<_> = std::fs::read_dir(dir)
            .map_err(|e| TemplateError::Read(shown.clone(), e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        paths.sort();
        let mut templates = Vec::new();
        for path in paths {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| TemplateError::Read(path.display().to_string(), e))?;
            let t: Template = serde_json::from_str(&text)
                .map_err(|e| TemplateError::Parse(path.display().to_string(), e))?;
            templates.push(t);
        }
        Templates::new(templates, limits)
    }

    pub fn new(templates: Vec<Template>, limits: &PlanLimits) -> Result<Templates, TemplateError> {
        let mut by_name = BTreeMap::new();
        for t in templates {
            contract::check(&render(&t.plan, &t.example), limits).map_err(|v| {
                TemplateError::Invalid {
                    name: t.name.clone(),
                    detail: describe(&v),
                }
            })?;
            if by_name.contains_key(&t.name) {
                return Err(TemplateError::Duplicate(t.name));
            }
            by_name.insert(t.name.clone(), t);
        }
        Ok(Templates { by_name })
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// Chooses a template and renders it with the case's labels: the first
    /// candidate whose labels are present and that `skip` lets through.
    pub fn plan_for(
        &self,
        explicit: Option<&str>,
        kind: Option<&str>,
        labels: &BTreeMap<String, String>,
        limits: &PlanLimits,
        skip: Skip<'_>,
    ) -> Result<(String, CheckedPlan), NoPlan> {
        let alertname = labels.get("alertname").map(String::as_str);
        let candidates: Vec<&Template> = match explicit {
            Some(name) => vec![
                self.by_name
                    .get(name)
                    .ok_or_else(|| NoPlan::UnknownTemplate(name.to_string()))?,
            ],
            None => {
                let by_alert: Vec<&Template> = self
                    .by_name
                    .values()
                    .filter(|t| {
                        alertname.is_some_and(|a| t.matches.alertnames.iter().any(|x| x == a))
                    })
                    .collect();
                if by_alert.is_empty() {
                    self.by_name
                        .values()
                        .filter(|t| kind.is_some_and(|k| t.matches.kinds.iter().any(|x| x == k)))
                        .collect()
                } else {
                    by_alert
                }
            }
        };
        let missing_for = |t: &Template| -> Vec<String> {
            t.labels
                .iter()
                .filter(|l| !labels.contains_key(*l))
                .cloned()
                .collect()
        };
        let mut ready = candidates
            .iter()
            .filter(|t| missing_for(t).is_empty())
            .peekable();
        if ready.peek().is_none() {
            return Err(match candidates.first() {
                Some(t) => NoPlan::MissingLabels {
                    template: t.name.clone(),
                    missing: missing_for(t),
                },
                None => NoPlan::NoMatch {
                    alertname: alertname.map(String::from),
                    kind: kind.map(String::from),
                },
            });
        }
        let mut skipped = Vec::new();
        for chosen in ready {
            let plan = render(&chosen.plan, labels);
            let checked = contract::check(&plan, limits).map_err(|v| NoPlan::Invalid {
                template: chosen.name.clone(),
                detail: describe(&v),
            })?;
            match skip(&chosen.name, &checked) {
                Some(reason) => skipped.push(format!("template {} {reason}", chosen.name)),
                None => return Ok((chosen.name.clone(), checked)),
            }
        }
        Err(NoPlan::AllSkipped { reasons: skipped })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped() -> Templates {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("templates");
        // The shipped configuration allowlists the shipped demo script.
        let limits = PlanLimits {
            script_allowlist: ["restart-service.sh".to_string()].into(),
            ..PlanLimits::default()
        };
        Templates::load(&dir, &limits).expect("the shipped templates are valid")
    }

    fn never(_: &str, _: &CheckedPlan) -> Option<String> {
        None
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_shipped_templates_load() {
        assert!(shipped().len() >= 3);
    }

    #[test]
    fn alertname_wins_over_kind_and_labels_fill_the_plan() {
        let l = labels(&[
            ("alertname", "KubePodCrashLooping"),
            ("namespace", "shop"),
            ("deployment", "api"),
        ]);
        let (name, plan) = shipped()
            .plan_for(None, Some("latency"), &l, &PlanLimits::default(), &never)
            .unwrap();
        assert_eq!(name, "restart-deployment");
        assert_eq!(plan.plan["steps"][0]["params"]["deployment"], "api");
        assert_eq!(plan.plan["title"], "Restart deployment api in shop");
    }

    #[test]
    fn a_kind_falls_back_to_a_template_whose_labels_are_present() {
        let (name, _) = shipped()
            .plan_for(
                None,
                Some("latency"),
                &labels(&[]),
                &PlanLimits::default(),
                &never,
            )
            .unwrap();
        assert_eq!(
            name, "observe",
            "shift-traffic needs gateway and route labels"
        );
    }

    #[test]
    fn missing_labels_unknown_names_and_no_match_are_reasons() {
        let t = shipped();
        let limits = PlanLimits::default();
        assert_eq!(
            t.plan_for(
                None,
                None,
                &labels(&[("alertname", "KubePodCrashLooping")]),
                &limits,
                &never
            ),
            Err(NoPlan::MissingLabels {
                template: "restart-deployment".into(),
                missing: vec!["namespace".into(), "deployment".into()]
            })
        );
        assert_eq!(
            t.plan_for(Some("nope"), None, &labels(&[]), &limits, &never),
            Err(NoPlan::UnknownTemplate("nope".into()))
        );
        assert!(matches!(
            t.plan_for(None, Some("disk"), &labels(&[]), &limits, &never),
            Err(NoPlan::NoMatch { .. })
        ));
    }

    #[test]
    fn label_values_cannot_smuggle_invalid_params() {
        let l = labels(&[
            ("alertname", "KubePodCrashLooping"),
            ("namespace", "shop; rm -rf /"),
            ("deployment", "api"),
        ]);
        assert!(matches!(
            shipped().plan_for(None, None, &l, &PlanLimits::default(), &never),
            Err(NoPlan::Invalid { .. })
        ));
    }

    #[test]
    fn a_skipped_template_gives_way_to_the_next_and_all_skipped_is_a_reason() {
        let t = shipped();
        let limits = PlanLimits::default();
        // kind latency matches observe and shift-traffic; with the
        // gateway labels both are ready.
        let l = labels(&[("gateway", "edge"), ("route", "/checkout")]);
        let first = t
            .plan_for(None, Some("latency"), &l, &limits, &never)
            .unwrap()
            .0;
        let skip_first = |name: &str, _: &CheckedPlan| {
            (name == first).then(|| "failed verification lately".to_string())
        };
        let (second, _) = t
            .plan_for(None, Some("latency"), &l, &limits, &skip_first)
            .unwrap();
        assert_ne!(second, first);
        let skip_all = |_: &str, _: &CheckedPlan| Some("failed verification lately".to_string());
        match t.plan_for(None, Some("latency"), &l, &limits, &skip_all) {
            Err(NoPlan::AllSkipped { reasons }) => {
                assert_eq!(reasons.len(), 2, "{reasons:?}");
                assert!(reasons[0].contains("failed verification lately"));
            }
            other => panic!("expected every template skipped, got {other:?}"),
        }
    }

    #[test]
    fn a_broken_template_is_a_load_error() {
        let broken: Template = serde_json::from_value(serde_json::json!({
            "name": "broken", "plan": {"title": "x", "steps": [], "rollback": {}, "verify": {}}
        }))
        .unwrap();
        assert!(matches!(
            Templates::new(vec![broken], &PlanLimits::default()),
            Err(TemplateError::Invalid { .. })
        ));
    }
}
