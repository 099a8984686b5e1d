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

/// Connect options for a NATS URL, with the user and password the URL
/// carries (`nats://user:pass@host:port`, as `scripts/services.sh` writes
/// it): async-nats reads a URL's credentials only when handed them.
pub fn connect_options(url: &str) -> std::io::Result<async_nats::ConnectOptions> {
    let addr: async_nats::ServerAddr = url.parse()?;
    let options = async_nats::ConnectOptions::new();
    Ok(match (addr.username(), addr.password()) {
        (Some(user), Some(pass)) => options.user_and_password(user.to_string(), pass.to_string()),
        _ => options,
    })
}

/// Connects to `url` with its credentials.
pub async fn connect(url: &str) -> Result<async_nats::Client, async_nats::Error> {
    Ok(connect_options(url)?.connect(url).await?)
}
