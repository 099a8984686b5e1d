//! Bearer-token authentication and role permissions.
//!
//! Tokens live in a TOML file as SHA-256 digests only; the clear token is
//! shown once, when `opsloop token create` makes it. The identity a token
//! maps to is the actor recorded in the timeline.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::workflow::EventKind;

#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    strum::Display,
    strum::EnumString,
)]
#[serde(rename_all = "lowercase")]
#[strum(serialize_all = "lowercase")]
pub enum Role {
    Viewer,
    Operator,
    Approver,
    Admin,
    Service,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub id: String,
    pub roles: BTreeSet<Role>,
}

impl Identity {
    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(&role) || self.roles.contains(&Role::Admin)
    }

    /// Services relay worker facts; everyone else is a person.
    pub fn is_human(&self) -> bool {
        !self.roles.contains(&Role::Service)
    }

    /// Who may send which event (DESIGN §6, issue #2).
    pub fn may_send(&self, event: EventKind) -> bool {
        use EventKind as E;
        match event {
            E::GateApproved | E::GateRejected => {
                self.has(Role::Approver) || self.has(Role::Service)
            }
            E::StartAnalysis | E::AnalysisDone | E::Resume | E::Dismiss => {
                self.has(Role::Operator) || self.has(Role::Service)
            }
            E::PlanReady
            | E::PlanFailed
            | E::ExecDone
            | E::ExecFailed
            | E::VerifyPass
            | E::VerifyFailed => self.has(Role::Service),
        }
    }

    pub fn may_create_cases(&self) -> bool {
        self.has(Role::Operator) || self.has(Role::Service)
    }

    /// Every role reads.
    pub fn may_read(&self) -> bool {
        !self.roles.is_empty()
    }
}

#[derive(Debug, Serialize, Deserialize, Default)]
struct TokenFile {
    #[serde(default, rename = "token")]
    tokens: Vec<TokenEntry>,
}

#[derive(Debug, Serialize, Deserialize)]
struct TokenEntry {
    identity: String,
    roles: Vec<Role>,
    /// Hex SHA-256 of the bearer token.
    sha256: String,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    #[error("cannot read token file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("token file {path} is not valid: {source}")]
    Parse {
        path: String,
        source: toml::de::Error,
    },
    #[error("token file {path}: entry for {identity}: {problem}")]
    Entry {
        path: String,
        identity: String,
        problem: String,
    },
    #[error("cannot write token file {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot draw random bytes: {0}")]
    Random(String),
}

/// Token digests to identities.
#[derive(Debug, Default, Clone)]
pub struct TokenStore {
    by_digest: HashMap<[u8; 32], Identity>,
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl TokenStore {
    pub fn load(path: &Path) -> Result<Self, AuthConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| AuthConfigError::Read {
            path: shown.clone(),
            source,
        })?;
        let file: TokenFile = toml::from_str(&text).map_err(|source| AuthConfigError::Parse {
            path: shown.clone(),
            source,
        })?;
        let mut store = TokenStore::default();
        for entry in file.tokens {
            let bad = |problem: &str| AuthConfigError::Entry {
                path: shown.clone(),
                identity: entry.identity.clone(),
                problem: problem.to_string(),
            };
            let bytes = hex::decode(&entry.sha256).map_err(|_| bad("sha256 is not hex"))?;
            let key: [u8; 32] = bytes
                .try_into()
                .map_err(|_| bad("sha256 must be 64 hex digits"))?;
            if entry.roles.is_empty() {
                return Err(bad("no roles"));
            }
            if !valid_identity(&entry.identity) {
                return Err(bad("identity must be 1-64 of [A-Za-z0-9_.@-]"));
            }
            store.by_digest.insert(
                key,
                Identity {
                    id: entry.identity,
                    roles: entry.roles.into_iter().collect(),
                },
            );
        }
        Ok(store)
    }

    /// Adds an identity for `token` (tests, benchmarks).
    pub fn insert(&mut self, token: &str, identity: Identity) {
        self.by_digest.insert(digest(token), identity);
    }

    pub fn authenticate(&self, token: &str) -> Option<&Identity> {
        self.by_digest.get(&digest(token))
    }
}

fn valid_identity(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.@-".contains(&b))
}

/// A fresh random bearer token: `olp_` + 64 hex digits.
pub fn generate_token() -> Result<String, AuthConfigError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| AuthConfigError::Random(e.to_string()))?;
    Ok(format!("olp_{}", hex::encode(bytes)))
}

/// Appends a new token for `identity` to the file (created if missing) and
/// returns the clear token, which is not stored anywhere.
pub fn create_token(
    path: &Path,
    identity: &str,
    roles: &[Role],
) -> Result<String, AuthConfigError> {
    let shown = path.display().to_string();
    if !valid_identity(identity) || roles.is_empty() {
        return Err(AuthConfigError::Entry {
            path: shown,
            identity: identity.to_string(),
            problem: "identity must be 1-64 of [A-Za-z0-9_.@-] and roles non-empty".into(),
        });
    }
    let token = generate_token()?;
    let entry = TokenEntry {
        identity: identity.to_string(),
        roles: roles.to_vec(),
        sha256: hex::encode(digest(&token)),
    };
    let block = toml::to_string(&TokenFile {
        tokens: vec![entry],
    })
    .map_err(|e| AuthConfigError::Entry {
        path: shown.clone(),
        identity: identity.to_string(),
        problem: e.to_string(),
    })?;
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let write_error = |source| AuthConfigError::Write {
        path: shown.clone(),
        source,
    };
    // Who may act is the owner's alone to read or change: a new file is
    // created 0600, and an existing one is tightened to it.
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(write_error)?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(write_error)?;
    writeln!(file, "\n{block}").map_err(|source| AuthConfigError::Write {
        path: shown,
        source,
    })?;
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_tokens_authenticate_and_only_digests_are_stored() {
        let dir = std::env::temp_dir().join(format!("opsloop-auth-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tokens.toml");
        let alice = create_token(&path, "alice", &[Role::Operator, Role::Approver]).unwrap();
        let bot = create_token(&path, "planner", &[Role::Service]).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains(&alice) && !text.contains(&bot));
        let store = TokenStore::load(&path).unwrap();
        let id = store.authenticate(&alice).unwrap();
        assert_eq!(id.id, "alice");
        assert!(id.may_send(EventKind::GateApproved) && id.is_human());
        assert!(!id.may_send(EventKind::ExecDone));
        assert!(
            store
                .authenticate(&bot)
                .unwrap()
                .may_send(EventKind::ExecDone)
        );
        assert!(store.authenticate("olp_wrong").is_none());
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// The file holds digests, not tokens, but who may act is still nobody
    /// else's to read or change: it is the owner's alone, new or not.
    #[test]
    fn the_tokens_file_is_written_for_its_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("opsloop-auth-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tokens.toml");
        create_token(&path, "alice", &[Role::Operator]).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{mode:o}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        create_token(&path, "bob", &[Role::Approver]).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "an existing file is tightened too: {mode:o}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn viewer_reads_but_sends_nothing() {
        let viewer = Identity {
            id: "v".into(),
            roles: [Role::Viewer].into(),
        };
        assert!(viewer.may_read() && !viewer.may_create_cases());
        assert!(<EventKind as strum::IntoEnumIterator>::iter().all(|e| !viewer.may_send(e)));
    }
}
