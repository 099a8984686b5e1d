//! The adapter trait: one implementation per plan action. An adapter gets
//! the step's checked `params` and a deadline, does its one change, and says
//! what happened; retries, timeouts around it, records and facts belong to
//! the runner.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use serde_json::Value;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A failed try, with what the adapter saw (stored with the step).
#[derive(Debug, Clone)]
pub struct StepError {
    pub message: String,
    pub detail: Value,
}

impl StepError {
    pub fn new(message: impl Into<String>, detail: Value) -> Self {
        StepError {
            message: message.into(),
            detail,
        }
    }
}

pub trait Adapter: Send + Sync {
    /// The plan action this adapter runs (`script.exec`, `noop`, …).
    fn action(&self) -> &'static str;
    /// Whether running a step again after a crash mid-step is safe. A step
    /// found `running` after a restart is re-run only when this holds.
    fn idempotent(&self) -> bool;
    /// Runs one try of a step. Must give up by `timeout` and leave nothing
    /// running behind it.
    fn run<'a>(
        &'a self,
        params: &'a Value,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Value, StepError>>;
}

/// Does nothing, successfully.
pub struct Noop;

impl Adapter for Noop {
    fn action(&self) -> &'static str {
        "noop"
    }

    fn idempotent(&self) -> bool {
        true
    }

    fn run<'a>(&'a self, _: &'a Value, _: Duration) -> BoxFuture<'a, Result<Value, StepError>> {
        Box::pin(async { Ok(Value::Object(Default::default())) })
    }
}
