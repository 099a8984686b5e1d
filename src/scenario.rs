//! The scenario harness (issue #20): `opsloop scenario run FILES` plays
//! scripted operational problems against a real stack and measures the
//! loop as an SRE judges it: time to detect, plan, approve, mitigate and
//! verify, and the final status against the expected one.
//!
//! Each scenario gets a stack of its own: this binary's `serve` (every
//! role) against `DATABASE_URL` and `NATS_URL`, with the scenario's policy
//! (re-plans, a freeze window) and, when the scenario scripts LLM answers,
//! a fake OpenAI-compatible server (`crate::fakes::llm`). The problem is a
//! day and a half of one service's latency with a regression in the last
//! minutes, ingested through the API: the analyst's detector opens the
//! case by itself. What happens after the change is the metrics': the
//! regression recovered, still there, or no data at all.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::{DateTime, Timelike, Utc};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::auth::{self, TenantScope};
use crate::fakes::gateway::FakeGateway;
use crate::fakes::k8s::FakeK8s;
use crate::fakes::llm::{FakeLlm, Reply};
use crate::model::{Case, TimelineEntry};

/// A page of `GET /cases` or `GET /case/{id}/timeline`, as far as read here.
#[derive(Deserialize)]
struct Page<T> {
    items: Vec<T>,
}

const TENANT: &str = "t-001";

/// A scenario file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    pub description: String,
    #[serde(default)]
    pub stack: Stack,
    #[serde(default)]
    pub metrics: Metrics,
    pub expect: Expect,
}

/// How the scenario's stack differs from the shipped configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stack {
    /// The policy's `[replan] max_per_case`.
    #[serde(default)]
    pub replan: u32,
    /// A change freeze over every environment, now.
    #[serde(default)]
    pub freeze: bool,
    /// Plans the fake LLM answers in turn (`{{service}}` is the
    /// scenario's service); empty: no LLM, the template planner serves.
    #[serde(default)]
    pub llm: Vec<String>,
    /// A route of the fake gateway `edge` (`{{service}}` filled in), at
    /// weights blue 100 / green 0.
    #[serde(default)]
    pub gateway_route: Option<String>,
    /// Deployments (`namespace/name`, `{{service}}` filled in) of a fake
    /// Kubernetes API server.
    #[serde(default)]
    pub k8s_deployments: Vec<String>,
    /// A person approves the plan the gate holds for one approver (the
    /// harness, as an operator with the approver role, bound to the plan
    /// hash and dry run it reads); the approve time then includes them.
    #[serde(default)]
    pub approve: bool,
}

/// The current plan as `GET /case/{id}/plan` shows it, as far as an
/// approver needs it.
#[derive(Deserialize)]
struct ShownPlan {
    plan_hash: String,
    #[serde(default)]
    dry_run: Option<ShownDryRun>,
}

#[derive(Deserialize)]
struct ShownDryRun {
    digest: String,
}

/// The service's latency: a baseline, a regression, and what follows the
/// change.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metrics {
    pub baseline_ms: f64,
    pub regression_ms: f64,
    pub after: After,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            baseline_ms: 120.0,
            regression_ms: 900.0,
            after: After::Recovered,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum After {
    /// Back to the baseline for the last minutes.
    Recovered,
    /// The regression lasts to this minute.
    Breach,
    /// No rows for the last minutes.
    NoData,
}

/// What the scenario must end in.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    pub status: String,
    /// A part of the park reason.
    #[serde(default)]
    pub park_reason: Option<String>,
    /// Automatic re-plans that must have happened.
    #[serde(default)]
    pub replans: Option<usize>,
    /// The fake gateway's weights for the route at the end.
    #[serde(default)]
    pub gateway_weights: Option<std::collections::BTreeMap<String, u64>>,
    /// Writes (PATCH or PUT) the fake Kubernetes API received.
    #[serde(default)]
    pub k8s_writes: Option<usize>,
    /// Seconds to wait for `status`.
    #[serde(default = "default_timeout")]
    pub timeout_s: u64,
}

fn default_timeout() -> u64 {
    90
}

/// One scenario's outcome and its stage times (seconds).
#[derive(Debug, Clone)]
pub struct Outcome {
    pub name: String,
    pub expected: String,
    pub got: String,
    pub park_reason: Option<String>,
    pub replans: usize,
    pub passed: bool,
    pub why: Option<String>,
    pub detect: Option<f64>,
    pub plan: Option<f64>,
    pub approve: Option<f64>,
    pub mitigate: Option<f64>,
    pub verify: Option<f64>,
    pub wall: f64,
}

pub fn load(path: &Path) -> anyhow::Result<Scenario> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("{} is not a scenario", path.display()))
}

/// Runs every scenario in turn, each on a stack of its own.
pub async fn run_all(files: &[PathBuf]) -> anyhow::Result<Vec<Outcome>> {
    let scenarios = files
        .iter()
        .map(|f| load(f))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut out = Vec::new();
    for s in &scenarios {
        println!("scenario: {} - {}", s.name, s.description);
        // A scenario that cannot run is a failed scenario, not the end of
        // the set.
        let outcome = run(s).await.unwrap_or_else(|e| Outcome {
            why: Some(format!("{e:#}")),
            ..failed(s, Instant::now(), "could not run")
        });
        println!(
            "scenario: {} {} (expected {}, got {}{})",
            s.name,
            if outcome.passed { "passed" } else { "FAILED" },
            outcome.expected,
            outcome.got,
            outcome
                .why
                .as_deref()
                .map(|w| format!("; {w}"))
                .unwrap_or_default()
        );
        out.push(outcome);
    }
    Ok(out)
}

/// The scenario's own stack: the `serve` child, its fake LLM and files.
struct StackRun {
    child: tokio::process::Child,
    url: String,
    operator: String,
    service: String,
    _llm: Option<FakeLlm>,
    gateway: Option<(FakeGateway, crate::fakes::Server, String)>,
    k8s: Option<FakeK8s>,
    dir: PathBuf,
}

impl Drop for StackRun {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn start_stack(s: &Scenario, service: &str) -> anyhow::Result<StackRun> {
    let dir = std::env::temp_dir().join(format!("opsloop-scenario-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir)?;
    let tokens = dir.join("tokens.toml");
    let scope = TenantScope::parse(&[TENANT]).map_err(anyhow::Error::msg)?;
    let operator = auth::create_token(
        &tokens,
        "scenario-operator",
        &[auth::Role::Operator, auth::Role::Approver],
        &scope,
        None,
    )?;
    let service_token = auth::create_token(
        &tokens,
        "scenario-metrics",
        &[auth::Role::Service],
        &scope,
        None,
    )?;
    let mut policy = format!("[replan]\nmax_per_case = {}\n", s.stack.replan);
    if s.stack.freeze {
        let now = Utc::now();
        let _ = write!(
            policy,
            "\n[[freeze_windows]]\nname = \"scenario freeze\"\nfrom = \"{}\"\nuntil = \"{}\"\n",
            (now - chrono::Duration::hours(1)).to_rfc3339(),
            (now + chrono::Duration::hours(1)).to_rfc3339()
        );
    }
    let policy_file = dir.join("policy.toml");
    std::fs::write(&policy_file, policy)?;
    let llm = if s.stack.llm.is_empty() {
        None
    } else {
        let replies = s
            .stack
            .llm
            .iter()
            .map(|p| Reply::Content(p.replace("{{service}}", service)))
            .collect();
        Some(FakeLlm::start(replies).await)
    };
    let gateway = match &s.stack.gateway_route {
        None => None,
        Some(route) => {
            let route = route.replace("{{service}}", service);
            let g = FakeGateway::default();
            g.routes
                .lock()
                .map_err(|_| anyhow::anyhow!("the fake gateway's lock is poisoned"))?
                .insert(route.clone(), json!({"blue": 100, "green": 0}));
            let server = g.start().await;
            Some((g, server, route))
        }
    };
    let k8s = if s.stack.k8s_deployments.is_empty() {
        None
    } else {
        let k8s = FakeK8s::start(Duration::from_millis(50)).await;
        for d in &s.stack.k8s_deployments {
            let d = d.replace("{{service}}", service);
            let (ns, name) = d
                .split_once('/')
                .with_context(|| format!("k8s deployment {d:?}: namespace/name expected"))?;
            k8s.add_deployment(ns, name, "shop/api:1", 1);
        }
        Some(k8s)
    };
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?.port()
    };
    let mut cmd = tokio::process::Command::new(std::env::current_exe()?);
    cmd.arg("serve")
        .env("OPSLOOP_LISTEN", format!("127.0.0.1:{port}"))
        .env("OPSLOOP_TOKENS_FILE", &tokens)
        .env("OPSLOOP_POLICY_FILE", &policy_file)
        .env("OPSLOOP_ROLES", "all")
        .env("OPSLOOP_DETECT_INTERVAL_MS", "500")
        .env("OPSLOOP_VERIFY_DELAY_S", "0")
        .env("OPSLOOP_STEP_BACKOFF_SCALE", "0.1")
        // No librarian: the model is not what these scenarios measure.
        .env_remove("OPSLOOP_EMBEDDINGS_MODEL_DIR")
        .env_remove("OPSLOOP_EMBEDDINGS_URL")
        .env_remove("OPENAI_BASE_URL")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.join("opsloop.log"))?)
        .kill_on_drop(true);
    if let Some(fake) = &llm {
        cmd.env("OPENAI_BASE_URL", &fake.base_url)
            .env("OPSLOOP_LLM_MODEL", "scenario-fake")
            .env("OPSLOOP_LLM_TIMEOUT_MS", "5000");
    }
    if let Some((_, server, _)) = &gateway {
        cmd.env("OPSLOOP_GATEWAYS", format!("edge={}/admin", server.url));
    }
    if let Some(k8s) = &k8s {
        cmd.env("OPSLOOP_K8S_API_URL", &k8s.server.url);
    }
    let child = cmd.spawn().context("starting opsloop serve")?;
    let run = StackRun {
        child,
        url: format!("http://127.0.0.1:{port}"),
        operator,
        service: service_token,
        _llm: llm,
        gateway,
        k8s,
        dir,
    };
    let http = crate::http_client::http_client().build()?;
    let started = Instant::now();
    let mut run = run;
    loop {
        if let Ok(r) = http.get(format!("{}/readyz", run.url)).send().await
            && r.status().is_success()
        {
            break;
        }
        let exited = run.child.try_wait()?.is_some();
        if exited || started.elapsed() > Duration::from_secs(30) {
            let log = std::fs::read_to_string(run.dir.join("opsloop.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            bail!(
                "the scenario's opsloop {} its log ends:\n{}",
                if exited {
                    "exited;"
                } else {
                    "did not become ready in 30 s;"
                },
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(run)
}

/// The rows of the service's latency, `(minutes ago, value)`: 36 h of
/// baseline, the regression from 9 minutes ago, and what follows it.
fn latency_rows(m: &Metrics) -> Vec<(i64, f64)> {
    (0..36 * 60_i64)
        .rev()
        .filter_map(|ago| {
            let jitter = ((ago * 7919) % 23) as f64 / 23.0 * 8.0;
            let v = match (m.after, ago) {
                (_, 4..=9) | (After::Breach, 0..=3) => m.regression_ms,
                (After::NoData, 0..=3) => return None,
                _ => m.baseline_ms + jitter,
            };
            Some((ago, v))
        })
        .collect()
}

async fn run(s: &Scenario) -> anyhow::Result<Outcome> {
    let wall = Instant::now();
    let service = format!(
        "{}-{}",
        s.name,
        &uuid::Uuid::new_v4().simple().to_string()[..6]
    );
    let stack = start_stack(s, &service).await?;
    let http = crate::http_client::http_client().build()?;
    let minute = Utc::now()
        .with_second(0)
        .and_then(|t| t.with_nanosecond(0))
        .context("the current minute")?;
    let rows: Vec<Value> = latency_rows(&s.metrics)
        .into_iter()
        .map(|(ago, v)| {
            json!({"tenant": TENANT, "resource": service, "metric": "latency_p95_ms",
                   "bucket": (minute - chrono::Duration::minutes(ago)).to_rfc3339(),
                   "avg": v, "max": v * 1.1})
        })
        .collect();
    // Before the upload: the detector may open the case while it runs.
    let ingested = Utc::now();
    let r = http
        .post(format!("{}/metrics/ingest", stack.url))
        .bearer_auth(&stack.service)
        .json(&json!({ "rows": rows }))
        .send()
        .await?;
    if r.status().as_u16() != 202 {
        bail!("ingesting the metrics answered {}", r.status());
    }
    let deadline = Instant::now() + Duration::from_secs(s.expect.timeout_s);
    // The case the detector opens for the service.
    let get = |path: String| {
        let request = http
            .get(format!("{}{path}", stack.url))
            .bearer_auth(&stack.operator);
        async move {
            let r = request.send().await?.error_for_status()?;
            anyhow::Ok(r)
        }
    };
    let case_id = loop {
        let page: Page<Case> = get(format!("/cases?tenant={TENANT}&limit=50"))
            .await?
            .json()
            .await?;
        let labels_service = |c: &Case| c.string_labels().get("service") == Some(&service);
        if let Some(case) = page.items.iter().find(|c| labels_service(c)) {
            break case.id;
        }
        if Instant::now() > deadline {
            return Ok(failed(s, wall, "the detector opened no case"));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    // Until the expected status holds and nothing moved for 3 s, or the
    // case ended elsewhere, or time is up.
    let mut last: Option<(i64, Instant)> = None;
    let mut approved = false;
    let case: Case = loop {
        let case: Case = get(format!("/case/{case_id}")).await?.json().await?;
        if s.stack.approve && !approved && case.status == crate::workflow::Status::WaitGate {
            let plan: ShownPlan = get(format!("/case/{case_id}/plan")).await?.json().await?;
            let r = http
                .patch(format!("{}/case/{case_id}/transition", stack.url))
                .bearer_auth(&stack.operator)
                .header("Idempotency-Key", uuid::Uuid::new_v4().to_string())
                .json(
                    &json!({"event": "gate_approved", "plan_hash": plan.plan_hash,
                              "dryrun_digest": plan.dry_run.map(|d| d.digest)}),
                )
                .send()
                .await?;
            // 422 while the gate has not judged the plan yet: asked again.
            approved = r.status().is_success();
        }
        let still = match last {
            Some((v, since)) if v == case.version => since.elapsed() > Duration::from_secs(3),
            _ => {
                last = Some((case.version, Instant::now()));
                false
            }
        };
        let status = case.status.to_string();
        // The expected status, settled; or an end it will not leave.
        let settled = status == s.expect.status || matches!(status.as_str(), "CLOSED" | "PARKED");
        if (settled && still) || Instant::now() > deadline {
            break case;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let entries: Vec<TimelineEntry> = get(format!("/case/{case_id}/timeline?limit=1000"))
        .await?
        .json::<Page<TimelineEntry>>()
        .await?
        .items;
    let moves = || entries.iter().filter(|e| e.kind == "transition");
    let created = Some(case.created_at);
    let first = |event: &str| -> Option<DateTime<Utc>> {
        moves()
            .filter(|e| e.event.as_deref() == Some(event))
            .map(|e| e.at)
            .min()
    };
    let ended = moves()
        .filter(|e| matches!(e.to_status.as_deref(), Some("CLOSED" | "PARKED")))
        .map(|e| e.at)
        .max();
    let secs = |a: Option<DateTime<Utc>>, b: Option<DateTime<Utc>>| -> Option<f64> {
        Some((b? - a?).num_milliseconds() as f64 / 1000.0)
    };
    let plan_ready = first("plan_ready");
    let approved = first("gate_approved");
    let executed = first("exec_done").or(first("exec_failed"));
    let verified = first("verify_pass").or(first("verify_failed"));
    let replans = moves()
        .filter(|e| e.event.as_deref() == Some("replan"))
        .count();
    let got = case.status.to_string();
    let park_reason = case.park_reason.clone();
    let mut why = Vec::new();
    if got != s.expect.status {
        why.push(format!("status {got}"));
    }
    if let Some(part) = &s.expect.park_reason
        && !park_reason
            .as_deref()
            .unwrap_or_default()
            .contains(part.as_str())
    {
        why.push(format!(
            "park reason {:?} lacks {part:?}",
            park_reason.as_deref().unwrap_or("")
        ));
    }
    if let Some(n) = s.expect.replans
        && n != replans
    {
        why.push(format!("{replans} re-plans, expected {n}"));
    }
    if let (Some(expected), Some((g, _, route))) = (&s.expect.gateway_weights, &stack.gateway) {
        let now = g
            .routes
            .lock()
            .map_err(|_| anyhow::anyhow!("the fake gateway's lock is poisoned"))?
            .get(route)
            .cloned()
            .unwrap_or(Value::Null);
        if now != json!(expected) {
            why.push(format!(
                "gateway weights {now}, expected {}",
                json!(expected)
            ));
        }
    }
    if let (Some(expected), Some(k8s)) = (s.expect.k8s_writes, &stack.k8s) {
        let writes = k8s
            .requests()
            .iter()
            .filter(|r| r.starts_with("PATCH") || r.starts_with("PUT"))
            // A dry run (`dryRun=All`) changes nothing.
            .filter(|r| !r.contains("dryRun"))
            .count();
        if writes != expected {
            why.push(format!("{writes} Kubernetes writes, expected {expected}"));
        }
    }
    Ok(Outcome {
        name: s.name.clone(),
        expected: s.expect.status.clone(),
        got,
        park_reason,
        replans,
        passed: why.is_empty(),
        why: (!why.is_empty()).then(|| why.join("; ")),
        detect: secs(Some(ingested), created),
        plan: secs(created, plan_ready),
        approve: secs(plan_ready, approved),
        mitigate: secs(approved, executed),
        verify: secs(executed, verified.or(ended.filter(|_| executed.is_some()))),
        wall: wall.elapsed().as_secs_f64(),
    })
}

fn failed(s: &Scenario, wall: Instant, why: &str) -> Outcome {
    Outcome {
        name: s.name.clone(),
        expected: s.expect.status.clone(),
        got: "no case".into(),
        park_reason: None,
        replans: 0,
        passed: false,
        why: Some(why.into()),
        detect: None,
        plan: None,
        approve: None,
        mitigate: None,
        verify: None,
        wall: wall.elapsed().as_secs_f64(),
    }
}

/// The report as a Markdown table.
pub fn report(outcomes: &[Outcome], command: &str) -> String {
    let t = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{:.0}", v * 1000.0));
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Command: `{command}`, {}.\n",
        Utc::now().format("%Y-%m-%d %H:%M UTC")
    );
    let _ = writeln!(
        out,
        "| scenario | expected | got | park reason | re-plans | detect ms | plan ms | approve ms | mitigate ms | verify ms | wall s | result |"
    );
    let _ = writeln!(
        out,
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|"
    );
    for o in outcomes {
        let reason = o
            .park_reason
            .as_deref()
            .map(|r| {
                let r: String = r.chars().take(60).collect();
                r.replace('|', "\\|")
            })
            .unwrap_or_else(|| "-".into());
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.1} | {} |",
            o.name,
            o.expected,
            o.got,
            reason,
            o.replans,
            t(o.detect),
            t(o.plan),
            t(o.approve),
            t(o.mitigate),
            t(o.verify),
            o.wall,
            match &o.why {
                None => "pass".to_string(),
                Some(w) => format!("FAIL: {w}"),
            }
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics(after: After) -> Metrics {
        Metrics {
            after,
            ..Metrics::default()
        }
    }

    #[test]
    fn what_follows_the_regression_is_the_scenarios() {
        let at = |rows: &[(i64, f64)], ago: i64| rows.iter().find(|r| r.0 == ago).map(|r| r.1);
        for after in [After::Recovered, After::Breach, After::NoData] {
            let rows = latency_rows(&metrics(after));
            // A day and a half of baseline, the regression 9 to 4 minutes ago.
            assert!(at(&rows, 36 * 60 - 1).unwrap() < 130.0);
            assert_eq!(at(&rows, 9), Some(900.0));
            assert_eq!(at(&rows, 4), Some(900.0));
            match after {
                After::Recovered => assert!(at(&rows, 0).unwrap() < 130.0),
                After::Breach => assert_eq!(at(&rows, 0), Some(900.0)),
                After::NoData => assert_eq!((at(&rows, 3), at(&rows, 0)), (None, None)),
            }
        }
    }

    #[test]
    fn the_shipped_scenarios_load() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        let mut n = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let s = load(&path).unwrap();
                assert!(!s.description.is_empty(), "{}", path.display());
                n += 1;
            }
        }
        assert!(n >= 5, "at least five scenarios ship, found {n}");
    }
}
