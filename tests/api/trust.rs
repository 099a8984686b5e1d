//! The embedded services' own trust boundary (issue #13): PostgreSQL asks
//! for the password, NATS for a user, and only opsloop's user may publish
//! commands and facts. These talk to the shared services `scripts/test.sh`
//! started; against an external `DATABASE_URL`/`NATS_URL` they cannot know
//! the setup and say so instead.

use std::time::Duration;

use async_nats::jetstream;
use opsloop::pubsub::streams::{self, CMD_STREAM, EVT_STREAM};
use sqlx::ConnectOptions;
use sqlx::postgres::PgConnectOptions;

fn without_userinfo(url: &str) -> String {
    match url.split_once("://").and_then(|(scheme, rest)| {
        rest.split_once('@')
            .map(|(_, host)| format!("{scheme}://{host}"))
    }) {
        Some(bare) => bare,
        None => url.to_string(),
    }
}

/// Messages held by the command and fact streams.
async fn stored(js: &jetstream::Context) -> u64 {
    let mut total = 0;
    for name in [CMD_STREAM, EVT_STREAM] {
        let mut stream = js.get_stream(name).await.unwrap();
        total += stream.info().await.unwrap().state.messages;
    }
    total
}

#[tokio::test]
async fn postgres_refuses_a_connection_without_the_password() {
    let url = std::env::var("DATABASE_URL").expect("DATABASE_URL");
    let options: PgConnectOptions = url.parse().unwrap();
    let has_password = url
        .split_once("://")
        .and_then(|(_, rest)| rest.split_once('@'))
        .is_some_and(|(userinfo, _)| userinfo.contains(':'));
    if !has_password {
        eprintln!("skipped: DATABASE_URL carries no password (an external server?)");
        return;
    }
    // The right password connects; none, or a wrong one, does not.
    options.connect().await.expect("with the password");
    for password in ["", "not-the-password"] {
        let refused = options.clone().password(password).connect().await;
        let err = refused.expect_err("PostgreSQL let a connection in without its password");
        assert!(
            err.to_string().contains("password"),
            "refused, and for the password: {err}"
        );
    }
}

#[tokio::test]
async fn only_opsloops_nats_user_publishes_commands_and_facts() {
    let Ok(reader_url) = std::env::var("OPSLOOP_NATS_SUBSCRIBER_URL") else {
        eprintln!(
            "skipped: OPSLOOP_NATS_SUBSCRIBER_URL is not set (NATS is not scripts/services.sh's)"
        );
        return;
    };
    let url = crate::helpers::nats_url();
    // No user: no connection at all.
    let anonymous = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(2))
        .connect(without_userinfo(&url))
        .await;
    assert!(anonymous.is_err(), "NATS accepted a client without a user");

    let opsloop = opsloop::pubsub::connect(&url).await.unwrap();
    let js = jetstream::new(opsloop);
    streams::ensure(&js, &Default::default()).await.unwrap();
    let before = stored(&js).await;

    // A subscriber reads, but its commands and facts never reach a stream.
    let reader = opsloop::pubsub::connect(&reader_url).await.unwrap();
    let reader_js = jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(2))
        .build(reader);
    reader_js
        .get_stream(CMD_STREAM)
        .await
        .expect("a subscriber may read stream information");
    for subject in ["cmd.exec.run", "evt.exec.done.v1"] {
        let published = match reader_js.publish(subject, "forged".into()).await {
            Ok(ack) => ack.await.is_ok(),
            Err(_) => false,
        };
        assert!(!published, "the subscriber user published to {subject}");
    }
    let after = stored(&js).await;
    assert_eq!(before, after, "nothing was stored");
}
