//! A fake Kubernetes API server: a real HTTP server on loopback speaking
//! apps/v1 Deployments as `kube` uses them (get, strategic-merge patch with
//! `dryRun=All`, replace with optimistic concurrency, and watch as a
//! stream of JSON lines), plus a tiny controller that finishes a rollout a
//! moment after the template changes, or reports the progress deadline
//! exceeded when an image is tagged `broken`.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentCondition, DeploymentSpec, DeploymentStatus,
};
use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::Server;

type Key = (String, String);

struct Cluster {
    deployments: BTreeMap<Key, Deployment>,
    version: u64,
    /// Every change, for watches that start from an older version.
    history: Vec<(u64, Key, Deployment)>,
    requests: Vec<String>,
}

#[derive(Clone)]
struct Shared {
    cluster: Arc<Mutex<Cluster>>,
    changes: broadcast::Sender<(u64, Key, Deployment)>,
    rollout: Duration,
}

pub struct FakeK8s {
    pub server: Server,
    shared: Shared,
}

fn status(code: u16, reason: &str, message: String) -> Response {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                      "message": message, "reason": reason, "code": code});
    (StatusCode::from_u16(code).unwrap(), axum::Json(body)).into_response()
}

fn images(d: &Deployment) -> Vec<String> {
    d.spec
        .iter()
        .filter_map(|s| s.template.spec.as_ref())
        .flat_map(|p| p.containers.iter())
        .filter_map(|c| c.image.clone())
        .collect()
}

/// A strategic merge patch, as far as Deployments need it: objects merge,
/// `null` deletes, lists of named objects (containers) merge by name,
/// other lists are replaced.
fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (Value::Array(t), Value::Array(p)) if p.iter().all(|i| i.get("name").is_some()) => {
            for item in p {
                match t.iter_mut().find(|x| x.get("name") == item.get("name")) {
                    Some(existing) => merge(existing, item),
                    None => t.push(item.clone()),
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

impl Shared {
    /// Stores `d` as the new state, bumping the generation when the spec
    /// changed, and has the controller roll it out.
    fn store(&self, key: &Key, mut d: Deployment, old_spec: Option<&DeploymentSpec>) -> Deployment {
        let mut c = self.cluster.lock().unwrap();
        c.version += 1;
        let spec_changed = old_spec != d.spec.as_ref();
        let generation = d.metadata.generation.unwrap_or(0) + spec_changed as i64;
        d.metadata.generation = Some(generation);
        d.metadata.resource_version = Some(c.version.to_string());
        c.deployments.insert(key.clone(), d.clone());
        let version = c.version;
        c.history.push((version, key.clone(), d.clone()));
        let _ = self.changes.send((version, key.clone(), d.clone()));
        drop(c);
        if spec_changed {
            let me = self.clone();
            let key = key.clone();
            tokio::spawn(async move {
                tokio::time::sleep(me.rollout).await;
                me.controller(&key, generation);
            });
        }
        d
    }

    fn controller(&self, key: &Key, generation: i64) {
        let current = self.cluster.lock().unwrap().deployments.get(key).cloned();
        let Some(mut d) = current else { return };
        if d.metadata.generation != Some(generation) {
            return;
        }
        let desired = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let broken = images(&d).iter().any(|i| i.contains("broken"));
        let progressing = |status: &str, reason: &str, message: String| DeploymentCondition {
            type_: "Progressing".into(),
            status: status.into(),
            reason: Some(reason.into()),
            message: Some(message),
            ..Default::default()
        };
        d.status = Some(if broken {
            DeploymentStatus {
                observed_generation: Some(generation),
                replicas: Some(desired + 1),
                updated_replicas: Some(1),
                available_replicas: Some(desired),
                unavailable_replicas: Some(1),
                conditions: Some(vec![progressing(
                    "False",
                    "ProgressDeadlineExceeded",
                    format!("ReplicaSet \"{}\" has timed out progressing.", key.1),
                )]),
                ..Default::default()
            }
        } else {
            DeploymentStatus {
                observed_generation: Some(generation),
                replicas: Some(desired),
                updated_replicas: Some(desired),
                available_replicas: Some(desired),
                ready_replicas: Some(desired),
                conditions: Some(vec![progressing(
                    "True",
                    "NewReplicaSetAvailable",
                    "rolled out".into(),
                )]),
                ..Default::default()
            }
        });
        let spec = d.spec.clone();
        self.store(key, d, spec.as_ref());
    }
}

/// What the fake reads of a read's or write's query.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct WriteQuery {
    dry_run: Option<String>,
}

async fn one(
    State(s): State<Shared>,
    Path((ns, name)): Path<(String, String)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Query(q): Query<WriteQuery>,
    body: Bytes,
) -> Response {
    s.cluster
        .lock()
        .unwrap()
        .requests
        .push(format!("{method} {uri}"));
    let key = (ns.clone(), name.clone());
    let Some(current) = s.cluster.lock().unwrap().deployments.get(&key).cloned() else {
        return status(
            404,
            "NotFound",
            format!("deployments.apps \"{name}\" not found"),
        );
    };
    if method == Method::GET {
        return axum::Json(current).into_response();
    }
    let next = match method {
        // A patch is a JSON document by definition: merged as one, then
        // read back as the Deployment it must still be.
        Method::PATCH => {
            let kind = headers.get("content-type").and_then(|v| v.to_str().ok());
            if kind != Some("application/strategic-merge-patch+json") {
                return status(415, "UnsupportedMediaType", format!("{kind:?}"));
            }
            let Ok(patch) = serde_json::from_slice::<Value>(&body) else {
                return status(400, "BadRequest", "the body is not JSON".into());
            };
            let mut merged = serde_json::to_value(&current).expect("a Deployment serialises");
            merge(&mut merged, &patch);
            match serde_json::from_value::<Deployment>(merged) {
                Ok(next) => next,
                Err(e) => {
                    return status(
                        422,
                        "Invalid",
                        format!("the patched Deployment is invalid: {e}"),
                    );
                }
            }
        }
        Method::PUT => {
            let Ok(sent) = serde_json::from_slice::<Deployment>(&body) else {
                return status(400, "BadRequest", "the body is not a Deployment".into());
            };
            if sent.metadata.resource_version != current.metadata.resource_version {
                return status(409, "Conflict", "the object has been modified".into());
            }
            Deployment {
                spec: sent.spec,
                ..current.clone()
            }
        }
        _ => return status(405, "MethodNotAllowed", method.to_string()),
    };
    if images(&next).iter().any(|i| i.contains("invalid")) {
        return status(
            422,
            "Invalid",
            "Deployment.apps is invalid: spec.template.spec.containers[0].image: Invalid value"
                .into(),
        );
    }
    if q.dry_run.as_deref() == Some("All") {
        return axum::Json(next).into_response();
    }
    let stored = s.store(&key, next, current.spec.as_ref());
    axum::Json(stored).into_response()
}

/// `?watch=true&fieldSelector=metadata.name=…&resourceVersion=…`: the
/// changes after that version, then live ones, as JSON lines.
/// What the fake reads of a watch's query, as `kube` sends it (other
/// parameters, such as `allowWatchBookmarks`, are ignored).
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct WatchQuery {
    watch: Option<String>,
    field_selector: Option<String>,
    resource_version: Option<String>,
    timeout_seconds: Option<String>,
}

async fn list(
    State(s): State<Shared>,
    Path(ns): Path<String>,
    uri: Uri,
    Query(q): Query<WatchQuery>,
) -> Response {
    s.cluster
        .lock()
        .unwrap()
        .requests
        .push(format!("GET {uri}"));
    if q.watch.as_deref() != Some("true") {
        return status(405, "MethodNotAllowed", "only watches are served".into());
    }
    let name = q
        .field_selector
        .as_deref()
        .and_then(|f| f.strip_prefix("metadata.name="))
        .map(str::to_string);
    let from: u64 = q.resource_version.and_then(|v| v.parse().ok()).unwrap_or(0);
    let limit = Duration::from_secs(q.timeout_seconds.and_then(|v| v.parse().ok()).unwrap_or(60));
    let wanted = move |key: &Key| key.0 == ns && name.as_ref().is_none_or(|n| *n == key.1);
    let mut live = s.changes.subscribe();
    let past: Vec<(u64, Key, Deployment)> = s.cluster.lock().unwrap().history.clone();
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    tokio::spawn(async move {
        let line =
            |d: &Deployment| Bytes::from(format!("{}\n", json!({"type": "MODIFIED", "object": d})));
        let mut seen = from;
        for (v, key, d) in past {
            if v > seen && wanted(&key) {
                seen = v;
                if tx.send(line(&d)).await.is_err() {
                    return;
                }
            }
        }
        let _ = tokio::time::timeout(limit, async {
            while let Ok((v, key, d)) = live.recv().await {
                if v > seen && wanted(&key) {
                    seen = v;
                    if tx.send(line(&d)).await.is_err() {
                        return;
                    }
                }
            }
        })
        .await;
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    });
    Response::builder()
        .header("content-type", "application/json")
        .body(Body::from_stream(stream))
        .unwrap()
}

impl FakeK8s {
    /// A server whose controller finishes a rollout `rollout` after the
    /// template changed.
    pub async fn start(rollout: Duration) -> FakeK8s {
        let shared = Shared {
            cluster: Arc::new(Mutex::new(Cluster {
                deployments: BTreeMap::new(),
                version: 0,
                history: Vec::new(),
                requests: Vec::new(),
            })),
            changes: broadcast::channel(256).0,
            rollout,
        };
        let app = axum::Router::new()
            .route(
                "/apis/apps/v1/namespaces/{ns}/deployments/{name}",
                get(one).patch(one).put(one),
            )
            .route("/apis/apps/v1/namespaces/{ns}/deployments", get(list))
            .with_state(shared.clone());
        FakeK8s {
            server: Server::start(app).await,
            shared,
        }
    }

    /// A Deployment with one container, fully rolled out.
    pub fn add_deployment(&self, ns: &str, name: &str, image: &str, replicas: i64) {
        let d = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": ns, "generation": 1,
                         "annotations": {"deployment.kubernetes.io/revision": "1"}},
            "spec": {"replicas": replicas, "progressDeadlineSeconds": 600,
                     "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}},
                                  "spec": {"containers": [{"name": name, "image": image,
                                                           "ports": [{"containerPort": 8080}]}]}}},
            "status": {"observedGeneration": 1, "replicas": replicas, "updatedReplicas": replicas,
                       "availableReplicas": replicas, "readyReplicas": replicas}
        });
        let d: Deployment = serde_json::from_value(d).expect("a valid Deployment");
        let key = (ns.to_string(), name.to_string());
        let spec = d.spec.clone();
        self.shared.store(&key, d, spec.as_ref());
    }

    /// The stored Deployment as JSON, as a client would read it.
    pub fn deployment(&self, ns: &str, name: &str) -> Value {
        let d = self.shared.cluster.lock().unwrap().deployments
            [&(ns.to_string(), name.to_string())]
            .clone();
        serde_json::to_value(d).expect("a Deployment serialises")
    }

    /// "METHOD /path?query" of every request, in order.
    pub fn requests(&self) -> Vec<String> {
        self.shared.cluster.lock().unwrap().requests.clone()
    }
}
