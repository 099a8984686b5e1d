//! opsloop: turns operational problems into cases and drives them through
//! analysis, plan, gate, execution and verification. See `docs/` and
//! DESIGN.md for the contract between the parts.

pub mod analyst;
pub mod api;
pub mod auth;
pub mod chatops;
pub mod config;
pub mod contract;
pub mod demo;
pub mod executor;
pub mod fakes;
pub mod gatekeeper;
pub mod http_client;
pub mod ids;
pub mod librarian;
pub mod model;
pub mod orchestrator;
pub mod planner;
pub mod problem;
pub mod pubsub;
pub mod replay;
pub mod roles;
pub mod scenario;
pub mod store;
pub mod telemetry;
pub mod verifier;
pub mod worker;
pub mod workflow;

/// The schema migrations, embedded at build time from `migrations/`.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");
