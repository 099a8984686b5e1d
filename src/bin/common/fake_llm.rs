//! A fake OpenAI-compatible chat-completions server for benchmarks: a real
//! HTTP server on loopback that answers every request with the same valid,
//! low-risk ChangePlan after a fixed delay.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::routing::post;
use serde_json::{Value, json};

pub struct FakeLlm {
    pub base_url: String,
}

pub async fn start(delay: Duration) -> anyhow::Result<FakeLlm> {
    let app = axum::Router::new()
        .route("/v1/chat/completions", post(complete))
        .with_state(delay);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(FakeLlm {
        base_url: format!("http://{addr}/v1"),
    })
}

async fn complete(State(delay): State<Duration>, Json(body): Json<Value>) -> Json<Value> {
    tokio::time::sleep(delay).await;
    let plan = json!({
        "title": "Observe and verify the SLO", "environment": "staging", "risk_score": 0.1,
        "steps": [{"action": "noop", "timeout_s": 10, "retry": 0}],
        "rollback": {"steps": [{"action": "noop", "timeout_s": 10, "retry": 0}]},
        "verify": {"checks": [{"metric": "latency_p95_ms", "op": "<", "threshold": 300, "window_s": 60}]}
    });
    Json(json!({
        "id": "chatcmpl-bench", "object": "chat.completion", "created": 1_763_700_000,
        "model": body["model"],
        "choices": [{"index": 0, "message": {"role": "assistant", "content": plan.to_string()},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 900, "completion_tokens": 120, "total_tokens": 1020}
    }))
}
