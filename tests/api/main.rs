//! Integration tests against the real PostgreSQL and NATS started by
//! `scripts/test.sh`. One binary; `TEST_LOG=1` prints logs.

mod helpers;

mod adapters;
mod alertmanager;
mod atomicity;
mod auth;
mod bad_input;
mod chatops;
mod cluster;
mod concurrency;
mod console;
mod deploy;
mod detector;
mod dryrun;
mod fake_k8s;
mod fake_llm;
mod flow;
mod gate;
mod gatekeeper;
mod idempotency;
mod librarian;
mod llm;
mod memory;
mod migrations;
mod nats;
mod notifier;
mod ops;
mod plans;
mod provenance;
mod pubsub;
mod redrive;
mod replan;
mod replay;
mod signals;
mod split;
mod tenancy;
mod transitions;
mod trust;
mod verify_prometheus;
mod walking_skeleton;
