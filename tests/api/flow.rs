//! The worker loop over the real NATS, driven step by step: the relay, the
//! planner, the gatekeeper and the orchestrator's fact consumer, each with
//! its durable consumer on a private nats-server.

use std::path::Path;
use std::time::Duration;

use async_nats::jetstream;
use opsloop::gatekeeper::{Gatekeeper, policy::Policy};
use opsloop::orchestrator::consumer::FactConsumer;
use opsloop::planner::contract::PlanLimits;
use opsloop::planner::llm::LlmPlanner;
use opsloop::planner::templates::Templates;
use opsloop::planner::worker::Planner;
use opsloop::pubsub::consumer::{self, ConsumerSpec};
use opsloop::pubsub::relay::{Relay, RelaySettings};
use opsloop::pubsub::streams::{self, CMD_STREAM, EVT_STREAM, StreamSettings};
use reqwest::Method;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use crate::helpers::*;
use crate::nats::TestNats;

/// The limits the workers check plans against (the API's are the same).
pub fn plan_limits() -> PlanLimits {
    PlanLimits {
        script_allowlist: ["restart-checkout.sh".to_string()].into(),
        ..PlanLimits::default()
    }
}

pub struct Loop {
    pub app: TestApp,
    _nats: TestNats,
    relay: Relay,
    facts: jetstream::consumer::PullConsumer,
    gate: jetstream::consumer::PullConsumer,
    plans: jetstream::consumer::PullConsumer,
    orchestrator: FactConsumer,
    gatekeeper: Gatekeeper,
    planner: Planner,
}

impl Loop {
    pub async fn new(pool: PgPool) -> Loop {
        Loop::build(pool, Policy::default(), None).await
    }

    pub async fn with_policy(pool: PgPool, policy: Policy) -> Loop {
        Loop::build(pool, policy, None).await
    }

    pub async fn with_llm(pool: PgPool, llm: LlmPlanner) -> Loop {
        Loop::build(pool, Policy::default(), Some(llm)).await
    }

    async fn build(pool: PgPool, policy: Policy, llm: Option<LlmPlanner>) -> Loop {
        let app = TestApp::new(pool.clone()).await;
        let nats = TestNats::start().await;
        let js = jetstream::new(nats.client().await);
        streams::ensure(&js, &StreamSettings::default())
            .await
            .unwrap();
        Loop {
            relay: Relay::new(pool.clone(), nats.client().await, RelaySettings::default()),
            facts: consumer::durable(&js, &ConsumerSpec::new(EVT_STREAM, "orchestrator", "evt.>"))
                .await
                .unwrap(),
            gate: consumer::durable(
                &js,
                &ConsumerSpec::new(CMD_STREAM, "gatekeeper", "cmd.gate.eval"),
            )
            .await
            .unwrap(),
            plans: consumer::durable(
                &js,
                &ConsumerSpec::new(CMD_STREAM, "planner", "cmd.plan.generate"),
            )
            .await
            .unwrap(),
            planner: Planner {
                pool: pool.clone(),
                templates: Templates::load(
                    &Path::new(env!("CARGO_MANIFEST_DIR")).join("templates"),
                    &plan_limits(),
                )
                .unwrap(),
                limits: plan_limits(),
                llm,
            },
            orchestrator: FactConsumer {
                orchestrator: app.orchestrator.clone(),
            },
            gatekeeper: Gatekeeper {
                pool: pool.clone(),
                policy,
            },
            app,
            _nats: nats,
        }
    }

    /// Relays and consumes until nothing moves any more.
    pub async fn settle(&self) {
        let pool = &self.app.pool;
        let wait = Duration::from_millis(200);
        loop {
            let mut moved = self.relay.relay_once().await.unwrap().published;
            moved += consumer::consume_once(&self.plans, pool, &self.planner, 50, wait)
                .await
                .unwrap();
            moved += consumer::consume_once(&self.gate, pool, &self.gatekeeper, 50, wait)
                .await
                .unwrap();
            moved += self.relay.relay_once().await.unwrap().published;
            moved += consumer::consume_once(&self.facts, pool, &self.orchestrator, 50, wait)
                .await
                .unwrap();
            if moved == 0 {
                return;
            }
        }
    }

    pub async fn propose(&self, plan: &Value) -> (Uuid, String) {
        let case = self.app.case_in("PLANNING").await;
        let r = self
            .app
            .send(
                Method::POST,
                &format!("/case/{case}/plan"),
                Some(OPERATOR),
                &[],
                Some(plan.to_string()),
            )
            .await;
        assert_eq!(r.status, 201, "{:?}", r.body);
        self.settle().await;
        (case, r.body["plan_hash"].as_str().unwrap().to_string())
    }
}
