//! NUL characters are bad input, not server errors (issue 12, point 6): PostgreSQL
//! refuses them in `text` and `jsonb`, so before the edge and the JSON extractor
//! refused them, a `\u0000` in a login name, a search, a template id, an admin
//! filter or a template field came back as a 500. Each place is tried here.

use serde_json::{Value, json};

use crate::helpers::{PASSWORD, TestApp, assert_error};
use crate::templates::custom_template;

/// A 422 whose `context.fields` names `field`.
async fn refused(response: reqwest::Response, field: &str) {
    let body = assert_error(response, 422, "validation_error").await;
    assert!(
        body["context"]["fields"].get(field).is_some(),
        "{field} is not named: {body}"
    );
}

#[actix_web::test]
async fn a_nul_in_a_json_body_is_a_422_naming_the_field() {
    let app = TestApp::spawn().await;
    let admin_token = app.admin_token("root").await;
    let admin = app.authed_client(&admin_token);

    refused(app.login("root\u{0}", PASSWORD).await, "username_or_email").await;
    refused(app.register("nul\u{0}user").await, "username").await;
    refused(
        app.post_json("/api/v1/auth/refresh", &json!({"refresh_token": "\u{0}"}))
            .await,
        "refresh_token",
    )
    .await;

    // Template fields, at the top and deep inside cloud_init, and member names.
    let mut template = custom_template("nul-test");
    template["description"] = json!("before\u{0}after");
    refused(
        admin.post("/api/v1/templates", &template).await,
        "description",
    )
    .await;
    let mut template = custom_template("nul-test");
    template["cloud_init"] = json!({"runcmd": [["echo", "a\u{0}"]]});
    refused(
        admin.post("/api/v1/templates", &template).await,
        "cloud_init.runcmd[0][1]",
    )
    .await;
    let mut template = custom_template("nul-test");
    template["environment_variables"] = json!({"A\u{0}B": "x"});
    refused(
        admin.post("/api/v1/templates", &template).await,
        "environment_variables",
    )
    .await;
    refused(
        admin
            .put("/api/v1/templates/python", &json!({"version": "\u{0}"}))
            .await,
        "version",
    )
    .await;
    assert_error(
        admin.get("/api/v1/templates/nul-test").await,
        404,
        "not_found",
    )
    .await;

    // Environments: the name, variables, and the older apps' fields.
    refused(
        admin
            .post(
                "/api/v1/environments",
                &json!({"name": "a\u{0}", "template_id": "python"}),
            )
            .await,
        "name",
    )
    .await;
    refused(
        admin
            .post(
                "/api/v1/environments",
                &json!({"name": "ok", "template": "py\u{0}thon"}),
            )
            .await,
        "template",
    )
    .await;
    refused(
        admin
            .post(
                "/api/v1/environments",
                &json!({"name": "ok", "template_id": "python",
                        "environment_variables": {"A": "\u{0}"}}),
            )
            .await,
        "environment_variables.A",
    )
    .await;
    let listed: Value = admin
        .get("/api/v1/environments")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed, json!([]), "nothing was created");

    // Admin changes.
    refused(
        app.client
            .patch(app.url("/api/v1/admin/users/00000000-0000-0000-0000-000000000000"))
            .bearer_auth(&admin_token)
            .json(&json!({"subscription_plan": "pro\u{0}"}))
            .send()
            .await
            .unwrap(),
        "subscription_plan",
    )
    .await;
}

#[actix_web::test]
async fn a_nul_in_the_query_is_a_422_naming_the_parameter() {
    let app = TestApp::spawn().await;
    let admin_token = app.admin_token("root").await;
    let admin = app.authed_client(&admin_token);
    for (path, field) in [
        ("/api/v1/templates?search=py%00", "search"),
        ("/api/v1/templates?category=%00", "category"),
        ("/api/v1/environments?status=running%00", "status"),
        ("/api/v1/admin/users?q=%00", "q"),
        ("/api/v1/admin/audit?resource_id=%00", "resource_id"),
        ("/api/v1/admin/audit?action=auth.login%00", "action"),
        ("/api/v1/admin/audit?since=2026-01-01T00:00:00Z%00", "since"),
        ("/api/v1/admin/users?per_page=1&%00=1", "query"),
    ] {
        refused(admin.get(path).await, field).await;
    }
    // Without a token too: the query is refused before anything reads it.
    refused(
        app.get("/api/v1/ws/logs/00000000-0000-0000-0000-000000000000?token=%00")
            .await,
        "token",
    )
    .await;
    // An encoded `%` followed by 00 is just text.
    let found = admin.get("/api/v1/templates?search=%2500").await;
    assert_eq!(found.status(), 200);
}

#[actix_web::test]
async fn a_nul_in_the_path_is_not_found() {
    let app = TestApp::spawn().await;
    let admin_token = app.admin_token("root").await;
    let admin = app.authed_client(&admin_token);
    for path in [
        "/api/v1/templates/%00",
        "/api/v1/templates/py%00thon",
        "/api/v1/environments/%00",
        "/api/v1/admin/users/%00",
    ] {
        assert_error(admin.get(path).await, 404, "not_found").await;
    }
    assert_error(
        admin
            .put("/api/v1/templates/python%00", &json!({"version": "2"}))
            .await,
        404,
        "not_found",
    )
    .await;
    assert_error(
        admin.delete("/api/v1/templates/python%00").await,
        404,
        "not_found",
    )
    .await;
    // Nothing was changed on the way.
    let python: Value = admin
        .get("/api/v1/templates/python")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(python["status"], "active");
    assert_ne!(python["version"], "2");
}
