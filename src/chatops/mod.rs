//! ChatOps, Slack-compatible (DESIGN §13; Mattermost takes the same
//! webhooks): people steer cases from chat. Inbound, `POST
//! /chatops/slack/commands` (the `/opsloop` slash command) and `POST
//! /chatops/slack/interactions` (message buttons): every request is
//! verified with the Slack signing secret (`signature`), and the chat user
//! acts as the opsloop identity the operator mapped them to, whose roles,
//! tenants and the author/quorum rules apply unchanged (`src/api/chatops.rs`).
//!
//! Outbound, the notifier role (`notifier`) tells each tenant's channel
//! when a gate waits for people (with buttons) or a case parks, closes or
//! rolls back.
//!
//! Owns the chat vocabulary (`command`), the operator's file
//! (`config/chatops.example.toml`) and `chat_notification`. Decides nothing
//! about cases: every action is a transition through the orchestrator,
//! recorded with the real identity.

pub mod command;
pub mod notifier;
pub mod signature;

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

/// The operator's ChatOps file (`OPSLOOP_CHATOPS_FILE`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatOpsFile {
    /// Chat user id (Slack's `U…`) → the opsloop identity they act as (as
    /// named in the tokens file). A user not here may do nothing.
    #[serde(default)]
    pub users: BTreeMap<String, String>,
    /// Per tenant: where its notifications go.
    #[serde(default)]
    pub tenants: BTreeMap<String, TenantChannel>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantChannel {
    /// The channel's incoming-webhook URL.
    pub webhook_url: String,
}

/// ChatOps as a process runs it: the file and the signing secret.
#[derive(Debug, Clone)]
pub struct ChatOps {
    pub file: ChatOpsFile,
    /// The Slack app's signing secret (`OPSLOOP_SLACK_SIGNING_SECRET_FILE`).
    pub signing_secret: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum ChatOpsError {
    #[error("cannot read {0}: {1}")]
    Read(String, std::io::Error),
    #[error("{0} is not valid: {1}")]
    Parse(String, toml::de::Error),
    #[error("{0}")]
    Invalid(String),
}

fn read(p: &Path) -> Result<String, ChatOpsError> {
    std::fs::read_to_string(p).map_err(|e| ChatOpsError::Read(p.display().to_string(), e))
}

impl ChatOpsFile {
    /// Reads and checks the file (the notifier needs no signing secret).
    pub fn load(path: &Path) -> Result<ChatOpsFile, ChatOpsError> {
        let parsed: ChatOpsFile = toml::from_str(&read(path)?)
            .map_err(|e| ChatOpsError::Parse(path.display().to_string(), e))?;
        parsed.check()?;
        Ok(parsed)
    }

    pub fn check(&self) -> Result<(), ChatOpsError> {
        let file = self;
        for (user, identity) in &file.users {
            let plain = |s: &str| {
                (1..=64).contains(&s.len())
                    && s.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"_.@-".contains(&b))
            };
            if !plain(user) || !plain(identity) {
                return Err(ChatOpsError::Invalid(format!(
                    "users.{user:?} = {identity:?}: both must be 1-64 of [A-Za-z0-9_.@-]"
                )));
            }
        }
        for (tenant, channel) in &file.tenants {
            let ok = reqwest::Url::parse(&channel.webhook_url)
                .is_ok_and(|u| ["http", "https"].contains(&u.scheme()));
            if !ok {
                return Err(ChatOpsError::Invalid(format!(
                    "tenants.{tenant:?}.webhook_url must be an http(s) URL"
                )));
            }
        }
        Ok(())
    }
}

impl ChatOps {
    pub fn load(file: &Path, secret_file: &Path) -> Result<ChatOps, ChatOpsError> {
        let secret = read(secret_file)?.trim().as_bytes().to_vec();
        ChatOps::new(ChatOpsFile::load(file)?, secret)
    }

    pub fn new(file: ChatOpsFile, signing_secret: Vec<u8>) -> Result<ChatOps, ChatOpsError> {
        if signing_secret.len() < 16 {
            return Err(ChatOpsError::Invalid(
                "the Slack signing secret is missing or shorter than 16 bytes".into(),
            ));
        }
        file.check()?;
        Ok(ChatOps {
            file,
            signing_secret,
        })
    }

    /// The opsloop identity a chat user acts as.
    pub fn identity_of(&self, chat_user: &str) -> Option<&str> {
        self.file.users.get(chat_user).map(String::as_str)
    }
}
