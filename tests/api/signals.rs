//! `POST /signals/alertmanager` (issue #16, first step): Alertmanager's
//! webhook opens one case per alert fingerprint; repeats are evidence.

use reqwest::Method;
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use crate::helpers::*;

fn alert(fingerprint: &str, status: &str, labels: Value) -> Value {
    json!({
        "status": status,
        "labels": labels,
        "annotations": {"summary": format!("{fingerprint} is burning")},
        "startsAt": "2026-11-30T06:00:00Z",
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus:9090/graph?g0.expr=up",
        "fingerprint": fingerprint,
    })
}

/// A notification whose group is its first alert's fingerprint (so each
/// test alert is its own group unless a test says otherwise).
fn webhook(alerts: Vec<Value>) -> String {
    let group = format!(
        "{{}}:{{fp=\"{}\"}}",
        alerts
            .first()
            .map_or("", |a| a["fingerprint"].as_str().unwrap_or(""))
    );
    webhook_in_group(&group, alerts)
}

fn webhook_in_group(group: &str, alerts: Vec<Value>) -> String {
    json!({
        "version": "4",
        "groupKey": group,
        "truncatedAlerts": 0,
        "status": "firing",
        "receiver": "opsloop",
        "groupLabels": {"alertname": "HighErrorRate"},
        "commonLabels": {"alertname": "HighErrorRate"},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "alerts": alerts,
    })
    .to_string()
}

async fn post(app: &TestApp, token: Option<&str>, body: String) -> TestResponse {
    app.send(
        Method::POST,
        "/signals/alertmanager",
        token,
        &[],
        Some(body),
    )
    .await
}

async fn cases_of(app: &TestApp, fingerprint: &str) -> Vec<(Uuid, i32)> {
    sqlx::query_as(
        "SELECT case_id, notifications FROM signal WHERE fingerprint = $1 ORDER BY first_at",
    )
    .bind(fingerprint)
    .fetch_all(&app.pool)
    .await
    .unwrap()
}

#[sqlx::test]
async fn alerts_open_cases_and_repeats_join_them_as_evidence(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let labels = |sev: &str| {
        json!({"alertname": "HighErrorRate", "severity": sev, "tenant": "acme",
               "service": "checkout"})
    };
    let r = post(
        &app,
        Some(SERVICE),
        webhook(vec![alert("fp-a", "firing", labels("critical"))]),
    )
    .await;
    let other = post(
        &app,
        Some(SERVICE),
        webhook(vec![alert("fp-b", "firing", labels("warning"))]),
    )
    .await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    assert_eq!(other.body["alerts"][0]["outcome"], "accepted");
    let outcomes = r.body["alerts"].as_array().unwrap();
    assert_eq!(outcomes.len(), 1);
    assert!(
        outcomes.iter().all(|o| o["outcome"] == "accepted"),
        "{outcomes:?}"
    );
    let case_a: Uuid = outcomes[0]["case_id"].as_str().unwrap().parse().unwrap();

    let (tenant, title, severity, kind, labels_stored, status): (
        String,
        String,
        String,
        Option<String>,
        Value,
        String,
    ) = sqlx::query_as(
        "SELECT tenant, title, severity, kind, labels, status FROM ops_case WHERE id = $1",
    )
    .bind(case_a)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        (
            tenant.as_str(),
            title.as_str(),
            severity.as_str(),
            kind.as_deref()
        ),
        ("acme", "fp-a is burning", "critical", Some("higherrorrate"))
    );
    assert_eq!(labels_stored["alertname"], "HighErrorRate");
    assert_eq!(labels_stored["service"], "checkout");
    assert_eq!(status, "ANALYZING", "a critical alert starts by itself");
    let starter: String = sqlx::query_scalar(
        "SELECT actor FROM case_timeline WHERE case_id = $1 AND event = 'start_analysis'",
    )
    .bind(case_a)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(starter, "analyst", "sent by the analyst's identity");
    // Subscribers hear of the case as it was created.
    let created = app.outbox_payloads(case_a, "evt.case.created.v1").await;
    assert_eq!(created.len(), 1);
    assert_eq!(created[0]["tenant"], "acme");
    assert_eq!(created[0]["expected_version"], 1);
    assert_eq!(created[0]["data"]["severity"], "critical");
    assert_eq!(created[0]["data"]["kind"], "higherrorrate");
    assert_eq!(created[0]["data"]["labels"]["service"], "checkout");
    let severity_b: String = sqlx::query_scalar(
        "SELECT c.severity FROM ops_case c JOIN signal s ON s.case_id = c.id WHERE s.fingerprint = 'fp-b'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(severity_b, "medium", "warning maps to medium");

    // A re-notification of fp-a joins its case; no second case.
    let again = post(
        &app,
        Some(SERVICE),
        webhook(vec![alert("fp-a", "firing", labels("critical"))]),
    )
    .await;
    assert_eq!(again.status, 202);
    assert_eq!(again.body["alerts"][0]["outcome"], "deduplicated");
    assert_eq!(again.body["alerts"][0]["case_id"], case_a.to_string());
    assert_eq!(cases_of(&app, "fp-a").await, vec![(case_a, 2)]);
    let evidence: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM evidence_link l JOIN event_envelope e ON e.id = l.envelope_id \
         WHERE l.case_id = $1 AND l.role = 'signal' AND e.tenant = 'acme'",
    )
    .bind(case_a)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(evidence, 2, "each notification is kept as evidence");

    // Its resolution is evidence too; a resolution nobody opened is ignored.
    let resolved = post(
        &app,
        Some(SERVICE),
        webhook(vec![
            alert("fp-a", "resolved", labels("critical")),
            alert("fp-never", "resolved", labels("critical")),
        ]),
    )
    .await;
    assert_eq!(resolved.body["alerts"][0]["outcome"], "deduplicated");
    assert_eq!(resolved.body["alerts"][1]["outcome"], "ignored");
    assert!(cases_of(&app, "fp-never").await.is_empty());
    // Its only alert resolved before any plan reached the gate: dismissed.
    assert_eq!(app.status(case_a).await, "CLOSED");
    let (actor, reason): (String, Option<String>) = sqlx::query_as(
        "SELECT actor, reason FROM case_timeline WHERE case_id = $1 AND event = 'dismiss'",
    )
    .bind(case_a)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        (actor.as_str(), reason.as_deref()),
        ("analyst", Some("resolved at source"))
    );
    // A second resolution changes nothing (the dismissal is idempotent).
    post(
        &app,
        Some(SERVICE),
        webhook(vec![alert("fp-a", "resolved", labels("critical"))]),
    )
    .await;
    let dismissals: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM case_timeline WHERE case_id = $1 AND event = 'dismiss'",
    )
    .bind(case_a)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(dismissals, 1);

    // Once the case is closed, the same alert firing again opens a new one.
    let reopened = post(
        &app,
        Some(SERVICE),
        webhook(vec![alert("fp-a", "firing", labels("critical"))]),
    )
    .await;
    assert_eq!(reopened.body["alerts"][0]["outcome"], "accepted");
    assert_eq!(cases_of(&app, "fp-a").await.len(), 2);
    assert!(app.metric("signals_deduplicated_total").await >= 2.0);
    assert!(
        app.metric("signals_received_total{source=\"alertmanager\",status=\"accepted\"}")
            .await
            >= 3.0
    );
}

#[sqlx::test]
async fn twenty_identical_webhooks_at_once_open_one_case(pool: PgPool) {
    let app = std::sync::Arc::new(TestApp::new(pool).await);
    let body = webhook(vec![alert(
        "fp-storm",
        "firing",
        json!({"alertname": "Storm", "tenant": "acme"}),
    )]);
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (app, body) = (app.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            post(&app, Some(SERVICE), body).await
        }));
    }
    let mut outcomes = Vec::new();
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, 202, "{:?}", r.body);
        outcomes.push(r.body["alerts"][0]["outcome"].as_str().unwrap().to_string());
    }
    assert_eq!(outcomes.iter().filter(|o| *o == "accepted").count(), 1);
    assert_eq!(outcomes.iter().filter(|o| *o == "deduplicated").count(), 19);
    let cases = cases_of(&app, "fp-storm").await;
    assert_eq!(cases.len(), 1);
    assert_eq!(cases[0].1, 20);
}

#[sqlx::test]
async fn one_refused_alert_does_not_lose_the_others(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let r = post(
        &app,
        Some(SERVICE),
        webhook(vec![
            alert(
                "fp-other",
                "firing",
                json!({"alertname": "X", "tenant": "globex"}),
            ),
            alert("fp-default", "firing", json!({"alertname": "X"})),
            alert(
                "fp-bad",
                "firing",
                json!({"alertname": "X", "tenant": "Not A Tenant"}),
            ),
            alert("", "firing", json!({"alertname": "X", "tenant": "acme"})),
            alert(
                "fp-ok",
                "firing",
                json!({"alertname": "X", "tenant": "acme"}),
            ),
        ]),
    )
    .await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    let outcomes: Vec<(&str, &str)> = r.body["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            (
                o["outcome"].as_str().unwrap(),
                o["reason"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(outcomes[0].0, "refused");
    assert!(
        outcomes[0].1.starts_with("tenant_forbidden"),
        "{outcomes:?}"
    );
    assert_eq!(
        outcomes[1].0, "refused",
        "the default tenant is not the token's"
    );
    assert!(outcomes[2].1.starts_with("invalid_tenant"), "{outcomes:?}");
    assert!(outcomes[3].1.starts_with("fingerprint"), "{outcomes:?}");
    assert_eq!(outcomes[4].0, "accepted");
    let cases: i64 = sqlx::query_scalar("SELECT count(*) FROM ops_case")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(cases, 1);
}

#[sqlx::test]
async fn malformed_webhooks_get_problems_and_store_nothing(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let one = || vec![alert("fp-1", "firing", json!({"tenant": "acme"}))];
    let r = post(&app, None, webhook(one())).await;
    assert_eq!((r.status, r.code()), (401, "unauthenticated"));
    let r = post(&app, Some(OPERATOR), webhook(one())).await;
    assert_eq!(
        (r.status, r.code()),
        (403, "forbidden"),
        "only service identities"
    );
    let r = post(&app, Some(SERVICE), "{\"version\": \"4\", ".into()).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    let r = post(&app, Some(SERVICE), webhook(vec![])).await;
    assert_eq!((r.status, r.code()), (422, "webhook_invalid"));
    let mut v3: Value = serde_json::from_str(&webhook(one())).unwrap();
    v3["version"] = json!("3");
    let r = post(&app, Some(SERVICE), v3.to_string()).await;
    assert_eq!((r.status, r.code()), (422, "webhook_invalid"));
    let nul = webhook(vec![alert(
        "fp-nul",
        "firing",
        json!({"tenant": "acme", "x": "a\u{0}b"}),
    )]);
    let r = post(&app, Some(SERVICE), nul).await;
    assert_eq!(
        (r.status, r.code()),
        (422, "webhook_invalid"),
        "{:?}",
        r.body
    );
    let mut bad_status: Value = serde_json::from_str(&webhook(one())).unwrap();
    bad_status["alerts"][0]["status"] = json!("smouldering");
    let r = post(&app, Some(SERVICE), bad_status.to_string()).await;
    assert_eq!(r.status, 400, "{:?}", r.body);
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM signal")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(stored, 0);
}

#[sqlx::test]
async fn low_severities_wait_and_a_resolution_after_the_gate_only_annotates(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let r = post(
        &app,
        Some(SERVICE),
        webhook(vec![alert(
            "fp-info",
            "firing",
            json!({"alertname": "Chatty", "severity": "info", "tenant": "acme"}),
        )]),
    )
    .await;
    let case: Uuid = r.body["alerts"][0]["case_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(app.status(case).await, "NEW", "info waits for a person");

    // A person takes it to the gate; then the alert resolves.
    app.event(case, OPERATOR, "start_analysis").await;
    app.event(case, ANALYST, "analysis_done").await;
    app.store_plan(case, "planner", Some(1)).await;
    let ready = app.event(case, SERVICE, "plan_ready").await;
    assert_eq!(ready.status, 200, "{:?}", ready.body);
    assert_eq!(app.status(case).await, "WAIT_GATE");
    let r = post(
        &app,
        Some(SERVICE),
        webhook(vec![alert(
            "fp-info",
            "resolved",
            json!({"alertname": "Chatty", "severity": "info", "tenant": "acme"}),
        )]),
    )
    .await;
    assert_eq!(r.body["alerts"][0]["outcome"], "deduplicated");
    assert_eq!(
        app.status(case).await,
        "WAIT_GATE",
        "a plan at the gate is not dismissed"
    );
    assert_eq!(cases_of(&app, "fp-info").await, vec![(case, 2)]);
}

#[sqlx::test]
async fn new_alerts_of_one_group_join_its_open_case(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let group = "{}:{alertname=\"DiskFull\"}";
    let labels = |host: &str| json!({"alertname": "DiskFull", "tenant": "acme", "host": host});
    let first = post(
        &app,
        Some(SERVICE),
        webhook_in_group(group, vec![alert("fp-h1", "firing", labels("h1"))]),
    )
    .await;
    let second = post(
        &app,
        Some(SERVICE),
        webhook_in_group(
            group,
            vec![
                alert("fp-h1", "firing", labels("h1")),
                alert("fp-h2", "firing", labels("h2")),
            ],
        ),
    )
    .await;
    let case = first.body["alerts"][0]["case_id"].clone();
    assert_eq!(first.body["alerts"][0]["outcome"], "accepted");
    assert_eq!(second.body["alerts"][0]["outcome"], "deduplicated");
    assert_eq!(second.body["alerts"][1]["outcome"], "grouped");
    assert_eq!(second.body["alerts"][1]["case_id"], case);
    let case: Uuid = case.as_str().unwrap().parse().unwrap();
    assert_eq!(cases_of(&app, "fp-h2").await, vec![(case, 1)]);

    // The case is dismissed only when both of its alerts resolved.
    post(
        &app,
        Some(SERVICE),
        webhook_in_group(group, vec![alert("fp-h1", "resolved", labels("h1"))]),
    )
    .await;
    assert_ne!(app.status(case).await, "CLOSED", "h2 still fires");
    post(
        &app,
        Some(SERVICE),
        webhook_in_group(group, vec![alert("fp-h2", "resolved", labels("h2"))]),
    )
    .await;
    assert_eq!(app.status(case).await, "CLOSED");
}

/// The analyst's findings name the other alerts firing in the tenant (#16
/// deliverable 5, first part): what else is burning around this case.
#[sqlx::test]
async fn findings_name_the_other_alerts_firing_in_the_tenant(pool: PgPool) {
    let lp = crate::flow::Loop::full(pool).await;
    let app = &lp.app;
    let labels = |name: &str| json!({"alertname": name, "severity": "critical", "tenant": "acme", "service": "checkout"});
    let a = post(
        app,
        Some(SERVICE),
        webhook(vec![alert("fp-api", "firing", labels("ApiErrors"))]),
    )
    .await;
    let b = post(
        app,
        Some(SERVICE),
        webhook(vec![alert("fp-db", "firing", labels("DbSlow"))]),
    )
    .await;
    let case_a: Uuid = a.body["alerts"][0]["case_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let case_b = b.body["alerts"][0]["case_id"].clone();
    lp.settle().await;
    let correlated: Value = sqlx::query_scalar(
        "SELECT meta #> '{fact,findings,correlated}' FROM case_timeline \
         WHERE case_id = $1 AND event = 'analysis_done' AND kind = 'transition'",
    )
    .bind(case_a)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    let others = correlated.as_array().expect("correlated alerts");
    assert!(
        others.iter().any(|o| o["case_id"] == case_b
            && o["fingerprint"] == "fp-db"
            && o["alertname"] == "DbSlow"),
        "{correlated}"
    );
    assert!(
        others.iter().all(|o| o["case_id"] != case_a.to_string()),
        "not itself"
    );
}
