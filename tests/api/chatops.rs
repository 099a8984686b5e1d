//! ChatOps inbound (DESIGN §13): the `/opsloop` slash command and message
//! buttons, signed as Slack signs them, acting as the mapped identity with
//! its rules unchanged; bad signatures, old requests and unmapped users are
//! refused.

use opsloop::chatops::{ChatOps, ChatOpsFile, signature};
use reqwest::Method;
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use crate::helpers::*;

const SECRET: &[u8] = b"test-signing-secret-0123456789";

/// The tests' ChatOps: three chat users mapped to the test identities.
pub fn chatops() -> ChatOps {
    let file: ChatOpsFile = toml::from_str(
        r#"
        [users]
        U-BOB = "bob"
        U-CAROL = "carol"
        U-VIC = "vic"
        U-GHOST = "nobody-has-this-token"
        U-SVC = "gatekeeper"
        "#,
    )
    .unwrap();
    ChatOps::new(file, SECRET.to_vec()).unwrap()
}

/// Posts `body` to `path` with Slack's headers, signed at `at` (Unix s).
async fn post_signed(
    app: &TestApp,
    path: &str,
    body: &str,
    at: i64,
    secret: &[u8],
) -> TestResponse {
    let ts = at.to_string();
    let sig = signature::sign(secret, &ts, body.as_bytes());
    app.send(
        Method::POST,
        path,
        None,
        &[
            ("content-type", "application/x-www-form-urlencoded"),
            ("x-slack-request-timestamp", &ts),
            ("x-slack-signature", &sig),
        ],
        Some(body.to_string()),
    )
    .await
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

async fn slash(app: &TestApp, user: &str, text: &str) -> TestResponse {
    let body = serde_urlencoded::to_string([
        ("user_id", user),
        ("text", text),
        ("command", "/opsloop"),
        ("trigger_id", &Uuid::new_v4().to_string()),
    ])
    .unwrap();
    post_signed(app, "/chatops/slack/commands", &body, now(), SECRET).await
}

async fn button(
    app: &TestApp,
    user: &str,
    action: &str,
    value: &str,
    trigger: &str,
) -> TestResponse {
    let payload = json!({"type": "block_actions", "user": {"id": user}, "trigger_id": trigger,
                         "actions": [{"action_id": action, "value": value, "action_ts": "1700000000.1"}]});
    let body = serde_urlencoded::to_string([("payload", payload.to_string())]).unwrap();
    post_signed(app, "/chatops/slack/interactions", &body, now(), SECRET).await
}

fn text(r: &TestResponse) -> String {
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["response_type"], "ephemeral");
    r.body["text"].as_str().unwrap().to_string()
}

async fn waiting(app: &TestApp, required: i16) -> (Uuid, String) {
    let case = app.case_in("PLANNING").await;
    let hash = app.store_plan(case, "planner", Some(required)).await;
    assert_eq!(app.event(case, SERVICE, "plan_ready").await.status, 200);
    (case, hash)
}

/// The actor, event and request meta of each of the case's accepted moves.
async fn moves(app: &TestApp, case: Uuid) -> Vec<(String, String, Value)> {
    sqlx::query_as(
        "SELECT actor, event, COALESCE(meta->'request', 'null') FROM case_timeline WHERE case_id = $1 \
         AND kind = 'transition' ORDER BY seq",
    )
    .bind(case)
    .fetch_all(&app.pool)
    .await
    .unwrap()
}

/// Approving from chat: the slash command with a 12-digit prefix, then a
/// button, each as the mapped person; 1 of 2, then the gate opens. The
/// timeline names the people, not a chat bot.
#[sqlx::test]
async fn a_mapped_person_approves_from_chat_under_the_same_rules(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let (case, hash) = waiting(&app, 2).await;
    let said = text(&slash(&app, "U-BOB", &format!("approve {case} {}", &hash[..12])).await);
    assert!(said.contains("1 of 2"), "{said}");
    assert_eq!(app.status(case).await, "WAIT_GATE");
    // The same person again: counted once.
    let said = text(&slash(&app, "U-BOB", &format!("approve {case} {}", &hash[..16])).await);
    assert!(said.contains("already counts"), "{said}");
    // Carol clicks Approve on the notification; Slack retries the click.
    let value = format!("{case}:{hash}:-");
    let trigger = Uuid::new_v4().to_string();
    let said = text(&button(&app, "U-CAROL", "approve", &value, &trigger).await);
    assert!(said.contains("EXECUTING"), "{said}");
    let again = text(&button(&app, "U-CAROL", "approve", &value, &trigger).await);
    assert_eq!(again, said, "a retried click is the same request");
    assert_eq!(app.status(case).await, "EXECUTING");
    let gate: Vec<(String, String)> = moves(&app, case)
        .await
        .into_iter()
        .filter(|(_, event, _)| event.starts_with("gate_"))
        .map(|(actor, event, meta)| {
            assert_eq!(meta["via"], "slack", "{meta}");
            (actor, event)
        })
        .collect();
    assert_eq!(
        gate,
        [
            ("bob".to_string(), "gate_vote".to_string()),
            ("carol".to_string(), "gate_approved".to_string())
        ]
    );
}

/// A viewer may look but not approve; a prefix of no current plan is
/// answered in words; `case` shows the plan's prefix; dismiss needs a
/// reason and records it.
#[sqlx::test]
async fn chat_commands_answer_in_words_and_keep_each_identitys_rights(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let (case, hash) = waiting(&app, 1).await;
    let shown = text(&slash(&app, "U-VIC", &format!("case {case}")).await);
    assert!(
        shown.contains("WAIT_GATE") && shown.contains(&hash[..12]),
        "{shown}"
    );
    let said = text(&slash(&app, "U-VIC", &format!("approve {case} {}", &hash[..12])).await);
    assert!(said.starts_with("Not allowed"), "{said}");
    let said = text(&slash(&app, "U-BOB", &format!("approve {case} {}", "0".repeat(12))).await);
    assert!(said.contains("not the current plan"), "{said}");
    let said = text(&slash(&app, "U-BOB", "approve soon").await);
    assert!(
        said.contains("usage") || said.contains("not a case id"),
        "{said}"
    );
    let said = text(&slash(&app, "U-BOB", &format!("case {}", Uuid::now_v7())).await);
    assert!(said.starts_with("No case"), "{said}");
    assert_eq!(app.status(case).await, "WAIT_GATE");
    // Bob is no operator: dismiss is not his.
    let said = text(&slash(&app, "U-BOB", &format!("dismiss {case} handled")).await);
    assert!(said.starts_with("Not allowed"), "{said}");
}

/// Anything not signed with the secret, signed too long ago, or from a
/// chat user with no (or no known) identity does nothing.
#[sqlx::test]
async fn unsigned_old_and_unmapped_requests_do_nothing(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let (case, hash) = waiting(&app, 1).await;
    let body = serde_urlencoded::to_string([
        ("user_id", "U-BOB"),
        ("text", &format!("approve {case} {}", &hash[..12])),
    ])
    .unwrap();
    let path = "/chatops/slack/commands";
    let forged = post_signed(&app, path, &body, now(), b"not-the-secret-at-all").await;
    assert_eq!(
        (forged.status, forged.code()),
        (401, "signature_invalid"),
        "{:?}",
        forged.body
    );
    let old = post_signed(&app, path, &body, now() - 301, SECRET).await;
    assert_eq!((old.status, old.code()), (401, "signature_invalid"));
    let bare = app
        .send(
            Method::POST,
            path,
            None,
            &[("content-type", "application/x-www-form-urlencoded")],
            Some(body.clone()),
        )
        .await;
    assert_eq!(bare.status, 401);
    // Mapped to a service identity: a chat user never speaks for a worker.
    for user in ["U-STRANGER", "U-GHOST", "U-SVC"] {
        let said = text(&slash(&app, user, &format!("approve {case} {}", &hash[..12])).await);
        assert!(said.starts_with("Not allowed"), "{user}: {said}");
    }
    assert_eq!(app.status(case).await, "WAIT_GATE");
    assert_eq!(
        moves(&app, case).await.len(),
        3,
        "nothing but the way to the gate"
    );
}

/// Once the plan has a dry run, a chat approval names it: without it, or
/// with an older one, nothing is sent; the current one counts.
#[sqlx::test]
async fn a_chat_approval_names_the_dry_run_it_judged(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let (case, hash) = waiting(&app, 1).await;
    let digest = format!("{:064x}", Uuid::now_v7().as_u128());
    sqlx::query(
        "INSERT INTO plan_dryrun (id, case_id, plan_id, plan_hash, digest, outcome, artefact, attempt_id) \
         SELECT $1, case_id, id, plan_hash, $2, 'ok', '{\"observed_at\": \"2026-11-30T00:00:00Z\", \"steps\": []}', $3 \
         FROM plan_proposed WHERE case_id = $4",
    )
    .bind(Uuid::now_v7())
    .bind(&digest)
    .bind(Uuid::now_v7())
    .bind(case)
    .execute(&app.pool)
    .await
    .unwrap();
    sqlx::query(
        "UPDATE plan_proposed SET dryrun_digest = $1, gate_dryrun_digest = $1 WHERE case_id = $2",
    )
    .bind(&digest)
    .bind(case)
    .execute(&app.pool)
    .await
    .unwrap();
    let plan = &hash[..12];
    let said = text(&slash(&app, "U-BOB", &format!("approve {case} {plan}")).await);
    assert!(said.starts_with("Name the dry run"), "{said}");
    let said = text(
        &slash(
            &app,
            "U-BOB",
            &format!("approve {case} {plan} {}", "e".repeat(12)),
        )
        .await,
    );
    assert!(said.contains("not the plan's current dry run"), "{said}");
    let said = text(&button(&app, "U-BOB", "approve", &format!("{case}:{hash}:-"), "t-1").await);
    assert!(
        said.starts_with("Name the dry run"),
        "a button posted before the dry run: {said}"
    );
    assert_eq!(app.status(case).await, "WAIT_GATE");
    let said = text(
        &slash(
            &app,
            "U-BOB",
            &format!("approve {case} {plan} {}", &digest[..12]),
        )
        .await,
    );
    assert!(said.contains("EXECUTING"), "{said}");
}
