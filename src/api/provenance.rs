//! `GET /case/{id}/provenance`: everything that decided a case, as one
//! ordered chain an approver or an auditor reads (and keeps: the answer is
//! the export): the signals that opened it, the analyst's findings, every
//! plan attempt the LLM made (model, prompt version and hash, errors, the
//! passages retrieved for it), each
//! plan proposed, each dry run of it with its artefact, the gate's decision
//! with its computed risk and reasons (and the dry run it judged), the
//! approvals (who, when, for which hash and dry run), the execution runs
//! with each step's output, and the verifications with their figures.
//!
//! Read-only, tenant-scoped like every read. What the LLM was given from
//! the librarian (runbook and past-case passages) is in each plan
//! attempt's `retrieval`.

use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use super::cases::fetch_case;
use super::error::ApiError;
use super::executions::{StepShown, runs_of, verifications_of};
use super::extract::{Auth, CasePath};
use super::state::AppState;
use crate::model::Case;

/// The case and its chain, oldest first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Provenance {
    pub case: Case,
    /// Every link, ordered by time; links of one moment in chain order
    /// (signal, findings, plan attempt, plan, dry run, gate, approval,
    /// execution, verification).
    pub chain: Vec<Link>,
    pub exported_at: DateTime<Utc>,
}

/// One link of the chain, by its `stage`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(tag = "stage", rename_all = "snake_case")]
pub enum Link {
    /// A signal (an alert, a detection) as it arrived.
    Signal {
        at: DateTime<Utc>,
        evidence_id: Uuid,
        /// `signal.alertmanager` or `signal.detector`.
        kind: String,
        source: String,
        #[schema(value_type = Object)]
        data: Value,
    },
    /// The analyst's findings (`evt.analysis.findings.v1`'s report).
    Findings {
        at: DateTime<Utc>,
        evidence_id: Uuid,
        #[schema(value_type = Object)]
        findings: Value,
    },
    /// One request of the LLM planner.
    PlanAttempt {
        at: DateTime<Utc>,
        attempt_id: Uuid,
        command_id: Uuid,
        attempt: i32,
        model: String,
        prompt_version: String,
        prompt_hash: String,
        structured_output: bool,
        latency_ms: i32,
        prompt_tokens: Option<i32>,
        completion_tokens: Option<i32>,
        /// `valid`, `invalid`, `timeout`, `http_error` or `garbage`.
        outcome: String,
        #[schema(value_type = Vec<Object>)]
        errors: Value,
        plan_hash: Option<String>,
        /// The librarian's passages the model was given: the query, k,
        /// and each passage's id (`kb:<doc>`, what the plan cites), kind,
        /// title, outcome and score. Absent when no librarian was
        /// configured.
        #[schema(value_type = Option<Object>)]
        retrieval: Option<Value>,
    },
    /// A plan proposed for the case (template, LLM or a person).
    Plan {
        at: DateTime<Utc>,
        plan_id: Uuid,
        plan_hash: String,
        source: String,
        author: String,
        #[schema(value_type = Object)]
        plan: Value,
    },
    /// The executor's rehearsal of a plan before the gate.
    DryRun {
        at: DateTime<Utc>,
        plan_hash: String,
        digest: String,
        /// `ok`, `failed` or `unavailable`.
        outcome: String,
        #[schema(value_type = Object)]
        artefact: Value,
    },
    /// The gatekeeper's decision on a plan. `at` is absent for decisions
    /// recorded before the time was (migration 21).
    Gate {
        at: Option<DateTime<Utc>>,
        plan_hash: String,
        /// The dry run judged (absent: the plan had none).
        dryrun_digest: Option<String>,
        verdict: String,
        risk: f64,
        reasons: Vec<String>,
        required_approvers: Option<i16>,
        freeze: Option<String>,
        auto_rollback: bool,
    },
    /// An approval of an exact plan: the gatekeeper's (`auto`) or a
    /// person's (`human`).
    Approval {
        at: DateTime<Utc>,
        plan_hash: String,
        dryrun_digest: Option<String>,
        approver: String,
        kind: String,
        reasons: Vec<String>,
    },
    /// A run (or rollback) of a plan, with every step's output.
    Execution {
        at: DateTime<Utc>,
        run_id: Uuid,
        /// `run` or `rollback`.
        kind: String,
        plan_hash: String,
        status: String,
        error: Option<String>,
        finished_at: Option<DateTime<Utc>>,
        steps: Vec<StepShown>,
    },
    /// A verification with its figures.
    Verification {
        at: DateTime<Utc>,
        plan_hash: String,
        /// `pass`, `breach`, `no_data` or `inconclusive`.
        outcome: String,
        #[schema(value_type = Vec<Object>)]
        checks: Value,
        window_from: DateTime<Utc>,
        window_to: DateTime<Utc>,
    },
}

impl Link {
    /// (time, rank in the chain): links of one moment keep chain order.
    fn order(&self) -> (Option<DateTime<Utc>>, u8) {
        match self {
            Link::Signal { at, .. } => (Some(*at), 0),
            Link::Findings { at, .. } => (Some(*at), 1),
            Link::PlanAttempt { at, .. } => (Some(*at), 2),
            Link::Plan { at, .. } => (Some(*at), 3),
            Link::DryRun { at, .. } => (Some(*at), 4),
            Link::Gate { at, .. } => (*at, 5),
            Link::Approval { at, .. } => (Some(*at), 6),
            Link::Execution { at, .. } => (Some(*at), 7),
            Link::Verification { at, .. } => (Some(*at), 8),
        }
    }
}

type EvidenceRow = (DateTime<Utc>, Uuid, String, String, String, Value);
type AttemptRow = (
    DateTime<Utc>,
    Uuid,
    Uuid,
    i32,
    String,
    String,
    String,
    bool,
    i32,
    Option<i32>,
    Option<i32>,
    String,
    Value,
    Option<String>,
    Option<Value>,
);
type PlanRow = (DateTime<Utc>, Uuid, String, String, String, Value);
type DryRunRow = (DateTime<Utc>, String, String, String, Value);
type DecisionRow = (
    Uuid,
    Option<DateTime<Utc>>,
    String,
    Option<String>,
    String,
    f64,
    Vec<String>,
    Option<i16>,
    Option<String>,
    bool,
);

/// The provenance chain of a case.
#[utoipa::path(get, path = "/case/{id}/provenance", tag = "cases",
    params(("id" = Uuid, Path)),
    responses((status = 200, body = Provenance,
               description = "the case and its chain: signals, findings, plan attempts, plans, gate decisions, approvals, executions with step output, verifications; oldest first"),
              (status = 404, body = crate::problem::Problem)),
    security(("bearer" = [])))]
pub async fn chain(
    State(state): State<AppState>,
    Auth(who): Auth,
    CasePath(id): CasePath,
) -> Result<Json<Provenance>, ApiError> {
    // Only a case in the caller's tenants has a chain to read.
    let case = fetch_case(&state, &who, id).await?;
    let pool = state.orchestrator.pool();
    let mut chain = Vec::new();
    // Gate decisions, with their plan's time for one recorded without its own.
    let mut gates: Vec<(Option<DateTime<Utc>>, Link)> = Vec::new();
    let evidence: Vec<EvidenceRow> = sqlx::query_as(
        "SELECT l.at, e.id, l.role, e.type, e.source, e.data FROM evidence_link l \
         JOIN event_envelope e ON e.id = l.envelope_id WHERE l.case_id = $1",
    )
    .bind(id)
    .fetch_all(pool)
    .await?;
    for (at, evidence_id, role, kind, source, data) in evidence {
        chain.push(match role.as_str() {
            "findings" => Link::Findings {
                at,
                evidence_id,
                findings: data,
            },
            _ => Link::Signal {
                at,
                evidence_id,
                kind,
                source,
                data,
            },
        });
    }
    let attempts: Vec<AttemptRow> = sqlx::query_as(
        "SELECT created_at, id, command_id, attempt, model, prompt_version, prompt_hash, \
                structured_output, latency_ms, prompt_tokens, completion_tokens, outcome, errors, plan_hash, \
                retrieval \
         FROM plan_attempt WHERE case_id = $1",
    )
    .bind(id)
    .fetch_all(pool)
    .await?;
    chain.extend(attempts.into_iter().map(|a| Link::PlanAttempt {
        at: a.0,
        attempt_id: a.1,
        command_id: a.2,
        attempt: a.3,
        model: a.4,
        prompt_version: a.5,
        prompt_hash: a.6,
        structured_output: a.7,
        latency_ms: a.8,
        prompt_tokens: a.9,
        completion_tokens: a.10,
        outcome: a.11,
        errors: a.12,
        plan_hash: a.13,
        retrieval: a.14,
    }));
    let plans: Vec<PlanRow> = sqlx::query_as(
        "SELECT created_at, id, plan_hash, source, author, plan FROM plan_proposed WHERE case_id = $1",
    )
    .bind(id)
    .fetch_all(pool)
    .await?;
    // A decision without a recorded time sits right after its plan.
    let mut plan_at = std::collections::HashMap::new();
    for p in plans {
        plan_at.insert(p.1, p.0);
        chain.push(Link::Plan {
            at: p.0,
            plan_id: p.1,
            plan_hash: p.2,
            source: p.3,
            author: p.4,
            plan: p.5,
        });
    }
    let dry_runs: Vec<DryRunRow> = sqlx::query_as(
        "SELECT created_at, plan_hash, digest, outcome, artefact FROM plan_dryrun WHERE case_id = $1",
    )
    .bind(id)
    .fetch_all(pool)
    .await?;
    chain.extend(dry_runs.into_iter().map(|r| Link::DryRun {
        at: r.0,
        plan_hash: r.1,
        digest: r.2,
        outcome: r.3,
        artefact: r.4,
    }));
    let decisions: Vec<DecisionRow> = sqlx::query_as(
        "SELECT d.plan_id, d.decided_at, d.plan_hash, d.dryrun_digest, d.verdict, d.risk, d.reasons, \
                d.required_approvers, d.freeze_name, d.auto_rollback \
         FROM gate_decision d JOIN plan_proposed p ON p.id = d.plan_id WHERE p.case_id = $1",
    )
    .bind(id)
    .fetch_all(pool)
    .await?;
    for d in decisions {
        gates.push((
            plan_at.get(&d.0).copied(),
            Link::Gate {
                at: d.1,
                plan_hash: d.2,
                dryrun_digest: d.3,
                verdict: d.4,
                risk: d.5,
                reasons: d.6,
                required_approvers: d.7,
                freeze: d.8,
                auto_rollback: d.9,
            },
        ));
    }
    type ApprovalRow = (
        DateTime<Utc>,
        String,
        Option<String>,
        String,
        String,
        sqlx::types::Json<Vec<String>>,
    );
    let approvals: Vec<ApprovalRow> = sqlx::query_as(
        "SELECT a.decided_at, a.plan_hash, a.dryrun_digest, a.approver, a.kind, a.reasons FROM plan_approved a \
         JOIN plan_proposed p ON p.id = a.plan_id WHERE p.case_id = $1",
    )
    .bind(id)
    .fetch_all(pool)
    .await?;
    chain.extend(approvals.into_iter().map(
        |(at, plan_hash, dryrun_digest, approver, kind, reasons)| Link::Approval {
            at,
            plan_hash,
            dryrun_digest,
            approver,
            kind,
            reasons: reasons.0,
        },
    ));
    // Every run and verification: an audit export leaves nothing out.
    chain.extend(
        runs_of(pool, id, i64::MAX)
            .await?
            .into_iter()
            .map(|r| Link::Execution {
                at: r.started_at,
                run_id: r.id,
                kind: r.kind,
                plan_hash: r.plan_hash,
                status: r.status,
                error: r.error,
                finished_at: r.finished_at,
                steps: r.steps,
            }),
    );
    chain.extend(
        verifications_of(pool, id, i64::MAX)
            .await?
            .into_iter()
            .map(|v| Link::Verification {
                at: v.at,
                plan_hash: v.plan_hash,
                outcome: v.outcome,
                checks: v.checks,
                window_from: v.window_from,
                window_to: v.window_to,
            }),
    );
    let mut keyed: Vec<((DateTime<Utc>, u8), Link)> = chain
        .into_iter()
        .map(|link| {
            let (at, rank) = link.order();
            ((at.unwrap_or(DateTime::<Utc>::MIN_UTC), rank), link)
        })
        .collect();
    for (plan_at, link) in gates {
        let (at, rank) = link.order();
        let at = at.or(plan_at).unwrap_or(DateTime::<Utc>::MIN_UTC);
        keyed.push(((at, rank), link));
    }
    keyed.sort_by_key(|(key, _)| *key);
    Ok(Json(Provenance {
        case,
        chain: keyed.into_iter().map(|(_, link)| link).collect(),
        exported_at: Utc::now(),
    }))
}
