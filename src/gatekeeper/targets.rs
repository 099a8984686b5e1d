//! The operator's targets file: which environment each thing a plan can
//! touch lives in (issue #13).
//!
//! A plan's own `environment` is text an LLM may have written; the gate
//! cannot take it as the truth. Each step's target (Kubernetes namespace
//! and deployment, gateway and route, script and argv) is looked up here
//! instead: the first rule that matches (for the case's tenant) names the
//! environment; a target no rule matches counts as the highest environment
//! (fail closed). The plan's `environment` may raise the result, never
//! lower it. Pure: loaded once, read by the gatekeeper, the orchestrator
//! and the executor alike (through `Policy`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::Deserialize;

use crate::contract::ChangePlan;
use crate::contract::plan::Action;

/// The environments, lowest first, and the rules.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Targets {
    /// Lowest first. The last one is where a target no rule matches goes,
    /// so it must be one of the policy's `prod_environments`.
    #[serde(default = "default_environments")]
    pub environments: Vec<String>,
    #[serde(default, rename = "target")]
    pub rules: Vec<TargetRule>,
    /// What the operator declares about each script `script.exec` may run:
    /// `[scripts."name.sh"] dry_run_flag = "--dry-run"`.
    #[serde(default)]
    pub scripts: BTreeMap<String, ScriptDecl>,
}

/// A script's declaration in the targets file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptDecl {
    /// The argument that makes the script show what it would do without
    /// doing it; appended to the step's argv for the dry run before the
    /// gate. A script without one cannot be rehearsed (`unavailable`).
    #[serde(default)]
    pub dry_run_flag: Option<String>,
}

fn default_environments() -> Vec<String> {
    ["dev", "staging", "prod"].map(String::from).to_vec()
}

impl Default for Targets {
    /// No rules: every target counts as `prod`.
    fn default() -> Self {
        Targets {
            environments: default_environments(),
            rules: Vec::new(),
            scripts: BTreeMap::new(),
        }
    }
}

/// One rule: a pattern for one kind of target, and its environment.
/// Patterns are globs where `*` matches any run of characters.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetRule {
    pub environment: String,
    /// The tenants the rule is for; empty: every tenant.
    #[serde(default)]
    pub tenants: BTreeSet<String>,
    /// `k8s.rollout`: the namespace, and optionally the deployment.
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub deployment: Option<String>,
    /// `gateway.flip`: the gateway, and optionally the route.
    #[serde(default)]
    pub gateway: Option<String>,
    #[serde(default)]
    pub route: Option<String>,
    /// `script.exec`: the script, and optionally its argv, one pattern per
    /// argument (the argv must have exactly as many).
    #[serde(default)]
    pub script: Option<String>,
    #[serde(default)]
    pub args: Option<Vec<String>>,
}

#[derive(Debug, thiserror::Error)]
pub enum TargetsError {
    #[error("cannot read targets file {0}: {1}")]
    Read(String, std::io::Error),
    #[error("targets file {0} is not valid: {1}")]
    Parse(String, toml::de::Error),
    #[error("targets file: {0}")]
    Invalid(String),
}

/// `*` matches any run of characters (also none, also `/`); everything else
/// matches itself.
pub fn glob(pattern: &str, text: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == text,
        Some((head, rest)) => {
            let Some(after) = text.strip_prefix(head) else {
                return false;
            };
            (0..=after.len())
                .filter(|i| after.is_char_boundary(*i))
                .any(|i| glob(rest, &after[i..]))
        }
    }
}

fn matches(pattern: &Option<String>, text: &str) -> bool {
    pattern.as_deref().is_none_or(|p| glob(p, text))
}

impl TargetRule {
    fn kind(&self) -> Result<&'static str, String> {
        let kinds = [
            (self.namespace.is_some(), "namespace"),
            (self.gateway.is_some(), "gateway"),
            (self.script.is_some(), "script"),
        ];
        let named: Vec<&str> = kinds.iter().filter(|k| k.0).map(|k| k.1).collect();
        let kind = match named.as_slice() {
            [one] => *one,
            _ => {
                return Err(format!(
                    "a target names exactly one of namespace, gateway, script (this one: {})",
                    if named.is_empty() {
                        "none".into()
                    } else {
                        named.join(", ")
                    }
                ));
            }
        };
        let stray = match kind {
            "namespace" => self.route.is_some() || self.args.is_some(),
            "gateway" => self.deployment.is_some() || self.args.is_some(),
            _ => self.deployment.is_some() || self.route.is_some(),
        };
        if stray {
            return Err(format!(
                "a {kind} target takes only its own fields (namespace+deployment, gateway+route, script+args)"
            ));
        }
        Ok(kind)
    }

    fn covers(&self, tenant: &str, action: &Action) -> bool {
        if !self.tenants.is_empty() && !self.tenants.contains(tenant) {
            return false;
        }
        match action {
            Action::K8sRollout(p) => {
                matches(&self.namespace, &p.namespace)
                    && self.namespace.is_some()
                    && matches(&self.deployment, &p.deployment)
            }
            Action::GatewayFlip(p) => {
                self.gateway.is_some()
                    && matches(&self.gateway, &p.gateway)
                    && matches(&self.route, &p.route)
            }
            Action::ScriptExec(p) => {
                let args_match = match (&self.args, &p.args) {
                    (None, _) => true,
                    (Some(want), given) => {
                        let given = given.as_deref().unwrap_or_default();
                        want.len() == given.len() && want.iter().zip(given).all(|(w, g)| glob(w, g))
                    }
                };
                self.script.is_some() && matches(&self.script, &p.script) && args_match
            }
            Action::Noop => false,
        }
    }
}

/// A plan's environments as the operator's file decides them.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanEnvironment {
    /// The highest environment of any step (or the plan's, if higher).
    pub name: String,
    /// Every environment a step of the plan touches, and `name`: a change
    /// freeze of any of them holds for the plan.
    pub all: BTreeSet<String>,
    /// How each was decided, for the gate's reasons.
    pub reasons: Vec<String>,
}

impl Targets {
    pub fn load(path: &Path) -> Result<Targets, TargetsError> {
        let shown = path.display().to_string();
        let text =
            std::fs::read_to_string(path).map_err(|e| TargetsError::Read(shown.clone(), e))?;
        let targets: Targets = toml::from_str(&text).map_err(|e| TargetsError::Parse(shown, e))?;
        targets.validate()?;
        Ok(targets)
    }

    pub fn validate(&self) -> Result<(), TargetsError> {
        let invalid = |m: String| Err(TargetsError::Invalid(m));
        if self.environments.is_empty() {
            return invalid("environments: name at least one (lowest first)".into());
        }
        let distinct: BTreeSet<&String> = self.environments.iter().collect();
        if distinct.len() != self.environments.len() {
            return invalid("environments: each name once".into());
        }
        for (i, rule) in self.rules.iter().enumerate() {
            let kind = rule
                .kind()
                .map_err(|e| TargetsError::Invalid(format!("target {i}: {e}")))?;
            if !self.environments.contains(&rule.environment) {
                return invalid(format!(
                    "target {i} ({kind}): environment {:?} is not one of environments",
                    rule.environment
                ));
            }
            let patterns = [
                &rule.namespace,
                &rule.deployment,
                &rule.gateway,
                &rule.route,
                &rule.script,
            ];
            let empty = patterns.iter().any(|p| p.as_deref() == Some(""))
                || rule.args.iter().flatten().any(String::is_empty);
            if empty {
                return invalid(format!(
                    "target {i} ({kind}): an empty pattern matches nothing"
                ));
            }
        }
        for (name, decl) in &self.scripts {
            // One argv element, an option: never a value a shell or the
            // script could read as something else.
            let flag_ok = decl.dry_run_flag.as_deref().is_none_or(|f| {
                f.len() <= 64
                    && f.starts_with('-')
                    && f.chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '='))
            });
            if !flag_ok {
                return invalid(format!(
                    "scripts.{name:?}: dry_run_flag must be one option like --dry-run (letters, digits, - _ =; at most 64)"
                ));
            }
        }
        Ok(())
    }

    /// The dry-run flag the operator declared for a script, if any.
    pub fn dry_run_flag(&self, script: &str) -> Option<&str> {
        self.scripts.get(script)?.dry_run_flag.as_deref()
    }

    /// Where a target no rule matches goes: the highest environment.
    pub fn highest(&self) -> &str {
        self.environments.last().map_or("prod", String::as_str)
    }

    fn rank(&self, environment: &str) -> Option<usize> {
        self.environments.iter().position(|e| e == environment)
    }

    /// The environment of one step's target for a tenant: the first
    /// matching rule's, else the highest. `None` for a step that touches
    /// nothing (`noop`).
    pub fn environment_of(&self, tenant: &str, action: &Action) -> Option<(&str, bool)> {
        action.target()?;
        Some(
            self.rules
                .iter()
                .find(|r| r.covers(tenant, action))
                .map_or((self.highest(), false), |r| (r.environment.as_str(), true)),
        )
    }

    /// The plan's environment for `tenant`: the highest of its steps'
    /// (rollback steps too: they change the same things), raised by the
    /// plan's own `environment` if that is higher; a plan environment not
    /// in the list counts as the highest (fail closed). A plan whose steps
    /// touch nothing is in its own environment, else the lowest.
    pub fn plan_environment(&self, plan: &ChangePlan, tenant: &str) -> PlanEnvironment {
        let mut all = BTreeSet::new();
        let mut reasons = Vec::new();
        for step in plan.all_steps() {
            if let Some((env, known)) = self.environment_of(tenant, &step.action) {
                if !known {
                    let target = step.action.target().unwrap_or_default();
                    let reason =
                        format!("target {target} is in no rule of the targets file: {env}");
                    if !reasons.contains(&reason) {
                        reasons.push(reason);
                    }
                }
                all.insert(env.to_string());
            }
        }
        let from_steps = all.iter().max_by_key(|e| self.rank(e)).cloned();
        let declared = plan.environment.as_deref().map(|d| match self.rank(d) {
            Some(_) => d.to_string(),
            None => {
                reasons.push(format!(
                    "the plan's environment {d:?} is not one the targets file knows: {}",
                    self.highest()
                ));
                self.highest().to_string()
            }
        });
        let name = match (from_steps, declared) {
            (Some(s), Some(d)) if self.rank(&d) > self.rank(&s) => {
                reasons.push(format!(
                    "the plan's environment {d} raises its targets' {s}"
                ));
                d
            }
            (Some(s), _) => s,
            (None, Some(d)) => d,
            (None, None) => self.environments.first().cloned().unwrap_or_default(),
        };
        all.insert(name.clone());
        PlanEnvironment { name, all, reasons }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn targets() -> Targets {
        let t: Targets = toml::from_str(
            r#"
            environments = ["dev", "staging", "prod"]
            [[target]]
            environment = "prod"
            tenants = ["t-002"]
            namespace = "shop"
            [[target]]
            environment = "staging"
            namespace = "shop"
            deployment = "*"
            [[target]]
            environment = "staging"
            script = "restart-service.sh"
            args = ["--service", "*"]
            [[target]]
            environment = "dev"
            gateway = "edge-dev"
            "#,
        )
        .unwrap();
        t.validate().unwrap();
        t
    }

    fn plan(env: Option<&str>, steps: serde_json::Value) -> ChangePlan {
        let p = json!({"title": "t", "steps": steps, "rollback": {"steps": []},
                       "verify": {"checks": []}});
        ChangePlan {
            environment: env.map(String::from),
            ..ChangePlan::from_stored(&p).unwrap()
        }
    }

    fn script(args: &[&str]) -> serde_json::Value {
        json!([{"action": "script.exec", "params": {"script": "restart-service.sh", "args": args},
                "timeout_s": 10, "retry": 0}])
    }

    #[test]
    fn globs_match_runs_of_characters() {
        assert!(glob("shop-*", "shop-eu"));
        assert!(glob("*", ""));
        assert!(glob("a*b*c", "a-x-b-y-c"));
        assert!(!glob("shop-*", "shopping"));
        assert!(!glob("shop", "shop-eu"));
        assert!(glob("/api*", "/api/v1"));
    }

    #[test]
    fn the_plan_cannot_lower_its_targets_environment() {
        let t = targets();
        let k8s = json!([{"action": "k8s.rollout", "params": {"namespace": "shop", "deployment": "api", "restart": true},
                          "timeout_s": 10, "retry": 0}]);
        assert_eq!(
            t.plan_environment(&plan(None, k8s.clone()), "t-001").name,
            "staging"
        );
        assert_eq!(
            t.plan_environment(&plan(Some("dev"), k8s.clone()), "t-001")
                .name,
            "staging"
        );
        assert_eq!(
            t.plan_environment(&plan(Some("prod"), k8s.clone()), "t-001")
                .name,
            "prod"
        );
        // The same namespace is production for another tenant.
        assert_eq!(
            t.plan_environment(&plan(Some("staging"), k8s), "t-002")
                .name,
            "prod"
        );
    }

    #[test]
    fn an_unknown_target_or_argv_counts_as_prod() {
        let t = targets();
        let known = t.plan_environment(
            &plan(Some("staging"), script(&["--service", "checkout"])),
            "t-001",
        );
        assert_eq!(known.name, "staging");
        for args in [
            &["--service", "checkout", "--force"][..],
            &["--all"][..],
            &[][..],
        ] {
            let e = t.plan_environment(&plan(Some("staging"), script(args)), "t-001");
            assert_eq!(e.name, "prod", "{args:?}");
            assert!(e.reasons[0].contains("no rule"), "{:?}", e.reasons);
        }
        let gw = json!([{"action": "gateway.flip", "params": {"gateway": "edge", "route": "/", "weights": {"a": 1}},
                         "timeout_s": 10, "retry": 0}]);
        assert_eq!(t.plan_environment(&plan(None, gw), "t-001").name, "prod");
    }

    #[test]
    fn an_unknown_plan_environment_counts_as_the_highest() {
        let t = targets();
        let e = t.plan_environment(&plan(Some("qa"), script(&["--service", "x"])), "t-001");
        assert_eq!(e.name, "prod");
        assert!(e.all.contains("staging") && e.all.contains("prod"));
    }

    #[test]
    fn a_plan_that_touches_nothing_is_in_its_own_or_the_lowest_environment() {
        let t = targets();
        let noop = json!([{"action": "noop", "timeout_s": 10, "retry": 0}]);
        assert_eq!(
            t.plan_environment(&plan(None, noop.clone()), "t-001").name,
            "dev"
        );
        assert_eq!(
            t.plan_environment(&plan(Some("staging"), noop), "t-001")
                .name,
            "staging"
        );
    }

    #[test]
    fn bad_files_are_refused_with_the_rule_named() {
        for (text, want) in [
            ("[[target]]\nenvironment = \"staging\"\n", "exactly one"),
            (
                "[[target]]\nenvironment = \"qa\"\nscript = \"x\"\n",
                "not one of environments",
            ),
            (
                "[[target]]\nenvironment = \"dev\"\nscript = \"x\"\nroute = \"/\"\n",
                "only its own",
            ),
            (
                "[[target]]\nenvironment = \"dev\"\nnamespace = \"\"\n",
                "empty pattern",
            ),
            ("environments = [\"a\", \"a\"]\n", "once"),
        ] {
            let t: Targets = toml::from_str(text).unwrap();
            let e = t.validate().unwrap_err().to_string();
            assert!(e.contains(want), "{text}: {e}");
        }
    }

    /// The file shipped in `config/` loads, and keeps the demo's targets
    /// out of production.
    #[test]
    fn the_shipped_targets_file_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/targets.toml");
        let t = Targets::load(&path).unwrap();
        let e = t.plan_environment(
            &plan(Some("staging"), script(&["--service", "checkout"])),
            "t-001",
        );
        assert_eq!(e.name, "staging");
    }
}
