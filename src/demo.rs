//! `opsloop demo`: drives one case through what exists, over the real HTTP
//! API: the template planner's plan goes through NATS, the orchestrator's
//! consumer and the gatekeeper to EXECUTING. Facts of workers that do not
//! exist yet (analysis, execution) are sent with a service token.

use anyhow::{Context, bail};
use serde_json::{Value, json};

/// One step of the demo walk.
enum Step {
    /// PATCH a transition as the operator or the service identity.
    Event(&'static str, &'static str, Value),
    /// Wait until the workers moved the case to this status.
    Await(&'static str, &'static str),
}

pub struct DemoTokens {
    pub operator: String,
    pub service: String,
}

/// Reads the case's `evt.case.transition.v1` messages back from JetStream,
/// as an external subscriber would, until `versions` arrived or 10 s passed.
async fn follow_on_nats(nats_url: &str, case: &str, versions: usize) -> anyhow::Result<()> {
    use futures::StreamExt;
    let mut messages = crate::pubsub::feed::transitions(nats_url, true).await?;
    println!(
        "\ndemo: the same transitions as a NATS subscriber sees them ({}):",
        crate::pubsub::subjects::EVT_CASE_TRANSITION
    );
    let mut seen = 0;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while seen < versions {
        let Ok(Some(Ok(msg))) = tokio::time::timeout_at(deadline, messages.next()).await else {
            bail!("only {seen} of {versions} transitions arrived on NATS within 10 s");
        };
        // Other producers share the stream; only this case's envelopes count.
        let Ok(env) = serde_json::from_slice::<crate::pubsub::Envelope>(&msg.payload) else {
            continue;
        };
        if env.case_id.map(|c| c.to_string()).as_deref() != Some(case) {
            continue;
        }
        seen += 1;
        println!(
            "  v{:<3} {:>10} -> {:<10} {:<15} id={}",
            env.data["version"],
            env.data["from"].as_str().unwrap_or("?"),
            env.data["to"].as_str().unwrap_or("?"),
            env.data["event"].as_str().unwrap_or("?"),
            env.id
        );
    }
    Ok(())
}

struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<Value>,
        key: Option<&str>,
    ) -> anyhow::Result<(u16, Value)> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token);
        if let Some(k) = key {
            req = req.header("Idempotency-Key", k);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("calling {path}"))?;
        let status = resp.status().as_u16();
        let body = resp.json::<Value>().await.unwrap_or(Value::Null);
        Ok((status, body))
    }

    async fn get(&self, path: &str, token: &str) -> anyhow::Result<Value> {
        Ok(self
            .call(reqwest::Method::GET, path, token, None, None)
            .await?
            .1)
    }
}

pub async fn run(base: &str, tokens: &DemoTokens, nats_url: Option<&str>) -> anyhow::Result<()> {
    let client = Client {
        http: reqwest::Client::new(),
        base: base.trim_end_matches('/').to_string(),
    };
    let (status, case) = client
        .call(
            reqwest::Method::POST,
            "/case",
            &tokens.operator,
            Some(json!({
                "title": "checkout p95 latency above 800 ms",
                "tenant": "t-001",
                "severity": "high",
                "kind": "latency",
                "labels": {"service": "checkout", "env": "staging"}
            })),
            None,
        )
        .await?;
    if status != 201 {
        bail!("creating the demo case answered {status}: {case}");
    }
    let id = case["id"].as_str().context("case id")?.to_string();
    println!("demo: created case {id} (NEW)");

    use Step::{Await, Event};
    let steps = [
        Event(
            "operator",
            "start_analysis",
            json!({"event": "start_analysis"}),
        ),
        Event(
            "operator",
            "analysis_done",
            json!({"event": "analysis_done", "reason": "p95 regression since deploy 42"}),
        ),
        Await("template plan, gate, auto-approval (via NATS)", "EXECUTING"),
        Event(
            "operator",
            "start_analysis again (illegal in EXECUTING)",
            json!({"event": "start_analysis"}),
        ),
        Event(
            "service",
            "exec_failed (no executor yet)",
            json!({"event": "exec_failed", "reason": "no executor adapter is installed yet"}),
        ),
        Event("operator", "resume", json!({"event": "resume"})),
        Await("planner: that template plan was already tried", "PARKED"),
        Event(
            "operator",
            "dismiss without a reason (guard)",
            json!({"event": "dismiss"}),
        ),
        Event(
            "operator",
            "dismiss",
            json!({"event": "dismiss", "reason": "resolved by the upstream rollback"}),
        ),
    ];
    for (n, step) in steps.into_iter().enumerate() {
        let (label, status, reply) = match step {
            Event(who, label, body) => {
                let token = if who == "service" {
                    &tokens.service
                } else {
                    &tokens.operator
                };
                let key = format!("demo-{id}-{n}");
                let (status, reply) = client
                    .call(
                        reqwest::Method::PATCH,
                        &format!("/case/{id}/transition"),
                        token,
                        Some(body),
                        Some(&key),
                    )
                    .await?;
                (label, status, reply)
            }
            Await(label, want) => {
                let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(15);
                loop {
                    let case = client.get(&format!("/case/{id}"), &tokens.operator).await?;
                    if case["status"] == want {
                        println!("demo: {label:<52} -> {want} (version {})", case["version"]);
                        break;
                    }
                    if tokio::time::Instant::now() > deadline {
                        bail!(
                            "the case did not reach {want} within 15 s; it is {}",
                            case["status"]
                        );
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                continue;
            }
        };
        match status {
            200 => println!(
                "demo: {label:<52} -> {} (version {})",
                reply["case"]["status"].as_str().unwrap_or("?"),
                reply["case"]["version"]
            ),
            _ => println!(
                "demo: {label:<52} -> {status} {} ({})",
                reply["code"].as_str().unwrap_or("?"),
                reply["detail"].as_str().unwrap_or("")
            ),
        }
    }

    let timeline = client
        .get(&format!("/case/{id}/timeline"), &tokens.operator)
        .await?;
    println!("\ndemo: timeline of case {id}");
    for e in timeline["items"].as_array().into_iter().flatten() {
        println!(
            "  v{:<3} {:<10} {:<15} {:>10} -> {:<10} actor={:<14} {}",
            e["version"],
            e["kind"].as_str().unwrap_or(""),
            e["event"].as_str().unwrap_or("-"),
            e["from_status"].as_str().unwrap_or("-"),
            e["to_status"].as_str().unwrap_or("-"),
            e["actor"].as_str().unwrap_or(""),
            e["rejection_code"]
                .as_str()
                .or(e["reason"].as_str())
                .unwrap_or("")
        );
    }
    let case = client.get(&format!("/case/{id}"), &tokens.operator).await?;
    if case["status"] != "CLOSED" {
        bail!(
            "the demo case ended in {} instead of CLOSED",
            case["status"]
        );
    }
    let accepted = timeline["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["kind"] == "transition")
        .count();
    if let Some(url) = nats_url {
        follow_on_nats(url, &id, accepted).await?;
    }
    Ok(())
}
