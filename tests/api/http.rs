//! HTTP hygiene: request ids, security headers, CORS, body limits, the error
//! envelope for every failure, and trailing slashes without redirects.

use crate::helpers::{TestApp, assert_error};
use serde_json::json;

#[actix_web::test]
async fn request_ids_are_generated_or_echoed() {
    let app = TestApp::spawn().await;
    let generated = app.get("/health/live").await;
    let id = generated.headers()["x-request-id"].to_str().unwrap();
    assert_eq!(id.len(), 36, "a uuid: {id}");

    let echoed = app
        .client
        .get(app.url("/health/live"))
        .header("x-request-id", "phone-42.abc")
        .send()
        .await
        .unwrap();
    assert_eq!(echoed.headers()["x-request-id"], "phone-42.abc");

    // Garbage is not echoed into our logs or headers.
    let replaced = app
        .client
        .get(app.url("/health/live"))
        .header("x-request-id", "a b\"<script>")
        .send()
        .await
        .unwrap();
    assert_ne!(replaced.headers()["x-request-id"], "a b\"<script>");
}

#[actix_web::test]
async fn security_headers_on_every_response() {
    let app = TestApp::spawn().await;
    for path in ["/health", "/no/such/path"] {
        let response = app.get(path).await;
        let headers = response.headers();
        assert_eq!(headers["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(headers["x-frame-options"], "DENY", "{path}");
        assert_eq!(headers["referrer-policy"], "no-referrer", "{path}");
    }
}

#[actix_web::test]
async fn cors_allows_only_configured_origins() {
    let app = TestApp::spawn_with(&[("ALLOWED_ORIGINS", "https://console.example.com")]).await;
    let preflight = |origin: &'static str| {
        app.client
            .request(reqwest::Method::OPTIONS, app.url("/api/v1/auth/login"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type")
            .send()
    };
    let allowed = preflight("https://console.example.com").await.unwrap();
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://console.example.com"
    );
    let denied = preflight("https://evil.example.net").await.unwrap();
    assert!(
        denied
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
}

#[actix_web::test]
async fn oversized_json_gets_a_clear_413() {
    let app = TestApp::spawn_with(&[("DEVPOCKET_MAX_JSON_BYTES", "1024")]).await;
    let big = "x".repeat(4096);
    let response = app
        .post_json(
            "/api/v1/auth/register",
            &json!({"username": "big", "email": "b@example.com", "password": big}),
        )
        .await;
    let body = assert_error(response, 413, "payload_too_large").await;
    assert!(body["detail"].as_str().unwrap().contains("1024"));
}

#[actix_web::test]
async fn every_failure_uses_the_envelope() {
    let app = TestApp::spawn().await;
    assert_error(app.get("/api/v1/nothing-here").await, 404, "not_found").await;

    let malformed = app
        .client
        .post(app.url("/api/v1/auth/login"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_error(malformed, 400, "malformed_json").await;

    let not_json = app
        .client
        .post(app.url("/api/v1/auth/login"))
        .header("content-type", "text/plain")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_error(not_json, 415, "unsupported_media_type").await;

    let wrong_type = app
        .post_json(
            "/api/v1/auth/login",
            &json!({"username_or_email": 5, "password": "x"}),
        )
        .await;
    let body = assert_error(wrong_type, 422, "validation_error").await;
    assert!(
        body["context"]["fields"]["username_or_email"].is_array(),
        "{body}"
    );

    let missing = app
        .post_json("/api/v1/auth/login", &json!({"password": "x"}))
        .await;
    let body = assert_error(missing, 422, "validation_error").await;
    assert!(
        body["context"]["fields"]["username_or_email"].is_array(),
        "{body}"
    );

    let empty = app
        .client
        .post(app.url("/api/v1/auth/login"))
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_error(empty, 400, "empty_body").await;
}

#[actix_web::test]
async fn trailing_slashes_are_served_without_redirects() {
    let app = TestApp::spawn().await;
    let response = app
        .post_json(
            "/api/v1/auth/register/",
            &json!({"username": "slashy", "email": "slashy@example.com", "password": "Correct-horse-9"}),
        )
        .await;
    assert_eq!(response.status(), 201);
    let token = response.json::<serde_json::Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let client = app.authed_client(&token);
    let me = client.get("/api/v1/auth/me/").await;
    assert_eq!(me.status(), 200);
    assert_eq!(client.get("//api/v1//auth/me").await.status(), 200);
    assert_eq!(app.get("/health/").await.status(), 200);
    // The query survives, and so do path parameters.
    let listed = client.get("/api/v1/environments/?status=bogus").await;
    assert_error(listed, 422, "validation_error").await;
    let template: serde_json::Value = client
        .get("/api/v1/templates/python/")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(template["name"], "python");
}
