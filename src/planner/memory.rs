//! What the planner remembers: the librarian's passages (runbooks and past
//! cases with their outcomes) for the LLM's context, and the templates
//! whose plans failed verification on the same resource lately, which the
//! template planner does not propose again.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgConnection;
use uuid::Uuid;

use super::contract::CheckedPlan;
use crate::auth::TenantScope;
use crate::contract::fact::FindingsReport;
use crate::contract::plan::ChangePlan;
use crate::librarian::store::{self, Hit, Mode, Search};
use crate::librarian::{Librarian, past_case};
use crate::model::Case;

/// The passages one planning run was given, as the context shows them and
/// as `plan_attempt.retrieval` keeps them.
#[derive(Debug, Clone, Serialize)]
pub struct Retrieval {
    pub query: String,
    pub k: usize,
    pub passages: Vec<Passage>,
}

/// One passage: `id` is what the model cites in the plan's `references`.
#[derive(Debug, Clone, Serialize)]
pub struct Passage {
    /// `kb:<doc id>`.
    pub id: String,
    pub doc_id: Uuid,
    pub ordinal: i32,
    pub kind: String,
    pub title: String,
    pub source: String,
    /// A past case's ending: fixed, rolled_back, exec_failed, parked,
    /// closed_without_change. First-class so the model cannot miss that a
    /// plan was tried and failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    pub updated_at: DateTime<Utc>,
    pub score: f64,
    /// The passage itself (left out of the record: its document keeps it).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub text: String,
}

impl Retrieval {
    /// What `plan_attempt.retrieval` keeps: the query, k, and each
    /// passage's id, document, kind, title, outcome and score.
    pub fn record(&self) -> serde_json::Value {
        let mut kept = self.clone();
        for p in &mut kept.passages {
            p.text.clear();
        }
        serde_json::to_value(kept).expect("a retrieval serialises")
    }
}

impl Passage {
    fn from_hit(h: Hit) -> Passage {
        Passage {
            id: format!("kb:{}", h.doc_id),
            doc_id: h.doc_id,
            ordinal: h.ordinal,
            // Only the librarian's own documents carry an outcome; a label
            // of that name on a runbook someone posted is not one.
            outcome: (h.kind == "past_case")
                .then(|| h.labels.get(past_case::OUTCOME_LABEL).cloned())
                .flatten(),
            kind: h.kind,
            title: h.title,
            source: h.source,
            updated_at: h.updated_at,
            score: h.score,
            text: h.passage,
        }
    }
}

/// What the case is about, as words to search by: its title, kind, the
/// labels that name what is affected, and the analyst's summary.
pub fn query_for(case: &Case, findings: Option<&FindingsReport>) -> String {
    let mut parts = vec![case.title.clone()];
    parts.extend(case.kind.clone());
    let labels = case.string_labels();
    for key in ["alertname", "service", "deployment", "resource", "route"] {
        parts.extend(labels.get(key).cloned());
    }
    if let Some(f) = findings {
        parts.push(f.summary.clone());
    }
    let mut q = parts.join(" ");
    // A summary can be long; the model reads 256 word pieces at most.
    if q.len() > 1000 {
        let mut end = 1000;
        while !q.is_char_boundary(end) {
            end -= 1;
        }
        q.truncate(end);
    }
    q
}

/// The top `k` passages of the case's tenant and the global scope for
/// `query`. `Err` when the librarian cannot search (the model did not load,
/// the embeddings server is down): the caller plans without passages and
/// says so.
pub async fn retrieve(
    pool: &sqlx::PgPool,
    librarian: &Librarian,
    case: &Case,
    query: String,
    k: usize,
) -> anyhow::Result<Retrieval> {
    let embedder = librarian.embedder().await?;
    let scope = TenantScope::Only(BTreeSet::from([case.tenant.clone()]));
    let hits = store::search(
        pool,
        embedder,
        &Search {
            query: &query,
            k,
            kind: None,
            scope: &scope,
            mode: Mode::Hybrid,
            labels: BTreeMap::new(),
            since: None,
        },
    )
    .await?;
    Ok(Retrieval {
        query,
        k,
        passages: hits.into_iter().map(Passage::from_hit).collect(),
    })
}

/// What a plan changes or judges: its steps' targets and its checks'
/// resources. Two plans touching one of the same are "on the same
/// resource".
pub fn resources(plan: &ChangePlan) -> BTreeSet<String> {
    let mut out: BTreeSet<String> = plan
        .steps
        .iter()
        .filter_map(|s| s.action.target())
        .collect();
    out.extend(
        plan.verify
            .checks
            .iter()
            .filter_map(|c| c.resource.as_ref().map(|r| format!("metric:{r}"))),
    );
    out
}

/// A template plan of the tenant and how its verification ended lately.
pub struct TemplateVerdict {
    pub template: String,
    pub case_id: Uuid,
    pub at: DateTime<Utc>,
    /// `breach` or `pass`: `no_data` and `inconclusive` say nothing of the
    /// change (a metrics source down) and are not read.
    pub outcome: String,
    pub resources: BTreeSet<String>,
}

/// The tenant's template plans judged `breach` or `pass` within `window`,
/// newest first.
pub async fn template_verdicts(
    conn: &mut PgConnection,
    tenant: &str,
    window: Duration,
) -> Result<Vec<TemplateVerdict>, sqlx::Error> {
    if window.is_zero() {
        return Ok(Vec::new());
    }
    let rows: Vec<(String, Uuid, DateTime<Utc>, String, serde_json::Value)> = sqlx::query_as(
        "SELECT p.template, p.case_id, v.at, v.outcome, p.plan FROM verify_result v \
         JOIN plan_proposed p ON p.case_id = v.case_id AND p.plan_hash = v.plan_hash \
         JOIN ops_case c ON c.id = p.case_id \
         WHERE c.tenant = $1 AND p.template IS NOT NULL AND v.outcome IN ('breach', 'pass') \
           AND v.at > now() - make_interval(secs => $2) \
         ORDER BY v.at DESC LIMIT 500",
    )
    .bind(tenant)
    .bind(window.as_secs_f64())
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(template, case_id, at, outcome, plan)| {
            let plan = ChangePlan::from_stored(&plan)
                .inspect_err(|e| {
                    tracing::warn!(case.id = %case_id, error = %e,
                                   "A stored template plan does not parse; the skip rule ignores it.");
                })
                .ok()?;
            Some(TemplateVerdict {
                template,
                case_id,
                at,
                outcome,
                resources: resources(&plan),
            })
        })
        .collect())
}

/// The template planner's skip rule: a template whose newest verdict on
/// one of the plan's resources is a breach (a later pass there clears it).
pub fn skip_reason(verdicts: &[TemplateVerdict], name: &str, plan: &CheckedPlan) -> Option<String> {
    let mine = resources(&plan.model);
    let mut breached: Vec<(&String, &TemplateVerdict)> = Vec::new();
    for r in &mine {
        let newest = verdicts
            .iter()
            .find(|v| v.template == name && v.resources.contains(r));
        if let Some(v) = newest.filter(|v| v.outcome == "breach") {
            breached.push((r, v));
        }
    }
    let (_, v) = breached.first()?;
    Some(format!(
        "failed verification ({}) on {} in case {} at {}",
        v.outcome,
        breached
            .iter()
            .map(|(r, _)| r.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        v.case_id,
        v.at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    ))
}
