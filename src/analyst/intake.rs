//! Signals in: an Alertmanager notification becomes cases. Each alert is
//! handled on its own, in its own transaction, committed before the webhook
//! answers: one bad alert never loses the others (Alertmanager does not
//! retry a 4xx), and an accepted one is durable.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use sha2::{Digest, Sha256};

use crate::auth::{Identity, TenantScope};
use crate::contract::Tenant;
use crate::model::Case;
use crate::orchestrator::{
    Actor, Answer, Orchestrator, Origin, Outcome, TransitionError, TransitionRequest,
};
use crate::roles::Role;
use crate::store::NewCase;
use crate::workflow::EventKind;

use super::rules::SignalsFile;

/// A case keeps at most this many labels of its alert.
pub const MAX_LABELS: usize = 32;
/// A label value longer than this (in characters) is cut.
pub const MAX_LABEL_VALUE: usize = 256;

/// How alerts become cases: where the tenant comes from, which cases start
/// by themselves, and what a resolution does.
#[derive(Debug, Clone, clap::Args)]
pub struct IntakeSettings {
    /// The alert label naming the tenant.
    #[arg(
        long = "signal-tenant-label",
        env = "OPSLOOP_SIGNAL_TENANT_LABEL",
        default_value = "tenant"
    )]
    pub tenant_label: String,
    /// The tenant of an alert without that label.
    #[arg(
        long = "signal-default-tenant",
        env = "OPSLOOP_SIGNAL_DEFAULT_TENANT",
        default_value = "default"
    )]
    pub default_tenant: String,
    /// Severities whose signal cases start analysis by themselves (sent by
    /// the analyst's identity); the others wait for a person.
    #[arg(
        long = "signal-autostart",
        env = "OPSLOOP_SIGNAL_AUTOSTART",
        default_value = "critical,high,medium",
        value_delimiter = ','
    )]
    pub autostart: Vec<String>,
    /// The reason a case is dismissed with when every alert joined to it
    /// resolved before it reached the gate.
    #[arg(
        long = "signal-resolved-reason",
        env = "OPSLOOP_SIGNAL_RESOLVED_REASON",
        default_value = "resolved at source"
    )]
    pub resolved_reason: String,
    /// Seconds within which a new alert of the same Alertmanager group
    /// (`groupKey`) joins the group's open case instead of opening one; 0
    /// gives every alert its own case.
    #[arg(
        long = "signal-group-window-s",
        env = "OPSLOOP_SIGNAL_GROUP_WINDOW_S",
        default_value_t = 300
    )]
    pub group_window_s: u64,
    /// The signals file (TOML): per-tenant intake policy and the
    /// detector's rules (`config/signals.toml` documents it). Where it does
    /// not exist: `autostart` for every tenant, one baseline rule over
    /// every metric.
    #[arg(
        long = "signals-file",
        env = "OPSLOOP_SIGNALS_FILE",
        default_value = "config/signals.toml"
    )]
    pub signals_file: std::path::PathBuf,
    /// The file, loaded (`load`).
    #[arg(skip)]
    pub signals: std::sync::Arc<SignalsFile>,
}

impl IntakeSettings {
    /// Reads and checks the signals file, if one is named.
    pub fn load(mut self) -> anyhow::Result<Self> {
        if self.signals_file.exists() {
            self.signals = std::sync::Arc::new(SignalsFile::load(&self.signals_file)?);
        } else {
            tracing::warn!(path = %self.signals_file.display(),
                "No signals file: every tenant's intake follows OPSLOOP_SIGNAL_AUTOSTART; one baseline rule watches every metric.");
        }
        Ok(self)
    }

    /// Whether a new case of `severity` starts analysis by itself: the
    /// tenant's policy in the signals file, else `autostart`.
    pub fn autostarts(&self, tenant: &Tenant, severity: &str) -> bool {
        self.signals
            .autostarts(tenant.as_str(), severity)
            .unwrap_or_else(|| self.autostart.iter().any(|s| s == severity))
    }
}

impl Default for IntakeSettings {
    fn default() -> Self {
        IntakeSettings {
            tenant_label: "tenant".into(),
            default_tenant: "default".into(),
            autostart: vec!["critical".into(), "high".into(), "medium".into()],
            resolved_reason: "resolved at source".into(),
            group_window_s: 300,
            signals_file: "config/signals.toml".into(),
            signals: std::sync::Arc::default(),
        }
    }
}

/// Alertmanager's webhook body, version 4, as Alertmanager sends it.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AlertmanagerWebhook {
    pub version: String,
    #[serde(default)]
    pub group_key: Option<String>,
    #[serde(default)]
    pub receiver: Option<String>,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub external_url: Option<String>,
    #[serde(default)]
    pub common_labels: BTreeMap<String, String>,
    pub alerts: Vec<Alert>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Alert {
    pub status: AlertStatus,
    #[serde(default)]
    pub labels: Labels,
    #[serde(default)]
    pub annotations: Annotations,
    #[serde(default)]
    pub starts_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub ends_at: Option<DateTime<Utc>>,
    #[serde(default, rename = "generatorURL")]
    pub generator_url: Option<String>,
    #[serde(default)]
    pub fingerprint: String,
}

/// An alert's labels: the two intake reads by name, and the others.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
pub struct Labels {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alertname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severity: Option<String>,
    #[serde(flatten)]
    pub other: BTreeMap<String, String>,
}

impl Labels {
    /// A label by a name known only at run time (the tenant label).
    pub fn get(&self, name: &str) -> Option<&str> {
        match name {
            "alertname" => self.alertname.as_deref(),
            "severity" => self.severity.as_deref(),
            _ => self.other.get(name).map(String::as_str),
        }
    }

    /// Every label, in name order.
    pub fn all(&self) -> BTreeMap<&str, &str> {
        let mut all: BTreeMap<&str, &str> = self
            .other
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        for (k, v) in [("alertname", &self.alertname), ("severity", &self.severity)] {
            if let Some(v) = v {
                all.insert(k, v);
            }
        }
        all
    }
}

/// An alert's annotations: the summary a case takes as its title, and the
/// others.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
pub struct Annotations {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    #[serde(flatten)]
    pub other: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertStatus {
    Firing,
    Resolved,
}

impl AlertStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertStatus::Firing => "firing",
            AlertStatus::Resolved => "resolved",
        }
    }

    pub fn from_firing(firing: bool) -> Self {
        if firing {
            AlertStatus::Firing
        } else {
            AlertStatus::Resolved
        }
    }
}

/// Where a signal came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Alertmanager,
    /// The analyst's own detector over `metric_1m`.
    Detector,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Alertmanager => "alertmanager",
            Source::Detector => "detector",
        }
    }

    fn envelope_type(self) -> &'static str {
        match self {
            Source::Alertmanager => "signal.alertmanager",
            Source::Detector => "signal.detector",
        }
    }
}

/// The notification an alert arrived in: its source, its group, and what
/// the evidence keeps besides the alert.
#[derive(Debug, Clone)]
pub struct Notice {
    pub source: Source,
    pub group_key: Option<String>,
    /// The evidence's `source` (Alertmanager's external URL, or the rule).
    pub origin: String,
    pub context: serde_json::Map<String, Value>,
    /// The detector's `anomaly` row this alert is, marked taken (with its
    /// outcome and case) in the transaction that takes it.
    pub anomaly: Option<Uuid>,
}

impl Notice {
    pub fn of_webhook(hook: &AlertmanagerWebhook) -> Self {
        let mut context = serde_json::Map::new();
        context.insert("group_key".into(), json!(hook.group_key));
        context.insert("receiver".into(), json!(hook.receiver));
        context.insert("common_labels".into(), json!(hook.common_labels));
        Notice {
            source: Source::Alertmanager,
            group_key: hook.group_key.clone(),
            origin: hook
                .external_url
                .clone()
                .unwrap_or_else(|| "alertmanager".into()),
            context,
            anomaly: None,
        }
    }
}

/// What became of one alert of a notification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct AlertOutcome {
    pub fingerprint: String,
    /// `accepted` (a case opened), `deduplicated` (joined the alert's open
    /// case as evidence), `grouped` (a new alert joined the open case of its
    /// Alertmanager group), `ignored` (a resolution with no open case) or
    /// `refused`.
    pub outcome: Verdict,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub case_id: Option<Uuid>,
}

/// What intake did with one alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Accepted,
    Deduplicated,
    Grouped,
    Ignored,
    Refused,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Accepted => "accepted",
            Verdict::Deduplicated => "deduplicated",
            Verdict::Grouped => "grouped",
            Verdict::Ignored => "ignored",
            Verdict::Refused => "refused",
        }
    }
}

impl AlertOutcome {
    fn refused(fingerprint: &str, reason: String) -> Self {
        AlertOutcome {
            fingerprint: fingerprint.to_string(),
            outcome: Verdict::Refused,
            reason: Some(reason),
            case_id: None,
        }
    }
}

/// Why a whole notification is refused (422).
pub fn check(hook: &AlertmanagerWebhook) -> Result<(), String> {
    if hook.version != "4" {
        return Err(format!(
            "webhook version {:?}: only Alertmanager's version \"4\" is understood",
            hook.version
        ));
    }
    if hook.alerts.is_empty() {
        return Err("the notification carries no alerts".into());
    }
    // PostgreSQL's text and jsonb cannot hold NUL; Prometheus labels never
    // carry one.
    let text = serde_json::to_string(hook).map_err(|e| e.to_string())?;
    if text.contains("\\u0000") {
        return Err("the notification contains a NUL character".into());
    }
    Ok(())
}

/// Handles every alert of `hook` for `who`, each in its own transaction.
pub async fn take(
    orchestrator: &Orchestrator,
    settings: &IntakeSettings,
    who: &Identity,
    hook: &AlertmanagerWebhook,
) -> Result<Vec<AlertOutcome>, TransitionError> {
    let notice = Notice::of_webhook(hook);
    let mut outcomes = Vec::with_capacity(hook.alerts.len());
    for alert in &hook.alerts {
        let outcome = match tenant_of(settings, alert) {
            Err(why) => AlertOutcome::refused(&alert.fingerprint, why),
            Ok(tenant) if !who.may_act_for(&tenant) => AlertOutcome::refused(
                &alert.fingerprint,
                format!(
                    "tenant_forbidden: {} does not act for tenant {tenant}",
                    who.id
                ),
            ),
            Ok(tenant) => {
                take_alert(orchestrator, settings, &who.id, &tenant, &notice, alert).await?
            }
        };
        if outcome.outcome == Verdict::Refused {
            crate::telemetry::signal_received(notice.source.as_str(), outcome.outcome.as_str());
        }
        outcomes.push(outcome);
    }
    Ok(outcomes)
}

/// Takes one alert of `tenant` (already judged to be `actor`'s to send):
/// commits it, then starts or dismisses its case as the intake policy says.
pub async fn take_alert(
    orchestrator: &Orchestrator,
    settings: &IntakeSettings,
    actor: &str,
    tenant: &Tenant,
    notice: &Notice,
    alert: &Alert,
) -> Result<AlertOutcome, TransitionError> {
    if alert.fingerprint.is_empty() || alert.fingerprint.chars().count() > 200 {
        let refused =
            AlertOutcome::refused(&alert.fingerprint, "fingerprint: 1-200 characters".into());
        mark_taken(orchestrator.pool(), notice, Verdict::Refused, None).await?;
        crate::telemetry::signal_received(notice.source.as_str(), refused.outcome.as_str());
        return Ok(refused);
    }
    let (outcome, next) =
        take_one(orchestrator.pool(), settings, actor, tenant, notice, alert).await?;
    if outcome.outcome == Verdict::Accepted {
        // The new case's `evt.case.created.v1` waits in the outbox.
        orchestrator.outbox_ready().wake();
    }
    if let Some(next) = next {
        follow_up(orchestrator, settings, tenant, next).await?;
    }
    crate::telemetry::signal_received(notice.source.as_str(), outcome.outcome.as_str());
    Ok(outcome)
}

fn tenant_of(settings: &IntakeSettings, alert: &Alert) -> Result<Tenant, String> {
    let name = alert
        .labels
        .get(&settings.tenant_label)
        .unwrap_or(&settings.default_tenant);
    Tenant::try_from(name.to_string())
        .map_err(|_| format!("invalid_tenant: {name:?} is not a tenant name"))
}

/// What a committed alert asks of its case next, in a transition of its own.
enum Next {
    /// A new case whose severity the intake policy starts by itself.
    Start(Uuid),
    /// Every alert of the case resolved before it reached the gate.
    Dismiss(Uuid),
}

async fn take_one(
    pool: &PgPool,
    settings: &IntakeSettings,
    actor: &str,
    tenant: &Tenant,
    notice: &Notice,
    alert: &Alert,
) -> Result<(AlertOutcome, Option<Next>), sqlx::Error> {
    let mut tx = pool.begin().await?;
    // Twins (the same alert in webhooks arriving at once) queue here, and
    // so do alerts of one group (always group first, then alert) while a
    // group window can join them; without one, groups need no order.
    if let Some(group) = &notice.group_key
        && settings.group_window_s > 0
    {
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
            .bind(format!("signal-group/{tenant}/{group}"))
            .execute(&mut *tx)
            .await?;
    }
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(format!("signal/{tenant}/{}", alert.fingerprint))
        .execute(&mut *tx)
        .await?;
    let open: Option<(Uuid, Uuid)> = sqlx::query_as(
        "SELECT s.id, s.case_id FROM signal s JOIN ops_case c ON c.id = s.case_id \
         WHERE s.tenant = $1 AND s.fingerprint = $2 AND c.status <> 'CLOSED' \
         ORDER BY s.first_at DESC LIMIT 1",
    )
    .bind(tenant.as_str())
    .bind(&alert.fingerprint)
    .fetch_optional(&mut *tx)
    .await?;
    // A new alert of a group whose case is open and recent joins that case.
    let grouped: Option<Uuid> = match (&open, alert.status, &notice.group_key) {
        (None, AlertStatus::Firing, Some(group)) if settings.group_window_s > 0 => {
            sqlx::query_scalar(
                "SELECT s.case_id FROM signal s JOIN ops_case c ON c.id = s.case_id \
                 WHERE s.tenant = $1 AND s.group_key = $2 AND c.status <> 'CLOSED' \
                   AND s.first_at > now() - make_interval(secs => $3) \
                 ORDER BY s.first_at LIMIT 1",
            )
            .bind(tenant.as_str())
            .bind(group)
            .bind(settings.group_window_s as f64)
            .fetch_optional(&mut *tx)
            .await?
        }
        _ => None,
    };
    if let Some(case_id) = grouped {
        sqlx::query(
            "INSERT INTO signal (id, tenant, source, fingerprint, case_id, status, group_key) \
             VALUES ($1, $2, $6, $3, $4, 'firing', $5)",
        )
        .bind(Uuid::now_v7())
        .bind(tenant.as_str())
        .bind(&alert.fingerprint)
        .bind(case_id)
        .bind(&notice.group_key)
        .bind(notice.source.as_str())
        .execute(&mut *tx)
        .await?;
    }
    // The intake policy, judged on the case as created (no second read).
    let mut autostart = false;
    let (outcome, case_id) = match (open, alert.status) {
        (None, _) if let Some(case_id) = grouped => {
            crate::telemetry::signal_deduplicated();
            (Verdict::Grouped, case_id)
        }
        (Some((signal_id, case_id)), status) => {
            sqlx::query(
                "UPDATE signal SET notifications = notifications + 1, status = $2, last_at = now() \
                 WHERE id = $1",
            )
            .bind(signal_id)
            .bind(status.as_str())
            .execute(&mut *tx)
            .await?;
            crate::telemetry::signal_deduplicated();
            (Verdict::Deduplicated, case_id)
        }
        (None, AlertStatus::Resolved) => {
            tx.rollback().await?;
            mark_taken(pool, notice, Verdict::Ignored, None).await?;
            let ignored = AlertOutcome {
                fingerprint: alert.fingerprint.clone(),
                outcome: Verdict::Ignored,
                reason: Some("resolved, and no case of this alert is open".into()),
                case_id: None,
            };
            return Ok((ignored, None));
        }
        (None, AlertStatus::Firing) => {
            let (new, cut) = case_of(tenant, alert);
            let case: Case = crate::store::insert_case(&mut tx, &new, actor).await?;
            autostart = settings.autostarts(tenant, &case.severity);
            sqlx::query(
                "INSERT INTO signal (id, tenant, source, fingerprint, case_id, status, group_key) \
                 VALUES ($1, $2, $6, $3, $4, 'firing', $5)",
            )
            .bind(Uuid::now_v7())
            .bind(tenant.as_str())
            .bind(&alert.fingerprint)
            .bind(case.id)
            .bind(&notice.group_key)
            .bind(notice.source.as_str())
            .execute(&mut *tx)
            .await?;
            if !cut.is_empty() {
                tracing::info!(case.id = %case.id, cut = ?cut, "Alert labels cut to fit a case.");
            }
            (Verdict::Accepted, case.id)
        }
    };
    let next = match (outcome, alert.status) {
        (Verdict::Accepted, _) => autostart.then_some(Next::Start(case_id)),
        (_, AlertStatus::Resolved) => {
            // Every alert of the case resolved, and no plan was ever put
            // to the gate: nothing is left to do for it.
            let done: bool = sqlx::query_scalar(
                "SELECT NOT EXISTS (SELECT 1 FROM signal WHERE case_id = $1 AND status <> 'resolved') \
                    AND NOT EXISTS (SELECT 1 FROM case_timeline WHERE case_id = $1 \
                        AND to_status IN ('WAIT_GATE', 'EXECUTING', 'VERIFYING', 'CLOSED'))",
            )
            .bind(case_id)
            .fetch_one(&mut *tx)
            .await?;
            done.then_some(Next::Dismiss(case_id))
        }
        _ => None,
    };
    // The notification itself is the evidence, as it came (with what was cut).
    let envelope = Uuid::now_v7();
    let mut data = notice.context.clone();
    data.insert("alert".into(), json!(alert));
    sqlx::query(
        "INSERT INTO event_envelope (id, type, source, data, tenant) VALUES ($1, $5, $2, $3, $4)",
    )
    .bind(envelope)
    .bind(&notice.origin)
    .bind(Value::Object(data))
    .bind(tenant.as_str())
    .bind(notice.source.envelope_type())
    .execute(&mut *tx)
    .await?;
    sqlx::query("INSERT INTO evidence_link (case_id, envelope_id, role) VALUES ($1, $2, 'signal')")
        .bind(case_id)
        .bind(envelope)
        .execute(&mut *tx)
        .await?;
    mark_taken(&mut *tx, notice, outcome, Some(case_id)).await?;
    tx.commit().await?;
    let taken = AlertOutcome {
        fingerprint: alert.fingerprint.clone(),
        outcome,
        reason: None,
        case_id: Some(case_id),
    };
    Ok((taken, next))
}

/// Marks the detector's anomaly row of `notice` (if any) taken.
async fn mark_taken<'e>(
    conn: impl sqlx::PgExecutor<'e>,
    notice: &Notice,
    outcome: Verdict,
    case_id: Option<Uuid>,
) -> Result<(), sqlx::Error> {
    let Some(anomaly) = notice.anomaly else {
        return Ok(());
    };
    sqlx::query("UPDATE anomaly SET taken_at = now(), outcome = $2, case_id = $3 WHERE id = $1")
        .bind(anomaly)
        .bind(outcome.as_str())
        .bind(case_id)
        .execute(conn)
        .await?;
    Ok(())
}

/// Starts or dismisses a case as the analyst, after the alert committed.
/// The request is idempotent per case and purpose (a second resolution
/// replays the first dismissal instead of trying again).
async fn follow_up(
    orchestrator: &Orchestrator,
    settings: &IntakeSettings,
    tenant: &Tenant,
    next: Next,
) -> Result<(), TransitionError> {
    let (case_id, event, reason) = match next {
        Next::Start(id) => (id, EventKind::StartAnalysis, None),
        Next::Dismiss(id) => (
            id,
            EventKind::Dismiss,
            Some(settings.resolved_reason.clone()),
        ),
    };
    let key = format!("signal-{}-{case_id}", event.as_str());
    let request_hash = hex::encode(Sha256::digest(key.as_bytes()));
    let outcome = orchestrator
        .transition(TransitionRequest {
            case_id,
            tenants: TenantScope::one(tenant),
            event,
            actor: Actor {
                id: <&str>::from(Role::Analyst).to_string(),
                human: false,
            },
            reason,
            plan_hash: None,
            dryrun_digest: None,
            meta: json!({"source": "signal intake"}),
            expected_version: None,
            origin: Origin::Http {
                idempotency_key: key.parse().map_err(|_| {
                    TransitionError::Database(sqlx::Error::Protocol(format!("bad key {key}")))
                })?,
                request_hash,
            },
            trace_id: Uuid::new_v4().simple().to_string(),
        })
        .await?;
    if let Outcome::Answered(Answer::Rejected { rejection, .. }) = outcome {
        // A person moved the case first: theirs stands, the timeline has both.
        tracing::info!(case.id = %case_id, event = event.as_str(), %rejection, "Signal follow-up refused.");
    }
    Ok(())
}

/// The case an alert opens, and what of its labels did not fit.
fn case_of(tenant: &Tenant, alert: &Alert) -> (NewCase, Vec<String>) {
    let alertname = alert.labels.alertname.as_ref();
    let raw_severity = alert.labels.severity.as_deref();
    let severity = match raw_severity.map(str::to_ascii_lowercase).as_deref() {
        Some("critical") => "critical",
        Some("error" | "high") => "high",
        Some("warning") => "medium",
        Some("info" | "none") => "info",
        _ => "medium",
    };
    let mut cut = Vec::new();
    let mut labels = serde_json::Map::new();
    for (i, (k, v)) in alert.labels.all().into_iter().enumerate() {
        if i >= MAX_LABELS {
            cut.push(format!("label {k} (more than {MAX_LABELS})"));
            continue;
        }
        let value: String = v.chars().take(MAX_LABEL_VALUE).collect();
        if value.len() < v.len() {
            cut.push(format!("label {k} cut to {MAX_LABEL_VALUE} characters"));
        }
        labels.insert(k.to_string(), Value::String(value));
    }
    if !cut.is_empty() {
        labels.insert("opsloop_cut".into(), json!(cut.len()));
    }
    let title_source = alert
        .annotations
        .summary
        .as_ref()
        .or(alertname)
        .cloned()
        .unwrap_or_else(|| format!("alert {}", alert.fingerprint));
    let mut title: String = title_source
        .chars()
        .filter(|c| !c.is_control())
        .take(200)
        .collect();
    if title.trim().is_empty() {
        title = format!("alert {}", alert.fingerprint);
    }
    (
        NewCase {
            tenant: tenant.clone(),
            title,
            severity: severity.to_string(),
            kind: alertname.and_then(|n| kind_of(n)),
            labels: Value::Object(labels),
        },
        cut,
    )
}

/// An alert name in the case's kind format (`^[a-z0-9][a-z0-9_.-]{0,63}$`):
/// `HighErrorRate` → `higherrorrate`, `disk full!` → `disk-full-`.
fn kind_of(alertname: &str) -> Option<String> {
    let kind: String = alertname
        .to_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '-'
            }
        })
        .skip_while(|c| !c.is_ascii_alphanumeric())
        .take(64)
        .collect();
    (!kind.is_empty()).then_some(kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alert_names_become_kinds() {
        assert_eq!(kind_of("HighErrorRate").as_deref(), Some("higherrorrate"));
        assert_eq!(kind_of("disk full!").as_deref(), Some("disk-full-"));
        assert_eq!(kind_of("__x").as_deref(), Some("x"));
        assert_eq!(kind_of("!!!"), None);
        assert_eq!(kind_of(&"a".repeat(100)).map(|k| k.len()), Some(64));
    }
}
