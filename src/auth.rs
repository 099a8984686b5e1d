//! Bearer-token authentication and role permissions.
//!
//! Tokens live in a TOML file as SHA-256 digests only; the clear token is
//! shown once, when `opsloop token create` makes it. The identity a token
//! maps to is the actor recorded in the timeline.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::contract::Tenant;
use crate::roles::Role as WorkerRole;
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

/// The tenants an identity may act for: named ones, or every tenant (a
/// platform admin, `*` in the tokens file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TenantScope {
    All,
    Only(BTreeSet<Tenant>),
}

impl TenantScope {
    /// `["*"]` or tenant names, as the tokens file and `--tenants` write them.
    pub fn parse<S: AsRef<str>>(names: &[S]) -> Result<TenantScope, String> {
        if names.is_empty() {
            return Err("no tenants".into());
        }
        if names.iter().any(|n| n.as_ref() == "*") {
            return if names.len() == 1 {
                Ok(TenantScope::All)
            } else {
                Err("`*` (every tenant) stands alone".into())
            };
        }
        names
            .iter()
            .map(|n| {
                Tenant::try_from(n.as_ref().to_string())
                    .map_err(|_| format!("tenant {:?}: {}", n.as_ref(), Tenant::EXPECTED))
            })
            .collect::<Result<BTreeSet<_>, _>>()
            .map(TenantScope::Only)
    }

    pub fn names(&self) -> Vec<String> {
        match self {
            TenantScope::All => vec!["*".into()],
            TenantScope::Only(set) => set.iter().map(|t| t.as_str().to_string()).collect(),
        }
    }

    pub fn includes(&self, tenant: &Tenant) -> bool {
        match self {
            TenantScope::All => true,
            TenantScope::Only(set) => set.contains(tenant),
        }
    }

    /// For a query's `($n::text[] IS NULL OR tenant = ANY($n))`: the
    /// scope is applied by the database, in the same statement that reads
    /// the rows, never by filtering what came back.
    pub fn sql(&self) -> Option<Vec<String>> {
        match self {
            TenantScope::All => None,
            TenantScope::Only(set) => Some(set.iter().map(|t| t.as_str().to_string()).collect()),
        }
    }

    /// One tenant: what a message about a case of that tenant may touch.
    pub fn one(tenant: &Tenant) -> TenantScope {
        TenantScope::Only([tenant.clone()].into())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub id: String,
    pub roles: BTreeSet<Role>,
    pub tenants: TenantScope,
    /// A service identity's worker role (one per role, DESIGN §10): the
    /// worker facts it may send. `None`: a service that sends none (a
    /// metrics feed, an alert intake), or a person.
    pub acts_as: Option<WorkerRole>,
}

impl Identity {
    pub fn may_act_for(&self, tenant: &Tenant) -> bool {
        self.tenants.includes(tenant)
    }

    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(&role) || self.roles.contains(&Role::Admin)
    }

    /// Services relay worker facts; everyone else is a person.
    pub fn is_human(&self) -> bool {
        !self.roles.contains(&Role::Service)
    }

    fn is_worker(&self, role: WorkerRole) -> bool {
        self.roles.contains(&Role::Service) && self.acts_as == Some(role)
    }

    fn human_with(&self, role: Role) -> bool {
        self.is_human() && self.has(role)
    }

    /// Who may send which event: DESIGN §10's ownership table. A worker
    /// fact only from the service identity of the role that owns it; a
    /// human event only from a person.
    pub fn may_send(&self, event: EventKind) -> bool {
        use EventKind as E;
        use WorkerRole as W;
        match event {
            E::StartAnalysis => self.human_with(Role::Operator) || self.is_worker(W::Analyst),
            E::AnalysisDone => self.is_worker(W::Analyst),
            E::PlanReady | E::PlanFailed => self.is_worker(W::Planner),
            E::DryrunDone | E::DryrunFailed | E::ExecDone | E::ExecFailed => {
                self.is_worker(W::Executor)
            }
            E::VerifyPass | E::VerifyFailed => self.is_worker(W::Verifier),
            E::GateApproved | E::GateRejected => {
                self.human_with(Role::Approver) || self.is_worker(W::Gatekeeper)
            }
            // Recorded by the orchestrator for a `gate_approved` short of
            // the quorum; nobody sends it.
            E::GateVote => false,
            // Sent by the orchestrator on a rollback after a failed
            // verification, within the policy's limit; nobody else.
            E::Replan => false,
            E::Resume => self.human_with(Role::Operator),
            E::Dismiss => self.human_with(Role::Operator) || self.is_worker(W::Analyst),
        }
    }

    /// Re-issuing the command a case's status waits for (DESIGN §6
    /// re-drive routes): a person who runs cases, never a worker.
    pub fn may_redrive(&self) -> bool {
        self.human_with(Role::Operator) || self.human_with(Role::Admin)
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
    /// Tenant names, or `["*"]` for every tenant. Required: an entry
    /// without it is refused at load (fail closed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tenants: Option<Vec<String>>,
    /// A service identity's worker role (`analyst`, `planner`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    acts_as: Option<String>,
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

/// A token's SHA-256, hex: what is stored instead of the token.
pub fn token_sha256(token: &str) -> String {
    hex::encode(digest(token))
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
            let tenants = match &entry.tenants {
                None => {
                    return Err(bad(
                        "no tenants: an identity acts for named tenants only. Add \
                         `tenants = [\"<tenant>\", ...]` (or `[\"*\"]` for a platform \
                         admin) to this entry, or create the token anew with \
                         `opsloop token create --tenants ...`",
                    ));
                }
                Some(names) => TenantScope::parse(names).map_err(|e| bad(&e))?,
            };
            let acts_as =
                parse_acts_as(entry.acts_as.as_deref(), &entry.roles).map_err(|e| bad(&e))?;
            store.by_digest.insert(
                key,
                Identity {
                    id: entry.identity,
                    roles: entry.roles.into_iter().collect(),
                    tenants,
                    acts_as,
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

    /// The identity of a token known only by its SHA-256 (hex), as a
    /// console session keeps it.
    pub fn by_token_sha256(&self, hex_digest: &str) -> Option<&Identity> {
        let key: [u8; 32] = hex::decode(hex_digest).ok()?.try_into().ok()?;
        self.by_digest.get(&key)
    }

    /// The person named `id` (a chat user mapped to them acts as them). A
    /// service identity is none (a chat user never speaks for a worker),
    /// and so is an id whose tokens disagree on roles or tenants: which of
    /// them was meant cannot be told.
    pub fn person(&self, id: &str) -> Option<&Identity> {
        let mut found = self.by_digest.values().filter(|i| i.id == id);
        let first = found.next()?;
        (first.is_human() && found.all(|other| other == first)).then_some(first)
    }
}

/// `acts_as` names a worker role, and only a service identity has one.
fn parse_acts_as(name: Option<&str>, roles: &[Role]) -> Result<Option<WorkerRole>, String> {
    let Some(name) = name else {
        return Ok(None);
    };
    let role = name
        .parse::<WorkerRole>()
        .ok()
        .filter(|r| {
            use WorkerRole as W;
            // The roles that send facts or events of their own.
            matches!(
                r,
                W::Analyst | W::Planner | W::Gatekeeper | W::Executor | W::Verifier | W::Orchestrator
            )
        })
        .ok_or_else(|| {
            format!(
                "acts_as {name:?} is not a worker role (analyst, planner, gatekeeper, executor, verifier, orchestrator)"
            )
        })?;
    if !roles.contains(&Role::Service) {
        return Err("acts_as is for service identities (role service) only".into());
    }
    Ok(Some(role))
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
    tenants: &TenantScope,
    acts_as: Option<&str>,
) -> Result<String, AuthConfigError> {
    let shown = path.display().to_string();
    let names = tenants.names();
    let entry_error = |problem: String| AuthConfigError::Entry {
        path: shown.clone(),
        identity: identity.to_string(),
        problem,
    };
    if !valid_identity(identity) || roles.is_empty() || TenantScope::parse(&names).is_err() {
        return Err(entry_error(
            "identity must be 1-64 of [A-Za-z0-9_.@-], roles and tenants non-empty".into(),
        ));
    }
    parse_acts_as(acts_as, roles).map_err(entry_error)?;
    let token = generate_token()?;
    let entry = TokenEntry {
        identity: identity.to_string(),
        roles: roles.to_vec(),
        tenants: Some(names),
        acts_as: acts_as.map(str::to_string),
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
        let t1 = TenantScope::parse(&["t-001"]).unwrap();
        let alice =
            create_token(&path, "alice", &[Role::Operator, Role::Approver], &t1, None).unwrap();
        let bot = create_token(
            &path,
            "executor",
            &[Role::Service],
            &TenantScope::All,
            Some("executor"),
        )
        .unwrap();
        assert!(
            create_token(&path, "x", &[Role::Operator], &t1, Some("executor")).is_err(),
            "acts_as is for services"
        );
        assert!(create_token(&path, "x", &[Role::Service], &t1, Some("api")).is_err());
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains(&alice) && !text.contains(&bot));
        let store = TokenStore::load(&path).unwrap();
        let id = store.authenticate(&alice).unwrap();
        assert_eq!(id.id, "alice");
        assert_eq!(id.tenants, t1);
        assert_eq!(store.authenticate(&bot).unwrap().tenants, TenantScope::All);
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
        create_token(&path, "alice", &[Role::Operator], &TenantScope::All, None).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{mode:o}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        create_token(&path, "bob", &[Role::Approver], &TenantScope::All, None).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "an existing file is tightened too: {mode:o}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn viewer_reads_but_sends_nothing() {
        let viewer = Identity {
            id: "v".into(),
            roles: [Role::Viewer].into(),
            tenants: TenantScope::All,
            acts_as: None,
        };
        assert!(viewer.may_read() && !viewer.may_create_cases());
        assert!(<EventKind as strum::IntoEnumIterator>::iter().all(|e| !viewer.may_send(e)));
    }

    /// An entry written before tenants existed acts for no one: the
    /// service refuses to start and says how to fix the file.
    #[test]
    fn an_entry_without_tenants_fails_closed_with_the_fix() {
        let dir = std::env::temp_dir().join(format!("opsloop-auth-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tokens.toml");
        let sha = hex::encode(digest("olp_x"));
        std::fs::write(
            &path,
            format!("[[token]]\nidentity = \"old\"\nroles = [\"operator\"]\nsha256 = \"{sha}\"\n"),
        )
        .unwrap();
        let err = TokenStore::load(&path).unwrap_err().to_string();
        assert!(
            err.contains("no tenants") && err.contains("--tenants"),
            "{err}"
        );
        std::fs::write(
            &path,
            format!("[[token]]\nidentity = \"old\"\nroles = [\"operator\"]\ntenants = [\"*\", \"t-1\"]\nsha256 = \"{sha}\"\n"),
        )
        .unwrap();
        assert!(TokenStore::load(&path).is_err(), "`*` stands alone");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn scopes_answer_for_their_tenants_only() {
        let t1 = Tenant::try_from("t-001".to_string()).unwrap();
        let t2 = Tenant::try_from("t-002".to_string()).unwrap();
        let scope = TenantScope::parse(&["t-001"]).unwrap();
        assert!(scope.includes(&t1) && !scope.includes(&t2));
        assert_eq!(scope.sql(), Some(vec!["t-001".to_string()]));
        assert!(TenantScope::All.includes(&t2) && TenantScope::All.sql().is_none());
        assert!(TenantScope::parse::<&str>(&[]).is_err());
        assert!(TenantScope::parse(&["Bad Tenant"]).is_err());
    }

    /// DESIGN §10: worker facts only from the owning role's service
    /// identity, human events only from people.
    #[test]
    fn each_event_has_its_owners_only() {
        use EventKind as E;
        let who = |roles: &[Role], acts_as: Option<WorkerRole>| Identity {
            id: "x".into(),
            roles: roles.iter().copied().collect(),
            tenants: TenantScope::All,
            acts_as,
        };
        let operator = who(&[Role::Operator, Role::Approver], None);
        let admin = who(&[Role::Admin], None);
        let executor = who(&[Role::Service], Some(WorkerRole::Executor));
        let bare_service = who(&[Role::Service], None);
        let service_admin = who(&[Role::Service, Role::Admin], None);
        for e in [
            E::AnalysisDone,
            E::PlanReady,
            E::ExecDone,
            E::VerifyFailed,
            E::VerifyPass,
        ] {
            assert!(
                !operator.may_send(e) && !admin.may_send(e),
                "{e}: people send no worker facts"
            );
        }
        assert!(executor.may_send(E::ExecDone) && executor.may_send(E::ExecFailed));
        assert!(executor.may_send(E::DryrunDone) && executor.may_send(E::DryrunFailed));
        assert!(!operator.may_send(E::DryrunDone) && !admin.may_send(E::DryrunFailed));
        assert!(!executor.may_send(E::VerifyFailed) && !executor.may_send(E::PlanReady));
        for e in <EventKind as strum::IntoEnumIterator>::iter() {
            assert!(
                !bare_service.may_send(e),
                "{e}: a service acting as no role"
            );
        }
        for e in [E::Resume, E::GateApproved, E::StartAnalysis] {
            assert!(
                !service_admin.may_send(e),
                "{e}: a human event needs a person"
            );
            assert!(admin.may_send(e) && operator.may_send(e));
        }
        let gatekeeper = who(&[Role::Service], Some(WorkerRole::Gatekeeper));
        assert!(gatekeeper.may_send(E::GateRejected) && !gatekeeper.may_send(E::Resume));
    }
}
