//! The librarian (issue #19) on real PostgreSQL with pgvector and the real
//! model: the embeddings against reference vectors made by an independent
//! implementation, ingest and hybrid search within tenant scopes.

use std::sync::OnceLock;

use opsloop::auth::TenantScope;
use opsloop::librarian::embed::{Embedder, LocalModel, MAX_TOKENS};
use opsloop::librarian::store::{self, DocKind, Mode, NewDoc, Search};
use serde_json::{Value, json};
use sqlx::PgPool;

static DIR: OnceLock<std::path::PathBuf> = OnceLock::new();

/// The model folder if it is known without fetching it:
/// `OPSLOOP_EMBEDDINGS_MODEL_DIR`, or [`model_dir`] ran before.
pub fn model_dir_if_fetched() -> Option<std::path::PathBuf> {
    DIR.get().cloned().or_else(|| {
        std::env::var("OPSLOOP_EMBEDDINGS_MODEL_DIR")
            .ok()
            .map(Into::into)
    })
}

/// The model folder: `OPSLOOP_EMBEDDINGS_MODEL_DIR` (scripts/test.sh sets
/// it), else what `scripts/model.sh` fetches.
pub fn model_dir() -> std::path::PathBuf {
    DIR.get_or_init(|| {
        if let Ok(dir) = std::env::var("OPSLOOP_EMBEDDINGS_MODEL_DIR") {
            return dir.into();
        }
        let out = std::process::Command::new("bash")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/model.sh"))
            .output()
            .expect("scripts/model.sh runs");
        assert!(
            out.status.success(),
            "scripts/model.sh: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().into()
    })
    .clone()
}

/// One model for the whole test binary (loading it reads 90 MB).
pub fn embedder() -> Embedder {
    static MODEL: OnceLock<Embedder> = OnceLock::new();
    MODEL
        .get_or_init(|| Embedder::new(LocalModel::load(&model_dir()).expect("the model loads"), 2))
        .clone()
}

fn cosine(a: &[f32], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| f64::from(*x) * y).sum();
    let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|y| y.powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

/// tests/fixtures/embeddings/reference.json was made by
/// make_reference.py (numpy, safetensors, tokenizers: a BERT forward pass
/// of its own); candle's vectors must agree, a long text truncated at the
/// same word piece.
#[tokio::test]
async fn embeddings_match_an_independent_implementation() {
    let reference: Value =
        serde_json::from_str(include_str!("../fixtures/embeddings/reference.json")).unwrap();
    let items = reference["items"].as_array().unwrap();
    let texts: Vec<String> = items
        .iter()
        .map(|i| i["text"].as_str().unwrap().to_string())
        .collect();
    let e = embedder();
    // One batch (padding in play) and one at a time must both agree.
    let batch = e.embed(texts.clone()).await.unwrap();
    for (i, item) in items.iter().enumerate() {
        let want: Vec<f64> = item["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        let alone = e.embed(vec![texts[i].clone()]).await.unwrap().remove(0);
        for (how, got) in [("batched", &batch[i]), ("alone", &alone)] {
            assert_eq!(got.len(), 384);
            let c = cosine(got, &want);
            assert!(c >= 0.999, "{how} {:?}: cosine {c}", texts[i]);
        }
        let pieces = (e.count_tokens(&texts[i]) + 2).min(MAX_TOKENS);
        assert_eq!(
            pieces as u64,
            item["tokens"].as_u64().unwrap(),
            "{:?}",
            texts[i]
        );
    }
}

fn runbook(tenant: Option<&str>, title: &str, body: &str) -> NewDoc {
    NewDoc {
        tenant: tenant.map(|t| t.parse().unwrap()),
        kind: DocKind::Runbook,
        title: title.into(),
        source: format!("runbooks/{}.md", title.to_lowercase().replace(' ', "-")),
        body: body.into(),
        labels: json!({}),
    }
}

fn scope(t: &str) -> TenantScope {
    TenantScope::one(&t.parse().unwrap())
}

#[sqlx::test]
async fn search_finds_the_runbook_within_the_tenants_scope(pool: PgPool) {
    let e = embedder();
    let docs = [
        runbook(
            None,
            "Disk full",
            "## Symptoms\nA filesystem is at 100 % and writes fail with ENOSPC.\n## Mitigate\nDelete old logs, grow the volume.",
        ),
        runbook(
            None,
            "Certificate expiry",
            "## Symptoms\nThe TLS certificate of a host expires soon; clients will refuse the handshake.\n## Mitigate\nRenew it and reload the proxy.",
        ),
        runbook(
            Some("t-001"),
            "Checkout latency",
            "## Symptoms\nThe p95 latency of checkout rose after a deploy.\n## Mitigate\nRoll the deployment back.",
        ),
        runbook(
            Some("t-002"),
            "Payments latency",
            "## Symptoms\nThe p95 latency of payments rose after a deploy.\n## Mitigate\nRestart the pods.",
        ),
    ];
    for d in &docs {
        let stored = store::ingest(&pool, &e, d).await.unwrap();
        assert!(!stored.unchanged && stored.chunks >= 2, "{stored:?}");
    }
    let ask = |q: &'static str, tenant: &'static str, mode: Mode| {
        let pool = pool.clone();
        let e = e.clone();
        async move {
            let scope = scope(tenant);
            store::search(
                &pool,
                &e,
                &Search {
                    query: q,
                    k: 5,
                    kind: None,
                    scope: &scope,
                    mode,
                    labels: Default::default(),
                    since: None,
                },
            )
            .await
            .unwrap()
        }
    };
    for mode in [Mode::Hybrid, Mode::Vector] {
        let hits = ask(
            "the volume ran out of space, writes are failing",
            "t-001",
            mode,
        )
        .await;
        assert_eq!(hits[0].title, "Disk full", "{mode:?}: {hits:#?}");
        let hits = ask("TLS cert about to expire on api host", "t-002", mode).await;
        assert_eq!(hits[0].title, "Certificate expiry", "{mode:?}: {hits:#?}");
    }
    // Full text alone needs the words.
    let hits = ask("certificate", "t-001", Mode::Text).await;
    assert_eq!(hits[0].title, "Certificate expiry", "{hits:#?}");
    // A tenant sees its own and the global documents, never another's.
    let hits = ask("latency after a deploy", "t-001", Mode::Hybrid).await;
    assert_eq!(hits[0].title, "Checkout latency", "{hits:#?}");
    assert!(
        hits.iter().all(|h| h.title != "Payments latency"),
        "{hits:#?}"
    );
    let hits = ask("payments latency restart pods", "t-002", Mode::Hybrid).await;
    assert_eq!(hits[0].title, "Payments latency");
    assert!(
        hits.iter().all(|h| h.title != "Checkout latency"),
        "{hits:#?}"
    );
    assert!(
        hits[0].passage.starts_with("Payments latency > "),
        "{hits:#?}"
    );
}

#[sqlx::test]
async fn an_unchanged_document_is_not_written_again_and_a_changed_one_is_replaced(pool: PgPool) {
    let e = embedder();
    let doc = runbook(Some("t-001"), "Disk full", "## Mitigate\nDelete old logs.");
    let first = store::ingest(&pool, &e, &doc).await.unwrap();
    let stamp = |pool: PgPool| async move {
        sqlx::query_scalar::<_, chrono::DateTime<chrono::Utc>>("SELECT updated_at FROM kb_doc")
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    let before = stamp(pool.clone()).await;
    let again = store::ingest(&pool, &e, &doc).await.unwrap();
    assert!(again.unchanged);
    assert_eq!((again.id, again.chunks), (first.id, first.chunks));
    assert_eq!(stamp(pool.clone()).await, before, "nothing written");
    // The same source in another tenant is another document.
    let theirs = NewDoc {
        tenant: Some("t-002".parse().unwrap()),
        ..doc.clone()
    };
    assert_ne!(
        store::ingest(&pool, &e, &theirs).await.unwrap().id,
        first.id
    );
    // Changed: the same id, its chunks replaced.
    let changed = NewDoc {
        body: "## Mitigate\nGrow the volume.\n## Verify\nFree space above 20 %.".into(),
        ..doc
    };
    let replaced = store::ingest(&pool, &e, &changed).await.unwrap();
    assert_eq!(replaced.id, first.id);
    assert!(!replaced.unchanged);
    let texts: Vec<String> =
        sqlx::query_scalar("SELECT text FROM kb_chunk WHERE doc_id = $1 ORDER BY ordinal")
            .bind(first.id)
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        texts,
        [
            "Disk full > Mitigate\nGrow the volume.",
            "Disk full > Verify\nFree space above 20 %."
        ]
    );
    // Deleted within its tenant only.
    assert!(
        !store::delete(&pool, first.id, &scope("t-002"), false)
            .await
            .unwrap()
    );
    assert!(
        store::delete(&pool, first.id, &scope("t-001"), false)
            .await
            .unwrap()
    );
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM kb_chunk WHERE doc_id = $1")
        .bind(first.id)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(left, 0);
}

/// The routes: an operator adds to a tenant of theirs (201, then 200 for
/// the same content), bad fields are listed (422), the global scope and
/// other tenants are refused; any reader searches its scope; delete is an
/// operator's, within their tenants.
#[sqlx::test]
async fn the_kb_routes_keep_the_rules(pool: PgPool) {
    use crate::helpers::*;
    use reqwest::Method;
    model_dir();
    let app = TestApp::new(pool).await;
    let doc = json!({"tenant": "t-001", "title": "Disk full", "source": "runbooks/disk-full.md",
                     "body": "# Disk full\n## Mitigate\nDelete old logs, then grow the volume."});
    let post = |token: &'static str, body: Value| {
        let app = &app;
        async move {
            app.send(
                Method::POST,
                "/kb/docs",
                Some(token),
                &[],
                Some(body.to_string()),
            )
            .await
        }
    };
    let r = post(OPERATOR, doc.clone()).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(r.body["chunks"], 1);
    let id = r.body["id"].as_str().unwrap().to_string();
    let r = post(OPERATOR, doc.clone()).await;
    assert_eq!((r.status, r.body["unchanged"].clone()), (200, json!(true)));
    assert_eq!(r.body["id"], id.as_str());
    // Every bad field at once, nothing stored.
    let r = post(
        OPERATOR,
        json!({"tenant": "T 1", "kind": "past_case", "title": "", "body": " "}),
    )
    .await;
    assert_eq!(r.status, 422, "{:?}", r.body);
    assert_eq!(r.body["code"], "doc_invalid");
    let fields: Vec<&str> = r.body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["tenant", "kind", "title", "body"]);
    let mut global = doc.clone();
    global["tenant"] = json!("global");
    assert_eq!(post(OPERATOR, global.clone()).await.status, 403);
    assert_eq!(post(ADMIN, global).await.status, 201);
    // Labels a jsonb column would refuse (a NUL), or that are not flat,
    // or that would pass the document off as a past case.
    for labels in [
        json!({"service": "a\u{0}b"}),
        json!({"service": {"nested": 1}}),
        json!({"Bad Key": "x"}),
        json!({"outcome": "fixed"}),
        json!({"case_id": "01a22d94-4627-7258-b657-fcc1b122a323"}),
    ] {
        let mut odd = doc.clone();
        odd["labels"] = labels;
        let r = post(OPERATOR, odd).await;
        assert_eq!(
            (r.status, r.body["errors"][0]["field"].clone()),
            (422, json!("labels")),
            "{:?}",
            r.body
        );
    }
    let mut theirs = doc.clone();
    theirs["tenant"] = json!("t-002");
    assert_eq!(post(OPERATOR, theirs).await.status, 403);
    assert_eq!(post(VIEWER, doc.clone()).await.status, 403);

    let r = app
        .send(
            Method::GET,
            "/kb/search?q=volume%20is%20full&k=3",
            Some(VIEWER),
            &[],
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let hits = r.body["hits"].as_array().unwrap();
    assert_eq!(
        hits.len(),
        2,
        "the tenant's copy and the global one: {hits:?}"
    );
    assert!(
        hits.iter()
            .all(|h| h["title"] == "Disk full" && h["score"].as_f64().unwrap() > 0.0)
    );
    for bad in [
        "q=",
        "q=x&k=0",
        "q=x&k=51",
        "q=x&kind=wiki",
        "q=x&mode=magic",
    ] {
        let r = app
            .send(
                Method::GET,
                &format!("/kb/search?{bad}"),
                Some(VIEWER),
                &[],
                None,
            )
            .await;
        assert_eq!(r.status, 400, "{bad}: {:?}", r.body);
    }
    // The global copy is the admin's to delete, not an operator's.
    let global_id = hits
        .iter()
        .find(|h| h["doc_id"] != id.as_str())
        .map(|h| h["doc_id"].as_str().unwrap().to_string())
        .unwrap();
    let global_path = format!("/kb/docs/{global_id}");
    assert_eq!(
        app.send(Method::DELETE, &global_path, Some(OPERATOR), &[], None)
            .await
            .status,
        404
    );
    assert_eq!(
        app.send(Method::DELETE, &global_path, Some(ADMIN), &[], None)
            .await
            .status,
        204
    );
    let path = format!("/kb/docs/{id}");
    assert_eq!(
        app.send(Method::DELETE, &path, Some(VIEWER), &[], None)
            .await
            .status,
        403
    );
    assert_eq!(
        app.send(Method::DELETE, &path, Some(OPERATOR), &[], None)
            .await
            .status,
        204
    );
    assert_eq!(
        app.send(Method::DELETE, &path, Some(OPERATOR), &[], None)
            .await
            .status,
        404
    );
}
