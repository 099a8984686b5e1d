use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use async_nats::jetstream;
use opsloop::contract::fact as subjects;
use opsloop::orchestrator::consumer::FactConsumer;
use opsloop::pubsub::Envelope;
use opsloop::pubsub::consumer::{self, ConsumerSpec};
use opsloop::pubsub::relay::{Relay, RelayReport, RelaySettings};
use opsloop::pubsub::streams::{CMD_STREAM, EVT_STREAM};
use serde_json::json;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::helpers::*;
use crate::nats::*;

async fn relay(pool: &PgPool, nats: &TestNats, batch: i64) -> Relay {
    let settings = RelaySettings {
        batch,
        ..RelaySettings::default()
    };
    Relay::new(pool.clone(), nats.client().await, settings)
}

async fn drain(relay: &Relay) -> RelayReport {
    let mut total = RelayReport::default();
    loop {
        let r = relay.relay_once().await.unwrap();
        if r.published + r.failed == 0 {
            return total;
        }
        total.published += r.published;
        total.duplicates += r.duplicates;
        total.failed += r.failed;
    }
}

async fn outbox_ids(pool: &PgPool) -> HashSet<Uuid> {
    sqlx::query_scalar::<_, Uuid>("SELECT message_id FROM outbox")
        .fetch_all(pool)
        .await
        .unwrap()
        .into_iter()
        .collect()
}

/// Asserts that, per case, transition events carry versions 2, 3, 4, … in stream order.
pub fn assert_per_case_order(messages: &[(String, Envelope)]) -> usize {
    let mut versions: BTreeMap<Uuid, Vec<(i64, String)>> = BTreeMap::new();
    for (subject, env) in messages
        .iter()
        .filter(|(s, _)| s == subjects::EVT_CASE_TRANSITION)
    {
        assert_eq!(subject, &env.kind);
        versions.entry(env.case_id.unwrap()).or_default().push((
            env.data["version"].as_i64().unwrap(),
            env.data["event"].as_str().unwrap_or("?").to_string(),
        ));
    }
    for (case, seen) in &versions {
        let numbers: Vec<i64> = seen.iter().map(|(v, _)| *v).collect();
        let expected: Vec<i64> = (2..2 + numbers.len() as i64).collect();
        assert_eq!(
            numbers, expected,
            "case {case}: transitions in stream order {seen:?}"
        );
    }
    versions.len()
}

/// Waits (up to 15 s) until `relay` sees no waiting row.
async fn wait_until_drained(relay: &Relay, context: &str) {
    let mut waited = 0;
    while relay.backlog().await.unwrap() > 0 {
        assert!(waited < 300, "the backlog never drained {context}");
        tokio::time::sleep(Duration::from_millis(50)).await;
        waited += 1;
    }
}

/// Every transition in the timeline has its event in `events`.
async fn assert_every_transition_published(pool: &PgPool, events: &[(String, Envelope)]) {
    let (transitions,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM case_timeline WHERE kind = 'transition'")
            .fetch_one(pool)
            .await
            .unwrap();
    let published = events
        .iter()
        .filter(|(s, _)| s == subjects::EVT_CASE_TRANSITION)
        .count();
    assert_eq!(
        published as i64, transitions,
        "every transition reached the stream"
    );
}

async fn walk(app: &TestApp, cases: usize) -> Vec<Uuid> {
    let mut ids = Vec::new();
    for _ in 0..cases {
        let case = app.case_in("PARKED").await;
        app.event(case, OPERATOR, "resume").await;
        ids.push(case);
    }
    ids
}

#[sqlx::test]
async fn every_outbox_row_reaches_jetstream_and_transitions_keep_case_order(pool: PgPool) {
    let (app, nats, js) = setup(&pool).await;
    walk(&app, 3).await;
    let rows = outbox_ids(&pool).await;
    let relay = relay(&pool, &nats, 5).await;
    let report = drain(&relay).await;
    assert_eq!((report.published, report.duplicates), (rows.len(), 0));
    let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(pending, 0, "acked rows leave the outbox");

    let mut all = read_stream(&js, EVT_STREAM).await;
    assert_eq!(assert_per_case_order(&all), 3);
    let commands = read_stream(&js, CMD_STREAM).await;
    assert!(commands.iter().all(|(s, _)| s.starts_with("cmd.")));
    assert_eq!(
        commands
            .iter()
            .filter(|(s, _)| s == "cmd.plan.generate")
            .count(),
        6
    );
    all.extend(commands);
    let seen: HashSet<Uuid> = all.iter().map(|(_, e)| e.id).collect();
    assert_eq!(seen, rows, "each outbox row once, under its own id");
    assert!(
        app.metric("outbox_publish_total{status=\"ok\",topic=\"evt.case.transition.v1\"}")
            .await
            >= 12.0
    );
    assert!(app.metric("outbox_lag_seconds_count").await >= rows.len() as f64);
}

#[sqlx::test]
async fn a_relay_killed_between_publish_and_mark_publishes_each_message_once(pool: PgPool) {
    let (app, nats, js) = setup(&pool).await;
    walk(&app, 2).await;
    let rows = outbox_ids(&pool).await;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_opsloop"))
        .args(["serve", "--roles", "relay"])
        .env("DATABASE_URL", database_url(&pool))
        .env("NATS_URL", &nats.url)
        .env("OPSLOOP_FAULT_RELAY_STALL_AFTER_PUBLISH", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // The fault makes the relay stop after the acks, before marking: wait
    // until JetStream holds everything, then kill it in that window.
    let mut published = 0;
    for _ in 0..200 {
        published = stream_count(&js, EVT_STREAM).await + stream_count(&js, CMD_STREAM).await;
        if published as usize == rows.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(published as usize, rows.len());
    let waiting: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        waiting as usize,
        rows.len(),
        "the relay is stalled before marking"
    );
    child.kill().await.unwrap(); // SIGKILL

    // A new relay finds the rows unmarked and publishes them again under the same ids.
    let relay = relay(&pool, &nats, 100).await;
    let report = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            // The killed session's locks go when PostgreSQL notices the dead connection.
            let r = drain(&relay).await;
            if r.published > 0 {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .unwrap();
    assert_eq!(
        (report.published, report.duplicates),
        (rows.len(), rows.len())
    );
    assert_eq!(
        (stream_count(&js, EVT_STREAM).await + stream_count(&js, CMD_STREAM).await) as usize,
        rows.len()
    );
    let mut messages = read_stream(&js, EVT_STREAM).await;
    assert_per_case_order(&messages);
    messages.extend(read_stream(&js, CMD_STREAM).await);
    let ids: Vec<Uuid> = messages.iter().map(|(_, e)| e.id).collect();
    assert_eq!(ids.iter().copied().collect::<HashSet<_>>(), rows);
    assert_eq!(
        ids.len(),
        rows.len(),
        "a subscriber de-duplicating by id sees each exactly once"
    );
}

#[sqlx::test]
async fn transitions_continue_through_a_nats_outage_and_the_backlog_drains(pool: PgPool) {
    let (app, mut nats, js) = setup(&pool).await;
    let relay = relay(&pool, &nats, 64).await;
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(
        relay
            .clone()
            .run(app.orchestrator.outbox_ready(), shutdown.clone()),
    );
    let case = app.case_in("PARKED").await;

    nats.stop().await;
    let outage = tokio::time::Instant::now();
    let mut during = 0;
    while outage.elapsed() < Duration::from_secs(11) {
        let event = if during % 2 == 0 {
            "resume"
        } else {
            "plan_failed"
        };
        let token = if during % 2 == 0 { OPERATOR } else { SERVICE };
        let r = app.event(case, token, event).await;
        assert_eq!(
            r.status, 200,
            "transitions keep succeeding while NATS is down"
        );
        during += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let backlog = relay.backlog().await.unwrap();
    assert!(
        backlog >= during,
        "the outbox absorbed the outage: {backlog} rows for {during} transitions"
    );

    nats.restart().await;
    let drained = tokio::time::timeout(Duration::from_secs(60), async {
        while relay.backlog().await.unwrap() > 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(drained.is_ok(), "backlog did not drain after NATS returned");
    shutdown.cancel();
    task.await.unwrap();

    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(left, 0);
    let mut messages = read_stream(&js, EVT_STREAM).await;
    assert_per_case_order(&messages);
    // Nothing lost: every version of the case, 2 ..= current, arrived.
    let version: i64 = sqlx::query_scalar("SELECT version FROM ops_case WHERE id = $1")
        .bind(case)
        .fetch_one(&pool)
        .await
        .unwrap();
    let transitions = messages
        .iter()
        .filter(|(s, _)| s == subjects::EVT_CASE_TRANSITION)
        .count();
    assert_eq!(transitions as i64, version - 1);
    let resumes = ((during + 1) / 2) as usize;
    messages.extend(read_stream(&js, CMD_STREAM).await);
    let plan_commands = messages
        .iter()
        .filter(|(s, _)| s == "cmd.plan.generate")
        .count();
    assert_eq!(plan_commands, 1 + resumes, "analysis_done and each resume");
    let ids: HashSet<Uuid> = messages.iter().map(|(_, e)| e.id).collect();
    let rows = ids.clone();
    assert_eq!(messages.len(), rows.len(), "nothing doubled");
}

#[sqlx::test]
async fn two_relays_at_once_publish_without_duplicates_in_case_order(pool: PgPool) {
    let (app, nats, js) = setup(&pool).await;
    walk(&app, 8).await;
    let rows = outbox_ids(&pool).await;
    let (a, b) = (relay(&pool, &nats, 3).await, relay(&pool, &nats, 3).await);
    // Each keeps going until the shared backlog is empty, so they overlap.
    let shared = |relay: Relay| async move {
        let mut total = RelayReport::default();
        while relay.backlog().await.unwrap() > 0 {
            let r = relay.relay_once().await.unwrap();
            total.published += r.published;
            total.duplicates += r.duplicates;
            tokio::task::yield_now().await;
        }
        total
    };
    let (ra, rb) = tokio::join!(shared(a), shared(b));
    assert_eq!(ra.published + rb.published, rows.len());
    assert_eq!(ra.duplicates + rb.duplicates, 0);
    assert!(
        ra.published > 0 && rb.published > 0,
        "both relays worked: {ra:?} {rb:?}"
    );
    let messages = read_stream(&js, EVT_STREAM).await;
    assert_eq!(assert_per_case_order(&messages), 8);
    assert_eq!(
        messages.len() + read_stream(&js, CMD_STREAM).await.len(),
        rows.len()
    );
}

#[sqlx::test]
async fn relay_loops_with_helpers_keep_case_order_while_transitions_commit(pool: PgPool) {
    let (app, nats, js) = setup(&pool).await;
    // A backlog first, so both relays' helpers join in from the start.
    walk(&app, 12).await;
    let shutdown = CancellationToken::new();
    let mut tasks = Vec::new();
    for _ in 0..2 {
        let settings = RelaySettings {
            batch: 4,
            loops: 3,
            ..RelaySettings::default()
        };
        let relay = Relay::new(pool.clone(), nats.client().await, settings);
        tasks.push(tokio::spawn(
            relay.run(app.orchestrator.outbox_ready(), shutdown.clone()),
        ));
    }
    // More cases move while the six loops publish.
    futures::future::join_all((0..4).map(|_| walk(&app, 3))).await;
    wait_until_drained(&relay(&pool, &nats, 4).await, "").await;
    shutdown.cancel();
    for task in tasks {
        task.await.unwrap();
    }
    let events = read_stream(&js, EVT_STREAM).await;
    let commands = read_stream(&js, CMD_STREAM).await;
    assert_eq!(assert_per_case_order(&events), 24);
    let ids: HashSet<Uuid> = events.iter().chain(&commands).map(|(_, e)| e.id).collect();
    assert_eq!(
        ids.len(),
        events.len() + commands.len(),
        "nothing published twice"
    );
    assert_every_transition_published(&pool, &events).await;
}

#[sqlx::test]
async fn a_relay_whose_connections_are_cut_reconnects_and_loses_nothing(pool: PgPool) {
    let (app, nats, js) = setup(&pool).await;
    walk(&app, 6).await;
    let shutdown = CancellationToken::new();
    let settings = RelaySettings {
        batch: 2,
        loops: 2,
        ..RelaySettings::default()
    };
    let cut_off = Relay::new(pool.clone(), nats.client().await, settings);
    let task = tokio::spawn(cut_off.run(app.orchestrator.outbox_ready(), shutdown.clone()));
    // Cut the relay's connections again and again, mid-transaction or not,
    // while more cases move.
    let cutter = {
        let pool = pool.clone();
        tokio::spawn(async move {
            let mut cut = 0;
            for _ in 0..40 {
                let n: i64 = sqlx::query_scalar(
                    "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity \
                     WHERE application_name = 'opsloop-relay' AND datname = current_database()",
                )
                .fetch_one(&pool)
                .await
                .unwrap();
                cut += n;
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
            cut
        })
    };
    walk(&app, 6).await;
    let cut = cutter.await.unwrap();
    assert!(cut > 0, "no relay connection was cut");
    wait_until_drained(&relay(&pool, &nats, 4).await, &format!("after {cut} cuts")).await;
    shutdown.cancel();
    task.await.unwrap();
    let held: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' \
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(held, 0, "no case lock outlives the relay");
    let events = read_stream(&js, EVT_STREAM).await;
    assert_eq!(assert_per_case_order(&events), 12);
    assert_every_transition_published(&pool, &events).await;
}

#[sqlx::test]
async fn an_unpublishable_row_moves_to_outbox_failed_and_does_not_block_the_rest(pool: PgPool) {
    let (app, nats, js) = setup(&pool).await;
    let case = app.case_in("ANALYZING").await;
    let huge = json!({"id": Uuid::now_v7(), "blob": "x".repeat(2 * 1024 * 1024)});
    sqlx::query("INSERT INTO outbox (message_id, case_id, subject, payload) VALUES ($1, NULL, 'evt.case.note.v1', $2)")
        .bind(Uuid::now_v7())
        .bind(huge.to_string())
        .execute(&pool)
        .await
        .unwrap();
    app.event(case, ANALYST, "analysis_done").await;
    let report = drain(&relay(&pool, &nats, 10).await).await;
    assert_eq!((report.published, report.failed), (5, 1));
    let (error,): (String,) = sqlx::query_as("SELECT last_error FROM outbox_failed")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(error.contains("never publishable"), "{error}");
    assert_eq!(
        stream_count(&js, EVT_STREAM).await,
        3,
        "creation and two transitions"
    );
}

#[sqlx::test]
async fn a_row_the_server_keeps_rejecting_moves_to_outbox_failed_after_a_few_attempts(
    pool: PgPool,
) {
    let (app, nats, js) = setup(&pool).await;
    // The events stream now refuses anything above 100 bytes; commands still fit.
    let mut config = js
        .get_stream(EVT_STREAM)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .config
        .clone();
    config.max_message_size = 100;
    js.update_stream(config).await.unwrap();
    let case = app.case_in("ANALYZING").await;
    let relay = relay(&pool, &nats, 10).await;
    // Two events of the case are too large: its creation, then its
    // transition; each is given up on after its attempts, in case order.
    let max = opsloop::pubsub::relay::MAX_PUBLISH_ATTEMPTS;
    for _ in 0..2 * max {
        let _ = relay.relay_once().await; // rejected: an error or an interrupted batch
    }
    let failed: Vec<(String, i32, String)> =
        sqlx::query_as("SELECT subject, attempts, last_error FROM outbox_failed ORDER BY id")
            .fetch_all(&pool)
            .await
            .unwrap();
    let subjects: Vec<(&str, i32)> = failed.iter().map(|f| (f.0.as_str(), f.1)).collect();
    assert_eq!(
        subjects,
        [
            ("evt.case.created.v1", max),
            ("evt.case.transition.v1", max)
        ]
    );
    assert!(failed.iter().all(|f| !f.2.is_empty()));
    assert_eq!(
        stream_count(&js, CMD_STREAM).await,
        1,
        "the command between them went out"
    );
    // The rows behind it are no longer blocked.
    app.event(case, ANALYST, "analysis_done").await;
    let report = relay.relay_once().await.unwrap();
    assert_eq!(report.published, 1, "the new command went out: {report:?}");
    assert_eq!(stream_count(&js, CMD_STREAM).await, 2);
}

#[sqlx::test]
async fn cleanup_removes_only_old_inbox_and_idempotency_records(pool: PgPool) {
    let (app, nats, _js) = setup(&pool).await;
    let old_case = app.case_in("ANALYZING").await;
    let fresh_case = app.case_in("ANALYZING").await;
    // Past the 7 days DESIGN §3 keeps a key for.
    sqlx::query(
        "UPDATE idempotency i SET created_at = now() - interval '8 days' FROM case_timeline t \
         WHERE t.id = i.timeline_id AND t.case_id = $1",
    )
    .bind(old_case)
    .execute(&pool)
    .await
    .unwrap();
    // Inbox records outlive the streams' 7 days: 3 days stays, 9 days goes.
    for age in ["3 days", "9 days"] {
        sqlx::query(
            "INSERT INTO inbox (consumer, message_id, subject, case_id, received_at) \
             VALUES ('orchestrator', gen_random_uuid(), 'evt.x.v1', $1, now() - $2::interval)",
        )
        .bind(old_case)
        .bind(age)
        .execute(&pool)
        .await
        .unwrap();
    }
    sqlx::query("UPDATE outbox SET created_at = now() - interval '3 days'")
        .execute(&pool)
        .await
        .unwrap();
    let deleted = relay(&pool, &nats, 10).await.cleanup_once().await.unwrap();
    assert_eq!(
        deleted, 2,
        "the old case's idempotency key and the old inbox record"
    );
    let (keys, inbox, outbox): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM idempotency i JOIN case_timeline t ON t.id = i.timeline_id \
                 WHERE t.case_id = $1), (SELECT count(*) FROM inbox), \
                (SELECT count(*) FROM outbox)",
    )
    .bind(fresh_case)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((keys, inbox), (1, 1), "fresh records stay");
    assert_eq!(
        outbox, 6,
        "unpublished rows (two cases' creation and two transition rows each) are never cleaned up, whatever their age"
    );
}

// ---- the orchestrator consumer -------------------------------------------

async fn publish_raw(js: &jetstream::Context, subject: &str, nats_id: &str, body: Vec<u8>) {
    js.send_publish(
        subject.to_string(),
        jetstream::message::PublishMessage::build()
            .payload(body.into())
            .message_id(nats_id),
    )
    .await
    .unwrap()
    .await
    .unwrap();
}

/// A worker's fact of type `kind`, with data of the shape its type has.
fn fact(kind: &str, case: Uuid, version: i64) -> Envelope {
    fact_about(kind, case, version, &"0".repeat(64))
}

fn fact_about(kind: &str, case: Uuid, version: i64, plan_hash: &str) -> Envelope {
    let data = match kind {
        "evt.analysis.findings.v1" => json!({"evidence_id": Uuid::now_v7(), "findings": {
            "resource": null, "summary": "p95 doubled after deploy", "metrics": {}, "signals": []}}),
        "evt.plan.proposed.v1" => {
            json!({"plan_id": Uuid::now_v7(), "plan_hash": plan_hash, "source": "template"})
        }
        "evt.verify.pass.v1" => json!({"plan_hash": plan_hash, "checks": []}),
        _ => json!({"reason": "p95 doubled after deploy"}),
    };
    Envelope {
        id: Uuid::now_v7(),
        kind: kind.into(),
        case_id: Some(case),
        tenant: "t-001".into(),
        occurred_at: chrono::Utc::now(),
        actor: match kind {
            "evt.plan.proposed.v1" | "evt.plan.failed.v1" => "planner",
            k if k.starts_with("evt.exec.") => "executor",
            k if k.starts_with("evt.verify.") => "verifier",
            k if k.starts_with("evt.plan.") => "gatekeeper",
            _ => "analyst",
        }
        .into(),
        correlation_id: Uuid::now_v7(),
        causation_id: None,
        expected_version: Some(version),
        data,
    }
}

async fn orchestrator_consumer(js: &jetstream::Context) -> jetstream::consumer::PullConsumer {
    consumer::durable(js, &ConsumerSpec::new(EVT_STREAM, "orchestrator", "evt.>"))
        .await
        .unwrap()
}

async fn consume_all(
    c: &jetstream::consumer::PullConsumer,
    pool: &PgPool,
    handler: &FactConsumer,
) -> usize {
    let mut total = 0;
    loop {
        let n = consumer::consume_once(c, pool, handler, 50, Duration::from_millis(300))
            .await
            .unwrap();
        if n == 0 {
            return total;
        }
        total += n;
    }
}

#[sqlx::test]
async fn a_fact_delivered_twice_has_one_effect(pool: PgPool) {
    let (app, _nats, js) = setup(&pool).await;
    let case = app.case_in("ANALYZING").await;
    let findings = serde_json::to_vec(&fact("evt.analysis.findings.v1", case, 2)).unwrap();
    // Same envelope id, two NATS message ids: JetStream keeps both, the inbox keeps one.
    publish_raw(&js, "evt.analysis.findings.v1", "nats-1", findings.clone()).await;
    publish_raw(&js, "evt.analysis.findings.v1", "nats-2", findings).await;
    let before = app.metric("inbox_dedup_total").await;
    let handler = FactConsumer {
        orchestrator: app.orchestrator.clone(),
    };
    let n = consume_all(&orchestrator_consumer(&js).await, &pool, &handler).await;
    assert_eq!(n, 2);
    assert_eq!(app.status(case).await, "PLANNING");
    let transitions = app
        .timeline(case)
        .await
        .iter()
        .filter(|t| t.1.as_deref() == Some("analysis_done"))
        .count();
    assert_eq!(transitions, 1);
    assert_eq!(app.metric("inbox_dedup_total").await, before + 1.0);
    let actor: String = sqlx::query_scalar(
        "SELECT actor FROM case_timeline WHERE case_id = $1 AND event = 'analysis_done'",
    )
    .bind(case)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(actor, "analyst");
}

#[sqlx::test]
async fn facts_drive_the_case_and_stale_facts_are_recorded(pool: PgPool) {
    let (app, _nats, js) = setup(&pool).await;
    let case = app.case_in("PLANNING").await; // version 3
    let hash = app.store_plan(case, "planner", Some(1)).await;
    for (kind, version) in [("evt.plan.proposed.v1", 3), ("evt.plan.failed.v1", 3)] {
        let body = serde_json::to_vec(&fact_about(kind, case, version, &hash)).unwrap();
        publish_raw(&js, kind, &Uuid::new_v4().to_string(), body).await;
    }
    let handler = FactConsumer {
        orchestrator: app.orchestrator.clone(),
    };
    assert_eq!(
        consume_all(&orchestrator_consumer(&js).await, &pool, &handler).await,
        2
    );
    assert_eq!(
        app.status(case).await,
        "WAIT_GATE",
        "the second fact was about version 3"
    );
    let last = app.timeline(case).await.pop().unwrap();
    assert_eq!(
        (last.0.as_str(), last.3.as_deref()),
        ("rejected", Some("stale_fact"))
    );
    let dry_run_cmd: serde_json::Value =
        sqlx::query_scalar("SELECT payload::jsonb FROM outbox WHERE subject = 'cmd.exec.dryrun'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(dry_run_cmd["data"]["plan_hash"], hash);
    let inbox: i64 =
        sqlx::query_scalar("SELECT count(*) FROM inbox WHERE consumer = 'orchestrator'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(inbox, 2, "the stale fact is recorded as handled too");
}

/// A worker's fact about a plan that is no longer the case's current one
/// (a person posted another while the planner worked) is stale: it is
/// recorded, and the case does not move on the strength of the wrong plan.
#[sqlx::test]
async fn a_fact_about_a_plan_that_is_not_current_is_stale(pool: PgPool) {
    let (app, _nats, js) = setup(&pool).await;
    let case = app.case_in("PLANNING").await; // version 3
    let older = app.store_plan(case, "planner", Some(1)).await;
    let current = app.store_plan(case, "alice", Some(1)).await;
    assert_ne!(older, current);
    let before = opsloop::store::read_case(&pool, case)
        .await
        .unwrap()
        .unwrap();
    let outbox_before = app.outbox_subjects(case).await;
    let body = serde_json::to_vec(&fact_about("evt.plan.proposed.v1", case, 3, &older)).unwrap();
    publish_raw(&js, "evt.plan.proposed.v1", "stale-plan", body).await;
    let handler = FactConsumer {
        orchestrator: app.orchestrator.clone(),
    };
    assert_eq!(
        consume_all(&orchestrator_consumer(&js).await, &pool, &handler).await,
        1
    );

    let after = opsloop::store::read_case(&pool, case)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (after.status, after.version),
        (before.status, before.version)
    );
    assert_eq!(app.outbox_subjects(case).await, outbox_before);
    let rejected: Vec<_> = app
        .timeline(case)
        .await
        .into_iter()
        .filter(|t| t.0 == "rejected")
        .collect();
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0].1.as_deref(), Some("plan_ready"));
    assert_eq!(rejected[0].3.as_deref(), Some("stale_fact"));
    let dead: i64 = sqlx::query_scalar("SELECT count(*) FROM dead_letter")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(dead, 0, "a stale fact is answered, not dead-lettered");

    // The fact about the current plan moves the case.
    let body = serde_json::to_vec(&fact_about("evt.plan.proposed.v1", case, 3, &current)).unwrap();
    publish_raw(&js, "evt.plan.proposed.v1", "current-plan", body).await;
    consume_all(&orchestrator_consumer(&js).await, &pool, &handler).await;
    assert_eq!(app.status(case).await, "WAIT_GATE");
}

/// Facts for other readers are none of the orchestrator's business: it
/// acknowledges them without reading their data, whatever it holds.
#[sqlx::test]
async fn informational_facts_are_acked_unread(pool: PgPool) {
    let (app, _nats, js) = setup(&pool).await;
    let case = app.case_in("ANALYZING").await;
    for kind in [
        "evt.exec.step_result.v1",
        "evt.gate.pending.v1",
        "evt.exec.rolled_back.v1",
    ] {
        let mut odd = fact(kind, case, 2);
        odd.data = json!({"made_by": "a newer release", "reason": "x".repeat(3000)});
        publish_raw(
            &js,
            kind,
            &Uuid::new_v4().to_string(),
            serde_json::to_vec(&odd).unwrap(),
        )
        .await;
    }
    let handler = FactConsumer {
        orchestrator: app.orchestrator.clone(),
    };
    assert_eq!(
        consume_all(&orchestrator_consumer(&js).await, &pool, &handler).await,
        3
    );
    let dead: i64 = sqlx::query_scalar("SELECT count(*) FROM dead_letter")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(dead, 0);
    assert_eq!(app.status(case).await, "ANALYZING");
}

#[sqlx::test]
async fn bad_messages_are_dead_lettered_and_consumption_goes_on(pool: PgPool) {
    let (app, _nats, js) = setup(&pool).await;
    let case = app.case_in("ANALYZING").await;
    let stranger = fact("evt.analysis.findings.v1", Uuid::new_v4(), 2);
    let mut mismatched = fact("evt.plan.proposed.v1", case, 2);
    mismatched.kind = "evt.exec.done.v1".into();
    let mut no_case = fact("evt.verify.pass.v1", case, 2);
    no_case.case_id = None;
    // A fact claiming another tenant than its case's (issue #13).
    let mut foreign = fact("evt.analysis.findings.v1", case, 2);
    foreign.tenant = "t-002".into();
    // The analyst's fact claiming to come from the executor (issue #13).
    let mut impostor = fact("evt.analysis.findings.v1", case, 2);
    impostor.actor = "executor".into();
    let bad: Vec<(&str, Vec<u8>)> = vec![
        ("evt.analysis.findings.v1", b"{not json".to_vec()),
        ("evt.analysis.findings.v1", vec![0xff, 0xfe, 0x00]),
        (
            "evt.mystery.v1",
            serde_json::to_vec(&fact("evt.mystery.v1", case, 2)).unwrap(),
        ),
        (
            "evt.analysis.findings.v1",
            serde_json::to_vec(&stranger).unwrap(),
        ),
        (
            "evt.plan.proposed.v1",
            serde_json::to_vec(&mismatched).unwrap(),
        ),
        ("evt.verify.pass.v1", serde_json::to_vec(&no_case).unwrap()),
        (
            "evt.analysis.findings.v1",
            serde_json::to_vec(&foreign).unwrap(),
        ),
        (
            "evt.analysis.findings.v1",
            serde_json::to_vec(&impostor).unwrap(),
        ),
    ];
    for (subject, body) in bad {
        publish_raw(&js, subject, &Uuid::new_v4().to_string(), body).await;
    }
    let good = serde_json::to_vec(&fact("evt.analysis.findings.v1", case, 2)).unwrap();
    publish_raw(&js, "evt.analysis.findings.v1", "good", good).await;

    let handler = FactConsumer {
        orchestrator: app.orchestrator.clone(),
    };
    let c = orchestrator_consumer(&js).await;
    assert_eq!(consume_all(&c, &pool, &handler).await, 9);
    assert_eq!(
        app.status(case).await,
        "PLANNING",
        "the good fact behind the bad ones was applied"
    );
    let reasons: Vec<String> = sqlx::query_scalar("SELECT reason FROM dead_letter ORDER BY id")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(
        reasons,
        [
            "malformed_envelope",
            "malformed_envelope",
            "unknown_type",
            "unknown_case",
            "subject_mismatch",
            "invalid_data",
            "tenant_mismatch",
            "invalid_data"
        ]
    );
    // Terminated, not redelivered: nothing more arrives.
    assert_eq!(consume_all(&c, &pool, &handler).await, 0);
    let info = c.clone().info().await.unwrap().clone();
    assert_eq!(info.num_ack_pending, 0);
    assert!(app.metric("dead_letter_total").await >= 8.0);
}

/// Commands use the same consumer machinery; a malformed command is dead-lettered too.
#[sqlx::test]
async fn malformed_commands_are_dead_lettered(pool: PgPool) {
    struct Commands;
    impl consumer::Handler for Commands {
        fn name(&self) -> &str {
            "planner"
        }
        async fn handle(&self, _d: &consumer::Delivery) -> consumer::Disposition {
            consumer::Disposition::Done
        }
    }
    let (_app, _nats, js) = setup(&pool).await;
    publish_raw(&js, "cmd.plan.generate", "c-1", b"[]".to_vec()).await;
    publish_raw(
        &js,
        "cmd.plan.generate",
        "c-2",
        serde_json::to_vec(&fact("cmd.exec.run", Uuid::new_v4(), 1)).unwrap(),
    )
    .await;
    let c = consumer::durable(
        &js,
        &ConsumerSpec::new(CMD_STREAM, "planner", "cmd.plan.generate"),
    )
    .await
    .unwrap();
    let n = consumer::consume_once(&c, &pool, &Commands, 10, Duration::from_millis(500))
        .await
        .unwrap();
    assert_eq!(n, 2);
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT consumer, reason FROM dead_letter ORDER BY id")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        rows,
        [
            ("planner".to_string(), "malformed_envelope".to_string()),
            ("planner".to_string(), "subject_mismatch".to_string())
        ]
    );
}

/// A consumer's `inbox_dedup_total` series is there from its start, at 0.
#[sqlx::test]
async fn a_consumers_dedup_counter_exists_from_its_start(pool: PgPool) {
    struct Quiet(String);
    impl consumer::Handler for Quiet {
        fn name(&self) -> &str {
            &self.0
        }
        async fn handle(&self, _d: &consumer::Delivery) -> consumer::Disposition {
            consumer::Disposition::Done
        }
    }
    let (app, _nats, js) = setup(&pool).await;
    let name = format!("probe-{}", Uuid::new_v4().simple());
    let c = consumer::durable(&js, &ConsumerSpec::new(CMD_STREAM, &name, "cmd.verify.run"))
        .await
        .unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(consumer::run(
        c,
        pool.clone(),
        Quiet(name.clone()),
        1,
        shutdown.clone(),
        std::time::Duration::from_secs(5),
    ));
    let series = format!("inbox_dedup_total{{consumer=\"{name}\"}} 0");
    let mut seen = false;
    for _ in 0..50 {
        let r = app
            .send(reqwest::Method::GET, "/metrics", None, &[], None)
            .await;
        if r.body.as_str().unwrap_or_default().contains(&series) {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown.cancel();
    let _ = task.await;
    assert!(seen, "{series} is not exposed");
}

/// How often the outbox was vacuumed by a `VACUUM` command (the relay's;
/// autovacuum counts apart).
async fn outbox_vacuums(pool: &PgPool) -> i64 {
    let mut conn = pool.acquire().await.unwrap();
    sqlx::query("SELECT pg_stat_clear_snapshot()")
        .execute(&mut *conn)
        .await
        .unwrap();
    sqlx::query_scalar("SELECT vacuum_count FROM pg_stat_user_tables WHERE relname = 'outbox'")
        .fetch_one(&mut *conn)
        .await
        .unwrap()
}

#[sqlx::test]
async fn the_relay_vacuums_the_outbox_after_deleting_enough_rows(pool: PgPool) {
    let (app, nats, _js) = setup(&pool).await;
    let settings = RelaySettings {
        vacuum_after_rows: 10,
        ..RelaySettings::default()
    };
    let relay = Relay::new(pool.clone(), nats.client().await, settings);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(
        relay
            .clone()
            .run(app.orchestrator.outbox_ready(), shutdown.clone()),
    );
    let before = outbox_vacuums(&pool).await;
    let case = app.case_in("PARKED").await;
    for i in 0..8 {
        let (token, event) = if i % 2 == 0 {
            (OPERATOR, "resume")
        } else {
            (SERVICE, "plan_failed")
        };
        assert_eq!(app.event(case, token, event).await.status, 200);
    }
    let vacuumed = tokio::time::timeout(Duration::from_secs(20), async {
        while outbox_vacuums(&pool).await == before {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    shutdown.cancel();
    task.await.unwrap();
    assert!(
        vacuumed.is_ok(),
        "no VACUUM of the outbox within 20 s of publishing its rows"
    );
    assert_eq!(relay.backlog().await.unwrap(), 0);
}
