//! What the LLM planner is told about a case: the case itself, why it came
//! back (feedback), the plans already tried and what the gate said of them,
//! the findings of the analysis step, the librarian's runbook and
//! past-case passages (with their outcomes), and what a plan may contain
//! (actions, their params, allowlisted scripts, limits, the schema).
//!
//! Only facts we hold are sent; nothing here is an instruction the model
//! could use to change state.

use serde_json::{Value, json};
use sqlx::PgPool;

use super::contract::{self, PlanLimits};
use super::memory::Retrieval;
use crate::contract::fact::FindingsReport;
use crate::model::Case;

/// How many earlier plans of the case are shown.
const PLANS_SHOWN: i64 = 5;

pub async fn for_case(
    pool: &PgPool,
    case: &Case,
    findings: Option<&FindingsReport>,
    feedback: Option<&str>,
    retrieval: Option<&Retrieval>,
    example: Option<&Value>,
    limits: &PlanLimits,
) -> Result<Value, sqlx::Error> {
    let tried: Vec<(Value, Option<String>, Option<Vec<String>>)> = sqlx::query_as(
        "SELECT plan, gate_verdict, gate_reasons FROM plan_proposed WHERE case_id = $1 \
         ORDER BY seq DESC LIMIT $2",
    )
    .bind(case.id)
    .bind(PLANS_SHOWN)
    .fetch_all(pool)
    .await?;
    let tried: Vec<Value> = tried
        .into_iter()
        .map(|(plan, verdict, reasons)| {
            json!({
                "plan": plan,
                "gate": verdict.map(|v| json!({"verdict": v, "reasons": reasons})),
            })
        })
        .collect();
    Ok(json!({
        "case": {
            "id": case.id,
            "title": case.title,
            "kind": case.kind,
            "severity": case.severity,
            "tenant": case.tenant,
            "labels": case.labels,
            "park_reason": case.park_reason,
        },
        "feedback": feedback,
        "findings": findings,
        // Runbooks and past cases with their outcomes, best first; the
        // model cites their `id`s in the plan's `references`.
        "references_available": retrieval.map(|r| &r.passages),
        "plans_already_tried": tried,
        "allowed_actions": {
            "noop": "no params",
            "script.exec": {"script": "a name from script_allowlist", "args": "array of at most 32 strings"},
            "k8s.rollout": {"namespace": "string", "deployment": "string",
                            "image": "string (or restart: true instead)", "restart": "true",
                            "container": "optional; needed when the pod has several containers",
                            "undo": "true, in rollback steps only, instead of image/restart: restores the pod template the plan's steps replaced"},
            "gateway.flip": {"gateway": "string", "route": "string",
                             "weights": "object of backend -> integer 0-100, summing to 100",
                             "undo": "true, in rollback steps only, instead of weights: restores the weights the plan's steps replaced"},
        },
        "script_allowlist": limits.script_allowlist,
        "limits": {"max_plan_bytes": limits.max_bytes, "min_timeout_s": 10, "max_retry": 3},
        "schema": &*contract::SCHEMA,
        // A plan of the right shape for this kind of case, to copy and
        // adapt (the matching template, rendered with the case's labels),
        // when the prompt wants one.
        "example_plan": example,
    }))
}
