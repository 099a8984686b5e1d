//! The envelope every message carries; its `id` is also the `Nats-Msg-Id`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub id: Uuid,
    #[serde(rename = "type")]
    pub kind: String,
    pub case_id: Option<Uuid>,
    pub tenant: String,
    pub occurred_at: DateTime<Utc>,
    pub actor: String,
    pub correlation_id: Uuid,
    pub causation_id: Option<Uuid>,
    pub expected_version: Option<i64>,
    pub data: Value,
}

impl Envelope {
    /// A message about `case` as it is now: `expected_version` is the case's
    /// current version, the correlation id is the case's flow.
    pub fn for_case(
        case: &crate::model::Case,
        kind: &str,
        actor: &str,
        causation_id: Option<Uuid>,
        data: Value,
    ) -> Envelope {
        Envelope {
            id: Uuid::now_v7(),
            kind: kind.to_string(),
            case_id: Some(case.id),
            tenant: case.tenant.clone(),
            occurred_at: Utc::now(),
            actor: actor.to_string(),
            correlation_id: case.correlation_id,
            causation_id,
            expected_version: Some(case.version),
            data,
        }
    }
}
