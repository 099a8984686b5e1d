//! The verifier's settings (flags and environment variables).

use std::path::PathBuf;

const DEFAULT_DELAY_S: u64 = 60;
const DEFAULT_MIN_COVERAGE: f64 = 0.5;
const DEFAULT_PROMETHEUS_TIMEOUT_MS: u64 = 5000;

#[derive(Debug, Clone, clap::Args)]
pub struct VerifySettings {
    /// Seconds to wait after the execution finished before judging, so the
    /// window holds data from after the change. Production: at least the
    /// longest check window; demos and tests use 0 and ingest fresh rows.
    #[arg(long, env = "OPSLOOP_VERIFY_DELAY_S", default_value_t = DEFAULT_DELAY_S)]
    pub delay_s: u64,
    /// Share of a window's minutes that must have data for a verdict.
    #[arg(long, env = "OPSLOOP_VERIFY_MIN_COVERAGE", default_value_t = DEFAULT_MIN_COVERAGE)]
    pub min_coverage: f64,
    /// Base URL of a Prometheus server (e.g. http://127.0.0.1:9090) that
    /// answers the checks named in OPSLOOP_PROMETHEUS_QUERIES.
    #[arg(long, env = "OPSLOOP_PROMETHEUS_URL")]
    pub prometheus_url: Option<String>,
    /// TOML file of PromQL templates, metric name → stat → query
    /// (docs/prometheus.md); checked at start-up.
    #[arg(long, env = "OPSLOOP_PROMETHEUS_QUERIES")]
    pub prometheus_queries: Option<PathBuf>,
    /// Time allowed for one Prometheus query; past it the check is
    /// inconclusive.
    #[arg(long, env = "OPSLOOP_PROMETHEUS_TIMEOUT_MS", default_value_t = DEFAULT_PROMETHEUS_TIMEOUT_MS)]
    pub prometheus_timeout_ms: u64,
}

impl Default for VerifySettings {
    /// The flags' defaults: no Prometheus.
    fn default() -> Self {
        VerifySettings {
            delay_s: DEFAULT_DELAY_S,
            min_coverage: DEFAULT_MIN_COVERAGE,
            prometheus_url: None,
            prometheus_queries: None,
            prometheus_timeout_ms: DEFAULT_PROMETHEUS_TIMEOUT_MS,
        }
    }
}
