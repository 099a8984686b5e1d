//! `opsloop demo`: drives one case through the transitions that exist, over
//! the real HTTP API, and prints its timeline. Worker facts (`plan_*`) are
//! sent with a service token until the workers that emit them exist.

use anyhow::{Context, bail};
use serde_json::{Value, json};

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

    let steps: [(&str, &str, Value); 7] = [
        (
            "operator",
            "start_analysis",
            json!({"event": "start_analysis"}),
        ),
        (
            "operator",
            "analysis_done",
            json!({"event": "analysis_done", "reason": "p95 regression since deploy 42"}),
        ),
        (
            "service",
            "plan_ready (no plan stored yet: the guard refuses)",
            json!({"event": "plan_ready"}),
        ),
        (
            "operator",
            "start_analysis again (illegal in PLANNING)",
            json!({"event": "start_analysis"}),
        ),
        (
            "service",
            "plan_failed",
            json!({"event": "plan_failed", "reason": "no template matches kind=latency"}),
        ),
        ("operator", "resume", json!({"event": "resume"})),
        (
            "operator",
            "dismiss",
            json!({"event": "dismiss", "reason": "resolved by the upstream rollback"}),
        ),
    ];
    for (n, (who, label, body)) in steps.into_iter().enumerate() {
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

    let (_, timeline) = client
        .call(
            reqwest::Method::GET,
            &format!("/case/{id}/timeline"),
            &tokens.operator,
            None,
            None,
        )
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
    let (_, case) = client
        .call(
            reqwest::Method::GET,
            &format!("/case/{id}"),
            &tokens.operator,
            None,
            None,
        )
        .await?;
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
