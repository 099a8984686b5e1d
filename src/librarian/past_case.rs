//! Past cases: what an ended case (CLOSED or PARKED) becomes in the
//! librarian, so that the next plan for the same trouble starts from what
//! was tried and how it ended. One `past_case` document per case (source
//! `case:<id>`), written from the database as it stands, so a redelivered
//! or late transition writes the same text (a no-op) and a later ending
//! replaces it.
//!
//! The outcome is the document's first section and its `outcome` label:
//! an approver and the LLM read "rolled back after breach" before anything
//! else.

use std::collections::BTreeMap;
use std::fmt::Write;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use super::store::{DocKind, NewDoc};
use crate::contract::fact::FindingsReport;
use crate::contract::plan::ChangePlan;
use crate::model::Case;
use crate::store::{latest_findings, read_case};
use crate::verifier::check::CheckJudged;
use crate::workflow::Status;

/// How a case ended, as the `outcome` label says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, strum::Display)]
#[strum(serialize_all = "snake_case")]
pub enum Outcome {
    /// A change ran and verification passed.
    Fixed,
    /// Verification failed and the change was rolled back.
    RolledBack,
    /// Verification failed and the rollback itself failed: the change may
    /// still be in place.
    RollbackFailed,
    /// Verification failed and no rollback has run (pending, or left to a
    /// person by the policy or a plan without rollback steps).
    VerifyFailed,
    /// The change itself failed (its rollback steps ran, if any).
    ExecFailed,
    /// Parked for a person.
    Parked,
    /// Closed with no change run (dismissed, or resolved by itself).
    ClosedWithoutChange,
}

/// The label that carries a past case's [`Outcome`], and the one naming
/// its case: written here only (`POST /kb/docs` refuses both).
pub const OUTCOME_LABEL: &str = "outcome";
pub const CASE_LABEL: &str = "case_id";

/// The source a case's document is stored under.
pub fn source_of(case: Uuid) -> String {
    format!("case:{case}")
}

/// The document for `case`, or `None` when the case is not ended (it was
/// resumed since the transition that asked for it) or does not exist.
pub async fn document(pool: &PgPool, case: Uuid) -> Result<Option<NewDoc>, sqlx::Error> {
    let Some(case) = read_case(pool, case).await? else {
        return Ok(None);
    };
    if !matches!(case.status, Status::Closed | Status::Parked) {
        return Ok(None);
    }
    let facts = Facts::read(pool, &case).await?;
    let (outcome, text) = facts.describe(&case);
    let mut labels: BTreeMap<String, String> = case.string_labels();
    labels.insert(OUTCOME_LABEL.into(), outcome.to_string());
    labels.insert(CASE_LABEL.into(), case.id.to_string());
    if let Some(kind) = &case.kind {
        labels.entry("kind".into()).or_insert_with(|| kind.clone());
    }
    if let Some(template) = facts.plan.as_ref().and_then(|p| p.template.clone()) {
        labels.insert("template".into(), template);
    }
    Ok(Some(NewDoc {
        tenant: Some(case.tenant.clone()),
        kind: DocKind::PastCase,
        title: format!("Past case: {}", case.title)
            .chars()
            .take(300)
            .collect(),
        source: source_of(case.id),
        body: text,
        labels: serde_json::to_value(labels).expect("strings serialise"),
    }))
}

/// The current plan and what became of it.
#[derive(sqlx::FromRow)]
struct PlanRow {
    plan: Value,
    plan_hash: String,
    source: String,
    template: Option<String>,
    gate_verdict: Option<String>,
    gate_risk: Option<f64>,
    gate_reasons: Option<Vec<String>>,
}

#[derive(sqlx::FromRow)]
struct RunRow {
    kind: String,
    status: String,
    error: Option<String>,
}

#[derive(sqlx::FromRow)]
struct VerifyRow {
    outcome: String,
    checks: sqlx::types::Json<Vec<CheckJudged>>,
    at: DateTime<Utc>,
}

struct Facts {
    /// The case's plans before the current one: title, template, their
    /// newest verification outcome.
    earlier: Vec<(String, Option<String>, Option<String>)>,
    findings: Option<FindingsReport>,
    plan: Option<PlanRow>,
    approvers: Vec<String>,
    runs: Vec<RunRow>,
    verification: Option<VerifyRow>,
    ended: Option<(DateTime<Utc>, String, Option<String>)>,
}

impl Facts {
    async fn read(pool: &PgPool, case: &Case) -> Result<Facts, sqlx::Error> {
        let findings = latest_findings(pool, case.id).await?;
        let plan: Option<PlanRow> = sqlx::query_as(
            "SELECT plan, plan_hash, source, template, gate_verdict, gate_risk, gate_reasons \
             FROM plan_proposed WHERE case_id = $1 ORDER BY seq DESC LIMIT 1",
        )
        .bind(case.id)
        .fetch_optional(pool)
        .await?;
        let (approvers, runs, verification) = match &plan {
            None => (Vec::new(), Vec::new(), None),
            Some(p) => (
                sqlx::query_scalar(
                    "SELECT a.approver FROM plan_approved a JOIN plan_proposed p ON p.id = a.plan_id \
                     WHERE p.case_id = $1 AND a.plan_hash = $2 AND a.kind = 'human' ORDER BY a.decided_at",
                )
                .bind(case.id)
                .bind(&p.plan_hash)
                .fetch_all(pool)
                .await?,
                sqlx::query_as(
                    "SELECT kind, status, error FROM exec_run WHERE case_id = $1 AND plan_hash = $2 \
                     ORDER BY started_at",
                )
                .bind(case.id)
                .bind(&p.plan_hash)
                .fetch_all(pool)
                .await?,
                sqlx::query_as(
                    "SELECT outcome, checks, at FROM verify_result WHERE case_id = $1 AND plan_hash = $2 \
                     ORDER BY at DESC LIMIT 1",
                )
                .bind(case.id)
                .bind(&p.plan_hash)
                .fetch_optional(pool)
                .await?,
            ),
        };
        let ended: Option<(DateTime<Utc>, String, Option<String>)> = sqlx::query_as(
            "SELECT at, event, reason FROM case_timeline WHERE case_id = $1 AND kind = 'transition' \
             AND to_status IN ('CLOSED', 'PARKED') ORDER BY seq DESC LIMIT 1",
        )
        .bind(case.id)
        .fetch_optional(pool)
        .await?;
        let mut earlier: Vec<(String, Option<String>, Option<String>)> = sqlx::query_as(
            "SELECT COALESCE(p.plan->>'title', ''), p.template, \
                    (SELECT v.outcome FROM verify_result v WHERE v.case_id = p.case_id \
                       AND v.plan_hash = p.plan_hash ORDER BY v.at DESC LIMIT 1) \
             FROM plan_proposed p WHERE p.case_id = $1 ORDER BY p.seq DESC LIMIT 11",
        )
        .bind(case.id)
        .fetch_all(pool)
        .await?;
        // Newest first; the newest is the current plan, described apart.
        if !earlier.is_empty() {
            earlier.remove(0);
        }
        earlier.reverse();
        Ok(Facts {
            earlier,
            findings,
            plan,
            approvers,
            runs,
            verification,
            ended,
        })
    }

    /// What the ending says, most telling first: a failed verification
    /// (rolled back, rollback failed, or not rolled back: a breach parks
    /// the case before its rollback runs), a change that failed, a parking
    /// for a person, a verified fix, or no change at all.
    fn outcome(&self, case: &Case) -> Outcome {
        let verify_failed = self
            .verification
            .as_ref()
            .is_some_and(|v| v.outcome != "pass");
        let rollback = self.runs.iter().rev().find(|r| r.kind == "rollback");
        match rollback {
            Some(r) if r.status == "rolled_back" || r.status == "done" => {
                return Outcome::RolledBack;
            }
            Some(r) if r.status != "running" => return Outcome::RollbackFailed,
            _ if verify_failed => return Outcome::VerifyFailed,
            _ => {}
        }
        let last = self.runs.iter().rev().find(|r| r.kind == "run");
        if last.is_some_and(|r| r.status != "done") {
            return Outcome::ExecFailed;
        }
        if case.status == Status::Parked {
            return Outcome::Parked;
        }
        match last {
            Some(_) => Outcome::Fixed,
            None => Outcome::ClosedWithoutChange,
        }
    }

    /// The outcome and the document's text (Markdown: the chunker splits
    /// by its headings).
    fn describe(&self, case: &Case) -> (Outcome, String) {
        let outcome = self.outcome(case);
        let plan = self.plan.as_ref().and_then(|p| {
            ChangePlan::from_stored(&p.plan)
                .inspect_err(|e| {
                    tracing::warn!(case.id = %case.id, error = %e, "A stored plan does not parse; the past case omits it.");
                })
                .ok()
        });
        let plan_title = plan.as_ref().map_or("no plan", |p| p.title.as_str());
        let when = self
            .ended
            .as_ref()
            .map_or(case.updated_at, |(at, _, _)| *at)
            .format("%Y-%m-%d");
        let reason = self
            .ended
            .as_ref()
            .and_then(|(_, _, r)| r.clone())
            .or_else(|| case.park_reason.clone());
        let figures = self.verification.as_ref().map(figures).unwrap_or_default();
        let figures = if figures.is_empty() {
            String::new()
        } else {
            format!(" ({figures})")
        };
        // "breach (latency_p95_ms avg 950.0 (< 300: breach))"
        let verdict = format!(
            "{}{figures}",
            self.verification
                .as_ref()
                .map_or("failed", |v| v.outcome.as_str())
        );
        let sentence = match outcome {
            Outcome::Fixed => format!(
                "\"{plan_title}\" was run on {when} and fixed it: verification passed{figures}."
            ),
            Outcome::RolledBack => format!(
                "\"{plan_title}\" was tried on {when} and rolled back after verification {verdict}."
            ),
            Outcome::RollbackFailed => format!(
                "\"{plan_title}\" was tried on {when}; verification {verdict} and the rollback failed: the change may still be in place."
            ),
            Outcome::VerifyFailed => format!(
                "\"{plan_title}\" was tried on {when}; verification {verdict}, not rolled back (yet)."
            ),
            Outcome::ExecFailed => format!(
                "\"{plan_title}\" failed while running on {when}: {}.",
                self.runs
                    .last()
                    .and_then(|r| r.error.as_deref())
                    .unwrap_or("no error recorded")
            ),
            Outcome::Parked => format!(
                "Parked for a person on {when}: {}.",
                reason.as_deref().unwrap_or("no reason given")
            ),
            Outcome::ClosedWithoutChange => format!(
                "Closed on {when} without any change being run{}.",
                reason
                    .as_deref()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default()
            ),
        };
        let mut out = String::new();
        let _ = writeln!(out, "# Past case: {}\n", case.title);
        let _ = writeln!(out, "## Outcome\n\n{sentence}");
        let _ = writeln!(
            out,
            "Case {} ({}), kind {}, severity {}, ended {} as {}.\n",
            case.id,
            case.tenant,
            case.kind.as_deref().unwrap_or("none"),
            case.severity,
            when,
            case.status
        );
        let labels: Vec<String> = case
            .string_labels()
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        if !labels.is_empty() {
            let _ = writeln!(out, "Labels: {}.\n", labels.join(", "));
        }
        if let Some(f) = &self.findings {
            let _ = writeln!(out, "## Findings\n\n{}", f.summary);
            if let Some(resource) = &f.resource {
                let _ = writeln!(out, "Resource: {resource}.");
            }
            out.push('\n');
        }
        if let (Some(row), Some(plan)) = (&self.plan, &plan) {
            let by = match &row.template {
                Some(t) => format!("template {t}"),
                None => row.source.clone(),
            };
            let _ = writeln!(
                out,
                "## Plan\n\n{} (by {by}, plan {}).",
                plan.title,
                &row.plan_hash[..12]
            );
            if let Some(r) = &plan.rationale {
                let _ = writeln!(out, "Rationale: {r}");
            }
            for step in &plan.steps {
                let _ = writeln!(
                    out,
                    "- step {} on {}",
                    step.action.name(),
                    step.action.target().unwrap_or_else(|| "nothing".into())
                );
            }
            for step in &plan.rollback.steps {
                let _ = writeln!(
                    out,
                    "- rollback {} on {}",
                    step.action.name(),
                    step.action.target().unwrap_or_else(|| "nothing".into())
                );
            }
            out.push('\n');
            if let Some(verdict) = &row.gate_verdict {
                let _ = writeln!(
                    out,
                    "## Gate\n\n{verdict}, risk {:.2}: {}.",
                    row.gate_risk.unwrap_or_default(),
                    row.gate_reasons.as_deref().unwrap_or_default().join("; ")
                );
                if !self.approvers.is_empty() {
                    let _ = writeln!(out, "Approved by {}.", self.approvers.join(", "));
                }
                out.push('\n');
            }
        }
        if !self.earlier.is_empty() {
            let _ = writeln!(out, "## Earlier plans\n");
            for (title, template, verdict) in &self.earlier {
                let _ = writeln!(
                    out,
                    "- {title}{}: verification {}",
                    template
                        .as_deref()
                        .map(|t| format!(" (template {t})"))
                        .unwrap_or_default(),
                    verdict.as_deref().unwrap_or("not run")
                );
            }
            out.push('\n');
        }
        if !self.runs.is_empty() {
            let _ = writeln!(out, "## Execution\n");
            for r in &self.runs {
                let _ = writeln!(
                    out,
                    "- {} run {}{}",
                    r.kind,
                    r.status,
                    r.error
                        .as_deref()
                        .map(|e| format!(": {e}"))
                        .unwrap_or_default()
                );
            }
            out.push('\n');
        }
        if let Some(v) = &self.verification {
            let _ = writeln!(
                out,
                "## Verification\n\n{} at {}{figures}.",
                v.outcome,
                v.at.format("%Y-%m-%d %H:%M UTC"),
            );
        }
        (outcome, out)
    }
}

/// "latency_p95_ms avg 950.0 (< 300: breach)", one per check.
fn figures(v: &VerifyRow) -> String {
    crate::verifier::check::describe_judged(&v.checks)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn case(status: Status) -> Case {
        Case {
            id: Uuid::nil(),
            tenant: "t-001".parse().unwrap(),
            title: "checkout slow".into(),
            severity: "high".into(),
            kind: Some("service".into()),
            labels: serde_json::json!({"service": "checkout"}),
            status,
            version: 9,
            park_reason: None,
            correlation_id: Uuid::nil(),
            created_by: "alice".into(),
            created_at: Utc::now(),
            updated_at: Utc::now(),
        }
    }

    fn facts(runs: &[(&str, &str)], verified: Option<&str>) -> Facts {
        Facts {
            earlier: Vec::new(),
            findings: None,
            plan: None,
            approvers: Vec::new(),
            runs: runs
                .iter()
                .map(|(kind, status)| RunRow {
                    kind: kind.to_string(),
                    status: status.to_string(),
                    error: None,
                })
                .collect(),
            verification: verified.map(|o| VerifyRow {
                outcome: o.into(),
                checks: sqlx::types::Json(Vec::new()),
                at: Utc::now(),
            }),
            ended: None,
        }
    }

    #[test]
    fn the_outcome_says_what_became_of_the_change() {
        use Outcome::*;
        let parked = case(Status::Parked);
        let closed = case(Status::Closed);
        for (f, on, expected) in [
            // A breach parks the case before its rollback has run.
            (
                facts(&[("run", "done")], Some("breach")),
                &parked,
                VerifyFailed,
            ),
            (
                facts(&[("run", "done"), ("rollback", "running")], Some("breach")),
                &parked,
                VerifyFailed,
            ),
            (
                facts(
                    &[("run", "done"), ("rollback", "rolled_back")],
                    Some("breach"),
                ),
                &parked,
                RolledBack,
            ),
            (
                facts(&[("run", "done"), ("rollback", "failed")], Some("no_data")),
                &parked,
                RollbackFailed,
            ),
            // A failing step runs the plan's own rollback within the run.
            (facts(&[("run", "rolled_back")], None), &parked, ExecFailed),
            (facts(&[("run", "failed")], None), &parked, ExecFailed),
            (facts(&[], None), &parked, Parked),
            (facts(&[("run", "done")], Some("pass")), &closed, Fixed),
            (facts(&[], None), &closed, ClosedWithoutChange),
        ] {
            assert_eq!(
                f.outcome(on),
                expected,
                "{:?} {:?}",
                f.runs
                    .iter()
                    .map(|r| (&r.kind, &r.status))
                    .collect::<Vec<_>>(),
                f.verification.as_ref().map(|v| &v.outcome)
            );
        }
    }
}
