//! The ChangePlan contract: the JSON Schema (the single source, shipped as
//! `changeplan.schema.json`), the completeness guard beyond it (per-action
//! params, allowlisted scripts, size limits), and the canonical plan hash
//! that approvals bind to.
//!
//! Pure: no IO. Whatever produced a plan (template, LLM, person), it is
//! stored only after `check` accepted it.

use std::collections::BTreeSet;
use std::sync::LazyLock;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::contract::{ChangePlan, PlanHash};

/// The schema text, also served to LLMs as `response_format` and to readers.
pub const SCHEMA_JSON: &str = include_str!("changeplan.schema.json");

/// The schema, parsed once: for the validator and for every LLM request.
pub static SCHEMA: LazyLock<Value> =
    LazyLock::new(|| serde_json::from_str(SCHEMA_JSON).expect("the shipped schema is JSON"));

/// The schema as sent to a server for structured output: the same shape
/// without the length and count bounds (`maxLength`, `minLength`,
/// `maxItems`, `minItems`, `pattern`), whose expansion into repetitions
/// makes grammar engines (llama.cpp) give up or crash, and with the
/// `$defs` references inlined (not every engine resolves them). Answers
/// are still validated against [`SCHEMA`], bounds included.
pub static GENERATION_SCHEMA: LazyLock<Value> = LazyLock::new(|| {
    let defs = SCHEMA.get("$defs").cloned().unwrap_or(Value::Null);
    generation_profile(&SCHEMA, &defs)
});

/// `node` without the bounds; the keys of a `properties` map are property
/// names, not keywords, and are all kept.
fn generation_profile(node: &Value, defs: &Value) -> Value {
    const DROPPED: [&str; 6] = [
        "maxLength",
        "minLength",
        "maxItems",
        "minItems",
        "pattern",
        "$defs",
    ];
    match node {
        Value::Object(map) => {
            if let Some(Value::String(r)) = map.get("$ref")
                && let Some(name) = r.strip_prefix("#/$defs/")
                && let Some(def) = defs.get(name)
            {
                return generation_profile(def, defs);
            }
            Value::Object(
                map.iter()
                    .filter(|(k, _)| !DROPPED.contains(&k.as_str()))
                    .map(|(k, v)| {
                        let v = match (k.as_str(), v) {
                            ("properties", Value::Object(props)) => Value::Object(
                                props
                                    .iter()
                                    .map(|(name, s)| (name.clone(), generation_profile(s, defs)))
                                    .collect(),
                            ),
                            _ => generation_profile(v, defs),
                        };
                        (k.clone(), v)
                    })
                    .collect(),
            )
        }
        Value::Array(items) => {
            Value::Array(items.iter().map(|v| generation_profile(v, defs)).collect())
        }
        other => other.clone(),
    }
}

static VALIDATOR: LazyLock<jsonschema::Validator> = LazyLock::new(|| {
    jsonschema::validator_for(&SCHEMA).expect("the shipped schema is a valid 2020-12 schema")
});

/// What a plan may contain beyond the schema.
#[derive(Debug, Clone)]
pub struct PlanLimits {
    /// Scripts `script.exec` may name (file names in the scripts folder).
    pub script_allowlist: BTreeSet<String>,
    /// Serialised size limit in bytes.
    pub max_bytes: usize,
}

impl Default for PlanLimits {
    fn default() -> Self {
        PlanLimits {
            script_allowlist: BTreeSet::new(),
            max_bytes: 64 * 1024,
        }
    }
}

/// One reason a plan was refused: where, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Violation {
    /// JSON pointer into the plan.
    pub path: String,
    pub message: String,
    /// `schema` or `completeness`.
    pub rule: &'static str,
}

fn completeness(path: String, message: impl Into<String>) -> Violation {
    Violation {
        path,
        message: message.into(),
        rule: "completeness",
    }
}

/// A plan that passed the schema and the completeness guard: the JSON as
/// stored (what the hash names) and its typed model.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckedPlan {
    pub plan: Value,
    pub hash: PlanHash,
    pub model: ChangePlan,
}

/// Checks a plan against the schema, then the completeness guard; returns
/// every violation found.
pub fn check(plan: &Value, limits: &PlanLimits) -> Result<CheckedPlan, Vec<Violation>> {
    let mut violations: Vec<Violation> = VALIDATOR
        .iter_errors(plan)
        .map(|e| Violation {
            path: e.instance_path().to_string(),
            message: e.to_string(),
            rule: "schema",
        })
        .collect();
    if violations.is_empty() {
        violations.extend(guard(plan, limits));
    }
    if !violations.is_empty() {
        return Err(violations);
    }
    // The guard admits only what the model can hold; a plan it admits and
    // the model refuses is a bug here, refused rather than stored.
    let model = ChangePlan::deserialize(plan).map_err(|e| {
        vec![completeness(
            String::new(),
            format!("the plan does not fit the model: {e}"),
        )]
    })?;
    Ok(CheckedPlan {
        plan: plan.clone(),
        hash: canonical_hash(plan),
        model,
    })
}

/// SHA-256 of the canonical JSON: keys sorted (serde_json's map is ordered),
/// no whitespace. The same content always hashes the same, whatever the
/// key order it arrived in.
pub fn canonical_hash(plan: &Value) -> PlanHash {
    PlanHash::of(plan.to_string().as_bytes())
}

fn guard(plan: &Value, limits: &PlanLimits) -> Vec<Violation> {
    let mut out = Vec::new();
    let size = plan.to_string().len();
    if size > limits.max_bytes {
        out.push(completeness(
            String::new(),
            format!("plan is {size} bytes, the limit is {}", limits.max_bytes),
        ));
    }
    for list in ["steps", "rollback/steps"] {
        let pointer = format!("/{list}");
        for (i, step) in plan
            .pointer(&pointer)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let at = format!("{pointer}/{i}/params");
            let params = step.get("params").cloned().unwrap_or(Value::Null);
            let action = step.get("action").and_then(Value::as_str).unwrap_or("");
            out.extend(check_params(action, &params, &at, limits));
        }
    }
    out
}

fn is_dns_label(s: &str, max: usize) -> bool {
    let b = s.as_bytes();
    (1..=max).contains(&b.len())
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-' || *c == b'.')
}

/// `undo: true` restores what the plan's own steps changed on the same
/// target, so it means something only after them, in the rollback.
fn undo_only_in_rollback(params: &Value, at: &str) -> Option<Violation> {
    match params.get("undo") {
        None => None,
        Some(Value::Bool(true)) if at.starts_with("/rollback/") => None,
        Some(Value::Bool(true)) => Some(completeness(
            format!("{at}/undo"),
            "undo is only valid in rollback steps",
        )),
        Some(_) => Some(completeness(
            format!("{at}/undo"),
            "undo must be true when present",
        )),
    }
}

fn only_keys(params: &Value, allowed: &[&str], at: &str) -> Vec<Violation> {
    params
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, _)| !allowed.contains(&k.as_str()))
        .map(|(k, _)| completeness(format!("{at}/{k}"), format!("unknown parameter {k:?}")))
        .collect()
}

/// Per-adapter parameters. Scripts are named, never written: an argv array
/// goes to the adapter as is, so no text here ever reaches a shell.
fn check_params(action: &str, params: &Value, at: &str, limits: &PlanLimits) -> Vec<Violation> {
    let field = |k: &str| params.get(k);
    let str_field = |k: &str| field(k).and_then(Value::as_str);
    let mut out = Vec::new();
    match action {
        "noop" => {
            if !(params.is_null() || params.as_object().is_some_and(|m| m.is_empty())) {
                out.push(completeness(at.into(), "noop takes no parameters"));
            }
        }
        "script.exec" => {
            out.extend(only_keys(params, &["script", "args"], at));
            match str_field("script") {
                Some(s) if limits.script_allowlist.contains(s) => {}
                Some(s) => out.push(completeness(
                    format!("{at}/script"),
                    format!("script {s:?} is not in the allowlist"),
                )),
                None => out.push(completeness(
                    format!("{at}/script"),
                    "script.exec needs the name of an allowlisted script",
                )),
            }
            match field("args") {
                None => {}
                Some(Value::Array(args))
                    if args.len() <= 32
                        && args.iter().all(|a| {
                            a.as_str()
                                .is_some_and(|s| s.len() <= 1024 && !s.contains('\0'))
                        }) => {}
                Some(_) => out.push(completeness(
                    format!("{at}/args"),
                    "args must be an array of at most 32 strings (an argv, not a command line)",
                )),
            }
        }
        "k8s.rollout" => {
            out.extend(only_keys(
                params,
                &[
                    "namespace",
                    "deployment",
                    "image",
                    "container",
                    "restart",
                    "undo",
                ],
                at,
            ));
            if !str_field("namespace").is_some_and(|s| is_dns_label(s, 63)) {
                out.push(completeness(
                    format!("{at}/namespace"),
                    "a Kubernetes namespace name",
                ));
            }
            if !str_field("deployment").is_some_and(|s| is_dns_label(s, 253)) {
                out.push(completeness(
                    format!("{at}/deployment"),
                    "a Deployment name",
                ));
            }
            if field("container").is_some()
                && !str_field("container").is_some_and(|s| is_dns_label(s, 63))
            {
                out.push(completeness(format!("{at}/container"), "a container name"));
            }
            // Typed here, so every plan the guard admits fits the model.
            if field("restart").is_some_and(|v| !v.is_boolean()) {
                out.push(completeness(
                    format!("{at}/restart"),
                    "restart is true or false",
                ));
            }
            if field("image")
                .is_some_and(|v| !v.as_str().is_some_and(|s| !s.is_empty() && s.len() <= 512))
            {
                out.push(completeness(
                    format!("{at}/image"),
                    "an image reference of 1-512 characters",
                ));
            }
            let image = str_field("image").filter(|s| !s.is_empty() && s.len() <= 512);
            let changes = [
                image.is_some(),
                field("restart").and_then(Value::as_bool) == Some(true),
                field("undo").and_then(Value::as_bool) == Some(true),
            ];
            if changes.iter().filter(|c| **c).count() != 1 {
                out.push(completeness(
                    at.into(),
                    "k8s.rollout sets exactly one of: an image, restart: true, undo: true",
                ));
            }
            out.extend(undo_only_in_rollback(params, at));
        }
        "gateway.flip" => {
            out.extend(only_keys(
                params,
                &["gateway", "route", "weights", "undo"],
                at,
            ));
            for k in ["gateway", "route"] {
                if !str_field(k).is_some_and(|s| !s.is_empty() && s.len() <= 200) {
                    out.push(completeness(
                        format!("{at}/{k}"),
                        format!("{k} is required"),
                    ));
                }
            }
            let undo = field("undo").and_then(Value::as_bool) == Some(true);
            match field("weights") {
                None if undo => {}
                Some(_) if undo => out.push(completeness(
                    at.into(),
                    "gateway.flip sets either weights or undo: true",
                )),
                weights => {
                    let weights = weights.and_then(Value::as_object);
                    let valid = weights.is_some_and(|w| {
                        !w.is_empty()
                            && w.len() <= 16
                            && w.keys().all(|k| !k.is_empty() && k.len() <= 100)
                            && w.values().all(|v| v.as_u64().is_some_and(|n| n <= 100))
                            && w.values().filter_map(Value::as_u64).sum::<u64>() == 100
                    });
                    if !valid {
                        out.push(completeness(
                            format!("{at}/weights"),
                            "weights map backends to integers 0-100 summing to 100",
                        ));
                    }
                }
            }
            out.extend(undo_only_in_rollback(params, at));
        }
        other => out.push(completeness(at.into(), format!("unknown action {other:?}"))),
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_generation_schema_has_no_bounds_or_references_and_keeps_the_shape() {
        let text = super::GENERATION_SCHEMA.to_string();
        for gone in [
            "maxLength",
            "minLength",
            "maxItems",
            "minItems",
            "pattern",
            "$ref",
            "$defs",
        ] {
            assert!(!text.contains(gone), "{gone} left in {text}");
        }
        let g = &*super::GENERATION_SCHEMA;
        assert_eq!(g["required"], super::SCHEMA["required"]);
        assert_eq!(
            g["properties"]["steps"]["items"]["properties"]["action"]["enum"],
            super::SCHEMA["$defs"]["step"]["properties"]["action"]["enum"]
        );
        // Still a schema a validator accepts, and a valid plan passes it.
        let v = jsonschema::validator_for(g).unwrap();
        let plan = serde_json::json!({
            "title": "x", "steps": [{"action": "noop", "timeout_s": 10, "retry": 0}],
            "rollback": {"steps": []}, "verify": {"checks": []}
        });
        assert!(v.is_valid(&plan));
    }

    use serde_json::json;

    use super::*;

    fn limits() -> PlanLimits {
        PlanLimits {
            script_allowlist: ["restart-checkout.sh".to_string()].into(),
            ..PlanLimits::default()
        }
    }

    fn plan() -> Value {
        json!({
            "title": "restart checkout",
            "risk_score": 0.2,
            "steps": [
                {"action": "script.exec", "params": {"script": "restart-checkout.sh", "args": ["--zone", "a; rm -rf /"]},
                 "timeout_s": 60, "retry": 1},
                {"action": "k8s.rollout", "params": {"namespace": "shop", "deployment": "checkout", "restart": true},
                 "timeout_s": 300, "retry": 0},
                {"action": "gateway.flip", "params": {"gateway": "edge", "route": "/checkout", "weights": {"blue": 90, "green": 10}},
                 "timeout_s": 30, "retry": 0},
                {"action": "noop", "timeout_s": 10, "retry": 0}
            ],
            "rollback": {"steps": [{"action": "noop", "timeout_s": 10, "retry": 0}]},
            "verify": {"checks": [{"metric": "latency_ms", "stat": "p95", "op": "<", "threshold": 800, "window_s": 300}]}
        })
    }

    fn paths(r: Result<CheckedPlan, Vec<Violation>>) -> Vec<(String, &'static str)> {
        r.expect_err("the plan must be refused")
            .into_iter()
            .map(|v| (v.path, v.rule))
            .collect()
    }

    /// Every plan the guard admits must fit the typed model; these used to
    /// pass the guard and would have been refused only by the model.
    #[test]
    fn params_of_the_wrong_type_are_refused_where_they_are() {
        let mut p = plan();
        p["steps"][1]["params"]["restart"] = json!("yes");
        assert!(
            paths(check(&p, &limits()))
                .contains(&("/steps/1/params/restart".into(), "completeness"))
        );
        let mut p = plan();
        p["steps"][1]["params"] =
            json!({"namespace": "shop", "deployment": "checkout", "image": 7, "restart": true});
        assert!(
            paths(check(&p, &limits())).contains(&("/steps/1/params/image".into(), "completeness"))
        );
        let mut p = plan();
        p["rollback"]["steps"] = json!([{"action": "gateway.flip", "timeout_s": 30, "retry": 0,
            "params": {"gateway": "edge", "route": "/checkout", "undo": true, "weights": "all"}}]);
        assert!(!paths(check(&p, &limits())).is_empty());
        assert!(check(&plan(), &limits()).is_ok());
    }

    #[test]
    fn a_complete_plan_passes_and_shell_text_in_argv_is_just_an_argument() {
        let checked = check(&plan(), &limits()).unwrap();
        assert_eq!(checked.hash.as_str().len(), 64);
    }

    #[test]
    fn the_hash_ignores_key_order_and_changes_with_content() {
        let reordered: Value = serde_json::from_str(
            &plan()
                .to_string()
                .replace("\"title\":\"restart checkout\",", ""),
        )
        .unwrap();
        let mut reordered = reordered;
        reordered["title"] = json!("restart checkout");
        assert_eq!(canonical_hash(&reordered), canonical_hash(&plan()));
        let mut changed = plan();
        changed["steps"][0]["timeout_s"] = json!(61);
        assert_ne!(canonical_hash(&changed), canonical_hash(&plan()));
    }

    #[test]
    fn schema_violations_name_their_place() {
        let mut p = plan();
        p["steps"][1]["retry"] = json!(9);
        p.as_object_mut().unwrap().remove("verify");
        p["steps"][0]["shell"] = json!("curl x | sh");
        let got = paths(check(&p, &limits()));
        assert!(
            got.contains(&("/steps/1/retry".into(), "schema")),
            "{got:?}"
        );
        assert!(
            got.contains(&("".into(), "schema")),
            "missing verify: {got:?}"
        );
        assert!(
            got.iter().any(|(p, _)| p == "/steps/0"),
            "unknown field: {got:?}"
        );
    }

    #[test]
    fn no_steps_is_refused() {
        let mut p = plan();
        p["steps"] = json!([]);
        assert_eq!(
            paths(check(&p, &limits())),
            [("/steps".to_string(), "schema")]
        );
    }

    #[test]
    fn a_script_outside_the_allowlist_or_a_command_line_is_refused() {
        let mut p = plan();
        p["steps"][0]["params"] = json!({"script": "/bin/sh", "args": "-c 'reboot'"});
        assert_eq!(
            paths(check(&p, &limits())),
            [
                ("/steps/0/params/script".to_string(), "completeness"),
                ("/steps/0/params/args".to_string(), "completeness")
            ]
        );
        p["steps"][0]["params"] = json!({"command": "systemctl restart checkout"});
        let got = paths(check(&p, &limits()));
        assert!(
            got.contains(&("/steps/0/params/command".into(), "completeness")),
            "{got:?}"
        );
        assert!(
            got.contains(&("/steps/0/params/script".into(), "completeness")),
            "{got:?}"
        );
    }

    #[test]
    fn undo_restores_only_in_rollback_and_replaces_the_change() {
        let mut p = plan();
        p["rollback"]["steps"] = json!([
            {"action": "k8s.rollout", "params": {"namespace": "shop", "deployment": "checkout", "undo": true},
             "timeout_s": 60, "retry": 0},
            {"action": "gateway.flip", "params": {"gateway": "edge", "route": "/checkout", "undo": true},
             "timeout_s": 60, "retry": 0}
        ]);
        assert!(check(&p, &limits()).is_ok());

        p["steps"][1]["params"] =
            json!({"namespace": "shop", "deployment": "checkout", "undo": true});
        p["steps"][2]["params"] = json!({"gateway": "edge", "route": "/checkout", "undo": true});
        p["rollback"]["steps"][0]["params"]["image"] = json!("checkout:2");
        p["rollback"]["steps"][1]["params"]["weights"] = json!({"blue": 100});
        assert_eq!(
            paths(check(&p, &limits())),
            [
                ("/steps/1/params/undo".to_string(), "completeness"),
                ("/steps/2/params/undo".to_string(), "completeness"),
                ("/rollback/steps/0/params".to_string(), "completeness"),
                ("/rollback/steps/1/params".to_string(), "completeness"),
            ]
        );
    }

    #[test]
    fn adapter_params_are_checked_in_rollback_steps_too() {
        let mut p = plan();
        p["rollback"]["steps"] = json!([
            {"action": "k8s.rollout", "params": {"namespace": "Shop!", "deployment": "checkout", "image": "x:1", "restart": true},
             "timeout_s": 60, "retry": 0},
            {"action": "gateway.flip", "params": {"gateway": "edge", "route": "/", "weights": {"blue": 70, "green": 20}},
             "timeout_s": 60, "retry": 0},
            {"action": "noop", "params": {"x": 1}, "timeout_s": 10, "retry": 0}
        ]);
        assert_eq!(
            paths(check(&p, &limits())),
            [
                (
                    "/rollback/steps/0/params/namespace".to_string(),
                    "completeness"
                ),
                ("/rollback/steps/0/params".to_string(), "completeness"),
                (
                    "/rollback/steps/1/params/weights".to_string(),
                    "completeness"
                ),
                ("/rollback/steps/2/params".to_string(), "completeness")
            ]
        );
    }

    #[test]
    fn oversized_plans_are_refused() {
        let mut p = plan();
        p["rationale"] = json!("x".repeat(3000));
        let small = PlanLimits {
            max_bytes: 2048,
            ..limits()
        };
        assert_eq!(paths(check(&p, &small)), [(String::new(), "completeness")]);
    }
}
