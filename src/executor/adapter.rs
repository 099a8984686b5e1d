//! The adapter trait: one implementation per plan action. An adapter gets
//! the step's typed action (with its checked params) and a deadline, does its one change, and says
//! what happened; retries, timeouts around it, records and facts belong to
//! the runner.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use serde_json::Value;

pub use crate::contract::plan::Action;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// How a try failed, which decides whether to try again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The target could not be reached or answered with trouble.
    Unavailable,
    /// A try that asking again would not change (bad params, a refusal by
    /// the target's API).
    Refused,
    /// No result within the step's timeout.
    Timeout,
}

/// A failed try, with what the adapter saw (stored with the step).
#[derive(Debug, Clone)]
pub struct ExecError {
    pub kind: ErrorKind,
    pub message: String,
    pub detail: Value,
}

impl ExecError {
    pub fn new(message: impl Into<String>, detail: Value) -> Self {
        ExecError {
            kind: ErrorKind::Unavailable,
            message: message.into(),
            detail,
        }
    }

    /// A try that asking again would not change (bad params, a refusal by
    /// the target's API): the runner does not retry it.
    pub fn refused(message: impl Into<String>, detail: Value) -> Self {
        ExecError {
            kind: ErrorKind::Refused,
            ..ExecError::new(message, detail)
        }
    }

    pub fn timeout(after: Duration) -> Self {
        ExecError {
            kind: ErrorKind::Timeout,
            ..ExecError::new(
                format!("no result within {} s", after.as_secs()),
                serde_json::json!({"timed_out": true}),
            )
        }
    }

    /// Whether the runner may try the step again (within its `retry`).
    pub fn is_retryable(&self) -> bool {
        match self.kind {
            ErrorKind::Unavailable | ErrorKind::Timeout => true,
            ErrorKind::Refused => false,
        }
    }

    /// What is stored with the failed step: the adapter's detail, the
    /// error, and `refused: true` for a refusal.
    pub fn record(&self) -> Value {
        let mut detail = match &self.detail {
            Value::Object(m) => m.clone(),
            _ => serde_json::Map::new(),
        };
        detail.insert("error".into(), Value::String(self.message.clone()));
        if self.kind == ErrorKind::Refused {
            detail.insert("refused".into(), Value::Bool(true));
        }
        Value::Object(detail)
    }
}

/// Whether an HTTP status from a target's API is a refusal: a 4xx other than
/// a conflict or throttling, which asking again would not change.
pub fn refuses(http_status: u16) -> bool {
    (400..500).contains(&http_status) && ![409, 429].contains(&http_status)
}

/// The step handed to an adapter is not of its action: the runner routes
/// by action, so this is a refusal, never retried.
pub fn not_mine(adapter: &str, action: &Action) -> ExecError {
    ExecError::refused(
        format!("{adapter} cannot run a {} step", action.name()),
        Value::Null,
    )
}

/// What rehearsing a step showed, before the gate.
#[derive(Debug, Clone)]
pub enum Rehearsal {
    /// The target accepted the change without making it; what it would be.
    Ok(Value),
    /// The target would refuse the change, or could not be asked.
    Failed(ExecError),
    /// This step cannot be rehearsed (a script with no declared dry-run
    /// flag): not a failure; the gate asks a person instead.
    Unavailable(String),
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
        action: &'a Action,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Value, ExecError>>;
    /// Rehearses one step without changing anything (the dry run before
    /// the gate). `targets`: the operator's file, which declares the
    /// scripts' dry-run flags.
    fn dry_run<'a>(
        &'a self,
        _action: &'a Action,
        _targets: &'a crate::gatekeeper::targets::Targets,
        _timeout: Duration,
    ) -> BoxFuture<'a, Rehearsal> {
        let action = self.action();
        Box::pin(async move { Rehearsal::Unavailable(format!("{action} cannot be rehearsed")) })
    }
    /// Reads the state a step is about to change. The runner stores it
    /// before the first try, so an `undo: true` rollback step on the same
    /// target can hand it to `restore`. `None`: nothing worth keeping.
    fn snapshot<'a>(
        &'a self,
        _action: &'a Action,
        _timeout: Duration,
    ) -> BoxFuture<'a, Result<Option<Value>, ExecError>> {
        Box::pin(async { Ok(None) })
    }
    /// Puts back a state `snapshot` read (one try, same rules as `run`).
    fn restore<'a>(
        &'a self,
        _action: &'a Action,
        _before: &'a Value,
        _timeout: Duration,
    ) -> BoxFuture<'a, Result<Value, ExecError>> {
        let action = self.action();
        Box::pin(async move {
            Err(ExecError::refused(
                format!("{action} cannot undo"),
                Value::Null,
            ))
        })
    }
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

    fn run<'a>(&'a self, _: &'a Action, _: Duration) -> BoxFuture<'a, Result<Value, ExecError>> {
        Box::pin(async { Ok(Value::Object(Default::default())) })
    }

    fn dry_run<'a>(
        &'a self,
        _: &'a Action,
        _: &'a crate::gatekeeper::targets::Targets,
        _: Duration,
    ) -> BoxFuture<'a, Rehearsal> {
        Box::pin(async { Rehearsal::Ok(serde_json::json!({"changes": "nothing"})) })
    }
}
