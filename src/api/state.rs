//! What every handler shares.

use std::sync::Arc;

use crate::auth::TokenStore;
use crate::orchestrator::Orchestrator;

#[derive(Clone)]
pub struct AppState {
    pub orchestrator: Orchestrator,
    pub tokens: Arc<TokenStore>,
    /// `None` when no NATS is configured; `/readyz` then says so.
    pub nats: Option<async_nats::Client>,
    /// What proposed plans may contain beyond the schema.
    pub plan_limits: Arc<crate::planner::contract::PlanLimits>,
    /// Where an alert's tenant comes from (`POST /signals/alertmanager`).
    pub intake: Arc<crate::analyst::intake::IntakeSettings>,
    /// ChatOps, when the Slack signing secret is configured.
    pub chatops: Option<Arc<crate::chatops::ChatOps>>,
    /// The console's session cookie is `Secure` (the service sits behind
    /// TLS): `OPSLOOP_COOKIE_SECURE`.
    pub cookie_secure: bool,
    /// The librarian's search and ingest (`/kb/*`), when the embedding
    /// model is configured (`OPSLOOP_EMBEDDINGS_MODEL_DIR`).
    pub librarian: Option<Arc<crate::librarian::Librarian>>,
}

impl AppState {
    /// The API with only its database and tokens: no NATS, default plan
    /// limits and intake, no ChatOps, no librarian (the benchmarks').
    pub fn bare(orchestrator: Orchestrator, tokens: TokenStore) -> AppState {
        AppState {
            orchestrator,
            tokens: Arc::new(tokens),
            nats: None,
            plan_limits: Arc::new(Default::default()),
            intake: Arc::new(Default::default()),
            chatops: None,
            cookie_secure: false,
            librarian: None,
        }
    }
}
