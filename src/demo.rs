//! `opsloop demo`: the walking skeleton over the real HTTP API and NATS:
//! metrics are ingested, a case is analysed, planned from a template,
//! auto-approved, executed (an allowlisted script), verified and closed; a
//! second case breaches its SLO, parks and is rolled back; a third is
//! opened by nobody: the analyst's detector finds a latency regression in
//! the ingested metrics and the case opens and runs by itself.

use anyhow::{Context, bail};
use serde_json::{Value, json};

/// The tenant of the demo's cases; the demo's tokens act for it (scripts/demo.sh).
const TENANT: &str = "t-001";

pub struct DemoTokens {
    pub operator: String,
    pub service: String,
}

/// Reads the case's `evt.case.transition.v1` messages back from JetStream,
/// as an external subscriber would, until `versions` arrived or 10 s passed.
async fn follow_on_nats(nats_url: &str, case: &str, versions: usize) -> anyhow::Result<()> {
    use crate::contract::fact::{EVT_CASE_TRANSITION, Fact};
    use futures::StreamExt;
    let mut messages = crate::pubsub::feed::follow(nats_url, EVT_CASE_TRANSITION, true).await?;
    println!(
        "\ndemo: the same transitions as a NATS subscriber sees them ({EVT_CASE_TRANSITION}):"
    );
    let mut seen = 0;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while seen < versions {
        let Ok(Some(Ok(msg))) = tokio::time::timeout_at(deadline, messages.next()).await else {
            bail!("only {seen} of {versions} transitions arrived on NATS within 10 s");
        };
        // Other producers share the stream; only this case's envelopes count.
        let Ok(message) = crate::contract::Message::<Fact>::from_bytes(&msg.payload) else {
            continue;
        };
        let Fact::CaseTransition(t) = &message.body else {
            continue;
        };
        if message.case_id.to_string() != case {
            continue;
        }
        seen += 1;
        println!(
            "  v{:<3} {:>10} -> {:<10} {:<15} id={}",
            t.version,
            t.from.as_str(),
            t.to.as_str(),
            t.event.as_str(),
            message.id
        );
    }
    Ok(())
}

struct Client {
    http: reqwest::Client,
    base: String,
}

/// A passage `/kb/search` found.
#[derive(serde::Deserialize)]
struct PastHit {
    source: String,
    passage: String,
    labels: std::collections::BTreeMap<String, String>,
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

impl Client {
    /// Stores `(minutes ago, value)` rows of `service`'s latency.
    async fn ingest_latency(
        &self,
        token: &str,
        service: &str,
        rows: impl Iterator<Item = (i64, f64)>,
    ) -> anyhow::Result<()> {
        use chrono::Timelike;
        let now = chrono::Utc::now()
            .with_second(0)
            .and_then(|t| t.with_nanosecond(0))
            .context("the current minute")?;
        let rows: Vec<Value> = rows
            .map(|(ago, v)| {
                json!({"tenant": TENANT, "resource": service, "metric": "latency_p95_ms",
                       "bucket": (now - chrono::Duration::minutes(ago)).to_rfc3339(),
                       "avg": v, "max": v * 1.1})
            })
            .collect();
        let (status, reply) = self
            .call(
                reqwest::Method::POST,
                "/metrics/ingest",
                token,
                Some(json!({ "rows": rows })),
                None,
            )
            .await?;
        if status != 202 {
            bail!("ingesting metrics answered {status}: {reply}");
        }
        Ok(())
    }

    async fn ingest(&self, token: &str, service: &str, latency_ms: f64) -> anyhow::Result<()> {
        self.ingest_latency(token, service, std::iter::once((0, latency_ms)))
            .await?;
        println!("demo: ingested latency_p95_ms = {latency_ms} ms for {service}");
        Ok(())
    }

    /// Ingests a day and a half of one-minute latency for `service` ending
    /// now: about 120 ms, with a regression to 900 ms from 9 to 4 minutes
    /// ago (recovered since).
    async fn ingest_regression(&self, token: &str, service: &str) -> anyhow::Result<()> {
        let rows = (0..36 * 60_i64).rev().map(|ago| {
            let v = if (4..10).contains(&ago) {
                900.0
            } else {
                120.0 + ((ago * 7919) % 23) as f64 / 23.0 * 8.0
            };
            (ago, v)
        });
        self.ingest_latency(token, service, rows).await?;
        println!(
            "demo: ingested 36 h of latency_p95_ms for {service}: about 120 ms, 900 ms from 9 to 4 minutes ago"
        );
        Ok(())
    }

    /// Polls the tenant's cases until one labelled `service` appears.
    async fn case_of_service(
        &self,
        token: &str,
        service: &str,
        secs: u64,
    ) -> anyhow::Result<crate::model::Case> {
        #[derive(serde::Deserialize)]
        struct Page {
            items: Vec<crate::model::Case>,
        }
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(secs);
        loop {
            let page: Page = serde_json::from_value(
                self.get(&format!("/cases?tenant={TENANT}&limit=50"), token)
                    .await?,
            )
            .context("the case list")?;
            let found = page
                .items
                .into_iter()
                .find(|c| c.labels.get("service").and_then(Value::as_str) == Some(service));
            if let Some(case) = found {
                return Ok(case);
            }
            if tokio::time::Instant::now() > deadline {
                bail!("no case for {service} opened within {secs} s: the detector did not fire");
            }
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
    }

    /// Opens a degraded-service case and starts its analysis.
    async fn open_case(&self, token: &str, service: &str, key: &str) -> anyhow::Result<String> {
        let (status, case) = self
            .call(
                reqwest::Method::POST,
                "/case",
                token,
                Some(json!({
                    "title": format!("{service} p95 latency above 800 ms"),
                    "tenant": TENANT,
                    "severity": "high",
                    "kind": "service",
                    "labels": {"alertname": "ServiceDegraded", "service": service, "env": "staging"}
                })),
                None,
            )
            .await?;
        if status != 201 {
            bail!("creating the demo case answered {status}: {case}");
        }
        let id = case["id"].as_str().context("case id")?.to_string();
        println!("demo: created case {id} for {service} (NEW)");
        let (status, reply) = self
            .call(
                reqwest::Method::PATCH,
                &format!("/case/{id}/transition"),
                token,
                Some(json!({"event": "start_analysis"})),
                Some(key),
            )
            .await?;
        if status != 200 {
            bail!("start_analysis answered {status}: {reply}");
        }
        Ok(id)
    }

    /// Polls `/kb/search` until the librarian role has written `case`'s
    /// past-case document (the first ending loads the model: seconds).
    async fn wait_for_past_case(
        &self,
        token: &str,
        case: &str,
        service: &str,
        secs: u64,
    ) -> anyhow::Result<Vec<PastHit>> {
        #[derive(serde::Deserialize)]
        struct Found {
            hits: Vec<PastHit>,
        }
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(secs);
        let path = format!(
            "/kb/search?q={service}+was+tried+rolled+back+after+verification&k=20&kind=past_case&label=outcome:rolled_back"
        );
        loop {
            let (status, body) = self
                .call(reqwest::Method::GET, &path, token, None, None)
                .await?;
            if status == 200 {
                let found: Found =
                    serde_json::from_value(body).context("the /kb/search answer does not parse")?;
                let mine: Vec<PastHit> = found
                    .hits
                    .into_iter()
                    .filter(|h| h.source == format!("case:{case}"))
                    .collect();
                if !mine.is_empty() {
                    return Ok(mine);
                }
            } else if status != 503 {
                bail!("/kb/search answered {status}: {body}");
            }
            if tokio::time::Instant::now() > deadline {
                bail!("the librarian did not record case {case} within {secs} s");
            }
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
    }

    /// Polls until `done` holds for the case's (case, executions), or `secs` pass.
    async fn wait_for(
        &self,
        id: &str,
        token: &str,
        secs: u64,
        what: &str,
        done: impl Fn(&Value, &Value) -> bool,
    ) -> anyhow::Result<(Value, Value)> {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(secs);
        loop {
            let case = self.get(&format!("/case/{id}"), token).await?;
            let execs = self.get(&format!("/case/{id}/executions"), token).await?;
            if done(&case, &execs) {
                return Ok((case, execs));
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "case {id}: {what} did not happen within {secs} s; it is {}",
                    case["status"]
                );
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }

    async fn print_case(&self, id: &str, token: &str) -> anyhow::Result<usize> {
        let timeline = self.get(&format!("/case/{id}/timeline"), token).await?;
        println!("\ndemo: timeline of case {id}");
        let mut accepted = 0;
        for e in timeline["items"].as_array().into_iter().flatten() {
            accepted += usize::from(e["kind"] == "transition");
            println!(
                "  v{:<3} {:<10} {:<15} {:>10} -> {:<10} actor={:<12} {}",
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
        // What the approvers (or the gatekeeper) judged besides the plan.
        let plan = self.get(&format!("/case/{id}/plan"), token).await?;
        let dry_run = &plan["dry_run"];
        if dry_run.is_object() {
            println!(
                "  dry run before the gate: {} (digest {})",
                dry_run["outcome"].as_str().unwrap_or(""),
                dry_run["digest"].as_str().map_or("", |d| &d[..12])
            );
            for step in dry_run["artefact"]["steps"]
                .as_array()
                .into_iter()
                .flatten()
            {
                println!(
                    "    step {} {:<12} {:<11} {}",
                    step["index"],
                    step["action"].as_str().unwrap_or(""),
                    step["outcome"].as_str().unwrap_or(""),
                    step["detail"]["stdout"]["text"]
                        .as_str()
                        .or(step["error"].as_str())
                        .unwrap_or("")
                        .trim_end()
                );
            }
        }
        let execs = self.get(&format!("/case/{id}/executions"), token).await?;
        for run in execs["runs"].as_array().into_iter().flatten().rev() {
            println!(
                "  execution {} ({}): {}{}",
                run["id"].as_str().unwrap_or(""),
                run["kind"].as_str().unwrap_or(""),
                run["status"].as_str().unwrap_or(""),
                run["error"]
                    .as_str()
                    .map(|e| format!(" - {e}"))
                    .unwrap_or_default()
            );
            for step in run["steps"].as_array().into_iter().flatten() {
                println!(
                    "    {} {} {:<12} {:<6} tries={} exit={} out={:?}",
                    step["phase"].as_str().unwrap_or(""),
                    step["index"],
                    step["action"].as_str().unwrap_or(""),
                    step["status"].as_str().unwrap_or(""),
                    step["tries"],
                    step["result"]["exit_code"],
                    step["result"]["stdout"]["text"]
                        .as_str()
                        .unwrap_or("")
                        .trim_end()
                );
            }
        }
        for v in execs["verifications"].as_array().into_iter().flatten() {
            println!("  verification: {}", v["outcome"].as_str().unwrap_or(""));
        }
        Ok(accepted)
    }
}

/// Three cases through the whole loop over the real HTTP API, NATS and
/// workers: one recovers and closes; one breaches its SLO, parks, and is
/// rolled back; one is opened by the detector from ingested metrics.
pub async fn run(base: &str, tokens: &DemoTokens, nats_url: Option<&str>) -> anyhow::Result<()> {
    let client = Client {
        http: crate::http_client::http_client().build()?,
        base: base.trim_end_matches('/').to_string(),
    };
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..6];
    let terminal = |c: &Value, _: &Value| c["status"] == "CLOSED" || c["status"] == "PARKED";

    println!("demo: case 1 - the restart helps, the SLO holds");
    let healthy = format!("checkout-{suffix}");
    client.ingest(&tokens.service, &healthy, 120.0).await?;
    let first = client
        .open_case(&tokens.operator, &healthy, &format!("demo-{suffix}-1"))
        .await?;
    let (case, _) = client
        .wait_for(&first, &tokens.operator, 90, "closing", terminal)
        .await?;
    let accepted = client.print_case(&first, &tokens.operator).await?;
    if case["status"] != "CLOSED" {
        bail!(
            "case 1 ended in {} ({}) instead of CLOSED",
            case["status"],
            case["park_reason"]
        );
    }

    println!("\ndemo: case 2 - the SLO is breached after the change: park and roll back");
    let degraded = format!("payments-{suffix}");
    client.ingest(&tokens.service, &degraded, 950.0).await?;
    let second = client
        .open_case(&tokens.operator, &degraded, &format!("demo-{suffix}-2"))
        .await?;
    let rolled_back = |c: &Value, e: &Value| {
        c["status"] == "PARKED"
            && e["runs"].as_array().is_some_and(|runs| {
                runs.iter()
                    .any(|r| r["kind"] == "rollback" && r["status"] != "running")
            })
    };
    let (case, _) = client
        .wait_for(&second, &tokens.operator, 90, "the rollback", rolled_back)
        .await?;
    client.print_case(&second, &tokens.operator).await?;
    if case["park_reason"] != "breach" {
        bail!(
            "case 2 parked for {} instead of breach",
            case["park_reason"]
        );
    }

    println!("\ndemo: the librarian remembers case 2 (GET /kb/search, kind past_case)");
    let passages = client
        .wait_for_past_case(&tokens.operator, &second, &degraded, 90)
        .await?;
    // The document's outcome section, if among the passages found.
    let outcome = passages
        .iter()
        .flat_map(|p| p.passage.lines())
        .find(|l| l.contains("was tried on"))
        .unwrap_or("(the outcome section was not among the passages found)");
    println!(
        "demo: {} (outcome {}): {outcome}",
        passages[0].source,
        passages[0]
            .labels
            .get(crate::librarian::past_case::OUTCOME_LABEL)
            .map_or("-", String::as_str)
    );

    println!(
        "\ndemo: case 3 - {degraded} degrades again: the template that just failed there is not proposed again"
    );
    let fourth = client
        .open_case(&tokens.operator, &degraded, &format!("demo-{suffix}-3"))
        .await?;
    let (case, _) = client
        .wait_for(&fourth, &tokens.operator, 90, "parking", terminal)
        .await?;
    client.print_case(&fourth, &tokens.operator).await?;
    let case: crate::model::Case =
        serde_json::from_value(case).context("the case does not parse")?;
    let reason = case.park_reason.as_deref().unwrap_or_default();
    if case.status != crate::workflow::Status::Parked || !reason.contains("skipped") {
        bail!(
            "case 3 ended in {} ({reason}) instead of PARKED with the failed template skipped",
            case.status
        );
    }

    println!("\ndemo: case 4 - nobody opens it: the detector finds a regression in the metrics");
    let detected = format!("search-{suffix}");
    client.ingest_regression(&tokens.service, &detected).await?;
    let case = client
        .case_of_service(&tokens.operator, &detected, 60)
        .await?;
    let third = case.id.to_string();
    println!(
        "demo: the analyst opened case {third} by itself: {:?} (kind {}, severity {})",
        case.title,
        case.kind.as_deref().unwrap_or("-"),
        case.severity
    );
    let (case, _) = client
        .wait_for(&third, &tokens.operator, 90, "closing", terminal)
        .await?;
    client.print_case(&third, &tokens.operator).await?;
    if case["status"] != "CLOSED" {
        bail!(
            "case 4 ended in {} ({}) instead of CLOSED",
            case["status"],
            case["park_reason"]
        );
    }

    if let Some(url) = nats_url {
        follow_on_nats(url, &first, accepted).await?;
    }
    Ok(())
}
