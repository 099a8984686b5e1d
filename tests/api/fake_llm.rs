//! The fake OpenAI-compatible server lives in the crate (`opsloop::fakes`),
//! shared with the scenario harness.

pub use opsloop::fakes::llm::{FakeLlm, Reply};
