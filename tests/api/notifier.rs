//! The notifier role (ChatOps outbound) against a fake Slack incoming
//! webhook (a real HTTP server in the test): a gate waiting for people
//! posts one message with buttons bound to the plan hash and dry run; a
//! redelivered message posts nothing twice; a dead webhook is retried, then
//! given up and recorded without holding up the feed; a parked or closed
//! case is told too.

use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use opsloop::chatops::ChatOpsFile;
use opsloop::chatops::notifier::{MAX_DELIVERIES, Notifier};
use opsloop::pubsub::consumer::{Delivery, Disposition, Handler};
use opsloop::roles::Role;
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::flow::Loop;
use crate::helpers::*;

/// A fake incoming webhook: records every body; answers 500 to the first
/// `failing` posts.
#[derive(Clone, Default)]
struct Hook {
    posts: Arc<Mutex<Vec<Value>>>,
    failing: Arc<Mutex<u32>>,
    /// Answers 403 (a revoked webhook) to everything.
    revoked: Arc<Mutex<bool>>,
}

async fn receive(State(h): State<Hook>, Json(body): Json<Value>) -> Response {
    if *h.revoked.lock().unwrap() {
        return (StatusCode::FORBIDDEN, "invalid_token").into_response();
    }
    {
        let mut failing = h.failing.lock().unwrap();
        if *failing > 0 {
            *failing -= 1;
            return (StatusCode::INTERNAL_SERVER_ERROR, "down").into_response();
        }
    }
    h.posts.lock().unwrap().push(body);
    (StatusCode::OK, "ok").into_response()
}

async fn hook_server(h: &Hook) -> TestServer {
    TestServer::start(
        axum::Router::new()
            .route("/hook", post(receive))
            .with_state(h.clone()),
    )
    .await
}

fn notifier(lp: &Loop, url: &str) -> Notifier {
    let file: ChatOpsFile =
        toml::from_str(&format!("[tenants.t-001]\nwebhook_url = \"{url}/hook\"\n")).unwrap();
    Notifier::new(lp.app.pool.clone(), file)
}

fn prod_plan() -> Value {
    json!({
        "title": "restart checkout in prod", "environment": "prod",
        "steps": [{"action": "script.exec", "params": {"script": "restart-service.sh", "args": ["--service", "checkout"]},
                   "timeout_s": 10, "retry": 0}],
        "rollback": {"steps": [{"action": "noop", "timeout_s": 10, "retry": 0}]},
        "verify": {"checks": []}
    })
}

/// Every message of the feed the notifier's consumer holds, handled once.
/// Its durable starts at the feed's end, as in the service: create it
/// (`durable_for`) before the facts it should see.
async fn drain(lp: &Loop, n: &Notifier) -> usize {
    lp.drain(Role::Notifier, n).await
}

/// The feed's `evt.gate.pending.v1`, as the notifier's `delivered`-th
/// delivery of it.
async fn pending_delivery(lp: &Loop, delivered: i64) -> Delivery {
    let feed = crate::nats::read_stream(&lp.jetstream().await, "OPSLOOP_EVT").await;
    let (subject, envelope) = feed
        .into_iter()
        .find(|(subject, _)| subject == "evt.gate.pending.v1")
        .expect("a pending gate on the feed");
    Delivery {
        subject,
        envelope,
        traceparent: None,
        delivered,
    }
}

/// A case of a prod plan waiting at the gate, and a notifier whose
/// webhook is `hook`'s server (kept alive by the caller).
async fn gate_waiting_for(pool: PgPool, hook: &Hook) -> (Loop, TestServer, Notifier) {
    let lp = Loop::new(pool).await;
    let server = hook_server(hook).await;
    let n = notifier(&lp, &server.url);
    let (case, _) = lp.propose(&prod_plan()).await;
    assert_eq!(lp.app.status(case).await, "WAIT_GATE");
    (lp, server, n)
}

async fn notifications(lp: &Loop) -> Vec<(String, String, i32)> {
    sqlx::query_as("SELECT kind, outcome, attempts FROM chat_notification ORDER BY at")
        .fetch_all(&lp.app.pool)
        .await
        .unwrap()
}

#[sqlx::test]
async fn a_waiting_gate_posts_one_message_with_buttons_bound_to_the_plan(pool: PgPool) {
    let lp = Loop::new(pool).await;
    let hook = Hook::default();
    let server = hook_server(&hook).await;
    let n = notifier(&lp, &server.url);
    // The notifier's durable exists before the case; a case of another
    // tenant (no webhook) is told nowhere.
    lp.durable_for(Role::Notifier).await;
    let (case, hash) = lp.propose(&prod_plan()).await;
    assert_eq!(lp.app.status(case).await, "WAIT_GATE");
    drain(&lp, &n).await;
    let posts = hook.posts.lock().unwrap().clone();
    assert_eq!(posts.len(), 1, "{posts:#?}");
    let digest = lp.app.dryrun_digest(case).await;
    let buttons = &posts[0]["blocks"][1]["elements"];
    assert_eq!(buttons[0]["action_id"], "approve");
    assert_eq!(
        buttons[0]["value"],
        format!("{case}:{hash}:{}", digest.as_str().unwrap())
    );
    let text = posts[0]["text"].as_str().unwrap();
    assert!(text.contains("waits for 2 approver"), "{text}");
    assert!(text.contains("restart checkout in prod"), "{text}");

    assert_eq!(
        notifications(&lp).await,
        [("gate_pending".into(), "posted".into(), 1)]
    );
    // The same message again (a redelivery): nothing posted twice.
    let again = pending_delivery(&lp, 2).await;
    assert_eq!(n.handle(&again).await, Disposition::Done);
    assert_eq!(hook.posts.lock().unwrap().len(), 1);
    // Dismissing the case tells the channel it closed.
    let r = lp
        .app
        .patch(
            case,
            OPERATOR,
            "n-1",
            json!({"event": "dismiss", "reason": "handled by hand"}),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    lp.settle().await;
    drain(&lp, &n).await;
    let posts = hook.posts.lock().unwrap().clone();
    assert_eq!(posts.len(), 2, "{posts:#?}");
    assert!(
        posts[1]["text"]
            .as_str()
            .unwrap()
            .contains("closed (dismiss): handled by hand"),
        "{}",
        posts[1]
    );
}

/// A webhook that does not answer is tried again (the consumer's back-off),
/// then given up after `MAX_DELIVERIES` and recorded; the message is done,
/// so the feed moves on, and a later redelivery posts nothing.
#[sqlx::test]
async fn a_dead_webhook_is_retried_then_given_up_without_holding_the_feed(pool: PgPool) {
    let hook = Hook::default();
    *hook.failing.lock().unwrap() = 1000;
    let (lp, _server, n) = gate_waiting_for(pool, &hook).await;
    let first = pending_delivery(&lp, 1).await;
    assert!(matches!(n.handle(&first).await, Disposition::Retry(_)));
    assert!(notifications(&lp).await.is_empty());
    let last = pending_delivery(&lp, MAX_DELIVERIES).await;
    assert_eq!(n.handle(&last).await, Disposition::Done);
    assert_eq!(
        notifications(&lp).await,
        [(
            "gate_pending".into(),
            "failed".into(),
            i32::try_from(MAX_DELIVERIES).unwrap()
        )]
    );
    *hook.failing.lock().unwrap() = 0;
    assert_eq!(n.handle(&first).await, Disposition::Done);
    assert!(hook.posts.lock().unwrap().is_empty());
    assert!(
        lp.app
            .metric("chat_notifications_total{outcome=\"failed\"}")
            .await
            >= 1.0
    );
}

/// A webhook that refuses (403: revoked) is not asked again: given up on the
/// first delivery.
#[sqlx::test]
async fn a_refusing_webhook_is_given_up_at_once(pool: PgPool) {
    let hook = Hook::default();
    *hook.revoked.lock().unwrap() = true;
    let (lp, server, n) = gate_waiting_for(pool, &hook).await;
    assert_eq!(
        n.handle(&pending_delivery(&lp, 1).await).await,
        Disposition::Done
    );
    assert_eq!(
        notifications(&lp).await,
        [("gate_pending".into(), "failed".into(), 1)]
    );
    let error: String = sqlx::query_scalar("SELECT error FROM chat_notification")
        .fetch_one(&lp.app.pool)
        .await
        .unwrap();
    assert!(
        !error.contains(&server.url),
        "the webhook URL is a secret: {error}"
    );
}
