//! Rate limits: per client address (believing `X-Forwarded-For` from trusted proxies
//! only), sign-up and refresh per address, per user by plan, WebSocket connection
//! attempts per user and terminal input per connection. Sign-in limits: `signin.rs`.

use std::time::Duration;

use crate::helpers::{PASSWORD, TestApp, Ws, WsEvent, assert_error, eventually, ws_next, ws_until};
use crate::observability::{scrape, series};
use diesel_async::RunQueryDsl;
use futures_util::SinkExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

fn number(response: &reqwest::Response, name: &str) -> u64 {
    response.headers()[name]
        .to_str()
        .unwrap()
        .parse()
        .unwrap_or_else(|_| panic!("{name} is not a number"))
}

/// Asserts a refusal: 429, `Retry-After`, `RateLimit-*` and the envelope. Returns
/// the advertised wait.
pub async fn assert_limited(response: reqwest::Response, limit: u64) -> u64 {
    let retry_after = number(&response, "retry-after");
    assert!(retry_after >= 1);
    assert_eq!(number(&response, "ratelimit-limit"), limit);
    assert_eq!(number(&response, "ratelimit-remaining"), 0);
    assert_eq!(number(&response, "ratelimit-reset"), retry_after);
    let body = assert_error(response, 429, "rate_limited").await;
    let detail = body["detail"].as_str().unwrap();
    assert!(
        detail.contains(&format!("retry in {retry_after} s")),
        "{body}"
    );
    assert_eq!(body["context"]["retry_after_seconds"], retry_after);
    retry_after
}

async fn get_as(app: &TestApp, path: &str, forwarded_for: String) -> reqwest::Response {
    app.client
        .get(app.url(path))
        .header("x-forwarded-for", forwarded_for)
        .send()
        .await
        .unwrap()
}

/// Sends `send` until it is refused (at most `bound` times); returns how many
/// passed and the refusal.
async fn until_limited<F, Fut>(bound: usize, mut send: F) -> (usize, reqwest::Response)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = reqwest::Response>,
{
    for passed in 0..bound {
        let response = send().await;
        if response.status() == 429 {
            return (passed, response);
        }
        assert!(response.status().is_success(), "{}", response.status());
    }
    panic!("never limited after {bound} requests");
}

#[actix_web::test]
async fn a_burst_from_one_address_is_refused_with_headers_then_recovers() {
    let console = "https://console.example.com";
    let app = TestApp::spawn_with(&[
        ("DEVPOCKET_RATE_LIMIT_IP", "3/3s"),
        ("ALLOWED_ORIGINS", console),
    ])
    .await;

    let first = app.get("/api/v1/info").await;
    assert_eq!(first.status(), 200);
    assert_eq!(number(&first, "ratelimit-limit"), 3);
    assert_eq!(number(&first, "ratelimit-remaining"), 2);
    assert!(number(&first, "ratelimit-reset") >= 1);

    let (passed, refused) = until_limited(50, || app.get("/api/v1/info")).await;
    assert!(passed >= 2, "the burst is 3: {passed} more passed");
    // A refusal is an answer like any other: request id, security headers, counted.
    assert_eq!(refused.headers()["x-request-id"].len(), 36);
    assert_eq!(refused.headers()["x-content-type-options"], "nosniff");
    assert_limited(refused, 3).await;
    let refusals =
        "devpocket_http_requests_total{method=\"GET\",route=\"/api/v1/info\",status=\"429\"}";
    assert_eq!(series(&scrape(&app).await, refusals), 1.0);

    // A page of an allowed origin can read its refusal: CORS applies to it.
    let from_page = || {
        app.client
            .get(app.url("/api/v1/info"))
            .header("origin", console)
            .send()
    };
    let (_, refused) = until_limited(50, || async { from_page().await.unwrap() }).await;
    assert_eq!(refused.headers()["access-control-allow-origin"], console);
    assert_eq!(refused.headers()["x-frame-options"], "DENY");
    let retry_after = assert_limited(refused, 3).await;
    assert_eq!(series(&scrape(&app).await, refusals), 2.0);

    // Load balancers' probes are not limited.
    let health = app.get("/health/live").await;
    assert_eq!(health.status(), 200);
    assert!(health.headers().get("ratelimit-limit").is_none());

    // Waiting as long as advertised is enough.
    actix_web::rt::time::sleep(Duration::from_secs(retry_after)).await;
    assert_eq!(app.get("/api/v1/info").await.status(), 200);
}

#[actix_web::test]
async fn forwarded_for_counts_only_from_a_trusted_proxy() {
    // Anybody may send the header: from an untrusted peer it changes nothing.
    let app = TestApp::spawn_with(&[("DEVPOCKET_RATE_LIMIT_IP", "2/1m")]).await;
    let mut n = 0;
    let (passed, refused) = until_limited(10, || {
        n += 1;
        get_as(&app, "/api/v1/info", format!("203.0.113.{n}"))
    })
    .await;
    assert_eq!(passed, 2);
    assert_limited(refused, 2).await;
    drop(app);

    // Behind a trusted proxy, each forwarded client has its own allowance.
    let app = TestApp::spawn_with(&[
        ("DEVPOCKET_RATE_LIMIT_IP", "2/1m"),
        ("DEVPOCKET_TRUSTED_PROXIES", "127.0.0.1"),
    ])
    .await;
    let (passed, refused) =
        until_limited(10, || get_as(&app, "/api/v1/info", "203.0.113.1".into())).await;
    assert_eq!(passed, 2);
    assert_limited(refused, 2).await;
    let other = get_as(&app, "/api/v1/info", "203.0.113.2".into()).await;
    assert_eq!(other.status(), 200);
    assert_eq!(number(&other, "ratelimit-remaining"), 1);
}

#[actix_web::test]
async fn clients_are_held_until_their_allowance_is_back_then_swept() {
    let app = TestApp::spawn_with(&[
        // One request is back after 2 s; swept every second after that.
        ("DEVPOCKET_RATE_LIMIT_IP", "10/20s"),
        ("DEVPOCKET_TRUSTED_PROXIES", "127.0.0.1"),
        ("DEVPOCKET_RATE_LIMIT_SWEEP", "1s"),
    ])
    .await;
    let ip_keys = "devpocket_rate_limit_keys{limiter=\"ip\"}";
    let metrics = scrape(&app).await;
    assert!(metrics.contains(ip_keys), "{metrics}");
    assert_eq!(series(&metrics, ip_keys), 0.0);
    for n in 0..50 {
        let response = get_as(&app, "/api/v1/info", format!("198.51.100.{n}")).await;
        assert_eq!(response.status(), 200);
    }
    // `/metrics` is not under `/api/v1`: scraping adds no key.
    assert_eq!(series(&scrape(&app).await, ip_keys), 50.0);
    for limiter in [
        "register_ip",
        "refresh_ip",
        "login_ip",
        "login_account",
        "login_known",
        "user",
        "ws_connect",
    ] {
        let label = format!("devpocket_rate_limit_keys{{limiter=\"{limiter}\"}}");
        assert_eq!(series(&scrape(&app).await, &label), 0.0, "{label}");
    }
    eventually(Duration::from_secs(15), "every key swept", async || {
        let held = series(&scrape(&app).await, ip_keys);
        if held == 0.0 {
            Ok(())
        } else {
            Err(format!("{held} keys still held"))
        }
    })
    .await;
    // A swept client starts again with its whole allowance.
    let again = get_as(&app, "/api/v1/info", "198.51.100.7".into()).await;
    assert_eq!(number(&again, "ratelimit-remaining"), 9);
}

/// Refreshes `session` in place (a refresh token works once); the answer if refused.
async fn refresh(app: &TestApp, session: &mut Value) -> Result<(), reqwest::Response> {
    let body = json!({"refresh_token": session["refresh_token"]});
    let response = app.post_json("/api/v1/auth/refresh", &body).await;
    if response.status() != 200 {
        return Err(response);
    }
    let tokens: Value = response.json().await.unwrap();
    session["refresh_token"] = tokens["refresh_token"].clone();
    Ok(())
}

#[actix_web::test]
async fn sign_up_and_refresh_each_have_their_own_limit_per_address() {
    let app = TestApp::spawn_with(&[
        ("DEVPOCKET_RATE_LIMIT_REGISTER_IP", "2/1h"),
        ("DEVPOCKET_RATE_LIMIT_REFRESH_IP", "3/1h"),
    ])
    .await;
    let mut session = app.signed_up("strict").await;
    let token = session["access_token"].as_str().unwrap().to_owned();
    for _ in 0..3 {
        assert!(refresh(&app, &mut session).await.is_ok());
    }
    let refused = refresh(&app, &mut session).await.expect_err("limited");
    assert_limited(refused, 3).await;
    // Refreshing spent no sign-ins, and no sign-ups.
    assert_eq!(app.login("strict", PASSWORD).await.status(), 200);
    assert_eq!(app.register("another").await.status(), 201);
    assert_limited(app.register("third").await, 2).await;
    assert_eq!(app.login("another", PASSWORD).await.status(), 200);

    // The rest of the API is under the general limit only.
    assert_eq!(
        app.authed_client(&token)
            .get("/api/v1/auth/me")
            .await
            .status(),
        200
    );
    assert_eq!(app.get("/api/v1/info").await.status(), 200);
}

async fn me(app: &TestApp, token: &str) -> reqwest::Response {
    app.authed_client(token).get("/api/v1/auth/me").await
}

#[actix_web::test]
async fn signed_in_requests_are_limited_per_user_scaled_by_plan() {
    let app = TestApp::spawn_with(&[("DEVPOCKET_RATE_LIMIT_USER", "2/1m")]).await;
    let free = app.user_token("free_user").await;
    let free_me = || me(&app, &free);

    // The headers describe the tightest limit: the user's, not the address's.
    let first = free_me().await;
    assert_eq!(first.status(), 200);
    assert_eq!(number(&first, "ratelimit-limit"), 2);
    assert_eq!(number(&first, "ratelimit-remaining"), 1);
    let (passed, refused) = until_limited(10, free_me).await;
    assert_eq!(passed, 1);
    assert_eq!(number(&refused, "ratelimit-limit"), 2);
    let body = assert_error(refused, 429, "rate_limited").await;
    assert!(
        body["detail"].as_str().unwrap().contains("free plan"),
        "{body}"
    );

    // Another user from the same address has their own allowance.
    let other = app.user_token("other_user").await;
    assert_eq!(
        app.authed_client(&other)
            .get("/api/v1/auth/me")
            .await
            .status(),
        200
    );

    // Starter doubles the allowance; admin has no per-user limit.
    let starter = app.user_token("starter_user").await;
    let mut conn = app.db.connect().await;
    diesel::sql_query(
        "UPDATE users SET subscription_plan = 'starter' WHERE username = 'starter_user'",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let (passed, refused) = until_limited(20, || me(&app, &starter)).await;
    assert_eq!(passed, 4);
    assert_limited(refused, 4).await;

    let admin = app.admin_token("unlimited_admin").await;
    for _ in 0..10 {
        let response = app.authed_client(&admin).get("/api/v1/auth/me").await;
        assert_eq!(response.status(), 200);
        assert_eq!(number(&response, "ratelimit-limit"), 1200, "the address's");
    }
}

async fn close_of(ws: &mut Ws) -> (u16, String) {
    match ws_next(ws).await {
        WsEvent::Closed(Some(close)) => close,
        other => panic!("expected a close, got {other:?}"),
    }
}

#[actix_web::test]
async fn websocket_connection_attempts_are_limited_per_user() {
    let app = TestApp::spawn_with(&[("DEVPOCKET_RATE_LIMIT_WS_CONNECT", "2/1m")]).await;
    let token = app.user_token("ws_flooder").await;
    // Authentication comes first; an unknown environment is enough to count.
    let nowhere = uuid::Uuid::new_v4();
    let terminal = format!("/api/v1/ws/terminal/{nowhere}?token={token}");
    for _ in 0..2 {
        let (code, reason) = close_of(&mut app.ws(&terminal).await).await;
        assert_eq!((code, reason.as_str()), (1008, "environment not found"));
    }
    let (code, reason) = close_of(&mut app.ws(&terminal).await).await;
    assert_eq!(code, 1013, "{reason}");
    assert!(
        reason.starts_with("too many connection attempts; retry in "),
        "{reason}"
    );
    // The log stream counts against the same allowance.
    let logs = format!("/api/v1/ws/logs/{nowhere}?token={token}");
    assert_eq!(close_of(&mut app.ws(&logs).await).await.0, 1013);

    // Another user has their own.
    let other = app.user_token("ws_patient").await;
    let (code, _) = close_of(
        &mut app
            .ws(&format!("/api/v1/ws/terminal/{nowhere}?token={other}"))
            .await,
    )
    .await;
    assert_eq!(code, 1008);
}

async fn send(ws: &mut Ws, frame: Value) {
    ws.send(Message::Text(frame.to_string().into()))
        .await
        .unwrap();
}

#[actix_web::test]
async fn a_terminal_input_flood_gets_an_error_frame_and_the_connection_stays() {
    let app = TestApp::spawn_with(&[("DEVPOCKET_WS_INPUT_PER_SECOND", "5")]).await;
    let token = app.admin_token("flood_admin").await;
    let id = app.ready_environment(&token, "flood", "ubuntu").await;
    let mut ws = app
        .ws(&format!("/api/v1/ws/terminal/{id}?token={token}"))
        .await;
    let frames = ws_until(&mut ws, "status").await;
    assert_eq!(frames.last().unwrap()["state"], "connected", "{frames:?}");

    for _ in 0..30 {
        send(&mut ws, json!({"type": "input", "data": ""})).await;
    }
    send(&mut ws, json!({"type": "ping", "timestamp": 1})).await;
    let frames = ws_until(&mut ws, "pong").await;
    let errors: Vec<&str> = frames
        .iter()
        .filter(|f| f["type"] == "error")
        .map(|f| f["message"].as_str().unwrap())
        .collect();
    assert!(!errors.is_empty(), "no error frame: {frames:?}");
    assert!(
        errors
            .iter()
            .all(|m| *m == "too many input frames (at most 5 per second); input dropped"),
        "{errors:?}"
    );

    // Still connected: after a second's allowance comes back, input goes through.
    actix_web::rt::time::sleep(Duration::from_secs(1)).await;
    send(
        &mut ws,
        json!({"type": "input", "data": "echo alive-$((40+2))\r"}),
    )
    .await;
    let mut text = String::new();
    while !text.contains("alive-42") {
        match ws_next(&mut ws).await {
            WsEvent::Json(f) if f["type"] == "output" => text.push_str(f["data"].as_str().unwrap()),
            WsEvent::Json(f) => assert_ne!(f["type"], "error", "{f}"),
            WsEvent::Closed(c) => panic!("closed: {c:?}"),
        }
    }
}
