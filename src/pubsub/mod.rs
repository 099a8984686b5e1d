//! The message contract of DESIGN §5 and its plumbing: subjects, the
//! envelope, the JetStream streams, the outbox relay and durable consumers.
//!
//! Owns how messages move. Must not decide anything about cases; producers
//! put envelopes in the outbox inside their own transaction.

pub mod consumer;
pub mod envelope;
pub mod feed;
pub mod inbox;
pub mod outbox;
pub mod relay;
pub mod streams;
pub mod subjects;

pub use envelope::Envelope;
