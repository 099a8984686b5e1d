//! Subject names: the only place they are spelled.

use crate::workflow::Effect;

pub const CMD_ANALYSIS_RUN: &str = "cmd.analysis.run";
pub const CMD_PLAN_GENERATE: &str = "cmd.plan.generate";
pub const CMD_GATE_EVAL: &str = "cmd.gate.eval";
pub const CMD_EXEC_RUN: &str = "cmd.exec.run";
pub const CMD_EXEC_ROLLBACK: &str = "cmd.exec.rollback";
pub const CMD_VERIFY_RUN: &str = "cmd.verify.run";

pub const EVT_CASE_TRANSITION: &str = "evt.case.transition.v1";

/// The command subject an effect is published on.
pub fn for_effect(effect: &Effect) -> &'static str {
    match effect {
        Effect::RunAnalysis => CMD_ANALYSIS_RUN,
        Effect::GeneratePlan { .. } => CMD_PLAN_GENERATE,
        Effect::EvaluateGate { .. } => CMD_GATE_EVAL,
        Effect::Execute { .. } => CMD_EXEC_RUN,
        Effect::Verify => CMD_VERIFY_RUN,
        Effect::Rollback { .. } => CMD_EXEC_ROLLBACK,
    }
}
