use reqwest::Method;
use serde_json::json;
use sqlx::PgPool;

use crate::helpers::*;

#[sqlx::test]
async fn no_token_or_bad_token_is_401(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let case = app.create_case().await;
    for token in [None, Some("not-a-token")] {
        let r = app
            .send(Method::GET, &format!("/case/{case}"), token, &[], None)
            .await;
        assert_eq!(r.status, 401);
        assert_eq!(r.header("www-authenticate"), Some("Bearer"));
        let r = app
            .send(
                Method::PATCH,
                &format!("/case/{case}/transition"),
                token,
                &[("idempotency-key", "a")],
                Some(json!({"event": "start_analysis"}).to_string()),
            )
            .await;
        assert_eq!(r.status, 401);
    }
    let r = app
        .send(
            Method::GET,
            "/cases",
            None,
            &[("authorization", "Basic YWxpY2U6eA==")],
            None,
        )
        .await;
    assert_eq!((r.status, r.code()), (401, "invalid_token"));
    assert_eq!(app.status(case).await, "NEW");
}

#[sqlx::test]
async fn roles_decide_who_sends_what(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let case = app.create_case().await;
    let r = app.event(case, VIEWER, "start_analysis").await;
    assert_eq!((r.status, r.code()), (403, "forbidden"));
    let r = app.event(case, APPROVER, "start_analysis").await;
    assert_eq!(
        r.status, 403,
        "approvers judge plans, they do not drive cases"
    );
    let r = app.event(case, OPERATOR, "exec_done").await;
    assert_eq!(r.status, 403, "worker facts come from services");
    let r = app
        .send(
            Method::POST,
            "/case",
            Some(VIEWER),
            &[],
            Some(json!({"title": "x", "tenant": "t-001"}).to_string()),
        )
        .await;
    assert_eq!(r.status, 403);
    assert_eq!(app.status(case).await, "NEW");
    assert_eq!(
        app.timeline(case).await.len(),
        1,
        "forbidden requests leave no entry"
    );
}

#[sqlx::test]
async fn the_actor_is_the_token_identity_whatever_the_body_says(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let case = app.create_case().await;
    let r = app
        .patch(
            case,
            OPERATOR,
            "who-1",
            json!({"event": "start_analysis", "meta": {"actor": "mallory", "by": "mallory"}}),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["transition"]["actor"], "alice");
    let actor: String = sqlx::query_scalar(
        "SELECT actor FROM case_timeline WHERE case_id = $1 AND kind = 'transition'",
    )
    .bind(case)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(actor, "alice");
    // A top-level `actor` field is not part of the contract and is refused.
    let r = app
        .patch(
            case,
            OPERATOR,
            "who-2",
            json!({"event": "start_analysis", "actor": "mallory"}),
        )
        .await;
    assert_eq!((r.status, r.code()), (400, "malformed_request"));
    assert_eq!(app.status(case).await, "ANALYZING");
}

/// DESIGN §10 over HTTP: a worker fact only from the service identity of
/// the role that owns it, a human event only from a person (issue #13:
/// any service token could send any worker fact, and `verify_failed`
/// without evidence).
#[sqlx::test]
async fn worker_facts_come_from_their_own_role_only(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let case = app.case_in("ANALYZING").await;
    for (token, event) in [
        (SERVICE, "analysis_done"),
        (EXECUTOR, "analysis_done"),
        (OPERATOR, "analysis_done"),
        (ADMIN, "analysis_done"),
        (SERVICE, "exec_done"),
        (EXECUTOR, "verify_failed"),
        (ANALYST, "verify_pass"),
        (ANALYST, "resume"),
        (GATEKEEPER, "resume"),
    ] {
        let r = app.event(case, token, event).await;
        assert_eq!((r.status, r.code()), (403, "forbidden"), "{token} {event}");
    }
    assert_eq!(app.status(case).await, "ANALYZING");
    let r = app.event(case, ANALYST, "analysis_done").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["transition"]["actor"], "analyst");
}
