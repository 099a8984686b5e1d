//! The gate policy: deterministic risk from a plan's content, and the
//! verdict (automatic approval, people required, or denial) with reasons.
//!
//! Pure. A plan's own `risk_score` may raise the computed risk, never lower
//! it: an LLM does not grade its own homework.

use std::collections::BTreeSet;
use std::path::Path;

use chrono::{DateTime, Datelike, NaiveTime, Utc};
use serde::{Deserialize, Serialize};

use super::targets::{PlanEnvironment, Targets};
use crate::contract::ChangePlan;
use crate::contract::fact::DryRunOutcome;
use crate::contract::plan::Action;

/// The policy file (`OPSLOOP_POLICY_FILE`, TOML); every field has the
/// default shipped in DESIGN §4.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Policy {
    /// At or below this risk, outside production, no person is needed.
    pub auto_approve_max_risk: f64,
    /// At or above this risk, `quorum` distinct people are needed.
    pub quorum_risk: f64,
    pub quorum: u8,
    pub prod_environments: BTreeSet<String>,
    /// Actions the gate lets through at all.
    pub allowed_actions: BTreeSet<String>,
    /// Namespaces, deployments, gateways, routes or scripts never touched.
    pub forbidden_targets: BTreeSet<String>,
    pub max_steps: usize,
    /// Whether a failed verification may roll back without a person.
    pub auto_rollback: bool,
    /// A plan whose dry run could not rehearse every step (`unavailable`,
    /// or no dry run at all) is never approved automatically: one person
    /// at least looks at it.
    pub dryrun_unavailable_needs_human: bool,
    /// Change freezes: inside one, nothing executes without a break-glass
    /// override approved by `quorum` distinct people.
    pub freeze_windows: Vec<FreezeWindow>,
    /// Automatic re-plans after a failed verification was rolled back.
    pub replan: ReplanPolicy,
    /// The operator's targets file (`OPSLOOP_TARGETS_FILE`): the environment
    /// of each step's target. Not a field of the policy file.
    #[serde(skip)]
    pub targets: Targets,
}

/// `[replan]`: after a failed verification's rollback, the orchestrator
/// asks the planner again (with the figures) at most `max_per_case` times
/// per case; 0 (the default) leaves every such case PARKED for a person.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReplanPolicy {
    pub max_per_case: u32,
}

/// An absolute range (`from`..`until`) or a weekly window in UTC (`days`,
/// `start`..`end` as HH:MM), limited to some environments / tenants (empty:
/// all).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FreezeWindow {
    pub name: String,
    #[serde(default)]
    pub from: Option<DateTime<Utc>>,
    #[serde(default)]
    pub until: Option<DateTime<Utc>>,
    /// `mon` … `sun`.
    #[serde(default)]
    pub days: Vec<String>,
    #[serde(default)]
    pub start: Option<String>,
    #[serde(default)]
    pub end: Option<String>,
    #[serde(default)]
    pub environments: BTreeSet<String>,
    #[serde(default)]
    pub tenants: BTreeSet<String>,
}

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

fn hhmm(s: &Option<String>) -> Option<NaiveTime> {
    s.as_deref()
        .and_then(|t| NaiveTime::parse_from_str(t, "%H:%M").ok())
}

impl FreezeWindow {
    fn check(&self) -> Result<(), String> {
        let absolute = self.from.is_some() || self.until.is_some();
        let weekly = !self.days.is_empty() || self.start.is_some() || self.end.is_some();
        match (absolute, weekly) {
            (true, false) => match (self.from, self.until) {
                (Some(f), Some(u)) if f < u => Ok(()),
                _ => Err(format!("freeze {}: needs from < until", self.name)),
            },
            (false, true) => {
                let days_ok =
                    !self.days.is_empty() && self.days.iter().all(|d| DAYS.contains(&d.as_str()));
                match (days_ok, hhmm(&self.start), hhmm(&self.end)) {
                    (true, Some(s), Some(e)) if s < e => Ok(()),
                    _ => Err(format!(
                        "freeze {}: needs days (mon..sun) and start < end as HH:MM",
                        self.name
                    )),
                }
            }
            _ => Err(format!(
                "freeze {}: either from/until or days/start/end",
                self.name
            )),
        }
    }

    /// Whether the window covers `now` for this environment and tenant.
    pub fn active(&self, now: DateTime<Utc>, environment: &str, tenant: &str) -> bool {
        let in_scope = (self.environments.is_empty() || self.environments.contains(environment))
            && (self.tenants.is_empty() || self.tenants.contains(tenant));
        if !in_scope {
            return false;
        }
        match (self.from, self.until) {
            (Some(f), Some(u)) => f <= now && now < u,
            _ => {
                let day = DAYS[now.weekday().num_days_from_monday() as usize];
                let time = now.time();
                self.days.iter().any(|d| d == day)
                    && hhmm(&self.start).is_some_and(|s| s <= time)
                    && hhmm(&self.end).is_some_and(|e| time < e)
            }
        }
    }
}

/// What the gate knows besides the plan, passed in so `evaluate` stays pure.
#[derive(Debug, Clone)]
pub struct GateContext<'a> {
    pub now: DateTime<Utc>,
    pub tenant: &'a str,
    /// How the plan's latest dry run ended; `None`: it has none.
    pub dryrun: Option<DryRunOutcome>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            auto_approve_max_risk: 0.3,
            quorum_risk: 0.8,
            quorum: 2,
            prod_environments: ["prod".to_string(), "production".to_string()].into(),
            allowed_actions: ["noop", "script.exec", "k8s.rollout", "gateway.flip"]
                .into_iter()
                .map(String::from)
                .collect(),
            forbidden_targets: ["kube-system".to_string()].into(),
            max_steps: 20,
            auto_rollback: true,
            dryrun_unavailable_needs_human: true,
            freeze_windows: Vec::new(),
            replan: ReplanPolicy::default(),
            targets: Targets::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read policy file {0}: {1}")]
    Read(String, std::io::Error),
    #[error("policy file {0} is not valid: {1}")]
    Parse(String, toml::de::Error),
    #[error("policy: {0}")]
    Invalid(String),
}

impl Policy {
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let shown = path.display().to_string();
        let text =
            std::fs::read_to_string(path).map_err(|e| PolicyError::Read(shown.clone(), e))?;
        let policy: Policy = toml::from_str(&text).map_err(|e| PolicyError::Parse(shown, e))?;
        policy.validate()?;
        Ok(policy)
    }

    pub fn validate(&self) -> Result<(), PolicyError> {
        let ok = (0.0..=1.0).contains(&self.auto_approve_max_risk)
            && (0.0..=1.0).contains(&self.quorum_risk)
            && self.auto_approve_max_risk < self.quorum_risk
            && (2..=10).contains(&self.quorum);
        if !ok {
            return Err(PolicyError::Invalid(
                "need 0 <= auto_approve_max_risk < quorum_risk <= 1 and 2 <= quorum <= 10".into(),
            ));
        }
        if self.replan.max_per_case > 5 {
            return Err(PolicyError::Invalid(
                "replan.max_per_case is at most 5: each re-plan runs another change".into(),
            ));
        }
        self.freeze_windows
            .iter()
            .try_for_each(FreezeWindow::check)
            .map_err(PolicyError::Invalid)?;
        if !self.prod_environments.contains(self.targets.highest()) {
            return Err(PolicyError::Invalid(format!(
                "the targets file's highest environment {:?} (where unknown targets go) \
                 must be one of prod_environments",
                self.targets.highest()
            )));
        }
        Ok(())
    }

    /// The policy with the operator's targets (checked against it).
    pub fn with_targets(mut self, targets: Targets) -> Result<Policy, PolicyError> {
        self.targets = targets;
        self.validate()?;
        Ok(self)
    }

    /// The plan's environment for a tenant, from the targets file.
    pub fn environment(&self, plan: &ChangePlan, tenant: &str) -> PlanEnvironment {
        self.targets.plan_environment(plan, tenant)
    }

    /// Every environment the plan touches (`PlanEnvironment::all`); a plan
    /// the model cannot read (`None`) is in the highest (fail closed).
    pub fn environments_of(&self, plan: Option<&ChangePlan>, tenant: &str) -> BTreeSet<String> {
        match plan {
            Some(plan) => self.environment(plan, tenant).all,
            None => [self.targets.highest().to_string()].into(),
        }
    }

    /// The change freeze covering any of these environments now.
    pub fn freeze_in(
        &self,
        environments: &BTreeSet<String>,
        tenant: &str,
        now: DateTime<Utc>,
    ) -> Option<&FreezeWindow> {
        self.freeze_windows
            .iter()
            .find(|w| environments.iter().any(|e| w.active(now, e, tenant)))
    }

    /// The change freeze covering the plan now: one covering any
    /// environment its steps touch.
    pub fn active_freeze(
        &self,
        plan: Option<&ChangePlan>,
        tenant: &str,
        now: DateTime<Utc>,
    ) -> Option<&FreezeWindow> {
        self.freeze_in(&self.environments_of(plan, tenant), tenant, now)
    }
}

/// What the gate decided for one plan hash.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    AutoApprove,
    RequireApprovers {
        count: u8,
    },
    /// Inside a change freeze: `count` distinct people must approve a
    /// break-glass override.
    BreakGlass {
        count: u8,
        freeze: String,
    },
    Deny,
}

impl Verdict {
    /// The name stored in `plan_proposed.gate_verdict`.
    pub fn name(&self) -> &'static str {
        match self {
            Verdict::AutoApprove => "auto_approve",
            Verdict::RequireApprovers { .. } => "require_approvers",
            Verdict::BreakGlass { .. } => "break_glass",
            Verdict::Deny => "deny",
        }
    }

    /// Distinct people who must approve; `None` when none can (automatic
    /// approval, denial).
    pub fn required_approvers(&self) -> Option<u8> {
        match self {
            Verdict::RequireApprovers { count } | Verdict::BreakGlass { count, .. } => Some(*count),
            Verdict::AutoApprove | Verdict::Deny => None,
        }
    }

    pub fn freeze(&self) -> Option<&str> {
        match self {
            Verdict::BreakGlass { freeze, .. } => Some(freeze),
            Verdict::AutoApprove | Verdict::RequireApprovers { .. } | Verdict::Deny => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GateDecision {
    #[serde(flatten)]
    pub verdict: Verdict,
    pub risk: f64,
    pub reasons: Vec<String>,
}

fn action_risk(action: &Action) -> f64 {
    match action {
        Action::Noop => 0.0,
        Action::ScriptExec(_) => 0.2,
        Action::GatewayFlip(_) => 0.3,
        Action::K8sRollout(_) => 0.35,
    }
}

/// The computed risk and its reasons, from the plan's content and the
/// environment its targets are in.
pub fn risk(
    plan: &ChangePlan,
    policy: &Policy,
    environment: &PlanEnvironment,
) -> (f64, Vec<String>) {
    let mut reasons = Vec::new();
    let mut risk = plan
        .all_steps()
        .map(|s| action_risk(&s.action))
        .fold(0.0, f64::max);
    reasons.push(format!("riskiest action weighs {risk:.2}"));
    let n = plan.steps.len();
    if n > 1 {
        let extra = 0.03 * (n - 1) as f64;
        risk += extra;
        reasons.push(format!("{n} steps add {extra:.2}"));
    }
    if !plan.has_rollback() {
        risk += 0.2;
        reasons.push("no rollback steps add 0.20".into());
    }
    reasons.extend(environment.reasons.iter().cloned());
    let env = &environment.name;
    if policy.prod_environments.contains(env) {
        risk += 0.3;
        reasons.push(format!("environment {env} adds 0.30"));
    }
    if let Some(own) = plan.risk_score
        && own > risk
    {
        reasons.push(format!("the plan's own risk_score {own:.2} raises it"));
        risk = own;
    }
    (risk.clamp(0.0, 1.0), reasons)
}

/// The gate's verdict for a plan that already passed the ChangePlan contract.
pub fn evaluate(plan: &ChangePlan, policy: &Policy, ctx: &GateContext) -> GateDecision {
    let environment = policy.environment(plan, ctx.tenant);
    let (risk, mut reasons) = risk(plan, policy, &environment);
    let mut denials = Vec::new();
    for step in plan.all_steps() {
        let action = step.action.name();
        if !policy.allowed_actions.contains(action) {
            denials.push(format!("action {action} is not allowed"));
        }
        for t in step.action.names() {
            if policy.forbidden_targets.contains(t) {
                denials.push(format!("target {t} is forbidden"));
            }
        }
    }
    if plan.steps.len() > policy.max_steps {
        denials.push(format!("more than {} steps", policy.max_steps));
    }
    // The FSM parks a plan whose dry run failed before the gate; a gate
    // evaluation that arrives anyway (a re-drive) denies it.
    if ctx.dryrun == Some(DryRunOutcome::Failed) {
        denials.push("its dry run failed".into());
    }
    let prod = policy.prod_environments.contains(&environment.name);
    let freeze = policy.active_freeze(Some(plan), ctx.tenant, ctx.now);
    let verdict = if !denials.is_empty() {
        reasons.extend(denials);
        Verdict::Deny
    } else if let Some(w) = freeze {
        reasons.push(format!(
            "change freeze {}: execution needs a break-glass override by {} distinct approvers",
            w.name, policy.quorum
        ));
        Verdict::BreakGlass {
            count: policy.quorum,
            freeze: w.name.clone(),
        }
    } else if risk >= policy.quorum_risk || prod {
        reasons.push(format!(
            "{} distinct approvers: {}",
            policy.quorum,
            if prod { "production" } else { "high risk" }
        ));
        Verdict::RequireApprovers {
            count: policy.quorum,
        }
    } else if risk <= policy.auto_approve_max_risk
        && policy.dryrun_unavailable_needs_human
        && ctx.dryrun != Some(DryRunOutcome::Ok)
    {
        reasons.push(format!(
            "risk {risk:.2} would be approved automatically, but {}: one approver",
            match ctx.dryrun {
                None => "the plan has no dry run",
                Some(_) => "its dry run could not rehearse every step",
            }
        ));
        Verdict::RequireApprovers { count: 1 }
    } else if risk <= policy.auto_approve_max_risk {
        reasons.push(format!(
            "risk {risk:.2} <= {:.2}: approved automatically",
            policy.auto_approve_max_risk
        ));
        Verdict::AutoApprove
    } else {
        reasons.push(format!("risk {risk:.2}: one approver"));
        Verdict::RequireApprovers { count: 1 }
    };
    GateDecision {
        verdict,
        risk,
        reasons,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn plan(action: &str, env: &str, own: Option<f64>, rollback: bool) -> ChangePlan {
        ChangePlan::from_stored(&plan_json(action, env, own, rollback)).unwrap()
    }

    /// Points a `k8s.rollout` step at another namespace.
    fn in_namespace(action: &mut Action, namespace: &str) {
        if let Action::K8sRollout(rollout) = action {
            rollout.namespace = namespace.into();
        }
    }

    fn plan_json(action: &str, env: &str, own: Option<f64>, rollback: bool) -> Value {
        let params = match action {
            "k8s.rollout" => json!({"namespace": "shop", "deployment": "api", "restart": true}),
            "gateway.flip" => json!({"gateway": "edge", "route": "/api", "weights": {"a": 100}}),
            "script.exec" => json!({"script": "restart.sh"}),
            _ => json!({}),
        };
        let mut p = json!({
            "title": "t", "environment": env,
            "steps": [{"action": action, "params": params, "timeout_s": 60, "retry": 0}],
            "rollback": {"steps": if rollback { json!([{"action": "noop", "timeout_s": 10, "retry": 0}]) } else { json!([]) }},
            "verify": {"checks": []}
        });
        if let Some(r) = own {
            p["risk_score"] = json!(r);
        }
        p
    }

    /// The default policy with targets for the names these plans use.
    fn policy() -> Policy {
        let targets: Targets = toml::from_str(
            r#"
            [[target]]
            environment = "staging"
            namespace = "shop"
            [[target]]
            environment = "staging"
            gateway = "edge"
            [[target]]
            environment = "staging"
            script = "restart.sh"
            [[target]]
            environment = "prod"
            namespace = "shop-prod"
            "#,
        )
        .unwrap();
        Policy::default().with_targets(targets).unwrap()
    }

    fn ctx() -> GateContext<'static> {
        GateContext {
            // A Wednesday, 14:30 UTC.
            now: "2026-11-18T14:30:00Z".parse().unwrap(),
            tenant: "t-001",
            dryrun: Some(DryRunOutcome::Ok),
        }
    }

    fn verdict(p: &ChangePlan) -> Verdict {
        evaluate(p, &policy(), &ctx()).verdict
    }

    #[test]
    fn low_risk_outside_production_is_approved_automatically() {
        assert_eq!(
            verdict(&plan("noop", "staging", None, true)),
            Verdict::AutoApprove
        );
        assert_eq!(
            verdict(&plan("script.exec", "staging", None, true)),
            Verdict::AutoApprove
        );
    }

    #[test]
    fn a_plan_its_dry_run_could_not_rehearse_needs_a_person() {
        let p = plan("script.exec", "staging", None, true);
        for dryrun in [Some(DryRunOutcome::Unavailable), None] {
            let d = evaluate(&p, &policy(), &GateContext { dryrun, ..ctx() });
            assert_eq!(
                d.verdict,
                Verdict::RequireApprovers { count: 1 },
                "{dryrun:?}"
            );
            assert!(
                d.reasons.iter().any(|r| r.contains("dry run")),
                "{:?}",
                d.reasons
            );
        }
        let failed = GateContext {
            dryrun: Some(DryRunOutcome::Failed),
            ..ctx()
        };
        assert_eq!(evaluate(&p, &policy(), &failed).verdict, Verdict::Deny);
        let lenient = Policy {
            dryrun_unavailable_needs_human: false,
            ..policy()
        };
        let unavailable = GateContext {
            dryrun: Some(DryRunOutcome::Unavailable),
            ..ctx()
        };
        assert_eq!(
            evaluate(&p, &lenient, &unavailable).verdict,
            Verdict::AutoApprove
        );
    }

    #[test]
    fn medium_risk_needs_one_person_and_production_or_high_risk_two() {
        assert_eq!(
            verdict(&plan("k8s.rollout", "staging", None, true)),
            Verdict::RequireApprovers { count: 1 }
        );
        assert_eq!(
            verdict(&plan("noop", "prod", None, true)),
            Verdict::RequireApprovers { count: 2 }
        );
        assert_eq!(
            verdict(&plan("noop", "staging", Some(0.9), true)),
            Verdict::RequireApprovers { count: 2 }
        );
    }

    #[test]
    fn a_plan_cannot_lower_its_own_risk() {
        let p = policy();
        let computed_plan = plan("k8s.rollout", "staging", None, false);
        let env = p.environment(&computed_plan, "t-001");
        let (computed, _) = risk(&computed_plan, &p, &env);
        let (claimed, _) = risk(&plan("k8s.rollout", "staging", Some(0.0), false), &p, &env);
        assert_eq!(computed, claimed);
        assert!((computed - 0.55).abs() < 1e-9, "{computed}");
    }

    #[test]
    fn forbidden_targets_and_actions_are_denied_with_reasons() {
        let mut p = plan_json("k8s.rollout", "staging", None, true);
        p["steps"][0]["params"]["namespace"] = json!("kube-system");
        let p = ChangePlan::from_stored(&p).unwrap();
        let d = evaluate(&p, &policy(), &ctx());
        assert_eq!(d.verdict, Verdict::Deny);
        assert!(
            d.reasons
                .iter()
                .any(|r| r == "target kube-system is forbidden"),
            "{:?}",
            d.reasons
        );
        let policy = Policy {
            allowed_actions: ["noop".to_string()].into(),
            ..policy()
        };
        assert_eq!(
            evaluate(&plan("gateway.flip", "dev", None, true), &policy, &ctx()).verdict,
            Verdict::Deny
        );
    }

    #[test]
    fn the_decision_is_deterministic() {
        let p = plan("gateway.flip", "staging", Some(0.5), false);
        assert_eq!(
            evaluate(&p, &policy(), &ctx()),
            evaluate(&p, &policy(), &ctx())
        );
    }

    fn freeze(toml_text: &str) -> Policy {
        let policy: Policy = toml::from_str(toml_text).unwrap();
        policy.validate().unwrap();
        policy
    }

    #[test]
    fn a_change_freeze_turns_any_approval_into_a_break_glass_quorum() {
        let policy = freeze(
            r#"
            [[freeze_windows]]
            name = "black-friday"
            from = "2026-11-18T00:00:00Z"
            until = "2026-11-21T00:00:00Z"
            "#,
        );
        let d = evaluate(&plan("noop", "staging", None, true), &policy, &ctx());
        assert_eq!(
            d.verdict,
            Verdict::BreakGlass {
                count: 2,
                freeze: "black-friday".into()
            }
        );
        let after = GateContext {
            now: "2026-11-21T00:00:00Z".parse().unwrap(),
            tenant: "t-001",
            dryrun: Some(DryRunOutcome::Ok),
        };
        assert_eq!(
            evaluate(&plan("noop", "staging", None, true), &policy, &after).verdict,
            Verdict::AutoApprove
        );
    }

    #[test]
    fn weekly_windows_apply_to_their_days_hours_environments_and_tenants() {
        let policy = freeze(
            r#"
            [[freeze_windows]]
            name = "wednesday-release-train"
            days = ["wed"]
            start = "14:00"
            end = "16:00"
            environments = ["staging"]
            tenants = ["t-001"]
            "#,
        );
        let w = &policy.freeze_windows[0];
        assert!(w.active(ctx().now, "staging", "t-001"));
        assert!(!w.active(ctx().now, "dev", "t-001"), "other environment");
        assert!(!w.active(ctx().now, "staging", "t-002"), "other tenant");
        assert!(!w.active("2026-11-18T16:00:00Z".parse().unwrap(), "staging", "t-001"));
        assert!(!w.active("2026-11-19T14:30:00Z".parse().unwrap(), "staging", "t-001"));
    }

    #[test]
    fn malformed_freeze_windows_are_refused() {
        for bad in [
            "[[freeze_windows]]\nname = \"x\"\nfrom = \"2026-11-21T00:00:00Z\"\nuntil = \"2026-11-20T00:00:00Z\"",
            "[[freeze_windows]]\nname = \"x\"\ndays = [\"someday\"]\nstart = \"10:00\"\nend = \"11:00\"",
            "[[freeze_windows]]\nname = \"x\"",
        ] {
            let policy: Policy = toml::from_str(bad).unwrap();
            assert!(policy.validate().is_err(), "{bad}");
        }
    }

    #[test]
    fn denial_wins_over_a_freeze() {
        let mut policy = freeze(
            "[[freeze_windows]]\nname = \"always\"\nfrom = \"2000-01-01T00:00:00Z\"\nuntil = \"2100-01-01T00:00:00Z\"",
        );
        policy.allowed_actions = ["noop".to_string()].into();
        let d = evaluate(&plan("k8s.rollout", "staging", None, true), &policy, &ctx());
        assert_eq!(d.verdict, Verdict::Deny);
    }

    /// The hole of issue #13: the gate took `environment` from the plan, so
    /// a plan that omitted it (or said staging) for a production namespace
    /// needed one approver or none.
    #[test]
    fn a_production_target_needs_two_approvers_whatever_the_plan_says() {
        for env in [None, Some("staging"), Some("dev")] {
            let mut p = plan("k8s.rollout", "x", None, true);
            in_namespace(&mut p.steps[0].action, "shop-prod");
            p.environment = env.map(String::from);
            let d = evaluate(&p, &policy(), &ctx());
            assert_eq!(
                d.verdict,
                Verdict::RequireApprovers { count: 2 },
                "{env:?}: {:?}",
                d.reasons
            );
        }
    }

    /// A script with an argv no rule knows is production: no automatic
    /// approval for whatever arguments a plan writes.
    #[test]
    fn an_unknown_target_is_never_approved_automatically() {
        let mut p = plan("script.exec", "staging", None, true);
        if let Action::ScriptExec(script) = &mut p.steps[0].action {
            script.script = "drop-caches.sh".into();
        }
        let d = evaluate(&p, &policy(), &ctx());
        assert_eq!(
            d.verdict,
            Verdict::RequireApprovers { count: 2 },
            "{:?}",
            d.reasons
        );
        assert!(
            d.reasons.iter().any(|r| r.contains("no rule")),
            "{:?}",
            d.reasons
        );
        // With no targets file at all, every target is production.
        let p = plan("script.exec", "staging", None, true);
        let d = evaluate(&p, &Policy::default(), &ctx());
        assert_eq!(d.verdict, Verdict::RequireApprovers { count: 2 });
    }

    /// A freeze scoped to production holds for a plan whose steps touch
    /// production, even when the plan says staging.
    #[test]
    fn a_freeze_of_any_touched_environment_holds() {
        let mut policy = policy();
        policy.freeze_windows = vec![FreezeWindow {
            name: "prod-freeze".into(),
            from: Some("2026-11-18T00:00:00Z".parse().unwrap()),
            until: Some("2026-11-19T00:00:00Z".parse().unwrap()),
            days: vec![],
            start: None,
            end: None,
            environments: ["prod".to_string()].into(),
            tenants: Default::default(),
        }];
        let mut p = plan("k8s.rollout", "staging", None, true);
        let mut undo = p.steps[0].clone();
        in_namespace(&mut undo.action, "shop-prod");
        p.rollback.steps = vec![undo];
        let d = evaluate(&p, &policy, &ctx());
        assert_eq!(d.verdict.freeze(), Some("prod-freeze"), "{:?}", d.reasons);
    }
}
