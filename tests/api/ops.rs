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

/// What `/openapi.json` says a 2xx answer holds is what a real answer
/// holds: a case goes through the loop (gate, run, verification), then each
/// read answer is validated against its documented schema (the whole
/// document is the root, so its `$ref`s resolve).
#[sqlx::test]
async fn real_answers_match_their_documented_schemas(pool: PgPool) {
    let lp = crate::flow::Loop::full(pool).await;
    let plan = serde_json::json!({
        "title": "observe", "environment": "staging",
        "steps": [{"action": "noop", "timeout_s": 10, "retry": 0}],
        "rollback": {"steps": [{"action": "noop", "timeout_s": 10, "retry": 0}]},
        "verify": {"checks": []}
    });
    let (case, _) = lp.propose(&plan).await;
    let doc = opsloop::api::openapi::document().clone();
    let schema_of = |path: &str, method: &str, status: &str| {
        let pointer = format!(
            "#/paths/{}/{method}/responses/{status}/content/application~1json/schema",
            path.replace('~', "~0")
                .replace('/', "~1")
                .replace('{', "%7B")
                .replace('}', "%7D")
        );
        let mut root = doc.clone();
        root["$ref"] = serde_json::json!(pointer);
        jsonschema::validator_for(&root).unwrap_or_else(|e| panic!("{path}: {e}"))
    };
    let reads = [
        (format!("/case/{case}"), "/case/{id}"),
        (format!("/case/{case}/timeline"), "/case/{id}/timeline"),
        (format!("/case/{case}/plan"), "/case/{id}/plan"),
        (format!("/case/{case}/executions"), "/case/{id}/executions"),
        (format!("/case/{case}/provenance"), "/case/{id}/provenance"),
        ("/cases".to_string(), "/cases"),
        ("/readyz".to_string(), "/readyz"),
    ];
    for (url, documented) in reads {
        let r = lp
            .app
            .send(Method::GET, &url, Some(VIEWER), &[], None)
            .await;
        assert_eq!(r.status, 200, "{url}: {:?}", r.body);
        let validator = schema_of(documented, "get", "200");
        assert!(
            !validator.is_valid(&serde_json::json!([]))
                && !validator.is_valid(&serde_json::json!({})),
            "{documented}: the documented schema says something"
        );
        let errors: Vec<String> = validator
            .iter_errors(&r.body)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        assert!(errors.is_empty(), "{url}: {errors:?}\n{}", r.body);
    }
    let executions = lp
        .app
        .send(
            Method::GET,
            &format!("/case/{case}/executions"),
            Some(VIEWER),
            &[],
            None,
        )
        .await;
    assert!(
        !executions.body["runs"].as_array().unwrap().is_empty()
            && !executions.body["verifications"]
                .as_array()
                .unwrap()
                .is_empty(),
        "the loop ran and verified, so both shapes were checked: {}",
        executions.body
    );
}
