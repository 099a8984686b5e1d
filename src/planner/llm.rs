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
    structured: bool,
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
        let client = Client::with_config(config).with_http_service(ReqwestService::new(http));
        Ok(Some(LlmPlanner {
            client,
            settings: settings.clone(),
            prompt,
        }))
    }

    pub fn prompt(&self) -> &Prompt {
        &self.prompt
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
        let mut structured = self.settings.structured_output;
        let (mut repairs, mut retries, mut n) = (0u32, 0u32, 0i32);
        loop {
            n += 1;
            let (attempt, next) = self
                .ask(&messages, structured, limits, &scope.passage_ids)
                .await;
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
                Next::Retry { drop_structured } => {
                    if drop_structured {
                        structured = false;
                    }
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
        structured: bool,
        limits: &PlanLimits,
        passage_ids: &std::collections::BTreeSet<String>,
    ) -> (Attempt, Next) {
        let mut attempt = Attempt {
            outcome: Outcome::Garbage,
            structured,
            latency: Duration::ZERO,
            prompt_tokens: None,
            completion_tokens: None,
            errors: Vec::new(),
            reply: None,
            plan_hash: None,
        };
        let request = match self.request(messages, structured) {
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
                return (
                    attempt,
                    Next::Retry {
                        drop_structured: false,
                    },
                );
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
            return (
                attempt,
                Next::Retry {
                    drop_structured: false,
                },
            );
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
        structured: bool,
    ) -> Result<async_openai::types::chat::CreateChatCompletionRequest, OpenAIError> {
        let mut args = CreateChatCompletionRequestArgs::default();
        args.model(&self.settings.model)
            .messages(messages.to_vec())
            .temperature(0.0)
            .max_tokens(self.settings.max_tokens);
        if structured {
            args.response_format(ResponseFormat::JsonSchema {
                json_schema: ResponseFormatJsonSchema {
                    name: "ChangePlan".into(),
                    description: Some("A remediation plan for an opsloop case.".into()),
                    schema: contract::SCHEMA.clone(),
                    // Strict mode accepts only a subset of JSON Schema that
                    // ours does not keep to; we validate regardless.
                    strict: Some(false),
                },
            });
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
             errors, reply, plan_hash, retrieval) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)",
        )
        .bind(Uuid::now_v7())
        .bind(scope.case_id)
        .bind(scope.command_id)
        .bind(n)
        .bind(&self.settings.model)
        .bind(&self.prompt.version)
        .bind(&self.prompt.hash)
        .bind(a.structured)
        .bind(i32::try_from(a.latency.as_millis()).unwrap_or(i32::MAX))
        .bind(a.prompt_tokens.map(|t| t as i32))
        .bind(a.completion_tokens.map(|t| t as i32))
        .bind(<&'static str>::from(a.outcome))
        .bind(json!(a.errors))
        .bind(a.reply)
        .bind(a.plan_hash)
        .bind(&scope.retrieval)
        .execute(scope.pool)
        .await?;
        Ok(())
    }
}

enum Next {
    Done(Box<CheckedPlan>),
    /// Send the violations back and ask again.
    Repair,
    /// The server misbehaved; ask again after a pause.
    Retry {
        drop_structured: bool,
    },
    /// Asking again cannot help (bad key, unknown model).
    GiveUp,
}

fn classify_error(mut attempt: Attempt, e: OpenAIError) -> (Attempt, Next) {
    attempt.errors.push(cap(&e.to_string()));
    match &e {
        OpenAIError::ApiError(api) => {
            attempt.outcome = Outcome::HttpError;
            let status = api.status_code;
            if status.is_server_error() || status.as_u16() == 429 || status.as_u16() == 408 {
                (
                    attempt,
                    Next::Retry {
                        drop_structured: false,
                    },
                )
            } else if status.as_u16() == 400 && attempt.structured {
                // Many compatible servers reject `json_schema`; ask again
                // without it (the answer is validated either way).
                (
                    attempt,
                    Next::Retry {
                        drop_structured: true,
                    },
                )
            } else {
                (attempt, Next::GiveUp)
            }
        }
        OpenAIError::JSONDeserialize(..) => {
            attempt.outcome = Outcome::Garbage;
            (
                attempt,
                Next::Retry {
                    drop_structured: false,
                },
            )
        }
        _ => {
            attempt.outcome = Outcome::HttpError;
            (
                attempt,
                Next::Retry {
                    drop_structured: false,
                },
            )
        }
    }
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
