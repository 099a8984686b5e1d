//! Migrations that rewrite data, tested on rows written before them.

use std::borrow::Cow;

use serde_json::json;
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use uuid::Uuid;

/// The migrations before `version`, as a database of that release had them.
fn migrator_before(version: i64) -> Migrator {
    Migrator {
        migrations: Cow::Owned(
            opsloop::MIGRATOR
                .migrations
                .iter()
                .filter(|m| m.version < version)
                .cloned()
                .collect(),
        ),
        ..Migrator::DEFAULT
    }
}

async fn old_plan(
    pool: &PgPool,
    case: Uuid,
    n: u8,
    rollback: serde_json::Value,
    gate: Option<serde_json::Value>,
) -> Uuid {
    let id = Uuid::now_v7();
    let plan = json!({"title": "t", "steps": [{"action": "noop", "timeout_s": 10, "retry": 0}],
                      "rollback": rollback, "verify": {"checks": []}, "n": n});
    sqlx::query(
        "INSERT INTO plan_proposed (id, case_id, plan, plan_hash, source, author, schema_valid, \
         complete, required_approvers, gate_decision) VALUES ($1, $2, $3, $4, 'template', 'planner', \
         true, true, $5, $6)",
    )
    .bind(id)
    .bind(case)
    .bind(&plan)
    .bind(format!("{n:064x}"))
    .bind(gate.as_ref().and_then(|g| g["count"].as_i64()).map(|c| c as i16))
    .bind(gate)
    .execute(pool)
    .await
    .unwrap();
    id
}

#[sqlx::test(migrations = false)]
async fn gate_decisions_recorded_before_the_gate_columns_are_backfilled(pool: PgPool) {
    migrator_before(20261130000013).run(&pool).await.unwrap();
    let case = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO ops_case (id, tenant, title, correlation_id, created_by) \
         VALUES ($1, 't-001', 'old case', $2, 'alice')",
    )
    .bind(case)
    .bind(Uuid::now_v7())
    .execute(&pool)
    .await
    .unwrap();
    let steps = json!({"steps": [{"action": "noop", "timeout_s": 10, "retry": 0}]});
    let pending = old_plan(&pool, case, 1, steps.clone(), Some(json!({
        "verdict": "break_glass", "count": 2, "freeze": "black-friday", "risk": 0.35,
        "reasons": ["riskiest action weighs 0.35", "change freeze black-friday"], "auto_rollback": true}))).await;
    let auto = old_plan(
        &pool,
        case,
        2,
        json!({"steps": []}),
        Some(json!({
        "verdict": "auto_approve", "risk": 0.2, "reasons": ["risk 0.20 <= 0.30"]})),
    )
    .await;
    let undecided = old_plan(&pool, case, 3, json!({}), None).await;

    opsloop::MIGRATOR.run(&pool).await.unwrap();

    type Row = (
        Option<String>,
        Option<f64>,
        Option<Vec<String>>,
        Option<String>,
        Option<bool>,
        bool,
    );
    let read = |id: Uuid| {
        let pool = pool.clone();
        async move {
            sqlx::query_as::<_, Row>(
                "SELECT gate_verdict, gate_risk, gate_reasons, gate_freeze, gate_auto_rollback, \
                 has_rollback FROM plan_proposed WHERE id = $1",
            )
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    assert_eq!(
        read(pending).await,
        (
            Some("break_glass".into()),
            Some(0.35),
            Some(vec![
                "riskiest action weighs 0.35".into(),
                "change freeze black-friday".into()
            ]),
            Some("black-friday".into()),
            Some(true),
            true
        )
    );
    assert_eq!(
        read(auto).await,
        (
            Some("auto_approve".into()),
            Some(0.2),
            Some(vec!["risk 0.20 <= 0.30".into()]),
            None,
            Some(false),
            false
        ),
        "a decision recorded before auto_rollback was stored never rolled back by itself"
    );
    assert_eq!(read(undecided).await, (None, None, None, None, None, false));
}

/// Metric rows stored before tenants existed belong to the `default`
/// tenant afterwards; new rows must name theirs.
#[sqlx::test(migrations = false)]
async fn metric_rows_from_before_tenants_move_to_the_default_tenant(pool: PgPool) {
    migrator_before(20261130000015).run(&pool).await.unwrap();
    sqlx::query(
        "INSERT INTO metric_1m (resource, metric, ts, avg, max) \
         VALUES ('checkout', 'latency_p95_ms', date_trunc('minute', now()), 120, 130)",
    )
    .execute(&pool)
    .await
    .unwrap();
    opsloop::MIGRATOR.run(&pool).await.unwrap();
    let tenant: String = sqlx::query_scalar("SELECT tenant FROM metric_1m")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(tenant, "default");
    let unnamed = sqlx::query(
        "INSERT INTO metric_1m (resource, metric, ts, avg, max) \
         VALUES ('checkout', 'latency_p95_ms', date_trunc('minute', now()), 1, 1)",
    )
    .execute(&pool)
    .await;
    assert!(unnamed.is_err(), "a new row without a tenant is refused");
}

/// Issue #15 moved the hot tables' CHECK rules into one constraint per
/// table (and `ops_case`'s fixed columns into a trigger): the database
/// still refuses every row they refused, with SQLSTATE 23514.
#[sqlx::test]
async fn the_hot_tables_still_refuse_what_their_checks_refused(pool: PgPool) {
    let case = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO ops_case (id, tenant, title, correlation_id, created_by) \
         VALUES ($1, 't', 'a case', gen_random_uuid(), 'me')",
    )
    .bind(case)
    .execute(&pool)
    .await
    .unwrap();
    let hash = "a".repeat(64);
    let refused = [
        "INSERT INTO ops_case (id, tenant, title, correlation_id, created_by) \
         VALUES (gen_random_uuid(), 'Not A Tenant', 'x', gen_random_uuid(), 'me')",
        "INSERT INTO ops_case (id, tenant, title, correlation_id, created_by) \
         VALUES (gen_random_uuid(), 't', '', gen_random_uuid(), 'me')",
        "INSERT INTO ops_case (id, tenant, title, severity, correlation_id, created_by) \
         VALUES (gen_random_uuid(), 't', 'x', 'dire', gen_random_uuid(), 'me')",
        "INSERT INTO ops_case (id, tenant, title, kind, correlation_id, created_by) \
         VALUES (gen_random_uuid(), 't', 'x', 'Bad Kind', gen_random_uuid(), 'me')",
        "INSERT INTO ops_case (id, tenant, title, labels, correlation_id, created_by) \
         VALUES (gen_random_uuid(), 't', 'x', '[]', gen_random_uuid(), 'me')",
        "UPDATE ops_case SET tenant = 'UPPER' WHERE id = $1",
        // Fixed at creation (migration 19): a replay rebuilds the case from them.
        "UPDATE ops_case SET tenant = 'acme' WHERE id = $1",
        "UPDATE ops_case SET labels = '{\"a\": \"b\"}', kind = 'latency' WHERE id = $1",
        "UPDATE ops_case SET status = 'BOGUS' WHERE id = $1",
        "UPDATE ops_case SET version = 0 WHERE id = $1",
        "INSERT INTO case_timeline (id, case_id, kind, event, from_status, to_status, version, actor, correlation_id) \
         VALUES (gen_random_uuid(), $1, 'transition', 'bogus', 'NEW', 'ANALYZING', 2, 'me', gen_random_uuid())",
        "INSERT INTO case_timeline (id, case_id, kind, event, from_status, to_status, version, actor, correlation_id) \
         VALUES (gen_random_uuid(), $1, 'transition', 'resume', 'NEW', 'NOWHERE', 2, 'me', gen_random_uuid())",
        "INSERT INTO case_timeline (id, case_id, kind, to_status, version, actor, correlation_id) \
         VALUES (gen_random_uuid(), $1, 'transition', 'ANALYZING', 2, 'me', gen_random_uuid())",
        "INSERT INTO case_timeline (id, case_id, kind, event, from_status, version, actor, correlation_id) \
         VALUES (gen_random_uuid(), $1, 'rejected', 'resume', 'NEW', 1, 'me', gen_random_uuid())",
        "INSERT INTO case_timeline (id, case_id, kind, event, from_status, to_status, version, actor, correlation_id) \
         VALUES (gen_random_uuid(), $1, 'transition', 'resume', 'NEW', 'ANALYZING', 0, 'me', gen_random_uuid())",
        "INSERT INTO outbox (message_id, case_id, subject, payload) \
         VALUES (gen_random_uuid(), $1, 'not.a subject', '{}')",
        "INSERT INTO outbox (message_id, case_id, subject, payload, attempts) \
         VALUES (gen_random_uuid(), $1, 'evt.case.transition.v1', '{}', -1)",
        "INSERT INTO idempotency (actor, key, request_hash) VALUES ('me', '', repeat('a', 64))",
        "INSERT INTO idempotency (actor, key, request_hash) VALUES ('me', 'k', repeat('a', 63))",
        "INSERT INTO idempotency (actor, key, request_hash) VALUES ('me', 'k', repeat('A', 64))",
        "INSERT INTO idempotency (actor, key, request_hash) VALUES ('me', 'k', repeat('g', 64))",
        "INSERT INTO idempotency (actor, key, request_hash, response_status) \
         VALUES ('me', 'k', repeat('a', 64), 200)",
        "INSERT INTO idempotency (actor, key, request_hash, response_status, response_body) \
         VALUES ('me', 'k', repeat('a', 64), 99, '{}')",
        "INSERT INTO idempotency (actor, key, request_hash, response_status, response_body, answer) \
         VALUES ('me', 'k', repeat('a', 64), 200, '{}', '{}')",
    ];
    for sql in refused {
        let err = sqlx::query(sql)
            .bind(case)
            .execute(&pool)
            .await
            .expect_err(sql);
        let code = err
            .as_database_error()
            .and_then(|e| e.code())
            .map(|c| c.to_string());
        assert_eq!(code.as_deref(), Some("23514"), "{sql}: {err}");
    }
    // And what they accepted still goes in.
    for sql in [
        "INSERT INTO idempotency (actor, key, request_hash) VALUES ('me', 'k', $2)",
        "INSERT INTO outbox (message_id, case_id, subject, payload) \
         VALUES (gen_random_uuid(), $1, 'evt.case.transition.v1', '{}')",
        "UPDATE ops_case SET status = 'PARKED', version = 2, park_reason = 'x' WHERE id = $1",
    ] {
        sqlx::query(sql)
            .bind(case)
            .bind(&hash)
            .execute(&pool)
            .await
            .expect(sql);
    }
}
