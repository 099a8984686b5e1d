//! Offline replay (issue #20): what would today's FSM and a given gate
//! policy (with its targets and freeze windows) have decided on the
//! recorded cases? Reads the record in one read-only transaction, writes
//! nothing, publishes nothing, and reports per case where a decision would
//! differ; what was recorded before a field existed is reported as not
//! comparable, never guessed.
//!
//! Two checks per case:
//! - **the FSM**: every accepted timeline entry is decided again from
//!   `NEW` with the facts stored with it; a move today's rules refuse, or
//!   that would lead elsewhere, is a difference;
//! - **the gate**: every recorded gate decision is evaluated again with
//!   the given policy, at the time it was made, on the plan and the dry run
//!   it judged; another verdict or another number of approvers is a
//!   difference ("auto-approved then, needs 2 approvers now").

use std::fmt::Write;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use crate::contract::ChangePlan;
use crate::contract::fact::DryRunOutcome;
use crate::gatekeeper::policy::{self, GateContext, Policy};
use crate::workflow::{self, EventKind, Facts, Status};

/// Which recorded cases to read.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    /// Cases created at or after this instant.
    pub since: Option<DateTime<Utc>>,
    pub tenant: Option<String>,
}

/// One difference, or why a part of the record cannot be compared.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Finding {
    /// Today's FSM decides a recorded move otherwise.
    Fsm {
        version: i64,
        event: String,
        then: String,
        now: String,
    },
    /// The given policy decides a recorded gate evaluation otherwise.
    Gate {
        plan_hash: String,
        then: String,
        now: String,
        /// The new decision's reasons.
        reasons: Vec<String>,
    },
    /// A part of the record lacks what the comparison needs.
    NotComparable { what: String, missing: String },
}

/// A case's replay.
#[derive(Debug, Clone, Serialize)]
pub struct CaseReport {
    pub case_id: Uuid,
    pub tenant: String,
    pub title: String,
    pub status: String,
    pub moves: usize,
    pub gate_decisions: usize,
    pub findings: Vec<Finding>,
}

impl CaseReport {
    pub fn differs(&self) -> bool {
        self.findings
            .iter()
            .any(|f| !matches!(f, Finding::NotComparable { .. }))
    }

    pub fn comparable(&self) -> bool {
        !self
            .findings
            .iter()
            .any(|f| matches!(f, Finding::NotComparable { .. }))
    }
}

/// The whole replay.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub cases: Vec<CaseReport>,
}

#[derive(sqlx::FromRow)]
struct CaseRow {
    id: Uuid,
    tenant: String,
    title: String,
    status: String,
}

#[derive(sqlx::FromRow)]
struct Entry {
    version: i64,
    event: Option<String>,
    to_status: Option<String>,
    facts: Option<Value>,
}

#[derive(sqlx::FromRow)]
struct GateRow {
    plan_hash: String,
    plan: Value,
    verdict: String,
    required_approvers: Option<i16>,
    decided_at: Option<DateTime<Utc>>,
    dryrun_digest: Option<String>,
    dryrun_outcome: Option<String>,
}

/// Replays the scope's cases against `policy` (with its targets). The FSM
/// check takes the policy's re-plan limit in place of the recorded one;
/// the other policy-derived facts of a move (a freeze, automatic rollback)
/// were the gate's, which the gate check judges again.
pub async fn run(pool: &PgPool, scope: &Scope, policy: &Policy) -> anyhow::Result<Report> {
    let mut tx = pool.begin().await?;
    // One snapshot of the record, and the server refuses any write.
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    let cases: Vec<CaseRow> = sqlx::query_as(
        "SELECT id, tenant, title, status FROM ops_case \
         WHERE ($1::timestamptz IS NULL OR created_at >= $1) AND ($2::text IS NULL OR tenant = $2) \
         ORDER BY created_at, id",
    )
    .bind(scope.since)
    .bind(scope.tenant.as_deref())
    .fetch_all(&mut *tx)
    .await?;
    let mut reports = Vec::with_capacity(cases.len());
    for case in cases {
        let entries: Vec<Entry> = sqlx::query_as(
            "SELECT version, event, to_status, meta->'facts' AS facts FROM case_timeline \
             WHERE case_id = $1 AND kind = 'transition' ORDER BY seq",
        )
        .bind(case.id)
        .fetch_all(&mut *tx)
        .await?;
        let gates: Vec<GateRow> = sqlx::query_as(
            "SELECT g.plan_hash, p.plan, g.verdict, g.required_approvers, g.decided_at, \
                    g.dryrun_digest, d.outcome AS dryrun_outcome \
             FROM gate_decision g JOIN plan_proposed p ON p.id = g.plan_id \
             LEFT JOIN plan_dryrun d ON d.plan_id = g.plan_id AND d.digest = g.dryrun_digest \
             WHERE p.case_id = $1 ORDER BY g.decided_at NULLS FIRST, g.id",
        )
        .bind(case.id)
        .fetch_all(&mut *tx)
        .await?;
        let mut findings = fsm_findings(&entries, policy.replan.max_per_case);
        for g in &gates {
            findings.extend(gate_finding(g, &case.tenant, policy));
        }
        reports.push(CaseReport {
            case_id: case.id,
            tenant: case.tenant,
            title: case.title,
            status: case.status,
            moves: entries.len(),
            gate_decisions: gates.len(),
            findings,
        });
    }
    // Nothing was written; ending the read-only transaction either way
    // changes nothing.
    tx.rollback().await?;
    Ok(Report { cases: reports })
}

/// Each accepted move decided again from NEW with its stored facts.
fn fsm_findings(entries: &[Entry], replan_limit: u32) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut status = Status::New;
    for e in entries {
        let (Some(event), Some(to)) = (e.event.as_deref(), e.to_status.as_deref()) else {
            continue;
        };
        let what = format!("move v{} ({event})", e.version);
        let Ok(kind) = event.parse::<EventKind>() else {
            out.push(Finding::NotComparable {
                what,
                missing: format!("today's FSM has no event {event:?}"),
            });
            return out;
        };
        let Ok(recorded_to) = to.parse::<Status>() else {
            out.push(Finding::NotComparable {
                what,
                missing: format!("a known status (recorded {to:?})"),
            });
            return out;
        };
        let Some(facts) = e.facts.clone() else {
            out.push(Finding::NotComparable {
                what,
                missing: "the guard facts (recorded before they were kept)".into(),
            });
            return out;
        };
        let mut facts: Facts = match serde_json::from_value(facts) {
            Ok(f) => f,
            Err(err) => {
                out.push(Finding::NotComparable {
                    what,
                    missing: format!("readable guard facts ({err})"),
                });
                return out;
            }
        };
        if let Some(replan) = &mut facts.replan {
            replan.limit = replan_limit;
        }
        let now = match workflow::decide(status, kind, &facts) {
            Ok(d) if d.to == recorded_to => None,
            Ok(d) => Some(format!("{status} -> {}", d.to)),
            Err(rejection) => Some(format!("refused: {rejection}")),
        };
        if let Some(now) = now {
            out.push(Finding::Fsm {
                version: e.version,
                event: event.to_string(),
                then: format!("{status} -> {recorded_to}"),
                now,
            });
        }
        // The record goes on from where it went.
        status = recorded_to;
    }
    out
}

/// A recorded gate decision evaluated again with `policy`.
fn gate_finding(g: &GateRow, tenant: &str, policy: &Policy) -> Option<Finding> {
    let short = g.plan_hash.get(..12).unwrap_or(&g.plan_hash).to_string();
    let not_comparable = |missing: String| Finding::NotComparable {
        what: format!("gate decision on plan {short}"),
        missing,
    };
    let Some(at) = g.decided_at else {
        return Some(not_comparable(
            "its time (recorded before decisions kept it)".into(),
        ));
    };
    let plan = match ChangePlan::from_stored(&g.plan) {
        Ok(p) => p,
        Err(e) => return Some(not_comparable(format!("a readable plan ({e})"))),
    };
    let dryrun = match (&g.dryrun_digest, g.dryrun_outcome.as_deref()) {
        // Every gate evaluation follows a dry run since they exist: no
        // digest means a decision recorded before, not "no dry run".
        (None, _) => {
            return Some(not_comparable(
                "the dry run it judged (recorded before dry runs existed)".into(),
            ));
        }
        (Some(_), Some(o)) => match serde_json::from_value::<DryRunOutcome>(Value::from(o)) {
            Ok(o) => Some(o),
            Err(_) => return Some(not_comparable(format!("a known dry-run outcome ({o:?})"))),
        },
        (Some(d), None) => {
            return Some(not_comparable(format!(
                "the dry run it judged ({})",
                d.get(..12).unwrap_or(d)
            )));
        }
    };
    let now = policy::evaluate(
        &plan,
        policy,
        &GateContext {
            now: at,
            tenant,
            dryrun,
        },
    );
    let then_n = g.required_approvers.and_then(|n| u8::try_from(n).ok());
    let now_n = now.verdict.required_approvers();
    if g.verdict == now.verdict.name() && then_n == now_n {
        return None;
    }
    // A step and its rollback step often give the same reason twice.
    let mut reasons: Vec<String> = Vec::new();
    for r in now.reasons {
        if !reasons.contains(&r) {
            reasons.push(r);
        }
    }
    Some(Finding::Gate {
        plan_hash: short,
        then: verdict_words(&g.verdict, then_n),
        now: verdict_words(now.verdict.name(), now_n),
        reasons,
    })
}

/// "auto-approved", "needs 2 approvers", "break-glass by 2", "denied".
fn verdict_words(verdict: &str, approvers: Option<u8>) -> String {
    let n = approvers.unwrap_or(0);
    match verdict {
        "auto_approve" => "auto-approved".into(),
        "require_approvers" => format!("needs {n} approver{}", if n == 1 { "" } else { "s" }),
        "break_glass" => format!("break-glass by {n} approvers"),
        "deny" => "denied".into(),
        other => other.to_string(),
    }
}

impl Report {
    /// The report as people read it: the cases that differ or cannot be
    /// compared, then a summary table.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for c in &self.cases {
            if c.findings.is_empty() {
                continue;
            }
            let _ = writeln!(
                out,
                "case {} ({}, {}): {:?}",
                c.case_id, c.tenant, c.status, c.title
            );
            for f in &c.findings {
                let _ = match f {
                    Finding::Fsm {
                        version,
                        event,
                        then,
                        now,
                    } => writeln!(out, "  fsm   v{version} {event}: {then} then, {now} now"),
                    Finding::Gate {
                        plan_hash,
                        then,
                        now,
                        reasons,
                    } => writeln!(
                        out,
                        "  gate  plan {plan_hash}: {then} then, {now} now ({})",
                        reasons.join("; ")
                    ),
                    Finding::NotComparable { what, missing } => {
                        writeln!(out, "  not comparable  {what}: lacks {missing}")
                    }
                };
            }
        }
        // Each case in one class: a difference counts first, then a part
        // that cannot be compared.
        let total = self.cases.len();
        let differ = self.cases.iter().filter(|c| c.differs()).count();
        let incomparable = self
            .cases
            .iter()
            .filter(|c| !c.differs() && !c.comparable())
            .count();
        let same = self.cases.iter().filter(|c| c.findings.is_empty()).count();
        let gate = self
            .cases
            .iter()
            .flat_map(|c| &c.findings)
            .filter(|f| matches!(f, Finding::Gate { .. }))
            .count();
        let fsm = self
            .cases
            .iter()
            .flat_map(|c| &c.findings)
            .filter(|f| matches!(f, Finding::Fsm { .. }))
            .count();
        let _ = writeln!(
            out,
            "\n| cases | unchanged | differ | not comparable | gate differences | fsm differences |"
        );
        let _ = writeln!(out, "|---:|---:|---:|---:|---:|---:|");
        let _ = writeln!(
            out,
            "| {total} | {same} | {differ} | {incomparable} | {gate} | {fsm} |"
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(version: i64, event: &str, to: &str, facts: Option<Value>) -> Entry {
        Entry {
            version,
            event: Some(event.into()),
            to_status: Some(to.into()),
            facts,
        }
    }

    #[test]
    fn a_move_todays_rules_refuse_is_a_difference_and_missing_facts_are_not_guessed() {
        let none = Some(serde_json::to_value(Facts::default()).unwrap());
        let findings = fsm_findings(
            &[
                entry(2, "start_analysis", "ANALYZING", none.clone()),
                entry(3, "analysis_done", "PLANNING", none.clone()),
                // Recorded as accepted without a plan: today's guard refuses.
                entry(4, "plan_ready", "WAIT_GATE", none.clone()),
                entry(5, "gate_rejected", "PARKED", None),
                entry(6, "resume", "PLANNING", none),
            ],
            0,
        );
        assert_eq!(findings.len(), 2, "{findings:?}");
        match &findings[0] {
            Finding::Fsm {
                version, then, now, ..
            } => {
                assert_eq!((*version, then.as_str()), (4, "PLANNING -> WAIT_GATE"));
                assert!(
                    now.starts_with("refused: guards failed: plan_present"),
                    "{now}"
                );
            }
            other => panic!("expected an FSM difference, got {other:?}"),
        }
        assert!(
            matches!(&findings[1], Finding::NotComparable { what, .. } if what == "move v5 (gate_rejected)")
        );
    }

    #[test]
    fn a_recorded_replan_is_judged_by_the_given_policys_limit() {
        let facts = Facts {
            replan: Some(workflow::ReplanFact {
                limit: 1,
                done: 0,
                rolled_back_after_failed_verification: true,
            }),
            ..Facts::default()
        };
        let moves = [entry(
            9,
            "replan",
            "PLANNING",
            Some(serde_json::to_value(facts).unwrap()),
        )];
        let entries: Vec<Entry> = [
            ("start_analysis", "ANALYZING"),
            ("analysis_done", "PLANNING"),
            ("plan_failed", "PARKED"),
        ]
        .into_iter()
        .enumerate()
        .map(|(i, (e, to))| {
            entry(
                i as i64 + 2,
                e,
                to,
                Some(serde_json::to_value(Facts::default()).unwrap()),
            )
        })
        .chain(moves)
        .collect();
        assert!(fsm_findings(&entries, 1).is_empty());
        let off = fsm_findings(&entries, 0);
        assert!(
            matches!(&off[..], [Finding::Fsm { version: 9, now, .. }] if now.contains("replan_allowed")),
            "{off:?}"
        );
    }

    #[test]
    fn the_same_moves_under_the_same_rules_differ_in_nothing() {
        let none = Some(serde_json::to_value(Facts::default()).unwrap());
        assert!(
            fsm_findings(
                &[
                    entry(2, "start_analysis", "ANALYZING", none.clone()),
                    entry(3, "analysis_done", "PLANNING", none.clone()),
                    entry(4, "plan_failed", "PARKED", none),
                ],
                0
            )
            .is_empty()
        );
    }
}
