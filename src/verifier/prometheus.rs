//! Prometheus as a verification source: a check whose (metric, stat) has a
//! query in the operator's queries file is asked of a Prometheus server's
//! HTTP API (`GET /api/v1/query`, an instant query at the window's end), and
//! the answer is read as a verdict.
//!
//! It owns the queries file (loaded and checked once, at start-up), the
//! substitution of `{{resource}}`, `{{tenant}}` and `{{window}}`, and the reading of the
//! Prometheus response format. It must not take PromQL from a plan (plans
//! may come from an LLM), must not be called inside a database transaction,
//! and must never turn a failure into a pass: no series, NaN or ±Inf is
//! `no_data`; an error, a timeout, several series or an unreadable answer is
//! `inconclusive`. Both park the case. See `docs/prometheus.md`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::Url;

use crate::contract::Tenant;
use serde::Deserialize;
use serde_json::{Value, json};

use super::check::{Check, Verdict};
use super::settings::VerifySettings;

/// The stats a plan's check may name (DESIGN §4).
const STATS: [&str; 3] = ["avg", "max", "p95"];
/// Longest resource substituted into a query.
const MAX_RESOURCE_LEN: usize = 200;
/// Largest answer read; an instant query for one series is a few hundred bytes.
const MAX_BODY: usize = 1 << 20;
/// Series labels kept in a check's detail when a query returns several.
const MAX_SERIES_SHOWN: usize = 5;

/// A bad Prometheus configuration: reported at start-up, never at a check.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "OPSLOOP_PROMETHEUS_URL is set but OPSLOOP_PROMETHEUS_QUERIES is not: \
         no check would be sent to Prometheus"
    )]
    QueriesMissing,
    #[error(
        "OPSLOOP_PROMETHEUS_QUERIES is set but OPSLOOP_PROMETHEUS_URL is not: \
         the checks it names could not be evaluated"
    )]
    UrlMissing,
    #[error("OPSLOOP_PROMETHEUS_URL {url:?} is not a usable base URL: {why}")]
    BadUrl { url: String, why: String },
    #[error("OPSLOOP_PROMETHEUS_TIMEOUT_MS must be at least 1")]
    ZeroTimeout,
    #[error("reading the Prometheus queries file {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the Prometheus queries file {} is not TOML of the form [metric] stat = 'PromQL': {source}",
        path.display()
    )]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("the Prometheus queries file {}: [{metric}] {stat}: {why}", path.display())]
    Template {
        path: PathBuf,
        metric: String,
        stat: String,
        why: String,
    },
    #[error("the Prometheus queries file {} holds no query", .0.display())]
    Empty(PathBuf),
    #[error("building the Prometheus HTTP client")]
    Client(#[source] reqwest::Error),
}

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Text(String),
    Resource,
    /// The case's tenant: a checked slug, safe in a label matcher.
    Tenant,
    Window,
}

/// One PromQL template of the queries file, split at its placeholders.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    parts: Vec<Part>,
}

impl Template {
    /// Accepts `{{resource}}`, `{{tenant}}` and `{{window}}`, written exactly so; any other
    /// `{{...}}` is an error, so a typo fails at start-up rather than sending
    /// a query with a literal placeholder in it.
    pub fn parse(text: &str) -> Result<Template, String> {
        if text.trim().is_empty() {
            return Err("the query is empty".into());
        }
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find("{{") {
            let after = &rest[start + 2..];
            let Some(end) = after.find("}}") else {
                let snippet: String = rest[start..].chars().take(40).collect();
                return Err(format!("unclosed placeholder at {snippet:?}"));
            };
            let part = match &after[..end] {
                "resource" => Part::Resource,
                "tenant" => Part::Tenant,
                "window" => Part::Window,
                other => {
                    return Err(format!(
                        "unknown placeholder {{{{{other}}}}}: only {{{{resource}}}}, {{{{tenant}}}} and {{{{window}}}} exist"
                    ));
                }
            };
            if start > 0 {
                parts.push(Part::Text(rest[..start].to_string()));
            }
            parts.push(part);
            rest = &after[end + 2..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        Ok(Template { parts })
    }

    /// The query for a resource of a tenant and a window; `Err` (why) when
    /// the resource is not safe to put into PromQL.
    pub fn render(&self, resource: &str, tenant: &Tenant, window_s: i64) -> Result<String, String> {
        let resource = safe_resource(resource)?;
        Ok(self
            .parts
            .iter()
            .map(|p| match p {
                Part::Text(t) => t.clone(),
                Part::Resource => resource.to_string(),
                Part::Tenant => tenant.as_str().to_string(),
                Part::Window => format!("{window_s}s"),
            })
            .collect())
    }
}

/// A resource goes into a query only when it is 1 to 200 characters of
/// `[A-Za-z0-9_.:/-]`: nothing that could close a label value or a
/// selector, start a comment, or escape.
pub fn safe_resource(resource: &str) -> Result<&str, String> {
    if resource.is_empty() {
        return Err("the resource is empty".into());
    }
    if resource.chars().count() > MAX_RESOURCE_LEN {
        return Err(format!(
            "the resource is longer than {MAX_RESOURCE_LEN} characters"
        ));
    }
    match resource
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "_.:/-".contains(*c)))
    {
        Some(c) => Err(format!(
            "the resource {resource:?} holds {c:?}; only letters, digits and _ . : / - \
             are put into a Prometheus query"
        )),
        None => Ok(resource),
    }
}

/// The operator's queries: metric name → stat → template.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Queries(BTreeMap<(String, String), Template>);

impl Queries {
    pub fn load(path: &Path) -> Result<Queries, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Queries::parse(path, &text)
    }

    /// `path` only names the file in errors.
    pub fn parse(path: &Path, text: &str) -> Result<Queries, ConfigError> {
        let raw: BTreeMap<String, BTreeMap<String, String>> =
            toml::from_str(text).map_err(|source| ConfigError::Parse {
                path: path.to_path_buf(),
                source,
            })?;
        let mut queries = BTreeMap::new();
        for (metric, stats) in raw {
            for (stat, text) in stats {
                let bad = |why: String| ConfigError::Template {
                    path: path.to_path_buf(),
                    metric: metric.clone(),
                    stat: stat.clone(),
                    why,
                };
                if metric.trim().is_empty() {
                    return Err(bad("an empty metric name".into()));
                }
                if !STATS.contains(&stat.as_str()) {
                    return Err(bad(format!(
                        "unknown stat {stat:?}: a check's stat is one of {}",
                        STATS.join(", ")
                    )));
                }
                let template = Template::parse(&text).map_err(bad)?;
                queries.insert((metric.clone(), stat), template);
            }
        }
        if queries.is_empty() {
            return Err(ConfigError::Empty(path.to_path_buf()));
        }
        Ok(Queries(queries))
    }

    pub fn get(&self, metric: &str, stat: &str) -> Option<&Template> {
        self.0.get(&(metric.to_string(), stat.to_string()))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// What an answer says, before it meets the check's threshold.
#[derive(Debug, Clone, PartialEq)]
pub enum Reading {
    /// One series (or a scalar) with a finite value.
    Figure {
        figure: f64,
        series: Value,
    },
    NoData {
        why: String,
        series: Value,
    },
    Inconclusive {
        why: String,
        series: Value,
    },
}

impl Reading {
    fn inconclusive(why: impl Into<String>) -> Reading {
        Reading::Inconclusive {
            why: why.into(),
            series: Value::Null,
        }
    }
}

#[derive(Deserialize)]
struct ApiResponse {
    status: String,
    data: Option<Data>,
    #[serde(rename = "errorType")]
    error_type: Option<String>,
    error: Option<String>,
}

#[derive(Deserialize)]
#[serde(tag = "resultType", content = "result", rename_all = "lowercase")]
enum Data {
    Vector(Vec<VectorSample>),
    Scalar(SamplePair),
    Matrix(Vec<Value>),
    String(SamplePair),
}

#[derive(Deserialize)]
struct VectorSample {
    #[serde(default)]
    metric: Value,
    value: SamplePair,
}

/// `[<unix time>, "<value>"]`: Prometheus sends values as strings so that
/// NaN and ±Inf survive JSON.
#[derive(Deserialize)]
struct SamplePair(#[allow(dead_code)] f64, String);

/// Reads an answer of `GET /api/v1/query` (pure).
pub fn read_answer(http_status: u16, body: &[u8]) -> Reading {
    let parsed: Result<ApiResponse, _> = serde_json::from_slice(body);
    let ok = (200..300).contains(&http_status);
    let answer = match parsed {
        Ok(a) => a,
        Err(e) if ok => return Reading::inconclusive(format!("unreadable answer: {e}")),
        Err(_) => {
            let text = String::from_utf8_lossy(body);
            let snippet: String = text.trim().chars().take(200).collect();
            return Reading::inconclusive(format!("HTTP {http_status}: {snippet}"));
        }
    };
    if answer.status == "error" {
        return Reading::inconclusive(format!(
            "Prometheus answered HTTP {http_status}, {}: {}",
            answer.error_type.as_deref().unwrap_or("error"),
            answer.error.as_deref().unwrap_or("(no message)")
        ));
    }
    if answer.status != "success" || !ok {
        return Reading::inconclusive(format!(
            "HTTP {http_status} with status {:?}",
            answer.status
        ));
    }
    match answer.data {
        None => Reading::inconclusive("a success without data"),
        Some(Data::Vector(samples)) => match samples.as_slice() {
            [] => Reading::NoData {
                why: "the query returned no series".into(),
                series: Value::Null,
            },
            [one] => value_reading(&one.value.1, one.metric.clone()),
            many => Reading::Inconclusive {
                why: format!(
                    "the query returned {} series, not one: it is ambiguous (aggregate it in the queries file)",
                    many.len()
                ),
                series: many
                    .iter()
                    .take(MAX_SERIES_SHOWN)
                    .map(|s| s.metric.clone())
                    .collect(),
            },
        },
        Some(Data::Scalar(pair)) => value_reading(&pair.1, Value::Null),
        Some(Data::Matrix(series)) => Reading::inconclusive(format!(
            "the query returned a range vector ({} series), not one figure",
            series.len()
        )),
        Some(Data::String(pair)) => Reading::inconclusive(format!(
            "the query returned the string {:?}, not a number",
            pair.1.chars().take(100).collect::<String>()
        )),
    }
}

fn value_reading(text: &str, series: Value) -> Reading {
    match text.parse::<f64>() {
        Ok(v) if v.is_nan() => Reading::NoData {
            why: "the value is NaN (e.g. a ratio or quantile over no samples)".into(),
            series,
        },
        Ok(v) if v.is_infinite() => Reading::NoData {
            why: format!(
                "the value is {text} (e.g. a division by zero, or a quantile beyond the last bucket)"
            ),
            series,
        },
        Ok(figure) => Reading::Figure { figure, series },
        Err(_) => Reading::Inconclusive {
            why: format!("the value {text:?} is not a number"),
            series,
        },
    }
}

/// The client of one Prometheus server, with the operator's queries.
#[derive(Debug, Clone)]
pub struct Prometheus {
    query_url: Url,
    queries: Queries,
    http: reqwest::Client,
    timeout: Duration,
}

impl Prometheus {
    /// `None` when Prometheus is not configured. Checks everything it can
    /// (URL, file, templates), so a mistake stops the start-up.
    pub fn from_settings(s: &VerifySettings) -> Result<Option<Prometheus>, ConfigError> {
        let (base, path) = match (&s.prometheus_url, &s.prometheus_queries) {
            (None, None) => return Ok(None),
            (Some(_), None) => return Err(ConfigError::QueriesMissing),
            (None, Some(_)) => return Err(ConfigError::UrlMissing),
            (Some(base), Some(path)) => (base, path),
        };
        if s.prometheus_timeout_ms == 0 {
            return Err(ConfigError::ZeroTimeout);
        }
        let query_url = query_url(base)?;
        let queries = Queries::load(path)?;
        let timeout = Duration::from_millis(s.prometheus_timeout_ms);
        let http = crate::http_client::http_client()
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()
            .map_err(ConfigError::Client)?;
        Ok(Some(Prometheus {
            query_url,
            queries,
            http,
            timeout,
        }))
    }

    pub fn queries(&self) -> &Queries {
        &self.queries
    }

    /// The operator's template for this check, if Prometheus answers it.
    pub fn template_for(&self, check: &Check) -> Option<&Template> {
        self.queries.get(&check.metric, check.stat.as_str())
    }

    /// Asks Prometheus for the check's figure at `at`, the window's end, and
    /// judges it. Never fails: what goes wrong is in the verdict and detail.
    #[tracing::instrument(skip_all, fields(adapter = "prometheus", metric = %check.metric, stat = %check.stat))]
    pub async fn evaluate(
        &self,
        check: &Check,
        tenant: &Tenant,
        template: &Template,
        at: DateTime<Utc>,
    ) -> (Verdict, Value) {
        let query = match template.render(&check.resource, tenant, check.window_s) {
            Ok(q) => q,
            Err(why) => {
                return (
                    Verdict::Inconclusive,
                    json!({"source": "prometheus", "why": why}),
                );
            }
        };
        let time = format!("{:.3}", at.timestamp_millis() as f64 / 1000.0);
        let mut url = self.query_url.clone();
        url.query_pairs_mut()
            .append_pair("query", &query)
            .append_pair("time", &time);
        let reading = match self.fetch(url).await {
            Ok((status, body)) => read_answer(status, &body),
            Err(why) => Reading::inconclusive(why),
        };
        let mut detail = json!({"source": "prometheus", "query": query, "time": time});
        let verdict = match reading {
            Reading::Figure { figure, series } => {
                detail["figure"] = json!(figure);
                detail["series"] = series;
                check.verdict(figure)
            }
            Reading::NoData { why, series } => {
                detail["why"] = json!(why);
                detail["series"] = series;
                Verdict::NoData
            }
            Reading::Inconclusive { why, series } => {
                tracing::warn!(error.message = %why, "Prometheus gave no usable answer.");
                detail["why"] = json!(why);
                detail["series"] = series;
                Verdict::Inconclusive
            }
        };
        (verdict, detail)
    }

    /// (HTTP status, body), or why there is none.
    async fn fetch(&self, url: Url) -> Result<(u16, Vec<u8>), String> {
        let mut resp = self
            .http
            .get(url)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| self.describe(&e))?;
        let status = resp.status().as_u16();
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| self.describe(&e))? {
            if body.len() + chunk.len() > MAX_BODY {
                return Err(format!("the answer is larger than {MAX_BODY} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        Ok((status, body))
    }

    fn describe(&self, e: &reqwest::Error) -> String {
        if e.is_timeout() {
            return format!("no answer within {} ms", self.timeout.as_millis());
        }
        let mut text = e.to_string();
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            text.push_str(": ");
            text.push_str(&s.to_string());
            source = s.source();
        }
        text
    }
}

/// `{base}/api/v1/query`; the base may carry a path prefix (behind a proxy).
fn query_url(base: &str) -> Result<Url, ConfigError> {
    let bad = |why: &str| ConfigError::BadUrl {
        url: base.to_string(),
        why: why.to_string(),
    };
    let mut url = Url::parse(base).map_err(|e| bad(&e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad("the scheme must be http or https"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("a base URL has no query or fragment"));
    }
    url.path_segments_mut()
        .map_err(|()| bad("it cannot be a base"))?
        .pop_if_empty()
        .extend(["api", "v1", "query"]);
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LATENCY: &str = "histogram_quantile(0.95, sum by (le) (rate(http_request_duration_seconds_bucket{service=\"{{resource}}\"}[{{window}}]))) * 1000";

    fn tenant() -> Tenant {
        Tenant::try_from("t-001".to_string()).unwrap()
    }

    fn queries(text: &str) -> Result<Queries, ConfigError> {
        Queries::parse(Path::new("q.toml"), text)
    }

    #[test]
    fn placeholders_are_substituted() {
        let t = Template::parse(LATENCY).unwrap();
        assert_eq!(
            t.render("checkout-v2", &tenant(), 300).unwrap(),
            "histogram_quantile(0.95, sum by (le) (rate(http_request_duration_seconds_bucket{service=\"checkout-v2\"}[300s]))) * 1000"
        );
        let t = Template::parse("{{resource}}{{window}}").unwrap();
        assert_eq!(t.render("a", &tenant(), 60).unwrap(), "a60s");
        let t = Template::parse("up{tenant=\"{{tenant}}\",job=\"{{resource}}\"}").unwrap();
        assert_eq!(
            t.render("a", &tenant(), 60).unwrap(),
            "up{tenant=\"t-001\",job=\"a\"}"
        );
        let t = Template::parse("vector(1)").unwrap();
        assert_eq!(t.render("a", &tenant(), 60).unwrap(), "vector(1)");
    }

    #[test]
    fn an_injected_resource_is_refused() {
        let t = Template::parse(LATENCY).unwrap();
        for bad in [
            "x\"} or vector(1) #",
            "x\"}",
            "a b",
            "a\\\"",
            "svc\n",
            "",
            "é",
            "a{b}",
            "a=~\".*\"",
        ] {
            let why = t.render(bad, &tenant(), 60).unwrap_err();
            assert!(why.contains("resource"), "{bad:?}: {why}");
        }
        assert!(t.render(&"a".repeat(200), &tenant(), 60).is_ok());
        assert!(t.render(&"a".repeat(201), &tenant(), 60).is_err());
        assert!(
            t.render("ns/checkout_v2.prod:8080-a", &tenant(), 60)
                .is_ok(),
            "the whole allowed charset"
        );
    }

    #[test]
    fn unknown_or_unclosed_placeholders_are_errors() {
        for (text, expected) in [
            ("up{job=\"{{job}}\"}", "unknown placeholder {{job}}"),
            (
                "up{job=\"{{ resource }}\"}",
                "unknown placeholder {{ resource }}",
            ),
            ("up{job=\"{{resource\"}", "unclosed placeholder"),
            ("   ", "empty"),
        ] {
            let why = Template::parse(text).unwrap_err();
            assert!(why.contains(expected), "{text}: {why}");
        }
    }

    #[test]
    fn the_queries_file_is_checked_whole() {
        let q = queries(&format!(
            "[latency_ms]\np95 = '{LATENCY}'\n[error_rate]\navg = 'sum(rate(x{{service=\"{{{{resource}}}}\"}}[{{{{window}}}}]))'\n"
        ))
        .unwrap();
        assert_eq!(q.len(), 2);
        assert!(q.get("latency_ms", "p95").is_some());
        assert!(q.get("latency_ms", "avg").is_none());
        assert_eq!(
            q.get("error_rate", "avg")
                .unwrap()
                .render("api", &tenant(), 120)
                .unwrap(),
            "sum(rate(x{service=\"api\"}[120s]))"
        );

        let e = queries("[latency_ms]\np95 = 'up{a=\"{{service}}\"}'\n").unwrap_err();
        assert!(matches!(e, ConfigError::Template { .. }), "{e}");
        assert!(e.to_string().contains("[latency_ms] p95"), "{e}");
        assert!(e.to_string().contains("{{service}}"), "{e}");
        let e = queries("[latency_ms]\np99 = 'up'\n").unwrap_err();
        assert!(e.to_string().contains("unknown stat \"p99\""), "{e}");
        let e = queries("[latency_ms]\np95 = 3\n").unwrap_err();
        assert!(matches!(e, ConfigError::Parse { .. }), "{e}");
        let e = queries("latency_ms = 'up'\n").unwrap_err();
        assert!(matches!(e, ConfigError::Parse { .. }), "{e}");
        let e = queries("[latency_ms\n").unwrap_err();
        assert!(matches!(e, ConfigError::Parse { .. }), "{e}");
        let e = queries("").unwrap_err();
        assert!(matches!(e, ConfigError::Empty(_)), "{e}");
    }

    #[test]
    fn the_shipped_example_loads() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("config/prometheus-queries.example.toml");
        let q = Queries::load(&path).unwrap();
        // The shipped restart-service template checks latency_p95_ms (avg).
        assert!(q.get("latency_p95_ms", "avg").is_some());
        assert!(q.get("latency_ms", "p95").is_some());
        assert!(q.get("error_rate", "avg").is_some());
    }

    fn settings(url: Option<&str>, queries: Option<&Path>) -> VerifySettings {
        VerifySettings {
            prometheus_url: url.map(str::to_string),
            prometheus_queries: queries.map(Path::to_path_buf),
            ..VerifySettings::default()
        }
    }

    #[test]
    fn settings_are_checked_at_start_up() {
        let example =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("config/prometheus-queries.example.toml");
        assert!(
            Prometheus::from_settings(&settings(None, None))
                .unwrap()
                .is_none()
        );
        let p = Prometheus::from_settings(&settings(Some("http://prom:9090"), Some(&example)))
            .unwrap()
            .unwrap();
        assert_eq!(p.query_url.as_str(), "http://prom:9090/api/v1/query");
        let p = Prometheus::from_settings(&settings(
            Some("https://gw.example/prometheus/"),
            Some(&example),
        ))
        .unwrap()
        .unwrap();
        assert_eq!(
            p.query_url.as_str(),
            "https://gw.example/prometheus/api/v1/query"
        );
        for (url, queries, expected) in [
            (
                Some("http://prom:9090"),
                None,
                "OPSLOOP_PROMETHEUS_QUERIES is not",
            ),
            (
                None,
                Some(example.as_path()),
                "OPSLOOP_PROMETHEUS_URL is not",
            ),
            (Some("prom:9090"), Some(example.as_path()), "scheme"),
            (
                Some("not a url"),
                Some(example.as_path()),
                "not a usable base URL",
            ),
            (
                Some("http://prom:9090/?x=1"),
                Some(example.as_path()),
                "no query",
            ),
            (
                Some("http://prom:9090"),
                Some(Path::new("/nonexistent/q.toml")),
                "reading the Prometheus queries file /nonexistent/q.toml",
            ),
        ] {
            let e = Prometheus::from_settings(&settings(url, queries)).unwrap_err();
            assert!(e.to_string().contains(expected), "{url:?}: {e}");
        }
        let mut s = settings(Some("http://prom:9090"), Some(&example));
        s.prometheus_timeout_ms = 0;
        assert!(matches!(
            Prometheus::from_settings(&s),
            Err(ConfigError::ZeroTimeout)
        ));
    }

    fn answer(body: Value) -> Reading {
        read_answer(200, body.to_string().as_bytes())
    }

    fn vector(values: &[&str]) -> Value {
        let result: Vec<Value> = values
            .iter()
            .enumerate()
            .map(|(i, v)| json!({"metric": {"service": format!("s{i}")}, "value": [1_763_700_000.5, v]}))
            .collect();
        json!({"status": "success", "data": {"resultType": "vector", "result": result}})
    }

    #[test]
    fn one_series_gives_its_figure() {
        assert_eq!(
            answer(vector(&["123.5"])),
            Reading::Figure {
                figure: 123.5,
                series: json!({"service": "s0"})
            }
        );
        assert_eq!(
            answer(
                json!({"status": "success", "data": {"resultType": "scalar", "result": [1_763_700_000, "0.25"]}})
            ),
            Reading::Figure {
                figure: 0.25,
                series: Value::Null
            }
        );
        // A series without labels (e.g. after sum()) is still one series.
        assert_eq!(
            answer(
                json!({"status": "success", "data": {"resultType": "vector", "result": [{"metric": {}, "value": [1, "7"]}]}})
            ),
            Reading::Figure {
                figure: 7.0,
                series: json!({})
            }
        );
    }

    #[test]
    fn nothing_to_measure_is_no_data() {
        assert!(matches!(answer(vector(&[])), Reading::NoData { .. }));
        for v in ["NaN", "+Inf", "-Inf"] {
            match answer(vector(&[v])) {
                Reading::NoData { why, series } => {
                    assert!(why.contains(v), "{v}: {why}");
                    assert_eq!(series, json!({"service": "s0"}));
                }
                other => panic!("{v}: {other:?}"),
            }
        }
    }

    #[test]
    fn anything_else_is_inconclusive() {
        let why = |r: Reading| match r {
            Reading::Inconclusive { why, .. } => why,
            other => panic!("{other:?}"),
        };
        match answer(vector(&["1", "2"])) {
            Reading::Inconclusive { why, series } => {
                assert!(why.contains("2 series"), "{why}");
                assert_eq!(series, json!([{"service": "s0"}, {"service": "s1"}]));
            }
            other => panic!("{other:?}"),
        }
        let e = why(read_answer(
            422,
            json!({"status": "error", "errorType": "execution", "error": "query timed out in expression evaluation"})
                .to_string()
                .as_bytes(),
        ));
        assert!(
            e.contains("HTTP 422") && e.contains("execution") && e.contains("timed out"),
            "{e}"
        );
        let e = why(read_answer(
            400,
            br#"{"status":"error","errorType":"bad_data","error":"invalid parameter \"query\": 1:5: parse error"}"#,
        ));
        assert!(e.contains("bad_data") && e.contains("parse error"), "{e}");
        let e = why(read_answer(502, b"Bad Gateway\n"));
        assert_eq!(e, "HTTP 502: Bad Gateway");
        let e = why(read_answer(200, b"<html>login</html>"));
        assert!(e.starts_with("unreadable answer"), "{e}");
        let e = why(answer(vector(&["many"])));
        assert!(e.contains("not a number"), "{e}");
        let e = why(answer(
            json!({"status": "success", "data": {"resultType": "matrix", "result": []}}),
        ));
        assert!(e.contains("range vector"), "{e}");
        let e = why(answer(
            json!({"status": "success", "data": {"resultType": "string", "result": [1, "x"]}}),
        ));
        assert!(e.contains("string"), "{e}");
        let e = why(answer(json!({"status": "success"})));
        assert!(e.contains("without data"), "{e}");
        let e = why(answer(
            json!({"status": "success", "data": {"resultType": "vector", "result": [{"metric": {}}]}}),
        ));
        assert!(e.starts_with("unreadable answer"), "{e}");
        let e = why(read_answer(500, vector(&["1"]).to_string().as_bytes()));
        assert!(e.contains("HTTP 500"), "{e}");
    }
}
