//! `TestApp`: the binary's own `app(state)` on a real loopback socket,
//! against the real PostgreSQL (a fresh database per test from
//! `#[sqlx::test]`) and the real NATS server the test command started.

use std::collections::BTreeSet;
use std::sync::Arc;

use opsloop::api::{self, AppState};
use opsloop::auth::{Identity, Role, TenantScope, TokenStore};
use opsloop::orchestrator::{Faults, NoFaults, Orchestrator};
use reqwest::Method;
use serde_json::{Value, json};
use sqlx::{PgPool, Row};
use uuid::Uuid;

pub const OPERATOR: &str = "tok-alice-operator";
pub const APPROVER: &str = "tok-bob-approver";
pub const APPROVER2: &str = "tok-carol-approver";
pub const VIEWER: &str = "tok-vic-viewer";
/// The planner's service identity (acts as `planner`).
pub const SERVICE: &str = "tok-planner-service";
pub const ANALYST: &str = "tok-analyst-service";
pub const EXECUTOR: &str = "tok-executor-service";
pub const VERIFIER: &str = "tok-verifier-service";
pub const GATEKEEPER: &str = "tok-gatekeeper-service";
/// A platform admin: every role, every tenant (`*`).
pub const ADMIN: &str = "tok-root-admin";
/// The tenants every other test identity acts for; `t-002` is nobody's
/// but the admin's.
pub const OWN_TENANTS: [&str; 3] = ["t-001", "t", "acme"];

#[derive(Debug, Clone, PartialEq)]
pub struct TestResponse {
    pub status: u16,
    pub body: Value,
    /// The body's bytes as sent (a replay must repeat them exactly).
    pub text: String,
    pub headers: reqwest::header::HeaderMap,
}

impl TestResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    pub fn code(&self) -> &str {
        self.body["code"].as_str().unwrap_or("")
    }
}

pub struct TestApp {
    pub pool: PgPool,
    pub base: String,
    pub http: reqwest::Client,
    pub orchestrator: Orchestrator,
    /// To serve the same app with other settings.
    pub state: AppState,
}

fn identity(id: &str, roles: &[Role]) -> Identity {
    Identity {
        id: id.into(),
        roles: roles.iter().copied().collect::<BTreeSet<_>>(),
        tenants: TenantScope::parse(&OWN_TENANTS).unwrap(),
        acts_as: None,
    }
}

/// The service identity of one worker role.
fn worker(role: opsloop::roles::Role) -> Identity {
    Identity {
        acts_as: Some(role),
        ..identity(&role.to_string(), &[Role::Service])
    }
}

pub fn nats_url() -> String {
    std::env::var("NATS_URL").expect(
        "NATS_URL is not set: run the tests with scripts/test.sh, which starts PostgreSQL and NATS",
    )
}

impl TestApp {
    pub async fn new(pool: PgPool) -> Self {
        Self::with_faults(pool, Arc::new(NoFaults)).await
    }

    pub async fn with_faults(pool: PgPool, faults: Faults) -> Self {
        if std::env::var("TEST_LOG").is_ok() {
            opsloop::telemetry::init("debug");
        }
        let mut tokens = TokenStore::default();
        tokens.insert(OPERATOR, identity("alice", &[Role::Operator]));
        tokens.insert(APPROVER, identity("bob", &[Role::Approver]));
        tokens.insert(APPROVER2, identity("carol", &[Role::Approver]));
        tokens.insert(VIEWER, identity("vic", &[Role::Viewer]));
        {
            use opsloop::roles::Role as W;
            tokens.insert(SERVICE, worker(W::Planner));
            tokens.insert(ANALYST, worker(W::Analyst));
            tokens.insert(EXECUTOR, worker(W::Executor));
            tokens.insert(VERIFIER, worker(W::Verifier));
            tokens.insert(GATEKEEPER, worker(W::Gatekeeper));
        }
        tokens.insert(
            ADMIN,
            Identity {
                id: "root".into(),
                roles: [Role::Admin].into(),
                tenants: TenantScope::All,
                acts_as: None,
            },
        );
        let nats = opsloop::pubsub::connect(&nats_url())
            .await
            .expect("connecting to the test NATS server");
        let orchestrator = Orchestrator::new(pool.clone()).with_faults(faults);
        let state = AppState {
            orchestrator: orchestrator.clone(),
            tokens: Arc::new(tokens),
            nats: Some(nats),
            plan_limits: Arc::new(crate::flow::plan_limits()),
            intake: Arc::new(Default::default()),
            chatops: Some(Arc::new(crate::chatops::chatops())),
            cookie_secure: false,
            // The model when it is at hand (the librarian's tests fetch
            // it first): no test of anything else needs a download.
            librarian: crate::librarian::model_dir_if_fetched()
                .and_then(|dir| opsloop::librarian::Librarian::new(dir, 2).ok())
                .map(Arc::new),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let app = api::app(state.clone());
        tokio::spawn(api::serve(
            listener,
            app,
            api::ServeSettings::default(),
            std::future::pending(),
        ));
        TestApp {
            state,
            pool,
            base,
            http: opsloop::http_client::http_client()
                .pool_max_idle_per_host(64)
                .build()
                .unwrap(),
            orchestrator,
        }
    }

    pub async fn send(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<String>,
    ) -> TestResponse {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        let resp = req.send().await.expect("request sent");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text.clone()));
        TestResponse {
            status,
            body,
            text,
            headers,
        }
    }

    pub async fn create_case(&self) -> Uuid {
        self.open_case(json!({"title": "disk full on db-1", "tenant": "t-001"}))
            .await
    }

    /// `POST /case` with this body as the operator; the new case's id.
    pub async fn open_case(&self, body: Value) -> Uuid {
        let r = self
            .send(
                Method::POST,
                "/case",
                Some(OPERATOR),
                &[],
                Some(body.to_string()),
            )
            .await;
        assert_eq!(r.status, 201, "{:?}", r.body);
        r.body["id"].as_str().unwrap().parse().unwrap()
    }

    pub async fn patch(&self, case: Uuid, token: &str, key: &str, body: Value) -> TestResponse {
        self.send(
            Method::PATCH,
            &format!("/case/{case}/transition"),
            Some(token),
            &[("idempotency-key", key)],
            Some(body.to_string()),
        )
        .await
    }

    pub async fn event(&self, case: Uuid, token: &str, event: &str) -> TestResponse {
        self.patch(
            case,
            token,
            &Uuid::new_v4().to_string(),
            json!({"event": event}),
        )
        .await
    }

    pub async fn park_reason(&self, case: Uuid) -> String {
        sqlx::query_scalar("SELECT park_reason FROM ops_case WHERE id = $1")
            .bind(case)
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    /// `POST /case/{id}/plan` with `plan` as `token`.
    pub async fn post_plan(&self, case: Uuid, token: &str, plan: &Value) -> TestResponse {
        self.send(
            Method::POST,
            &format!("/case/{case}/plan"),
            Some(token),
            &[],
            Some(plan.to_string()),
        )
        .await
    }

    pub async fn status(&self, case: Uuid) -> String {
        sqlx::query("SELECT status FROM ops_case WHERE id = $1")
            .bind(case)
            .fetch_one(&self.pool)
            .await
            .unwrap()
            .get("status")
    }

    /// (kind, event, to_status, rejection_code) of each timeline entry.
    pub async fn timeline(
        &self,
        case: Uuid,
    ) -> Vec<(String, Option<String>, Option<String>, Option<String>)> {
        sqlx::query_as(
            "SELECT kind, event, to_status, rejection_code FROM case_timeline \
             WHERE case_id = $1 ORDER BY seq",
        )
        .bind(case)
        .fetch_all(&self.pool)
        .await
        .unwrap()
    }

    pub async fn outbox_subjects(&self, case: Uuid) -> Vec<String> {
        sqlx::query_scalar("SELECT subject FROM outbox WHERE case_id = $1 ORDER BY id")
            .bind(case)
            .fetch_all(&self.pool)
            .await
            .unwrap()
    }

    /// Payloads of the case's outbox rows on `subject`, oldest first.
    pub async fn outbox_payloads(&self, case: Uuid, subject: &str) -> Vec<Value> {
        sqlx::query_scalar(
            "SELECT payload::jsonb FROM outbox WHERE case_id = $1 AND subject = $2 ORDER BY id",
        )
        .bind(case)
        .bind(subject)
        .fetch_all(&self.pool)
        .await
        .unwrap()
    }

    /// The digest of the current plan's latest dry run, as an approver
    /// reads it from `GET /case/{case}/plan` (null: none yet).
    pub async fn dryrun_digest(&self, case: Uuid) -> Value {
        self.current_plan(case).await.body["dry_run"]["digest"].clone()
    }

    /// `GET /case/{case}/plan` as a viewer.
    pub async fn current_plan(&self, case: Uuid) -> TestResponse {
        self.send(
            Method::GET,
            &format!("/case/{case}/plan"),
            Some(VIEWER),
            &[],
            None,
        )
        .await
    }

    /// Stores a plan for the case, as the planner will; returns its hash.
    /// `required_approvers`: the gatekeeper's requirement, `None` when it has
    /// not evaluated the plan.
    pub async fn store_plan(
        &self,
        case: Uuid,
        author: &str,
        required_approvers: Option<i16>,
    ) -> String {
        let plan = json!({"title": "restart", "steps": [{"action": "noop", "timeout_s": 10, "retry": 0}],
                          "rollback": {"steps": []}, "verify": {"checks": []}, "n": Uuid::new_v4()});
        let hash = {
            use sha2::{Digest, Sha256};
            hex::encode(Sha256::digest(plan.to_string().as_bytes()))
        };
        sqlx::query(
            "INSERT INTO plan_proposed (id, case_id, plan, plan_hash, source, author, schema_valid, \
             complete, required_approvers) VALUES ($1, $2, $3, $4, 'template', $5, true, true, $6)",
        )
        .bind(Uuid::now_v7())
        .bind(case)
        .bind(&plan)
        .bind(&hash)
        .bind(author)
        .bind(required_approvers)
        .execute(&self.pool)
        .await
        .unwrap();
        hash
    }

    /// Walks a new case to `to` through the API with the right roles.
    pub async fn case_in(&self, to: &str) -> Uuid {
        let case = self.create_case().await;
        let path: &[(&str, &str)] = match to {
            "NEW" => &[],
            "ANALYZING" => &[(OPERATOR, "start_analysis")],
            "PLANNING" => &[(OPERATOR, "start_analysis"), (ANALYST, "analysis_done")],
            "PARKED" => &[
                (OPERATOR, "start_analysis"),
                (ANALYST, "analysis_done"),
                (SERVICE, "plan_failed"),
            ],
            other => panic!("no path to {other}"),
        };
        for (token, event) in path {
            let r = self.event(case, token, event).await;
            assert_eq!(r.status, 200, "{event}: {:?}", r.body);
        }
        case
    }

    pub async fn metric(&self, name_and_labels: &str) -> f64 {
        let r = self.send(Method::GET, "/metrics", None, &[], None).await;
        let text = r.body.as_str().unwrap_or_default().to_string();
        text.lines()
            .filter(|l| l.starts_with(name_and_labels))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

/// The URL of the test's own database, for processes the test starts.
/// The URL of the test's own database: `DATABASE_URL`'s server and
/// credentials (the pool's options do not give the password back).
pub fn database_url(pool: &PgPool) -> String {
    let base = std::env::var("DATABASE_URL").expect("DATABASE_URL");
    let mut url = reqwest::Url::parse(&base).expect("DATABASE_URL is a URL");
    url.set_path(pool.connect_options().get_database().unwrap());
    url.to_string()
}

/// A name no other test uses: `{prefix}-` and 8 hex digits.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", &Uuid::new_v4().simple().to_string()[..8])
}

/// A fresh service name, so tests never share metrics or targets.
pub fn service() -> String {
    unique("svc")
}

/// A fake server of a test (LLM, Kubernetes, Prometheus, gateway): a real
/// HTTP server on a free loopback port, stopped when dropped.
pub use opsloop::fakes::Server as TestServer;

/// A change freeze (absolute window) that covers now: every environment,
/// every tenant.
pub fn freeze_now(name: &str) -> opsloop::gatekeeper::policy::FreezeWindow {
    let now = chrono::Utc::now();
    opsloop::gatekeeper::policy::FreezeWindow {
        name: name.into(),
        from: Some(now - chrono::Duration::hours(1)),
        until: Some(now + chrono::Duration::hours(1)),
        days: vec![],
        start: None,
        end: None,
        environments: Default::default(),
        tenants: Default::default(),
    }
}
