//! The LLM planner: asks any OpenAI-compatible chat-completions server for a
//! ChangePlan and accepts only what passes `contract::check`.
//!
//! The model proposes; nothing it writes is trusted. Every answer is parsed
//! and checked against the schema and the completeness guard whatever the
//! server promised about structured output; an invalid answer is sent back
//! with its violations (at most `max_repairs` times); timeouts, HTTP errors
//! and unreadable bodies are retried with backoff (at most `max_retries`
//! times). Every request is recorded in `plan_attempt` as it ends.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_openai::Client;
use async_openai::config::OpenAIConfig;
use async_openai::error::OpenAIError;
use async_openai::middleware::ReqwestService;
use async_openai::types::chat::{
    ChatCompletionRequestAssistantMessage, ChatCompletionRequestMessage,
    ChatCompletionRequestSystemMessage, ChatCompletionRequestUserMessage,
    CreateChatCompletionRequestArgs, FinishReason, ResponseFormat, ResponseFormatJsonSchema,
};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

use super::contract::{self, CheckedPlan, PlanLimits, Violation};
use crate::contract::PlanHash;
use crate::telemetry;

/// Where the LLM is and how patient to be with it. Without
/// `OPENAI_BASE_URL` the planner uses templates only.
#[derive(Debug, Clone, clap::Args)]
pub struct LlmSettings {
    /// Base URL of an OpenAI-compatible API (e.g. `http://127.0.0.1:8000/v1`).
    #[arg(long = "openai-base-url", env = "OPENAI_BASE_URL")]
    pub base_url: Option<String>,
    /// Bearer key for that API; empty for servers without auth.
    #[arg(
        long = "openai-api-key",
        env = "OPENAI_API_KEY",
        default_value = "",
        hide_env_values = true
    )]
    pub api_key: String,
    #[arg(
        long = "llm-model",
        env = "OPSLOOP_LLM_MODEL",
        default_value = "gpt-4o-mini"
    )]
    pub model: String,
    /// Time allowed for one request, in milliseconds.
    #[arg(
        long = "llm-timeout-ms",
        env = "OPSLOOP_LLM_TIMEOUT_MS",
        default_value_t = 30_000
    )]
    pub timeout_ms: u64,
    /// Times an invalid answer is sent back with its violations.
    #[arg(
        long = "llm-max-repairs",
        env = "OPSLOOP_LLM_MAX_REPAIRS",
        default_value_t = 2
    )]
    pub max_repairs: u32,
    /// Times a timeout, HTTP error or unreadable body is retried.
    #[arg(
        long = "llm-max-retries",
        env = "OPSLOOP_LLM_MAX_RETRIES",
        default_value_t = 2
    )]
    pub max_retries: u32,
    /// First retry pause in milliseconds; doubles with each retry.
    #[arg(
        long = "llm-backoff-ms",
        env = "OPSLOOP_LLM_BACKOFF_MS",
        default_value_t = 500
    )]
    pub backoff_ms: u64,
    /// Send the ChangePlan schema as `response_format: json_schema`. Turned
    /// off for the rest of a planning run when the server answers 400.
    #[arg(
        long = "llm-structured-output",
        env = "OPSLOOP_LLM_STRUCTURED_OUTPUT",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub structured_output: bool,
    /// `max_tokens` sent with each request (honoured by more servers than
    /// `max_completion_tokens`).
    #[arg(
        long = "llm-max-tokens",
        env = "OPSLOOP_LLM_MAX_TOKENS",
        default_value_t = 2048
    )]
    pub max_tokens: u32,
    /// Put one filled example plan (the case's matching template,
    /// rendered with its labels) in the context: small models copy a
    /// pattern better than they follow a schema. Meant for
    /// `plan-small-v1`.
    #[arg(
        long = "llm-example-plan",
        env = "OPSLOOP_LLM_EXAMPLE_PLAN",
        default_value_t = false,
        action = clap::ArgAction::Set
    )]
    pub example_plan: bool,
    /// The model's context window in tokens; unset: read from the
    /// server's `/v1/models` when it reports one (vLLM `max_model_len`,
    /// llama.cpp `n_ctx`), else no budget is applied.
    #[arg(long = "llm-context-tokens", env = "OPSLOOP_LLM_CONTEXT_TOKENS")]
    pub context_tokens: Option<u32>,
    #[arg(
        long = "prompts-dir",
        env = "OPSLOOP_PROMPTS_DIR",
        default_value = "prompts"
    )]
    pub prompts_dir: PathBuf,
    /// Prompt file (without `.md`) in the prompts folder; its name is the
    /// prompt version recorded with every attempt.
    #[arg(
        long = "plan-prompt",
        env = "OPSLOOP_PLAN_PROMPT",
        default_value = "plan-v2"
    )]
    pub prompt: String,
}

/// A versioned prompt: the file's stem is its version, and its SHA-256 is
/// recorded too, so an edited file without a new name is still noticed.
#[derive(Debug, Clone)]
pub struct Prompt {
    pub version: String,
    pub hash: String,
    pub text: String,
}

impl Prompt {
    pub fn load(dir: &Path, version: &str) -> anyhow::Result<Prompt> {
        let path = dir.join(format!("{version}.md"));
        let text = std::fs::read_to_string(&path)
            .map_err(|e| anyhow::anyhow!("cannot read prompt {}: {e}", path.display()))?;
        Ok(Prompt {
            version: version.to_string(),
            hash: hex::encode(Sha256::digest(text.as_bytes())),
            text,
        })
    }
}

/// How one request ended; stored in `plan_attempt.outcome`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, strum::Display)]
#[strum(serialize_all = "snake_case")]
pub enum Outcome {
    Valid,
    Invalid,
    Timeout,
    HttpError,
    Garbage,
    /// Not sent: the prompt leaves no room for an answer in the model's
    /// context window.
    ContextExceeded,
}

/// How the answer's JSON is asked for, strongest first. A server that
/// fails one (a grammar it cannot compile, a 400 naming the format, a
/// connection dropped after a schema was sent) is asked with the next; the
/// mode that answered is kept for the rest of the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, strum::Display)]
#[strum(serialize_all = "snake_case")]
pub enum OutputMode {
    /// `response_format: json_schema` with the generation schema.
    JsonSchema,
    /// `response_format: json_object`.
    JsonObject,
    /// The prompt alone asks for JSON.
    Prompt,
}

impl OutputMode {
    fn weaker(self) -> Option<OutputMode> {
        match self {
            OutputMode::JsonSchema => Some(OutputMode::JsonObject),
            OutputMode::JsonObject => Some(OutputMode::Prompt),
            OutputMode::Prompt => None,
        }
    }
}

/// Tokens kept free for the answer at least; a prompt that leaves fewer is
/// not sent.
const MIN_ANSWER_TOKENS: u32 = 256;

/// Tokens of `messages`, over-estimated without the server's tokenizer:
/// one per three characters (English runs about four per token, JSON
/// fewer) and a few per message for the chat template.
fn estimate_tokens(messages: &[ChatCompletionRequestMessage]) -> u32 {
    let chars: usize = messages
        .iter()
        .map(|m| serde_json::to_string(m).map_or(0, |t| t.chars().count()))
        .sum();
    u32::try_from(chars.div_ceil(3) + 8 * messages.len()).unwrap_or(u32::MAX)
}

/// The end of a planning run.
#[derive(Debug)]
pub enum LlmAnswer {
    Plan(Box<CheckedPlan>),
    /// No valid plan; the reason goes into `evt.plan.failed.v1`.
    Failed(String),
}

/// The answer text kept with an attempt, for post-mortems.
const REPLY_CAP: usize = 16 * 1024;

pub struct LlmPlanner {
    client: Client<OpenAIConfig>,
    settings: LlmSettings,
    prompt: Prompt,
    /// The output mode this server and model answered in.
    mode: std::sync::Mutex<OutputMode>,
    /// The model's context window, once known (configured, or read from
    /// the server once).
    context: tokio::sync::OnceCell<Option<u32>>,
    http: reqwest::Client,
}

/// Who the attempts are recorded for, and what they were based on.
pub struct AttemptScope<'a> {
    pub pool: &'a PgPool,
    pub case_id: Uuid,
    pub command_id: Uuid,
    /// The librarian's passages the context carried (`None`: no librarian
    /// configured), kept with every attempt.
    pub retrieval: Option<Value>,
    /// Their ids: the only `kb:` ids a plan may cite in `references`.
    pub passage_ids: std::collections::BTreeSet<String>,
}

struct Attempt {
    outcome: Outcome,
    mode: OutputMode,
    latency: Duration,
    prompt_tokens: Option<u32>,
    completion_tokens: Option<u32>,
    errors: Vec<String>,
    reply: Option<String>,
    plan_hash: Option<PlanHash>,
}

impl LlmPlanner {
    /// `None` when no LLM is configured.
    pub fn from_settings(settings: &LlmSettings) -> anyhow::Result<Option<LlmPlanner>> {
        let Some(base_url) = settings.base_url.as_deref().filter(|u| !u.is_empty()) else {
            return Ok(None);
        };
        let prompt = Prompt::load(&settings.prompts_dir, &settings.prompt)?;
        let config = OpenAIConfig::new()
            .with_api_base(base_url.trim_end_matches('/'))
            .with_api_key(&settings.api_key);
        // The per-request deadline is enforced around each call; this one
        // only bounds connection set-up.
        let http = crate::http_client::http_client()
            .connect_timeout(Duration::from_secs(5))
            .build()?;
        // The plain transport, without async-openai's own retry layer: we
        // retry ourselves so that every request is seen, timed and recorded.
        let client =
            Client::with_config(config).with_http_service(ReqwestService::new(http.clone()));
        let mode = if settings.structured_output {
            OutputMode::JsonSchema
        } else {
            OutputMode::Prompt
        };
        Ok(Some(LlmPlanner {
            client,
            settings: settings.clone(),
            prompt,
            mode: std::sync::Mutex::new(mode),
            context: tokio::sync::OnceCell::new(),
            http,
        }))
    }

    pub fn prompt(&self) -> &Prompt {
        &self.prompt
    }

    /// Whether the context carries a filled example plan.
    pub fn wants_example(&self) -> bool {
        self.settings.example_plan
    }

    /// The output mode requests start in now.
    pub fn output_mode(&self) -> OutputMode {
        *self.mode.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps `mode` when it is weaker than the one kept: runs that started
    /// before a step down never move it back up.
    fn remember(&self, mode: OutputMode) {
        let mut m = self.mode.lock().unwrap_or_else(|p| p.into_inner());
        let rank = |m: OutputMode| match m {
            OutputMode::JsonSchema => 0,
            OutputMode::JsonObject => 1,
            OutputMode::Prompt => 2,
        };
        if rank(mode) > rank(*m) {
            tracing::warn!(from = %*m, to = %mode, model = %self.settings.model,
                           "The LLM server answers in a weaker output mode; kept for this process.");
            *m = mode;
        }
    }

    /// The model's context window: configured, else what `/v1/models`
    /// says of this model (asked once), else unknown.
    async fn context_tokens(&self) -> Option<u32> {
        if let Some(n) = self.settings.context_tokens {
            return Some(n);
        }
        if let Some(known) = self.context.get() {
            return *known;
        }
        let base = self.settings.base_url.as_deref()?.trim_end_matches('/');
        let mut request = self
            .http
            .get(format!("{base}/models"))
            .timeout(Duration::from_secs(5));
        if !self.settings.api_key.is_empty() {
            request = request.bearer_auth(&self.settings.api_key);
        }
        // A server that does not answer now is asked again next time; one
        // that answers without a window is taken at its word.
        let models: Value = request.send().await.ok()?.json().await.ok()?;
        let n = context_of(&models, &self.settings.model);
        if let Some(n) = n {
            tracing::info!(model = %self.settings.model, context_tokens = n,
                           "The LLM server reports the model's context window.");
        }
        let _ = self.context.set(n);
        n
    }

    /// Runs the ask / check / repair loop for one case. Database errors
    /// (recording attempts) are the only `Err`; everything the model or the
    /// server does wrong ends as `LlmAnswer::Failed`.
    pub async fn plan(
        &self,
        context: &Value,
        limits: &PlanLimits,
        scope: &AttemptScope<'_>,
    ) -> Result<LlmAnswer, sqlx::Error> {
        let mut messages: Vec<ChatCompletionRequestMessage> = vec![
            ChatCompletionRequestSystemMessage::from(self.prompt.text.as_str()).into(),
            ChatCompletionRequestUserMessage::from(context.to_string()).into(),
        ];
        let base = messages.len();
        let mut mode = self.output_mode();
        let context = self.context_tokens().await;
        let (mut repairs, mut retries, mut n) = (0u32, 0u32, 0i32);
        loop {
            n += 1;
            let (attempt, next) = self
                .ask(&messages, mode, context, limits, &scope.passage_ids)
                .await;
            // The server answered in this mode: keep it.
            if matches!(attempt.outcome, Outcome::Valid | Outcome::Invalid) {
                self.remember(mode);
            }
            let outcome = attempt.outcome;
            telemetry::llm_request(outcome.into(), attempt.latency.as_secs_f64());
            let errors = attempt.errors.clone();
            let reply = attempt.reply.clone();
            self.record(scope, n, attempt).await?;
            match next {
                Next::Done(plan) => return Ok(LlmAnswer::Plan(plan)),
                Next::Repair => {
                    telemetry::plan_validation_failed("llm");
                    repairs += 1;
                    if repairs > self.settings.max_repairs {
                        return Ok(LlmAnswer::Failed(format!(
                            "the LLM gave no valid plan in {n} attempts; last errors: {}",
                            errors.join("; ")
                        )));
                    }
                    // Only the last answer and its errors: the prompt stays
                    // the same size however many repairs it takes.
                    messages.truncate(base);
                    messages.push(
                        ChatCompletionRequestAssistantMessage::from(
                            reply.unwrap_or_default().as_str(),
                        )
                        .into(),
                    );
                    messages.push(
                        ChatCompletionRequestUserMessage::from(repair_request(&errors)).into(),
                    );
                }
                // The format itself failed: the next mode at once, not a
                // retry of the same request.
                Next::Retry { weaker_mode: true } if mode.weaker().is_some() => {
                    mode = mode.weaker().unwrap_or(mode);
                }
                Next::Retry { .. } => {
                    retries += 1;
                    if retries > self.settings.max_retries {
                        return Ok(LlmAnswer::Failed(format!(
                            "the LLM server failed {retries} times ({outcome}); last error: {}",
                            errors.join("; ")
                        )));
                    }
                    let pause = self
                        .settings
                        .backoff_ms
                        .saturating_mul(1 << (retries - 1).min(6));
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                }
                Next::GiveUp => {
                    return Ok(LlmAnswer::Failed(format!(
                        "the LLM server refused the request: {}",
                        errors.join("; ")
                    )));
                }
            }
        }
    }

    async fn ask(
        &self,
        messages: &[ChatCompletionRequestMessage],
        mode: OutputMode,
        context: Option<u32>,
        limits: &PlanLimits,
        passage_ids: &std::collections::BTreeSet<String>,
    ) -> (Attempt, Next) {
        let mut attempt = Attempt {
            outcome: Outcome::Garbage,
            mode,
            latency: Duration::ZERO,
            prompt_tokens: None,
            completion_tokens: None,
            errors: Vec::new(),
            reply: None,
            plan_hash: None,
        };
        // The answer gets what the context window leaves, at most the
        // configured maximum; a prompt that leaves too little is not sent.
        let mut max_tokens = self.settings.max_tokens;
        if let Some(window) = context {
            let prompt = estimate_tokens(messages);
            let room = window.saturating_sub(prompt);
            if room < MIN_ANSWER_TOKENS {
                attempt.outcome = Outcome::ContextExceeded;
                attempt.errors.push(format!(
                    "the prompt needs about {prompt} tokens of the model's {window}, leaving {room} for the answer \
                     (at least {MIN_ANSWER_TOKENS}); not sent"
                ));
                return (attempt, Next::GiveUp);
            }
            max_tokens = max_tokens.min(room);
        }
        let request = match self.request(messages, mode, max_tokens) {
            Ok(r) => r,
            Err(e) => {
                attempt.errors.push(e.to_string());
                return (attempt, Next::GiveUp);
            }
        };
        let started = Instant::now();
        let timeout = Duration::from_millis(self.settings.timeout_ms);
        let answer = tokio::time::timeout(timeout, self.client.chat().create(request)).await;
        attempt.latency = started.elapsed();
        let response = match answer {
            Err(_) => {
                attempt.outcome = Outcome::Timeout;
                attempt
                    .errors
                    .push(format!("no answer within {} ms", timeout.as_millis()));
                return (attempt, Next::Retry { weaker_mode: false });
            }
            Ok(Err(e)) => return classify_error(attempt, e),
            Ok(Ok(r)) => r,
        };
        if let Some(usage) = &response.usage {
            attempt.prompt_tokens = Some(usage.prompt_tokens);
            attempt.completion_tokens = Some(usage.completion_tokens);
        }
        let Some(choice) = response.choices.into_iter().next() else {
            attempt.errors.push("the response has no choices".into());
            return (attempt, Next::Retry { weaker_mode: false });
        };
        let text = choice.message.content.unwrap_or_default();
        attempt.reply = Some(cap(&text));
        attempt.outcome = Outcome::Invalid;
        let plan = match parse_answer(&text) {
            Ok(plan) => plan,
            Err(e) => {
                let cut = choice.finish_reason == Some(FinishReason::Length) || e.is_eof();
                attempt.errors.push(if cut {
                    format!(
                        "the answer is truncated JSON ({e}); answer with a shorter, complete plan"
                    )
                } else {
                    format!("the answer is not a JSON object ({e})")
                });
                return (attempt, Next::Repair);
            }
        };
        match contract::check(&plan, limits) {
            // A librarian id the model was not given is made up (or put
            // there by a passage's text): an approver would trust it.
            Ok(checked) if !uncited(&checked, passage_ids).is_empty() => {
                attempt.errors = uncited(&checked, passage_ids)
                    .into_iter()
                    .map(|r| {
                        format!(
                            "/references: {r} is not the id of a passage in references_available; cite only those ids (reference)"
                        )
                    })
                    .collect();
                (attempt, Next::Repair)
            }
            Ok(checked) => {
                attempt.outcome = Outcome::Valid;
                attempt.plan_hash = Some(checked.hash.clone());
                (attempt, Next::Done(Box::new(checked)))
            }
            Err(violations) => {
                attempt.errors = violations.iter().map(describe).collect();
                (attempt, Next::Repair)
            }
        }
    }

    fn request(
        &self,
        messages: &[ChatCompletionRequestMessage],
        mode: OutputMode,
        max_tokens: u32,
    ) -> Result<async_openai::types::chat::CreateChatCompletionRequest, OpenAIError> {
        let mut args = CreateChatCompletionRequestArgs::default();
        args.model(&self.settings.model)
            .messages(messages.to_vec())
            .temperature(0.0)
            .max_tokens(max_tokens);
        match mode {
            OutputMode::JsonSchema => {
                args.response_format(ResponseFormat::JsonSchema {
                    json_schema: ResponseFormatJsonSchema {
                        name: "ChangePlan".into(),
                        description: Some("A remediation plan for an opsloop case.".into()),
                        schema: contract::GENERATION_SCHEMA.clone(),
                        // Strict mode accepts only a subset of JSON Schema
                        // that ours does not keep to; we validate regardless.
                        strict: Some(false),
                    },
                });
            }
            OutputMode::JsonObject => {
                args.response_format(ResponseFormat::JsonObject);
            }
            OutputMode::Prompt => {}
        }
        args.build()
    }

    async fn record(
        &self,
        scope: &AttemptScope<'_>,
        n: i32,
        a: Attempt,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO plan_attempt (id, case_id, command_id, attempt, model, prompt_version, \
             prompt_hash, structured_output, latency_ms, prompt_tokens, completion_tokens, outcome, \
             errors, reply, plan_hash, retrieval, output_mode) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)",
        )
        .bind(Uuid::now_v7())
        .bind(scope.case_id)
        .bind(scope.command_id)
        .bind(n)
        .bind(&self.settings.model)
        .bind(&self.prompt.version)
        .bind(&self.prompt.hash)
        .bind(a.mode != OutputMode::Prompt)
        .bind(i32::try_from(a.latency.as_millis()).unwrap_or(i32::MAX))
        .bind(a.prompt_tokens.map(|t| t as i32))
        .bind(a.completion_tokens.map(|t| t as i32))
        .bind(<&'static str>::from(a.outcome))
        .bind(json!(a.errors))
        .bind(a.reply)
        .bind(a.plan_hash)
        .bind(&scope.retrieval)
        .bind(<&'static str>::from(a.mode))
        .execute(scope.pool)
        .await?;
        Ok(())
    }
}

enum Next {
    Done(Box<CheckedPlan>),
    /// Send the violations back and ask again.
    Repair,
    /// The server misbehaved; ask again after a pause, or at once in the
    /// next output mode when the format itself failed.
    Retry {
        weaker_mode: bool,
    },
    /// Asking again cannot help (bad key, unknown model).
    GiveUp,
}

fn classify_error(mut attempt: Attempt, e: OpenAIError) -> (Attempt, Next) {
    attempt.errors.push(cap(&e.to_string()));
    let formatted = attempt.mode != OutputMode::Prompt;
    match &e {
        OpenAIError::ApiError(api) => {
            attempt.outcome = Outcome::HttpError;
            let status = api.status_code.as_u16();
            // A grammar the server cannot build may come back as a 400
            // naming the format or as a 500 saying so.
            let text = e.to_string().to_lowercase();
            let about_format = ["response_format", "grammar", "json_schema", "schema"]
                .iter()
                .any(|w| text.contains(w));
            if formatted && (status == 400 || (status >= 500 && about_format)) {
                (attempt, Next::Retry { weaker_mode: true })
            } else if status >= 500 || status == 429 || status == 408 {
                (attempt, Next::Retry { weaker_mode: false })
            } else {
                (attempt, Next::GiveUp)
            }
        }
        OpenAIError::JSONDeserialize(..) => {
            attempt.outcome = Outcome::Garbage;
            (attempt, Next::Retry { weaker_mode: false })
        }
        // Never connected: the server is down, not the format's fault.
        _ if never_connected(&e) => {
            attempt.outcome = Outcome::HttpError;
            (attempt, Next::Retry { weaker_mode: false })
        }
        // The connection dropped after the request went out (a server that
        // crashed compiling the format, e.g. llama.cpp on a large schema):
        // the next mode.
        _ => {
            attempt.outcome = Outcome::HttpError;
            (
                attempt,
                Next::Retry {
                    weaker_mode: formatted,
                },
            )
        }
    }
}

/// Whether the request never reached the server (connection refused, no
/// route): through async-openai's plain transport the reqwest error comes
/// boxed.
fn never_connected(e: &OpenAIError) -> bool {
    let reqwest_error = match e {
        OpenAIError::Reqwest(r) => Some(r),
        OpenAIError::Boxed(b) => b.downcast_ref::<reqwest::Error>(),
        _ => None,
    };
    reqwest_error.is_some_and(|r| r.is_connect())
}

/// The context window `/v1/models` reports for `model` (or its only
/// model): vLLM's `max_model_len`, `context_length`, or `meta.n_ctx`.
/// Not llama.cpp's `meta.n_ctx_train`: the length the model was trained
/// at, not the window the server runs it with.
fn context_of(models: &Value, model: &str) -> Option<u32> {
    #[derive(serde::Deserialize)]
    struct Models {
        data: Vec<Model>,
    }
    #[derive(serde::Deserialize)]
    struct Model {
        #[serde(default)]
        id: Option<String>,
        #[serde(default)]
        max_model_len: Option<u64>,
        #[serde(default)]
        context_length: Option<u64>,
        #[serde(default)]
        meta: Option<Meta>,
    }
    #[derive(serde::Deserialize)]
    struct Meta {
        #[serde(default)]
        n_ctx: Option<u64>,
    }
    let list = Models::deserialize(models).ok()?.data;
    // The configured model, or the server's only one.
    let at = list
        .iter()
        .position(|m| m.id.as_deref() == Some(model))
        .or((list.len() == 1).then_some(0))?;
    let entry = list.into_iter().nth(at)?;
    entry
        .max_model_len
        .or(entry.context_length)
        .or(entry.meta.and_then(|m| m.n_ctx))
        .and_then(|n| u32::try_from(n).ok())
}

/// The model's text as a JSON object. One Markdown code fence around it is
/// tolerated (models add them despite the prompt); prose is not.
fn parse_answer(text: &str) -> Result<Value, serde_json::Error> {
    let mut body = text.trim();
    if let Some(rest) = body.strip_prefix("```") {
        let rest = rest.strip_prefix("json").unwrap_or(rest);
        body = rest.strip_suffix("```").unwrap_or(rest).trim();
    }
    let value: Value = serde_json::from_str(body)?;
    if value.is_object() {
        Ok(value)
    } else {
        Err(serde::de::Error::custom("expected a JSON object"))
    }
}

/// The plan's `kb:` references that were not among the passages given.
fn uncited<'a>(
    plan: &'a CheckedPlan,
    passage_ids: &std::collections::BTreeSet<String>,
) -> Vec<&'a str> {
    plan.model
        .references
        .iter()
        .filter(|r| r.starts_with("kb:") && !passage_ids.contains(*r))
        .map(String::as_str)
        .collect()
}

fn describe(v: &Violation) -> String {
    let at = if v.path.is_empty() { "/" } else { &v.path };
    format!("{at}: {} ({})", v.message, v.rule)
}

fn repair_request(errors: &[String]) -> String {
    let mut out = String::from(
        "Your answer was rejected and nothing was stored. Errors (JSON pointer: problem):\n",
    );
    for e in errors {
        out.push_str("- ");
        out.push_str(e);
        out.push('\n');
    }
    out.push_str(
        "Answer again with the whole corrected ChangePlan as one JSON object, and nothing else.",
    );
    out
}

fn cap(s: &str) -> String {
    if s.len() <= REPLY_CAP {
        return s.to_string();
    }
    let mut end = REPLY_CAP;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…[{} bytes cut]", &s[..end], s.len() - end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_in_one_fence_are_read_and_prose_is_not() {
        assert!(parse_answer("```json\n{\"a\": 1}\n```").is_ok());
        assert!(parse_answer("  {\"a\": 1} ").is_ok());
        assert!(parse_answer("Sure! Here is the plan: {\"a\": 1}").is_err());
        assert!(parse_answer("[1, 2]").is_err());
        assert!(
            parse_answer("{\"title\": \"x\", \"steps\": [")
                .unwrap_err()
                .is_eof()
        );
    }

    #[test]
    fn the_context_window_is_read_from_what_servers_report() {
        let vllm = json!({"data": [{"id": "m", "max_model_len": 8192}]});
        assert_eq!(context_of(&vllm, "m"), Some(8192));
        let llama =
            json!({"data": [{"id": "other-name", "meta": {"n_ctx": 4096, "n_ctx_train": 32768}}]});
        assert_eq!(
            context_of(&llama, "m"),
            Some(4096),
            "the only model, its window"
        );
        let trained = json!({"data": [{"id": "m", "meta": {"n_ctx_train": 32768}}]});
        assert_eq!(
            context_of(&trained, "m"),
            None,
            "a training length is no window"
        );
        let two =
            json!({"data": [{"id": "a", "max_model_len": 1}, {"id": "b", "max_model_len": 2}]});
        assert_eq!(context_of(&two, "m"), None);
        assert_eq!(context_of(&json!({"data": [{"id": "m"}]}), "m"), None);
    }

    #[test]
    fn the_repair_request_lists_every_error() {
        let text = repair_request(&[
            "/steps/0/params/script: not allowed (completeness)".into(),
            "/: x".into(),
        ]);
        assert!(text.contains("/steps/0/params/script: not allowed"));
        assert!(text.contains("- /: x"));
    }

    #[test]
    fn long_replies_are_capped_on_a_char_boundary() {
        let long = "é".repeat(REPLY_CAP);
        let capped = cap(&long);
        assert!(capped.len() < long.len());
        assert!(capped.ends_with("bytes cut]"));
    }
}
