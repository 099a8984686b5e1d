//! The worker loop over the real NATS, driven step by step: the relay, the
//! planner, the gatekeeper and the orchestrator's fact consumer, each with
//! its durable consumer on a private nats-server.

use std::path::Path;
use std::time::Duration;

use async_nats::jetstream;
use opsloop::analyst::Analyst;
use opsloop::executor::{ExecSettings, Executor};
use opsloop::gatekeeper::{Gatekeeper, policy::Policy};
use opsloop::orchestrator::consumer::FactConsumer;
use opsloop::planner::contract::PlanLimits;
use opsloop::planner::llm::LlmPlanner;
use opsloop::planner::templates::Templates;
use opsloop::planner::worker::Planner;
use opsloop::pubsub::consumer;
use opsloop::pubsub::relay::{Relay, RelaySettings};
use opsloop::roles::Role;
use opsloop::verifier::{Verifier, VerifySettings};
use opsloop::worker::Runner;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use crate::helpers::*;
use crate::nats::TestNats;

/// The durable consumer `role` reads, as `opsloop serve` creates it.
async fn durable(js: &jetstream::Context, role: Role) -> jetstream::consumer::PullConsumer {
    consumer::durable(js, &role.consumer().unwrap())
        .await
        .unwrap()
}

/// An executor as `opsloop serve` builds it, with `policy`'s targets file.
pub fn executor(
    pool: &PgPool,
    wake: &opsloop::pubsub::outbox::CommitWake,
    policy: Policy,
) -> Executor {
    let allowlist: Vec<String> = plan_limits().script_allowlist.into_iter().collect();
    let mut e = Executor::new(pool.clone(), &exec_settings(), &allowlist, wake.clone());
    e.set_policy(std::sync::Arc::new(policy));
    e
}

/// The limits the workers check plans against (the API's are the same).
pub fn plan_limits() -> PlanLimits {
    PlanLimits {
        script_allowlist: [
            "fails-for-real.sh".to_string(),
            "no-rehearsal.sh".to_string(),
            "restart-checkout.sh".to_string(),
            "restart-service.sh".to_string(),
        ]
        .into(),
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
    gatekeeper: Runner<Gatekeeper>,
    planner: Runner<Planner>,
    /// Without the roles after the gate, the executor still rehearses
    /// plans before it (`cmd.exec.dryrun` only); a full loop's executor
    /// does that on its own consumer.
    dry_runs: Option<(jetstream::consumer::PullConsumer, Executor)>,
    downstream: Option<Downstream>,
    cluster: Option<crate::fake_k8s::FakeK8s>,
}

/// The roles after the gate: analyst, executor, verifier.
pub struct Downstream {
    analysis: jetstream::consumer::PullConsumer,
    exec: jetstream::consumer::PullConsumer,
    verify: jetstream::consumer::PullConsumer,
    analyst: Runner<Analyst>,
    pub executor: Executor,
    verifier: Runner<Verifier>,
}

pub fn exec_settings() -> ExecSettings {
    ExecSettings {
        scripts_dir: Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/actions"),
        script_env: vec!["PATH".into()],
        output_cap: 4096,
        backoff_scale: 0.01,
        k8s_api_url: None,
        k8s_token_file: None,
        gateways: Vec::new(),
        gateway_token_file: None,
    }
}

/// The shipped targets file (`config/targets.toml`) and rules for the
/// tests' own scripts (`tests/actions`, any argv): `restart-checkout.sh` is
/// allowlisted but missing from the folder, `fails-for-real.sh` rehearses
/// fine and fails when run, `no-rehearsal.sh` declares no dry-run flag.
pub fn targets_text() -> String {
    let shipped =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/targets.toml"))
            .unwrap();
    format!(
        "{shipped}\n[[target]]\nenvironment = \"staging\"\nscript = \"restart-checkout.sh\"\n\
         \n[[target]]\nenvironment = \"staging\"\nscript = \"fails-for-real.sh\"\n\
         \n[[target]]\nenvironment = \"staging\"\nscript = \"no-rehearsal.sh\"\n\
         \n[[target]]\nenvironment = \"staging\"\nscript = \"slow-restart.sh\"\n\
         \n[scripts.\"fails-for-real.sh\"]\ndry_run_flag = \"--dry-run\"\n\
         \n[scripts.\"slow-restart.sh\"]\ndry_run_flag = \"--dry-run\"\n"
    )
}

/// The default policy with the tests' targets, as `opsloop serve` runs it.
pub fn policy() -> Policy {
    let targets: opsloop::gatekeeper::targets::Targets = toml::from_str(&targets_text()).unwrap();
    Policy::default().with_targets(targets).unwrap()
}

impl Loop {
    pub async fn new(pool: PgPool) -> Loop {
        Loop::build(pool, policy(), None).await
    }

    /// `policy` with the shipped targets file.
    pub async fn with_policy(pool: PgPool, policy: Policy) -> Loop {
        let policy = policy.with_targets(crate::flow::policy().targets).unwrap();
        Loop::build(pool, policy, None).await
    }

    pub async fn with_llm(pool: PgPool, llm: LlmPlanner) -> Loop {
        Loop::build(pool, policy(), Some(llm)).await
    }

    /// Every role, through execution and verification; the verifier judges
    /// from metric_1m.
    pub async fn full(pool: PgPool) -> Loop {
        Loop::full_with(
            pool,
            VerifySettings {
                delay_s: 0,
                min_coverage: 0.5,
                ..VerifySettings::default()
            },
            None,
        )
        .await
    }

    /// Every role, with a verifier built from `verify` (a Prometheus source,
    /// for one).
    pub async fn full_with_verify(pool: PgPool, verify: VerifySettings) -> Loop {
        Loop::full_with(pool, verify, None).await
    }

    /// Every role, planning with `llm`; the verifier judges from metric_1m.
    pub async fn full_with_llm(pool: PgPool, llm: LlmPlanner) -> Loop {
        let verify = VerifySettings {
            delay_s: 0,
            min_coverage: 0.5,
            ..VerifySettings::default()
        };
        Loop::full_with(pool, verify, Some(llm)).await
    }

    async fn full_with(pool: PgPool, verify: VerifySettings, llm: Option<LlmPlanner>) -> Loop {
        let mut lp = Loop::build(pool.clone(), policy(), llm).await;
        lp.dry_runs = None;
        let js = jetstream::new(lp._nats.client().await);
        let wake = lp.app.orchestrator.outbox_ready();
        lp.downstream = Some(Downstream {
            analysis: durable(&js, Role::Analyst).await,
            exec: durable(&js, Role::Executor).await,
            verify: durable(&js, Role::Verifier).await,
            analyst: Runner::new(Analyst, pool.clone(), wake.clone()),
            executor: executor(&pool, &wake, policy()),
            verifier: Runner::new(Verifier::new(pool.clone(), verify).unwrap(), pool, wake),
        });
        lp
    }

    /// The orchestrator re-plans automatically after a rolled-back
    /// verification failure, at most `n` times per case (policy
    /// `replan.max_per_case`).
    pub fn with_replans(mut self, n: u32) -> Loop {
        let policy = Policy {
            replan: opsloop::gatekeeper::policy::ReplanPolicy { max_per_case: n },
            ..policy()
        };
        self.orchestrator.orchestrator = self
            .orchestrator
            .orchestrator
            .clone()
            .with_policy(std::sync::Arc::new(policy));
        self
    }

    /// The planner's memory: a librarian, how many passages, the
    /// failed-template window.
    pub fn planner_memory(&mut self) -> &mut opsloop::planner::worker::Memory {
        &mut self.planner.worker.memory
    }

    /// Every message `role`'s durable consumer holds, handled once by
    /// `handler`; how many. A feed role's durable is created by the first
    /// call (where it starts depends on the role's deliver policy).
    pub async fn drain<H: consumer::Handler>(&self, role: Role, handler: &H) -> usize {
        let durable = self.durable_for(role).await;
        let mut total = 0;
        loop {
            let handled = consumer::consume_once(
                &durable,
                &self.app.pool,
                handler,
                50,
                Duration::from_millis(300),
            )
            .await
            .unwrap();
            if handled == 0 {
                return total;
            }
            total += handled;
        }
    }

    /// The durable consumer `role` reads, on this loop's NATS.
    pub async fn durable_for(&self, role: Role) -> jetstream::consumer::PullConsumer {
        durable(&self.jetstream().await, role).await
    }

    /// This loop's JetStream.
    pub async fn jetstream(&self) -> jetstream::Context {
        jetstream::new(self._nats.client().await)
    }

    pub fn executor(&self) -> &Executor {
        match (&self.downstream, &self.dry_runs) {
            (Some(d), _) => &d.executor,
            (None, Some((_, executor))) => executor,
            (None, None) => unreachable!("every loop has an executor"),
        }
    }

    /// To register adapters that talk to a test's fake servers.
    pub fn executor_mut(&mut self) -> &mut Executor {
        match (&mut self.downstream, &mut self.dry_runs) {
            (Some(d), _) => &mut d.executor,
            (None, Some((_, executor))) => executor,
            (None, None) => unreachable!("every loop has an executor"),
        }
    }

    async fn build(pool: PgPool, policy: Policy, llm: Option<LlmPlanner>) -> Loop {
        let (app, nats, js) = crate::nats::setup(&pool).await;
        let wake = app.orchestrator.outbox_ready();
        let planner = Planner {
            pool: pool.clone(),
            templates: Templates::load(
                &Path::new(env!("CARGO_MANIFEST_DIR")).join("templates"),
                &plan_limits(),
            )
            .unwrap(),
            limits: plan_limits(),
            llm,
            memory: Default::default(),
        };
        let dry_run_spec = opsloop::pubsub::consumer::ConsumerSpec::new(
            opsloop::pubsub::streams::CMD_STREAM,
            "executor-dryrun",
            opsloop::contract::command::CMD_EXEC_DRYRUN,
        );
        let dry_runs = (
            consumer::durable(&js, &dry_run_spec).await.unwrap(),
            executor(&pool, &wake, policy.clone()),
        );
        Loop {
            dry_runs: Some(dry_runs),
            relay: Relay::new(pool.clone(), nats.client().await, RelaySettings::default()),
            facts: durable(&js, Role::Orchestrator).await,
            gate: durable(&js, Role::Gatekeeper).await,
            plans: durable(&js, Role::Planner).await,
            planner: Runner::new(planner, pool.clone(), wake.clone()),
            orchestrator: FactConsumer {
                orchestrator: app.orchestrator.clone(),
            },
            gatekeeper: Runner::new(Gatekeeper { policy }, pool.clone(), wake),
            app,
            _nats: nats,
            downstream: None,
            cluster: None,
        }
    }

    /// A fake Kubernetes API server holding these (namespace, deployment)
    /// pairs, for the executor's `k8s.rollout` steps and their dry runs:
    /// without one, no dry run of such a step can pass.
    pub async fn with_cluster(mut self, deployments: &[(&str, &str)]) -> Loop {
        let k8s = crate::fake_k8s::FakeK8s::start(Duration::from_millis(50)).await;
        for (ns, name) in deployments {
            k8s.add_deployment(ns, name, "shop/api:1", 1);
        }
        let adapter = opsloop::executor::k8s::K8sAdapter::new(Some(k8s.server.url.clone()), None);
        self.executor_mut().register(std::sync::Arc::new(adapter));
        self.cluster = Some(k8s);
        self
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
            if let Some((dry_runs, executor)) = &self.dry_runs {
                moved += self.relay.relay_once().await.unwrap().published;
                moved += consumer::consume_once(dry_runs, pool, executor, 50, wait)
                    .await
                    .unwrap();
            }
            moved += self.relay.relay_once().await.unwrap().published;
            moved += consumer::consume_once(&self.facts, pool, &self.orchestrator, 50, wait)
                .await
                .unwrap();
            if let Some(d) = &self.downstream {
                moved += self.relay.relay_once().await.unwrap().published;
                moved += consumer::consume_once(&d.analysis, pool, &d.analyst, 50, wait)
                    .await
                    .unwrap();
                moved += consumer::consume_once(&d.exec, pool, &d.executor, 50, wait)
                    .await
                    .unwrap();
                moved += consumer::consume_once(&d.verify, pool, &d.verifier, 50, wait)
                    .await
                    .unwrap();
            }
            if moved == 0 {
                return;
            }
        }
    }

    /// Approves the case's current plan with as many people as its gate
    /// asks (a no-op when the gate approved it on its own).
    pub async fn approve(&self, case: Uuid) {
        for who in [APPROVER, APPROVER2] {
            if self.app.status(case).await != "WAIT_GATE" {
                return;
            }
            let plan = self.app.current_plan(case).await;
            let hash = plan.body["plan_hash"].as_str().unwrap().to_string();
            // What an approver judges: the plan and the dry run shown with it.
            let digest = plan.body["dry_run"]["digest"].clone();
            let r = self
                .app
                .patch(
                    case,
                    who,
                    &Uuid::new_v4().to_string(),
                    serde_json::json!({"event": "gate_approved", "plan_hash": hash, "dryrun_digest": digest}),
                )
                .await;
            // 202: a vote short of the quorum, counted.
            assert!(r.status == 200 || r.status == 202, "{:?}", r.body);
            self.settle().await;
        }
    }

    pub async fn propose(&self, plan: &Value) -> (Uuid, String) {
        let case = self.app.case_in("PLANNING").await;
        let r = self.app.post_plan(case, OPERATOR, plan).await;
        assert_eq!(r.status, 201, "{:?}", r.body);
        self.settle().await;
        (case, r.body["plan_hash"].as_str().unwrap().to_string())
    }
}
