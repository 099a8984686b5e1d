//! The planner's consumer of `cmd.plan.generate`. An explicit `template`
//! (in the command or the case labels) or an unconfigured LLM means the
//! template planner; otherwise the LLM planner is asked. Either way the plan
//! is checked and proposed (the plan row and `evt.plan.proposed.v1`), or the
//! reason there is none goes out as `evt.plan.failed.v1`, in one
//! transaction under the case lock. The LLM is asked before that
//! transaction, never inside it.

use std::collections::BTreeMap;

use sqlx::{PgConnection, PgPool};

use super::contract::{CheckedPlan, PlanLimits};
use super::llm::{AttemptScope, LlmAnswer, LlmPlanner};
use super::templates::Templates;
use super::{ProposeError, Source, propose};
use crate::contract::fact::PlanFailed;
use crate::contract::{CommandMsg, Fact, Message};
use crate::model::Case;
use crate::planner::context;
use crate::pubsub::consumer::Delivery;
use crate::store::read_case;
use crate::worker::{CaseWorker, WorkError};
use crate::workflow::Status;

pub const CONSUMER: &str = "planner";

pub struct Planner {
    pub pool: PgPool,
    pub templates: Templates,
    pub limits: PlanLimits,
    pub llm: Option<LlmPlanner>,
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
        let labels: BTreeMap<String, String> = case
            .labels
            .as_object()
            .into_iter()
            .flatten()
            .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
            .collect();
        let made: Result<(String, Source, CheckedPlan), String> = match asked {
            Some(LlmAnswer::Plan(checked)) => Ok(("the LLM".into(), Source::Llm, *checked)),
            Some(LlmAnswer::Failed(reason)) => Err(reason),
            None => self
                .templates
                .plan_for(
                    args.template
                        .as_deref()
                        .or(labels.get("template").map(String::as_str)),
                    case.kind.as_deref(),
                    &labels,
                    &self.limits,
                )
                .map(|(name, checked)| (format!("template {name}"), Source::Template, checked))
                .map_err(|no_plan| no_plan.to_string()),
        };
        let reason = match made {
            Ok((by, source, checked)) => {
                match propose(tx, case, &checked, source, CONSUMER).await {
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
        let context = context::for_case(&self.pool, &case, feedback, &self.limits).await?;
        let scope = AttemptScope {
            pool: &self.pool,
            case_id,
            command_id: cmd.id,
        };
        llm.plan(&context, &self.limits, &scope).await.map(Some)
    }
}
