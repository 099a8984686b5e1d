//! A fake OpenAI-compatible server: a real HTTP server on loopback speaking
//! the chat-completions wire format, answering from a script of replies and
//! keeping every request it received. A poisoned lock (a panicking
//! handler) is a broken fake: it panics too.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

use super::Server;

/// One scripted answer.
#[derive(Debug, Clone)]
pub enum Reply {
    /// 200 with this assistant message content, `finish_reason: stop`.
    Content(String),
    /// 200 with this content cut off, `finish_reason: length`.
    Truncated(String),
    /// This HTTP status with a plain-text body.
    Status(u16),
    /// 200 with a body that is not a chat completion.
    Raw(String),
    /// No answer for this long.
    Hang(Duration),
}

#[derive(Default)]
struct Script {
    replies: VecDeque<Reply>,
    requests: Vec<Value>,
    behaviour: Behaviour,
}

/// How the server treats requests beyond its script.
#[derive(Debug, Clone, Default)]
pub struct Behaviour {
    /// Drops the connection (no answer) when `response_format` carries a
    /// JSON schema, as llama.cpp's server does when it crashes building a
    /// grammar; such a request takes no reply from the script.
    pub drops_schema: bool,
    /// What `GET /v1/models` reports as the model's context window
    /// (vLLM's `max_model_len`); `None`: no such field.
    pub context: Option<u64>,
}

pub struct FakeLlm {
    pub base_url: String,
    script: Arc<Mutex<Script>>,
    _server: Server,
}

impl FakeLlm {
    pub async fn start(replies: Vec<Reply>) -> FakeLlm {
        FakeLlm::start_with(replies, Behaviour::default()).await
    }

    pub async fn start_with(replies: Vec<Reply>, behaviour: Behaviour) -> FakeLlm {
        let script = Arc::new(Mutex::new(Script {
            replies: replies.into(),
            requests: Vec::new(),
            behaviour,
        }));
        let app = axum::Router::new()
            .route("/v1/chat/completions", post(complete))
            .route("/v1/models", axum::routing::get(models))
            .with_state(script.clone());
        let server = Server::start(app).await;
        FakeLlm {
            base_url: format!("{}/v1", server.url),
            script,
            _server: server,
        }
    }

    /// The request bodies received so far.
    pub fn requests(&self) -> Vec<Value> {
        self.script.lock().unwrap().requests.clone()
    }

    /// Replies not yet used.
    pub fn unused(&self) -> usize {
        self.script.lock().unwrap().replies.len()
    }
}

/// An entry of `GET /v1/models`, with vLLM's name for the window.
#[derive(serde::Serialize)]
struct ModelCard {
    id: &'static str,
    object: &'static str,
    owned_by: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_model_len: Option<u64>,
}

/// What the fake reads of a chat completion request (all of it is kept as
/// sent for the tests).
#[derive(Default, serde::Deserialize)]
struct Asked {
    model: Option<String>,
    response_format: Option<AskedFormat>,
}

#[derive(serde::Deserialize)]
struct AskedFormat {
    #[serde(rename = "type")]
    kind: String,
}

impl Asked {
    fn wants_schema(&self) -> bool {
        self.response_format
            .as_ref()
            .is_some_and(|f| f.kind == "json_schema")
    }
}

async fn models(State(script): State<Arc<Mutex<Script>>>) -> Response {
    let model = ModelCard {
        id: "fake-model",
        object: "model",
        owned_by: "opsloop-tests",
        max_model_len: script.lock().unwrap().behaviour.context,
    };
    Json(json!({"object": "list", "data": [model]})).into_response()
}

async fn complete(State(script): State<Arc<Mutex<Script>>>, Json(body): Json<Value>) -> Response {
    let asked: Asked = serde_json::from_value(body.clone()).unwrap_or_default();
    let reply = {
        let mut s = script.lock().unwrap();
        s.requests.push(body.clone());
        if s.behaviour.drops_schema && asked.wants_schema() {
            None
        } else {
            s.replies.pop_front()
        }
    };
    if reply.is_none() && asked.wants_schema() && { script.lock().unwrap().behaviour.drops_schema }
    {
        // Headers, then a body that breaks off: the client sees the
        // connection drop, as with a server that crashed mid-request.
        let broken = futures::stream::once(async {
            Err::<axum::body::Bytes, std::io::Error>(std::io::Error::other("the server crashed"))
        });
        return (StatusCode::OK, axum::body::Body::from_stream(broken)).into_response();
    }
    let model = asked.model.unwrap_or_else(|| "fake".into());
    let completion = |content: &str, finish: &str| {
        Json(json!({
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": 1_763_700_000,
            "model": model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": finish
            }],
            "usage": {"prompt_tokens": 321, "completion_tokens": 45, "total_tokens": 366}
        }))
        .into_response()
    };
    match reply {
        Some(Reply::Content(c)) => completion(&c, "stop"),
        Some(Reply::Truncated(c)) => completion(&c, "length"),
        // Servers send a JSON error object for client errors; 5xx bodies
        // are often plain text from a proxy.
        Some(Reply::Status(code)) if code < 500 => (
            StatusCode::from_u16(code).unwrap(),
            Json(json!({"error": {"message": "response_format json_schema is not supported",
                                  "type": "invalid_request_error", "param": "response_format", "code": null}})),
        )
            .into_response(),
        Some(Reply::Status(code)) => (
            StatusCode::from_u16(code).unwrap(),
            "upstream model crashed",
        )
            .into_response(),
        Some(Reply::Raw(text)) => (StatusCode::OK, text).into_response(),
        Some(Reply::Hang(d)) => {
            tokio::time::sleep(d).await;
            completion("{}", "stop")
        }
        None => (StatusCode::SERVICE_UNAVAILABLE, "the test script has no more replies").into_response(),
    }
}
