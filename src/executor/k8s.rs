//! `k8s.rollout`: changes a Deployment's pod template (a new image, or the
//! restart annotation `kubectl rollout restart` sets), after a server-side
//! dry run of the same patch, then watches the rollout until it completes
//! or the Deployment reports its progress deadline exceeded. `undo` puts
//! back the pod template read before the change.
//!
//! Completion is judged the way `kubectl rollout status` judges it: the
//! controller has observed the new generation, every desired replica is
//! updated and available, and no old replica is left.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::PodTemplateSpec;
use kube::api::{Api, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use serde_json::{Value, json};

use super::adapter::{Action, Adapter, BoxFuture, ExecError, Rehearsal, not_mine, refuses};
use crate::contract::plan::RolloutParams;

/// Who the API server records as the changer.
const FIELD_MANAGER: &str = "opsloop";
/// The annotation `kubectl rollout restart` sets; changing it rolls pods.
const RESTARTED_AT: &str = "kubectl.kubernetes.io/restartedAt";
/// Server-side limit of one watch request; the adapter re-watches.
const MAX_WATCH_S: u64 = 290;

pub struct K8sAdapter {
    api_url: Option<String>,
    token_file: Option<PathBuf>,
    client: tokio::sync::Mutex<Option<kube::Client>>,
}

/// Where the rollout stands.
#[derive(Debug, PartialEq)]
enum Rollout {
    Progressing,
    Complete,
    Failed(String),
}

impl K8sAdapter {
    /// `api_url` set: that API server (with the bearer token in
    /// `token_file`, if any). Unset: the kubeconfig or in-cluster account,
    /// found on first use so a process without a cluster still starts.
    pub fn new(api_url: Option<String>, token_file: Option<PathBuf>) -> K8sAdapter {
        K8sAdapter {
            api_url,
            token_file,
            client: tokio::sync::Mutex::new(None),
        }
    }

    async fn api(&self, namespace: &str) -> Result<Api<Deployment>, ExecError> {
        let mut slot = self.client.lock().await;
        if let Some(client) = slot.as_ref() {
            return Ok(Api::namespaced(client.clone(), namespace));
        }
        let config = match &self.api_url {
            Some(url) => {
                let uri = url.parse().map_err(|e| {
                    ExecError::refused(
                        format!("OPSLOOP_K8S_API_URL {url:?} is not a URL: {e}"),
                        json!({}),
                    )
                })?;
                let mut config = kube::Config::new(uri);
                config.auth_info.token_file = self
                    .token_file
                    .as_ref()
                    .map(|p| p.to_string_lossy().into_owned());
                config
            }
            None => kube::Config::infer().await.map_err(|e| {
                ExecError::refused(
                    format!("no Kubernetes API configured (OPSLOOP_K8S_API_URL, kubeconfig or in-cluster): {e}"),
                    json!({}),
                )
            })?,
        };
        let client = kube::Client::try_from(config)
            .map_err(|e| ExecError::refused(format!("Kubernetes client: {e}"), json!({})))?;
        *slot = Some(client.clone());
        Ok(Api::namespaced(client, namespace))
    }
}

/// The step's params and its Deployment, from params the plan contract
/// already checked.
fn deployment_of(action: &Action) -> Result<(&RolloutParams, &str, &str), ExecError> {
    let Action::K8sRollout(params) = action else {
        return Err(not_mine(Action::K8S_ROLLOUT, action));
    };
    match (params.namespace.as_str(), params.deployment.as_str()) {
        ("", _) | (_, "") => Err(ExecError::refused(
            "k8s.rollout needs namespace and deployment",
            json!({}),
        )),
        (ns, name) => Ok((params, ns, name)),
    }
}

/// A failed API call: refusals (4xx but conflicts and throttling) are not
/// retried; server errors and transport trouble are.
fn api_error(doing: &str, e: kube::Error) -> ExecError {
    match e {
        kube::Error::Api(status) if refuses(status.code) => ExecError::refused(
            format!("{doing}: {} ({})", status.message, status.code),
            json!({"api_status": status.code, "api_reason": status.reason}),
        ),
        other => ExecError::new(format!("{doing}: {other}"), json!({})),
    }
}

fn images(d: &Deployment) -> Value {
    let containers = d
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .map(|s| s.containers.as_slice())
        .unwrap_or_default();
    containers
        .iter()
        .map(|c| (c.name.clone(), json!(c.image)))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

fn template_of(d: &Deployment) -> PodTemplateSpec {
    d.spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default()
}

/// The strategic-merge patch for a new image or a restart.
fn patch_for(params: &RolloutParams, current: &Deployment) -> Result<Value, ExecError> {
    if params.restart {
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        return Ok(
            json!({"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: now}}}}}),
        );
    }
    let Some(image) = params.image.as_deref() else {
        return Err(ExecError::refused(
            "k8s.rollout needs image or restart: true",
            json!({}),
        ));
    };
    let names: Vec<String> = images(current)
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    let container = match params.container.as_deref() {
        Some(c) if names.iter().any(|n| n == c) => c.to_string(),
        Some(c) => {
            return Err(ExecError::refused(
                format!("the pod template has no container {c:?}"),
                json!({"containers": names}),
            ));
        }
        None if names.len() == 1 => names[0].clone(),
        None => {
            return Err(ExecError::refused(
                format!(
                    "the pod template has {} containers; the step must name one",
                    names.len()
                ),
                json!({"containers": names}),
            ));
        }
    };
    Ok(
        json!({"spec": {"template": {"spec": {"containers": [{"name": container, "image": image}]}}}}),
    )
}

fn rollout_of(d: &Deployment, generation: i64) -> Rollout {
    let Some(status) = &d.status else {
        return Rollout::Progressing;
    };
    if status.observed_generation.unwrap_or(0) < generation {
        return Rollout::Progressing;
    }
    let deadline_hit = status.conditions.iter().flatten().find(|c| {
        c.type_ == "Progressing" && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
    });
    if let Some(c) = deadline_hit {
        return Rollout::Failed(format!(
            "the rollout exceeded its progress deadline: {}",
            c.message.as_deref().unwrap_or("no message")
        ));
    }
    let desired = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let updated = status.updated_replicas.unwrap_or(0);
    if updated < desired
        || status.replicas.unwrap_or(0) > updated
        || status.available_replicas.unwrap_or(0) < updated
    {
        return Rollout::Progressing;
    }
    Rollout::Complete
}

fn summary(d: &Deployment) -> Value {
    let status = d.status.clone().unwrap_or_default();
    json!({
        "generation": d.metadata.generation,
        "observed_generation": status.observed_generation,
        "replicas": d.spec.as_ref().and_then(|s| s.replicas),
        "updated": status.updated_replicas,
        "available": status.available_replicas,
        "images": images(d),
    })
}

/// Watches the Deployment from `latest` until its rollout of `latest`'s
/// generation ends, or `deadline`.
async fn watch_rollout(
    api: &Api<Deployment>,
    name: &str,
    mut latest: Deployment,
    deadline: Instant,
) -> Result<Value, ExecError> {
    let generation = latest.metadata.generation.unwrap_or(0);
    loop {
        match rollout_of(&latest, generation) {
            Rollout::Complete => return Ok(summary(&latest)),
            Rollout::Failed(why) => return Err(ExecError::new(why, summary(&latest))),
            Rollout::Progressing => {}
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ExecError::new(
                "the rollout did not complete within the step's timeout",
                summary(&latest),
            ));
        }
        let params = WatchParams::default()
            .fields(&format!("metadata.name={name}"))
            .timeout(left.as_secs().clamp(1, MAX_WATCH_S) as u32);
        let version = latest.metadata.resource_version.clone().unwrap_or_default();
        let watched = tokio::time::timeout(left, async {
            let mut events = api.watch(&params, &version).await?.boxed();
            while let Some(event) = events.try_next().await? {
                match event {
                    WatchEvent::Added(d) | WatchEvent::Modified(d) => {
                        let ended = rollout_of(&d, generation) != Rollout::Progressing;
                        latest = d;
                        if ended {
                            return Ok(true);
                        }
                    }
                    WatchEvent::Deleted(_) => return Ok(false),
                    WatchEvent::Bookmark(_) => {}
                    // e.g. 410 Gone: the version is too old; read afresh.
                    WatchEvent::Error(_) => break,
                }
            }
            Ok::<bool, kube::Error>(true)
        })
        .await;
        match watched {
            Err(_) => continue,
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => {
                return Err(ExecError::refused(
                    format!("deployment {name} was deleted during the rollout"),
                    summary(&latest),
                ));
            }
            Ok(Err(e)) => {
                tracing::warn!(deployment = name, error = %e, "Watch ended; reading afresh.")
            }
        }
        // The watch ended or broke: start again from the current object.
        if let Rollout::Progressing = rollout_of(&latest, generation) {
            match api.get(name).await {
                Ok(d) => latest = d,
                Err(e) => {
                    tracing::warn!(deployment = name, error = %e, "Reading the deployment failed.");
                    tokio::time::sleep(Duration::from_millis(500).min(left)).await;
                }
            }
        }
    }
}

/// Who the API server records as the changer, for every write.
fn writer() -> PatchParams {
    PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PatchParams::default()
    }
}

/// The Deployment now, the patch the step sends, and what the API server
/// would make of it (`dryRun=All`: admitted, defaulted, validated, not
/// stored).
struct Rehearsed {
    current: Deployment,
    patch: Value,
    dry: Deployment,
}

async fn rehearse_patch(
    api: &Api<Deployment>,
    params: &RolloutParams,
    ns: &str,
    name: &str,
) -> Result<Rehearsed, ExecError> {
    let current = read(api, ns, name).await?;
    let patch = patch_for(params, &current)?;
    let dry = api
        .patch(name, &writer().dry_run(), &Patch::Strategic(&patch))
        .await
        .map_err(|e| api_error("server-side dry run", e))?;
    Ok(Rehearsed {
        current,
        patch,
        dry,
    })
}

/// The deployment as the API server has it now.
async fn read(api: &Api<Deployment>, ns: &str, name: &str) -> Result<Deployment, ExecError> {
    api.get(name)
        .await
        .map_err(|e| api_error(&format!("reading deployment {ns}/{name}"), e))
}

impl Adapter for K8sAdapter {
    fn action(&self) -> &'static str {
        "k8s.rollout"
    }

    /// Setting the same image again changes nothing, and a second restart
    /// is one more rolling restart: safe to repeat after a crash.
    fn idempotent(&self) -> bool {
        true
    }

    fn snapshot<'a>(
        &'a self,
        action: &'a Action,
        _timeout: Duration,
    ) -> BoxFuture<'a, Result<Option<Value>, ExecError>> {
        Box::pin(async move {
            let (_, ns, name) = deployment_of(action)?;
            let api = self.api(ns).await?;
            let current = read(&api, ns, name).await?;
            Ok(Some(json!({
                "template": template_of(&current),
                "generation": current.metadata.generation,
                "images": images(&current),
            })))
        })
    }

    /// The same patch the run sends, with `dryRun=All`: the API server
    /// admits, defaults and validates it without storing it; the artefact
    /// is the pod template's diff.
    fn dry_run<'a>(
        &'a self,
        action: &'a Action,
        _targets: &'a crate::gatekeeper::targets::Targets,
        _timeout: Duration,
    ) -> BoxFuture<'a, Rehearsal> {
        Box::pin(async move {
            let rehearse = async {
                let (params, ns, name) = deployment_of(action)?;
                if params.undo {
                    return Ok(None);
                }
                let api = self.api(ns).await?;
                let Rehearsed {
                    current,
                    patch,
                    dry,
                } = rehearse_patch(&api, params, ns, name).await?;
                let before = serde_json::to_value(template_of(&current)).unwrap_or_default();
                let after = serde_json::to_value(template_of(&dry)).unwrap_or_default();
                Ok(Some(json!({
                    "namespace": ns,
                    "deployment": name,
                    "patch": patch,
                    "template_diff": super::dryrun::diff(&before, &after),
                    "images_before": images(&current),
                    "images_after": images(&dry),
                })))
            };
            match rehearse.await {
                Ok(Some(detail)) => Rehearsal::Ok(detail),
                Ok(None) => Rehearsal::Unavailable(
                    "an undo restores the pod template read at execution; nothing to compare yet"
                        .into(),
                ),
                Err(e) => Rehearsal::Failed(e),
            }
        })
    }

    fn run<'a>(
        &'a self,
        action: &'a Action,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Value, ExecError>> {
        Box::pin(async move {
            let deadline = Instant::now() + timeout;
            let (params, ns, name) = deployment_of(action)?;
            let api = self.api(ns).await?;
            let Rehearsed {
                current,
                patch,
                dry,
            } = rehearse_patch(&api, params, ns, name).await?;
            let write = writer();
            let dry_run = json!({
                "accepted": true,
                "template_changes": template_of(&dry) != template_of(&current),
                "images": images(&dry),
            });
            let applied = api
                .patch(name, &write, &Patch::Strategic(&patch))
                .await
                .map_err(|e| {
                    let mut e = api_error("patching the deployment", e);
                    e.detail["dry_run"] = dry_run.clone();
                    e
                })?;
            match watch_rollout(&api, name, applied, deadline).await {
                Ok(rollout) => Ok(json!({"dry_run": dry_run, "patch": patch, "rollout": rollout})),
                Err(mut e) => {
                    e.detail = json!({"dry_run": dry_run, "patch": patch, "rollout": e.detail});
                    Err(e)
                }
            }
        })
    }

    fn restore<'a>(
        &'a self,
        action: &'a Action,
        before: &'a Value,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Value, ExecError>> {
        Box::pin(async move {
            let deadline = Instant::now() + timeout;
            let (_, ns, name) = deployment_of(action)?;
            let template: PodTemplateSpec = serde_json::from_value(before["template"].clone())
                .map_err(|e| {
                    ExecError::refused(
                        format!("the recorded pod template is unreadable: {e}"),
                        json!({}),
                    )
                })?;
            let api = self.api(ns).await?;
            let write = PostParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..PostParams::default()
            };
            // Replace, not patch: a merge could keep fields the change
            // added. The resource version makes a concurrent writer's
            // change a conflict instead of a silent overwrite.
            let mut conflicts = 0;
            let (restored, changed) = loop {
                let mut current = read(&api, ns, name).await?;
                let spec = current.spec.get_or_insert_with(Default::default);
                if spec.template == template {
                    break (current, false);
                }
                spec.template = template.clone();
                match api.replace(name, &write, &current).await {
                    Ok(d) => break (d, true),
                    Err(kube::Error::Api(s)) if s.code == 409 && conflicts < 3 => conflicts += 1,
                    Err(e) => return Err(api_error("restoring the pod template", e)),
                }
            };
            let rollout = watch_rollout(&api, name, restored, deadline).await?;
            Ok(json!({"restored": changed, "images": before["images"], "rollout": rollout}))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Params of a step on shop/api, with `extra` on top.
    fn rollout(extra: Value) -> RolloutParams {
        let mut v = json!({"namespace": "shop", "deployment": "api"});
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        serde_json::from_value(v).unwrap()
    }

    fn deployment(v: Value) -> Deployment {
        serde_json::from_value(v).unwrap()
    }

    fn with_status(status: Value) -> Deployment {
        deployment(json!({
            "metadata": {"name": "api", "generation": 3},
            "spec": {"replicas": 2, "selector": {}, "template": {"spec": {"containers": [{"name": "api", "image": "api:1"}]}}},
            "status": status
        }))
    }

    #[test]
    fn a_rollout_completes_only_when_every_replica_is_new_and_available() {
        let replicas = |observed: i64, total: i64, updated: i64, available: i64| {
            json!({"observedGeneration": observed, "replicas": total,
                   "updatedReplicas": updated, "availableReplicas": available})
        };
        for (status, expected) in [
            (replicas(2, 2, 2, 2), Rollout::Progressing),
            (replicas(3, 3, 2, 2), Rollout::Progressing),
            (replicas(3, 2, 2, 1), Rollout::Progressing),
            (replicas(3, 2, 2, 2), Rollout::Complete),
        ] {
            assert_eq!(
                rollout_of(&with_status(status.clone()), 3),
                expected,
                "{status}"
            );
        }
    }

    #[test]
    fn an_exceeded_progress_deadline_fails_the_rollout() {
        let d = with_status(
            json!({"observedGeneration": 3, "replicas": 3, "updatedReplicas": 1,
            "conditions": [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                            "message": "ReplicaSet \"api-2\" has timed out progressing."}]}),
        );
        assert!(
            matches!(rollout_of(&d, 3), Rollout::Failed(m) if m.contains("timed out progressing"))
        );
    }

    #[test]
    fn an_image_patch_names_the_only_container_or_the_one_asked_for() {
        let one = with_status(json!({}));
        assert_eq!(
            patch_for(&rollout(json!({"image": "api:2"})), &one).unwrap(),
            json!({"spec": {"template": {"spec": {"containers": [{"name": "api", "image": "api:2"}]}}}})
        );
        let two = deployment(
            json!({"metadata": {"name": "api"}, "spec": {"selector": {}, "template": {"spec": {
            "containers": [{"name": "api", "image": "api:1"}, {"name": "proxy", "image": "envoy:1"}]}}}}),
        );
        assert!(
            patch_for(&rollout(json!({"image": "api:2"})), &two)
                .unwrap_err()
                .kind
                == crate::executor::adapter::ErrorKind::Refused
        );
        assert!(
            patch_for(
                &rollout(json!({"image": "api:2", "container": "web"})),
                &two
            )
            .unwrap_err()
            .kind
                == crate::executor::adapter::ErrorKind::Refused
        );
        assert_eq!(
            patch_for(
                &rollout(json!({"image": "envoy:2", "container": "proxy"})),
                &two
            )
            .unwrap()["spec"]["template"]["spec"]["containers"][0]["name"],
            "proxy"
        );
        let restart = patch_for(&rollout(json!({"restart": true})), &one).unwrap();
        assert!(restart["spec"]["template"]["metadata"]["annotations"][RESTARTED_AT].is_string());
    }
}
