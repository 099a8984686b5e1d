//! The planner's consumer of `cmd.plan.generate`. An explicit `template`
//! (in the command or the case labels) or an unconfigured LLM means the
//! template planner; otherwise the LLM planner is asked. Either way the plan
//! is checked and proposed (the plan row and `evt.plan.proposed.v1`), or the
//! reason there is none goes out as `evt.plan.failed.v1`, in one
//! transaction under the case lock. The LLM is asked before that
//! transaction, never inside it.

use std::sync::Arc;
use std::time::Duration;

use sqlx::{PgConnection, PgPool};

use super::contract::{CheckedPlan, PlanLimits};
use super::llm::{AttemptScope, LlmAnswer, LlmPlanner};
use super::templates::Templates;
use super::{ProposeError, Source, propose};
use crate::contract::fact::PlanFailed;
use crate::contract::{CommandMsg, Fact, Message};
use crate::librarian::Librarian;
use crate::model::Case;
use crate::planner::{context, memory};
use crate::pubsub::consumer::Delivery;
use crate::store::{latest_findings, read_case};
use crate::worker::{CaseWorker, WorkError};
use crate::workflow::Status;

pub const CONSUMER: &str = "planner";

pub struct Planner {
    pub pool: PgPool,
    pub templates: Templates,
    pub limits: PlanLimits,
    pub llm: Option<LlmPlanner>,
    pub memory: Memory,
}

/// What the planner draws on besides the case: the librarian's passages
/// (for the LLM) and the failed-template window (for templates).
#[derive(Clone)]
pub struct Memory {
    /// `None`: the LLM is asked without passages.
    pub librarian: Option<Arc<Librarian>>,
    /// Passages given to the LLM.
    pub passages: usize,
    /// A template whose plan failed verification on the same resource
    /// within this long is not proposed again (zero: never skipped).
    pub skip_failed: Duration,
}

impl Default for Memory {
    fn default() -> Memory {
        Memory {
            librarian: None,
            passages: 5,
            skip_failed: Duration::from_secs(24 * 3600),
        }
    }
}

impl CaseWorker for Planner {
    /// The LLM's answer, when the LLM is this case's planner.
    type Prepared = Option<LlmAnswer>;

    fn name(&self) -> &'static str {
        CONSUMER
    }

    fn accepts(&self, cmd: &CommandMsg) -> bool {
        matches!(cmd, CommandMsg::GeneratePlan(_))
    }

    /// The LLM is asked here, before the proposing transaction, never
    /// inside it.
    async fn prepare(
        &self,
        cmd: &Message<CommandMsg>,
        _: &Delivery,
    ) -> Result<Option<LlmAnswer>, WorkError> {
        let (Some(llm), CommandMsg::GeneratePlan(args)) = (&self.llm, &cmd.body) else {
            return Ok(None);
        };
        Ok(self
            .ask_llm(llm, cmd, args.template.as_deref(), args.feedback.as_deref())
            .await?)
    }

    fn applies(&self, _: &Message<CommandMsg>, case: &Case) -> bool {
        case.status == Status::Planning
    }

    async fn apply(
        &self,
        tx: &mut PgConnection,
        cmd: &Message<CommandMsg>,
        case: &Case,
        asked: Option<LlmAnswer>,
    ) -> Result<Vec<Fact>, WorkError> {
        let CommandMsg::GeneratePlan(args) = &cmd.body else {
            return Err(WorkError::Invalid("not a cmd.plan.generate".into()));
        };
        let labels = case.string_labels();
        let made: Result<(Option<String>, Source, CheckedPlan), String> = match asked {
            Some(LlmAnswer::Plan(checked)) => Ok((None, Source::Llm, *checked)),
            Some(LlmAnswer::Failed(reason)) => Err(reason),
            None => {
                let verdicts =
                    memory::template_verdicts(tx, case.tenant.as_str(), self.memory.skip_failed)
                        .await?;
                self.templates
                    .plan_for(
                        args.template
                            .as_deref()
                            .or(labels.get("template").map(String::as_str)),
                        case.kind.as_deref(),
                        &labels,
                        &self.limits,
                        &|name, plan| memory::skip_reason(&verdicts, name, plan),
                    )
                    .map(|(name, checked)| (Some(name), Source::Template, checked))
                    .map_err(|no_plan| no_plan.to_string())
            }
        };
        let reason = match made {
            Ok((template, source, checked)) => {
                let by = match &template {
                    Some(name) => format!("template {name}"),
                    None => "the LLM".into(),
                };
                match propose(tx, case, &checked, source, CONSUMER, template.as_deref()).await {
                    Ok(proposed) => {
                        tracing::info!(case.id = %case.id, by = %by, plan.hash = %checked.hash,
                                       "Plan proposed.");
                        return Ok(vec![Fact::PlanProposed(proposed)]);
                    }
                    Err(ProposeError::Duplicate) => format!(
                        "{by} gives plan {} again, which was already tried; a person should propose another",
                        checked.hash.short()
                    ),
                    Err(ProposeError::Database(e)) => return Err(e.into()),
                }
            }
            Err(reason) => reason,
        };
        tracing::info!(case.id = %case.id, reason = %reason, "No plan.");
        Ok(vec![Fact::PlanFailed(PlanFailed { reason })])
    }
}

impl Planner {
    /// The librarian's passages for the case, when a librarian is
    /// configured. A librarian that cannot search (the model did not load,
    /// the embeddings server is down) does not stop planning: the LLM is
    /// asked without passages, and the failure is logged and counted.
    async fn retrieve(
        &self,
        case: &crate::model::Case,
        findings: Option<&crate::contract::fact::FindingsReport>,
    ) -> Option<memory::Retrieval> {
        let librarian = self.memory.librarian.as_ref()?;
        if self.memory.passages == 0 {
            return None;
        }
        let query = memory::query_for(case, findings);
        match memory::retrieve(&self.pool, librarian, case, query, self.memory.passages).await {
            Ok(r) => {
                crate::telemetry::plan_retrieval("ok");
                Some(r)
            }
            Err(e) => {
                crate::telemetry::plan_retrieval("failed");
                tracing::warn!(case.id = %case.id, error = %format!("{e:#}"),
                               "The librarian could not search; planning without passages.");
                None
            }
        }
    }

    /// Asks the LLM when it is the planner for this case: configured, no
    /// template named, and the case still waiting for a plan. Attempts are
    /// recorded as they end, outside the proposing transaction.
    async fn ask_llm(
        &self,
        llm: &LlmPlanner,
        cmd: &Message<CommandMsg>,
        template: Option<&str>,
        feedback: Option<&str>,
    ) -> Result<Option<LlmAnswer>, sqlx::Error> {
        let case_id = cmd.case_id.uuid();
        if template.is_some() {
            return Ok(None);
        }
        let Some(case) = read_case(&self.pool, case_id).await? else {
            return Ok(None);
        };
        let done: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM inbox WHERE consumer = $1 AND message_id = $2)",
        )
        .bind(CONSUMER)
        .bind(cmd.id)
        .fetch_one(&self.pool)
        .await?;
        if done || case.status != Status::Planning || case.labels.get("template").is_some() {
            return Ok(None);
        }
        let findings = latest_findings(&self.pool, case_id).await?;
        let retrieval = self.retrieve(&case, findings.as_ref()).await;
        // Not when the case came back (feedback): the template's plan may
        // be the one that just failed; and never a template the skip rule
        // holds back.
        let example = if llm.wants_example() && feedback.is_none() {
            let mut conn = self.pool.acquire().await?;
            let verdicts =
                memory::template_verdicts(&mut conn, case.tenant.as_str(), self.memory.skip_failed)
                    .await?;
            self.templates
                .plan_for(
                    None,
                    case.kind.as_deref(),
                    &case.string_labels(),
                    &self.limits,
                    &|name, plan| memory::skip_reason(&verdicts, name, plan),
                )
                .ok()
                .map(|(_, checked)| checked.plan)
        } else {
            None
        };
        let context = context::for_case(
            &self.pool,
            &case,
            findings.as_ref(),
            feedback,
            retrieval.as_ref(),
            example.as_ref(),
            &self.limits,
        )
        .await?;
        let scope = AttemptScope {
            pool: &self.pool,
            case_id,
            command_id: cmd.id,
            retrieval: retrieval.as_ref().map(memory::Retrieval::record),
            passage_ids: retrieval
                .iter()
                .flat_map(|r| r.passages.iter().map(|p| p.id.clone()))
                .collect(),
        };
        llm.plan(&context, &self.limits, &scope).await.map(Some)
    }
}
