//! A real Alertmanager (Debian's `prometheus-alertmanager`; scripts/test.sh
//! installs it before the cargo tests) notifying opsloop through its
//! webhook (#16). It takes about 5 s, so it runs with the other tests.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use crate::helpers::*;

/// Alertmanager on loopback, no cluster, timers of about a second.
struct Alertmanager {
    child: std::process::Child,
    url: String,
    dir: std::path::PathBuf,
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn alertmanager(bin: &str, webhook: &str, token: &str) -> Alertmanager {
    let dir = std::env::temp_dir().join(format!("opsloop-alertmanager-{}", Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = format!(
        "route:\n  receiver: opsloop\n  group_by: ['alertname', 'instance']\n  group_wait: 1s\n  \
         group_interval: 1s\n  repeat_interval: 2s\nreceivers:\n  - name: opsloop\n    webhook_configs:\n      \
         - url: {webhook}\n        send_resolved: true\n        http_config:\n          authorization:\n            \
         type: Bearer\n            credentials: {token}\n"
    );
    std::fs::write(dir.join("alertmanager.yml"), config).unwrap();
    let port = free_port();
    let child = std::process::Command::new(bin)
        .arg(format!(
            "--config.file={}",
            dir.join("alertmanager.yml").display()
        ))
        .arg(format!("--storage.path={}", dir.join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--cluster.listen-address=")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("alertmanager starts");
    let url = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(r) = http.get(format!("{url}/-/ready")).send().await
            && r.status().is_success()
        {
            break;
        }
        assert!(Instant::now() < deadline, "alertmanager did not get ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Alertmanager { child, url, dir }
}

/// What Prometheus would post: the alert, firing until `ends_in` from now.
async fn fire(am: &Alertmanager, labels: Value, ends_in: chrono::Duration) {
    let now = chrono::Utc::now();
    let r = reqwest::Client::new()
        .post(format!("{}/api/v2/alerts", am.url))
        .json(&json!([{
            "labels": labels,
            "annotations": {"summary": "checkout errors above 5 %"},
            "startsAt": (now - chrono::Duration::minutes(1)).to_rfc3339(),
            "endsAt": (now + ends_in).to_rfc3339(),
            "generatorURL": "http://prometheus:9090/graph",
        }]))
        .send()
        .await
        .unwrap();
    assert!(
        r.status().is_success(),
        "alertmanager took the alert: {}",
        r.status()
    );
}

/// (case, notifications, status) of each signal row of `alertname`.
async fn signals(pool: &PgPool, alertname: &str) -> Vec<(Uuid, i32, String)> {
    sqlx::query_as(
        "SELECT s.case_id, s.notifications, s.status FROM signal s JOIN ops_case c ON c.id = s.case_id \
         WHERE c.labels->>'alertname' = $1 ORDER BY s.first_at",
    )
    .bind(alertname)
    .fetch_all(pool)
    .await
    .unwrap()
}

async fn wait_for<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Alertmanager's binary: `OPSLOOP_ALERTMANAGER_BIN` (scripts/test.sh
/// sets it after scripts/debian-package.sh installed the package), else
/// Debian's path.
fn alertmanager_bin() -> Option<String> {
    std::env::var("OPSLOOP_ALERTMANAGER_BIN").ok().or_else(|| {
        let debian = "/usr/bin/prometheus-alertmanager";
        std::path::Path::new(debian)
            .exists()
            .then(|| debian.to_string())
    })
}

#[sqlx::test]
async fn alertmanager_notifications_open_one_case_per_alert(pool: PgPool) {
    let Some(bin) = alertmanager_bin() else {
        eprintln!(
            "SKIPPED: no Alertmanager here (scripts/debian-package.sh installs Debian's prometheus-alertmanager; scripts/test.sh runs it first)"
        );
        return;
    };
    let app = TestApp::new(pool).await;
    let am = alertmanager(&bin, &format!("{}/signals/alertmanager", app.base), SERVICE).await;
    let labels = |instance: &str| {
        json!({"alertname": "CheckoutErrors", "severity": "critical", "tenant": "acme",
               "service": "checkout", "instance": instance})
    };

    // A firing alert reaches opsloop and opens a case.
    fire(&am, labels("i-1"), chrono::Duration::minutes(10)).await;
    wait_for("a case for the alert", || async {
        signals(&app.pool, "CheckoutErrors").await.len() == 1
    })
    .await;
    let case = signals(&app.pool, "CheckoutErrors").await[0].0;
    let severity: String = sqlx::query_scalar("SELECT severity FROM ops_case WHERE id = $1")
        .bind(case)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(severity, "critical");

    // Prometheus re-posts it and Alertmanager re-notifies (repeat_interval):
    // more evidence on the same case, never a second one.
    fire(&am, labels("i-1"), chrono::Duration::minutes(10)).await;
    wait_for("a re-notification", || async {
        signals(&app.pool, "CheckoutErrors").await[0].1 >= 2
    })
    .await;
    let rows = signals(&app.pool, "CheckoutErrors").await;
    assert_eq!(rows.len(), 1, "one case per fingerprint: {rows:?}");
    assert_eq!(rows[0].0, case);

    // Another instance is another fingerprint: its own case.
    fire(&am, labels("i-2"), chrono::Duration::minutes(10)).await;
    wait_for("a second case", || async {
        signals(&app.pool, "CheckoutErrors").await.len() == 2
    })
    .await;

    // The first resolves: Alertmanager says so (send_resolved); the
    // resolution is kept with the case, which had not reached the gate and
    // is dismissed.
    fire(&am, labels("i-1"), chrono::Duration::seconds(-1)).await;
    wait_for("the resolution", || async {
        signals(&app.pool, "CheckoutErrors").await[0].2 == "resolved"
    })
    .await;
    let resolved_evidence: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM evidence_link l JOIN event_envelope e ON e.id = l.envelope_id \
         WHERE l.case_id = $1 AND e.data #>> '{alert,status}' = 'resolved'",
    )
    .bind(case)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert!(resolved_evidence >= 1);
    assert_eq!(app.status(case).await, "CLOSED");
    let second = signals(&app.pool, "CheckoutErrors").await[1].0;
    assert_eq!(
        app.status(second).await,
        "ANALYZING",
        "the other alert still fires"
    );
}
