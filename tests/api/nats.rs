//! A private nats-server per test: JetStream state is global to a server, and
//! the outage test must stop and restart it. The binary is the one the test
//! command installed (`NATS_SERVER_BIN`, else `nats-server` on PATH).

use std::path::PathBuf;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::DeliverPolicy, consumer::pull::OrderedConfig};
use futures::StreamExt;
use opsloop::pubsub::Envelope;
use tokio::process::{Child, Command};

pub struct TestNats {
    child: Option<Child>,
    pub port: u16,
    pub url: String,
    dir: PathBuf,
}

fn binary() -> String {
    std::env::var("NATS_SERVER_BIN").ok().filter(|b| !b.is_empty()).unwrap_or_else(|| {
        let found = std::process::Command::new("sh")
            .args(["-c", "command -v nats-server"])
            .output()
            .expect("running sh");
        let path = String::from_utf8_lossy(&found.stdout).trim().to_string();
        assert!(
            !path.is_empty(),
            "nats-server not found: run the tests with scripts/test.sh, which installs it and sets NATS_SERVER_BIN"
        );
        path
    })
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl TestNats {
    pub async fn start() -> Self {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("opsloop-nats-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut nats = TestNats {
            child: None,
            port,
            url: format!("nats://127.0.0.1:{port}"),
            dir,
        };
        nats.launch().await;
        nats
    }

    async fn launch(&mut self) {
        let child = Command::new(binary())
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(&self.dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("starting nats-server");
        self.child = Some(child);
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("nats-server did not start on port {}", self.port);
    }

    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.unwrap();
        }
    }

    pub async fn restart(&mut self) {
        self.launch().await;
    }

    pub async fn client(&self) -> async_nats::Client {
        async_nats::connect(self.url.as_str()).await.unwrap()
    }
}

impl Drop for TestNats {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A test app with a private nats-server whose streams are set up.
pub async fn setup(pool: &sqlx::PgPool) -> (crate::helpers::TestApp, TestNats, jetstream::Context) {
    let app = crate::helpers::TestApp::new(pool.clone()).await;
    let nats = TestNats::start().await;
    let js = jetstream::new(nats.client().await);
    opsloop::pubsub::streams::ensure(&js, &opsloop::pubsub::streams::StreamSettings::default())
        .await
        .unwrap();
    (app, nats, js)
}

/// What the server says of `stream` now.
pub async fn stream_info(js: &jetstream::Context, stream: &str) -> jetstream::stream::Info {
    js.get_stream(stream)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .clone()
}

pub async fn stream_count(js: &jetstream::Context, stream: &str) -> u64 {
    stream_info(js, stream).await.state.messages
}

/// Every message of a stream, oldest first, as (subject, envelope).
pub async fn read_stream(js: &jetstream::Context, stream: &str) -> Vec<(String, Envelope)> {
    let expected = stream_count(js, stream).await as usize;
    let consumer = js
        .get_stream(stream)
        .await
        .unwrap()
        .create_consumer(OrderedConfig {
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let mut out = Vec::with_capacity(expected);
    while out.len() < expected {
        let msg = tokio::time::timeout(Duration::from_secs(5), messages.next())
            .await
            .expect("stream read timed out")
            .unwrap()
            .unwrap();
        out.push((
            msg.subject.to_string(),
            serde_json::from_slice(&msg.payload).unwrap(),
        ));
    }
    out
}

/// A private three-node nats-server cluster with JetStream and a user, as
/// `scripts/services.sh cluster up` runs one: nodes can be stopped and
/// started again on the same ports and stores.
pub struct TestCluster {
    nodes: Vec<Option<Child>>,
    pub client_ports: Vec<u16>,
    route_ports: Vec<u16>,
    dir: PathBuf,
}

pub const CLUSTER_USER: &str = "opsloop";
pub const CLUSTER_PASS: &str = "cluster-test-pass";

impl TestCluster {
    pub async fn start() -> Self {
        let dir = std::env::temp_dir().join(format!("opsloop-cluster-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut cluster = TestCluster {
            nodes: vec![None, None, None],
            client_ports: (0..3).map(|_| free_port()).collect(),
            route_ports: (0..3).map(|_| free_port()).collect(),
            dir,
        };
        for n in 0..3 {
            cluster.launch(n);
        }
        cluster.wait_for_jetstream().await;
        cluster
    }

    /// The nodes' URLs with the user, comma-separated: a `NATS_URL`.
    pub fn url(&self) -> String {
        self.client_ports
            .iter()
            .map(|p| format!("nats://{CLUSTER_USER}:{CLUSTER_PASS}@127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn launch(&mut self, n: usize) {
        let routes: Vec<String> = (0..3)
            .filter(|&o| o != n)
            .map(|o| format!("\"nats-route://127.0.0.1:{}\"", self.route_ports[o]))
            .collect();
        let conf = self.dir.join(format!("n{n}.conf"));
        std::fs::write(
            &conf,
            format!(
                "server_name: \"test-n{n}\"\nlisten: \"127.0.0.1:{}\"\n\
                 authorization {{ users = [ {{user: \"{CLUSTER_USER}\", password: \"{CLUSTER_PASS}\"}} ] }}\n\
                 jetstream {{ store_dir: \"{}\" }}\n\
                 cluster {{ name: \"test\", listen: \"127.0.0.1:{}\", routes: [{}] }}\n",
                self.client_ports[n],
                self.dir.join(format!("n{n}")).display(),
                self.route_ports[n],
                routes.join(", "),
            ),
        )
        .unwrap();
        let child = Command::new(binary())
            .arg("-c")
            .arg(&conf)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("starting nats-server");
        self.nodes[n] = Some(child);
    }

    /// Until a JetStream request succeeds through every running node (a
    /// cluster answers only once it has a meta leader).
    pub async fn wait_for_jetstream(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        for (n, port) in self.client_ports.iter().enumerate() {
            if self.nodes[n].is_none() {
                continue;
            }
            let url = format!("nats://{CLUSTER_USER}:{CLUSTER_PASS}@127.0.0.1:{port}");
            loop {
                let answer = match opsloop::pubsub::connect(&url).await {
                    // A listing answers only from a JetStream that has a
                    // meta leader. (Not `query_account`: async-nats 0.51
                    // cannot read nats-server 2.9's account answer.)
                    Ok(client) => jetstream::new(client)
                        .stream_names()
                        .next()
                        .await
                        .transpose()
                        .map(drop)
                        .map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                let Err(why) = answer else { break };
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "node {n} never served JetStream: {why}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    /// The node (0-2) leading `stream`'s replica group.
    pub async fn leader_of(&self, js: &jetstream::Context, stream: &str) -> usize {
        let info = js
            .get_stream(stream)
            .await
            .unwrap()
            .info()
            .await
            .unwrap()
            .clone();
        let leader = info
            .cluster
            .and_then(|c| c.leader)
            .expect("a replicated stream has a leader");
        leader
            .strip_prefix("test-n")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("unexpected server name {leader}"))
    }

    /// Kills node `n` (SIGKILL: no goodbye to its peers).
    pub async fn kill(&mut self, n: usize) {
        if let Some(mut child) = self.nodes[n].take() {
            child.kill().await.unwrap();
        }
    }

    pub async fn restart(&mut self, n: usize) {
        self.launch(n);
        self.wait_for_jetstream().await;
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for child in self.nodes.iter_mut().flatten() {
            let _ = child.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
