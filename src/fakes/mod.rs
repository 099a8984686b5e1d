//! Fakes of the outside parts that cannot run here (an OpenAI-compatible
//! LLM server, a Kubernetes API server, a gateway's admin API), as small
//! real HTTP servers on loopback speaking the real wire format: used by
//! the tests and by the scenario harness (`opsloop scenario run`). Never
//! part of a serving process.

pub mod gateway;
pub mod k8s;
pub mod llm;

/// A fake's HTTP server on a free loopback port, stopped when dropped.
pub struct Server {
    /// `http://127.0.0.1:<port>`
    pub url: String,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Serves `app` on a free loopback port.
    pub async fn start(app: axum::Router) -> Server {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a free loopback port");
        let url = format!(
            "http://{}",
            listener
                .local_addr()
                .expect("a bound listener has an address")
        );
        let task = tokio::spawn(crate::api::serve(
            listener,
            app,
            crate::api::ServeSettings::default(),
            std::future::pending(),
        ));
        Server { url, task }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}
