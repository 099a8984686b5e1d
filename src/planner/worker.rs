//! The planner's consumer of `cmd.plan.generate`: picks a template for the
//! case, fills it from the case labels, checks it, and proposes it (the plan
//! row and `evt.plan.proposed.v1`), or says why not (`evt.plan.failed.v1`),
//! in one transaction under the case lock.

use std::collections::BTreeMap;

use serde_json::json;
use sqlx::PgPool;

use super::contract::PlanLimits;
use super::templates::Templates;
use super::{ProposeError, Source, propose};
use crate::pubsub::consumer::{DeadReason, Delivery, Disposition, Handler};
use crate::pubsub::{Envelope, inbox, outbox, subjects};
use crate::telemetry;
use crate::workflow::Status;

pub const CONSUMER: &str = "planner";
pub const EVT_PLAN_FAILED: &str = "evt.plan.failed.v1";

pub struct Planner {
    pub pool: PgPool,
    pub templates: Templates,
    pub limits: PlanLimits,
}

impl Handler for Planner {
    fn name(&self) -> &str {
        CONSUMER
    }

    async fn handle(&self, d: &Delivery) -> Disposition {
        let env = &d.envelope;
        if env.kind != subjects::CMD_PLAN_GENERATE {
            return Disposition::unknown_type(&env.kind);
        }
        let Some(case_id) = env.case_id else {
            return Disposition::DeadLetter(
                DeadReason::InvalidData,
                "cmd.plan.generate needs a case_id".into(),
            );
        };
        let template = match env.data.get("template") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(t)) => Some(t.clone()),
            Some(_) => {
                return Disposition::DeadLetter(
                    DeadReason::InvalidData,
                    "data.template must be a string".into(),
                );
            }
        };
        match self
            .plan(
                env,
                case_id,
                template.as_deref(),
                &d.subject,
                d.traceparent.as_deref(),
            )
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
        cmd: &Envelope,
        case_id: uuid::Uuid,
        template: Option<&str>,
        subject: &str,
        traceparent: Option<&str>,
    ) -> Result<Disposition, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let case = match inbox::claim_case(&mut tx, CONSUMER, cmd.id, subject, case_id).await? {
            Ok(case) => case,
            Err(nothing_to_do) => {
                tx.commit().await?;
                return Ok(nothing_to_do);
            }
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
        let failure = match self.templates.plan_for(
            template,
            case.kind.as_deref(),
            &labels,
            &self.limits,
        ) {
            Ok((name, checked)) => {
                match propose(&mut tx, &case, &checked, Source::Template, CONSUMER, &trace).await {
                    Ok(_) => {
                        tracing::info!(case.id = %case.id, template = %name, plan.hash = %checked.hash,
                                       "Plan proposed from a template.");
                        None
                    }
                    Err(ProposeError::Duplicate) => Some(format!(
                        "template {name} gives plan {} again, which was already tried; a person should propose another",
                        &checked.hash[..12]
                    )),
                    Err(ProposeError::Database(e)) => return Err(e),
                }
            }
            Err(no_plan) => Some(no_plan.to_string()),
        };
        if let Some(reason) = failure {
            let fact = Envelope::for_case(
                &case,
                EVT_PLAN_FAILED,
                CONSUMER,
                Some(cmd.id),
                json!({"reason": reason}),
            );
            outbox::enqueue(
                &mut tx,
                Some(case.id),
                &[fact],
                &outbox::traceparent(&trace),
            )
            .await?;
            tracing::info!(case.id = %case.id, reason = %reason, "No plan.");
        }
        tx.commit().await?;
        Ok(Disposition::Done)
    }
}
