use reqwest::Method;
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::helpers::*;

async fn assert_healthy(app: &TestApp) {
    let r = app.send(Method::GET, "/healthz", None, &[], None).await;
    assert_eq!(r.status, 200);
}

#[sqlx::test]
async fn bad_transition_bodies_get_4xx_problems_and_change_nothing(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let case = app.create_case().await;
    let path = format!("/case/{case}/transition");
    let deep = format!("{}1{}", "[".repeat(5000), "]".repeat(5000));
    let cases: Vec<(String, u16, &str)> = vec![
        ("{\"event\": ".into(), 400, "malformed_request"),
        ("not json at all".into(), 400, "malformed_request"),
        (json!({"event": 42}).to_string(), 400, "malformed_request"),
        (
            json!({"event": "start_analysis", "reason": ["a"]}).to_string(),
            400,
            "malformed_request",
        ),
        (
            json!({"event": "reboot_everything"}).to_string(),
            400,
            "unknown_event",
        ),
        (json!({}).to_string(), 400, "malformed_request"),
        (json!([1, 2]).to_string(), 400, "malformed_request"),
        (
            format!("{{\"event\": \"dismiss\", \"meta\": {{\"x\": {deep}}}}}"),
            400,
            "malformed_request",
        ),
        (
            json!({"event": "dismiss", "reason": "bad\u{0007}bell"}).to_string(),
            400,
            "invalid_field",
        ),
        (
            json!({"event": "dismiss", "reason": "ok", "meta": {"note": "a\u{0000}b"}}).to_string(),
            400,
            "invalid_field",
        ),
        (
            json!({"event": "dismiss", "reason": "ok", "meta": "string"}).to_string(),
            400,
            "invalid_field",
        ),
        (
            json!({"event": "dismiss", "reason": "x", "plan_hash": "not-hex"}).to_string(),
            400,
            "invalid_field",
        ),
        (
            format!(
                "{{\"event\": \"dismiss\", \"reason\": \"{}\"}}",
                "x".repeat(70_000)
            ),
            413,
            "payload_too_large",
        ),
    ];
    for (i, (body, status, code)) in cases.iter().enumerate() {
        let key = format!("bad-{i}");
        let r = app
            .send(
                Method::PATCH,
                &path,
                Some(OPERATOR),
                &[("idempotency-key", key.as_str())],
                Some(body.clone()),
            )
            .await;
        assert_eq!(
            (r.status, r.code()),
            (*status, *code),
            "case {i}: {:?}",
            r.body
        );
        assert_eq!(
            r.header("content-type"),
            Some("application/problem+json"),
            "case {i}"
        );
    }
    // Without a JSON content type.
    let r = app
        .http
        .patch(format!("{}{path}", app.base))
        .bearer_auth(OPERATOR)
        .header("idempotency-key", "ct")
        .body(json!({"event": "start_analysis"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 415);
    assert_eq!(app.status(case).await, "NEW");
    assert_eq!(app.timeline(case).await.len(), 1);
    assert_healthy(&app).await;
}

#[sqlx::test]
async fn bad_case_bodies_are_rejected_field_by_field(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let bodies = [
        (json!({"title": "", "tenant": "t-001"}), "title"),
        (json!({"title": "a\u{0000}b", "tenant": "t-001"}), "title"),
        (
            json!({"title": "x".repeat(201), "tenant": "t-001"}),
            "title",
        ),
        (json!({"title": "ok", "tenant": "Bad Tenant"}), "tenant"),
        (
            json!({"title": "ok", "tenant": "t", "severity": "apocalyptic"}),
            "severity",
        ),
        (
            json!({"title": "ok", "tenant": "t", "kind": "../etc"}),
            "kind",
        ),
        (
            json!({"title": "ok", "tenant": "t", "labels": {"k": "v\u{001b}[31m"}}),
            "labels",
        ),
    ];
    for (body, field) in bodies {
        let r = app
            .send(
                Method::POST,
                "/case",
                Some(OPERATOR),
                &[],
                Some(body.to_string()),
            )
            .await;
        assert_eq!((r.status, r.code()), (400, "invalid_field"), "{body}");
        assert_eq!(r.body["field"], field);
    }
    let r = app
        .send(
            Method::POST,
            "/case",
            Some(OPERATOR),
            &[],
            Some(json!({"title": 1, "tenant": "t"}).to_string()),
        )
        .await;
    assert_eq!(r.status, 400);
    let r = app
        .send(
            Method::POST,
            "/case",
            Some(OPERATOR),
            &[],
            Some(json!({"title": "x", "tenant": "t", "extra": true}).to_string()),
        )
        .await;
    assert_eq!(
        (r.status, r.code()),
        (400, "malformed_request"),
        "unknown fields are refused"
    );
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM ops_case")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(n, 0);
    assert_healthy(&app).await;
}

#[sqlx::test]
async fn bad_ids_routes_and_headers(pool: PgPool) {
    let app = TestApp::new(pool).await;
    for path in [
        "/case/not-a-uuid",
        "/case/1234/timeline",
        "/case/%00/timeline",
    ] {
        let r = app.send(Method::GET, path, Some(VIEWER), &[], None).await;
        assert_eq!(r.status, 400, "{path}: {:?}", r.body);
    }
    let r = app
        .send(
            Method::PATCH,
            "/case/zzz/transition",
            Some(OPERATOR),
            &[("idempotency-key", "k")],
            Some(json!({"event": "dismiss"}).to_string()),
        )
        .await;
    assert_eq!((r.status, r.code()), (400, "invalid_field"));
    let r = app
        .send(Method::GET, "/nope", Some(VIEWER), &[], None)
        .await;
    assert_eq!((r.status, r.code()), (404, "not_found"));
    let r = app
        .send(Method::DELETE, "/cases", Some(VIEWER), &[], None)
        .await;
    assert_eq!((r.status, r.code()), (405, "method_not_allowed"));
    let case = app.create_case().await;
    let long_key = "k".repeat(201);
    let r = app
        .send(
            Method::PATCH,
            &format!("/case/{case}/transition"),
            Some(OPERATOR),
            &[("idempotency-key", long_key.as_str())],
            Some(json!({"event": "start_analysis"}).to_string()),
        )
        .await;
    assert_eq!(r.status, 400);

    // A huge header is refused by the server before any handler runs.
    let huge = "x".repeat(512 * 1024);
    let resp = app
        .http
        .get(format!("{}/case/{case}", app.base))
        .bearer_auth(VIEWER)
        .header("x-huge", huge)
        .send()
        .await;
    let status = resp
        .expect("the server answers, it does not drop the connection")
        .status();
    assert_eq!(status.as_u16(), 431, "Request Header Fields Too Large");
    assert_healthy(&app).await;
    assert_eq!(app.status(case).await, "NEW");
}

/// Writes `head` on a raw connection (a request no HTTP client would send)
/// and answers the first bytes back, which must come within `within` s.
async fn first_answer(addr: &str, head: &str, within: u64, expect: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(head.as_bytes()).await.unwrap();
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(
        std::time::Duration::from_secs(within),
        conn.read(&mut answer),
    )
    .await
    .expect(expect)
    .unwrap();
    String::from_utf8_lossy(&answer[..n]).into_owned()
}

/// A `Content-Length` above the body limit is refused from the headers,
/// before any of the body is read or waited for.
#[sqlx::test]
async fn an_oversize_content_length_is_refused_up_front(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let addr = app.base.trim_start_matches("http://").to_string();
    let head = format!(
        "POST /case HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {OPERATOR}\r\n\
         Content-Type: application/json\r\nContent-Length: 10000000\r\n\r\n"
    );
    let text = first_answer(&addr, &head, 3, "answered without waiting for the body").await;
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(text.contains("application/problem+json"), "{text}");
    assert_healthy(&app).await;
}

/// `If-Match` names a version: one the case is not at is 412, whatever the
/// number (0 included), like any other mismatch.
#[sqlx::test]
async fn if_match_zero_is_a_version_mismatch(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let case = app.create_case().await;
    let r = app
        .send(
            Method::PATCH,
            &format!("/case/{case}/transition"),
            Some(OPERATOR),
            &[("idempotency-key", "m-0"), ("if-match", "\"0\"")],
            Some(json!({"event": "start_analysis"}).to_string()),
        )
        .await;
    assert_eq!(
        (r.status, r.code()),
        (412, "version_mismatch"),
        "{:?}",
        r.body
    );
    assert_eq!(app.status(case).await, "NEW");
}

/// A request that does not finish in time (here: a body that never comes
/// whole) is answered 503 with a problem body, never an empty one.
#[sqlx::test]
async fn a_request_past_its_deadline_gets_a_problem_not_an_empty_503(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let server = TestServer::start(opsloop::api::app_with(
        app.state.clone(),
        std::time::Duration::from_secs(1),
    ))
    .await;
    let addr = server.url.trim_start_matches("http://").to_string();
    let head = format!(
        "POST /case HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {OPERATOR}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"title\""
    );
    let text = first_answer(&addr, &head, 5, "answered at the deadline").await;
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert!(text.contains("application/problem+json"), "{text}");
    assert!(text.contains("\"code\":\"unavailable\""), "{text}");
}

/// A client that sends its headers slowly (slowloris) is cut off at the
/// header deadline, and past the connection cap a connection is closed at
/// once instead of waiting its turn.
#[sqlx::test]
async fn slow_headers_are_cut_off_and_connections_are_capped(pool: PgPool) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = TestApp::new(pool).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let settings = opsloop::api::ServeSettings {
        header_timeout: std::time::Duration::from_secs(1),
        max_connections: 2,
        ..Default::default()
    };
    tokio::spawn(opsloop::api::serve(
        listener,
        opsloop::api::app(app.state.clone()),
        settings,
        std::future::pending(),
    ));
    // Read until the server closes the connection; what it sent first.
    async fn until_closed(conn: &mut tokio::net::TcpStream, within: u64) -> String {
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        let read = tokio::time::timeout(std::time::Duration::from_secs(within), async {
            loop {
                match conn.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await;
        assert!(
            read.is_ok(),
            "the connection is still open after {within} s"
        );
        String::from_utf8_lossy(&got).into_owned()
    }

    let mut slow = Vec::new();
    for _ in 0..2 {
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        slow.push(conn);
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let mut third = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _ = third
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let answer = until_closed(&mut third, 1).await;
    assert!(!answer.contains("200 OK"), "over the cap: {answer}");

    for conn in &mut slow {
        let answer = until_closed(conn, 3).await;
        assert!(!answer.contains("200 OK"), "{answer}");
    }
    // The slots are free again: a well-behaved client is served.
    let mut fine = tokio::net::TcpStream::connect(addr).await.unwrap();
    fine.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let answer = until_closed(&mut fine, 3).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // A kept-alive connection idle past the header deadline is closed too.
    let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let answer = until_closed(&mut idle, 3).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

/// The timeline pages (`limit` default 100, at most 1000, `cursor`), oldest
/// first, and a page past the end of a real case is empty, not 404.
#[sqlx::test]
async fn the_timeline_pages(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let case = app.case_in("PARKED").await; // created + 3 transitions
    let page = |q: String| {
        let app = &app;
        async move {
            app.send(
                Method::GET,
                &format!("/case/{case}/timeline{q}"),
                Some(VIEWER),
                &[],
                None,
            )
            .await
        }
    };
    let all = page(String::new()).await;
    assert_eq!(all.status, 200);
    assert_eq!(all.body["items"].as_array().unwrap().len(), 4);
    assert_eq!(all.body["next_cursor"], serde_json::Value::Null);
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let r = page(format!("?limit=3{cursor}")).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        for item in r.body["items"].as_array().unwrap() {
            seen.push(item["id"].clone());
        }
        match r.body["next_cursor"].as_str() {
            Some(c) => cursor = format!("&cursor={c}"),
            None => break,
        }
    }
    let ids: Vec<_> = all.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].clone())
        .collect();
    assert_eq!(seen, ids, "pages give every entry once, in order");
    for bad in ["?limit=0", "?limit=1001", "?cursor=nope"] {
        let r = page(bad.to_string()).await;
        assert_eq!((r.status, r.code()), (400, "invalid_field"), "{bad}");
    }
}

/// What a caller stores in `meta` is capped (16 KiB): more is 413.
#[sqlx::test]
async fn oversize_meta_is_refused(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let case = app.create_case().await;
    let r = app
        .patch(
            case,
            OPERATOR,
            "big-meta",
            json!({"event": "start_analysis", "meta": {"note": "x".repeat(20_000)}}),
        )
        .await;
    assert_eq!(
        (r.status, r.code()),
        (413, "payload_too_large"),
        "{:?}",
        r.body
    );
    assert_eq!(app.status(case).await, "NEW");
}

/// The bulk routes take a full batch (5 000 metric rows are about 1 MB, an
/// Alertmanager group can be as large), up to their own limit; every other
/// route keeps 64 KiB.
#[sqlx::test]
async fn bulk_routes_take_a_full_batch_and_no_more(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let svc = service();
    let rows: Vec<Value> = (0..opsloop::api::metrics::MAX_ROWS as i64)
        .map(|i| {
            let ts = chrono::DateTime::from_timestamp(1_779_999_960 - i * 60, 0).unwrap();
            json!({"tenant": "t-001", "resource": svc, "metric": "latency_p95_ms",
                   "bucket": ts.to_rfc3339(), "avg": 100.0 + i as f64, "max": 9000.0,
                   "labels": {"region": "eu-west-1", "zone": "eu-west-1a"}})
        })
        .collect();
    let body = json!({ "rows": rows }).to_string();
    assert!(body.len() > opsloop::api::BODY_LIMIT * 8, "{}", body.len());
    let r = app
        .send(
            Method::POST,
            "/metrics/ingest",
            Some(SERVICE),
            &[],
            Some(body),
        )
        .await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    assert_eq!(r.body["stored"], opsloop::api::metrics::MAX_ROWS);
    let addr = app.base.trim_start_matches("http://").to_string();
    let head = format!(
        "POST /metrics/ingest HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {SERVICE}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        opsloop::api::BULK_BODY_LIMIT + 1
    );
    let text = first_answer(&addr, &head, 3, "answered without waiting for the body").await;
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert_healthy(&app).await;
}
