use serde_json::json;
use sqlx::PgPool;

use crate::helpers::*;

async fn waiting_for_gate(
    app: &TestApp,
    author: &str,
    required: Option<i16>,
) -> (uuid::Uuid, String) {
    let case = app.case_in("PLANNING").await;
    let hash = app.store_plan(case, author, required).await;
    let r = app.event(case, SERVICE, "plan_ready").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    (case, hash)
}

#[sqlx::test]
async fn a_stored_plan_moves_to_the_gate_with_its_hash(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let (case, hash) = waiting_for_gate(&app, "planner", Some(1)).await;
    assert_eq!(app.status(case).await, "WAIT_GATE");
    let payload = app
        .outbox_payloads(case, "cmd.exec.dryrun")
        .await
        .pop()
        .unwrap();
    assert_eq!(payload["data"]["plan_hash"], hash);
}

#[sqlx::test]
async fn a_human_approval_binds_to_the_current_plan_hash(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let (case, old_hash) = waiting_for_gate(&app, "planner", Some(1)).await;
    let r = app
        .patch(case, APPROVER, "g-0", json!({"event": "gate_approved"}))
        .await;
    assert_eq!(
        (r.status, r.code()),
        (400, "invalid_field"),
        "plan_hash is required"
    );

    // The plan changes after the approver looked at it: the old hash counts for nothing.
    let new_hash = app.store_plan(case, "planner", Some(1)).await;
    let r = app
        .patch(
            case,
            APPROVER,
            "g-1",
            json!({"event": "gate_approved", "plan_hash": old_hash}),
        )
        .await;
    assert_eq!((r.status, r.code()), (422, "guard_failed"));
    let guards: Vec<&str> = r.body["guards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["guard"].as_str().unwrap())
        .collect();
    assert_eq!(
        guards,
        ["judged_plan_is_current", "approval_for_current_plan"]
    );
    assert_eq!(app.status(case).await, "WAIT_GATE");

    let r = app
        .patch(
            case,
            APPROVER,
            "g-2",
            json!({"event": "gate_approved", "plan_hash": new_hash}),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["case"]["status"], "EXECUTING");
    let subjects = app.outbox_subjects(case).await;
    assert_eq!(
        subjects.last().map(String::as_str),
        Some("evt.case.transition.v1")
    );
    assert!(subjects.iter().any(|s| s == "cmd.exec.run"));
    let approvers: Vec<(String, String)> =
        sqlx::query_as("SELECT approver, plan_hash FROM plan_approved ORDER BY decided_at")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(approvers, [("bob".to_string(), new_hash)]);
}

#[sqlx::test]
async fn the_author_cannot_approve_their_own_plan(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let (case, hash) = waiting_for_gate(&app, "bob", Some(1)).await;
    let r = app
        .patch(
            case,
            APPROVER,
            "self",
            json!({"event": "gate_approved", "plan_hash": hash}),
        )
        .await;
    assert_eq!((r.status, r.code()), (422, "guard_failed"));
    assert_eq!(r.body["guards"][0]["guard"], "approver_is_not_author");
    assert_eq!(app.status(case).await, "WAIT_GATE");
}

/// A first approval of two is a success: an accepted `gate_vote` (202,
/// the count), announced on the feed; its replay is the same 202; the same
/// person again is 200 with the count unchanged and records nothing; the
/// second person opens the gate. No conflict is counted.
#[sqlx::test]
async fn a_quorum_of_two_needs_two_distinct_approvers(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let (case, hash) = waiting_for_gate(&app, "planner", Some(2)).await;
    let version = |r: &TestResponse| r.body["case"]["version"].as_i64().unwrap();
    let body = json!({"event": "gate_approved", "plan_hash": hash});
    let first = app.patch(case, APPROVER, "q-1", body.clone()).await;
    assert_eq!(first.status, 202, "{:?}", first.body);
    assert_eq!(
        first.body["approvals"],
        json!({"count": 1, "required": 2, "missing": 1})
    );
    assert_eq!(first.body["transition"]["event"], "gate_vote");
    assert_eq!(first.body["case"]["status"], "WAIT_GATE");
    let replay = app.patch(case, APPROVER, "q-1", body.clone()).await;
    assert_eq!((replay.status, &replay.body), (202, &first.body));
    let vote = app.outbox_payloads(case, "evt.gate.vote.v1").await;
    assert_eq!(vote.len(), 1, "{vote:?}");
    assert_eq!(
        (&vote[0]["data"]["approver"], &vote[0]["data"]["missing"]),
        (&json!("bob"), &json!(1))
    );

    let again = app.patch(case, APPROVER, "q-2", body.clone()).await;
    assert_eq!(again.status, 200, "{:?}", again.body);
    assert_eq!(
        again.body["approvals"]["count"], 1,
        "the same approver twice is still one"
    );
    assert_eq!(version(&again), version(&first), "nothing recorded");
    assert_eq!(
        app.timeline(case).await.len(),
        5,
        "created, 3 moves, the vote"
    );
    let replay = app.patch(case, APPROVER, "q-2", body.clone()).await;
    assert_eq!((replay.status, &replay.body), (200, &again.body));
    assert_eq!(app.status(case).await, "WAIT_GATE");
    // Neither vote was a refusal. (Per case: `conflict_total` is one
    // registry for the whole test binary, and tests run side by side.)
    let refused: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM case_timeline WHERE case_id = $1 AND kind = 'rejected'",
    )
    .bind(case)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(refused, 0);

    let r = app.patch(case, APPROVER2, "q-3", body).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(app.status(case).await, "EXECUTING");
    let listed = app
        .send(
            axum::http::Method::GET,
            &format!("/case/{case}/approvals"),
            Some(VIEWER),
            &[],
            None,
        )
        .await;
    assert_eq!(listed.status, 200, "{:?}", listed.body);
    let who: Vec<(&str, &str)> = listed.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["approver"].as_str().unwrap(),
                a["plan_hash"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(who, [("bob", hash.as_str()), ("carol", hash.as_str())]);
}

#[sqlx::test]
async fn a_service_cannot_open_the_gate_without_an_automatic_approval(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let (case, hash) = waiting_for_gate(&app, "planner", Some(1)).await;
    // Only the gatekeeper's identity gives a service's verdict at all.
    let r = app
        .patch(
            case,
            SERVICE,
            "planner-open",
            json!({"event": "gate_approved", "plan_hash": hash}),
        )
        .await;
    assert_eq!((r.status, r.code()), (403, "forbidden"));
    let r = app
        .patch(
            case,
            GATEKEEPER,
            "svc-open",
            json!({"event": "gate_approved", "plan_hash": hash}),
        )
        .await;
    assert_eq!((r.status, r.code()), (422, "guard_failed"));
    assert_eq!(app.status(case).await, "WAIT_GATE");
    // Nothing ran: the executor has no run to report.
    let r = app.event(case, EXECUTOR, "exec_done").await;
    assert_eq!(r.status, 400, "{:?}", r.body);
    assert_eq!(app.status(case).await, "WAIT_GATE");
}

#[sqlx::test]
async fn a_rejection_parks_the_case(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let (case, hash) = waiting_for_gate(&app, "planner", Some(1)).await;
    let r = app
        .patch(
            case,
            APPROVER,
            "rej",
            json!({"event": "gate_rejected", "plan_hash": hash, "reason": "touches prod db"}),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["case"]["status"], "PARKED");
    assert_eq!(r.body["case"]["park_reason"], "touches prod db");
}

#[sqlx::test]
async fn no_person_opens_a_gate_the_gatekeeper_has_not_evaluated(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let (case, hash) = waiting_for_gate(&app, "planner", None).await;
    let r = app
        .patch(
            case,
            APPROVER,
            "early",
            json!({"event": "gate_approved", "plan_hash": hash}),
        )
        .await;
    assert_eq!((r.status, r.code()), (422, "guard_failed"));
    assert!(
        r.body["detail"].as_str().unwrap().contains("not evaluated"),
        "{:?}",
        r.body
    );
    assert_eq!(app.status(case).await, "WAIT_GATE");
}

#[sqlx::test]
async fn an_approval_outside_the_gate_is_refused_and_not_recorded(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let case = app.case_in("PLANNING").await;
    let hash = app.store_plan(case, "planner", Some(1)).await;
    let r = app
        .patch(
            case,
            APPROVER,
            "too-soon",
            json!({"event": "gate_approved", "plan_hash": hash}),
        )
        .await;
    assert_eq!(r.code(), "illegal_transition");
    let approvals: i64 = sqlx::query_scalar("SELECT count(*) FROM plan_approved")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(
        approvals, 0,
        "a refused request has no effect besides its timeline entry"
    );

    // At the gate, a request refused for another reason records nothing either.
    app.event(case, SERVICE, "plan_ready").await;
    let r = app
        .patch(
            case,
            APPROVER,
            "stale",
            json!({"event": "gate_approved", "plan_hash": "0".repeat(64)}),
        )
        .await;
    assert_eq!(r.status, 422);
    let approvals: i64 = sqlx::query_scalar("SELECT count(*) FROM plan_approved")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(approvals, 0);
}

/// Every gate verdict over HTTP names the plan it judges, a service's too:
/// without one it is refused, and a verdict on a plan that is no longer
/// the current one is stale and changes nothing.
#[sqlx::test]
async fn a_services_gate_verdict_names_the_current_plan(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let (case, older) = waiting_for_gate(&app, "planner", Some(1)).await;
    let r = app.event(case, GATEKEEPER, "gate_rejected").await;
    assert_eq!((r.status, r.code()), (400, "invalid_field"), "{:?}", r.body);
    assert_eq!(app.status(case).await, "WAIT_GATE");

    // A newer plan replaces the one the verdict names.
    let current = app.store_plan(case, "planner", Some(1)).await;
    let verdict = |hash: &str, key: &str| {
        let (app, hash, key) = (&app, hash.to_string(), key.to_string());
        async move {
            app.patch(
                case,
                GATEKEEPER,
                &key,
                json!({"event": "gate_rejected", "plan_hash": hash, "reason": "denied"}),
            )
            .await
        }
    };
    let r = verdict(&older, "v-old").await;
    assert_eq!((r.status, r.code()), (409, "stale_fact"), "{:?}", r.body);
    assert_eq!(app.status(case).await, "WAIT_GATE");
    let r = verdict(&current, "v-current").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(app.status(case).await, "PARKED");
}

/// `verify_failed` parks the case and may roll the change back: it needs
/// its evidence, a recorded verification result of this attempt that did
/// not pass. Without one it is refused and nothing rolls back.
#[sqlx::test]
async fn verify_failed_without_a_recorded_failure_is_refused(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let (case, hash) = waiting_for_gate(&app, "planner", Some(1)).await;
    let r = app
        .patch(
            case,
            APPROVER,
            "ok",
            json!({"event": "gate_approved", "plan_hash": hash}),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    // The run of this attempt finished, as the executor records it.
    let run = uuid::Uuid::now_v7();
    sqlx::query(
        "INSERT INTO exec_run (id, case_id, plan_hash, kind, attempt_id, case_version, status, finished_at) \
         SELECT $1, id, $2, 'run', $3, version, 'done', now() FROM ops_case WHERE id = $4",
    )
    .bind(run)
    .bind(&hash)
    .bind(uuid::Uuid::now_v7())
    .bind(case)
    .execute(&app.pool)
    .await
    .unwrap();
    // Over HTTP the executor names the run it reports: without it, 400;
    // a run that is not this case's, 422.
    let r = app.event(case, EXECUTOR, "exec_done").await;
    assert_eq!((r.status, r.code()), (400, "invalid_field"), "{:?}", r.body);
    let done = |run: uuid::Uuid| json!({"event": "exec_done", "evidence": {"exec_run_id": run}});
    let r = app
        .patch(case, EXECUTOR, "other-run", done(uuid::Uuid::now_v7()))
        .await;
    assert_eq!(
        (r.status, r.code()),
        (422, "evidence_invalid"),
        "{:?}",
        r.body
    );
    let r = app.patch(case, EXECUTOR, "the-run", done(run)).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(app.status(case).await, "VERIFYING");

    // Over HTTP the verifier names its evidence; without it, 400.
    let r = app.event(case, VERIFIER, "verify_failed").await;
    assert_eq!((r.status, r.code()), (400, "invalid_field"), "{:?}", r.body);
    // Evidence that is no recorded result of this case is refused.
    let r = app
        .patch(
            case,
            VERIFIER,
            "no-such-result",
            json!({"event": "verify_failed", "evidence": {"verify_result_id": uuid::Uuid::now_v7()}}),
        )
        .await;
    assert_eq!(
        (r.status, r.code()),
        (422, "evidence_invalid"),
        "{:?}",
        r.body
    );
    assert_eq!(app.status(case).await, "VERIFYING");
    assert!(
        !app.outbox_subjects(case)
            .await
            .contains(&"cmd.exec.rollback".to_string())
    );
}

/// A change freeze that began after the gate's verdict is a guard on
/// `gate_approved`: a person's approval inside it is refused (and not
/// recorded) unless the gate approved a break-glass override.
#[sqlx::test]
async fn no_approval_opens_the_gate_inside_a_change_freeze(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let (case, hash) = waiting_for_gate(&app, "planner", Some(1)).await;
    let freeze = freeze_now("release-freeze");
    let mut state = app.state.clone();
    let mut policy = crate::flow::policy();
    policy.freeze_windows = vec![freeze];
    state.orchestrator = opsloop::orchestrator::Orchestrator::new(app.pool.clone())
        .with_policy(std::sync::Arc::new(policy));
    let frozen = TestServer::start(opsloop::api::app(state)).await;
    let r = app
        .http
        .patch(format!("{}/case/{case}/transition", frozen.url))
        .bearer_auth(APPROVER)
        .header("idempotency-key", "in-freeze")
        .json(&json!({"event": "gate_approved", "plan_hash": hash}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 422);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(
        body["detail"].as_str().unwrap().contains("release-freeze"),
        "{body}"
    );
    assert_eq!(app.status(case).await, "WAIT_GATE");
    let approvals: i64 = sqlx::query_scalar("SELECT count(*) FROM plan_approved")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(approvals, 0);
}
