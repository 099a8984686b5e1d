use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use opsloop::orchestrator::{Actor, Answer, FaultPoints, Origin, Outcome, TransitionRequest};
use sqlx::PgPool;

use crate::helpers::*;

/// Fails the transaction after the timeline insert while armed.
struct Armed(Arc<AtomicBool>);

impl FaultPoints for Armed {
    // The point sits between the locked path's writes.
    fn locked_only(&self) -> bool {
        true
    }

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

/// Runs `interfere` once, between the read and the write of a one-statement
/// transition, and counts the writes it sent down the locked path.
#[derive(Default)]
struct InBetween {
    interfere: std::sync::Mutex<Option<futures::future::BoxFuture<'static, ()>>>,
    refused: std::sync::atomic::AtomicUsize,
}

impl FaultPoints for InBetween {
    fn before_unlocked_write(&self) -> futures::future::BoxFuture<'static, ()> {
        let once = self.interfere.lock().unwrap().take();
        Box::pin(async move {
            if let Some(f) = once {
                f.await;
            }
        })
    }

    fn refused(&self) {
        self.refused.fetch_add(1, Ordering::SeqCst);
    }
}

impl InBetween {
    /// Runs `interfere` between the read and the write of the next
    /// one-statement transition.
    fn before_next_write(&self, interfere: impl std::future::Future<Output = ()> + Send + 'static) {
        *self.interfere.lock().unwrap() = Some(Box::pin(interfere));
    }
}

#[sqlx::test]
async fn a_failure_inside_the_one_statement_write_leaves_no_trace(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let case = app.create_case().await;
    // The outbox insert is the statement's last write: the case update, the
    // timeline entry and the idempotency claim before it must go with it.
    sqlx::raw_sql(
        "CREATE FUNCTION refuse_outbox() RETURNS trigger LANGUAGE plpgsql AS \
         $$BEGIN RAISE EXCEPTION 'outbox disk on fire'; END$$; \
         CREATE TRIGGER refuse_outbox BEFORE INSERT ON outbox \
         FOR EACH ROW EXECUTE FUNCTION refuse_outbox()",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    let r = app.event(case, OPERATOR, "start_analysis").await;
    assert_eq!((r.status, r.code()), (500, "internal_error"));
    assert_eq!(app.status(case).await, "NEW");
    assert_eq!(app.timeline(case).await.len(), 1, "only the created entry");
    let (keys, version, lock_seq): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM idempotency), version, lock_seq FROM ops_case WHERE id = $1",
    )
    .bind(case)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        (keys, version, lock_seq),
        (0, 1, 0),
        "no claim, no new version, and the case was never locked: the failure was the one statement's"
    );

    sqlx::raw_sql("DROP TRIGGER refuse_outbox ON outbox")
        .execute(&app.pool)
        .await
        .unwrap();
    let r = app.event(case, OPERATOR, "start_analysis").await;
    assert_eq!(r.status, 200, "the case still works after the failure");
}

#[sqlx::test]
async fn a_transition_between_the_read_and_the_write_sends_the_request_down_the_locked_path(
    pool: PgPool,
) {
    let faults = Arc::new(InBetween::default());
    let app = TestApp::with_faults(pool.clone(), faults.clone()).await;
    let case = app.create_case().await;
    // Another request moves the case after this one read it as NEW.
    let other = app.orchestrator.clone();
    faults.before_next_write(async move {
        let moved = other
            .transition(TransitionRequest {
                case_id: case,
                tenants: opsloop::auth::TenantScope::All,
                event: opsloop::workflow::EventKind::StartAnalysis,
                actor: Actor {
                    id: "someone-else".into(),
                    human: true,
                },
                reason: None,
                plan_hash: None,
                dryrun_digest: None,
                meta: serde_json::Value::Null,
                expected_version: None,
                origin: Origin::Direct,
                trace_id: "0af7651916cd43dd8448eb211c80319c".into(),
            })
            .await
            .unwrap();
        assert!(matches!(moved, Outcome::Answered(Answer::Applied { .. })));
    });
    let r = app.event(case, OPERATOR, "start_analysis").await;
    assert_eq!(
        (r.status, r.code()),
        (409, "illegal_transition"),
        "decided again on the case as it now is: {}",
        r.body
    );
    assert_eq!(faults.refused.load(Ordering::SeqCst), 1);
    assert_eq!(app.status(case).await, "ANALYZING");
    let kinds: Vec<String> = app.timeline(case).await.into_iter().map(|e| e.0).collect();
    assert_eq!(kinds, ["created", "transition", "rejected"]);
    let keys: i64 = sqlx::query_scalar("SELECT count(*) FROM idempotency")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(
        keys, 1,
        "one claim: the locked path's, with its stored rejection"
    );
}

#[sqlx::test]
async fn a_case_lock_between_the_read_and_the_write_sends_the_request_down_the_locked_path(
    pool: PgPool,
) {
    let faults = Arc::new(InBetween::default());
    let app = TestApp::with_faults(pool.clone(), faults.clone()).await;
    let case = app.create_case().await;
    // A writer that only locks the case (a worker storing its result)
    // leaves its version alone: the write must still see it came between.
    let locker = pool.clone();
    faults.before_next_write(async move {
        let mut tx = locker.begin().await.unwrap();
        let locked = opsloop::store::lock_case(&mut tx, case).await.unwrap();
        assert_eq!(locked.map(|c| c.version), Some(1));
        tx.commit().await.unwrap();
    });
    let r = app.event(case, OPERATOR, "start_analysis").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(faults.refused.load(Ordering::SeqCst), 1, "refused once");
    assert_eq!(app.status(case).await, "ANALYZING");
    assert_eq!(app.timeline(case).await.len(), 2);

    // Without anyone in between, the next request is written in one go.
    let r = app.event(case, OPERATOR, "dismiss").await;
    assert_eq!(r.status, 422, "a dismissal needs a reason: {}", r.body);
    let r = app
        .patch(
            case,
            OPERATOR,
            &uuid::Uuid::new_v4().to_string(),
            serde_json::json!({"event": "dismiss", "reason": "a test"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        faults.refused.load(Ordering::SeqCst),
        1,
        "not refused again"
    );
}

#[sqlx::test]
async fn a_case_lock_still_held_when_the_write_comes_makes_it_wait_and_refuse(pool: PgPool) {
    let faults = Arc::new(InBetween::default());
    let app = TestApp::with_faults(pool.clone(), faults.clone()).await;
    let case = app.create_case().await;
    // The locker takes the case after the read and commits only while the
    // write waits for it: the update must re-check the row it waited for.
    let locker = pool.clone();
    let (locked_tx, locked_rx) = tokio::sync::oneshot::channel();
    faults.before_next_write(async move {
        tokio::spawn(async move {
            let mut tx = locker.begin().await.unwrap();
            opsloop::store::lock_case(&mut tx, case).await.unwrap();
            locked_tx.send(()).unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            tx.commit().await.unwrap();
        });
        locked_rx.await.unwrap();
    });
    let started = std::time::Instant::now();
    let r = app.event(case, OPERATOR, "start_analysis").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(400),
        "the write waited for the lock holder"
    );
    assert_eq!(faults.refused.load(Ordering::SeqCst), 1, "refused once");
    assert_eq!(app.status(case).await, "ANALYZING");
    assert_eq!(app.timeline(case).await.len(), 2);
}
