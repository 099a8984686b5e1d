//! One skeleton for the workers that answer a command about a case with a
//! fact (analyst, planner, gatekeeper, verifier): a [`CaseWorker`] says
//! only what differs, the [`Runner`] does the rest, the same way for all:
//!
//! parse the command → `prepare` (outside any transaction: an LLM,
//! Prometheus) → begin → claim the message in `inbox` → lock the case →
//! `applies`? → `apply` (under the lock: the worker's own rows) → enqueue
//! its facts → commit → wake the relay.
//!
//! Workers never write case status: their facts reach the orchestrator.

use std::future::Future;

use sqlx::{PgConnection, PgPool};

use crate::auth::TenantScope;
use crate::contract::{Body, CommandMsg, Fact, Message};
use crate::model::Case;
use crate::pubsub::consumer::{DeadReason, Delivery, Disposition, Handler};
use crate::pubsub::inbox;
use crate::pubsub::outbox::{self, CommitWake};
use crate::store::lock_case_in;
use crate::telemetry;

/// Why a command could not be handled now.
#[derive(Debug, thiserror::Error)]
pub enum WorkError {
    /// Never applicable (a command naming a plan that does not exist): kept
    /// as a dead letter for a person.
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

impl WorkError {
    /// Asking again later may succeed (the database was away).
    pub fn is_retryable(&self) -> bool {
        match self {
            WorkError::Database(_) => true,
            WorkError::Invalid(_) => false,
        }
    }
}

impl From<WorkError> for Disposition {
    fn from(e: WorkError) -> Disposition {
        if e.is_retryable() {
            Disposition::Retry(e.to_string())
        } else {
            Disposition::DeadLetter(DeadReason::InvalidData, e.to_string())
        }
    }
}

pub trait CaseWorker: Send + Sync + 'static {
    /// What `prepare` found, handed to `apply`.
    type Prepared: Send;

    /// The durable consumer's name; also its inbox scope and its facts' actor.
    fn name(&self) -> &'static str;

    /// Whether `cmd` is this worker's command (else: an unknown type).
    fn accepts(&self, cmd: &CommandMsg) -> bool;

    /// Outside any transaction: whatever needs the network or time.
    fn prepare(
        &self,
        cmd: &Message<CommandMsg>,
        delivery: &Delivery,
    ) -> impl Future<Output = Result<Self::Prepared, WorkError>> + Send;

    /// Whether the command still applies to the case as locked; when it
    /// does not (the case moved on), the command is done with nothing to do.
    fn applies(&self, cmd: &Message<CommandMsg>, case: &Case) -> bool;

    /// Under the case lock, in the transaction that claims the command:
    /// store the worker's own rows and answer the facts to publish.
    fn apply(
        &self,
        conn: &mut PgConnection,
        cmd: &Message<CommandMsg>,
        case: &Case,
        prepared: Self::Prepared,
    ) -> impl Future<Output = Result<Vec<Fact>, WorkError>> + Send;
}

/// Runs a [`CaseWorker`] as a consumer.
pub struct Runner<W> {
    pub worker: W,
    pool: PgPool,
    wake: CommitWake,
}

impl<W: CaseWorker> Runner<W> {
    /// `wake`: this process's commit wake-up (`Orchestrator::outbox_ready`).
    pub fn new(worker: W, pool: PgPool, wake: CommitWake) -> Self {
        Runner { worker, pool, wake }
    }

    async fn run(
        &self,
        cmd: &Message<CommandMsg>,
        d: &Delivery,
        prepared: W::Prepared,
    ) -> Result<Disposition, WorkError> {
        let name = self.worker.name();
        let mut tx = self.pool.begin().await?;
        if !inbox::claim(&mut tx, name, cmd.id, &d.subject, cmd.case_id.uuid()).await? {
            telemetry::inbox_dedup(name);
            return Ok(Disposition::Done);
        }
        let scope = TenantScope::one(&cmd.tenant);
        let Some(case) = lock_case_in(&mut tx, cmd.case_id.uuid(), &scope).await? else {
            drop(tx);
            return Ok(Disposition::case_not_found(
                &self.pool,
                cmd.case_id.uuid(),
                cmd.tenant.as_str(),
            )
            .await?);
        };
        if !self.worker.applies(cmd, &case) {
            // Claimed, so a redelivery finds nothing to do either.
            tx.commit().await?;
            return Ok(Disposition::Done);
        }
        let facts = self.worker.apply(&mut tx, cmd, &case, prepared).await?;
        let envelopes: Vec<_> = facts
            .into_iter()
            .map(|f| Message::for_case(&case, name, Some(cmd.id), f).to_envelope())
            .collect();
        if !envelopes.is_empty() {
            outbox::enqueue_caused(&mut tx, case.id, &envelopes, d.traceparent.as_deref()).await?;
        }
        tx.commit().await?;
        self.wake.wake();
        Ok(Disposition::Done)
    }
}

impl<W: CaseWorker> Handler for Runner<W> {
    fn name(&self) -> &str {
        self.worker.name()
    }

    async fn handle(&self, d: &Delivery) -> Disposition {
        let cmd = match Message::<CommandMsg>::from_envelope(&d.envelope) {
            Ok(cmd) => cmd,
            Err(e) => return e.into(),
        };
        if !self.worker.accepts(&cmd.body) {
            return Disposition::unknown_type(cmd.body.subject());
        }
        let prepared = match self.worker.prepare(&cmd, d).await {
            Ok(p) => p,
            Err(e) => return e.into(),
        };
        self.run(&cmd, d, prepared)
            .await
            .unwrap_or_else(Disposition::from)
    }
}
