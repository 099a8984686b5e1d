//! What a transition answers, typed: the API renders it (status codes,
//! problem+json), the consumer acknowledges it. The same value is stored
//! with an idempotent request inside the transition's transaction, so a
//! replay renders exactly what the first answer rendered.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::model::{Case, TimelineEntry};
use crate::workflow::{EventKind, Facts, Rejection, Status, Tally};

/// The answer to one transition request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "snake_case")]
pub enum Answer {
    /// Committed: the case after the move and its timeline entry.
    Applied {
        case: Box<Case>,
        transition: Box<TimelineEntry>,
    },
    /// A person's second approval of a plan and dry run their first
    /// approval already counts for: nothing recorded, the count unchanged.
    Counted { case: Box<Case>, approvals: Tally },
    /// Refused by the FSM and recorded in the timeline; the case as it was.
    Rejected {
        rejection: Rejection,
        case_status: Status,
        case_version: i64,
    },
}

/// The approvals of a plan as a vote's reply shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ApprovalsShown {
    /// Distinct people whose approval counts.
    pub count: u8,
    pub required: u8,
    pub missing: u8,
}

impl ApprovalsShown {
    pub fn of(t: Tally) -> ApprovalsShown {
        ApprovalsShown {
            count: t.count,
            required: t.required,
            missing: t.missing(),
        }
    }
}

impl Answer {
    /// The approvals the answer shows: a vote's count, derived from the
    /// facts its timeline entry keeps (so a replay, rebuilt from the entry,
    /// shows the same), or the count a second vote found.
    pub fn approvals(&self) -> Option<ApprovalsShown> {
        /// The part of an entry's meta the count is derived from.
        #[derive(Deserialize)]
        struct Kept {
            facts: Facts,
        }
        match self {
            Answer::Applied { transition, .. }
                if transition.event.as_deref() == Some(EventKind::GateVote.as_str()) =>
            {
                let kept: Kept = serde_json::from_value(transition.meta.clone()).ok()?;
                crate::workflow::tally(&kept.facts).map(ApprovalsShown::of)
            }
            Answer::Counted { approvals, .. } => Some(ApprovalsShown::of(*approvals)),
            Answer::Applied { .. } | Answer::Rejected { .. } => None,
        }
    }
}

/// What an idempotent case creation did.
#[derive(Debug, Clone, PartialEq)]
pub enum Created {
    New(Box<Case>),
    /// The same request was seen: the case as it was created.
    Replayed(Box<Case>),
}

/// An answer stored for an `Idempotency-Key`.
#[derive(Debug, Clone, PartialEq)]
pub enum StoredAnswer {
    Typed(Answer),
    /// Written by a release before typed answers: the rendered reply.
    Rendered {
        status: u16,
        body: Value,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// This request's answer (applied, or rejected and recorded).
    Answered(Answer),
    /// The same `Idempotency-Key` and request were seen: the stored answer.
    Replayed(StoredAnswer),
    /// The same message id was already applied by this consumer.
    Duplicate,
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
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Points inside a transition where a test may fail it, as a lost database
/// connection would, or act between its steps. Production runs with
/// `NoFaults`.
pub trait FaultPoints: Send + Sync {
    /// Between the writes of the locked path (the one-statement path has
    /// no point between its writes).
    fn after_timeline_insert(&self) -> std::io::Result<()> {
        Ok(())
    }

    /// `true` sends every transition down the locked path, where
    /// `after_timeline_insert` sits.
    fn locked_only(&self) -> bool {
        false
    }

    /// Between the read and the write of a one-statement transition: where
    /// another writer may come in.
    fn before_unlocked_write(&self) -> futures::future::BoxFuture<'static, ()> {
        Box::pin(std::future::ready(()))
    }

    /// A one-statement write was refused and goes down the locked path.
    fn refused(&self) {}
}

pub struct NoFaults;

impl FaultPoints for NoFaults {}

pub type Faults = Arc<dyn FaultPoints>;
