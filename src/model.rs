//! Rows of the case model as the API shows them.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::contract::Tenant;
use crate::workflow::{EventKind, Status};

impl TryFrom<String> for Status {
    type Error = strum::ParseError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl TryFrom<String> for EventKind {
    type Error = strum::ParseError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Case {
    pub id: Uuid,
    #[sqlx(try_from = "String")]
    #[schema(value_type = String)]
    pub tenant: Tenant,
    pub title: String,
    pub severity: String,
    pub kind: Option<String>,
    #[schema(value_type = Object)]
    pub labels: Value,
    #[sqlx(try_from = "String")]
    #[schema(value_type = crate::api::schema::StatusDoc)]
    pub status: Status,
    /// Increases by one with every accepted transition; the HTTP `ETag`.
    pub version: i64,
    pub park_reason: Option<String>,
    pub correlation_id: Uuid,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Case {
    /// The labels whose values are strings (what templates, the analyst and
    /// the librarian read; the API stores nothing else from a signal).
    pub fn string_labels(&self) -> std::collections::BTreeMap<String, String> {
        self.labels
            .as_object()
            .into_iter()
            .flatten()
            .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
            .collect()
    }
}

/// The columns of `Case`, for `concat!` into static SQL.
#[macro_export]
macro_rules! case_columns {
    () => {
        "id, tenant, title, severity, kind, labels, status, version, park_reason, \
         correlation_id, created_by, created_at, updated_at"
    };
}

/// The condition that finds case `$1` within the tenant scope `$2`
/// (`TenantScope::sql`), for `concat!` into static SQL.
#[macro_export]
macro_rules! case_in_scope {
    () => {
        "id = $1 AND ($2::text[] IS NULL OR tenant = ANY($2))"
    };
}

/// One timeline entry: `created`, an accepted `transition`, or a `rejected` attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct TimelineEntry {
    pub id: Uuid,
    pub case_id: Uuid,
    pub kind: String,
    pub event: Option<String>,
    pub from_status: Option<String>,
    pub to_status: Option<String>,
    pub version: i64,
    pub actor: String,
    pub reason: Option<String>,
    pub rejection_code: Option<String>,
    pub correlation_id: Uuid,
    #[schema(value_type = Object)]
    pub meta: Value,
    pub at: DateTime<Utc>,
}

/// The columns of `TimelineEntry`, for `concat!` into static SQL.
#[macro_export]
macro_rules! timeline_columns {
    () => {
        "id, case_id, kind, event, from_status, to_status, version, actor, reason, \
         rejection_code, correlation_id, meta, at"
    };
}
