//! The dry run before the gate, over the real NATS and PostgreSQL: what a
//! plan that cannot be rehearsed does, and how an approval binds to the dry
//! run it judged (an older one does not count, a new one voids the votes).

use chrono::Utc;
use opsloop::pubsub::Envelope;
use opsloop::pubsub::consumer::{Delivery, Disposition, Handler};
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use crate::flow::Loop;
use crate::helpers::*;

/// A low-risk plan (a rollback, two steps) running `script` with `args`.
fn plan(environment: &str, script: &str, args: &[&str]) -> Value {
    json!({
        "title": "run it", "environment": environment,
        "steps": [{"action": "noop", "timeout_s": 10, "retry": 0},
                  {"action": "script.exec", "params": {"script": script, "args": args},
                   "timeout_s": 10, "retry": 0}],
        "rollback": {"steps": [{"action": "noop", "timeout_s": 10, "retry": 0}]},
        "verify": {"checks": []}
    })
}

fn prod_plan() -> Value {
    plan("prod", "restart-service.sh", &["--service", "checkout"])
}

/// One `PATCH /case/{case}/transition` as `who`, under a fresh key.
async fn patch_once(lp: &Loop, case: Uuid, who: &str, body: Value) -> TestResponse {
    lp.app
        .patch(case, who, &Uuid::new_v4().to_string(), body)
        .await
}

async fn approve(lp: &Loop, case: Uuid, who: &str, hash: &str, digest: &Value) -> TestResponse {
    patch_once(
        lp,
        case,
        who,
        json!({"event": "gate_approved", "plan_hash": hash, "dryrun_digest": digest}),
    )
    .await
}

fn guards(r: &TestResponse) -> Vec<String> {
    r.body["guards"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|g| g["guard"].as_str().unwrap().to_string())
        .collect()
}

/// A script with no declared dry-run flag: the dry run says `unavailable`,
/// which is no failure: the case goes on to the gate, which asks a person
/// although the plan's risk alone would have passed on its own.
#[sqlx::test]
async fn a_plan_that_cannot_be_rehearsed_goes_to_the_gate_and_asks_a_person(pool: PgPool) {
    let lp = Loop::new(pool).await;
    let (case, hash) = lp.propose(&plan("staging", "no-rehearsal.sh", &[])).await;
    assert_eq!(lp.app.status(case).await, "WAIT_GATE");
    let shown = lp.app.current_plan(case).await.body;
    assert_eq!(shown["dry_run"]["outcome"], "unavailable", "{shown}");
    let steps = &shown["dry_run"]["artefact"]["steps"];
    assert_eq!(
        (steps[0]["outcome"].as_str(), steps[1]["outcome"].as_str()),
        (Some("ok"), Some("unavailable"))
    );
    assert!(
        steps[1]["error"]
            .as_str()
            .unwrap()
            .contains("declares no dry_run_flag"),
        "{steps}"
    );
    // Low risk: without the dry run's gap the gate would approve alone.
    assert!(
        shown["gate"]["decision"]["risk"].as_f64().unwrap() <= 0.3,
        "{shown}"
    );
    assert_eq!(shown["gate"]["required_approvers"], 1, "{shown}");
    assert!(
        shown["gate"]["decision"]["reasons"]
            .to_string()
            .contains("could not rehearse every step"),
        "{shown}"
    );
    let digest = shown["dry_run"]["digest"].clone();
    let r = approve(&lp, case, APPROVER, &hash, &digest).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(lp.app.status(case).await, "EXECUTING");
    let recorded: Option<String> =
        sqlx::query_scalar("SELECT dryrun_digest FROM plan_approved WHERE approver = $1")
            .bind("bob")
            .fetch_optional(&lp.app.pool)
            .await
            .unwrap()
            .flatten();
    assert_eq!(recorded.as_deref(), digest.as_str());
}

/// A production plan needs two people. A vote names the dry run its giver
/// saw: a vote naming no dry run or an older one counts for nothing, and
/// a new dry run (the operator re-drives the gate) voids the votes given
/// on the one before.
#[sqlx::test]
async fn an_approval_counts_only_for_the_latest_dry_run(pool: PgPool) {
    let lp = Loop::new(pool).await;
    let (case, hash) = lp.propose(&prod_plan()).await;
    let first = lp.app.dryrun_digest(case).await;
    assert!(first.is_string(), "{first}");
    assert_eq!(lp.app.status(case).await, "WAIT_GATE");

    // No digest, or a made-up one: refused on that guard, nothing recorded.
    let r = approve(&lp, case, APPROVER, &hash, &Value::Null).await;
    assert_eq!(r.status, 422, "{:?}", r.body);
    assert!(guards(&r).contains(&"judged_dryrun_is_current".to_string()));
    let r = approve(&lp, case, APPROVER, &hash, &json!("e".repeat(64))).await;
    assert_eq!(r.status, 422, "{:?}", r.body);
    assert!(guards(&r).contains(&"judged_dryrun_is_current".to_string()));
    let votes = |lp: &Loop| {
        let pool = lp.app.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM plan_approved")
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    assert_eq!(votes(&lp).await, 0);

    // The operator re-drives the gate: a new dry run is on its way. Until
    // it lands, the first one is what people see, and a vote on it counts
    // (and adds a version to the case, which the dry run must survive).
    let r = lp
        .app
        .send(
            axum::http::Method::POST,
            "/gate/eval",
            Some(OPERATOR),
            &[],
            Some(json!({"case_id": case}).to_string()),
        )
        .await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    assert_eq!(r.body["subject"], "cmd.exec.dryrun");
    let r = approve(&lp, case, APPROVER, &hash, &first).await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    assert_eq!(r.body["approvals"]["count"], 1);
    assert_eq!(votes(&lp).await, 1);
    lp.settle().await;
    let second = lp.app.dryrun_digest(case).await;
    assert_ne!(second, first);
    let shown = lp.app.current_plan(case).await.body;
    assert_eq!(shown["approvals"][0]["counts"], false, "{shown}");

    // The second person's vote on the new dry run is one of two: the
    // first vote was given on evidence nobody shows any more.
    let r = approve(&lp, case, APPROVER2, &hash, &second).await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    assert_eq!(
        r.body["approvals"],
        json!({"count": 1, "required": 2, "missing": 1})
    );
    // The first person again, on the old digest: refused; on the new: open.
    let r = approve(&lp, case, APPROVER, &hash, &first).await;
    assert_eq!(r.status, 422, "{:?}", r.body);
    assert!(guards(&r).contains(&"judged_dryrun_is_current".to_string()));
    assert_eq!(lp.app.status(case).await, "WAIT_GATE");
    let r = approve(&lp, case, APPROVER, &hash, &second).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(lp.app.status(case).await, "EXECUTING");
    let by_digest: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT approver, dryrun_digest FROM plan_approved ORDER BY decided_at, approver",
    )
    .fetch_all(&lp.app.pool)
    .await
    .unwrap();
    assert_eq!(by_digest.len(), 3, "{by_digest:?}");
    assert_eq!(by_digest[0].1.as_deref(), first.as_str());
}

/// Only the executor reports a dry run, and it names the stored one.
#[sqlx::test]
async fn a_dry_run_fact_is_the_executors_and_names_a_stored_dry_run(pool: PgPool) {
    let lp = Loop::new(pool).await;
    let (case, hash) = lp.propose(&prod_plan()).await;
    let digest = lp.app.dryrun_digest(case).await;
    for who in [OPERATOR, SERVICE] {
        let r = patch_once(
            &lp,
            case,
            who,
            json!({"event": "dryrun_done", "plan_hash": hash, "dryrun_digest": digest}),
        )
        .await;
        assert_eq!(r.status, 403, "{who}: {:?}", r.body);
    }
    let r = patch_once(
        &lp,
        case,
        EXECUTOR,
        json!({"event": "dryrun_done", "plan_hash": hash}),
    )
    .await;
    assert_eq!((r.status, r.code()), (400, "invalid_field"), "{:?}", r.body);
    let r = patch_once(
        &lp,
        case,
        EXECUTOR,
        json!({"event": "dryrun_failed", "plan_hash": hash, "dryrun_digest": "f".repeat(64)}),
    )
    .await;
    assert_eq!(r.status, 422, "{:?}", r.body);
    assert_eq!(guards(&r), ["dryrun_of_current_plan"]);
    assert_eq!(lp.app.status(case).await, "WAIT_GATE");
}

/// A dry run the orchestrator accepted, of the plan `hash` of `case`, as
/// if the executor had just reported it (`outcome`), without the gate's
/// evaluation that normally follows: the window between the two.
async fn accepted_dry_run(lp: &Loop, case: Uuid, outcome: &str) -> String {
    let digest = format!("{:064x}", Uuid::now_v7().as_u128());
    sqlx::query(
        "INSERT INTO plan_dryrun (id, case_id, plan_id, plan_hash, digest, outcome, artefact, attempt_id) \
         SELECT $1, case_id, id, plan_hash, $2, $3, '{\"observed_at\": \"2026-11-30T00:00:00Z\", \"steps\": []}', $4 \
         FROM plan_proposed WHERE case_id = $5",
    )
    .bind(Uuid::now_v7())
    .bind(&digest)
    .bind(outcome)
    .bind(Uuid::now_v7())
    .bind(case)
    .execute(&lp.app.pool)
    .await
    .unwrap();
    sqlx::query("UPDATE plan_proposed SET dryrun_digest = $1 WHERE case_id = $2")
        .bind(&digest)
        .bind(case)
        .execute(&lp.app.pool)
        .await
        .unwrap();
    digest
}

/// The review's hole: the gate's quorum was decided on the dry run before.
/// Until the gatekeeper has judged the new one, no person opens the gate
/// with it, and a dry run that failed is approved by no one at all (the
/// executor checks the same before it runs anything).
#[sqlx::test]
async fn a_quorum_holds_for_the_dry_run_it_was_decided_on(pool: PgPool) {
    let lp = Loop::new(pool).await;
    let staging = plan("staging", "no-rehearsal.sh", &[]);
    let (case, hash) = lp.propose(&staging).await;
    assert_eq!(
        lp.app.current_plan(case).await.body["gate"]["required_approvers"],
        1
    );

    let newer = accepted_dry_run(&lp, case, "ok").await;
    let shown = lp.app.current_plan(case).await.body;
    assert_eq!(shown["gate"]["evaluated"], false, "{shown}");
    let r = approve(&lp, case, APPROVER, &hash, &json!(newer)).await;
    assert_eq!(r.status, 422, "{:?}", r.body);
    assert!(
        r.body["guards"].to_string().contains("has not evaluated"),
        "{:?}",
        r.body
    );

    let failed = accepted_dry_run(&lp, case, "failed").await;
    sqlx::query("UPDATE plan_proposed SET gate_dryrun_digest = $1 WHERE case_id = $2")
        .bind(&failed)
        .bind(case)
        .execute(&lp.app.pool)
        .await
        .unwrap();
    let r = approve(&lp, case, APPROVER, &hash, &json!(failed)).await;
    assert_eq!(r.status, 422, "{:?}", r.body);
    assert!(
        r.body["guards"].to_string().contains("failed"),
        "{:?}",
        r.body
    );
    assert_eq!(lp.app.status(case).await, "WAIT_GATE");
}

/// A dry-run command for a plan that no longer waits at the gate (another
/// plan's, or a case that left WAIT_GATE) rehearses and records nothing.
#[sqlx::test]
async fn a_dry_run_command_for_a_plan_the_case_has_left_records_nothing(pool: PgPool) {
    let lp = Loop::new(pool).await;
    let (case, hash) = lp.propose(&prod_plan()).await;
    let current = lp.app.dryrun_digest(case).await;
    let command = |plan_hash: String| {
        let pool = lp.app.pool.clone();
        async move {
            let row = opsloop::store::read_case(&pool, case)
                .await
                .unwrap()
                .unwrap();
            Delivery {
                envelope: Envelope {
                    id: Uuid::now_v7(),
                    kind: "cmd.exec.dryrun".into(),
                    case_id: Some(case),
                    tenant: row.tenant.to_string(),
                    occurred_at: Utc::now(),
                    actor: "orchestrator".into(),
                    correlation_id: row.correlation_id,
                    causation_id: None,
                    expected_version: Some(row.version),
                    data: json!({"effect": "dry_run", "plan_hash": plan_hash}),
                },
                subject: "cmd.exec.dryrun".into(),
                traceparent: None,
                delivered: 1,
            }
        }
    };
    let rows = || {
        let pool = lp.app.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM plan_dryrun WHERE case_id = $1")
                .bind(case)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    let other = command("a".repeat(64)).await;
    let disposition = lp.executor().handle(&other).await;
    assert!(matches!(disposition, Disposition::Done), "{disposition:?}");
    assert_eq!(rows().await, 1);
    let dismissed = patch_once(
        &lp,
        case,
        OPERATOR,
        json!({"event": "dismiss", "reason": "handled by hand"}),
    )
    .await;
    assert_eq!(dismissed.status, 200, "{:?}", dismissed.body);
    let late = command(hash).await;
    let disposition = lp.executor().handle(&late).await;
    assert!(matches!(disposition, Disposition::Done), "{disposition:?}");
    assert_eq!(rows().await, 1);
    assert_eq!(lp.app.dryrun_digest(case).await, current);
}
