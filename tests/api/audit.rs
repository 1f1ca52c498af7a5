//! The audit log: one row per audited action saying who, what, on which resource,
//! from where and how it ended; the filters and pages of `GET /api/v1/admin/audit`;
//! and recording that never fails the request it records. Writes are asynchronous,
//! so tests poll the endpoint until the rows they expect are there (bounded).

mod environments;
mod filters;

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use diesel_async::RunQueryDsl;
use serde_json::{Value, json};

use crate::helpers::{PASSWORD, TestApp, assert_error, eventually};

pub const AGENT: &str = "DevPocketTest/1.0 (audit)";

/// Events matching `query`, newest first, once `done` holds for them (polled for
/// at most 20 s).
pub async fn audit_until(
    app: &TestApp,
    admin: &str,
    query: &str,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let what = format!("the audit events for {query} to match");
    eventually(Duration::from_secs(20), &what, async || {
        let response = app
            .authed_client(admin)
            .get(&format!("/api/v1/admin/audit?per_page=200&{query}"))
            .await;
        assert_eq!(response.status(), 200, "audit query {query}");
        let body: Value = response.json().await.unwrap();
        let items = body["items"].as_array().unwrap().clone();
        if done(&items) {
            Ok(items)
        } else {
            Err(format!("{items:#?}"))
        }
    })
    .await
}

/// The action names of `events`, newest first.
pub fn actions(events: &[Value]) -> Vec<&str> {
    events
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect()
}

/// A POST with our user agent, maybe a token and maybe an `X-Forwarded-For`.
async fn post(
    app: &TestApp,
    path: &str,
    token: Option<&str>,
    forwarded: Option<&str>,
    body: &Value,
) -> reqwest::Response {
    let mut request = app
        .client
        .post(app.url(path))
        .header("user-agent", AGENT)
        .json(body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(forwarded) = forwarded {
        request = request.header("x-forwarded-for", forwarded);
    }
    request.send().await.unwrap()
}

fn claim(token: &str, name: &str) -> String {
    let payload = token.split('.').nth(1).unwrap();
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    claims[name].as_str().unwrap().to_owned()
}

#[actix_web::test]
async fn sign_in_events_say_who_what_where_and_how() {
    // Behind a trusted proxy the forwarded client address is the one recorded.
    let app = TestApp::spawn_with(&[("DEVPOCKET_TRUSTED_PROXIES", "127.0.0.1")]).await;
    let admin = app.admin_token("root").await;
    let from = "203.0.113.7";
    let via_proxy = Some(from);
    let login =
        |password: &'static str| json!({"username_or_email": "alice", "password": password});

    let registered = post(
        &app,
        "/api/v1/auth/register",
        None,
        via_proxy,
        &json!({"username": "alice", "email": "alice@example.com", "password": PASSWORD}),
    )
    .await;
    assert_eq!(registered.status(), 201);
    let registered: Value = registered.json().await.unwrap();
    let alice = registered["user"]["id"].as_str().unwrap().to_owned();
    let first_access = registered["access_token"].as_str().unwrap().to_owned();

    let wrong = post(
        &app,
        "/api/v1/auth/login",
        None,
        via_proxy,
        &login("Wrong-horse-1"),
    )
    .await;
    assert_error(wrong, 401, "unauthorized").await;
    let signed_in = post(
        &app,
        "/api/v1/auth/login",
        None,
        via_proxy,
        &login(PASSWORD),
    )
    .await;
    assert_eq!(signed_in.status(), 200);
    let signed_in: Value = signed_in.json().await.unwrap();
    let refresh = json!({"refresh_token": signed_in["refresh_token"]});
    let rotated = post(&app, "/api/v1/auth/refresh", None, via_proxy, &refresh).await;
    assert_eq!(rotated.status(), 200);
    let reused = post(&app, "/api/v1/auth/refresh", None, via_proxy, &refresh).await;
    assert_error(reused, 401, "unauthorized").await;
    let logout = post(
        &app,
        "/api/v1/auth/logout",
        Some(&first_access),
        via_proxy,
        &json!({}),
    )
    .await;
    assert_eq!(logout.status(), 200);
    let stranger = post(
        &app,
        "/api/v1/auth/login",
        None,
        via_proxy,
        &json!({"username_or_email": "nobody", "password": PASSWORD}),
    )
    .await;
    assert_error(stranger, 401, "unauthorized").await;

    // The queue is written in order: once the last event is there, all are.
    let events = audit_until(&app, &admin, &format!("user={alice}"), |e| {
        e.first().is_some_and(|e| e["action"] == "auth.logout")
    })
    .await;
    assert_eq!(
        actions(&events),
        [
            "auth.logout",
            "auth.refresh_reuse",
            "auth.login",
            "auth.login_failed",
            "auth.verification_sent",
            "auth.register"
        ],
        "{events:#?}"
    );
    for event in &events {
        assert_eq!(event["user_id"], alice.as_str(), "{event}");
        assert_eq!(event["username"], "alice", "{event}");
        assert_eq!(event["ip"], from, "{event}");
        assert_eq!(event["user_agent"], AGENT, "{event}");
        assert!(event["created_at"].as_str().unwrap().ends_with('Z'));
    }
    let outcome_and_resource = |e: &Value| {
        (
            e["outcome"].as_str().unwrap().to_owned(),
            e["resource_type"].as_str().unwrap().to_owned(),
            e["resource_id"].as_str().unwrap().to_owned(),
        )
    };
    let user = |outcome: &str| (outcome.to_owned(), "user".to_owned(), alice.clone());
    let session = |outcome: &str, token: &str| {
        (
            outcome.to_owned(),
            "session".to_owned(),
            claim(token, "sid"),
        )
    };
    let resources: Vec<_> = events.iter().map(outcome_and_resource).collect();
    assert_eq!(
        resources,
        [
            session("success", &first_access),
            session("denied", signed_in["refresh_token"].as_str().unwrap()),
            user("success"),
            user("failure"),
            user("success"),
            user("success"),
        ]
    );
    assert_eq!(events[3]["details"]["reason"], "wrong_password");

    // A login for no known account is recorded without a user, naming the attempt.
    let failed = audit_until(&app, &admin, "action=auth.login_failed", |e| e.len() == 2).await;
    assert_eq!(failed[0]["user_id"], Value::Null);
    assert_eq!(failed[0]["outcome"], "failure");
    assert_eq!(failed[0]["details"]["reason"], "unknown_account");
    assert_eq!(failed[0]["details"]["login"], "nobody");
    assert_eq!(failed[0]["ip"], from);
}

#[actix_web::test]
async fn a_lockout_and_attempts_while_locked_are_recorded() {
    let app = TestApp::spawn_with(&[("DEVPOCKET_LOCKOUT_THRESHOLD", "2")]).await;
    let admin = app.admin_token("root").await;
    let bob = app.signed_up("bob").await["user"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(app.login("bob", "Wrong-horse-1").await.status(), 401);
    assert_eq!(app.login("bob", "Wrong-horse-2").await.status(), 423);
    assert_eq!(app.login("bob", PASSWORD).await.status(), 423);

    let events = audit_until(&app, &admin, &format!("user={bob}"), |e| e.len() >= 6).await;
    let summary: Vec<(&str, &str, &str)> = events
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap(),
                e["outcome"].as_str().unwrap(),
                e["details"]["reason"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("auth.login_failed", "denied", "locked"),
            ("auth.lockout", "denied", ""),
            ("auth.login_failed", "failure", "wrong_password"),
            ("auth.login_failed", "failure", "wrong_password"),
            ("auth.verification_sent", "success", ""),
            ("auth.register", "success", ""),
        ]
    );
    assert_eq!(events[1]["details"]["failures"], 2);
    assert!(events[1]["details"]["locked_until"].is_string());
    assert!(events.iter().all(|e| e["ip"] == "127.0.0.1"));
}

#[actix_web::test]
async fn stalled_or_failing_audit_writes_do_not_hold_up_or_fail_requests() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token("root").await;
    let erin = app.signed_up("erin").await["user"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // Signed up, and mailed a first code.
    audit_until(&app, &admin, &format!("user={erin}"), |e| e.len() == 2).await;
    // From now on the database refuses any event from this user agent…
    let mut conn = app.db.connect().await;
    for statement in [
        "ALTER TABLE audit_events ADD CONSTRAINT refuse_evil \
         CHECK (user_agent IS DISTINCT FROM 'evil-agent')",
        // …and, until COMMIT, makes the writer wait (reads still work).
        "BEGIN",
        "LOCK TABLE audit_events IN SHARE MODE",
    ] {
        diesel::sql_query(statement)
            .execute(&mut conn)
            .await
            .unwrap();
    }
    let login = |agent: &'static str| {
        app.client
            .post(app.url("/api/v1/auth/login"))
            .header("user-agent", agent)
            .json(&json!({"username_or_email": "erin", "password": PASSWORD}))
            .send()
    };
    // The writer is stuck on the first event while the others queue up behind it,
    // so the good one shares a batch with a refused one.
    for agent in ["evil-agent", AGENT, "evil-agent"] {
        let response = tokio::time::timeout(Duration::from_secs(10), login(agent))
            .await
            .expect("a stalled audit write held up the request")
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    diesel::sql_query("COMMIT")
        .execute(&mut conn)
        .await
        .unwrap();

    // The writer goes on, and a refused event costs only itself.
    let events = audit_until(&app, &admin, &format!("user={erin}"), |e| e.len() >= 3).await;
    assert_eq!(
        actions(&events),
        ["auth.login", "auth.verification_sent", "auth.register"]
    );
    assert_eq!(events[0]["user_agent"], AGENT);
    let later = app.login("erin", PASSWORD).await;
    assert_eq!(later.status(), 200);
    audit_until(&app, &admin, &format!("user={erin}"), |e| e.len() == 4).await;
}
