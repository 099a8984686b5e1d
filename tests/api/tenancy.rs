//! Tenant isolation (issue #13): every role × its own / another tenant ×
//! every endpoint, with the expected status in one table.
//!
//! The rule the table encodes: another tenant's resource addressed by id
//! answers exactly what an id that exists nowhere answers (same status, same
//! problem `code`, also with `If-Match`); naming a tenant you lack in a
//! write (or a list filter) is 403 `tenant_forbidden`.

use reqwest::Method;
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use crate::helpers::{ADMIN, ANALYST, APPROVER, OPERATOR, SERVICE, TestApp, TestResponse, VIEWER};

const OTHER: &str = "t-002";

#[derive(Debug, Clone, Copy)]
enum Endpoint {
    Read,
    Timeline,
    Executions,
    Provenance,
    Approvals,
    Plan,
    /// `dismiss` with `If-Match` at the case's version.
    Transition,
    /// `dismiss` with an `If-Match` the case is not at.
    TransitionStale,
    ProposePlan,
    /// `GET /cases`: own = the unfiltered list; other = `?tenant=t-002`.
    List,
    /// `POST /case` for the tenant.
    Create,
    /// `POST /metrics/ingest` with a row of the tenant.
    Ingest,
}

use Endpoint as E;

/// (endpoint, token, status for the own tenant, status for the other).
const MATRIX: &[(Endpoint, &str, u16, u16)] = &[
    (E::Read, VIEWER, 200, 404),
    (E::Read, OPERATOR, 200, 404),
    (E::Read, APPROVER, 200, 404),
    (E::Read, SERVICE, 200, 404),
    (E::Read, ADMIN, 200, 200),
    (E::Timeline, VIEWER, 200, 404),
    (E::Timeline, OPERATOR, 200, 404),
    (E::Timeline, APPROVER, 200, 404),
    (E::Timeline, SERVICE, 200, 404),
    (E::Timeline, ADMIN, 200, 200),
    (E::Executions, VIEWER, 200, 404),
    (E::Executions, OPERATOR, 200, 404),
    (E::Executions, APPROVER, 200, 404),
    (E::Executions, SERVICE, 200, 404),
    (E::Executions, ADMIN, 200, 200),
    (E::Provenance, VIEWER, 200, 404),
    (E::Provenance, OPERATOR, 200, 404),
    (E::Provenance, SERVICE, 200, 404),
    (E::Provenance, ADMIN, 200, 200),
    (E::Approvals, VIEWER, 200, 404),
    (E::Approvals, APPROVER, 200, 404),
    (E::Approvals, SERVICE, 200, 404),
    (E::Approvals, ADMIN, 200, 200),
    (E::Plan, VIEWER, 200, 404),
    (E::Plan, OPERATOR, 200, 404),
    (E::Plan, APPROVER, 200, 404),
    (E::Plan, SERVICE, 200, 404),
    (E::Plan, ADMIN, 200, 200),
    // Roles that may not send the event are refused before any case is
    // looked up: 403 for every id, which leaks nothing.
    (E::Transition, VIEWER, 403, 403),
    (E::Transition, OPERATOR, 200, 404),
    (E::Transition, APPROVER, 403, 403),
    // `dismiss` is a person's (or the analyst's) event, not the planner's.
    (E::Transition, SERVICE, 403, 403),
    (E::Transition, ANALYST, 200, 404),
    (E::Transition, ADMIN, 200, 200),
    (E::TransitionStale, OPERATOR, 412, 404),
    (E::TransitionStale, ANALYST, 412, 404),
    (E::TransitionStale, ADMIN, 412, 412),
    (E::ProposePlan, VIEWER, 403, 403),
    (E::ProposePlan, OPERATOR, 409, 404),
    (E::ProposePlan, APPROVER, 403, 403),
    (E::ProposePlan, SERVICE, 403, 403),
    (E::ProposePlan, ADMIN, 409, 409),
    (E::List, VIEWER, 200, 403),
    (E::List, OPERATOR, 200, 403),
    (E::List, APPROVER, 200, 403),
    (E::List, SERVICE, 200, 403),
    (E::List, ADMIN, 200, 200),
    (E::Create, VIEWER, 403, 403),
    (E::Create, OPERATOR, 201, 403),
    (E::Create, APPROVER, 403, 403),
    (E::Create, SERVICE, 201, 403),
    (E::Create, ADMIN, 201, 201),
    (E::Ingest, VIEWER, 403, 403),
    (E::Ingest, OPERATOR, 202, 403),
    (E::Ingest, APPROVER, 403, 403),
    (E::Ingest, SERVICE, 202, 403),
    (E::Ingest, ADMIN, 202, 202),
];

/// A case of `tenant` in NEW with a stored plan, made by the admin.
async fn case_of(app: &TestApp, tenant: &str) -> Uuid {
    let r = app
        .send(
            Method::POST,
            "/case",
            Some(ADMIN),
            &[],
            Some(json!({"title": "p95 breach on checkout", "tenant": tenant}).to_string()),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let id = r.body["id"].as_str().unwrap().parse().unwrap();
    app.store_plan(id, "planner", Some(1)).await;
    id
}

fn ingest_body(tenant: &str) -> String {
    let minute = chrono::Utc::now()
        .duration_trunc(chrono::TimeDelta::minutes(1))
        .unwrap();
    json!({"rows": [{"bucket": minute.to_rfc3339(), "tenant": tenant, "resource": "checkout",
                      "metric": "latency_p95_ms", "avg": 120.0, "max": 300.0, "p95": 250.0}]})
    .to_string()
}

use chrono::DurationRound;

/// One request of `endpoint` about `case` (of `tenant`) as `token`.
async fn call(
    app: &TestApp,
    endpoint: Endpoint,
    token: &str,
    case: Uuid,
    tenant: &str,
) -> TestResponse {
    let key = Uuid::new_v4().to_string();
    let dismiss = json!({"event": "dismiss", "reason": "duplicate of another case"}).to_string();
    let (method, path, headers, body): (Method, String, Vec<(&str, &str)>, Option<String>) =
        match endpoint {
            E::Read => (Method::GET, format!("/case/{case}"), vec![], None),
            E::Timeline => (Method::GET, format!("/case/{case}/timeline"), vec![], None),
            E::Executions => (
                Method::GET,
                format!("/case/{case}/executions"),
                vec![],
                None,
            ),
            E::Provenance => (
                Method::GET,
                format!("/case/{case}/provenance"),
                vec![],
                None,
            ),
            E::Approvals => (Method::GET, format!("/case/{case}/approvals"), vec![], None),
            E::Plan => (Method::GET, format!("/case/{case}/plan"), vec![], None),
            E::Transition => (
                Method::PATCH,
                format!("/case/{case}/transition"),
                vec![("idempotency-key", &key), ("if-match", "\"1\"")],
                Some(dismiss),
            ),
            E::TransitionStale => (
                Method::PATCH,
                format!("/case/{case}/transition"),
                vec![("idempotency-key", &key), ("if-match", "\"7\"")],
                Some(dismiss),
            ),
            E::ProposePlan => (
                Method::POST,
                format!("/case/{case}/plan"),
                vec![],
                Some(crate::plans::plan().to_string()),
            ),
            E::List if tenant == OTHER => {
                (Method::GET, format!("/cases?tenant={tenant}"), vec![], None)
            }
            E::List => (Method::GET, "/cases?limit=200".into(), vec![], None),
            E::Create => (
                Method::POST,
                "/case".into(),
                vec![],
                Some(json!({"title": "disk full", "tenant": tenant}).to_string()),
            ),
            E::Ingest => (
                Method::POST,
                "/metrics/ingest".into(),
                vec![],
                Some(ingest_body(tenant)),
            ),
        };
    app.send(method, &path, Some(token), &headers, body).await
}

fn ids(list: &Value) -> Vec<String> {
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_string())
        .collect()
}

#[sqlx::test]
async fn every_role_sees_and_touches_its_own_tenants_only(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let mut failures = Vec::new();
    for &(endpoint, token, own_status, other_status) in MATRIX {
        let own = case_of(&app, "t-001").await;
        let other = case_of(&app, OTHER).await;
        let mine = call(&app, endpoint, token, own, "t-001").await;
        let theirs = call(&app, endpoint, token, other, OTHER).await;
        if mine.status != own_status || theirs.status != other_status {
            failures.push(format!(
                "{endpoint:?} as {token}: own {} (want {own_status}) {}, other {} (want {other_status}) {}",
                mine.status, mine.body, theirs.status, theirs.body
            ));
            continue;
        }
        // Addressed by id, another tenant's case is indistinguishable from
        // one that does not exist.
        if theirs.status == 404 {
            let nowhere = call(&app, endpoint, token, Uuid::now_v7(), OTHER).await;
            if (nowhere.status, nowhere.code()) != (theirs.status, theirs.code()) {
                failures.push(format!(
                    "{endpoint:?} as {token}: other tenant {} {:?}, unknown id {} {:?}",
                    theirs.status,
                    theirs.code(),
                    nowhere.status,
                    nowhere.code()
                ));
            }
        }
        if theirs.status == 403 && matches!(endpoint, E::List | E::Create | E::Ingest) {
            let refused_for_tenant = theirs.code() == "tenant_forbidden";
            let refused_for_role = mine.status == 403 && theirs.code() == "forbidden";
            if !(refused_for_tenant || refused_for_role) {
                failures.push(format!("{endpoint:?} as {token}: code {}", theirs.code()));
            }
        }
        if matches!(endpoint, E::List) && mine.status == 200 {
            let listed = ids(&mine.body);
            let sees_other = listed.contains(&other.to_string());
            if !listed.contains(&own.to_string()) || sees_other != (token == ADMIN) {
                failures.push(format!(
                    "List as {token}: own or other tenant's case misplaced"
                ));
            }
        }
        if matches!(endpoint, E::Transition) && theirs.status != 200 {
            assert_eq!(app.status(other).await, "NEW", "refused, so untouched");
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cells differ:\n{}",
        failures.len(),
        MATRIX.len(),
        failures.join("\n")
    );
}

/// A page of the list never holds another tenant's case, whatever the
/// filters: the scope is in the query, so paging cannot skip past it.
#[sqlx::test]
async fn lists_page_through_own_tenants_only(pool: PgPool) {
    let app = TestApp::new(pool).await;
    for i in 0..6 {
        case_of(&app, if i % 2 == 0 { "t-001" } else { OTHER }).await;
    }
    let mut seen = Vec::new();
    let mut path = "/cases?limit=2".to_string();
    loop {
        let r = app.send(Method::GET, &path, Some(VIEWER), &[], None).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        for c in r.body["items"].as_array().unwrap() {
            assert_eq!(c["tenant"], "t-001", "{c}");
            seen.push(c["id"].clone());
        }
        match r.body["next_cursor"].as_str() {
            Some(cursor) => path = format!("/cases?limit=2&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(seen.len(), 3);
}
