//! OpenAPI schemas of domain types that the pure workflow must not derive
//! (it knows nothing of HTTP); the values come from the types themselves.

use std::borrow::Cow;

use strum::IntoEnumIterator;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};

use crate::workflow::{EventKind, Status};

/// `$doc` documents `$ty` under `$name`: a string enum of `$ty`'s names.
macro_rules! string_enum_doc {
    ($doc:ident, $ty:ty, $name:literal, $description:literal) => {
        #[doc = concat!("`", $name, "` as the API documents it.")]
        pub struct $doc;

        impl utoipa::PartialSchema for $doc {
            fn schema() -> RefOr<Schema> {
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .enum_values(Some(<$ty>::iter().map(<$ty>::as_str)))
                    .description(Some($description))
                    .into()
            }
        }

        impl utoipa::ToSchema for $doc {
            fn name() -> Cow<'static, str> {
                Cow::Borrowed($name)
            }
        }
    };
}

string_enum_doc!(StatusDoc, Status, "Status", "Where a case is in its life.");
string_enum_doc!(
    EventKindDoc,
    EventKind,
    "EventKind",
    "What happened to a case: the input of a transition."
);
