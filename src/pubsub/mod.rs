//! The message contract of DESIGN §5: subjects and the envelope.
//!
//! Owns subject names and the envelope shape. Must not decide anything about
//! cases; producers put envelopes in the outbox inside their own transaction.

pub mod envelope;
pub mod subjects;

pub use envelope::Envelope;
