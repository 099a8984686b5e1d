//! The fake OpenAI-compatible server lives in the crate (`opsloop::fakes`),
//! shared with the scenario harness.

pub use opsloop::fakes::llm::{Behaviour, FakeLlm, Reply};
