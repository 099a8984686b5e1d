//! OpenAPI schemas of domain types that the pure workflow must not derive
//! (it knows nothing of HTTP); the values come from the types themselves.

use std::borrow::Cow;

use strum::IntoEnumIterator;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};

use crate::workflow::{EventKind, Status};

fn string_enum(values: impl Iterator<Item = &'static str>, description: &str) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(values))
        .description(Some(description))
        .into()
}

/// `Status` as the API documents it.
pub struct StatusDoc;

impl utoipa::PartialSchema for StatusDoc {
    fn schema() -> RefOr<Schema> {
        string_enum(
            Status::iter().map(Status::as_str),
            "Where a case is in its life.",
        )
    }
}

impl utoipa::ToSchema for StatusDoc {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("Status")
    }
}

/// `EventKind` as the API documents it.
pub struct EventKindDoc;

impl utoipa::PartialSchema for EventKindDoc {
    fn schema() -> RefOr<Schema> {
        string_enum(
            EventKind::iter().map(EventKind::as_str),
            "What happened to a case: the input of a transition.",
        )
    }
}

impl utoipa::ToSchema for EventKindDoc {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("EventKind")
    }
}
