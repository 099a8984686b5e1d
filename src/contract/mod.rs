//! The typed contract between the roles (DESIGN §5): domain ids parsed
//! once at the edge, and the messages each direction carries, one struct
//! per subject. The subject and its version come from the type; no other
//! module spells a subject or indexes a payload.
//!
//! Owns the wire shapes (pinned by `tests/golden/`). Must not do IO: it
//! turns envelopes into values and back.

pub mod command;
pub mod fact;
pub mod message;
pub mod plan;
#[cfg(test)]
mod tests;

/// The domain ids live in `crate::ids` (the pure workflow uses them too);
/// re-exported here, where messages carry them.
pub use crate::ids::{self, CaseId, DryRunDigest, IdempotencyKey, PlanHash, Tenant, Version};
pub use command::CommandMsg;
pub use fact::Fact;
pub use message::{Body, ContractError, Message};
pub use plan::ChangePlan;
