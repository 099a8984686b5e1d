//! The plumbing of DESIGN §5: the envelope (wire form), the JetStream
//! streams, the outbox relay and durable consumers.
//!
//! Owns how messages move. Knows envelopes and bytes only: what a message
//! means is `crate::contract`'s, and nothing here decides anything about
//! cases; producers put envelopes in the outbox inside their own
//! transaction.

pub mod consumer;
pub mod envelope;
pub mod feed;
pub mod inbox;
pub mod outbox;
pub mod relay;
pub mod streams;

pub use envelope::Envelope;

/// Where to connect and how: the servers of a `NATS_URL` and the options
/// with the user and password the URLs carry.
pub struct NatsTarget {
    pub servers: Vec<async_nats::ServerAddr>,
    pub options: async_nats::ConnectOptions,
}

/// Reads a `NATS_URL`: one server or several separated by commas (a
/// cluster's seed list; the client learns the rest from the servers).
/// async-nats reads a URL's credentials only when handed them, and parses
/// a plain string as one address, so both are done here. Every URL that
/// names a user must name the same one.
pub fn target(urls: &str) -> std::io::Result<NatsTarget> {
    let invalid = |why: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, why);
    let mut servers = Vec::new();
    let mut user: Option<(String, String)> = None;
    for url in urls.split(',').map(str::trim) {
        if url.is_empty() {
            return Err(invalid(format!(
                "NATS_URL {:?} has an empty entry",
                mask(urls)
            )));
        }
        let addr: async_nats::ServerAddr = url.parse()?;
        if let (Some(name), Some(pass)) = (addr.username(), addr.password()) {
            let this = (name.to_string(), pass.to_string());
            match &user {
                Some(first) if *first != this => {
                    return Err(invalid(format!(
                        "the servers in NATS_URL {:?} name different users or passwords",
                        mask(urls)
                    )));
                }
                _ => user = Some(this),
            }
        }
        servers.push(addr);
    }
    let options = async_nats::ConnectOptions::new();
    Ok(NatsTarget {
        servers,
        options: match user {
            Some((name, pass)) => options.user_and_password(name, pass),
            None => options,
        },
    })
}

/// `urls` without its passwords, for messages.
fn mask(urls: &str) -> String {
    urls.split(',')
        .map(|u| {
            // With or without a scheme: async-nats takes `user:pass@host` too.
            let start = u.find("://").map_or(0, |i| i + 3);
            match u.rfind('@') {
                Some(at) if at >= start => format!("{}***{}", &u[..start], &u[at..]),
                _ => u.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Connects to the servers of `urls` with their credentials.
pub async fn connect(urls: &str) -> Result<async_nats::Client, async_nats::Error> {
    let target = target(urls)?;
    Ok(target.options.connect(target.servers).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nats_url_may_list_several_servers_with_one_user() {
        let t =
            target("nats://u:p@127.0.0.1:4222, nats://u:p@127.0.0.1:4223,nats://127.0.0.1:4224")
                .unwrap();
        let ports: Vec<u16> = t.servers.iter().map(|s| s.port()).collect();
        assert_eq!(ports, [4222, 4223, 4224]);
        assert_eq!(target("nats://127.0.0.1:4222").unwrap().servers.len(), 1);
        let two_users = target("nats://u:p@a:1,nats://v:p@b:2")
            .err()
            .unwrap()
            .to_string();
        assert!(two_users.contains("different users"), "{two_users}");
        assert!(
            !two_users.contains(":p@"),
            "passwords are masked: {two_users}"
        );
        let bare = target("u:secret@a:1,v:secret@b:2")
            .err()
            .unwrap()
            .to_string();
        assert!(!bare.contains("secret"), "without a scheme too: {bare}");
        assert!(target("nats://a:1,,nats://b:2").is_err());
        assert!(target("").is_err());
    }
}
