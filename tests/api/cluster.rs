//! A JetStream cluster (issue #22): three nats-server nodes, R3 streams, a
//! `NATS_URL` listing every node, and the stream's leader killed while
//! transitions are published and consumed.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use opsloop::pubsub::consumer::{self, ConsumerSpec, Delivery, Disposition, Handler};
use opsloop::pubsub::relay::{Relay, RelaySettings};
use opsloop::pubsub::streams::{self, CMD_STREAM, EVT_STREAM, StreamSettings};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::helpers::*;
use crate::nats::*;
use crate::pubsub::assert_per_case_order;

/// Records the id of every message it is handed, redeliveries included.
struct Recorder {
    name: String,
    seen: Arc<Mutex<Vec<Uuid>>>,
}

impl Handler for Recorder {
    fn name(&self) -> &str {
        &self.name
    }

    async fn handle(&self, d: &Delivery) -> Disposition {
        self.seen.lock().unwrap().push(d.envelope.id);
        Disposition::Done
    }
}

async fn r3(cluster: &TestCluster) -> jetstream::Context {
    let client = opsloop::pubsub::connect(&cluster.url()).await.unwrap();
    let js = jetstream::new(client);
    let settings = StreamSettings {
        replicas: Some(3),
        ..StreamSettings::default()
    };
    streams::ensure(&js, &settings).await.unwrap();
    js
}

#[tokio::test]
async fn streams_take_the_configured_replicas_and_refuse_impossible_ones() {
    let cluster = TestCluster::start().await;
    let js = r3(&cluster).await;
    for name in [CMD_STREAM, EVT_STREAM] {
        let info = stream_info(&js, name).await;
        assert_eq!(info.config.num_replicas, 3, "{name}");
        let peers = info.cluster.expect("a clustered stream").replicas;
        assert_eq!(peers.len(), 2, "{name}: the leader and two followers");
    }
    // A process started without the setting keeps the count.
    streams::ensure(&js, &StreamSettings::default())
        .await
        .unwrap();
    for name in [CMD_STREAM, EVT_STREAM] {
        let info = stream_info(&js, name).await;
        assert_eq!(info.config.num_replicas, 3, "{name} was not scaled down");
    }
    let too_many = StreamSettings {
        replicas: Some(7),
        ..StreamSettings::default()
    };
    let err = streams::ensure(&js, &too_many).await.unwrap_err();
    assert!(err.is_settings(), "{err}");
    assert!(err.to_string().contains("1 to 5"), "{err}");
}

#[tokio::test]
async fn replicas_a_single_server_cannot_keep_stop_the_start_with_a_clear_error() {
    let nats = TestNats::start().await;
    let js = jetstream::new(nats.client().await);
    let r3 = StreamSettings {
        replicas: Some(3),
        ..StreamSettings::default()
    };
    let err = streams::ensure(&js, &r3).await.unwrap_err();
    assert!(err.is_settings(), "waiting would not help: {err}");
    assert!(err.to_string().contains("cannot keep 3 copies"), "{err}");
}

#[sqlx::test]
async fn an_r3_feed_loses_nothing_and_doubles_nothing_when_its_leader_is_killed(pool: PgPool) {
    let app = TestApp::new(pool.clone()).await;
    let mut cluster = TestCluster::start().await;
    let js = r3(&cluster).await;
    let shutdown = CancellationToken::new();

    // The relay and a durable consumer, both through the comma-separated
    // NATS_URL: after the kill they must find the new leader themselves.
    let client = opsloop::pubsub::connect(&cluster.url()).await.unwrap();
    let relay = Relay::new(pool.clone(), client, RelaySettings::default());
    let relay_task = tokio::spawn(
        relay
            .clone()
            .run(app.orchestrator.outbox_ready(), shutdown.clone()),
    );
    let seen = Arc::new(Mutex::new(Vec::new()));
    let name = format!("recorder-{}", Uuid::new_v4().simple());
    let spec = ConsumerSpec::new(EVT_STREAM, &name, "evt.>");
    let durable = consumer::durable(&js, &spec).await.unwrap();
    let consumer_task = tokio::spawn(consumer::run(
        durable,
        pool.clone(),
        Recorder {
            name: name.clone(),
            seen: seen.clone(),
        },
        4,
        shutdown.clone(),
        Duration::from_secs(5),
    ));

    let cases: Vec<Uuid> = {
        let mut v = Vec::new();
        for _ in 0..4 {
            v.push(app.case_in("PARKED").await);
        }
        v
    };
    let leader = cluster.leader_of(&js, EVT_STREAM).await;
    let start = tokio::time::Instant::now();
    let mut killed = false;
    let mut restarted = false;
    let mut moves = 0;
    while start.elapsed() < Duration::from_secs(12) {
        if !killed && start.elapsed() > Duration::from_secs(2) {
            cluster.kill(leader).await;
            killed = true;
        }
        if !restarted && start.elapsed() > Duration::from_secs(7) {
            cluster.restart(leader).await;
            restarted = true;
        }
        for &case in &cases {
            let (token, event) = if moves % 2 == 0 {
                (OPERATOR, "resume")
            } else {
                (SERVICE, "plan_failed")
            };
            let r = app.event(case, token, event).await;
            assert_eq!(r.status, 200, "transitions never wait for NATS");
        }
        moves += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(moves > 20, "the load kept going: {moves} rounds");

    let drained = tokio::time::timeout(Duration::from_secs(60), async {
        while relay.backlog().await.unwrap() > 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(
        drained.is_ok(),
        "the outbox never drained after the failover"
    );

    // What JetStream holds: every version of every case, once, in order.
    let mut messages = read_stream(&js, EVT_STREAM).await;
    assert_per_case_order(&messages);
    for &case in &cases {
        let version: i64 = sqlx::query_scalar("SELECT version FROM ops_case WHERE id = $1")
            .bind(case)
            .fetch_one(&pool)
            .await
            .unwrap();
        let transitions = messages
            .iter()
            .filter(|(s, e)| s == "evt.case.transition.v1" && e.case_id == Some(case))
            .count();
        assert_eq!(
            transitions as i64,
            version - 1,
            "case {case}: no transition lost"
        );
    }
    messages.extend(read_stream(&js, CMD_STREAM).await);
    let ids: HashSet<Uuid> = messages.iter().map(|(_, e)| e.id).collect();
    assert_eq!(
        ids.len(),
        messages.len(),
        "the stream holds each message once"
    );

    // The consumer saw every event, after de-duplication by id exactly once.
    let events: HashSet<Uuid> = read_stream(&js, EVT_STREAM)
        .await
        .iter()
        .map(|(_, e)| e.id)
        .collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let got: HashSet<Uuid> = seen.lock().unwrap().iter().copied().collect();
        if got == events {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the consumer is missing {} of {} events after the failover",
            events.difference(&got).count(),
            events.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut counts: HashMap<Uuid, usize> = HashMap::new();
    for id in seen.lock().unwrap().iter() {
        *counts.entry(*id).or_default() += 1;
    }
    let redelivered = counts.values().filter(|&&n| n > 1).count();
    eprintln!(
        "cluster failover: {} events, {redelivered} delivered more than once (at-least-once)",
        events.len()
    );

    shutdown.cancel();
    relay_task.await.unwrap();
    consumer_task.await.unwrap();
}
