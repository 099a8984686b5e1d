use opsloop::workflow::{self, EventKind, Facts, Status};
use serde_json::json;
use sqlx::PgPool;

use crate::helpers::*;

/// DESIGN §2: replaying a case's accepted timeline entries through `decide`
/// from NEW reproduces its current status (facts are stored with each entry).
#[sqlx::test]
async fn replaying_the_stored_timeline_reproduces_the_status(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let case = app.case_in("PARKED").await;
    app.event(case, OPERATOR, "resume").await;
    app.event(case, SERVICE, "plan_ready").await; // rejected: no plan
    let hash = app.store_plan(case, "planner", Some(1)).await;
    app.event(case, SERVICE, "plan_ready").await;
    app.patch(
        case,
        APPROVER,
        "judge",
        json!({"event": "gate_approved", "plan_hash": hash}),
    )
    .await;
    assert_eq!(app.status(case).await, "EXECUTING");

    let rows: Vec<(String, serde_json::Value)> = sqlx::query_as(
        "SELECT event, meta FROM case_timeline WHERE case_id = $1 AND kind = 'transition' ORDER BY seq",
    )
    .bind(case)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let entries: Vec<(EventKind, Facts)> = rows
        .into_iter()
        .map(|(e, meta)| {
            (
                e.parse().unwrap(),
                serde_json::from_value(meta["facts"].clone()).unwrap(),
            )
        })
        .collect();
    assert_eq!(entries.len(), 6);
    let replayed = workflow::replay(entries.iter().map(|(e, f)| (*e, f))).unwrap();
    assert_eq!(replayed, Status::Executing);
    assert_eq!(replayed.to_string(), app.status(case).await);
}
