//! Domain newtypes, parsed once where bytes enter (HTTP, NATS, the
//! database) so that code past the edge cannot hold a malformed one
//! ("parse, don't validate"). Pure: the workflow and the contract both use
//! them.

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Why a value could not become a domain type; says what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what}: {expected}")]
pub struct ParseError {
    pub what: &'static str,
    pub expected: &'static str,
}

/// What a text newtype shares once its `TryFrom<String>` says what is
/// valid: parsing from `&str`, back into `String`, `Display`, `as_str`.
macro_rules! text_newtype {
    ($t:ident) => {
        impl $t {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl std::str::FromStr for $t {
            type Err = ParseError;
            fn from_str(s: &str) -> Result<Self, ParseError> {
                $t::try_from(s.to_string())
            }
        }

        impl From<$t> for String {
            fn from(v: $t) -> String {
                v.0
            }
        }

        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

text_newtype!(Tenant);

/// A SHA-256 as 64 lowercase hex digits, parsed once: its struct, parsing,
/// `short`, `of`, and how sqlx reads and writes it as text.
macro_rules! sha256_newtype {
    ($(#[$doc:meta])* $t:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $t(String);

        text_newtype!($t);

        impl $t {
            pub const EXPECTED: &'static str = "64 lowercase hex digits (sha256)";

            /// The first 12 digits, for people reading logs and reasons.
            pub fn short(&self) -> &str {
                &self.0[..12]
            }

            /// The SHA-256 of `bytes`.
            pub fn of(bytes: &[u8]) -> $t {
                use sha2::{Digest, Sha256};
                $t(hex::encode(Sha256::digest(bytes)))
            }
        }

        impl TryFrom<String> for $t {
            type Error = ParseError;
            fn try_from(s: String) -> Result<Self, ParseError> {
                if s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
                    Ok($t(s))
                } else {
                    Err(ParseError {
                        what: $what,
                        expected: $t::EXPECTED,
                    })
                }
            }
        }

        impl sqlx::Type<sqlx::Postgres> for $t {
            fn type_info() -> sqlx::postgres::PgTypeInfo {
                <String as sqlx::Type<sqlx::Postgres>>::type_info()
            }
            fn compatible(ty: &sqlx::postgres::PgTypeInfo) -> bool {
                <String as sqlx::Type<sqlx::Postgres>>::compatible(ty)
            }
        }

        impl<'q> sqlx::Encode<'q, sqlx::Postgres> for $t {
            fn encode_by_ref(
                &self,
                buf: &mut sqlx::postgres::PgArgumentBuffer,
            ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
                <&str as sqlx::Encode<sqlx::Postgres>>::encode(self.0.as_str(), buf)
            }
        }

        impl<'r> sqlx::Decode<'r, sqlx::Postgres> for $t {
            fn decode(value: sqlx::postgres::PgValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
                let s = <String as sqlx::Decode<sqlx::Postgres>>::decode(value)?;
                Ok($t::try_from(s)?)
            }
        }
    };
}

sha256_newtype!(
    /// The canonical SHA-256 of a stored ChangePlan (how
    /// `planner::contract::canonical_hash` names a plan). Approvals, runs
    /// and verification results bind to it.
    PlanHash,
    "plan_hash"
);

sha256_newtype!(
    /// The SHA-256 of a dry run of a plan (its plan hash, outcome and
    /// artefact, `executor::dryrun`). A person's approval binds to it next
    /// to the plan hash: what they saw is what counts.
    DryRunDigest,
    "dryrun_digest"
);

/// A case's id.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, sqlx::Type,
)]
#[serde(transparent)]
#[sqlx(transparent)]
pub struct CaseId(pub Uuid);

impl CaseId {
    pub fn uuid(self) -> Uuid {
        self.0
    }
}

impl From<Uuid> for CaseId {
    fn from(id: Uuid) -> CaseId {
        CaseId(id)
    }
}

impl fmt::Display for CaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A tenant: 1-64 of `[a-z0-9_-]`, starting alphanumeric, and not
/// `global`: that name is the librarian's shared scope in requests, which
/// a tenant of that name would read and write as its own.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Tenant(String);

impl Tenant {
    pub const EXPECTED: &'static str =
        "1-64 of [a-z0-9_-], starting alphanumeric, not \"global\" (reserved)";
    /// The reserved name.
    pub const GLOBAL: &'static str = "global";
}

/// 1-64 bytes of lowercase ASCII letters, digits and `extra`, starting
/// alphanumeric: tenants, case kinds.
pub fn is_slug(s: &str, extra: &[u8]) -> bool {
    let b = s.as_bytes();
    (1..=64).contains(&b.len())
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || extra.contains(c))
}

impl TryFrom<String> for Tenant {
    type Error = ParseError;
    fn try_from(s: String) -> Result<Self, ParseError> {
        if is_slug(&s, b"_-") && s != Tenant::GLOBAL {
            Ok(Tenant(s))
        } else {
            Err(ParseError {
                what: "tenant",
                expected: Tenant::EXPECTED,
            })
        }
    }
}

/// An HTTP `Idempotency-Key`: 1-200 visible ASCII characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub const EXPECTED: &'static str = "1-200 visible ASCII characters";

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for IdempotencyKey {
    type Err = ParseError;
    fn from_str(key: &str) -> Result<Self, ParseError> {
        if !key.is_empty() && key.len() <= 200 && key.bytes().all(|b| b.is_ascii_graphic()) {
            Ok(IdempotencyKey(key.to_string()))
        } else {
            Err(ParseError {
                what: "Idempotency-Key",
                expected: IdempotencyKey::EXPECTED,
            })
        }
    }
}

/// A case version: 1 at creation, one more with every accepted transition.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, sqlx::Type,
)]
#[serde(try_from = "i64", into = "i64")]
#[sqlx(transparent)]
pub struct Version(i64);

impl Version {
    pub fn get(self) -> i64 {
        self.0
    }
}

impl TryFrom<i64> for Version {
    type Error = ParseError;
    fn try_from(v: i64) -> Result<Self, ParseError> {
        if v >= 1 {
            Ok(Version(v))
        } else {
            Err(ParseError {
                what: "version",
                expected: "a case version, 1 or more",
            })
        }
    }
}

impl From<Version> for i64 {
    fn from(v: Version) -> i64 {
        v.0
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_hash_is_64_lowercase_hex_digits() {
        let good = "a".repeat(64);
        assert_eq!(good.parse::<PlanHash>().unwrap().as_str(), good);
        for bad in ["", &"A".repeat(64), &"a".repeat(63), &"g".repeat(64)] {
            assert!(bad.parse::<PlanHash>().is_err(), "{bad:?}");
        }
        let json = format!("\"{good}\"");
        let parsed: PlanHash = serde_json::from_str(&json).unwrap();
        assert_eq!(serde_json::to_string(&parsed).unwrap(), json);
        assert!(serde_json::from_str::<PlanHash>("\"abc\"").is_err());
    }

    #[test]
    fn tenants_keys_and_versions_refuse_what_the_api_refuses() {
        assert!(Tenant::try_from("t-001".to_string()).is_ok());
        assert!(Tenant::try_from("T-001".to_string()).is_err());
        assert!(Tenant::try_from(String::new()).is_err());
        // The librarian's shared scope is called that in requests.
        assert!(Tenant::try_from("global".to_string()).is_err());
        assert!(Tenant::try_from("global-2".to_string()).is_ok());
        assert!("k-1".parse::<IdempotencyKey>().is_ok());
        assert!("with space".parse::<IdempotencyKey>().is_err());
        assert!("x".repeat(201).parse::<IdempotencyKey>().is_err());
        assert!(Version::try_from(0).is_err());
        assert_eq!(serde_json::from_str::<Version>("3").unwrap().get(), 3);
        assert!(serde_json::from_str::<Version>("-1").is_err());
    }
}
