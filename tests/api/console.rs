//! The web console's first step over real HTTP (no browser yet): signing
//! in with a token gives an opaque `HttpOnly`, `SameSite=Strict` session
//! cookie, never the token; the case list shows the identity's tenants
//! only; signing out needs the session's CSRF token; sessions expire.

use reqwest::StatusCode;
use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};
use sqlx::PgPool;

use crate::helpers::*;

/// A form post's body and type (reqwest is built without its form feature).
fn form<T: serde::Serialize>(
    request: reqwest::RequestBuilder,
    fields: &T,
) -> reqwest::RequestBuilder {
    request
        .header(
            reqwest::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .body(serde_urlencoded::to_string(fields).unwrap())
}

/// A client that does not follow redirects, so each answer is seen.
fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Signs in with `token`; the `name=value` of the session cookie.
async fn sign_in(app: &TestApp, token: &str) -> String {
    let r = form(
        browser().post(format!("{}/ui/login", app.base)),
        &[("token", token)],
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(r.headers()[LOCATION], "/ui/cases");
    let set = r.headers()[SET_COOKIE].to_str().unwrap().to_string();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/ui"] {
        assert!(set.contains(attribute), "{set}");
    }
    assert!(
        !set.contains(token),
        "the cookie never holds the token: {set}"
    );
    set.split(';').next().unwrap().to_string()
}

async fn get(app: &TestApp, path: &str, cookie: Option<&str>) -> (StatusCode, String, String) {
    let mut request = browser().get(format!("{}{path}", app.base));
    if let Some(c) = cookie {
        request = request.header(COOKIE, c);
    }
    let r = request.send().await.unwrap();
    let status = r.status();
    let location = r
        .headers()
        .get(LOCATION)
        .map(|l| l.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status, location, r.text().await.unwrap())
}

/// The hidden CSRF input of a page's sign-out form.
fn csrf_of(page: &str) -> String {
    let at = page.find("name=\"csrf\" value=\"").expect("a CSRF field") + 19;
    page[at..at + 64].to_string()
}

#[sqlx::test]
async fn signing_in_opens_a_session_that_shows_only_the_identitys_tenants(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let own = app.case_in("NEW").await;
    let r = app
        .send(
            reqwest::Method::POST,
            "/case",
            Some(ADMIN),
            &[],
            Some(serde_json::json!({"title": "another tenant's", "tenant": "t-002"}).to_string()),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let other = r.body["id"].as_str().unwrap().to_string();
    // Without a session: to the sign-in page.
    let (status, location, _) = get(&app, "/ui/cases", None).await;
    assert_eq!(
        (status, location.as_str()),
        (StatusCode::SEE_OTHER, "/ui/login")
    );
    let (status, _, page) = get(&app, "/ui/login", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("<label for=\"token\">"), "{page}");

    let cookie = sign_in(&app, VIEWER).await;
    let (status, _, page) = get(&app, "/ui/cases", Some(&cookie)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains(&own.to_string()), "own case listed");
    assert!(!page.contains(&other), "another tenant's case never");
    assert!(page.contains("Signed in as <strong>vic</strong>"), "{page}");
    // Filters: a status narrows; nonsense is said, not an error page.
    let (_, _, parked) = get(&app, "/ui/cases?status=PARKED", Some(&cookie)).await;
    assert!(!parked.contains(&own.to_string()));
    let (status, _, odd) = get(&app, "/ui/cases?status=SLEEPING", Some(&cookie)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(odd.contains("Not a valid filter"), "{odd}");
    // A sign-in posted from another site (login CSRF) opens nothing.
    let r = form(
        browser()
            .post(format!("{}/ui/login", app.base))
            .header("origin", "https://evil.example"),
        &[("token", VIEWER)],
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert!(r.headers().get(SET_COOKIE).is_none());
    // A wrong token, or a service's, opens nothing.
    for token in ["not-a-token", SERVICE] {
        let r = form(
            browser().post(format!("{}/ui/login", app.base)),
            &[("token", token)],
        )
        .send()
        .await
        .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert!(r.headers().get(SET_COOKIE).is_none());
    }
    let stored: Vec<String> = sqlx::query_scalar("SELECT id_sha256 FROM ui_session")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    let id = cookie.split_once('=').unwrap().1;
    assert_eq!(stored.len(), 1);
    assert_ne!(stored[0], id, "only the id's digest is stored");
}

#[sqlx::test]
async fn signing_out_needs_the_csrf_token_and_sessions_expire(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let cookie = sign_in(&app, OPERATOR).await;
    let (_, _, page) = get(&app, "/ui/cases", Some(&cookie)).await;
    let csrf = csrf_of(&page);
    let logout = |fields: Vec<(&'static str, String)>| {
        let (base, cookie) = (app.base.clone(), cookie.clone());
        async move {
            form(
                browser()
                    .post(format!("{base}/ui/logout"))
                    .header(COOKIE, cookie),
                &fields,
            )
            .send()
            .await
            .unwrap()
            .status()
        }
    };
    assert_eq!(logout(vec![]).await, StatusCode::FORBIDDEN);
    assert_eq!(
        logout(vec![("csrf", "0".repeat(64))]).await,
        StatusCode::FORBIDDEN
    );
    let (status, _, _) = get(&app, "/ui/cases", Some(&cookie)).await;
    assert_eq!(status, StatusCode::OK, "a refused sign-out changed nothing");
    assert_eq!(logout(vec![("csrf", csrf)]).await, StatusCode::SEE_OTHER);
    let (status, location, _) = get(&app, "/ui/cases", Some(&cookie)).await;
    assert_eq!(
        (status, location.as_str()),
        (StatusCode::SEE_OTHER, "/ui/login")
    );

    // Idle for more than 8 hours, or open for more than 24: signed out.
    for (idle, age) in [(9, 9), (1, 25)] {
        let cookie = sign_in(&app, OPERATOR).await;
        sqlx::query(
            "UPDATE ui_session SET last_seen_at = now() - make_interval(hours => $1), \
             created_at = now() - make_interval(hours => $2)",
        )
        .bind(idle)
        .bind(age)
        .execute(&app.pool)
        .await
        .unwrap();
        let (status, location, _) = get(&app, "/ui/cases", Some(&cookie)).await;
        assert_eq!(
            (status, location.as_str()),
            (StatusCode::SEE_OTHER, "/ui/login"),
            "idle {idle} h, open {age} h"
        );
    }
}

/// The fields of the first form on `page` whose `event` is `event`.
fn form_fields(page: &str, event: &str) -> Option<Vec<(String, String)>> {
    let marker = format!("name=\"event\" value=\"{event}\"");
    let at = page.find(&marker)?;
    let start = page[..at].rfind("<form")?;
    let end = start + page[start..].find("</form>")?;
    let form = &page[start..end];
    let mut fields = Vec::new();
    for chunk in form.split("<input").skip(1) {
        let attr = |name: &str| {
            let key = format!("{name}=\"");
            chunk.find(&key).map(|i| {
                chunk[i + key.len()..]
                    .split('"')
                    .next()
                    .unwrap()
                    .to_string()
            })
        };
        if let (Some(name), Some(value)) = (attr("name"), attr("value")) {
            fields.push((name, value));
        }
    }
    Some(fields)
}

async fn post_form(
    app: &TestApp,
    path: &str,
    cookie: &str,
    fields: &[(String, String)],
) -> (StatusCode, String) {
    let r = form(
        browser()
            .post(format!("{}{path}", app.base))
            .header(COOKIE, cookie),
        &fields,
    )
    .send()
    .await
    .unwrap();
    (r.status(), r.text().await.unwrap())
}

/// Approving from the case page: the form names the plan hash (and dry
/// run) shown; the first of two approvers reads "1 of 2", the second opens
/// the gate; the author's page says why it cannot approve; a form for a
/// plan that is no longer current is refused in words; a viewer gets no
/// action; a form without the CSRF token is 403. The timeline names the
/// people.
#[sqlx::test]
async fn people_approve_from_the_case_page_under_the_gates_rules(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let case = app.case_in("PLANNING").await;
    let hash = app.store_plan(case, "alice", Some(2)).await;
    assert_eq!(app.event(case, SERVICE, "plan_ready").await.status, 200);
    let path = format!("/ui/case/{case}");

    let viewer = sign_in(&app, VIEWER).await;
    let (status, _, page) = get(&app, &path, Some(&viewer)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains(&hash[..12]), "the plan is shown");
    assert!(
        form_fields(&page, "gate_approved").is_none(),
        "a viewer has no action"
    );
    assert!(page.contains("is not an approver"), "{page}");
    assert!(
        !page.contains("<button type=\"button\""),
        "not even a disabled one"
    );

    let bob = sign_in(&app, APPROVER).await;
    let (_, _, page) = get(&app, &path, Some(&bob)).await;
    let approve = form_fields(&page, "gate_approved").expect("an approve form");
    assert!(
        approve.contains(&("plan_hash".into(), hash.clone())),
        "{approve:?}"
    );
    // Without the session's CSRF token: refused, nothing done.
    let forged: Vec<(String, String)> = approve
        .iter()
        .filter(|(k, _)| k != "csrf")
        .cloned()
        .collect();
    let (status, _) = post_form(&app, &format!("{path}/act"), &bob, &forged).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // A form for another plan than the current one: refused in words.
    let stale: Vec<(String, String)> = approve
        .iter()
        .map(|(k, v)| {
            if k == "plan_hash" {
                (k.clone(), "f".repeat(64))
            } else {
                (k.clone(), v.clone())
            }
        })
        .collect();
    let (status, said) = post_form(&app, &format!("{path}/act"), &bob, &stale).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{said}");
    assert!(said.contains("is not the current plan"), "{said}");
    // The real one: 1 of 2.
    let (_, _, page) = get(&app, &path, Some(&bob)).await;
    let approve = form_fields(&page, "gate_approved").unwrap();
    let (_, said) = post_form(&app, &format!("{path}/act"), &bob, &approve).await;
    assert!(
        said.contains("1 of 2 approvals; waiting for one more approver"),
        "{said}"
    );
    let (_, _, page) = get(&app, &path, Some(&bob)).await;
    assert!(page.contains("your approval already counts"), "{page}");

    // The author cannot approve, and is told why (bob wrote this one).
    let own = app.case_in("PLANNING").await;
    app.store_plan(own, "bob", Some(1)).await;
    assert_eq!(app.event(own, SERVICE, "plan_ready").await.status, 200);
    let (_, _, page) = get(&app, &format!("/ui/case/{own}"), Some(&bob)).await;
    assert!(form_fields(&page, "gate_approved").is_none());
    assert!(
        page.contains("you wrote this plan and cannot approve it"),
        "{page}"
    );
    assert!(
        page.contains("disabled aria-describedby=\"cannot-approve\""),
        "the author's button is there, disabled, pointing at the reason: {page}"
    );

    let carol = sign_in(&app, APPROVER2).await;
    let (_, _, page) = get(&app, &path, Some(&carol)).await;
    let approve = form_fields(&page, "gate_approved").unwrap();
    let (_, said) = post_form(&app, &format!("{path}/act"), &carol, &approve).await;
    assert!(said.contains("EXECUTING"), "{said}");
    assert_eq!(app.status(case).await, "EXECUTING");
    let gate: Vec<(String, String)> = sqlx::query_as(
        "SELECT actor, event FROM case_timeline WHERE case_id = $1 AND kind = 'transition' \
         AND event LIKE 'gate_%' AND meta #>> '{request,via}' = 'console' ORDER BY seq",
    )
    .bind(case)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        gate,
        [
            ("bob".to_string(), "gate_vote".to_string()),
            ("carol".to_string(), "gate_approved".to_string())
        ]
    );
}

/// What arrives on the event stream within `wait`, opened with `query`.
async fn first_events(app: &TestApp, cookie: &str, query: &str, wait: u64) -> String {
    let mut r = browser()
        .get(format!("{}/ui/events{query}", app.base))
        .header(COOKIE, cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let mut seen = String::new();
    let until = std::time::Instant::now() + std::time::Duration::from_millis(wait);
    while let Some(left) = until.checked_duration_since(std::time::Instant::now()) {
        match tokio::time::timeout(left, r.chunk()).await {
            Ok(Ok(Some(chunk))) => seen.push_str(&String::from_utf8_lossy(&chunk)),
            _ => break,
        }
    }
    seen
}

/// A page that reloads while its case moves would miss that move (the
/// feed keeps no history): the page names what it showed, and a stream
/// opened after a move opens with `stale`; one opened on the newest
/// state does not.
#[sqlx::test]
async fn the_event_stream_tells_a_page_what_it_missed_while_loading(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let case = app.case_in("ANALYZING").await;
    let cookie = sign_in(&app, VIEWER).await;
    let (_, _, page) = get(&app, &format!("/ui/case/{case}"), Some(&cookie)).await;
    let mark = |page: &str| {
        page.split("data-mark=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .expect("the page names what it shows")
            .to_string()
    };
    let shown = mark(&page);
    let (_, _, list) = get(&app, "/ui/cases", Some(&cookie)).await;
    let listed = mark(&list);
    for (query, stale) in [
        (format!("?mark={shown}&case={case}"), false),
        (format!("?mark={listed}"), false),
    ] {
        let seen = first_events(&app, &cookie, &query, 700).await;
        assert_eq!(seen.contains("event: stale"), stale, "{query}: {seen}");
    }
    // The case moves after both pages were rendered.
    let r = app
        .patch(
            case,
            OPERATOR,
            "mark-1",
            serde_json::json!({"event": "dismiss", "reason": "seen elsewhere"}),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    for query in [
        format!("?mark={shown}&case={case}"),
        format!("?mark={listed}"),
    ] {
        let seen = first_events(&app, &cookie, &query, 2000).await;
        assert!(seen.starts_with("event: stale"), "{query}: {seen}");
    }
}

/// The review's hole: inside a change freeze (verdict break_glass) an
/// approval needs a reason, which the API asks for; a direct post to the
/// console's action must not skip it. A viewer's direct post is refused
/// by the server, not only by a hidden button.
#[sqlx::test]
async fn a_direct_post_skips_no_rule_the_page_shows(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let case = app.case_in("PLANNING").await;
    let hash = app.store_plan(case, "planner", Some(1)).await;
    assert_eq!(app.event(case, SERVICE, "plan_ready").await.status, 200);
    sqlx::query(
        "UPDATE plan_proposed SET gate_verdict = 'break_glass', gate_freeze = 'release', \
         gate_risk = 0.2, gate_reasons = '{change freeze release}', gate_auto_rollback = false \
         WHERE case_id = $1",
    )
    .bind(case)
    .execute(&app.pool)
    .await
    .unwrap();
    let path = format!("/ui/case/{case}");
    let bob = sign_in(&app, APPROVER).await;
    let (_, _, page) = get(&app, &path, Some(&bob)).await;
    assert!(form_fields(&page, "gate_approved").is_none());
    let csrf = csrf_of(&page);
    let fields = |event: &str| {
        vec![
            ("csrf".to_string(), csrf.clone()),
            (
                "request_id".to_string(),
                uuid::Uuid::new_v4().simple().to_string(),
            ),
            ("event".to_string(), event.to_string()),
            ("plan_hash".to_string(), hash.clone()),
        ]
    };
    let (status, said) =
        post_form(&app, &format!("{path}/act"), &bob, &fields("gate_approved")).await;
    assert_ne!(status, StatusCode::OK, "{said}");
    assert!(said.contains("break-glass"), "{said}");
    assert_eq!(app.status(case).await, "WAIT_GATE");
    let vic = sign_in(&app, VIEWER).await;
    let (_, _, page) = get(&app, &path, Some(&vic)).await;
    let mut as_viewer = fields("gate_approved");
    as_viewer[0].1 = csrf_of(&page);
    let (status, said) = post_form(&app, &format!("{path}/act"), &vic, &as_viewer).await;
    assert_ne!(status, StatusCode::OK, "{said}");
    assert!(said.contains("Not allowed"), "{said}");
    assert_eq!(app.status(case).await, "WAIT_GATE");
}

/// A closed case's page draws each checked metric over the verification
/// window with its threshold (inline SVG, no script).
#[sqlx::test]
async fn the_case_page_charts_each_checked_metric_with_its_threshold(pool: PgPool) {
    let lp = crate::flow::Loop::full(pool).await;
    let svc = format!("svc-{}", uuid::Uuid::new_v4().simple());
    crate::walking_skeleton::ingest_metric(&lp, &svc, "latency_p95_ms", 120.0).await;
    let case = crate::walking_skeleton::degraded_case(&lp, &svc).await;
    lp.settle().await;
    assert_eq!(lp.app.status(case).await, "CLOSED");
    let cookie = sign_in(&lp.app, VIEWER).await;
    let (status, _, page) = get(&lp.app, &format!("/ui/case/{case}"), Some(&cookie)).await;
    assert_eq!(status, StatusCode::OK);
    let svg = &page[page.find("<svg").expect("a chart")..];
    // Closed explicitly: in HTML, an SVG element is not void, and one left
    // open swallows the rest of the chart (seen in the browser test).
    assert!(svg.contains("class=\"threshold\"></line>"), "{svg}");
    assert!(svg.contains("avg of latency_p95_ms of"), "{svg}");
    assert!(
        svg.contains("class=\"point\""),
        "the minutes the verifier judged are drawn: {svg}"
    );
    assert!(page.contains("<strong>pass</strong>"), "{page}");
    assert!(
        page.contains("id=\"findings\""),
        "the analyst's findings are shown"
    );
    assert_eq!(
        page.matches("<script").count(),
        1,
        "only the console's own live-update script"
    );
    assert!(
        page.contains("<script src=\"/ui/console.js\" defer>"),
        "{page}"
    );
}

/// Live updates: a signed-in browser's event stream carries the moves of
/// its tenants' cases from the transition feed, and no other tenant's.
#[sqlx::test]
async fn the_event_stream_carries_the_moves_of_the_sessions_tenants(pool: PgPool) {
    let app = TestApp::new(pool.clone()).await;
    let nats = opsloop::pubsub::connect(&nats_url()).await.unwrap();
    let js = async_nats::jetstream::new(nats.clone());
    opsloop::pubsub::streams::ensure(&js, &Default::default())
        .await
        .unwrap();
    let relay = opsloop::pubsub::relay::Relay::new(pool.clone(), nats, Default::default());
    let cookie = sign_in(&app, VIEWER).await;
    let r = browser()
        .get(format!("{}/ui/events", app.base))
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let mut stream = r;
    let own = app.case_in("ANALYZING").await;
    let created = app
        .open_case(serde_json::json!({"title": "ours, new", "tenant": "t-001"}))
        .await;
    let other = app
        .send(
            reqwest::Method::POST,
            "/case",
            Some(ADMIN),
            &[],
            Some(serde_json::json!({"title": "theirs", "tenant": "t-002"}).to_string()),
        )
        .await;
    assert_eq!(other.status, 201);
    let other: uuid::Uuid = other.body["id"].as_str().unwrap().parse().unwrap();
    let r = app
        .patch(
            other,
            ADMIN,
            "sse-1",
            serde_json::json!({"event": "dismiss", "reason": "not ours"}),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    relay.relay_once().await.unwrap();
    let mut seen = String::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !seen.contains(&format!("\"case_id\":\"{own}\""))
        || !seen.contains(&format!("\"case_id\":\"{created}\""))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no event for {own}: {seen}"
        );
        let next = tokio::time::timeout(std::time::Duration::from_secs(2), stream.chunk()).await;
        if let Ok(Ok(Some(chunk))) = next {
            seen.push_str(&String::from_utf8_lossy(&chunk));
        } else {
            relay.relay_once().await.unwrap();
        }
    }
    // The other tenant's move was published after these: give it time to
    // arrive, were it ever shown.
    relay.relay_once().await.unwrap();
    let until = std::time::Instant::now() + std::time::Duration::from_millis(1500);
    while let Some(left) = until.checked_duration_since(std::time::Instant::now()) {
        match tokio::time::timeout(left, stream.chunk()).await {
            Ok(Ok(Some(chunk))) => seen.push_str(&String::from_utf8_lossy(&chunk)),
            _ => break,
        }
    }
    assert!(seen.contains("event: transition"), "{seen}");
    assert!(
        seen.contains(&format!(
            "event: created\ndata: {{\"case_id\":\"{created}\"}}"
        )),
        "a new case is announced: {seen}"
    );
    assert!(
        !seen.contains(&other.to_string()),
        "another tenant's move never: {seen}"
    );
}
