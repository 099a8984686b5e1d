//! The planner's consumer of `cmd.plan.generate`. An explicit `template`
//! (in the command or the case labels) or an unconfigured LLM means the
//! template planner; otherwise the LLM planner is asked. Either way the plan
//! is checked and proposed (the plan row and `evt.plan.proposed.v1`), or the
//! reason there is none goes out as `evt.plan.failed.v1`, in one
//! transaction under the case lock. The LLM is asked before that
//! transaction, never inside it.

use std::collections::BTreeMap;

use sqlx::PgPool;

use super::contract::{CheckedPlan, PlanLimits};
use super::llm::{AttemptScope, LlmAnswer, LlmPlanner};
use super::templates::Templates;
use super::{ProposeError, Source, propose};
use crate::contract::command::GeneratePlan;
use crate::contract::fact::PlanFailed;
use crate::contract::{CommandMsg, Fact, Message};
use crate::planner::context;
use crate::pubsub::consumer::{Delivery, Disposition, Handler};
use crate::pubsub::{inbox, outbox};
use crate::store::read_case;
use crate::telemetry;
use crate::workflow::Status;

pub const CONSUMER: &str = "planner";

pub struct Planner {
    pub pool: PgPool,
    pub templates: Templates,
    pub limits: PlanLimits,
    pub llm: Option<LlmPlanner>,
}

impl Handler for Planner {
    fn name(&self) -> &str {
        CONSUMER
    }

    async fn handle(&self, d: &Delivery) -> Disposition {
        let cmd = match Message::<CommandMsg>::from_envelope(&d.envelope) {
            Ok(cmd) => cmd,
            Err(e) => return e.into(),
        };
        let CommandMsg::GeneratePlan(args) = &cmd.body else {
            return Disposition::unknown_type(&d.envelope.kind);
        };
        match self
            .plan(&cmd, args, &d.subject, d.traceparent.as_deref())
            .await
        {
            Ok(disposition) => disposition,
            Err(e) => Disposition::Retry(e.to_string()),
        }
    }
}

impl Planner {
    async fn plan(
        &self,
        cmd: &Message<CommandMsg>,
        args: &GeneratePlan,
        subject: &str,
        traceparent: Option<&str>,
    ) -> Result<Disposition, sqlx::Error> {
        let case_id = cmd.case_id.uuid();
        let template = args.template.as_deref();
        let asked = match &self.llm {
            Some(llm) => {
                self.ask_llm(llm, cmd, template, args.feedback.as_deref())
                    .await?
            }
            None => None,
        };
        let mut tx = self.pool.begin().await?;
        let case = match inbox::claim_case(&mut tx, CONSUMER, cmd.id, subject, case_id).await? {
            Ok(case) => case,
            Err(nothing_to_do) => return Ok(nothing_to_do),
        };
        if case.status != Status::Planning {
            tx.commit().await?;
            return Ok(Disposition::Done);
        }
        let labels: BTreeMap<String, String> = case
            .labels
            .as_object()
            .into_iter()
            .flatten()
            .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
            .collect();
        let trace = telemetry::trace_id_from(traceparent);
        let made: Result<(String, Source, CheckedPlan), String> = match asked {
            Some(LlmAnswer::Plan(checked)) => Ok(("the LLM".into(), Source::Llm, *checked)),
            Some(LlmAnswer::Failed(reason)) => Err(reason),
            None => self
                .templates
                .plan_for(
                    template.or(labels.get("template").map(String::as_str)),
                    case.kind.as_deref(),
                    &labels,
                    &self.limits,
                )
                .map(|(name, checked)| (format!("template {name}"), Source::Template, checked))
                .map_err(|no_plan| no_plan.to_string()),
        };
        let failure = match made {
            Ok((by, source, checked)) => {
                match propose(&mut tx, &case, &checked, source, CONSUMER, &trace).await {
                    Ok(_) => {
                        tracing::info!(case.id = %case.id, by = %by, plan.hash = %checked.hash,
                                       "Plan proposed.");
                        None
                    }
                    Err(ProposeError::Duplicate) => Some(format!(
                        "{by} gives plan {} again, which was already tried; a person should propose another",
                        checked.hash.short()
                    )),
                    Err(ProposeError::Database(e)) => return Err(e),
                }
            }
            Err(reason) => Some(reason),
        };
        if let Some(reason) = failure {
            let fact = Message::for_case(
                &case,
                CONSUMER,
                Some(cmd.id),
                Fact::PlanFailed(PlanFailed {
                    reason: reason.clone(),
                }),
            );
            outbox::enqueue_fact(&mut tx, fact.to_envelope(), traceparent).await?;
            tracing::info!(case.id = %case.id, reason = %reason, "No plan.");
        }
        tx.commit().await?;
        Ok(Disposition::Done)
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
