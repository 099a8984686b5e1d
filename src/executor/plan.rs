//! The plan's steps as the runner needs them, and how long and how often
//! one is tried.

use std::time::Duration;

use super::adapter::ExecError;
use crate::contract::plan::{self, Action};

/// An adapter call bounded by the step's timeout (plus a grace the adapter
/// should never need: it is told the timeout and must keep it itself).
pub(super) async fn within<T>(
    step: &Step,
    call: impl std::future::Future<Output = Result<T, ExecError>>,
) -> Result<T, ExecError> {
    let budget = step.timeout + Duration::from_secs(5);
    tokio::time::timeout(budget, call)
        .await
        .unwrap_or_else(|_| Err(ExecError::timeout(step.timeout)))
}

/// Pause before retry `n` of a failed step: 1 s doubling, at most 30 s.
pub(super) fn step_backoff(n: u32) -> Duration {
    Duration::from_secs((1u64 << n.min(5)).min(30))
}

/// One step of the plan as the runner needs it.
#[derive(Debug, Clone)]
pub(super) struct Step {
    pub action: Action,
    pub timeout: Duration,
    pub retry: u32,
}

impl Step {
    pub fn of(step: &plan::Step) -> Step {
        Step {
            action: step.action.clone(),
            timeout: Duration::from_secs(step.timeout_s),
            retry: step.retry.min(3),
        }
    }

    pub fn name(&self) -> &'static str {
        self.action.name()
    }
}

pub(super) fn steps_of(steps: &[plan::Step]) -> Vec<Step> {
    steps.iter().map(Step::of).collect()
}

/// The resources a plan changes, each once.
pub(super) fn targets(steps: &[Step]) -> Vec<String> {
    let mut out: Vec<String> = steps.iter().filter_map(|s| s.action.target()).collect();
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::contract::ChangePlan;

    #[test]
    fn targets_name_each_changed_resource_once() {
        let plan = json!({"title": "t", "steps": [
            {"action": "noop", "timeout_s": 10, "retry": 0},
            {"action": "k8s.rollout", "params": {"namespace": "shop", "deployment": "api", "restart": true}, "timeout_s": 60, "retry": 0},
            {"action": "k8s.rollout", "params": {"namespace": "shop", "deployment": "api", "image": "x:2"}, "timeout_s": 60, "retry": 0},
            {"action": "gateway.flip", "params": {"gateway": "edge", "route": "/api", "weights": {"a": 100}}, "timeout_s": 60, "retry": 0}
        ]});
        let plan = ChangePlan::from_stored(&plan).unwrap();
        assert_eq!(
            targets(&steps_of(&plan.steps)),
            ["gateway:edge/api", "k8s:shop/api"]
        );
    }
}
