//! The only writer of case status.
//!
//! `transition` loads a case `FOR UPDATE`, asks `workflow::decide`, and
//! commits status + timeline + outbox (+ idempotency or inbox row) in ONE
//! transaction (DESIGN §3). No network IO happens inside it: side effects
//! leave through the outbox after commit.

pub mod consumer;
mod facts;
mod store;

use std::sync::Arc;

use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::sync::Notify;
use tracing::{Instrument, info, info_span};
use uuid::Uuid;

use crate::contract::{IdempotencyKey, PlanHash};
use crate::model::Case;
use crate::problem::Problem;
use crate::telemetry;
use crate::workflow::{self, EventKind, Rejection};

pub use store::{NewCase, lock_case, read_case};

/// Who asked, as authenticated. Never a field the caller typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub id: String,
    /// People judge plans; services relay worker facts.
    pub human: bool,
}

/// Where a transition request came from, which decides how duplicates are
/// recognised.
#[derive(Debug, Clone)]
pub enum Origin {
    /// `Idempotency-Key`, scoped by actor; `request_hash` tells a replay
    /// from a reuse of the key for another request.
    Http {
        idempotency_key: IdempotencyKey,
        request_hash: String,
    },
    /// A consumed message: its id is recorded in `inbox` for `consumer`.
    Message {
        consumer: String,
        message_id: Uuid,
        subject: String,
    },
    /// In-process callers with their own duplicate handling (benchmarks).
    Direct,
}

#[derive(Debug, Clone)]
pub struct TransitionRequest {
    pub case_id: Uuid,
    pub event: EventKind,
    pub actor: Actor,
    pub reason: Option<String>,
    /// A person's request: the plan they judge with `gate_*`. A worker's
    /// fact: the plan it is about, which must be the case's current plan.
    pub plan_hash: Option<PlanHash>,
    /// Free-form caller context, stored in the timeline meta.
    pub meta: Value,
    /// `If-Match` (HTTP) or `expected_version` (message).
    pub expected_version: Option<i64>,
    pub origin: Origin,
    pub trace_id: String,
}

/// A response as the caller answers it; stored verbatim for replays.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The transition was committed: 200 `{case, transition}`.
    Applied(Reply),
    /// Illegal or guard failure, recorded in the timeline: 409 / 422.
    Rejected(Reply),
    /// The same `Idempotency-Key` and request were seen: the stored reply.
    Replayed(Reply),
    /// The same message id was already applied by this consumer.
    Duplicate,
}

impl Outcome {
    pub fn reply(&self) -> Option<&Reply> {
        match self {
            Outcome::Applied(r) | Outcome::Rejected(r) | Outcome::Replayed(r) => Some(r),
            Outcome::Duplicate => None,
        }
    }
}

/// Failures that leave nothing behind (the transaction rolled back).
#[derive(Debug, thiserror::Error)]
pub enum TransitionError {
    #[error("case {0} not found")]
    CaseNotFound(Uuid),
    #[error("expected version {expected}, case is at {actual}")]
    VersionMismatch { expected: i64, actual: i64 },
    #[error("the Idempotency-Key was used for a different request")]
    IdempotencyKeyReused,
    #[error("fault injected: {0}")]
    Injected(String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// A test-only fault: returning `Err` aborts the transaction at that point.
pub type FaultHook = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// Points where tests may inject a fault to prove atomicity.
#[derive(Clone, Default)]
pub struct Hooks {
    pub after_timeline_insert: Option<FaultHook>,
}

#[derive(Clone)]
pub struct Orchestrator {
    pool: PgPool,
    hooks: Hooks,
    outbox_ready: Arc<Notify>,
}

impl Orchestrator {
    pub fn new(pool: PgPool) -> Self {
        Orchestrator {
            pool,
            hooks: Hooks::default(),
            outbox_ready: Arc::new(Notify::new()),
        }
    }

    pub fn with_hooks(mut self, hooks: Hooks) -> Self {
        self.hooks = hooks;
        self
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Woken after each commit that wrote outbox rows; the relay waits on it.
    pub fn outbox_ready(&self) -> Arc<Notify> {
        self.outbox_ready.clone()
    }

    pub async fn create_case(&self, new: NewCase, actor: &Actor) -> Result<Case, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let case = store::insert_case(&mut tx, &new, &actor.id).await?;
        tx.commit().await?;
        info!(case.id = %case.id, tenant = %case.tenant, "Case created.");
        Ok(case)
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
            Ok(Outcome::Rejected(r)) => {
                telemetry::conflict(r.body["code"].as_str().unwrap_or("rejected"));
            }
            Err(TransitionError::VersionMismatch { .. }) => telemetry::conflict("version_mismatch"),
            Err(TransitionError::IdempotencyKeyReused) => {
                telemetry::conflict("idempotency_key_reuse");
            }
            Ok(Outcome::Applied(_) | Outcome::Duplicate) | Err(_) => {}
        }
        result
    }

    async fn transition_in_tx(&self, req: &TransitionRequest) -> Result<Outcome, TransitionError> {
        let mut tx = self.pool.begin().await?;

        // 1. Duplicates: the claim row blocks a concurrent twin until we commit.
        match &req.origin {
            Origin::Http {
                idempotency_key,
                request_hash,
            } => {
                if let Some(stored) = store::claim_idempotency(
                    &mut tx,
                    &req.actor.id,
                    idempotency_key.as_str(),
                    request_hash,
                )
                .await?
                {
                    return match stored {
                        store::Claim::Replay(reply) => Ok(Outcome::Replayed(reply)),
                        store::Claim::Reused => Err(TransitionError::IdempotencyKeyReused),
                    };
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
            }
            Origin::Direct => {}
        }

        // 2.-3. Lock the case and check the caller's version.
        let case = store::lock_case(&mut tx, req.case_id)
            .await?
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
        let loaded = facts::load(&mut tx, &case, req).await?;
        let decision = workflow::decide(case.status, req.event, &loaded.facts);
        if let Some(approval) = loaded.human_approval_to_record(req, case.status, &decision) {
            store::record_human_approval(&mut tx, &approval).await?;
        }
        let mut meta = json!({
            "trace_id": req.trace_id,
            "facts": loaded.facts,
        });
        if !req.meta.is_null() {
            meta["request"] = req.meta.clone();
        }
        if let Origin::Message { message_id, .. } = &req.origin {
            meta["message_id"] = json!(message_id);
        }

        let (outcome, case_id_for_key) = match decision {
            Err(rejection) => {
                let problem = rejection_problem(&rejection, &case);
                store::append_rejection(&mut tx, &case, req, problem.code.as_str(), &meta).await?;
                info!(case.id = %case.id, status = %case.status, event.kind = req.event.as_str(),
                      code = %problem.code, detail = %problem.detail, "Transition rejected.");
                let reply = Reply {
                    status: problem.status,
                    body: problem.to_value(),
                };
                (Outcome::Rejected(reply), case.id)
            }
            Ok(decision) => {
                let updated = store::set_status(&mut tx, &case, decision.to, req).await?;
                let entry = store::append_transition(&mut tx, &case, &updated, req, &meta).await?;
                if let Some(hook) = &self.hooks.after_timeline_insert {
                    hook().map_err(TransitionError::Injected)?;
                }
                store::enqueue(&mut tx, &case, &updated, &entry, req, &decision.effects).await?;
                let reply = Reply {
                    status: 200,
                    body: json!({ "case": updated, "transition": entry }),
                };
                (Outcome::Applied(reply), updated.id)
            }
        };

        // 8. The response is stored with the effect it describes.
        if let Origin::Http {
            idempotency_key, ..
        } = &req.origin
            && let Some(reply) = outcome.reply()
        {
            store::store_response(
                &mut tx,
                &req.actor.id,
                idempotency_key.as_str(),
                case_id_for_key,
                reply,
            )
            .await?;
        }
        tx.commit().await?;

        if let Outcome::Applied(reply) = &outcome {
            let to = reply.body["case"]["status"].as_str().unwrap_or_default();
            telemetry::case_transitioned(case.status.as_str(), to, req.event.as_str());
            self.outbox_ready.notify_one();
            info!(case.id = %case.id, from = %case.status, to, event.kind = req.event.as_str(),
                  "Case transitioned.");
        }
        Ok(outcome)
    }
}

fn rejection_problem(rejection: &Rejection, case: &Case) -> Problem {
    match rejection {
        Rejection::IllegalTransition { from, event } => Problem::new(
            409,
            "illegal_transition",
            "Illegal transition",
            format!("{event} is not accepted in {from}"),
        )
        .with("case_status", json!(from))
        .with("version", json!(case.version)),
        Rejection::StaleFact(why) => Problem::new(409, "stale_fact", "Stale fact", why.clone()),
        Rejection::GuardFailed(failures) => Problem::new(
            422,
            "guard_failed",
            "Guard failed",
            failures
                .iter()
                .map(|f| format!("{}: {}", f.guard, f.detail))
                .collect::<Vec<_>>()
                .join("; "),
        )
        .with("guards", json!(failures))
        .with("version", json!(case.version)),
    }
}
