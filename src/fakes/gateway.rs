//! A fake gateway admin API: routes with backend weights, as
//! `executor::gateway` speaks to it (`GET /admin/routes/{route}`, `PUT
//! /admin/routes/{route}/weights`), keeping every PUT; reads can be made to
//! answer 503 a number of times (a gateway restarting).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use serde_json::{Value, json};

use super::Server;

/// The gateway's state; clones share it.
#[derive(Clone, Default)]
pub struct FakeGateway {
    /// Route → `{backend: weight}`.
    pub routes: Arc<Mutex<BTreeMap<String, Value>>>,
    /// Every weights body PUT, in order.
    pub puts: Arc<Mutex<Vec<Value>>>,
    /// Reads answered 503 before the gateway answers again.
    pub unavailable_reads: Arc<Mutex<u32>>,
}

async fn read_route(State(g): State<FakeGateway>, Path(route): Path<String>) -> Response {
    {
        let mut left = g.unavailable_reads.lock().unwrap();
        if *left > 0 {
            *left -= 1;
            return (StatusCode::SERVICE_UNAVAILABLE, "restarting").into_response();
        }
    }
    match g.routes.lock().unwrap().get(&route) {
        Some(w) => Json(json!({"route": route, "weights": w})).into_response(),
        None => (StatusCode::NOT_FOUND, "no such route").into_response(),
    }
}

/// The body of `PUT /routes/{route}/weights`.
#[derive(serde::Deserialize)]
struct SetWeights {
    weights: Value,
}

async fn set_weights(
    State(g): State<FakeGateway>,
    Path(route): Path<String>,
    Json(body): Json<SetWeights>,
) -> Response {
    let mut routes = g.routes.lock().unwrap();
    let Some(w) = routes.get_mut(&route) else {
        return (StatusCode::NOT_FOUND, "no such route").into_response();
    };
    g.puts.lock().unwrap().push(body.weights.clone());
    *w = body.weights;
    Json(json!({"route": route, "weights": w})).into_response()
}

impl FakeGateway {
    /// Serves the admin API under `/admin` until the server is dropped.
    pub async fn start(&self) -> Server {
        let app = axum::Router::new()
            .route("/admin/routes/{route}", get(read_route))
            .route("/admin/routes/{route}/weights", put(set_weights))
            .with_state(self.clone());
        Server::start(app).await
    }
}
