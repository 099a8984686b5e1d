//! `script.exec`: runs an allowlisted script from the configured folder by
//! name, with an argv array, through tokio's process API. No shell ever sees
//! the arguments; the environment is cleared except an allowlist; the
//! working directory is fixed; the script runs in its own process group,
//! which is killed as a whole on timeout; output is captured up to a cap.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;

use super::adapter::{Action, Adapter, BoxFuture, ErrorKind, ExecError, Rehearsal, not_mine};
use crate::contract::plan::ScriptParams;

/// Set (to `1`) in a script's environment when it runs for the dry run,
/// besides the declared flag.
pub const DRY_RUN_ENV: &str = "OPSLOOP_DRY_RUN";

#[derive(Debug, Clone)]
pub struct ScriptAdapter {
    /// Folder holding the scripts; also their working directory.
    pub dir: PathBuf,
    /// Script file names that may run.
    pub allowlist: BTreeSet<String>,
    /// Environment variables passed through (everything else is cleared).
    pub env_allowlist: Vec<String>,
    /// Bytes kept of stdout and of stderr each.
    pub output_cap: usize,
}

impl ScriptAdapter {
    /// Resolves a script name to its file, refusing anything that is not a
    /// plain allowlisted file name in the folder.
    fn resolve(&self, name: &str) -> Result<PathBuf, ExecError> {
        let plain = !name.is_empty()
            && !name.starts_with('.')
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !plain || !self.allowlist.contains(name) {
            return Err(ExecError::refused(
                format!("script {name:?} is not in the allowlist"),
                json!({}),
            ));
        }
        // Absolute, because the child starts in `dir` and a relative
        // program path would be looked up from there.
        let path =
            std::fs::canonicalize(self.dir.join(name)).unwrap_or_else(|_| self.dir.join(name));
        if !path.is_file() {
            return Err(ExecError::refused(
                format!(
                    "script {name:?} is allowlisted but not found in {}",
                    self.dir.display()
                ),
                json!({}),
            ));
        }
        Ok(path)
    }

    /// Runs the script with the step's argv, and `dry_run_flag` after it
    /// for a rehearsal.
    async fn exec(
        &self,
        params: &ScriptParams,
        dry_run_flag: Option<&str>,
        timeout: Duration,
    ) -> Result<Value, ExecError> {
        let name = params.script.as_str();
        let path = self.resolve(name)?;
        // The flag goes first: no argument of the plan's can come before
        // it and swallow it (`--service --dry-run` would read the flag as
        // a service name and restart for real). The environment says so
        // too, for scripts that read it.
        let args: Vec<String> = dry_run_flag
            .map(String::from)
            .into_iter()
            .chain(params.args.clone().unwrap_or_default())
            .collect();
        let mut cmd = Command::new(&path);
        cmd.args(&args)
            .current_dir(&self.dir)
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        for key in &self.env_allowlist {
            if let Ok(v) = std::env::var(key) {
                cmd.env(key, v);
            }
        }
        if dry_run_flag.is_some() {
            cmd.env(DRY_RUN_ENV, "1");
        }
        let started = std::time::Instant::now();
        let mut child = cmd
            .spawn()
            .map_err(|e| ExecError::new(format!("cannot start {name}: {e}"), json!({})))?;
        let pgid = child.id();
        // Dropped before the script ends (a stopping process hands its
        // step back): the whole group goes, not only the script, so none
        // of its children keeps changing the target while the next
        // process records the step as interrupted.
        let mut group = GroupGuard(pgid);
        let stdout = capture(child.stdout.take(), self.output_cap);
        let stderr = capture(child.stderr.take(), self.output_cap);
        let waited = tokio::time::timeout(timeout, async {
            let (status, out, err) = tokio::join!(child.wait(), stdout, stderr);
            (status, out, err)
        })
        .await;
        match waited {
            Ok((status, out, err)) => {
                group.0 = None;
                let status = status
                    .map_err(|e| ExecError::new(format!("waiting for {name}: {e}"), json!({})))?;
                let detail = json!({
                    "script": name, "args": args, "exit_code": status.code(),
                    "stdout": out, "stderr": err,
                    "elapsed_ms": started.elapsed().as_millis() as u64,
                });
                if status.success() {
                    Ok(detail)
                } else {
                    Err(ExecError::new(
                        format!(
                            "{name} exited with {}",
                            status.code().map_or("a signal".into(), |c| c.to_string())
                        ),
                        detail,
                    ))
                }
            }
            Err(_) => {
                // The whole group: a script's children die with it.
                if let Some(pgid) = group.0.take() {
                    kill_group(pgid);
                }
                let _ = child.wait().await;
                Err(ExecError::new(
                    format!(
                        "{name} timed out after {} s; its process group was killed",
                        timeout.as_secs()
                    ),
                    json!({"script": name, "args": args, "timed_out": true}),
                ))
            }
        }
    }
}

/// Kills its process group when dropped, unless the script ended.
struct GroupGuard(Option<u32>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pgid) = self.0 {
            kill_group(pgid);
        }
    }
}

fn kill_group(pgid: u32) {
    // No libc binding in the tree: `kill -KILL -<pgid>` does it, and takes
    // the group id as an argument, not through a shell.
    // Without a `kill` binary (procps) only the script itself dies (its
    // `kill_on_drop`): say so rather than leave its children unnoticed.
    if let Err(e) = std::process::Command::new("kill")
        .args(["-KILL", "--", &format!("-{pgid}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        tracing::warn!(pgid, error = %e,
            "Cannot run `kill` to stop a script's process group (install procps); its children may live on.");
    }
}

/// What a script printed on one stream, as its step's result keeps it
/// (`stdout`, `stderr`) and the console shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Captured {
    /// The first bytes (up to the adapter's cap), lossily decoded.
    pub text: String,
    /// How many bytes the stream carried in all.
    pub bytes: usize,
    pub truncated: bool,
}

impl Captured {
    pub fn of(text: &str) -> Captured {
        Captured {
            text: text.to_string(),
            bytes: text.len(),
            truncated: false,
        }
    }
}

/// A script step's result, as far as readers other than the executor look.
#[derive(Debug, Default, serde::Deserialize)]
pub struct ScriptResult {
    #[serde(default)]
    pub stdout: Option<Captured>,
}

/// Reads a pipe to its end, keeping the first `cap` bytes.
async fn capture(pipe: Option<impl AsyncRead + Unpin>, cap: usize) -> Captured {
    let Some(mut pipe) = pipe else {
        return Captured::default();
    };
    let mut kept = Vec::new();
    let mut total = 0usize;
    let mut buf = [0u8; 8192];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                total += n;
                let room = cap.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
    Captured {
        text: String::from_utf8_lossy(&kept).into_owned(),
        bytes: total,
        truncated: total > kept.len(),
    }
}

impl Adapter for ScriptAdapter {
    fn action(&self) -> &'static str {
        "script.exec"
    }

    /// A script may have done half its work; it is not re-run blindly.
    fn idempotent(&self) -> bool {
        false
    }

    fn run<'a>(
        &'a self,
        action: &'a Action,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Value, ExecError>> {
        Box::pin(async move {
            let Action::ScriptExec(params) = action else {
                return Err(not_mine(self.action(), action));
            };
            self.exec(params, None, timeout).await
        })
    }

    /// The script itself, with the dry-run flag its declaration in the
    /// targets file names: exit 0 is a rehearsal that passed.
    fn dry_run<'a>(
        &'a self,
        action: &'a Action,
        targets: &'a crate::gatekeeper::targets::Targets,
        timeout: Duration,
    ) -> BoxFuture<'a, Rehearsal> {
        Box::pin(async move {
            let Action::ScriptExec(params) = action else {
                return Rehearsal::Failed(not_mine(self.action(), action));
            };
            // An unknown script fails here as it would at execution.
            if let Err(e) = self.resolve(&params.script) {
                return Rehearsal::Failed(e);
            }
            let Some(flag) = targets.dry_run_flag(&params.script) else {
                return Rehearsal::Unavailable(format!(
                    "script {:?} declares no dry_run_flag in the targets file",
                    params.script
                ));
            };
            // An argv that names the flag itself (or a bare `--`) could
            // change what the flag means to the script: not rehearsed.
            let args = params.args.as_deref().unwrap_or_default();
            if args.iter().any(|a| a == "--" || a.starts_with(flag)) {
                return Rehearsal::Unavailable(format!(
                    "the step's argv holds {flag} or --; not rehearsed"
                ));
            }
            match self.exec(params, Some(flag), timeout).await {
                Ok(detail) => Rehearsal::Ok(detail),
                // A script that answered (a non-zero exit) gave its verdict:
                // asking again would not change it. A timeout may.
                Err(e) if e.kind == ErrorKind::Unavailable => Rehearsal::Failed(ExecError {
                    kind: ErrorKind::Refused,
                    ..e
                }),
                Err(e) => Rehearsal::Failed(e),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn folder(scripts: &[(&str, &str)]) -> ScriptAdapter {
        let dir = std::env::temp_dir().join(format!("opsloop-scripts-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        for (name, body) in scripts {
            let path = dir.join(name);
            std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        ScriptAdapter {
            dir,
            allowlist: scripts.iter().map(|(n, _)| n.to_string()).collect(),
            env_allowlist: vec!["PATH".into()],
            output_cap: 1000,
        }
    }

    fn params(script: &str, args: &[&str]) -> Action {
        Action::ScriptExec(ScriptParams {
            script: script.into(),
            args: Some(args.iter().map(|a| a.to_string()).collect()),
        })
    }

    #[tokio::test]
    async fn shell_metacharacters_in_argv_are_passed_literally() {
        let a = folder(&[(
            "echo-args.sh",
            r#"for a in "$@"; do printf '[%s]\n' "$a"; done"#,
        )]);
        let marker = a.dir.join("pwned");
        let evil = format!(
            "x; touch {} && echo $(id) `id` | cat > /dev/null",
            marker.display()
        );
        let out = a
            .run(
                &params("echo-args.sh", &[&evil, "$HOME", "*"]),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
        assert_eq!(out["stdout"]["text"], format!("[{evil}]\n[$HOME]\n[*]\n"));
        assert!(!marker.exists(), "an argument was run by a shell");
    }

    /// Parses its options in order like the shipped `restart-service.sh`,
    /// and does its one change (a marker file) unless `--dry-run` was read.
    const RESTART: &str = r#"service=""; dry=0
while [ $# -gt 0 ]; do
  case "$1" in
    --service) service="$2"; shift 2 ;;
    --dry-run) dry=1; shift ;;
    *) exit 2 ;;
  esac
done
if [ "$dry" = 1 ]; then echo "would restart $service (env $OPSLOOP_DRY_RUN)"; exit 0; fi
touch restarted; echo "restarted $service""#;

    fn declared() -> crate::gatekeeper::targets::Targets {
        toml::from_str("[scripts.\"restart.sh\"]\ndry_run_flag = \"--dry-run\"\n").unwrap()
    }

    /// The hole the review found: with the flag after the plan's argv, an
    /// argv ending in `--service` made the script read the flag as the
    /// service's name and restart for real, before any gate.
    #[tokio::test]
    async fn no_argument_of_the_plan_can_swallow_the_dry_run_flag() {
        let a = folder(&[("restart.sh", RESTART)]);
        let targets = declared();
        let timeout = Duration::from_secs(10);
        let r = a
            .dry_run(&params("restart.sh", &["--service"]), &targets, timeout)
            .await;
        assert!(
            !a.dir.join("restarted").exists(),
            "rehearsed for real: {r:?}"
        );
        match a
            .dry_run(
                &params("restart.sh", &["--service", "api"]),
                &targets,
                timeout,
            )
            .await
        {
            Rehearsal::Ok(detail) => {
                assert_eq!(detail["stdout"]["text"], "would restart api (env 1)\n")
            }
            other => panic!("{other:?}"),
        }
        for args in [&["--dry-run=no"][..], &["--", "--service", "api"][..]] {
            assert!(
                matches!(
                    a.dry_run(&params("restart.sh", args), &targets, timeout)
                        .await,
                    Rehearsal::Unavailable(_)
                ),
                "{args:?}"
            );
        }
        assert!(!a.dir.join("restarted").exists());
        // Undeclared: cannot be rehearsed; a non-zero exit is a refusal.
        let none = crate::gatekeeper::targets::Targets::default();
        assert!(matches!(
            a.dry_run(&params("restart.sh", &[]), &none, timeout).await,
            Rehearsal::Unavailable(_)
        ));
        match a
            .dry_run(&params("restart.sh", &["--bogus"]), &targets, timeout)
            .await
        {
            Rehearsal::Failed(e) => assert!(!e.is_retryable(), "{e:?}"),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_timeout_kills_the_whole_process_tree() {
        let a = folder(&[("spawner.sh", "sleep 300 &\necho $! > child.pid\nsleep 300")]);
        let started = std::time::Instant::now();
        let e = a
            .run(&params("spawner.sh", &[]), Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(e.message.contains("timed out"), "{}", e.message);
        assert!(started.elapsed() < Duration::from_secs(10));
        let pid = std::fs::read_to_string(a.dir.join("child.pid")).unwrap();
        let pid = pid.trim();
        // The grandchild must be gone too (give the kernel a moment).
        let mut alive = true;
        for _ in 0..50 {
            alive = std::path::Path::new(&format!("/proc/{pid}")).exists()
                && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .unwrap_or_default()
                    .contains(") Z ");
            if !alive {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(!alive, "the script's child {pid} survived the timeout");
    }

    #[tokio::test]
    async fn output_is_capped_and_the_size_reported() {
        let a = folder(&[("chatty.sh", "head -c 50000 /dev/zero | tr '\\0' x")]);
        let out = a
            .run(&params("chatty.sh", &[]), Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(out["stdout"]["text"].as_str().unwrap().len(), 1000);
        assert_eq!(out["stdout"]["bytes"], 50000);
        assert_eq!(out["stdout"]["truncated"], true);
    }

    #[tokio::test]
    async fn scripts_outside_the_allowlist_are_refused_before_anything_runs() {
        let a = folder(&[("ok.sh", "exit 0")]);
        std::fs::write(a.dir.join("other.sh"), "#!/bin/sh\ntouch ran\n").unwrap();
        std::fs::set_permissions(
            a.dir.join("other.sh"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        for name in ["other.sh", "../ok.sh", "/bin/sh", "ok.sh; touch ran", ""] {
            let e = a
                .run(&params(name, &[]), Duration::from_secs(5))
                .await
                .unwrap_err();
            assert!(
                e.message.contains("not in the allowlist"),
                "{name}: {}",
                e.message
            );
        }
        assert!(!a.dir.join("ran").exists());
    }

    #[tokio::test]
    async fn the_environment_is_cleared_and_a_failure_is_non_zero_exit() {
        let a = folder(&[("env.sh", "env; exit 3")]);
        let e = a
            .run(&params("env.sh", &[]), Duration::from_secs(5))
            .await
            .unwrap_err();
        assert_eq!(e.detail["exit_code"], 3);
        let env = e.detail["stdout"]["text"].as_str().unwrap();
        assert!(env.contains("PATH="));
        assert!(!env.contains("DATABASE_URL"), "{env}");
        assert!(!env.contains("HOME="), "{env}");
    }
}
