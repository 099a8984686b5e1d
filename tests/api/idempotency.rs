use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use crate::helpers::*;

#[sqlx::test]
async fn same_key_same_body_replays_the_stored_reply(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let case = app.create_case().await;
    let body = json!({"event": "start_analysis", "reason": "paged"});
    let first = app.patch(case, OPERATOR, "k-1", body.clone()).await;
    let again = app.patch(case, OPERATOR, "k-1", body).await;
    assert_eq!(first.status, 200);
    assert_eq!((again.status, &again.body), (first.status, &first.body));
    assert_eq!(again.text, first.text, "a replay repeats the bytes");
    assert_eq!(first.header("idempotent-replayed"), None);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    let transitions = app
        .timeline(case)
        .await
        .iter()
        .filter(|t| t.0 == "transition")
        .count();
    assert_eq!(transitions, 1);
    assert_eq!(
        app.outbox_subjects(case).await.len(),
        3,
        "creation, command, transition"
    );
    assert!(app.metric("idempotent_replay_total").await >= 1.0);
}

#[sqlx::test]
async fn a_replayed_rejection_is_the_same_rejection(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let case = app.create_case().await;
    let first = app
        .patch(case, OPERATOR, "k-2", json!({"event": "resume"}))
        .await;
    let again = app
        .patch(case, OPERATOR, "k-2", json!({"event": "resume"}))
        .await;
    assert_eq!(first.status, 409);
    assert_eq!((again.status, &again.body), (409, &first.body));
    assert_eq!(again.text, first.text, "a replay repeats the bytes");
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(
        app.timeline(case).await.len(),
        2,
        "created + one rejected attempt"
    );
}

/// A key stored by a release that kept the rendered reply (before typed
/// answers) is replayed exactly as it was stored.
#[sqlx::test]
async fn a_reply_stored_before_typed_answers_is_replayed_as_stored(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let case = app.create_case().await;
    let body = json!({"event": "start_analysis"});
    let request_hash = {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(format!("PATCH /case/{case}/transition\n"));
        h.update(body.to_string());
        hex::encode(h.finalize())
    };
    let stored =
        json!({"case": {"id": case, "version": 2, "status": "ANALYZING"}, "transition": {}});
    sqlx::query(
        "INSERT INTO idempotency (actor, key, request_hash, case_id, response_status, response_body) \
         VALUES ('alice', 'k-old', $1, $2, 200, $3)",
    )
    .bind(&request_hash)
    .bind(case)
    .bind(&stored)
    .execute(&app.pool)
    .await
    .unwrap();
    let r = app.patch(case, OPERATOR, "k-old", body).await;
    assert_eq!((r.status, &r.body), (200, &stored));
    assert_eq!(r.header("idempotent-replayed"), Some("true"));
    assert_eq!(app.status(case).await, "NEW", "nothing was applied again");
}

#[sqlx::test]
async fn same_key_other_body_is_422_reuse(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let case = app.create_case().await;
    app.patch(case, OPERATOR, "k-3", json!({"event": "start_analysis"}))
        .await;
    let r = app
        .patch(
            case,
            OPERATOR,
            "k-3",
            json!({"event": "start_analysis", "reason": "other"}),
        )
        .await;
    assert_eq!((r.status, r.code()), (422, "idempotency_key_reuse"));
    assert_eq!(app.status(case).await, "ANALYZING");
}

#[sqlx::test]
async fn keys_are_scoped_by_actor(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let case = app.case_in("PLANNING").await;
    let a = app
        .patch(case, SERVICE, "shared", json!({"event": "plan_failed"}))
        .await;
    let b = app
        .patch(case, OPERATOR, "shared", json!({"event": "resume"}))
        .await;
    assert_eq!((a.status, b.status), (200, 200));
    assert_eq!(b.header("idempotent-replayed"), None);
}

#[sqlx::test]
async fn missing_key_is_428(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let case = app.create_case().await;
    let r = app
        .send(
            reqwest::Method::PATCH,
            &format!("/case/{case}/transition"),
            Some(OPERATOR),
            &[],
            Some(json!({"event": "start_analysis"}).to_string()),
        )
        .await;
    assert_eq!((r.status, r.code()), (428, "idempotency_key_missing"));
    assert_eq!(app.status(case).await, "NEW");
}

#[sqlx::test]
async fn twenty_concurrent_requests_with_one_key_have_one_effect(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let case = app.create_case().await;
    let body = json!({"event": "start_analysis"});
    let replies = futures::future::join_all(
        (0..20).map(|_| app.patch(case, OPERATOR, "same-key", body.clone())),
    )
    .await;
    let first = &replies[0];
    assert_eq!(first.status, 200);
    for r in &replies {
        assert_eq!((r.status, &r.body), (first.status, &first.body));
    }
    let replayed = replies
        .iter()
        .filter(|r| r.header("idempotent-replayed").is_some())
        .count();
    assert_eq!(replayed, 19);
    let transitions = app
        .timeline(case)
        .await
        .iter()
        .filter(|t| t.0 == "transition")
        .count();
    assert_eq!(transitions, 1);
    assert_eq!(
        app.outbox_subjects(case).await,
        [
            "evt.case.created.v1",
            "cmd.analysis.run",
            "evt.case.transition.v1"
        ]
    );
}

#[sqlx::test]
async fn a_message_applied_twice_has_one_effect(pool: PgPool) {
    use opsloop::orchestrator::{Actor, Answer, Origin, Outcome, TransitionRequest};
    let app = TestApp::new(pool).await;
    let case = app.case_in("ANALYZING").await;
    let message_id = uuid::Uuid::now_v7();
    let request = TransitionRequest {
        case_id: case,
        tenants: opsloop::auth::TenantScope::All,
        event: opsloop::workflow::EventKind::AnalysisDone,
        actor: Actor {
            id: "analyst".into(),
            human: false,
        },
        reason: None,
        plan_hash: None,
        dryrun_digest: None,
        meta: serde_json::Value::Null,
        expected_version: Some(2),
        origin: Origin::Message {
            consumer: "orchestrator".into(),
            message_id,
            subject: "evt.analysis.findings.v1".into(),
        },
        trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
    };
    let first = app.orchestrator.transition(request.clone()).await.unwrap();
    assert!(matches!(first, Outcome::Answered(Answer::Applied { .. })));
    let again = app.orchestrator.transition(request).await.unwrap();
    assert_eq!(again, Outcome::Duplicate);
    assert_eq!(app.status(case).await, "PLANNING");
    let meta: serde_json::Value = sqlx::query_scalar(
        "SELECT meta FROM case_timeline WHERE case_id = $1 AND event = 'analysis_done'",
    )
    .bind(case)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(meta["message_id"], message_id.to_string());
    assert_eq!(meta["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    let causation: String = sqlx::query_scalar(
        "SELECT payload::jsonb->>'causation_id' FROM outbox WHERE case_id = $1 AND subject = 'cmd.plan.generate'",
    )
    .bind(case)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(causation, message_id.to_string());
}

/// An applied answer is rebuilt from its timeline entry on replay (#15):
/// after the case moved on, the replay still shows the case as that
/// transition left it (status, version, park reason, time), byte for byte.
#[sqlx::test]
async fn a_replay_after_the_case_moved_on_repeats_the_first_answer(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let case = app.case_in("PLANNING").await;
    let body = json!({"event": "plan_failed", "reason": "no template fits"});
    let first = app.patch(case, SERVICE, "park-1", body.clone()).await;
    assert_eq!(first.status, 200, "{:?}", first.body);
    assert_eq!(first.body["case"]["status"], "PARKED");
    assert_eq!(first.body["case"]["park_reason"], "no template fits");
    let resumed = app.event(case, OPERATOR, "resume").await;
    assert_eq!(resumed.status, 200, "{:?}", resumed.body);
    assert_eq!(app.status(case).await, "PLANNING");

    let again = app.patch(case, SERVICE, "park-1", body).await;
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.text, first.text, "a replay repeats the bytes");
    assert_eq!(again.header("etag"), first.header("etag"));
}

/// `POST /case` takes an optional `Idempotency-Key` (#16): a repeat of the
/// request gets the case as it was created, byte for byte, even after the
/// case moved on; another body with the key is refused; twins at once
/// create one case.
#[sqlx::test]
async fn an_idempotent_case_creation_replays_the_created_case(pool: PgPool) {
    use reqwest::Method;
    let app = std::sync::Arc::new(TestApp::new(pool).await);
    let body = json!({"title": "checkout down", "tenant": "acme", "severity": "high",
                      "labels": {"service": "checkout"}})
    .to_string();
    let create = |key: &'static str, body: String| {
        let app = app.clone();
        async move {
            app.send(
                Method::POST,
                "/case",
                Some(OPERATOR),
                &[("idempotency-key", key)],
                Some(body),
            )
            .await
        }
    };
    let first = create("new-case-1", body.clone()).await;
    assert_eq!(first.status, 201, "{:?}", first.body);
    assert_eq!(first.header("idempotent-replayed"), None);
    let case: Uuid = first.body["id"].as_str().unwrap().parse().unwrap();
    app.event(case, OPERATOR, "start_analysis").await;

    let again = create("new-case-1", body.clone()).await;
    assert_eq!(again.status, 201);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.text, first.text, "the case as it was created");
    assert_eq!(again.header("etag"), Some("\"1\""));

    let other = create("new-case-1", body.replace("checkout down", "other")).await;
    assert_eq!((other.status, other.code()), (422, "idempotency_key_reuse"));

    let mut twins = Vec::new();
    for _ in 0..20 {
        twins.push(tokio::spawn(create("new-case-2", body.clone())));
    }
    for t in twins {
        assert_eq!(t.await.unwrap().status, 201);
    }
    let cases: i64 =
        sqlx::query_scalar("SELECT count(*) FROM ops_case WHERE title = 'checkout down'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(cases, 2, "one per key");
}
