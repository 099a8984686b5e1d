//! A typed message: the envelope's header fields, parsed, and a typed body
//! whose subject comes from its type. `pubsub::Envelope` is the wire form;
//! this is the only place that turns one into the other.

use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use super::ids::{CaseId, Tenant, Version};
use crate::model::Case;
use crate::pubsub::Envelope;
use crate::pubsub::consumer::{DeadReason, Disposition};

/// A message body: one enum per direction (`CommandMsg`, `Fact`).
pub trait Body: Sized {
    /// The subject it is published on, which is also the envelope `type`.
    fn subject(&self) -> &'static str;
    /// The envelope's `data`.
    fn to_data(&self) -> Value;
    /// The body of a message of type `subject`; the only place a payload
    /// becomes a value.
    fn parse(subject: &str, data: &Value) -> Result<Self, ContractError>;
}

/// Why a message is not one this contract knows; each maps to a dead-letter
/// reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContractError {
    #[error("unknown type {0}")]
    UnknownType(String),
    #[error("{0}")]
    Invalid(String),
}

impl From<ContractError> for Disposition {
    fn from(e: ContractError) -> Disposition {
        match e {
            ContractError::UnknownType(kind) => Disposition::unknown_type(&kind),
            ContractError::Invalid(why) => Disposition::DeadLetter(DeadReason::InvalidData, why),
        }
    }
}

/// Data of `type` that does not parse: says where.
pub(super) fn invalid(kind: &str, e: impl std::fmt::Display) -> ContractError {
    ContractError::Invalid(format!("data of {kind}: {e}"))
}

/// The longest `actor` and `reason` a message may carry.
const MAX_ACTOR: usize = 64;
pub(super) const MAX_REASON: usize = 2000;

#[derive(Debug, Clone, PartialEq)]
pub struct Message<B> {
    /// Also the `Nats-Msg-Id`.
    pub id: Uuid,
    pub case_id: CaseId,
    pub tenant: Tenant,
    pub occurred_at: DateTime<Utc>,
    pub actor: String,
    /// The case's flow.
    pub correlation_id: Uuid,
    /// The message (or timeline entry) that caused this one.
    pub causation_id: Option<Uuid>,
    /// The case version the message is about: a fact about an older one is stale.
    pub expected_version: Option<Version>,
    pub body: B,
}

impl<B: Body> Message<B> {
    /// A message about `case` as it is now: `expected_version` is the
    /// case's current version, the correlation id is the case's flow.
    pub fn for_case(case: &Case, actor: &str, causation_id: Option<Uuid>, body: B) -> Self {
        Message {
            id: Uuid::now_v7(),
            case_id: CaseId(case.id),
            tenant: case.tenant.clone(),
            occurred_at: Utc::now(),
            actor: actor.to_string(),
            correlation_id: case.correlation_id,
            causation_id,
            // The database keeps versions at 1 or more.
            expected_version: Version::try_from(case.version).ok(),
            body,
        }
    }

    pub fn to_envelope(&self) -> Envelope {
        Envelope {
            id: self.id,
            kind: self.body.subject().to_string(),
            case_id: Some(self.case_id.uuid()),
            tenant: self.tenant.to_string(),
            occurred_at: self.occurred_at,
            actor: self.actor.clone(),
            correlation_id: self.correlation_id,
            causation_id: self.causation_id,
            expected_version: self.expected_version.map(i64::from),
            data: self.body.to_data(),
        }
    }

    /// Parses a message body as it arrived (for subscribers that read
    /// payloads themselves, such as `opsloop tail`).
    pub fn from_bytes(payload: &[u8]) -> Result<Self, ContractError> {
        let envelope: Envelope = serde_json::from_slice(payload)
            .map_err(|e| ContractError::Invalid(format!("not an envelope: {e}")))?;
        Self::from_envelope(&envelope)
    }

    /// Parses a delivered envelope; the consumer machinery has already
    /// checked that its `type` is the subject it arrived on.
    pub fn from_envelope(env: &Envelope) -> Result<Self, ContractError> {
        let body = B::parse(&env.kind, &env.data)?;
        let case_id = env
            .case_id
            .ok_or_else(|| ContractError::Invalid(format!("{} needs a case_id", env.kind)))?;
        let tenant = Tenant::try_from(env.tenant.clone())
            .map_err(|e| ContractError::Invalid(e.to_string()))?;
        if env.actor.is_empty() || env.actor.chars().count() > MAX_ACTOR {
            return Err(ContractError::Invalid(
                "actor must be 1-64 characters".into(),
            ));
        }
        let expected_version = env
            .expected_version
            .map(Version::try_from)
            .transpose()
            .map_err(|e| ContractError::Invalid(e.to_string()))?;
        Ok(Message {
            id: env.id,
            case_id: CaseId(case_id),
            tenant,
            occurred_at: env.occurred_at,
            actor: env.actor.clone(),
            correlation_id: env.correlation_id,
            causation_id: env.causation_id,
            expected_version,
            body,
        })
    }
}
