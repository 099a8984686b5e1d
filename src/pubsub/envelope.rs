//! The envelope every message carries, as it travels; its `id` is also the
//! `Nats-Msg-Id`. `crate::contract::Message` is its parsed form.

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
