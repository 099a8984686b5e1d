//! What a transition is asked with: who, what, and where the request came
//! from (which decides how a duplicate is recognised).

use serde_json::Value;
use uuid::Uuid;

use crate::auth::TenantScope;
use crate::contract::{DryRunDigest, IdempotencyKey, PlanHash};
use crate::workflow::EventKind;

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
    /// The tenants the request may touch: the caller's (HTTP) or the
    /// message's own `tenant`. A case outside it is not found.
    pub tenants: TenantScope,
    pub event: EventKind,
    pub actor: Actor,
    pub reason: Option<String>,
    /// A person's request: the plan they judge with `gate_*`. A worker's
    /// fact: the plan it is about, which must be the case's current plan.
    pub plan_hash: Option<PlanHash>,
    /// A person's `gate_*`: the dry run they saw. A `dryrun_*` fact: the
    /// stored dry run it reports.
    pub dryrun_digest: Option<DryRunDigest>,
    /// Free-form caller context, stored in the timeline meta.
    pub meta: Value,
    /// `If-Match` (HTTP) or `expected_version` (message).
    pub expected_version: Option<i64>,
    pub origin: Origin,
    pub trace_id: String,
}
