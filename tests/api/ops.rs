use reqwest::Method;
use sqlx::PgPool;

use crate::helpers::*;

#[sqlx::test]
async fn health_readiness_metrics_and_openapi(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let r = app.send(Method::GET, "/healthz", None, &[], None).await;
    assert_eq!(r.status, 200);
    let r = app.send(Method::GET, "/readyz", None, &[], None).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        (r.body["database"].as_str(), r.body["nats"].as_str()),
        (Some("ok"), Some("ok"))
    );

    let case = app.create_case().await;
    app.event(case, OPERATOR, "start_analysis").await;
    let m = app.send(Method::GET, "/metrics", None, &[], None).await;
    let text = m.body.as_str().unwrap();
    assert!(
        text.contains(
            "case_transition_total{event=\"start_analysis\",from=\"NEW\",to=\"ANALYZING\"}"
        ),
        "{text}"
    );

    let spec = app
        .send(Method::GET, "/openapi.json", None, &[], None)
        .await;
    assert_eq!(spec.status, 200);
    for path in [
        "/case",
        "/case/{id}",
        "/cases",
        "/case/{id}/timeline",
        "/case/{id}/transition",
    ] {
        assert!(
            spec.body["paths"][path].is_object(),
            "{path} missing from the spec"
        );
    }
    assert!(spec.body["components"]["schemas"]["Problem"].is_object());
}

#[sqlx::test]
async fn readiness_fails_when_the_database_is_gone(pool: PgPool) {
    let app = TestApp::new(pool.clone()).await;
    pool.close().await;
    let r = app.send(Method::GET, "/readyz", None, &[], None).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.body["database"], "unreachable");
}
