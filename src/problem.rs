//! RFC 9457 problem details: the one error shape of the HTTP API, also the
//! shape stored with an idempotent request so a replay answers the same.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One field of a request body that is not valid, and why (a problem's
/// `errors`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

/// `application/problem+json` body with a stable machine-readable `code`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Problem {
    #[serde(rename = "type")]
    pub type_uri: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    pub code: String,
    /// Extra members, e.g. the failed guards.
    #[serde(flatten, skip_serializing_if = "serde_json::Map::is_empty", default)]
    #[schema(value_type = Object)]
    pub extra: serde_json::Map<String, Value>,
}

impl Problem {
    pub fn new(status: u16, code: &str, title: &str, detail: impl Into<String>) -> Self {
        Problem {
            type_uri: format!("https://opsloop.dev/problems/{code}"),
            title: title.to_string(),
            status,
            detail: detail.into(),
            code: code.to_string(),
            extra: serde_json::Map::new(),
        }
    }

    pub fn with(mut self, key: &str, value: Value) -> Self {
        self.extra.insert(key.to_string(), value);
        self
    }

    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}
