use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use opsloop::orchestrator::FaultPoints;
use sqlx::PgPool;

use crate::helpers::*;

/// Fails the transaction after the timeline insert while armed.
struct Armed(Arc<AtomicBool>);

impl FaultPoints for Armed {
    fn after_timeline_insert(&self) -> std::io::Result<()> {
        if self.0.load(Ordering::SeqCst) {
            Err(std::io::Error::other("disk on fire"))
        } else {
            Ok(())
        }
    }
}

#[sqlx::test]
async fn a_fault_after_the_timeline_insert_leaves_no_trace(pool: PgPool) {
    let armed = Arc::new(AtomicBool::new(false));
    let app = TestApp::with_faults(pool, Arc::new(Armed(armed.clone()))).await;
    let case = app.create_case().await;
    armed.store(true, Ordering::SeqCst);
    let r = app.event(case, OPERATOR, "start_analysis").await;
    assert_eq!((r.status, r.code()), (500, "internal_error"));
    assert_eq!(
        r.body["detail"], "internal error",
        "no internals leak to clients"
    );
    assert_eq!(app.status(case).await, "NEW");
    assert_eq!(app.timeline(case).await.len(), 1, "only the created entry");
    assert_eq!(
        app.outbox_subjects(case).await,
        ["evt.case.created.v1"],
        "only the creation's event"
    );
    let keys: i64 = sqlx::query_scalar("SELECT count(*) FROM idempotency")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(keys, 0, "the idempotency claim rolled back too");
    let version: i64 = sqlx::query_scalar("SELECT version FROM ops_case WHERE id = $1")
        .bind(case)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(version, 1);

    armed.store(false, Ordering::SeqCst);
    let r = app.event(case, OPERATOR, "start_analysis").await;
    assert_eq!(r.status, 200, "the case still works after the fault");
}
