//! What a chat user asks, typed: the `/opsloop` slash command's text and a
//! message button's value, parsed once. Pure.

use uuid::Uuid;

/// A plan named by at least this many hex digits of its hash: short enough
/// to type, long enough not to be guessed by accident.
pub const MIN_HASH_PREFIX: usize = 12;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChatCommand {
    /// `case <id>`: status, plan, dry run.
    Show { case: Uuid },
    /// `approve <id> <hash-prefix> [<dry-run-digest-prefix>]` (the dry run
    /// is required once the plan has one), or the Approve button (full
    /// hash and digest, `-` for none).
    Approve {
        case: Uuid,
        plan: String,
        dryrun: Option<String>,
    },
    /// `reject <id> <hash-prefix> [reason…]`, or the Reject button.
    Reject {
        case: Uuid,
        plan: String,
        reason: Option<String>,
    },
    /// `dismiss <id> <reason…>` (a reason is required).
    Dismiss { case: Uuid, reason: String },
    /// `help`, or nothing.
    Help,
}

pub const USAGE: &str = "usage: /opsloop case <id> | approve <id> <plan-hash-prefix> <dry-run-digest-prefix> (the dry run once the plan has one; `case <id>` shows both) | reject <id> <plan-hash-prefix> [reason] | dismiss <id> <reason>";

fn hex_prefix(what: &str, text: &str) -> Result<String, String> {
    let ok = (MIN_HASH_PREFIX..=64).contains(&text.len())
        && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if ok {
        Ok(text.to_string())
    } else {
        Err(format!(
            "{what} must be {MIN_HASH_PREFIX} to 64 lowercase hex digits, got {text:?}"
        ))
    }
}

fn case_id(text: Option<&str>) -> Result<Uuid, String> {
    let text = text.ok_or("a case id is missing")?;
    Uuid::parse_str(text).map_err(|_| format!("{text:?} is not a case id"))
}

/// The free text after a command's arguments: a reason, at most 2,000
/// characters, without control characters (as the API takes one).
fn rest(words: &[&str]) -> Result<Option<String>, String> {
    reason(&words.join(" "))
}

/// A reason a person typed (chat, the console): trimmed, at most 2,000
/// characters, without control characters, as the API takes one; empty is
/// none.
pub fn reason(text: &str) -> Result<Option<String>, String> {
    let trimmed = text.trim();
    if trimmed.chars().any(char::is_control) {
        return Err("a reason may not hold control characters".into());
    }
    if trimmed.chars().count() > 2000 {
        return Err("a reason is at most 2000 characters".into());
    }
    Ok((!trimmed.is_empty()).then(|| trimmed.to_string()))
}

/// The slash command's text.
pub fn parse(text: &str) -> Result<ChatCommand, String> {
    let words: Vec<&str> = text.split_whitespace().collect();
    match words.as_slice() {
        [] | ["help"] => Ok(ChatCommand::Help),
        ["case", id] => Ok(ChatCommand::Show {
            case: case_id(Some(id))?,
        }),
        ["approve", id, plan] => Ok(ChatCommand::Approve {
            case: case_id(Some(id))?,
            plan: hex_prefix("the plan hash prefix", plan)?,
            dryrun: None,
        }),
        ["approve", id, plan, dryrun] => Ok(ChatCommand::Approve {
            case: case_id(Some(id))?,
            plan: hex_prefix("the plan hash prefix", plan)?,
            dryrun: Some(hex_prefix("the dry-run digest prefix", dryrun)?),
        }),
        ["reject", id, plan, reason @ ..] => Ok(ChatCommand::Reject {
            case: case_id(Some(id))?,
            plan: hex_prefix("the plan hash prefix", plan)?,
            reason: rest(reason)?,
        }),
        ["dismiss", id, reason @ ..] => Ok(ChatCommand::Dismiss {
            case: case_id(Some(id))?,
            reason: rest(reason)?.ok_or("dismiss needs a reason")?,
        }),
        [verb, ..] => Err(format!("unknown or incomplete command {verb:?}; {USAGE}")),
    }
}

/// A button's `action_id` and `value` (`<case>:<plan hash>:<digest or ->`,
/// as the notifier writes them).
pub fn parse_button(action: &str, value: &str) -> Result<ChatCommand, String> {
    let parts: Vec<&str> = value.split(':').collect();
    let [case, plan, dryrun] = parts.as_slice() else {
        return Err("the button's value is not <case>:<plan>:<dry run>".into());
    };
    let case = case_id(Some(case))?;
    let plan = hex_prefix("the plan hash", plan)?;
    let dryrun = match *dryrun {
        "-" => None,
        d => Some(hex_prefix("the dry-run digest", d)?),
    };
    match action {
        "approve" => Ok(ChatCommand::Approve { case, plan, dryrun }),
        "reject" => Ok(ChatCommand::Reject {
            case,
            plan,
            reason: Some("rejected from chat".into()),
        }),
        other => Err(format!("unknown action {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CASE: &str = "0194f0c1-1111-7222-8333-944455566677";

    #[test]
    fn commands_parse_into_their_parts() {
        assert_eq!(parse("  "), Ok(ChatCommand::Help));
        assert_eq!(
            parse(&format!("case {CASE}")),
            Ok(ChatCommand::Show {
                case: CASE.parse().unwrap()
            })
        );
        assert_eq!(
            parse(&format!("approve {CASE} 3f1c2a9be0d4")),
            Ok(ChatCommand::Approve {
                case: CASE.parse().unwrap(),
                plan: "3f1c2a9be0d4".into(),
                dryrun: None
            })
        );
        assert_eq!(
            parse(&format!("dismiss {CASE} duplicate of  INC-7")),
            Ok(ChatCommand::Dismiss {
                case: CASE.parse().unwrap(),
                reason: "duplicate of INC-7".into()
            })
        );
    }

    #[test]
    fn short_prefixes_bad_ids_and_missing_reasons_are_refused_in_words() {
        for bad in [
            format!("approve {CASE} 3f1c2a9b"),
            format!("approve {CASE} 3F1C2A9BE0D4"),
            "approve not-a-case 3f1c2a9be0d4".into(),
            format!("dismiss {CASE}"),
            format!("dismiss {CASE} done\u{0}"),
            format!("deploy {CASE}"),
            format!("approve {CASE}"),
        ] {
            assert!(parse(&bad).is_err(), "{bad}");
        }
        assert!(parse_button("approve", &format!("{CASE}:{}:-", "a".repeat(64))).is_ok());
        assert!(parse_button("delete", &format!("{CASE}:{}:-", "a".repeat(64))).is_err());
        assert!(parse_button("approve", "x").is_err());
    }
}
