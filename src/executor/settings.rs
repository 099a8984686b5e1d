//! The executor's settings (flags and environment variables).

use std::path::PathBuf;

use super::gateway;

#[derive(Debug, Clone, clap::Args)]
pub struct ExecSettings {
    /// Folder of the scripts `script.exec` may run (the allowlist names
    /// files in it); also their working directory.
    #[arg(long, env = "OPSLOOP_SCRIPTS_DIR", default_value = "scripts/actions")]
    pub scripts_dir: PathBuf,
    /// Environment variables scripts receive; all others are cleared.
    #[arg(
        long,
        env = "OPSLOOP_SCRIPT_ENV",
        value_delimiter = ',',
        default_value = "PATH,LANG"
    )]
    pub script_env: Vec<String>,
    /// Bytes of stdout and of stderr kept per step.
    #[arg(long, env = "OPSLOOP_SCRIPT_OUTPUT_CAP", default_value_t = 64 * 1024)]
    pub output_cap: usize,
    /// Scale for the plan's retry backoff (tests and demos shorten it).
    #[arg(long, env = "OPSLOOP_STEP_BACKOFF_SCALE", default_value_t = 1.0)]
    pub backoff_scale: f64,
    /// Kubernetes API server for `k8s.rollout`; unset: the kubeconfig or
    /// the in-cluster service account.
    #[arg(long, env = "OPSLOOP_K8S_API_URL")]
    pub k8s_api_url: Option<String>,
    /// File holding the bearer token for OPSLOOP_K8S_API_URL.
    #[arg(long, env = "OPSLOOP_K8S_TOKEN_FILE")]
    pub k8s_token_file: Option<PathBuf>,
    /// The gateways `gateway.flip` may change, as `name=admin-url`,
    /// comma-separated. A plan names a gateway; only these URLs are called.
    #[arg(long, env = "OPSLOOP_GATEWAYS", value_delimiter = ',')]
    pub gateways: Vec<gateway::GatewayEntry>,
    /// File holding the bearer token for the gateways' admin APIs.
    #[arg(long, env = "OPSLOOP_GATEWAY_TOKEN_FILE")]
    pub gateway_token_file: Option<PathBuf>,
}
