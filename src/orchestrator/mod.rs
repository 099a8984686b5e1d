//! The only writer of case status.
//!
//! `transition` reads a case, asks `workflow::decide`, and commits status +
//! timeline + outbox (+ idempotency or inbox row) in ONE transaction
//! (DESIGN §3): a plain accepted move as one conditional statement that
//! applies only if the case is still as read, anything else (or a refused
//! statement) under the case lock (docs/DECISIONS.md, "One-statement
//! transitions"). No network IO happens inside it: side effects
//! leave through the outbox after commit. It speaks no HTTP: it answers a
//! typed `Answer`, which `src/api` renders.

pub mod consumer;
mod facts;
pub mod outcome;
pub mod redrive;
pub mod request;
mod store;

use std::sync::Arc;

use sqlx::PgPool;
use tracing::{Instrument, info, info_span};
use uuid::Uuid;

pub use outcome::{
    Answer, ApprovalsShown, Created, FaultPoints, Faults, NoFaults, Outcome, StoredAnswer,
    TransitionError,
};
pub use request::{Actor, Origin, TransitionRequest};

use crate::gatekeeper::policy::Policy;
use crate::model::Case;
use crate::pubsub::outbox::CommitWake;
use crate::store::NewCase;
use crate::telemetry;
use crate::workflow;

#[derive(Clone)]
pub struct Orchestrator {
    pool: PgPool,
    faults: Faults,
    outbox_ready: CommitWake,
    /// The gate's policy (with the targets file): its change freezes are a
    /// guard on `gate_approved`.
    policy: Arc<Policy>,
}

impl Orchestrator {
    pub fn new(pool: PgPool) -> Self {
        Orchestrator {
            pool,
            faults: Arc::new(NoFaults),
            outbox_ready: CommitWake::default(),
            policy: Arc::new(Policy::default()),
        }
    }

    /// The gate's policy and targets (the same files the gatekeeper and
    /// the executor read).
    pub fn with_policy(mut self, policy: Arc<Policy>) -> Self {
        self.policy = policy;
        self
    }

    /// Tests: fail the transaction at the given points.
    pub fn with_faults(mut self, faults: Faults) -> Self {
        self.faults = faults;
        self
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The gate's policy (freezes, the re-plan limit).
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// This process's commit wake-up: woken after each commit that wrote
    /// outbox rows; the relay waits on it, and every writer of the process
    /// (workers, the API) wakes it.
    pub fn outbox_ready(&self) -> CommitWake {
        self.outbox_ready.clone()
    }

    pub async fn create_case(&self, new: NewCase, actor: &Actor) -> Result<Case, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let case = crate::store::insert_case(&mut tx, &new, &actor.id).await?;
        tx.commit().await?;
        // Its `evt.case.created.v1` waits in the outbox.
        self.outbox_ready.wake();
        info!(case.id = %case.id, tenant = %case.tenant, "Case created.");
        Ok(case)
    }

    /// `create_case` under an `Idempotency-Key` (scoped by actor, as for
    /// transitions): the first request creates, a repeat of the same
    /// request gets the case as it was created, another request with the
    /// key is refused. The claim names the `created` entry, from which a
    /// replay rebuilds the case (its columns fixed at creation, status NEW,
    /// version 1).
    pub async fn create_case_once(
        &self,
        new: NewCase,
        actor: &Actor,
        key: &crate::contract::IdempotencyKey,
        request_hash: &str,
    ) -> Result<Created, TransitionError> {
        let mut tx = self.pool.begin().await?;
        let entry_id = Uuid::now_v7();
        match store::claim_creation(&mut tx, &actor.id, key.as_str(), request_hash, entry_id)
            .await?
        {
            Some(store::Claim::ReplayCreated(case)) => {
                telemetry::idempotent_replay();
                return Ok(Created::Replayed(case));
            }
            // The same hash for another request cannot happen (the hash
            // covers method and path); refuse rather than guess.
            Some(store::Claim::Reused | store::Claim::Replay(_)) => {
                return Err(TransitionError::IdempotencyKeyReused);
            }
            None => {}
        }
        let case = crate::store::insert_case_with(&mut tx, &new, &actor.id, entry_id).await?;
        tx.commit().await?;
        self.outbox_ready.wake();
        info!(case.id = %case.id, tenant = %case.tenant, "Case created.");
        Ok(Created::New(Box::new(case)))
    }

    pub async fn transition(&self, req: TransitionRequest) -> Result<Outcome, TransitionError> {
        let span = info_span!(
            "transition",
            case.id = %req.case_id,
            event.kind = req.event.as_str(),
            trace_id = %req.trace_id,
        );
        let result = self.transition_in_tx(&req).instrument(span).await;
        match &result {
            Ok(Outcome::Replayed(_)) => telemetry::idempotent_replay(),
            Ok(Outcome::Answered(Answer::Rejected { rejection, .. })) => {
                telemetry::conflict(rejection.code());
            }
            Err(TransitionError::VersionMismatch { .. }) => telemetry::conflict("version_mismatch"),
            Err(TransitionError::IdempotencyKeyReused) => {
                telemetry::conflict("idempotency_key_reuse");
            }
            Ok(
                Outcome::Answered(Answer::Applied { .. } | Answer::Counted { .. })
                | Outcome::Duplicate,
            )
            | Err(_) => {}
        }
        result
    }

    async fn transition_in_tx(&self, req: &TransitionRequest) -> Result<Outcome, TransitionError> {
        // Each request counts once: `refused` ones are answered under the
        // lock too, but are not counted again as `locked`.
        if !self.faults.locked_only() {
            match self.unlocked(req).await? {
                Unlocked::Applied(outcome) => {
                    telemetry::transition_write("one_statement");
                    return Ok(outcome);
                }
                Unlocked::Refused => {
                    telemetry::transition_write("refused");
                    self.faults.refused();
                    return self.locked(req).await;
                }
                Unlocked::NotThisWay => {}
            }
        }
        telemetry::transition_write("locked");
        self.locked(req).await
    }

    /// The one-statement path (docs/DECISIONS.md, "One-statement
    /// transitions"): read the case without a lock, decide, and write
    /// status, timeline, outbox and the request's claim in one statement
    /// that applies only if the case is still as read. Two round trips
    /// instead of four. Only plain accepted moves go this way; a rejection,
    /// a recorded approval, a dry run made current, a version the caller
    /// did not expect or a case not found go down the locked path, which
    /// answers them as it always did.
    async fn unlocked(&self, req: &TransitionRequest) -> Result<Unlocked, TransitionError> {
        let mut conn = self.pool.acquire().await?;
        let Some((case, lock_seq)) = store::read_for_write(&mut conn, req).await? else {
            return Ok(Unlocked::NotThisWay);
        };
        if req
            .expected_version
            .is_some_and(|expected| expected != case.version)
            && !matches!(req.origin, Origin::Message { .. })
        {
            return Ok(Unlocked::NotThisWay);
        }
        let loaded = facts::load(&mut conn, &case, req, &self.policy).await?;
        let Ok(decision) = workflow::decide(case.status, req.event, &loaded.facts) else {
            return Ok(Unlocked::NotThisWay);
        };
        if decision.record_approval || loaded.dryrun_made_current(req).is_some() {
            return Ok(Unlocked::NotThisWay);
        }
        let meta = store::TimelineMeta::of(req, &loaded.facts).applied(&decision);
        self.faults.before_unlocked_write().await;
        let entry_id = Uuid::now_v7();
        let as_read = store::AsRead {
            lock_seq,
            claimant: store::Claimant::of(req),
        };
        match store::apply_unlocked(&mut conn, &case, as_read, &decision, req, entry_id, &meta)
            .await
        {
            Ok((updated, entry)) => {
                self.transitioned(&case, &updated, req);
                Ok(Unlocked::Applied(Outcome::Answered(Answer::Applied {
                    case: Box::new(updated),
                    transition: Box::new(entry),
                })))
            }
            Err(e) if store::refused(&e) => Ok(Unlocked::Refused),
            Err(e) => Err(e.into()),
        }
    }

    /// After an accepted transition's commit.
    fn transitioned(&self, before: &Case, after: &Case, req: &TransitionRequest) {
        telemetry::case_transitioned(
            before.status.as_str(),
            after.status.as_str(),
            req.event.as_str(),
        );
        self.outbox_ready.wake();
        info!(case.id = %before.id, from = %before.status, to = %after.status,
              event.kind = req.event.as_str(), "Case transitioned.");
    }

    /// The locked path: claim, lock the case, decide, write, commit.
    async fn locked(&self, req: &TransitionRequest) -> Result<Outcome, TransitionError> {
        let mut tx = self.pool.begin().await?;
        // The entry this transaction writes (applied or rejected): an
        // idempotent claim names it up front.
        let entry_id = Uuid::now_v7();

        // 1.-3. Duplicates, then the case lock. The claim row blocks a
        // concurrent twin until we commit.
        let case = match &req.origin {
            Origin::Http {
                idempotency_key,
                request_hash,
            } => {
                match store::claim_and_lock(
                    &mut tx,
                    req,
                    idempotency_key.as_str(),
                    request_hash,
                    entry_id,
                )
                .await?
                {
                    store::Claimed::Fresh(case) => case,
                    store::Claimed::Seen(store::Claim::Replay(answer)) => {
                        return Ok(Outcome::Replayed(answer));
                    }
                    store::Claimed::Seen(store::Claim::Reused | store::Claim::ReplayCreated(_)) => {
                        return Err(TransitionError::IdempotencyKeyReused);
                    }
                }
            }
            Origin::Message {
                consumer,
                message_id,
                subject,
            } => {
                if !crate::pubsub::inbox::claim(
                    &mut tx,
                    consumer,
                    *message_id,
                    subject,
                    req.case_id,
                )
                .await?
                {
                    return Ok(Outcome::Duplicate);
                }
                crate::store::lock_case_in(&mut tx, req.case_id, &req.tenants).await?
            }
            Origin::Direct => {
                crate::store::lock_case_in(&mut tx, req.case_id, &req.tenants).await?
            }
        }
        .ok_or(TransitionError::CaseNotFound(req.case_id))?;
        // A worker's fact about an older version is not an error but a
        // stale fact, which `decide` rejects and the timeline records.
        if let Some(expected) = req.expected_version
            && expected != case.version
            && !matches!(req.origin, Origin::Message { .. })
        {
            return Err(TransitionError::VersionMismatch {
                expected,
                actual: case.version,
            });
        }

        // 4. Facts, then the pure decision.
        let loaded = facts::load(&mut tx, &case, req, &self.policy).await?;
        let mut decision = workflow::decide(case.status, req.event, &loaded.facts);
        // A person's approval that counts but falls short of the quorum is
        // a vote (DESIGN §2 `gate_vote`): a move of its own, not a refusal.
        // The same person's second vote records nothing. Anything else the
        // FSM would not take as a vote stays the refusal it was.
        let short_of_quorum = req.event == workflow::EventKind::GateApproved
            && req.actor.human
            && matches!(
                &decision,
                Err(workflow::Rejection::GuardFailed {
                    record_approval: true,
                    ..
                })
            );
        let as_vote = short_of_quorum
            .then(|| workflow::decide(case.status, workflow::EventKind::GateVote, &loaded.facts))
            .and_then(Result::ok);
        let vote;
        let req = match as_vote {
            Some(voted) => {
                if workflow::already_voted(&loaded.facts, &req.actor.id)
                    && let Some(approvals) = voted.tally
                {
                    let answer = Answer::Counted {
                        case: Box::new(case),
                        approvals,
                    };
                    if let Origin::Http {
                        idempotency_key, ..
                    } = &req.origin
                    {
                        store::store_answer(
                            &mut tx,
                            &req.actor.id,
                            idempotency_key.as_str(),
                            &answer,
                        )
                        .await?;
                    }
                    tx.commit().await?;
                    return Ok(Outcome::Answered(answer));
                }
                vote = TransitionRequest {
                    event: workflow::EventKind::GateVote,
                    ..req.clone()
                };
                decision = Ok(voted);
                &vote
            }
            None => req,
        };
        let record_approval = match &decision {
            Ok(d) => d.record_approval,
            Err(workflow::Rejection::GuardFailed {
                record_approval, ..
            }) => *record_approval,
            Err(_) => false,
        };
        if record_approval && let Some(approval) = loaded.human_approval(req) {
            store::record_human_approval(&mut tx, &approval).await?;
        }
        if decision.is_ok()
            && let Some((plan_id, digest)) = loaded.dryrun_made_current(req)
        {
            crate::store::make_dryrun_current(&mut tx, plan_id, &digest).await?;
        }
        let meta = store::TimelineMeta::of(req, &loaded.facts);

        let answer = match decision {
            Err(rejection) => {
                let meta = meta.rejected(&rejection);
                store::append_rejection(&mut tx, &case, req, rejection.code(), entry_id, &meta)
                    .await?;
                info!(case.id = %case.id, status = %case.status, event.kind = req.event.as_str(),
                      code = rejection.code(), detail = %rejection, "Transition rejected.");
                let answer = Answer::Rejected {
                    rejection,
                    case_status: case.status,
                    case_version: case.version,
                };
                // 8. A rejection's answer is stored with the claim; an
                // applied one is rebuilt from its timeline entry.
                if let Origin::Http {
                    idempotency_key, ..
                } = &req.origin
                {
                    store::store_answer(&mut tx, &req.actor.id, idempotency_key.as_str(), &answer)
                        .await?;
                }
                answer
            }
            Ok(decision) => {
                let meta = meta.applied(&decision);
                let (updated, entry) =
                    store::apply(&mut tx, &case, &decision, req, entry_id, &meta).await?;
                self.faults
                    .after_timeline_insert()
                    .map_err(sqlx::Error::Io)?;
                Answer::Applied {
                    case: Box::new(updated),
                    transition: Box::new(entry),
                }
            }
        };

        tx.commit().await?;

        if let Answer::Applied { case: after, .. } = &answer {
            self.transitioned(&case, after, req);
        }
        Ok(Outcome::Answered(answer))
    }
}

/// What the one-statement path did.
enum Unlocked {
    Applied(Outcome),
    /// The case changed between the read and the write, or the request was
    /// claimed before: the locked path answers.
    Refused,
    /// Not a plain accepted move: the locked path answers.
    NotThisWay,
}
