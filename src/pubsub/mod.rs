//! The plumbing of DESIGN §5: the envelope (wire form), the JetStream
//! streams, the outbox relay and durable consumers.
//!
//! Owns how messages move. Knows envelopes and bytes only: what a message
//! means is `crate::contract`'s, and nothing here decides anything about
//! cases; producers put envelopes in the outbox inside their own
//! transaction.

pub mod consumer;
pub mod envelope;
pub mod feed;
pub mod inbox;
pub mod outbox;
pub mod relay;
pub mod streams;

pub use envelope::Envelope;
