//! Pure decisions for cases: statuses, events, guards and `decide`.
//!
//! Owns the legal moves of DESIGN §2. Must not do IO, read a clock, draw
//! randomness or know about SQL: callers load [`Facts`], call [`decide`],
//! and persist the [`Decision`] (the orchestrator is the only caller that
//! writes).

mod decide;
mod guards;
#[cfg(test)]
mod tests;
mod types;

pub use decide::{already_voted, approvals_meet_quorum, decide, replay, tally};
pub use types::{
    ApprovalFact, ApprovalKind, Decision, DryRunDigest, DryRunFact, DryRunVerdict, Effect,
    EventKind, ExecFact, FactRef, Facts, GuardFailure, Judgement, PlanFact, PlanHash, Rejection,
    ReplanFact, Status, Tally,
};
