//! The plain Kubernetes manifests in `deploy/k8s/` (issue #22), parsed
//! strictly into `k8s-openapi` types: a field the API does not know, a
//! wrong type (a number where a quantity string belongs) or an object of
//! the wrong kind fails here, since no cluster or `helm` runs on this
//! machine. Then what the product needs of them: every role placed, probes
//! on `/healthz` and `/readyz`, no root, bounded resources, PDBs and the
//! Service selecting real pods, and RBAC only in namespaces, never cluster-wide.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use strum::IntoEnumIterator;

#[derive(Default)]
struct Manifests {
    deployments: Vec<Deployment>,
    services: Vec<Service>,
    pdbs: Vec<PodDisruptionBudget>,
    roles: Vec<Role>,
    bindings: Vec<RoleBinding>,
    accounts: Vec<ServiceAccount>,
    kinds: BTreeMap<String, usize>,
}

/// `doc` as `T`, and back to the same JSON: nothing dropped or changed.
fn strict<T: DeserializeOwned + serde::Serialize>(doc: &Value, origin: &str) -> T {
    let typed: T = serde_json::from_value(doc.clone())
        .unwrap_or_else(|e| panic!("{origin}: not a valid {}: {e}", std::any::type_name::<T>()));
    let back = serde_json::to_value(&typed).unwrap();
    assert_eq!(
        &back, doc,
        "{origin}: fields the API type does not know (or of the wrong shape) were dropped"
    );
    typed
}

fn load() -> Manifests {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/k8s");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no manifests in {}", dir.display());
    let mut m = Manifests::default();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for (i, document) in serde_norway::Deserializer::from_str(&text).enumerate() {
            let origin = format!("{} document {}", file.display(), i + 1);
            let doc = Value::deserialize(document).unwrap_or_else(|e| panic!("{origin}: {e}"));
            if doc.is_null() {
                continue;
            }
            let kind = doc["kind"]
                .as_str()
                .unwrap_or_else(|| panic!("{origin}: no kind"))
                .to_string();
            *m.kinds.entry(kind.clone()).or_default() += 1;
            match kind.as_str() {
                "Deployment" => m.deployments.push(strict(&doc, &origin)),
                "Service" => m.services.push(strict(&doc, &origin)),
                "PodDisruptionBudget" => m.pdbs.push(strict(&doc, &origin)),
                "Role" => m.roles.push(strict(&doc, &origin)),
                "RoleBinding" => m.bindings.push(strict(&doc, &origin)),
                "ServiceAccount" => m.accounts.push(strict(&doc, &origin)),
                "Namespace" => drop(strict::<Namespace>(&doc, &origin)),
                "ConfigMap" => drop(strict::<ConfigMap>(&doc, &origin)),
                "Secret" => drop(strict::<Secret>(&doc, &origin)),
                other => panic!("{origin}: kind {other} is not one the manifests should hold"),
            }
        }
    }
    m
}

/// A variable the container sets to a literal value.
fn env(c: &k8s_openapi::api::core::v1::Container, name: &str) -> Option<String> {
    c.env
        .iter()
        .flatten()
        .find(|e| e.name == name)
        .and_then(|e| e.value.clone())
}

/// The labels of a Deployment's pods.
fn pod_labels(d: &Deployment) -> BTreeMap<String, String> {
    let template = &d.spec.as_ref().expect("a spec").template;
    let labels = template.metadata.as_ref().and_then(|m| m.labels.clone());
    labels.expect("pod labels")
}

fn labels_match(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

#[test]
fn the_plain_manifests_are_valid_kubernetes_objects_that_run_every_role_safely() {
    let m = load();
    assert!(!m.deployments.is_empty(), "kinds found: {:?}", m.kinds);

    let mut placed = BTreeSet::new();
    for d in &m.deployments {
        let name = d.metadata.name.clone().unwrap();
        let spec = d.spec.as_ref().unwrap();
        let pod = spec.template.spec.as_ref().unwrap();
        let pod_labels = pod_labels(d);
        let selector = spec.selector.match_labels.clone().unwrap_or_default();
        assert!(
            labels_match(&selector, &pod_labels),
            "{name}: its selector picks its pods"
        );
        let security = pod
            .security_context
            .as_ref()
            .expect("a pod security context");
        assert_eq!(
            security.run_as_non_root,
            Some(true),
            "{name}: never as root"
        );
        let c = &pod.containers[0];
        // The kill comes after a stop's two grace periods (work in hand,
        // then the relay's flush) and the nak between them.
        let grace: i64 = env(c, "OPSLOOP_SHUTDOWN_GRACE_S").map_or(12, |g| g.parse().unwrap());
        assert!(
            pod.termination_grace_period_seconds.unwrap_or(30) > 2 * grace + 2,
            "{name}: terminationGracePeriodSeconds above twice OPSLOOP_SHUTDOWN_GRACE_S ({grace}) + 2"
        );
        let roles = env(c, "OPSLOOP_ROLES").unwrap_or_else(|| panic!("{name}: OPSLOOP_ROLES"));
        let parsed =
            opsloop::roles::Roles::parse(&roles.split(',').map(String::from).collect::<Vec<_>>())
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        placed.extend(opsloop::roles::Role::iter().filter(|r| parsed.has(*r)));
        let cs = c
            .security_context
            .as_ref()
            .expect("a container security context");
        assert_eq!(cs.allow_privilege_escalation, Some(false), "{name}");
        assert_eq!(cs.read_only_root_filesystem, Some(true), "{name}");
        let drops = cs
            .capabilities
            .as_ref()
            .and_then(|k| k.drop.clone())
            .unwrap_or_default();
        assert!(
            drops.iter().any(|d| d == "ALL"),
            "{name}: drops every capability"
        );
        let resources = c.resources.as_ref().expect("resources");
        for key in ["cpu", "memory"] {
            assert!(
                resources
                    .requests
                    .as_ref()
                    .is_some_and(|r| r.contains_key(key)),
                "{name}: {key} request"
            );
        }
        assert!(
            resources
                .limits
                .as_ref()
                .is_some_and(|r| r.contains_key("memory")),
            "{name}: memory limit"
        );
        let path = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
            p.as_ref()
                .and_then(|p| p.http_get.as_ref())
                .and_then(|h| h.path.clone())
        };
        // Probes on the HTTP port, which only the api role opens.
        if parsed.has(opsloop::roles::Role::Api) {
            assert_eq!(
                path(&c.liveness_probe).as_deref(),
                Some("/healthz"),
                "{name}"
            );
            assert_eq!(
                path(&c.readiness_probe).as_deref(),
                Some("/readyz"),
                "{name}"
            );
        }
        assert!(
            m.pdbs.iter().any(|p| p
                .spec
                .as_ref()
                .and_then(|s| s.selector.as_ref())
                .and_then(|s| s.match_labels.as_ref())
                .is_some_and(|sel| labels_match(sel, &pod_labels))),
            "{name}: a PodDisruptionBudget covers it"
        );
    }
    let missing: Vec<_> = opsloop::roles::Role::iter()
        .filter(|r| !placed.contains(r))
        .collect();
    assert!(missing.is_empty(), "roles no Deployment runs: {missing:?}");

    for s in &m.services {
        let selector = s
            .spec
            .as_ref()
            .and_then(|s| s.selector.clone())
            .unwrap_or_default();
        assert!(
            m.deployments
                .iter()
                .any(|d| { labels_match(&selector, &pod_labels(d)) }),
            "Service {:?} selects no Deployment's pods",
            s.metadata.name
        );
    }

    // The executor's k8s.rollout may touch Deployments in the namespaces
    // it is given, and nothing else anywhere.
    assert!(!m.roles.is_empty(), "an RBAC Role for k8s.rollout");
    for role in &m.roles {
        assert!(role.metadata.namespace.is_some(), "a namespaced Role");
        for rule in role.rules.iter().flatten() {
            let groups = rule.api_groups.clone().unwrap_or_default();
            assert!(
                groups.iter().all(|g| g == "apps" || g.is_empty()),
                "{groups:?}"
            );
            let verbs = &rule.verbs;
            assert!(
                // `update`: the undo puts the recorded Deployment back.
                verbs
                    .iter()
                    .all(|v| ["get", "list", "watch", "patch", "update"].contains(&v.as_str())),
                "{verbs:?}"
            );
            let resources = rule.resources.clone().unwrap_or_default();
            assert!(
                !resources.iter().any(|r| r == "*" || r == "secrets"),
                "{resources:?}"
            );
        }
    }
    let account_names: BTreeSet<_> = m
        .accounts
        .iter()
        .filter_map(|a| a.metadata.name.clone())
        .collect();
    for b in &m.bindings {
        assert!(
            m.roles
                .iter()
                .any(|r| r.metadata.name.as_deref() == Some(&b.role_ref.name)
                    && b.role_ref.kind == "Role"),
            "RoleBinding {:?} binds a Role of these manifests",
            b.metadata.name
        );
        for subject in b.subjects.iter().flatten() {
            assert!(
                account_names.contains(&subject.name),
                "{} is one of the manifests' accounts",
                subject.name
            );
        }
    }
}

#[test]
fn a_manifest_with_an_unknown_field_or_a_wrong_type_is_refused() {
    let good = serde_json::json!({
        "apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "opsloop"}
    });
    strict::<ServiceAccount>(&good, "good");
    let unknown = serde_json::json!({
        "apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "opsloop", "labelz": {"a": "b"}}
    });
    let refused = std::panic::catch_unwind(|| strict::<ServiceAccount>(&unknown, "unknown"));
    assert!(refused.is_err(), "an unknown field must not pass");
    let wrong_kind =
        serde_json::json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "x"}});
    assert!(std::panic::catch_unwind(|| strict::<ServiceAccount>(&wrong_kind, "kind")).is_err());
}
