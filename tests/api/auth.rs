//! Accounts: registration, login, token rotation and revocation, lockout.

use crate::helpers::{PASSWORD, SECRET_KEY, TestApp, assert_error};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use diesel_async::RunQueryDsl;
use serde_json::{Value, json};

const USER_FIELDS: [&str; 9] = [
    "id",
    "username",
    "email",
    "full_name",
    "subscription_plan",
    "is_active",
    "is_verified",
    "created_at",
    "updated_at",
];

fn assert_user_object(user: &Value) {
    for field in USER_FIELDS {
        assert!(user.get(field).is_some(), "user lacks {field}: {user}");
    }
    let text = user.to_string();
    assert!(
        !text.contains("argon2") && !text.contains("password") && !text.contains("token"),
        "{text}"
    );
    assert!(user["created_at"].as_str().unwrap().ends_with('Z'));
}

fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

#[actix_web::test]
async fn register_returns_tokens_and_the_user() {
    let app = TestApp::spawn().await;
    let body = app.signed_up("alice").await;
    assert_eq!(body["token_type"], "bearer");
    assert_eq!(body["expires_in"], 86_400);
    assert_user_object(&body["user"]);
    assert_eq!(body["user"]["username"], "alice");
    assert_eq!(body["user"]["full_name"], "alice Tester");
    assert_eq!(body["user"]["subscription_plan"], "free");
    assert_eq!(body["user"]["is_active"], true);
    assert_eq!(body["user"]["is_verified"], false);
    assert!(claims(body["access_token"].as_str().unwrap())["exp"].is_i64());

    let me = app
        .authed_client(body["access_token"].as_str().unwrap())
        .get("/api/v1/auth/me")
        .await;
    assert_eq!(me.status(), 200);
    let me: Value = me.json().await.unwrap();
    assert_user_object(&me);
    assert_eq!(me["id"], body["user"]["id"]);

    // Stored as an Argon2id hash, never in clear.
    let mut conn = app.db.connect().await;
    let hash: Vec<HashRow> = diesel::sql_query("SELECT password_hash FROM users")
        .load(&mut conn)
        .await
        .unwrap();
    assert!(
        hash[0]
            .password_hash
            .starts_with("$argon2id$v=19$m=19456,t=2,p=1$")
    );
}

#[derive(diesel::QueryableByName)]
struct HashRow {
    #[diesel(sql_type = diesel::sql_types::Text)]
    password_hash: String,
}

#[actix_web::test]
async fn register_validates_every_field_at_once() {
    let app = TestApp::spawn().await;
    let response = app
        .post_json(
            "/api/v1/auth/register",
            &json!({"username": "a b", "email": "not-an-email", "password": "short", "full_name": null}),
        )
        .await;
    let body = assert_error(response, 422, "validation_error").await;
    let fields = &body["context"]["fields"];
    for field in ["username", "email", "password"] {
        assert!(fields[field].is_array(), "{field} missing from {body}");
    }
    for weak in [
        "alllowercase1",
        "ALLUPPERCASE1",
        "NoDigitsHere",
        &format!("Aa1{}", "x".repeat(126)),
    ] {
        let response = app
            .post_json(
                "/api/v1/auth/register",
                &json!({"username": "bob", "email": "bob@example.com", "password": weak}),
            )
            .await;
        let body = assert_error(response, 422, "validation_error").await;
        assert!(
            body["context"]["fields"]["password"].is_array(),
            "{weak}: {body}"
        );
    }
}

#[actix_web::test]
async fn duplicates_are_409_naming_the_field() {
    let app = TestApp::spawn().await;
    app.signed_up("carol").await;
    let same_name = app
        .post_json(
            "/api/v1/auth/register",
            &json!({"username": "CAROL", "email": "other@example.com", "password": PASSWORD}),
        )
        .await;
    let body = assert_error(same_name, 409, "conflict").await;
    assert!(
        body["detail"].as_str().unwrap().contains("username"),
        "{body}"
    );
    assert_eq!(body["context"]["field"], "username");

    let same_email = app
        .post_json(
            "/api/v1/auth/register",
            &json!({"username": "carol2", "email": "Carol@Example.com", "password": PASSWORD}),
        )
        .await;
    let body = assert_error(same_email, 409, "conflict").await;
    assert!(
        body["detail"].as_str().unwrap().contains("e-mail"),
        "{body}"
    );
    assert_eq!(body["context"]["field"], "email");
}

#[actix_web::test]
async fn login_by_username_or_email_and_wrong_password() {
    let app = TestApp::spawn().await;
    app.signed_up("dave").await;
    for login in ["dave", "DAVE", "dave@example.com"] {
        let response = app.login(login, PASSWORD).await;
        assert_eq!(response.status(), 200, "{login}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["token_type"], "bearer");
        assert!(body["refresh_token"].is_string() && body["expires_in"].is_u64());
        assert_user_object(&body["user"]);
        assert!(body["user"]["last_login"].is_string());
    }
    assert_error(
        app.login("dave", "Wrong-password-1").await,
        401,
        "unauthorized",
    )
    .await;
    assert_error(app.login("nobody", PASSWORD).await, 401, "unauthorized").await;
}

#[actix_web::test]
async fn bad_bearer_tokens_are_401() {
    let app = TestApp::spawn().await;
    let body = app.signed_up("erin").await;
    let access = body["access_token"].as_str().unwrap();
    let refresh = body["refresh_token"].as_str().unwrap();

    assert_error(app.get("/api/v1/auth/me").await, 401, "unauthorized").await;
    // A refresh token is not a bearer token.
    assert_error(
        app.authed_client(refresh).get("/api/v1/auth/me").await,
        401,
        "unauthorized",
    )
    .await;
    // An access token cannot refresh.
    assert_error(
        app.post_json("/api/v1/auth/refresh", &json!({"refresh_token": access}))
            .await,
        401,
        "unauthorized",
    )
    .await;

    // alg: none with the same claims.
    let parts: Vec<&str> = access.split('.').collect();
    let none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#),
        parts[1]
    );
    assert_error(
        app.authed_client(&none).get("/api/v1/auth/me").await,
        401,
        "unauthorized",
    )
    .await;
    // Tampered signature.
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        parts[1],
        URL_SAFE_NO_PAD.encode(b"not the signature")
    );
    assert_error(
        app.authed_client(&tampered).get("/api/v1/auth/me").await,
        401,
        "unauthorized",
    )
    .await;
    // Expired, though correctly signed with the server's key.
    let mut expired_claims = claims(access);
    expired_claims["exp"] = json!(chrono::Utc::now().timestamp() - 3600);
    let key =
        devpocket::auth::tokens::derive_key(SECRET_KEY.as_bytes(), "devpocket jwt signing v1");
    let expired = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &expired_claims,
        &jsonwebtoken::EncodingKey::from_secret(&key).unwrap(),
    )
    .unwrap();
    let body = assert_error(
        app.authed_client(&expired).get("/api/v1/auth/me").await,
        401,
        "unauthorized",
    )
    .await;
    assert!(
        body["detail"].as_str().unwrap().contains("expired"),
        "{body}"
    );
    // An HS384 token signed with the right key is still refused: one algorithm only.
    let hs384 = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS384),
        &claims(access),
        &jsonwebtoken::EncodingKey::from_secret(&key).unwrap(),
    )
    .unwrap();
    assert_error(
        app.authed_client(&hs384).get("/api/v1/auth/me").await,
        401,
        "unauthorized",
    )
    .await;
}

#[actix_web::test]
async fn refresh_rotates_and_reuse_revokes_the_family() {
    let app = TestApp::spawn().await;
    let first = app.signed_up("frank").await;
    let old_refresh = first["refresh_token"].as_str().unwrap();

    let response = app
        .post_json(
            "/api/v1/auth/refresh",
            &json!({"refresh_token": old_refresh}),
        )
        .await;
    assert_eq!(response.status(), 200);
    let second: Value = response.json().await.unwrap();
    for field in ["access_token", "refresh_token", "token_type", "expires_in"] {
        assert!(second.get(field).is_some(), "{field}");
    }
    assert_ne!(second["refresh_token"], first["refresh_token"]);
    let new_access = second["access_token"].as_str().unwrap();
    assert_eq!(
        app.authed_client(new_access)
            .get("/api/v1/auth/me")
            .await
            .status(),
        200
    );

    // Someone presents the used token again: the whole family is revoked.
    let reuse = app
        .post_json(
            "/api/v1/auth/refresh",
            &json!({"refresh_token": old_refresh}),
        )
        .await;
    assert_error(reuse, 401, "unauthorized").await;
    let newer = app
        .post_json(
            "/api/v1/auth/refresh",
            &json!({"refresh_token": second["refresh_token"]}),
        )
        .await;
    assert_error(newer, 401, "unauthorized").await;
    assert_error(
        app.authed_client(new_access).get("/api/v1/auth/me").await,
        401,
        "unauthorized",
    )
    .await;

    // Another sign-in of the same user is a different family and still works.
    assert_eq!(app.login("frank", PASSWORD).await.status(), 200);
}

#[actix_web::test]
async fn logout_revokes_at_once() {
    let app = TestApp::spawn().await;
    let body = app.signed_up("grace").await;
    let access = body["access_token"].as_str().unwrap();
    let other_session: Value = app.login("grace", PASSWORD).await.json().await.unwrap();

    let response = app
        .authed_client(access)
        .post("/api/v1/auth/logout", &json!({}))
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({"success": true})
    );

    assert_error(
        app.authed_client(access).get("/api/v1/auth/me").await,
        401,
        "unauthorized",
    )
    .await;
    let refresh = app
        .post_json(
            "/api/v1/auth/refresh",
            &json!({"refresh_token": body["refresh_token"]}),
        )
        .await;
    assert_error(refresh, 401, "unauthorized").await;
    // The user's other device stays signed in.
    let other = app.authed_client(other_session["access_token"].as_str().unwrap());
    assert_eq!(other.get("/api/v1/auth/me").await.status(), 200);
}

#[actix_web::test]
async fn deactivation_takes_effect_at_once() {
    let app = TestApp::spawn().await;
    let body = app.signed_up("heidi").await;
    let access = body["access_token"].as_str().unwrap();
    let mut conn = app.db.connect().await;
    diesel::sql_query("UPDATE users SET is_active = false WHERE username = 'heidi'")
        .execute(&mut conn)
        .await
        .unwrap();
    assert_error(
        app.authed_client(access).get("/api/v1/auth/me").await,
        401,
        "unauthorized",
    )
    .await;
    let refresh = app
        .post_json(
            "/api/v1/auth/refresh",
            &json!({"refresh_token": body["refresh_token"]}),
        )
        .await;
    assert_error(refresh, 401, "unauthorized").await;
    assert_error(app.login("heidi", PASSWORD).await, 403, "forbidden").await;
}

#[actix_web::test]
async fn success_resets_the_failure_count() {
    let app = TestApp::spawn().await;
    app.signed_up("judy").await;
    for _ in 0..4 {
        assert_error(
            app.login("judy", "Wrong-password-1").await,
            401,
            "unauthorized",
        )
        .await;
    }
    assert_eq!(app.login("judy", PASSWORD).await.status(), 200);
    for _ in 0..4 {
        assert_error(
            app.login("judy", "Wrong-password-1").await,
            401,
            "unauthorized",
        )
        .await;
    }
    assert_eq!(app.login("judy", PASSWORD).await.status(), 200);
}

#[actix_web::test]
async fn a_stranger_cannot_lock_the_owner_out() {
    // Behind a trusted proxy, each client address has its own counter.
    let app = TestApp::spawn_with(&[("DEVPOCKET_TRUSTED_PROXIES", "127.0.0.1")]).await;
    app.signed_up("mallory_target").await;
    let from = |ip: &'static str, password: &'static str| {
        app.client
            .post(app.url("/api/v1/auth/login"))
            .header("x-forwarded-for", ip)
            .json(&json!({"username_or_email": "mallory_target", "password": password}))
            .send()
    };
    for _ in 0..5 {
        from("203.0.113.66", "Wrong-password-1").await.unwrap();
    }
    assert_eq!(from("203.0.113.66", PASSWORD).await.unwrap().status(), 423);
    assert_eq!(from("198.51.100.7", PASSWORD).await.unwrap().status(), 200);
}

#[actix_web::test]
async fn forwarded_for_from_an_untrusted_peer_is_ignored() {
    let app = TestApp::spawn().await;
    app.signed_up("oscar").await;
    for i in 0..5 {
        app.client
            .post(app.url("/api/v1/auth/login"))
            .header("x-forwarded-for", format!("203.0.113.{i}"))
            .json(&json!({"username_or_email": "oscar", "password": "Wrong-password-1"}))
            .send()
            .await
            .unwrap();
    }
    // All five came from 127.0.0.1 whatever they claimed.
    assert_eq!(app.login("oscar", PASSWORD).await.status(), 423);
}
