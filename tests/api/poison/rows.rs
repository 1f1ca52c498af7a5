//! Rows that cannot be read, written with SQL as an earlier attack left them: each is
//! logged and left out of its list (environments, templates, the audit log) without
//! failing the others; alone it is a 409 naming the column; a broken environment can
//! still be deleted (and so stops holding a quota slot), and a broken template can be
//! repaired by an admin's PUT.

use std::time::Duration;

use serde_json::{Value, json};

use super::{UNREADABLE, sql, texts};
use crate::helpers::{AuthedClient, TestApp, assert_error, eventually};
use crate::templates::names;

/// Stores a stopped local environment of `user` with the given jsonb values, as a
/// row straight in the database; returns its id.
async fn stored_environment(
    app: &TestApp,
    user: &str,
    name: &str,
    limits: &str,
    vars: &str,
) -> String {
    let id = uuid::Uuid::new_v4();
    sql(
        app,
        &format!(
            "INSERT INTO environments (id, user_id, name, slug, template_id, provider, region, \
               size, status, phase, resource_limits, environment_variables) \
             SELECT '{id}', u.id, '{name}', '{name}-{short}', t.id, 'local', 'local', 'small', \
               'stopped', 'stopped', '{limits}', '{vars}' \
             FROM users u, templates t WHERE u.username = '{user}' AND t.name = 'ubuntu'",
            short = &id.simple().to_string()[..6],
        ),
    )
    .await;
    id.to_string()
}

/// A 409 naming `column`, with `code`.
async fn unreadable_as(response: reqwest::Response, code: &str, column: &str) {
    let body = assert_error(response, 409, code).await;
    assert_eq!(body["context"]["field"], column, "{body}");
    assert!(body["detail"].as_str().unwrap().contains(column), "{body}");
}

/// An environment's stored value that cannot be read: 409 naming `column`.
async fn unreadable(response: reqwest::Response, column: &str) {
    unreadable_as(response, "environment_unreadable", column).await;
}

async fn gone(client: &AuthedClient<'_>, id: &str) {
    let path = format!("/api/v1/environments/{id}");
    eventually(
        Duration::from_secs(60),
        &format!("{id} to go"),
        async || match client.get(&path).await.status() {
            reqwest::StatusCode::NOT_FOUND => Ok(()),
            status => Err(status),
        },
    )
    .await;
}

#[actix_web::test]
async fn an_environment_that_cannot_be_read_is_left_out_and_can_be_deleted() {
    let app = TestApp::spawn_with(&[("DEVPOCKET_LIST_CACHE_TTL", "0")]).await;
    let token = app.user_token("victim").await;
    let client = app.authed_client(&token);
    // What the attack of the issue left (309 digits): readable with a parser that
    // reads back every double, as the server's now is.
    let attack = stored_environment(
        &app,
        "victim",
        "attack",
        r#"{"cpu": 1.7976931348623157e308}"#,
        "{}",
    )
    .await;
    let limits = stored_environment(&app, "victim", "limits", UNREADABLE, "{}").await;
    let vars = stored_environment(&app, "victim", "vars", "{}", r#"{"A": 1e400}"#).await;
    let stored = texts(
        &app,
        "SELECT resource_limits::text AS text FROM environments",
    )
    .await;
    assert!(stored.iter().any(|t| t.len() > 300), "{stored:?}");

    let listed = client.get("/api/v1/environments").await;
    assert_eq!(listed.status(), 200);
    let listed: Value = listed.json().await.unwrap();
    let ids: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [attack.as_str()]);
    assert_eq!(listed[0]["resource_limits"]["cpu"], json!(f64::MAX));
    let filtered: Value = client
        .get("/api/v1/environments?status=stopped")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(filtered, listed);

    unreadable(
        client.get(&format!("/api/v1/environments/{limits}")).await,
        "resource_limits",
    )
    .await;
    unreadable(
        client.get(&format!("/api/v1/environments/{vars}")).await,
        "environment_variables",
    )
    .await;
    for (path, body) in [
        (format!("/api/v1/environments/{limits}/start"), json!({})),
        (format!("/api/v1/environments/{vars}/restart"), json!({})),
        (format!("/api/v1/environments/{limits}/logs"), Value::Null),
    ] {
        let response = if body.is_null() {
            client.get(&path).await
        } else {
            client.post(&path, &body).await
        };
        assert_eq!(response.status(), 409, "{path}");
    }
    let renamed = client
        .put(
            &format!("/api/v1/environments/{vars}"),
            &json!({"name": "renamed"}),
        )
        .await;
    unreadable(renamed, "environment_variables").await;

    // The free plan allows three environments in all: they hold the slots.
    let more = client
        .post(
            "/api/v1/environments",
            &json!({"name": "more", "template_id": "ubuntu"}),
        )
        .await;
    assert_error(more, 403, "quota_exceeded").await;

    for id in [&limits, &vars] {
        let deleted = client.delete(&format!("/api/v1/environments/{id}")).await;
        assert_eq!(deleted.status(), 202, "{id}");
        let body: Value = deleted.json().await.unwrap();
        assert_eq!(body["id"], id.as_str());
        assert_eq!(body["status"], "terminated");
        gone(&client, id).await;
    }
    let left = texts(
        &app,
        "SELECT name AS text FROM environments WHERE deleted_at IS NULL",
    )
    .await;
    assert_eq!(left, ["attack"]);
}

#[actix_web::test]
async fn a_template_that_cannot_be_read_is_left_out_until_an_admin_replaces_it() {
    let app = TestApp::spawn().await;
    let admin_token = app.admin_token("root").await;
    let admin = app.authed_client(&admin_token);
    let user_token = app.user_token("alice").await;
    let user = app.authed_client(&user_token);
    sql(
        &app,
        &format!("UPDATE templates SET cloud_init = '{UNREADABLE}' WHERE name = 'ubuntu'"),
    )
    .await;
    sql(
        &app,
        "UPDATE templates SET tags = '[1e400]' WHERE name = 'golang'",
    )
    .await;

    for client in [&admin, &user] {
        let listed = client.get("/api/v1/templates").await;
        assert_eq!(listed.status(), 200);
        let listed: Value = listed.json().await.unwrap();
        assert_eq!(names(&listed), ["nodejs", "python", "rust"]);
        let searched: Value = client
            .get("/api/v1/templates?search=u")
            .await
            .json()
            .await
            .unwrap();
        assert!(!names(&searched).contains(&"ubuntu"));
        unreadable_as(
            client.get("/api/v1/templates/ubuntu").await,
            "conflict",
            "cloud_init",
        )
        .await;
        unreadable_as(
            client.get("/api/v1/templates/golang").await,
            "conflict",
            "tags",
        )
        .await;
    }
    let created = user
        .post(
            "/api/v1/environments",
            &json!({"name": "x", "template_id": "ubuntu"}),
        )
        .await;
    let body = assert_error(created, 422, "validation_error").await;
    assert!(
        body["detail"].as_str().unwrap().contains("cloud_init"),
        "{body}"
    );

    // Deprecating or changing something else would leave it broken: refused.
    unreadable_as(
        admin.delete("/api/v1/templates/ubuntu").await,
        "conflict",
        "cloud_init",
    )
    .await;
    unreadable_as(
        admin
            .put(
                "/api/v1/templates/ubuntu",
                &json!({"description": "edited"}),
            )
            .await,
        "conflict",
        "cloud_init",
    )
    .await;
    // Replacing the broken value repairs it.
    let repaired = admin
        .put(
            "/api/v1/templates/ubuntu",
            &json!({"cloud_init": {"timezone": "UTC"}}),
        )
        .await;
    assert_eq!(repaired.status(), 200);
    let repaired: Value = repaired.json().await.unwrap();
    assert_eq!(repaired["cloud_init"], json!({"timezone": "UTC"}));
    assert_eq!(repaired["status"], "active");
    let listed: Value = user.get("/api/v1/templates").await.json().await.unwrap();
    assert_eq!(names(&listed), ["nodejs", "python", "rust", "ubuntu"]);
}

#[actix_web::test]
async fn an_audit_event_that_cannot_be_read_is_left_out_of_its_page() {
    let app = TestApp::spawn().await;
    let admin_token = app.admin_token("root").await;
    let admin = app.authed_client(&admin_token);
    let broken = uuid::Uuid::new_v4();
    sql(
        &app,
        &format!(
            "INSERT INTO audit_events (id, action, resource_type, details, outcome, created_at) \
             VALUES ('{broken}', 'auth.login', 'user', '{UNREADABLE}', 'success', now())"
        ),
    )
    .await;
    // The sign-up's own event is written in the background.
    eventually(
        Duration::from_secs(20),
        "a readable event listed",
        async || {
            let page = admin.get("/api/v1/admin/audit").await;
            assert_eq!(page.status(), 200);
            let page: Value = page.json().await.unwrap();
            let ids: Vec<&str> = page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["id"].as_str().unwrap())
                .collect();
            assert!(!ids.contains(&broken.to_string().as_str()));
            if ids.is_empty() { Err(page) } else { Ok(()) }
        },
    )
    .await;
}
