//! The executor: consumes `cmd.exec.dryrun` (rehearses a plan before the
//! gate, `dryrun`), `cmd.exec.run` and `cmd.exec.rollback`; runs the
//! approved plan's steps through adapters, records every step, and reports
//! `evt.exec.step_result.v1` per step and `evt.exec.done.v1` /
//! `evt.exec.failed.v1` (or `evt.exec.rolled_back.v1` for a rollback
//! command) through the outbox.
//!
//! Owns: `plan_dryrun`, `exec_run`, `exec_step`, `exec_target_lock`. Never changes the
//! case status; its facts carry the version the command was issued at, so
//! the orchestrator rejects the results of an attempt the case has moved
//! past (fencing). The command's envelope id is the attempt id: a
//! redelivered command finds its run and never re-runs a finished step.

pub mod adapter;
pub mod dryrun;
pub mod gateway;
pub mod k8s;
mod machine;
mod plan;
pub mod script;
mod settings;
mod store;

use std::collections::BTreeMap;
use std::sync::Arc;

use sqlx::PgPool;

pub use crate::contract::fact::{RunKind, RunStatus, StepPhase as Phase, StepStatus};
use crate::contract::{CommandMsg, Message};
use crate::pubsub::consumer::{DeadReason, Delivery, Disposition, Handler};
use crate::pubsub::outbox::CommitWake;
use crate::telemetry;
use adapter::Adapter;
use machine::Machine;
pub use settings::ExecSettings;
pub use store::CONSUMER;
use store::Store;

pub struct Executor {
    machine: Machine,
}

impl Executor {
    /// `wake`: this process's commit wake-up (`Orchestrator::outbox_ready`),
    /// woken after each commit of a step's or a run's fact.
    pub fn new(
        pool: PgPool,
        settings: &ExecSettings,
        script_allowlist: &[String],
        wake: CommitWake,
    ) -> Executor {
        let mut e = Executor {
            machine: Machine {
                store: Store { pool, wake },
                adapters: BTreeMap::new(),
                backoff_scale: settings.backoff_scale.max(0.0),
                policy: Arc::new(crate::gatekeeper::policy::Policy::default()),
            },
        };
        e.register(Arc::new(adapter::Noop));
        e.register(Arc::new(script::ScriptAdapter {
            dir: settings.scripts_dir.clone(),
            allowlist: script_allowlist.iter().cloned().collect(),
            env_allowlist: settings.script_env.clone(),
            output_cap: settings.output_cap,
        }));
        e.register(Arc::new(k8s::K8sAdapter::new(
            settings.k8s_api_url.clone(),
            settings.k8s_token_file.clone(),
        )));
        e.register(Arc::new(gateway::GatewayAdapter::new(
            &settings.gateways,
            settings.gateway_token_file.clone(),
        )));
        e
    }

    /// The gate's policy and targets, whose change freezes are enforced
    /// before each forward step (the same files the gatekeeper reads).
    pub fn set_policy(&mut self, policy: Arc<crate::gatekeeper::policy::Policy>) {
        self.machine.policy = policy;
    }

    /// Adds or replaces the adapter for its action.
    pub fn register(&mut self, adapter: Arc<dyn Adapter>) {
        self.machine.adapters.insert(adapter.action(), adapter);
    }
}

impl Handler for Executor {
    fn name(&self) -> &str {
        CONSUMER
    }

    async fn handle(&self, d: &Delivery) -> Disposition {
        let cmd = match Message::<CommandMsg>::from_envelope(&d.envelope) {
            Ok(cmd) => cmd,
            Err(e) => return e.into(),
        };
        let (kind, plan_hash) = match &cmd.body {
            CommandMsg::Execute(p) => (Some(RunKind::Run), p.plan_hash.clone()),
            CommandMsg::Rollback(p) => (Some(RunKind::Rollback), p.plan_hash.clone()),
            CommandMsg::DryRun(p) => (None, p.plan_hash.clone()),
            CommandMsg::RunAnalysis(_)
            | CommandMsg::GeneratePlan(_)
            | CommandMsg::EvaluateGate(_)
            | CommandMsg::Verify(_) => return Disposition::unknown_type(&d.envelope.kind),
        };
        // A dry run is about the plan waiting at the gate, not a version.
        let Some(kind) = kind else {
            return self
                .machine
                .dry_run(&cmd, d, &plan_hash)
                .await
                .unwrap_or_else(|e| Disposition::Retry(e.to_string()));
        };
        let Some(version) = cmd.expected_version else {
            return Disposition::DeadLetter(
                DeadReason::InvalidData,
                "an exec command needs case_id and expected_version".into(),
            );
        };
        let _in_flight = telemetry::execution_started();
        match self
            .machine
            .execute(&cmd, d, kind, version, &plan_hash)
            .await
        {
            Ok(disposition) => disposition,
            Err(e) => Disposition::Retry(e.to_string()),
        }
    }
}
