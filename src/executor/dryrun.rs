//! The dry run before the gate (`cmd.exec.dryrun`): every forward step of
//! the current plan is rehearsed by its adapter without changing anything
//! (Kubernetes `dryRun=All`, the gateway's current weights, a script's
//! declared dry-run flag), and what the targets said is stored with the
//! plan (`plan_dryrun`) together with `evt.exec.dryrun.v1`, in one
//! transaction. The command's envelope id is the attempt id: a redelivered
//! command finds its row and rehearses nothing again.

use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use super::adapter::{ExecError, Rehearsal};
use super::machine::Machine;
use super::plan::{Step, steps_of};
use super::store::CONSUMER;
use crate::auth::TenantScope;
use crate::contract::fact::{DryRunArtefact, DryRunOutcome, DryRunReport, StepRehearsal};
use crate::contract::{ChangePlan, CommandMsg, Fact, Message, PlanHash};
use crate::model::Case;
use crate::pubsub::consumer::{DeadReason, Delivery, Disposition};
use crate::pubsub::outbox;
use crate::store::read_case_in;
use crate::workflow::Status;

/// One difference between two JSON documents, at a JSON Pointer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Change {
    pub path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub before: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<Value>,
}

/// What changed from `before` to `after`: objects key by key, arrays index
/// by index, anything else as a whole.
pub fn diff(before: &Value, after: &Value) -> Vec<Change> {
    let mut out = Vec::new();
    walk("", Some(before), Some(after), &mut out);
    out
}

fn walk(path: &str, before: Option<&Value>, after: Option<&Value>, out: &mut Vec<Change>) {
    let child = |key: &str| format!("{path}/{}", key.replace('~', "~0").replace('/', "~1"));
    match (before, after) {
        (Some(b), Some(a)) if b == a => {}
        (Some(Value::Object(b)), Some(Value::Object(a))) => {
            let keys: std::collections::BTreeSet<&String> = b.keys().chain(a.keys()).collect();
            for key in keys {
                walk(&child(key), b.get(key), a.get(key), out);
            }
        }
        (Some(Value::Array(b)), Some(Value::Array(a))) => {
            for i in 0..b.len().max(a.len()) {
                walk(&child(&i.to_string()), b.get(i), a.get(i), out);
            }
        }
        (None, None) => {}
        (b, a) => out.push(Change {
            path: path.to_string(),
            before: b.cloned(),
            after: a.cloned(),
        }),
    }
}

/// Deliveries a dry run whose target could not be reached (a timeout, a
/// server error, a broken connection) is tried before it counts as failed:
/// a failed dry run parks the case, so a blip must not.
const TRIES_FOR_TRANSIENT: i64 = 4;

/// A step's rehearsal, bounded like its run (the step's timeout and a
/// grace the adapter should never need), and whether it failed in a way
/// asking again may change.
async fn rehearse(machine: &Machine, index: usize, step: &Step) -> (StepRehearsal, bool) {
    let policy = &machine.policy;
    let names = step.action.names();
    let barred = names
        .iter()
        .find(|t| policy.forbidden_targets.contains(**t));
    let rehearsal = match machine.adapters.get(step.name()) {
        // Nothing is sent to a target the gate will refuse anyway, not
        // even a dry run; the gate says why.
        _ if !policy.allowed_actions.contains(step.name()) => Rehearsal::Unavailable(format!(
            "action {} is not allowed by the policy; not rehearsed",
            step.name()
        )),
        _ if barred.is_some() => Rehearsal::Unavailable(format!(
            "target {} is forbidden by the policy; not rehearsed",
            barred.copied().unwrap_or_default()
        )),
        None => Rehearsal::Failed(ExecError::refused(
            format!("no adapter for action {}", step.name()),
            Value::Null,
        )),
        Some(adapter) => {
            let budget = step.timeout + Duration::from_secs(5);
            let targets = &machine.policy.targets;
            tokio::time::timeout(budget, adapter.dry_run(&step.action, targets, step.timeout))
                .await
                .unwrap_or_else(|_| Rehearsal::Failed(ExecError::timeout(step.timeout)))
        }
    };
    let transient = matches!(&rehearsal, Rehearsal::Failed(e) if e.is_retryable());
    let (outcome, error, detail) = match rehearsal {
        Rehearsal::Ok(detail) => (DryRunOutcome::Ok, None, detail),
        Rehearsal::Failed(e) => (DryRunOutcome::Failed, Some(e.message.clone()), e.record()),
        Rehearsal::Unavailable(why) => (DryRunOutcome::Unavailable, Some(why), Value::Null),
    };
    let rehearsed = StepRehearsal {
        index: index as i32,
        action: step.name().to_string(),
        target: step.action.target(),
        outcome,
        error,
        detail,
    };
    (rehearsed, transient)
}

impl Machine {
    /// Whether `case` waits at the gate with `plan_hash` as its plan.
    async fn rehearsable(&self, case: &Case, plan_hash: &PlanHash) -> Result<bool, sqlx::Error> {
        let mut conn = self.store.pool.acquire().await?;
        self.rehearsable_in(&mut conn, case, plan_hash).await
    }

    async fn rehearsable_in(
        &self,
        conn: &mut sqlx::PgConnection,
        case: &Case,
        plan_hash: &PlanHash,
    ) -> Result<bool, sqlx::Error> {
        if case.status != Status::WaitGate {
            return Ok(false);
        }
        let current: Option<PlanHash> = sqlx::query_scalar(
            "SELECT plan_hash FROM plan_proposed WHERE case_id = $1 ORDER BY seq DESC LIMIT 1",
        )
        .bind(case.id)
        .fetch_optional(conn)
        .await?;
        Ok(current.as_ref() == Some(plan_hash))
    }

    pub async fn dry_run(
        &self,
        cmd: &Message<CommandMsg>,
        d: &Delivery,
        plan_hash: &PlanHash,
    ) -> Result<Disposition, sqlx::Error> {
        let pool = &self.store.pool;
        let case_id = cmd.case_id.uuid();
        let done: Option<Uuid> =
            sqlx::query_scalar("SELECT id FROM plan_dryrun WHERE attempt_id = $1")
                .bind(cmd.id)
                .fetch_optional(pool)
                .await?;
        if done.is_some() {
            return Ok(Disposition::Done);
        }
        let scope = TenantScope::one(&cmd.tenant);
        let Some(case) = read_case_in(pool, case_id, &scope).await? else {
            return Disposition::case_not_found(pool, case_id, cmd.tenant.as_str()).await;
        };
        if !self.rehearsable(&case, plan_hash).await? {
            // The case moved on (dismissed, or a newer plan): a rehearsal
            // of this plan would be judged by no one.
            tracing::info!(case.id = %case.id, "Dry-run command for a plan the case has left; skipped.");
            return Ok(Disposition::Done);
        }
        let row: Option<(Uuid, Value)> = sqlx::query_as(
            "SELECT id, plan FROM plan_proposed WHERE case_id = $1 AND plan_hash = $2",
        )
        .bind(case_id)
        .bind(plan_hash)
        .fetch_optional(pool)
        .await?;
        let Some((plan_id, stored)) = row else {
            return Ok(Disposition::DeadLetter(
                DeadReason::InvalidData,
                format!("no plan {plan_hash} for case {case_id}"),
            ));
        };
        let steps = match ChangePlan::from_stored(&stored) {
            Ok(plan) => {
                let mut rehearsed = Vec::new();
                for (i, step) in steps_of(&plan.steps).iter().enumerate() {
                    let (step, transient) = rehearse(self, i, step).await;
                    if transient && d.delivered < TRIES_FOR_TRANSIENT {
                        return Ok(Disposition::Retry(format!(
                            "dry run of step {i}: {}",
                            step.error.unwrap_or_default()
                        )));
                    }
                    rehearsed.push(step);
                }
                rehearsed
            }
            // Stored before the model could read it: it cannot run either.
            Err(why) => vec![StepRehearsal {
                index: 0,
                action: "plan".into(),
                target: None,
                outcome: DryRunOutcome::Failed,
                error: Some(why),
                detail: Value::Null,
            }],
        };
        let artefact = DryRunArtefact {
            observed_at: chrono::Utc::now(),
            steps,
        };
        let report = DryRunReport::of(plan_hash.clone(), artefact);
        let mut tx = pool.begin().await?;
        // The case may have moved on while its targets were asked: a
        // rehearsal of a plan that no longer waits at the gate is not
        // recorded.
        let now = crate::store::lock_case_in(&mut tx, case_id, &scope).await?;
        let still = match &now {
            Some(c) => self.rehearsable_in(&mut tx, c, plan_hash).await?,
            None => false,
        };
        if !still {
            tracing::info!(case.id = %case_id, "The case moved on during its dry run; not recorded.");
            return Ok(Disposition::Done);
        }
        sqlx::query(
            "INSERT INTO plan_dryrun (id, case_id, plan_id, plan_hash, digest, outcome, artefact, attempt_id) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(Uuid::now_v7())
        .bind(case_id)
        .bind(plan_id)
        .bind(plan_hash)
        .bind(&report.digest)
        .bind(<&'static str>::from(report.outcome))
        .bind(sqlx::types::Json(&report.artefact))
        .bind(cmd.id)
        .execute(&mut *tx)
        .await?;
        let outcome = report.outcome;
        let digest = report.digest.clone();
        // About the plan, not a version: people's votes add versions while
        // the case waits at the gate, and a dry run of the plan that still
        // waits there is evidence whatever they are.
        let mut message = Message::for_case(&case, CONSUMER, Some(cmd.id), Fact::DryRun(report));
        message.expected_version = None;
        outbox::enqueue_caused(
            &mut tx,
            case_id,
            &[message.to_envelope()],
            d.traceparent.as_deref(),
        )
        .await?;
        tx.commit().await?;
        self.store.wake.wake();
        tracing::info!(case.id = %case_id, plan.hash = %plan_hash, dryrun.digest = %digest,
                       outcome = %outcome, "Dry run recorded.");
        Ok(Disposition::Done)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_diff_names_each_changed_leaf_by_its_pointer() {
        let before = json!({"metadata": {"annotations": {"a/b": "1"}},
                            "spec": {"containers": [{"name": "api", "image": "api:1"}]}});
        let after = json!({"metadata": {"annotations": {"a/b": "2", "new": "x"}},
                           "spec": {"containers": [{"name": "api", "image": "api:2"}, {"name": "side"}]}});
        let paths: Vec<(String, Option<Value>, Option<Value>)> = diff(&before, &after)
            .into_iter()
            .map(|c| (c.path, c.before, c.after))
            .collect();
        assert_eq!(
            paths,
            vec![
                (
                    "/metadata/annotations/a~1b".into(),
                    Some(json!("1")),
                    Some(json!("2"))
                ),
                ("/metadata/annotations/new".into(), None, Some(json!("x"))),
                (
                    "/spec/containers/0/image".into(),
                    Some(json!("api:1")),
                    Some(json!("api:2"))
                ),
                (
                    "/spec/containers/1".into(),
                    None,
                    Some(json!({"name": "side"}))
                ),
            ]
        );
        assert!(diff(&before, &before).is_empty());
    }
}
