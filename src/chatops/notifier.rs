//! The notifier role: follows the feed with its own durable consumer and
//! tells each tenant's chat channel (its incoming webhook in the ChatOps
//! file) when people are needed or a case ends: a gate waiting for
//! approvers (with Approve / Reject buttons bound to the plan hash and dry
//! run), a case parked, closed, or rolled back.
//!
//! Owns `chat_notification`: one row per feed message it posted (or gave
//! up on), so a redelivered message posts nothing twice. A webhook that
//! fails is tried again with the consumer's back-off, at most
//! `MAX_DELIVERIES` times; then the failure is recorded and the feed moves
//! on: a dead webhook never holds it up. Never changes a case.

use std::time::Duration;

use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use super::ChatOpsFile;
use crate::contract::fact::{
    EVT_CASE_TRANSITION, EVT_GATE_PENDING, EVT_ROLLED_BACK, GatePending, RunEnded,
};
use crate::contract::{Fact, Message};
use crate::pubsub::consumer::{DeadReason, Delivery, Disposition, Handler};
use crate::workflow::Status;

pub const CONSUMER: &str = "notifier";

/// Deliveries of one message before its notification is given up.
pub const MAX_DELIVERIES: i64 = 5;

/// The facts people are told of; the rest of the feed is not read.
const TOLD: [&str; 3] = [EVT_GATE_PENDING, EVT_CASE_TRANSITION, EVT_ROLLED_BACK];

/// A notice older than this is news to no one (a notifier that was down):
/// it is not posted.
const STALE_AFTER_S: i64 = 3600;

/// Slack refuses a section text over 3,000 characters.
const MAX_TEXT: usize = 2900;

pub struct Notifier {
    pub pool: PgPool,
    pub file: ChatOpsFile,
    pub http: reqwest::Client,
}

/// What a chat channel is told, and why.
struct Notice {
    kind: &'static str,
    body: Value,
}

impl Notifier {
    pub fn new(pool: PgPool, file: ChatOpsFile) -> Notifier {
        Notifier {
            pool,
            file,
            // Default settings cannot fail to build.
            http: crate::http_client::http_client()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("an HTTP client with default settings"),
        }
    }

    /// The message for a feed fact, if it is one people are told of.
    async fn notice(&self, m: &Message<Fact>) -> Result<Option<Notice>, sqlx::Error> {
        let case = m.case_id.uuid();
        // The case of the message's own tenant, or nothing is told: a
        // channel only ever hears of its tenant's cases.
        let title: Option<String> =
            sqlx::query_scalar("SELECT title FROM ops_case WHERE id = $1 AND tenant = $2")
                .bind(case)
                .bind(m.tenant.as_str())
                .fetch_optional(&self.pool)
                .await?;
        let Some(title) = title else {
            return Ok(None);
        };
        let head = format!("*{}* (`{case}`, {})", escape(&title), m.tenant);
        Ok(match &m.body {
            Fact::GatePending(p) => Some(Notice {
                kind: "gate_pending",
                body: gate_pending(&head, case, p, &self.plan_title(case, p).await?),
            }),
            Fact::CaseTransition(t) if t.to == Status::Parked => Some(Notice {
                kind: "parked",
                body: text_block(&format!(
                    ":warning: {head} parked ({}): {}",
                    t.event,
                    escape(t.reason.as_deref().unwrap_or("no reason given"))
                )),
            }),
            Fact::CaseTransition(t) if t.to == Status::Closed => Some(Notice {
                kind: "closed",
                body: text_block(&format!(
                    ":white_check_mark: {head} closed ({}){}",
                    t.event,
                    t.reason
                        .as_deref()
                        .map(|r| format!(": {}", escape(r)))
                        .unwrap_or_default()
                )),
            }),
            Fact::RolledBack(r) => Some(Notice {
                kind: "rolled_back",
                body: text_block(&rolled_back(&head, r)),
            }),
            _ => None,
        })
    }

    async fn plan_title(&self, case: Uuid, p: &GatePending) -> Result<String, sqlx::Error> {
        let title: Option<String> = sqlx::query_scalar(
            "SELECT plan->>'title' FROM plan_proposed WHERE case_id = $1 AND plan_hash = $2",
        )
        .bind(case)
        .bind(&p.judged.plan_hash)
        .fetch_optional(&self.pool)
        .await?
        .flatten();
        Ok(title.unwrap_or_default())
    }

    /// Whether this message was already posted (or given up on).
    async fn seen(&self, message_id: Uuid) -> Result<bool, sqlx::Error> {
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM chat_notification WHERE message_id = $1)")
            .bind(message_id)
            .fetch_one(&self.pool)
            .await
    }

    async fn record(
        &self,
        m: &Message<Fact>,
        kind: &str,
        outcome: &str,
        error: Option<&str>,
        attempts: i64,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO chat_notification (message_id, case_id, tenant, kind, outcome, error, attempts) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (message_id) DO NOTHING",
        )
        .bind(m.id)
        .bind(m.case_id.uuid())
        .bind(m.tenant.as_str())
        .bind(kind)
        .bind(outcome)
        .bind(error)
        .bind(i32::try_from(attempts).unwrap_or(i32::MAX))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Posts; `Err((why, worth_retrying))`. The webhook's URL is a
    /// secret: it never appears in the error.
    async fn post(&self, url: &str, body: &Value) -> Result<(), (String, bool)> {
        let response = self
            .http
            .post(url)
            .json(body)
            .send()
            .await
            .map_err(|e| (format!("posting to the webhook: {}", e.without_url()), true))?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            // A refusal stays a refusal; throttling and trouble may pass.
            let again = !crate::executor::adapter::refuses(status.as_u16());
            Err((format!("the webhook answered {status}"), again))
        }
    }

    async fn handle_fact(
        &self,
        m: &Message<Fact>,
        d: &Delivery,
    ) -> Result<Disposition, sqlx::Error> {
        let Some(channel) = self.file.tenants.get(m.tenant.as_str()) else {
            return Ok(Disposition::Done);
        };
        if self.seen(m.id).await? {
            return Ok(Disposition::Done);
        }
        if (chrono::Utc::now() - m.occurred_at).num_seconds() > STALE_AFTER_S {
            crate::telemetry::chat_notification("stale");
            return Ok(Disposition::Done);
        }
        let Some(notice) = self.notice(m).await? else {
            return Ok(Disposition::Done);
        };
        match self.post(&channel.webhook_url, &notice.body).await {
            Ok(()) => {
                self.record(m, notice.kind, "posted", None, d.delivered)
                    .await?;
                crate::telemetry::chat_notification("posted");
                Ok(Disposition::Done)
            }
            Err((why, true)) if d.delivered < MAX_DELIVERIES => {
                crate::telemetry::chat_notification("retried");
                Ok(Disposition::Retry(why))
            }
            Err((why, _)) => {
                tracing::warn!(case.id = %m.case_id.uuid(), tenant = %m.tenant, error = %why,
                               "Chat notification given up.");
                self.record(m, notice.kind, "failed", Some(&why), d.delivered)
                    .await?;
                crate::telemetry::chat_notification("failed");
                Ok(Disposition::Done)
            }
        }
    }
}

impl Handler for Notifier {
    fn name(&self) -> &str {
        CONSUMER
    }

    async fn handle(&self, d: &Delivery) -> Disposition {
        // The feed carries every fact; this role reads the few it tells of.
        if !TOLD.contains(&d.envelope.kind.as_str()) {
            return Disposition::Done;
        }
        // The orchestrator skips these (informational) unread: a malformed
        // one is this role's to keep for a person.
        let m = match Message::<Fact>::from_envelope(&d.envelope) {
            Ok(m) => m,
            Err(e) => return Disposition::DeadLetter(DeadReason::InvalidData, e.to_string()),
        };
        self.handle_fact(&m, d)
            .await
            .unwrap_or_else(|e| Disposition::Retry(e.to_string()))
    }
}

/// Slack's mrkdwn needs `&`, `<` and `>` escaped in text it did not write.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Cut to what a Slack section takes (after escaping, which lengthens).
fn fit(text: &str) -> String {
    if text.chars().count() <= MAX_TEXT {
        return text.to_string();
    }
    let mut cut: String = text.chars().take(MAX_TEXT).collect();
    // Never end inside an escape (`&am…`).
    if let Some(amp) = cut.rfind('&')
        && !cut[amp..].contains(';')
    {
        cut.truncate(amp);
    }
    cut.push('…');
    cut
}

fn text_block(text: &str) -> Value {
    let text = fit(text);
    json!({
        "text": text,
        "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": text}}]
    })
}

fn rolled_back(head: &str, r: &RunEnded) -> String {
    format!(
        ":leftwards_arrow_with_hook: {head}: plan `{}` rolled back ({}){}",
        r.plan_hash.short(),
        r.status,
        r.reason
            .as_deref()
            .map(|x| format!(": {}", escape(x)))
            .unwrap_or_default()
    )
}

/// A gate waiting for people: the plan, its risk and the gate's reasons,
/// and buttons bound to this plan hash and dry run.
fn gate_pending(head: &str, case: Uuid, p: &GatePending, plan_title: &str) -> Value {
    let j = &p.judged;
    let digest = j
        .dryrun_digest
        .as_ref()
        .map_or("-".to_string(), |d| d.to_string());
    let value = format!("{case}:{}:{digest}", j.plan_hash);
    let summary = format!(
        ":raised_hand: {head} waits for {} approver(s){}.\n*Plan* `{}` {}\n*Risk* {:.2}: {}",
        p.required_approvers,
        if p.break_glass == Some(true) {
            format!(
                " (break-glass: change freeze {})",
                escape(p.freeze.as_deref().unwrap_or("?"))
            )
        } else {
            String::new()
        },
        j.plan_hash.short(),
        escape(plan_title),
        j.risk,
        escape(&j.reasons.join("; "))
    );
    let summary = fit(&summary);
    json!({
        "text": summary,
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": summary}},
            {"type": "actions", "block_id": format!("gate:{case}"), "elements": [
                {"type": "button", "action_id": "approve", "style": "primary",
                 "text": {"type": "plain_text", "text": "Approve"}, "value": value},
                {"type": "button", "action_id": "reject", "style": "danger",
                 "text": {"type": "plain_text", "text": "Reject"}, "value": value}
            ]}
        ]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_text_is_escaped_and_cut_to_what_slack_takes() {
        assert_eq!(
            escape("<!channel> & <@U1>"),
            "&lt;!channel&gt; &amp; &lt;@U1&gt;"
        );
        let long = escape(&"<".repeat(2000));
        let cut = fit(&long);
        assert!(cut.chars().count() <= MAX_TEXT + 1, "{}", cut.len());
        assert!(cut.ends_with("&lt;…"), "{}", &cut[cut.len() - 12..]);
        assert_eq!(fit("short"), "short");
    }
}
