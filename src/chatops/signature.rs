//! Slack's request signing: `X-Slack-Signature: v0=<hex HMAC-SHA256 of
//! "v0:<X-Slack-Request-Timestamp>:<body>" keyed with the signing secret>`.
//! A request older (or newer) than five minutes is refused as a replay; the
//! comparison is constant-time.

use hmac::{KeyInit, Mac};

type HmacSha256 = hmac::Hmac<sha2_hmac::Sha256>;

/// How far a request's timestamp may be from now, either way.
pub const MAX_SKEW_S: i64 = 300;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("X-Slack-Request-Timestamp or X-Slack-Signature is missing or malformed")]
    Malformed,
    #[error("the request timestamp is more than five minutes from now")]
    Stale,
    #[error("the signature does not match")]
    Mismatch,
}

fn mac(secret: &[u8], timestamp: &str, body: &[u8]) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(b"v0:");
    mac.update(timestamp.as_bytes());
    mac.update(b":");
    mac.update(body);
    mac
}

/// The `X-Slack-Signature` value for a request (what Slack sends).
pub fn sign(secret: &[u8], timestamp: &str, body: &[u8]) -> String {
    format!(
        "v0={}",
        hex::encode(mac(secret, timestamp, body).finalize().into_bytes())
    )
}

/// Checks a request's headers against its raw body at `now` (Unix seconds).
pub fn verify(
    secret: &[u8],
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    now: i64,
) -> Result<(), Refusal> {
    let (Some(timestamp), Some(signature)) = (timestamp, signature) else {
        return Err(Refusal::Malformed);
    };
    let at: i64 = timestamp.parse().map_err(|_| Refusal::Malformed)?;
    if now.abs_diff(at) > MAX_SKEW_S.unsigned_abs() {
        return Err(Refusal::Stale);
    }
    let given = signature
        .strip_prefix("v0=")
        .and_then(|h| hex::decode(h).ok())
        .ok_or(Refusal::Malformed)?;
    mac(secret, timestamp, body)
        .verify_slice(&given)
        .map_err(|_| Refusal::Mismatch)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"8f742231b10e8888abcd99yyyzzz85a5";

    /// Slack's own documented example request.
    #[test]
    fn slacks_documented_example_verifies() {
        let body = b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
        let signature = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503";
        assert_eq!(sign(SECRET, "1531420618", body), signature);
        assert_eq!(
            verify(
                SECRET,
                Some("1531420618"),
                Some(signature),
                body,
                1531420618 + 10
            ),
            Ok(())
        );
    }

    #[test]
    fn a_changed_body_an_old_request_or_a_missing_header_is_refused() {
        let body = b"text=approve";
        let ts = "1700000000";
        let good = sign(SECRET, ts, body);
        let now = 1700000000;
        assert_eq!(
            verify(SECRET, Some(ts), Some(&good), b"text=reject", now),
            Err(Refusal::Mismatch)
        );
        assert_eq!(
            verify(b"another-secret-1234", Some(ts), Some(&good), body, now),
            Err(Refusal::Mismatch)
        );
        assert_eq!(
            verify(SECRET, Some(ts), Some(&good), body, now + MAX_SKEW_S + 1),
            Err(Refusal::Stale)
        );
        assert_eq!(
            verify(SECRET, Some(ts), Some(&good), body, now - MAX_SKEW_S - 1),
            Err(Refusal::Stale)
        );
        assert_eq!(
            verify(SECRET, None, Some(&good), body, now),
            Err(Refusal::Malformed)
        );
        // No overflow at the edges of the timestamp's range.
        for edge in [i64::MIN, i64::MAX] {
            let ts = edge.to_string();
            assert_eq!(
                verify(SECRET, Some(&ts), Some(&sign(SECRET, &ts, body)), body, now),
                Err(Refusal::Stale)
            );
        }
        assert_eq!(
            verify(SECRET, Some(ts), Some("v1=00"), body, now),
            Err(Refusal::Malformed)
        );
        assert_eq!(verify(SECRET, Some(ts), Some(&good), body, now), Ok(()));
    }
}
