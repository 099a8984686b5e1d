//! The fake Kubernetes API server lives in the crate (`opsloop::fakes`),
//! shared with the scenario harness.

pub use opsloop::fakes::k8s::FakeK8s;
