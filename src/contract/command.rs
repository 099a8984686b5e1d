//! Commands: what the orchestrator asks a worker to do, one struct per
//! `cmd.*` subject. The orchestrator produces them from the FSM's effects
//! (`orchestrator::store::command_for`); each worker consumes its own.
//!
//! Wire form (unchanged since the first release): the envelope's `data` is
//! the effect, tagged by `effect`, e.g. `{"effect": "execute", "plan_hash": "…"}`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::ids::PlanHash;
use super::message::{Body, ContractError, invalid};

pub const CMD_ANALYSIS_RUN: &str = "cmd.analysis.run";
pub const CMD_PLAN_GENERATE: &str = "cmd.plan.generate";
pub const CMD_GATE_EVAL: &str = "cmd.gate.eval";
pub const CMD_EXEC_DRYRUN: &str = "cmd.exec.dryrun";
pub const CMD_EXEC_RUN: &str = "cmd.exec.run";
pub const CMD_EXEC_ROLLBACK: &str = "cmd.exec.rollback";
pub const CMD_VERIFY_RUN: &str = "cmd.verify.run";

/// Every command subject, for consumers and tests that list them.
pub const ALL: [&str; 7] = [
    CMD_ANALYSIS_RUN,
    CMD_PLAN_GENERATE,
    CMD_EXEC_DRYRUN,
    CMD_GATE_EVAL,
    CMD_EXEC_RUN,
    CMD_EXEC_ROLLBACK,
    CMD_VERIFY_RUN,
];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "effect", rename_all = "snake_case")]
pub enum CommandMsg {
    /// `cmd.analysis.run`, consumed by the analyst.
    RunAnalysis(RunAnalysis),
    /// `cmd.plan.generate`, consumed by the planner.
    GeneratePlan(GeneratePlan),
    /// `cmd.exec.dryrun`, consumed by the executor: rehearse the plan
    /// before the gate judges it.
    DryRun(PlanCommand),
    /// `cmd.gate.eval`, consumed by the gatekeeper.
    EvaluateGate(PlanCommand),
    /// `cmd.exec.run`, consumed by the executor.
    Execute(PlanCommand),
    /// `cmd.verify.run`, consumed by the verifier.
    Verify(Verify),
    /// `cmd.exec.rollback`, consumed by the executor.
    Rollback(PlanCommand),
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunAnalysis {}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GeneratePlan {
    /// The park reason when a parked case is resumed.
    #[serde(default)]
    pub feedback: Option<String>,
    /// A template chosen by name instead of the planner's own choice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
}

/// A command about one exact plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanCommand {
    pub plan_hash: PlanHash,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verify {
    /// The plan that ran. Absent in commands of releases before it was
    /// added: the verifier then judges the case's current plan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan_hash: Option<PlanHash>,
}

impl Body for CommandMsg {
    fn subject(&self) -> &'static str {
        match self {
            CommandMsg::RunAnalysis(_) => CMD_ANALYSIS_RUN,
            CommandMsg::GeneratePlan(_) => CMD_PLAN_GENERATE,
            CommandMsg::DryRun(_) => CMD_EXEC_DRYRUN,
            CommandMsg::EvaluateGate(_) => CMD_GATE_EVAL,
            CommandMsg::Execute(_) => CMD_EXEC_RUN,
            CommandMsg::Verify(_) => CMD_VERIFY_RUN,
            CommandMsg::Rollback(_) => CMD_EXEC_ROLLBACK,
        }
    }

    fn to_data(&self) -> Value {
        serde_json::to_value(self).expect("commands serialise")
    }

    fn parse(subject: &str, data: &Value) -> Result<Self, ContractError> {
        if !ALL.contains(&subject) {
            return Err(ContractError::UnknownType(subject.to_string()));
        }
        let cmd = CommandMsg::deserialize(data).map_err(|e| invalid(subject, e))?;
        if cmd.subject() != subject {
            return Err(ContractError::Invalid(format!(
                "data of {subject} describes {}",
                cmd.subject()
            )));
        }
        Ok(cmd)
    }
}
