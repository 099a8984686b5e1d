//! The planner's memory (issue #19), over real PostgreSQL with pgvector,
//! real NATS and the real embedding model: ended cases become `past_case`
//! documents with their outcome (the librarian role on the feed), the LLM
//! is given runbook and past-case passages and the attempt records them,
//! the template planner does not repeat a template that failed on the same
//! resource, and an OpenAI-compatible embeddings server stands in for the
//! local model only when it answers 384 dimensions.

use std::sync::{Arc, Mutex, OnceLock};

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use opsloop::auth::TenantScope;
use opsloop::librarian::embed::DIMENSIONS;
use opsloop::librarian::store::{self, DocKind, Mode, NewDoc, Search};
use opsloop::librarian::worker::PastCaseWriter;
use opsloop::librarian::{EmbeddingSettings, Librarian};
use opsloop::pubsub::consumer::{Delivery, Disposition, Handler};
use opsloop::roles::Role;
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use crate::fake_llm::{FakeLlm, Reply};
use crate::flow::Loop;
use crate::helpers::{TestServer, service};
use crate::walking_skeleton::{degraded_case, ingest_metric};

/// One librarian around the test binary's one model.
fn librarian() -> Arc<Librarian> {
    static LIB: OnceLock<Arc<Librarian>> = OnceLock::new();
    LIB.get_or_init(|| Arc::new(Librarian::with_embedder(crate::librarian::embedder())))
        .clone()
}

fn scope(tenant: &str) -> TenantScope {
    TenantScope::parse(&[tenant]).unwrap()
}

#[derive(sqlx::FromRow, Debug)]
struct PastDoc {
    id: Uuid,
    tenant: Option<String>,
    title: String,
    body: String,
    outcome: Option<String>,
    updated_at: chrono::DateTime<chrono::Utc>,
}

async fn past_doc(pool: &PgPool, case: Uuid) -> Option<PastDoc> {
    sqlx::query_as(
        "SELECT id, tenant, title, body, labels->>'outcome' AS outcome, updated_at FROM kb_doc \
         WHERE kind = 'past_case' AND source = $1",
    )
    .bind(format!("case:{case}"))
    .fetch_optional(pool)
    .await
    .unwrap()
}

#[sqlx::test]
async fn ended_cases_become_past_cases_with_their_outcomes(pool: PgPool) {
    let lp = Loop::full(pool.clone()).await;
    let healthy = service();
    ingest_metric(&lp, &healthy, "latency_p95_ms", 120.0).await;
    let fixed = degraded_case(&lp, &healthy).await;
    lp.settle().await;
    assert_eq!(lp.app.status(fixed).await, "CLOSED");
    let sick = service();
    let rolled = degraded_case(&lp, &sick).await;
    ingest_metric(&lp, &sick, "latency_p95_ms", 950.0).await;
    lp.settle().await;
    assert_eq!(lp.app.status(rolled).await, "PARKED");

    let writer = PastCaseWriter {
        pool: pool.clone(),
        librarian: librarian(),
    };
    // Its durable reads the feed from the start, as in the service.
    assert!(
        lp.drain(Role::Librarian, &writer).await >= 12,
        "every transition read"
    );

    let doc = past_doc(&pool, fixed)
        .await
        .expect("the closed case is remembered");
    assert_eq!(doc.tenant.as_deref(), Some("t-001"));
    assert_eq!(doc.outcome.as_deref(), Some("fixed"), "{}", doc.body);
    assert!(
        doc.title.contains(&format!("{healthy} slow")),
        "{}",
        doc.title
    );
    for part in [
        &format!("\"Restart service {healthy}\" was run on"),
        "fixed it: verification passed (latency_p95_ms avg 120.0 (< 300: pass))",
        "by template restart-service",
        &format!("step script.exec on script:restart-service.sh:[\"--service\",\"{healthy}\"]"),
        "## Findings",
    ] {
        assert!(doc.body.contains(part), "{part:?} not in:\n{}", doc.body);
    }
    let doc = past_doc(&pool, rolled)
        .await
        .expect("the parked case is remembered");
    assert_eq!(doc.outcome.as_deref(), Some("rolled_back"), "{}", doc.body);
    for part in [
        "rolled back after verification breach (latency_p95_ms avg 950.0 (< 300: breach))",
        "- rollback run rolled_back",
    ] {
        assert!(doc.body.contains(part), "{part:?} not in:\n{}", doc.body);
    }
    // The outcome comes before anything else a reader sees.
    let outcome_at = doc.body.find("## Outcome").unwrap();
    assert!(doc.body.find("## Plan").unwrap() > outcome_at);

    // A redelivered ending writes nothing again.
    let feed = crate::nats::read_stream(&lp.jetstream().await, "OPSLOOP_EVT").await;
    let (subject, envelope) = feed
        .into_iter()
        .find(|(s, e)| {
            s == "evt.case.transition.v1" && e.case_id == Some(rolled) && e.data["to"] == "PARKED"
        })
        .expect("the parking transition on the feed");
    let delivery = Delivery {
        subject,
        envelope,
        traceparent: None,
        delivered: 2,
    };
    let before = past_doc(&pool, rolled).await.unwrap();
    assert_eq!(writer.handle(&delivery).await, Disposition::Done);
    let after = past_doc(&pool, rolled).await.unwrap();
    assert_eq!((after.id, after.updated_at), (before.id, before.updated_at));
    let docs: i64 = sqlx::query_scalar("SELECT count(*) FROM kb_doc WHERE kind = 'past_case'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(docs, 2, "one document per case");

    // Found by what went wrong, filtered by outcome, and only by the tenant.
    let e = crate::librarian::embedder();
    let ask = |tenant: &'static str, outcome: Option<&'static str>| {
        let (pool, e) = (pool.clone(), e.clone());
        let sick = sick.clone();
        async move {
            store::search(
                &pool,
                &e,
                &Search {
                    query: &format!("{sick} latency restart rolled back"),
                    k: 10,
                    kind: Some(DocKind::PastCase),
                    scope: &scope(tenant),
                    mode: Mode::Hybrid,
                    labels: outcome
                        .map(|o| [("outcome".to_string(), o.to_string())].into())
                        .unwrap_or_default(),
                    since: None,
                },
            )
            .await
            .unwrap()
        }
    };
    let hits = ask("t-001", None).await;
    assert_eq!(hits[0].source, format!("case:{rolled}"), "{hits:#?}");
    assert_eq!(hits[0].labels["outcome"], "rolled_back");
    let only_rolled = ask("t-001", Some("rolled_back")).await;
    assert!(
        only_rolled
            .iter()
            .all(|h| h.source == format!("case:{rolled}")),
        "{only_rolled:#?}"
    );
    assert!(ask("t-002", None).await.is_empty());
}

fn llm_plan(references: &[String]) -> Value {
    json!({
        "title": "free disk on db-1", "environment": "staging", "risk_score": 0.1,
        "rationale": "the runbook says to rotate logs first",
        "steps": [{"action": "script.exec", "params": {"script": "restart-service.sh", "args": ["--service", "db-1"]},
                   "timeout_s": 30, "retry": 1}],
        "rollback": {"steps": [{"action": "noop", "timeout_s": 10, "retry": 0}]},
        "verify": {"checks": [{"metric": "disk_used_pct", "op": "<", "threshold": 90, "window_s": 60}]},
        "references": references,
    })
}

async fn put(pool: &PgPool, doc: NewDoc) -> Uuid {
    store::ingest(pool, &crate::librarian::embedder(), &doc)
        .await
        .unwrap()
        .id
}

#[sqlx::test]
async fn the_llm_is_given_runbooks_and_past_cases_and_the_attempt_records_their_ids(pool: PgPool) {
    let runbook = put(
        &pool,
        NewDoc {
            tenant: None,
            kind: DocKind::Runbook,
            title: "Disk full on a database host".into(),
            source: "runbooks/disk-full.md".into(),
            body: "# Disk full on a database host\n## Steps\nRotate and compress the logs, then \
                   remove old WAL archives; never delete data files."
                .into(),
            labels: json!({}),
        },
    )
    .await;
    let past = put(
        &pool,
        NewDoc {
            tenant: Some("t-001".parse().unwrap()),
            kind: DocKind::PastCase,
            title: "Past case: disk full on db-1".into(),
            source: format!("case:{}", Uuid::new_v4()),
            body: "# Past case: disk full on db-1\n## Outcome\n\"Restart db-1\" was tried on \
                   2026-11-20 and rolled back after verification breach (disk_used_pct 97)."
                .into(),
            labels: json!({"outcome": "rolled_back"}),
        },
    )
    .await;
    let elsewhere = put(
        &pool,
        NewDoc {
            tenant: Some("t-002".parse().unwrap()),
            kind: DocKind::Runbook,
            title: "Disk full on db-1 (another tenant's)".into(),
            source: "theirs/disk-full.md".into(),
            body: "# Disk full on db-1\nOur secret procedure for a full disk on db-1.".into(),
            labels: json!({}),
        },
    )
    .await;

    let cited = vec![format!("kb:{runbook}"), format!("kb:{past}")];
    // First an id it was not given (made up, or another tenant's): sent
    // back, then the plan citing only what it was given.
    let made_up = vec![format!("kb:{elsewhere}")];
    let fake = FakeLlm::start(vec![
        Reply::Content(llm_plan(&made_up).to_string()),
        Reply::Content(llm_plan(&cited).to_string()),
    ])
    .await;
    let llm =
        opsloop::planner::llm::LlmPlanner::from_settings(&crate::llm::settings(&fake.base_url))
            .unwrap()
            .unwrap();
    let mut lp = Loop::with_llm(pool.clone(), llm).await;
    lp.planner_memory().librarian = Some(librarian());
    // "disk full on db-1", through analysis to PLANNING.
    let case = lp.app.case_in("PLANNING").await;
    lp.settle().await;
    // Staging and low risk: the gate approved it by itself.
    assert_eq!(lp.app.status(case).await, "EXECUTING");

    let request = &fake.requests()[0];
    assert!(
        request["messages"][0]["content"]
            .as_str()
            .unwrap()
            .contains("references_available"),
        "the prompt is plan-v2"
    );
    let context: Value =
        serde_json::from_str(request["messages"][1]["content"].as_str().unwrap()).unwrap();
    let given = context["references_available"].as_array().unwrap();
    let ids: Vec<&str> = given.iter().map(|p| p["id"].as_str().unwrap()).collect();
    assert!(ids.contains(&cited[0].as_str()), "{ids:?}");
    assert!(ids.contains(&cited[1].as_str()), "{ids:?}");
    assert!(
        !ids.contains(&format!("kb:{elsewhere}").as_str()),
        "{ids:?}"
    );
    let past_given = given.iter().find(|p| p["id"] == cited[1]).unwrap();
    assert_eq!(past_given["outcome"], "rolled_back");
    assert!(
        past_given["text"]
            .as_str()
            .unwrap()
            .contains("rolled back after verification breach")
    );

    let repair = fake.requests()[1]["messages"][3]["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        repair.contains(&format!(
            "/references: kb:{elsewhere} is not the id of a passage"
        )),
        "{repair}"
    );
    let attempts: Vec<(String, Value)> = sqlx::query_as(
        "SELECT outcome, retrieval FROM plan_attempt WHERE case_id = $1 ORDER BY attempt",
    )
    .bind(case)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        attempts.iter().map(|a| a.0.as_str()).collect::<Vec<_>>(),
        ["invalid", "valid"]
    );
    assert_eq!(attempts[0].1, attempts[1].1, "every attempt of the run");
    let retrieval = attempts[1].1.clone();
    assert!(
        retrieval["query"]
            .as_str()
            .unwrap()
            .contains("disk full on db-1")
    );
    assert_eq!(retrieval["k"], 5);
    let recorded: Vec<&str> = retrieval["passages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        recorded, ids,
        "the attempt records what the model was given"
    );
    assert!(retrieval["passages"][0]["score"].as_f64().unwrap() > 0.0);
    assert!(retrieval["passages"][0].get("text").is_none());
    // The plan cites them, and the provenance shows the retrieval.
    let plan = lp.app.current_plan(case).await;
    assert_eq!(plan.body["plan"]["references"], json!(cited));
    let r = lp
        .app
        .send(
            axum::http::Method::GET,
            &format!("/case/{case}/provenance"),
            Some(crate::helpers::VIEWER),
            &[],
            None,
        )
        .await;
    let attempt = r.body["chain"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["stage"] == "plan_attempt")
        .unwrap();
    assert_eq!(attempt["retrieval"]["passages"][0]["id"], ids[0]);
}

#[sqlx::test]
async fn a_template_that_failed_verification_on_the_resource_is_not_proposed_again(pool: PgPool) {
    let lp = Loop::full(pool.clone()).await;
    let sick = service();
    let first = degraded_case(&lp, &sick).await;
    ingest_metric(&lp, &sick, "latency_p95_ms", 950.0).await;
    lp.settle().await;
    assert_eq!(lp.app.park_reason(first).await, "breach");

    // The same trouble again: restart-service is the only template for
    // ServiceDegraded, and it just failed on this service.
    let again = degraded_case(&lp, &sick).await;
    lp.settle().await;
    assert_eq!(lp.app.status(again).await, "PARKED");
    let failed = lp.app.park_reason(again).await;
    for part in [
        "every matching template was skipped",
        "template restart-service failed verification (breach)",
        &format!("metric:{sick}"),
        &first.to_string(),
    ] {
        assert!(failed.contains(part), "{part:?} not in {failed:?}");
    }
    let plans: i64 = sqlx::query_scalar("SELECT count(*) FROM plan_proposed WHERE case_id = $1")
        .bind(again)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(plans, 0);

    // Another service is another resource: the template serves it.
    let other = service();
    ingest_metric(&lp, &other, "latency_p95_ms", 120.0).await;
    let fine = degraded_case(&lp, &other).await;
    lp.settle().await;
    assert_eq!(lp.app.status(fine).await, "CLOSED");
    let template: Option<String> =
        sqlx::query_scalar("SELECT template FROM plan_proposed WHERE case_id = $1")
            .bind(fine)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(template.as_deref(), Some("restart-service"));
}

/// A fake OpenAI-compatible embeddings server: answers `native` dimensions
/// (or the `dimensions` asked, when it honours them), refuses the
/// parameter with a 400 when told to, and keeps the requests.
struct FakeEmbeddings {
    url: String,
    requests: Arc<Mutex<Vec<Value>>>,
    _server: TestServer,
}

#[derive(Clone)]
struct EmbedBehaviour {
    native: usize,
    honours_dimensions: bool,
    refuses_dimensions: bool,
    requests: Arc<Mutex<Vec<Value>>>,
}

async fn embeddings(State(b): State<EmbedBehaviour>, Json(body): Json<Value>) -> Response {
    b.requests.lock().unwrap().push(body.clone());
    let asked = body.get("dimensions").and_then(Value::as_u64);
    if asked.is_some() && b.refuses_dimensions {
        return (StatusCode::BAD_REQUEST, "unknown parameter: dimensions").into_response();
    }
    let n = match asked {
        Some(d) if b.honours_dimensions => d as usize,
        _ => b.native,
    };
    let data: Vec<Value> = body["input"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, text)| {
            // A vector that depends on the words: equal texts are equal.
            let mut v = vec![0.01f32; n];
            for word in text.as_str().unwrap().split_whitespace() {
                let h = word
                    .to_lowercase()
                    .bytes()
                    .fold(7usize, |h, c| h.wrapping_mul(31).wrapping_add(c as usize));
                v[h % n] += 1.0;
            }
            json!({"object": "embedding", "index": i, "embedding": v})
        })
        .collect();
    Json(
        json!({"object": "list", "data": data, "model": body["model"],
                "usage": {"prompt_tokens": 1, "total_tokens": 1}}),
    )
    .into_response()
}

impl FakeEmbeddings {
    async fn start(native: usize, honours_dimensions: bool, refuses_dimensions: bool) -> Self {
        let requests = Arc::new(Mutex::new(Vec::new()));
        let app = axum::Router::new()
            .route("/v1/embeddings", axum::routing::post(embeddings))
            .with_state(EmbedBehaviour {
                native,
                honours_dimensions,
                refuses_dimensions,
                requests: requests.clone(),
            });
        let server = TestServer::start(app).await;
        FakeEmbeddings {
            url: format!("{}/v1", server.url),
            requests,
            _server: server,
        }
    }

    fn settings(&self) -> EmbeddingSettings {
        EmbeddingSettings {
            model_dir: Some("/nonexistent".into()),
            url: Some(self.url.clone()),
            model: Some("fake-embedder".into()),
            api_key: "k".into(),
            workers: 2,
        }
    }
}

#[sqlx::test]
async fn an_embeddings_server_serves_instead_of_the_model_only_with_384_dimensions(pool: PgPool) {
    // Honours `dimensions`: used, and the URL wins over the model folder.
    let fake = FakeEmbeddings::start(768, true, false).await;
    let lib = Librarian::from_settings(&fake.settings())
        .await
        .unwrap()
        .expect("configured");
    let e = lib.embedder().await.unwrap();
    let cert = NewDoc {
        tenant: None,
        kind: DocKind::Runbook,
        title: "Certificate expiry".into(),
        source: "runbooks/cert.md".into(),
        body: "# Certificate expiry\nRenew the certificate with the issuer, then reload.".into(),
        labels: json!({}),
    };
    let id = store::ingest(&pool, e, &cert).await.unwrap().id;
    let by_vector = |pool: PgPool, e: opsloop::librarian::embed::Embedder| async move {
        store::search(
            &pool,
            &e,
            &Search {
                query: "certificate expiry renew",
                k: 3,
                kind: None,
                scope: &scope("t-001"),
                mode: Mode::Vector,
                labels: Default::default(),
                since: None,
            },
        )
        .await
        .unwrap()
    };
    assert_eq!(by_vector(pool.clone(), e.clone()).await[0].doc_id, id);
    // Vectors of two models are never compared: the local model's search
    // finds no vector for it until the document is embedded again, which
    // its next ingest does although its text is unchanged.
    let local = crate::librarian::embedder();
    assert!(by_vector(pool.clone(), local.clone()).await.is_empty());
    let again = store::ingest(&pool, &local, &cert).await.unwrap();
    assert_eq!((again.id, again.unchanged), (id, false));
    assert_eq!(by_vector(pool.clone(), local).await[0].doc_id, id);
    let requests = fake.requests.lock().unwrap().clone();
    assert!(requests.len() >= 3, "probe, ingest, search: {requests:?}");
    for r in &requests {
        assert_eq!(r["model"], "fake-embedder");
        assert_eq!(r["dimensions"], DIMENSIONS);
    }

    // Refuses the parameter but is 384 natively: asked again without it.
    let fake = FakeEmbeddings::start(384, false, true).await;
    assert!(
        Librarian::from_settings(&fake.settings())
            .await
            .unwrap()
            .is_some()
    );
    let requests = fake.requests.lock().unwrap().clone();
    assert_eq!(requests.len(), 2);
    assert!(requests[1].get("dimensions").is_none());

    // A server that is down does not stop start-up: it is asked again on
    // first use, and that use fails until it answers.
    let down = EmbeddingSettings {
        url: Some("http://127.0.0.1:9/v1".into()),
        ..fake.settings()
    };
    let lib = Librarian::from_settings(&down)
        .await
        .unwrap()
        .expect("configured");
    assert!(lib.embedder().await.is_err());
    // A URL without the model's name is a configuration error.
    let nameless = EmbeddingSettings {
        model: None,
        ..fake.settings()
    };
    assert!(Librarian::from_settings(&nameless).await.is_err());

    // 768 whatever is asked: start-up refuses it, saying why.
    let fake = FakeEmbeddings::start(768, false, false).await;
    let err = Librarian::from_settings(&fake.settings())
        .await
        .err()
        .expect("refused");
    let text = format!("{err:#}");
    assert!(
        text.contains("answers 768 dimensions") && text.contains("384"),
        "{text}"
    );
}
