use reqwest::Method;
use serde_json::json;
use sqlx::PgPool;

use crate::helpers::*;

#[sqlx::test]
async fn create_read_and_walk_a_case(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let case = app.create_case().await;
    let got = app
        .send(
            Method::GET,
            &format!("/case/{case}"),
            Some(VIEWER),
            &[],
            None,
        )
        .await;
    assert_eq!(got.status, 200);
    assert_eq!(got.header("etag"), Some("\"1\""));
    assert_eq!(got.body["status"], "NEW");
    assert_eq!(got.body["created_by"], "alice");

    let r = app.event(case, OPERATOR, "start_analysis").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["case"]["status"], "ANALYZING");
    assert_eq!(r.body["case"]["version"], 2);
    assert_eq!(r.header("etag"), Some("\"2\""));
    assert_eq!(r.body["transition"]["from_status"], "NEW");
    assert_eq!(r.body["transition"]["to_status"], "ANALYZING");
    assert_eq!(r.body["transition"]["actor"], "alice");
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
async fn alias_post_case_create_works(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let r = app
        .send(
            Method::POST,
            "/case/create",
            Some(OPERATOR),
            &[],
            Some(
                json!({"title": "x", "tenant": "acme", "severity": "critical", "kind": "k8s.pod",
                          "labels": {"service": "api"}})
                .to_string(),
            ),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(r.body["severity"], "critical");
    assert_eq!(r.body["labels"]["service"], "api");
}

#[sqlx::test]
async fn illegal_event_is_409_recorded_and_changes_nothing(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let case = app.create_case().await;
    let r = app.event(case, SERVICE, "plan_ready").await;
    assert_eq!(r.status, 409);
    assert_eq!(r.code(), "illegal_transition");
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    assert_eq!(app.status(case).await, "NEW");
    let timeline = app.timeline(case).await;
    assert_eq!(timeline.len(), 2);
    assert_eq!(timeline[1].0, "rejected");
    assert_eq!(timeline[1].1.as_deref(), Some("plan_ready"));
    assert_eq!(timeline[1].3.as_deref(), Some("illegal_transition"));
    assert_eq!(
        app.outbox_subjects(case).await,
        ["evt.case.created.v1"],
        "nothing but the creation's event"
    );
    assert!(
        app.metric("conflict_total{reason=\"illegal_transition\"}")
            .await
            >= 1.0
    );
}

#[sqlx::test]
async fn failing_guard_is_422_naming_the_guard(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let case = app.case_in("PLANNING").await;
    let r = app.event(case, SERVICE, "plan_ready").await;
    assert_eq!(r.status, 422);
    assert_eq!(r.code(), "guard_failed");
    assert_eq!(r.body["guards"][0]["guard"], "plan_present");
    assert_eq!(app.status(case).await, "PLANNING");
    assert_eq!(
        app.timeline(case).await.last().unwrap().3.as_deref(),
        Some("guard_failed")
    );

    let r = app.event(case, OPERATOR, "dismiss").await;
    assert_eq!(r.status, 422);
    assert_eq!(r.body["guards"][0]["guard"], "reason_given");
    let r = app
        .patch(
            case,
            OPERATOR,
            "d-1",
            json!({"event": "dismiss", "reason": "duplicate of INC-9"}),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["case"]["status"], "CLOSED");
    let r = app.event(case, OPERATOR, "resume").await;
    assert_eq!(r.code(), "illegal_transition", "CLOSED is terminal");
}

#[sqlx::test]
async fn resume_sends_the_park_reason_as_planner_feedback(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let case = app.create_case().await;
    for (tok, body) in [
        (OPERATOR, json!({"event": "start_analysis"})),
        (ANALYST, json!({"event": "analysis_done"})),
        (
            SERVICE,
            json!({"event": "plan_failed", "reason": "LLM timed out"}),
        ),
        (OPERATOR, json!({"event": "resume"})),
    ] {
        let r = app
            .patch(case, tok, &uuid::Uuid::new_v4().to_string(), body)
            .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
    }
    let payload = app
        .outbox_payloads(case, "cmd.plan.generate")
        .await
        .pop()
        .unwrap();
    assert_eq!(payload["data"]["feedback"], "LLM timed out");
    assert_eq!(payload["type"], "cmd.plan.generate");
    assert_eq!(payload["case_id"], case.to_string());
    assert_eq!(payload["expected_version"], 5);
}

#[sqlx::test]
async fn transition_event_carries_the_contract_fields(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let case = app.case_in("ANALYZING").await;
    let payloads = app.outbox_payloads(case, "evt.case.transition.v1").await;
    assert_eq!(payloads.len(), 1);
    let data = &payloads[0]["data"];
    assert_eq!(
        (data["from"].as_str(), data["to"].as_str()),
        (Some("NEW"), Some("ANALYZING"))
    );
    assert_eq!(
        (data["event"].as_str(), data["version"].as_i64()),
        (Some("start_analysis"), Some(2))
    );
    assert_eq!(data["actor"], "alice");
    assert!(data["timeline_id"].is_string());
    assert_eq!(payloads[0]["tenant"], "t-001");
    let id: uuid::Uuid = payloads[0]["id"].as_str().unwrap().parse().unwrap();
    assert_eq!(id.get_version_num(), 7);
}

#[sqlx::test]
async fn list_filters_and_paginates_newest_first(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(app.create_case().await);
    }
    app.event(ids[0], OPERATOR, "start_analysis").await;
    let page1 = app
        .send(Method::GET, "/cases?limit=2", Some(VIEWER), &[], None)
        .await;
    assert_eq!(page1.status, 200);
    let got: Vec<&str> = page1.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(got, [ids[4].to_string(), ids[3].to_string()]);
    let cursor = page1.body["next_cursor"].as_str().unwrap();
    let page2 = app
        .send(
            Method::GET,
            &format!("/cases?limit=2&cursor={cursor}"),
            Some(VIEWER),
            &[],
            None,
        )
        .await;
    assert_eq!(page2.body["items"][0]["id"], ids[2].to_string());
    let page3 = app
        .send(
            Method::GET,
            &format!(
                "/cases?limit=2&cursor={}",
                page2.body["next_cursor"].as_str().unwrap()
            ),
            Some(VIEWER),
            &[],
            None,
        )
        .await;
    assert_eq!(page3.body["items"].as_array().unwrap().len(), 1);
    assert!(page3.body["next_cursor"].is_null());

    let analyzing = app
        .send(
            Method::GET,
            "/cases?status=ANALYZING&tenant=t-001",
            Some(VIEWER),
            &[],
            None,
        )
        .await;
    assert_eq!(analyzing.body["items"].as_array().unwrap().len(), 1);
    let other = app
        .send(Method::GET, "/cases?tenant=acme", Some(VIEWER), &[], None)
        .await;
    assert!(other.body["items"].as_array().unwrap().is_empty());
    let lacking = app
        .send(Method::GET, "/cases?tenant=nobody", Some(VIEWER), &[], None)
        .await;
    assert_eq!(
        (lacking.status, lacking.code()),
        (403, "tenant_forbidden"),
        "a filter naming a tenant the viewer lacks"
    );
    let bad = app
        .send(Method::GET, "/cases?status=DONE", Some(VIEWER), &[], None)
        .await;
    assert_eq!((bad.status, bad.code()), (400, "invalid_field"));
    let bad = app
        .send(Method::GET, "/cases?limit=0", Some(VIEWER), &[], None)
        .await;
    assert_eq!(bad.status, 400);
}

#[sqlx::test]
async fn unknown_case_is_404(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let id = uuid::Uuid::new_v4();
    let r = app
        .send(Method::GET, &format!("/case/{id}"), Some(VIEWER), &[], None)
        .await;
    assert_eq!((r.status, r.code()), (404, "case_not_found"));
    let r = app
        .send(
            Method::GET,
            &format!("/case/{id}/timeline"),
            Some(VIEWER),
            &[],
            None,
        )
        .await;
    assert_eq!(r.status, 404);
    let r = app.event(id, OPERATOR, "start_analysis").await;
    assert_eq!((r.status, r.code()), (404, "case_not_found"));
}
