//! The OpenAPI document served at `/openapi.json`.
//!
//! Handlers declare their own answers with `utoipa::path`; `document`
//! then states what holds for every operation alike, so that no operation
//! can forget it: every error is `application/problem+json` with the one
//! `Problem` schema (and every extension a code may carry), and the
//! statuses that come from the shared layers (authentication, the body
//! limit and content type, path and query parsing, the request deadline,
//! an internal error) are listed wherever those layers apply.

use std::sync::OnceLock;

use serde_json::{Value, json};
use utoipa::OpenApi;

use super::{
    cases, chatops, executions, kb, metrics, ops, plans, provenance, redrive, schema, signals,
};
use crate::api::error::PROBLEM_JSON;

#[derive(OpenApi)]
#[openapi(
    info(title = "opsloop", description = "AI-OPS case orchestrator"),
    paths(metrics::ingest, signals::alertmanager, executions::list, provenance::chain,
          redrive::plan_generate, redrive::gate_eval, redrive::adapter_exec, redrive::verify_run, cases::create_case, cases::get_case, cases::list_cases, cases::timeline,
          cases::transition, plans::propose, plans::current, plans::approvals, chatops::commands, chatops::interactions, ops::healthz, ops::readyz, ops::metrics,
          kb::add, kb::search, kb::delete),
    components(schemas(crate::problem::Problem, schema::StatusDoc, schema::EventKindDoc)),
    modifiers(&BearerAuth),
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The problem+json body: RFC 9457's members, our stable `code`, and the
/// extensions some codes add (`ApiError::into_response`, the transition
/// rejections in `cases::render`).
fn problem_schema() -> Value {
    json!({
        "type": "object",
        "description": "RFC 9457 problem details with a stable `code`.",
        "required": ["type", "title", "status", "detail", "code"],
        "properties": {
            "type": {"type": "string", "description": "https://opsloop.dev/problems/<code>"},
            "title": {"type": "string"},
            "status": {"type": "integer", "minimum": 400, "maximum": 599},
            "detail": {"type": "string"},
            "code": {"type": "string", "description": "stable, machine-readable (e.g. invalid_field, case_not_found, guard_failed)"},
            "field": {"type": "string", "description": "invalid_field: the field at fault"},
            "version": {"type": "integer", "description": "version_mismatch, guard_failed, illegal_transition: the case's version"},
            "case_status": {"type": "string", "description": "illegal_transition: the case's status"},
            "guards": {
                "type": "array", "description": "guard_failed: each failed guard",
                "items": {"type": "object", "required": ["guard", "detail"],
                          "properties": {"guard": {"type": "string"}, "detail": {"type": "string"}}}
            },
            "violations": {
                "type": "array", "description": "plan_invalid: each rule the plan breaks",
                "items": {"type": "object", "required": ["path", "message", "rule"],
                          "properties": {"path": {"type": "string"}, "message": {"type": "string"},
                                         "rule": {"type": "string", "enum": ["schema", "completeness"]}}}
            },
            "errors": {
                "type": "array", "description": "rows_invalid: each invalid row field (with its row); doc_invalid: each invalid field",
                "items": {"type": "object", "required": ["field", "message"],
                          "properties": {"row": {"type": "integer"}, "field": {"type": "string"},
                                         "message": {"type": "string"}}}
            }
        }
    })
}

/// No control characters (what `has_control` refuses), optionally also no
/// line breaks.
const NO_CONTROL: &str = r"^[^\x00-\x1f\x7f-\x9f]*$";
/// `Tenant`: 1-64 of `[a-z0-9_-]`, starting alphanumeric.
const TENANT: &str = r"^[a-z0-9][a-z0-9_-]{0,63}$";
const TEXT: &str = r"^[^\x00-\x08\x0b-\x1f\x7f-\x9f]*$";

/// Labels of a case or a metric row: at most 32, keys 1-63 of
/// `[A-Za-z0-9_./-]`, values up to 256 characters without control characters.
fn labels() -> Value {
    json!({"type": ["object", "null"], "maxProperties": 32,
           "propertyNames": {"pattern": r"^[A-Za-z0-9_./-]{1,63}$"},
           "additionalProperties": {"type": "string", "maxLength": 256, "pattern": NO_CONTROL}})
}

/// What the handlers check and utoipa's derive cannot say: lengths,
/// patterns, enums and closed objects of the request bodies, so that a
/// generated request the document calls valid is one the API accepts.
fn request_schemas(doc: &mut Value) {
    let schemas = &mut doc["components"]["schemas"];
    schemas["CreateCase"] = json!({
        "type": "object", "additionalProperties": false, "required": ["title", "tenant"],
        "properties": {
            "title": {"type": "string", "minLength": 1, "maxLength": 200,
                      "pattern": r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$",
                      "description": "1-200 characters without control characters, not only spaces"},
            "tenant": {"type": "string", "pattern": TENANT},
            "severity": {"type": ["string", "null"], "enum": ["critical", "high", "medium", "low", "info", null],
                         "description": "default medium"},
            "kind": {"type": ["string", "null"], "pattern": r"^[a-z0-9][a-z0-9_.-]{0,63}$"},
            "labels": labels()
        }
    });
    let nullable_object =
        |description: &str| json!({"type": ["object", "null"], "description": description});
    schemas["TransitionBody"] = json!({
        "type": "object", "additionalProperties": false, "required": ["event"],
        "properties": {
            "event": {"$ref": "#/components/schemas/EventKind"},
            "reason": {"type": ["string", "null"], "maxLength": 2000, "pattern": TEXT},
            "plan_hash": {"type": ["string", "null"], "pattern": "^[0-9a-f]{64}$",
                          "description": "the hash of the plan judged: required with gate_approved and gate_rejected"},
            "dryrun_digest": {"type": ["string", "null"], "pattern": "^[0-9a-f]{64}$",
                              "description": "the digest of the dry run judged (GET /case/{id}/plan: dry_run.digest): required with a person's gate_approved once the plan has a dry run, and with dryrun_done / dryrun_failed"},
            "meta": nullable_object("free-form context kept in the timeline (at most 16 KiB stored)"),
            "evidence": nullable_object("a worker fact's record: verify_* {verify_result_id}, exec_* {exec_run_id}"),
            "break_glass": {"type": ["object", "null"], "additionalProperties": false, "required": ["reason"],
                            "properties": {"reason": {"type": "string", "minLength": 1, "maxLength": 2000,
                                                      "pattern": r"^[^\x00-\x08\x0b-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x08\x0b-\x1f\x7f-\x9f]*$"}},
                            "description": "required to approve a plan judged inside a change freeze"}
        }
    });
    let row = json!({
        "type": "object", "additionalProperties": false,
        "required": ["tenant", "resource", "metric", "avg", "max"],
        "oneOf": [{"required": ["bucket"]}, {"required": ["ts"]}],
        "properties": {
            "bucket": {"type": "string", "format": "date-time",
                       "description": "the minute's start (seconds 0), from 2000-01-01 to now"},
            "ts": {"type": "string", "format": "date-time", "deprecated": true,
                   "description": "another name for bucket; send one of them"},
            "tenant": {"type": "string", "pattern": TENANT},
            "resource": {"type": "string", "minLength": 1, "maxLength": 200, "pattern": NO_CONTROL},
            "metric": {"type": "string", "minLength": 1, "maxLength": 200, "pattern": NO_CONTROL},
            "avg": {"type": "number", "minimum": -1e15, "maximum": 1e15, "description": "at most max"},
            "max": {"type": "number", "minimum": -1e15, "maximum": 1e15},
            "p95": {"type": ["number", "null"], "minimum": -1e15, "maximum": 1e15},
            "count": {"type": "integer", "minimum": 1, "maximum": i32::MAX},
            "labels": labels()
        }
    });
    schemas["MetricRows"] = json!({
        "type": "object", "additionalProperties": false, "required": ["rows"],
        "properties": {"rows": {"type": "array", "minItems": 1, "maxItems": super::metrics::MAX_ROWS, "items": row}}
    });
    // The ChangePlan contract, its `$defs` hoisted next to it.
    let mut plan: Value =
        serde_json::from_str(crate::planner::contract::SCHEMA_JSON).unwrap_or(Value::Null);
    if let Some(plan) = plan.as_object_mut() {
        plan.remove("$schema");
        plan.remove("$id");
        if let Some(Value::Object(defs)) = plan.remove("$defs") {
            for (name, def) in defs {
                schemas[format!("ChangePlan_{name}")] = def;
            }
        }
    }
    let text = plan
        .to_string()
        .replace("#/$defs/", "#/components/schemas/ChangePlan_");
    schemas["ChangePlan"] = serde_json::from_str(&text).unwrap_or(Value::Null);
    for name in ["ChangePlan_step", "ChangePlan_check"] {
        let text = schemas[name]
            .to_string()
            .replace("#/$defs/", "#/components/schemas/ChangePlan_");
        schemas[name] = serde_json::from_str(&text).unwrap_or(Value::Null);
    }
    let body = |schema: &str| json!({"required": true, "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}});
    doc["paths"]["/case/{id}/plan"]["post"]["requestBody"] = body("ChangePlan");
    doc["paths"]["/metrics/ingest"]["post"]["requestBody"] = body("MetricRows");
    // Where a new case can be followed (OpenAPI links), for clients and
    // for the fuzzer's stateful phase.
    let to = |operation: &str| json!({"operationId": operation, "parameters": {"id": "$response.body#/id"}});
    doc["paths"]["/case"]["post"]["responses"]["201"]["links"] = json!({
        "GetCase": to("get_case"),
        "GetTimeline": to("timeline"),
        "GetExecutions": to("list"),
        "Transition": to("transition"),
    });
}

/// Routes the derive does not describe: DESIGN's alias of `POST /case`,
/// and the two documents the API serves about itself.
fn other_routes(api: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::path::{HttpMethod, OperationBuilder};
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    use utoipa::openapi::{ContentBuilder, Deprecated, ResponseBuilder};
    if let Some(create) = api.paths.get_path_operation("/case", HttpMethod::Post) {
        let mut alias = create.clone();
        alias.operation_id = Some("create_case_alias".into());
        alias.deprecated = Some(Deprecated::True);
        alias.description = Some("The same as `POST /case` (DESIGN §6 keeps the alias).".into());
        api.paths
            .add_path_operation("/case/create", vec![HttpMethod::Post], alias);
    }
    for (path, operation, media, description) in [
        (
            "/schemas/changeplan.json",
            "changeplan_schema",
            "application/schema+json",
            "The ChangePlan JSON Schema (draft 2020-12) every plan is validated against.",
        ),
        (
            "/openapi.json",
            "openapi_document",
            "application/json",
            "This OpenAPI 3.1 document.",
        ),
    ] {
        let body = ContentBuilder::new()
            .schema(Some(ObjectBuilder::new().schema_type(Type::Object)))
            .build();
        let get = OperationBuilder::new()
            .operation_id(Some(operation))
            .tag("meta")
            .description(Some(description))
            .response(
                "200",
                ResponseBuilder::new()
                    .description(description)
                    .content(media, body),
            )
            .build();
        api.paths
            .add_path_operation(path, vec![HttpMethod::Get], get);
    }
}

/// The bodies of answers the handlers build as JSON values.
fn response_schemas(doc: &mut Value) {
    let at =
        |doc: &mut Value, path: &str, method: &str, status: &str, media: &str, schema: Value| {
            let response = &mut doc["paths"][path][method]["responses"][status];
            response["content"] = json!({media: {"schema": schema}});
        };
    let time = json!({"type": "string", "format": "date-time"});
    let ready = json!({"type": "object", "required": ["status", "database", "nats"],
        "properties": {"status": {"enum": ["ready", "not_ready"]},
                       "database": {"enum": ["ok", "unreachable"]},
                       "nats": {"enum": ["ok", "unreachable", "not_configured"]}}});
    // Readiness answers its own body, also when not ready.
    at(
        doc,
        "/readyz",
        "get",
        "200",
        "application/json",
        ready.clone(),
    );
    at(doc, "/readyz", "get", "503", "application/json", ready);
    at(
        doc,
        "/healthz",
        "get",
        "200",
        "application/json",
        json!({"type": "object", "required": ["status"], "properties": {"status": {"const": "ok"}}}),
    );
    at(
        doc,
        "/metrics/ingest",
        "post",
        "202",
        "application/json",
        json!({"type": "object", "required": ["stored"], "properties": {"stored": {"type": "integer", "minimum": 0}}}),
    );
    at(
        doc,
        "/case/{id}/plan",
        "get",
        "200",
        "application/json",
        json!({
            "type": "object",
            "required": ["plan_id", "plan_hash", "source", "author", "created_at", "plan", "approvals", "dry_run", "gate"],
            "properties": {
                "plan_id": {"type": "string", "format": "uuid"},
                "plan_hash": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                "source": {"enum": ["template", "llm", "human"]},
                "author": {"type": "string"},
                "created_at": time,
                "plan": {"$ref": "#/components/schemas/ChangePlan"},
                "approvals": {"type": "array", "items": {"type": "object", "required": ["approver", "kind", "decided_at", "dryrun_digest", "counts"],
                    "properties": {"approver": {"type": "string"}, "kind": {"enum": ["auto", "human"]}, "decided_at": time,
                                   "dryrun_digest": {"type": ["string", "null"], "pattern": "^[0-9a-f]{64}$"},
                                   "counts": {"type": "boolean", "description": "given on the plan's latest dry run (a newer dry run voids it)"}}}},
                "dry_run": {"type": ["object", "null"], "required": ["digest", "outcome", "artefact", "at"],
                    "description": "the plan's latest dry run, before the gate; null until the executor has rehearsed it",
                    "properties": {
                        "digest": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                        "outcome": {"enum": ["ok", "failed", "unavailable"]},
                        "at": time,
                        "artefact": {"type": "object", "required": ["observed_at", "steps"],
                            "properties": {"observed_at": time, "steps": {"type": "array", "items": {"type": "object",
                                "required": ["index", "action", "outcome", "detail"],
                                "properties": {"index": {"type": "integer"}, "action": {"type": "string"},
                                               "target": {"type": "string"}, "outcome": {"enum": ["ok", "failed", "unavailable"]},
                                               "error": {"type": "string"}, "detail": {}}}}}}
                    }},
                "gate": {"type": "object", "required": ["evaluated", "required_approvers", "decision", "approved"],
                    "properties": {
                        "evaluated": {"type": "boolean"},
                        "required_approvers": {"type": ["integer", "null"]},
                        "approved": {"type": "boolean"},
                        "decision": {"type": ["object", "null"], "required": ["verdict", "risk", "reasons", "auto_rollback"],
                            "properties": {"verdict": {"enum": ["auto_approve", "require_approvers", "break_glass", "deny"]},
                                           "count": {"type": "integer"}, "freeze": {"type": "string"},
                                           "risk": {"type": "number"}, "reasons": {"type": "array", "items": {"type": "string"}},
                                           "auto_rollback": {"type": "boolean"}}}
                    }}
            }
        }),
    );
}

/// Constraints of query and header parameters, by operation and name.
fn parameters(doc: &mut Value) {
    let rules: [(&str, &str, &str, Value); 8] = [
        (
            "/cases",
            "get",
            "status",
            json!({"$ref": "#/components/schemas/Status"}),
        ),
        (
            "/cases",
            "get",
            "tenant",
            json!({"type": "string", "pattern": TENANT}),
        ),
        (
            "/cases",
            "get",
            "limit",
            json!({"type": "integer", "minimum": 1, "maximum": 200}),
        ),
        (
            "/cases",
            "get",
            "cursor",
            json!({"type": "string", "format": "uuid"}),
        ),
        (
            "/case/{id}/timeline",
            "get",
            "limit",
            json!({"type": "integer", "minimum": 1, "maximum": 1000}),
        ),
        (
            "/case/{id}/timeline",
            "get",
            "cursor",
            json!({"type": "string", "pattern": "^[0-9]{1,18}$"}),
        ),
        (
            "/case/{id}/transition",
            "patch",
            "Idempotency-Key",
            json!({"type": "string", "pattern": "^[\x21-\x7e]{1,200}$"}),
        ),
        (
            "/case/{id}/transition",
            "patch",
            "If-Match",
            json!({"type": "string", "pattern": "^\"?[0-9]{1,18}\"?$"}),
        ),
    ];
    for (path, method, name, schema) in rules {
        if let Some(params) = doc["paths"][path][method]["parameters"].as_array_mut() {
            for p in params.iter_mut().filter(|p| p["name"] == name) {
                p["schema"] = schema.clone();
            }
        }
    }
}

fn reason(status: &str) -> &'static str {
    match status {
        "400" => "malformed_request, invalid_field, unknown_event",
        "401" => "unauthenticated, invalid_token",
        "403" => "forbidden (role), tenant_forbidden",
        "404" => "case_not_found (also for another tenant's case), plan_not_found",
        "413" => "payload_too_large",
        "415" => "unsupported_media_type",
        "500" => "internal_error",
        "503" => "unavailable: the request did not finish within its deadline",
        _ => "a problem",
    }
}

/// Every operation of a path.
fn operations(
    item: &mut utoipa::openapi::PathItem,
) -> impl Iterator<Item = &mut utoipa::openapi::path::Operation> {
    [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.delete,
        &mut item.options,
        &mut item.head,
        &mut item.patch,
        &mut item.trace,
    ]
    .into_iter()
    .flatten()
}

/// Adds the statuses of the shared layers to `op` and makes every error
/// answer problem+json.
fn complete(path: &str, op: &mut utoipa::openapi::path::Operation) {
    use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
    let secured = op.security.as_ref().is_some_and(|s| !s.is_empty());
    let has_body = op.request_body.is_some();
    let has_params = path.contains('{') || op.parameters.as_ref().is_some_and(|p| !p.is_empty());
    let mut add = vec!["500", "503"];
    if secured {
        add.push("401");
    }
    if has_body {
        add.extend(["400", "413", "415"]);
    }
    if has_params {
        add.push("400");
    }
    if path.starts_with("/case/{id}") {
        add.push("404");
    }
    let responses = &mut op.responses.responses;
    for status in add {
        responses
            .entry(status.to_string())
            .or_insert_with(|| ResponseBuilder::new().description(reason(status)).into());
    }
    for (status, response) in responses.iter_mut() {
        if status.as_str() >= "400"
            && let RefOr::T(response) = response
        {
            let problem = ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("Problem")))
                .build();
            response.content = [(PROBLEM_JSON.to_string(), problem)].into();
        }
    }
}

/// The document, built once.
pub fn document() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(|| {
        let mut api = ApiDoc::openapi();
        other_routes(&mut api);
        for (path, item) in api.paths.paths.iter_mut() {
            for op in operations(item) {
                complete(path, op);
            }
        }
        let mut doc = serde_json::to_value(api).unwrap_or(Value::Null);
        doc["components"]["schemas"]["Problem"] = problem_schema();
        request_schemas(&mut doc);
        response_schemas(&mut doc);
        parameters(&mut doc);
        doc
    })
}

/// `GET /openapi.json`: the document serialised once, not per request.
pub async fn serve() -> axum::response::Response {
    use axum::response::IntoResponse;
    static BODY: OnceLock<String> = OnceLock::new();
    let body = BODY.get_or_init(|| document().to_string());
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body.as_str(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every error of every operation is problem+json with the Problem
    /// schema (but readiness, whose "not ready" is its own body); every
    /// secured operation documents 401.
    #[test]
    fn every_error_is_documented_as_problem_json() {
        let doc = document();
        let mut operations = 0;
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                operations += 1;
                let responses = op["responses"].as_object().unwrap();
                for (status, response) in responses {
                    if status.as_str() >= "400" && !(path == "/readyz" && status == "503") {
                        assert_eq!(
                            response["content"][PROBLEM_JSON]["schema"]["$ref"],
                            "#/components/schemas/Problem",
                            "{method} {path} {status}"
                        );
                        assert!(
                            response["content"].get("application/json").is_none(),
                            "{method} {path} {status}"
                        );
                    }
                }
                if op.get("security").is_some() {
                    assert!(responses.contains_key("401"), "{method} {path}");
                }
                assert!(responses.contains_key("503"), "{method} {path}");
            }
        }
        assert!(operations >= 12);
        let problem = &doc["components"]["schemas"]["Problem"]["properties"];
        for member in [
            "type",
            "title",
            "status",
            "detail",
            "code",
            "field",
            "errors",
            "guards",
            "violations",
            "version",
            "case_status",
        ] {
            assert!(problem.get(member).is_some(), "Problem lacks {member}");
        }
    }
}
