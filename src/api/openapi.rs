//! The OpenAPI document served at `/openapi.json`.

use axum::Json;
use utoipa::OpenApi;

use super::{cases, executions, metrics, ops, plans, schema};

#[derive(OpenApi)]
#[openapi(
    info(title = "opsloop", description = "AI-OPS case orchestrator"),
    paths(metrics::ingest, executions::list, cases::create_case, cases::get_case, cases::list_cases, cases::timeline,
          cases::transition, plans::propose, plans::current, ops::healthz, ops::readyz, ops::metrics),
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

/// `GET /openapi.json`.
pub async fn serve() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
