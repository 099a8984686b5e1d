//! The ChangePlan as a typed model: steps with an `Action` carrying its own
//! params, the rollback, and the verification checks.
//!
//! The JSON Schema (`planner/changeplan.schema.json`) stays the public
//! contract and the LLM's structured-output format; `planner::contract`
//! checks a plan against it and the completeness guard, then parses it into
//! this model once. The plan hash is the canonical hash of the stored JSON,
//! never of this model re-serialised. Planner, gatekeeper, executor,
//! verifier and the orchestrator's facts read plans only through it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ChangePlan {
    pub title: String,
    #[serde(default)]
    pub rationale: Option<String>,
    /// The plan's own estimate: it may raise the gate's risk, never lower it.
    #[serde(default)]
    pub risk_score: Option<f64>,
    /// The environment the plan says it targets.
    #[serde(default)]
    pub environment: Option<String>,
    pub steps: Vec<Step>,
    #[serde(default)]
    pub rollback: Rollback,
    #[serde(default)]
    pub verify: VerifySpec,
    #[serde(default)]
    pub references: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct Rollback {
    #[serde(default)]
    pub steps: Vec<Step>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct VerifySpec {
    #[serde(default)]
    pub checks: Vec<Check>,
}

impl ChangePlan {
    /// A plan as stored (it passed the contract when it was proposed).
    pub fn from_stored(plan: &Value) -> Result<ChangePlan, String> {
        ChangePlan::deserialize(plan).map_err(|e| format!("the stored plan does not parse: {e}"))
    }

    pub fn has_rollback(&self) -> bool {
        !self.rollback.steps.is_empty()
    }

    /// The forward steps, then the rollback steps.
    pub fn all_steps(&self) -> impl Iterator<Item = &Step> {
        self.steps.iter().chain(&self.rollback.steps)
    }
}

/// One step: what to do, how long it may take, how often to try again.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "RawStep")]
pub struct Step {
    pub action: Action,
    pub timeout_s: u64,
    pub retry: u32,
}

/// A step as written: the action's name and its params side by side.
#[derive(Deserialize)]
struct RawStep {
    action: String,
    #[serde(default)]
    params: Option<Value>,
    timeout_s: u64,
    retry: u32,
}

impl TryFrom<RawStep> for Step {
    type Error = String;
    fn try_from(raw: RawStep) -> Result<Step, String> {
        let params = raw
            .params
            .unwrap_or_else(|| Value::Object(Default::default()));
        let typed = |e: serde_json::Error| format!("params of {}: {e}", raw.action);
        let action = match raw.action.as_str() {
            Action::NOOP => Action::Noop,
            Action::SCRIPT_EXEC => {
                Action::ScriptExec(ScriptParams::deserialize(&params).map_err(typed)?)
            }
            Action::K8S_ROLLOUT => {
                Action::K8sRollout(RolloutParams::deserialize(&params).map_err(typed)?)
            }
            Action::GATEWAY_FLIP => {
                Action::GatewayFlip(FlipParams::deserialize(&params).map_err(typed)?)
            }
            other => return Err(format!("unknown action {other:?}")),
        };
        Ok(Step {
            action,
            timeout_s: raw.timeout_s,
            retry: raw.retry,
        })
    }
}

/// What a step does, with the params of that action.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Noop,
    ScriptExec(ScriptParams),
    K8sRollout(RolloutParams),
    GatewayFlip(FlipParams),
}

impl Action {
    pub const NOOP: &'static str = "noop";
    pub const SCRIPT_EXEC: &'static str = "script.exec";
    pub const K8S_ROLLOUT: &'static str = "k8s.rollout";
    pub const GATEWAY_FLIP: &'static str = "gateway.flip";

    /// The action's name in the plan (`k8s.rollout`, …).
    pub fn name(&self) -> &'static str {
        match self {
            Action::Noop => Action::NOOP,
            Action::ScriptExec(_) => Action::SCRIPT_EXEC,
            Action::K8sRollout(_) => Action::K8S_ROLLOUT,
            Action::GatewayFlip(_) => Action::GATEWAY_FLIP,
        }
    }

    /// `undo: true`: put back what this plan's steps changed on the target.
    pub fn is_undo(&self) -> bool {
        match self {
            Action::K8sRollout(p) => p.undo,
            Action::GatewayFlip(p) => p.undo,
            Action::Noop | Action::ScriptExec(_) => false,
        }
    }

    /// The resource a step changes: the key of the one-run-per-target rule
    /// and of the state an `undo` step restores.
    pub fn target(&self) -> Option<String> {
        match self {
            Action::ScriptExec(p) => Some(format!(
                "script:{}:{}",
                p.script,
                p.args
                    .as_ref()
                    .map(|a| serde_json::to_string(a).expect("strings serialise"))
                    .unwrap_or_default()
            )),
            Action::K8sRollout(p) => Some(format!("k8s:{}/{}", p.namespace, p.deployment)),
            Action::GatewayFlip(p) => Some(format!("gateway:{}{}", p.gateway, p.route)),
            Action::Noop => None,
        }
    }

    /// Every name the step touches (namespace, deployment, gateway, route,
    /// script), for the gate's forbidden-target rule.
    pub fn names(&self) -> Vec<&str> {
        match self {
            Action::ScriptExec(p) => vec![p.script.as_str()],
            Action::K8sRollout(p) => vec![p.namespace.as_str(), p.deployment.as_str()],
            Action::GatewayFlip(p) => vec![p.gateway.as_str(), p.route.as_str()],
            Action::Noop => Vec::new(),
        }
    }
}

/// `script.exec`: an allowlisted script by name and its argv. Never a
/// command line: no text here reaches a shell.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScriptParams {
    pub script: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<String>>,
}

/// `k8s.rollout`: one of a new image, a restart, or (in a rollback) undo.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutParams {
    pub namespace: String,
    pub deployment: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    #[serde(default)]
    pub restart: bool,
    #[serde(default)]
    pub undo: bool,
}

/// `gateway.flip`: new backend weights for a route, or (in a rollback) undo.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlipParams {
    pub gateway: String,
    pub route: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights: Option<BTreeMap<String, u64>>,
    #[serde(default)]
    pub undo: bool,
}

/// One SLO check: `stat` of `metric` over `window_s` compared with
/// `threshold`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Check {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    pub metric: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stat: Option<Stat>,
    pub op: Op,
    /// Kept as written (an integer stays an integer when the check is
    /// echoed into a verification result).
    pub threshold: serde_json::Number,
    pub window_s: u64,
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, strum::IntoStaticStr, strum::Display,
)]
#[serde(rename_all = "lowercase")]
#[strum(serialize_all = "lowercase")]
pub enum Stat {
    Avg,
    Max,
    P95,
}

impl Stat {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, strum::Display)]
pub enum Op {
    #[serde(rename = "<")]
    #[strum(serialize = "<")]
    Lt,
    #[serde(rename = "<=")]
    #[strum(serialize = "<=")]
    Le,
    #[serde(rename = ">")]
    #[strum(serialize = ">")]
    Gt,
    #[serde(rename = ">=")]
    #[strum(serialize = ">=")]
    Ge,
}

impl Op {
    pub fn holds(self, figure: f64, threshold: f64) -> bool {
        match self {
            Op::Lt => figure < threshold,
            Op::Le => figure <= threshold,
            Op::Gt => figure > threshold,
            Op::Ge => figure >= threshold,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn every_action_parses_with_its_params() {
        let plan = json!({
            "title": "t", "environment": "prod", "risk_score": 0.4, "extra": "ignored",
            "steps": [
                {"action": "script.exec", "params": {"script": "r.sh", "args": ["--zone", "a"]}, "timeout_s": 60, "retry": 1},
                {"action": "k8s.rollout", "params": {"namespace": "shop", "deployment": "api", "image": "api:2"}, "timeout_s": 300, "retry": 0},
                {"action": "gateway.flip", "params": {"gateway": "edge", "route": "/api", "weights": {"a": 90, "b": 10}}, "timeout_s": 30, "retry": 0},
                {"action": "noop", "timeout_s": 10, "retry": 0}
            ],
            "rollback": {"steps": [{"action": "k8s.rollout", "params": {"namespace": "shop", "deployment": "api", "undo": true}, "timeout_s": 60, "retry": 0}]},
            "verify": {"checks": [{"metric": "latency_ms", "stat": "p95", "op": "<", "threshold": 800, "window_s": 300}]}
        });
        let p = ChangePlan::from_stored(&plan).unwrap();
        assert_eq!(
            p.all_steps().map(|s| s.action.name()).collect::<Vec<_>>(),
            [
                "script.exec",
                "k8s.rollout",
                "gateway.flip",
                "noop",
                "k8s.rollout"
            ]
        );
        assert!(p.has_rollback() && p.rollback.steps[0].action.is_undo());
        assert_eq!(
            p.steps[0].action.target().as_deref(),
            Some(r#"script:r.sh:["--zone","a"]"#)
        );
        assert_eq!(p.environment.as_deref(), Some("prod"));
        // A check is echoed as written.
        assert_eq!(
            serde_json::to_value(&p.verify.checks[0]).unwrap(),
            plan["verify"]["checks"][0]
        );
    }

    #[test]
    fn a_step_whose_params_do_not_fit_its_action_is_refused() {
        for step in [
            json!({"action": "k8s.rollout", "params": {"namespace": "shop"}, "timeout_s": 60, "retry": 0}),
            json!({"action": "shell.exec", "timeout_s": 60, "retry": 0}),
            json!({"action": "script.exec", "params": {"script": "r.sh", "args": "rm -rf /"}, "timeout_s": 60, "retry": 0}),
        ] {
            let plan = json!({"title": "t", "steps": [step], "rollback": {}, "verify": {}});
            assert!(ChangePlan::from_stored(&plan).is_err(), "{plan}");
        }
    }
}
