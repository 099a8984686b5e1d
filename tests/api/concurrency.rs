use serde_json::json;
use sqlx::PgPool;

use crate::helpers::*;

#[sqlx::test]
async fn stale_if_match_is_412_and_changes_nothing(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let case = app.case_in("ANALYZING").await;
    let r = app
        .send(
            reqwest::Method::PATCH,
            &format!("/case/{case}/transition"),
            Some(ANALYST),
            &[("idempotency-key", "m-1"), ("if-match", "\"1\"")],
            Some(json!({"event": "analysis_done"}).to_string()),
        )
        .await;
    assert_eq!((r.status, r.code()), (412, "version_mismatch"));
    assert_eq!(r.body["version"], 2);
    assert_eq!(app.status(case).await, "ANALYZING");
    // Nothing was recorded, so the same key may be retried with a fresh version.
    let r = app
        .send(
            reqwest::Method::PATCH,
            &format!("/case/{case}/transition"),
            Some(ANALYST),
            &[("idempotency-key", "m-1"), ("if-match", "\"2\"")],
            Some(json!({"event": "analysis_done"}).to_string()),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let bad = app
        .send(
            reqwest::Method::PATCH,
            &format!("/case/{case}/transition"),
            Some(OPERATOR),
            &[("idempotency-key", "m-2"), ("if-match", "W/abc")],
            Some(json!({"event": "dismiss", "reason": "x"}).to_string()),
        )
        .await;
    assert_eq!((bad.status, bad.code()), (400, "invalid_field"));
}

#[sqlx::test]
async fn fifty_concurrent_patches_with_one_if_match_yield_exactly_one_200(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let case = app.case_in("PARKED").await;
    let version = "\"4\"";
    let replies = futures::future::join_all((0..50).map(|i| {
        let key = format!("race-{i}");
        let app = &app;
        async move {
            app.send(
                reqwest::Method::PATCH,
                &format!("/case/{case}/transition"),
                Some(OPERATOR),
                &[("idempotency-key", key.as_str()), ("if-match", version)],
                Some(json!({"event": "resume"}).to_string()),
            )
            .await
        }
    }))
    .await;
    let ok = replies.iter().filter(|r| r.status == 200).count();
    let stale = replies.iter().filter(|r| r.status == 412).count();
    assert_eq!(
        (ok, stale),
        (1, 49),
        "{:?}",
        replies.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    assert_eq!(app.status(case).await, "PLANNING");
    let versions: Vec<i64> = sqlx::query_scalar(
        "SELECT version FROM case_timeline WHERE case_id = $1 AND kind <> 'rejected' ORDER BY seq",
    )
    .bind(case)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(versions, [1, 2, 3, 4, 5]);
}

#[sqlx::test]
async fn concurrent_distinct_events_serialise_on_the_case_row(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let case = app.case_in("PARKED").await;
    // Without If-Match, resume and dismiss race; the row lock orders them and
    // each sees the other's result, so the outcome is one of two legal histories.
    let (a, b) = tokio::join!(
        app.patch(case, OPERATOR, "r", json!({"event": "resume"})),
        app.patch(
            case,
            OPERATOR,
            "d",
            json!({"event": "dismiss", "reason": "dup"})
        ),
    );
    assert_eq!(
        b.status, 200,
        "dismiss is legal from PARKED and from PLANNING"
    );
    assert!(
        a.status == 200 || a.code() == "illegal_transition",
        "{:?}",
        a.body
    );
    assert_eq!(app.status(case).await, "CLOSED");
    let accepted = app
        .timeline(case)
        .await
        .iter()
        .filter(|t| t.0 == "transition")
        .count();
    assert_eq!(accepted, 3 + usize::from(a.status == 200) + 1);
}
