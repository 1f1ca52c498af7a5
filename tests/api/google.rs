//! Google sign-in (issue 17, point 6), against a local stand-in for Google's key
//! set (`helpers::jwks`) and ID tokens signed as Google signs them: a new user gets
//! an account and the same answer as login; a token that fails verification is a
//! 401 naming why and makes nothing; the key set is cached and refetched on an
//! unknown key id, not more; without `GOOGLE_CLIENT_IDS` it is off. Linking
//! accounts is in `google/linking.rs`.

mod linking;

use std::collections::BTreeSet;

use diesel_async::RunQueryDsl;
use serde_json::{Value, json};

use crate::audit::audit_until;
use crate::helpers::{FakeJwks, PASSWORD, SigningKey, TestApp, assert_error};

pub const CLIENT_ID: &str = "devpocket-test.apps.googleusercontent.com";

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// The claims of a Google ID token for this server's app, issued now for an hour.
pub fn claims(sub: &str, email: &str, email_verified: bool) -> Value {
    json!({
        "iss": "https://accounts.google.com",
        "azp": CLIENT_ID,
        "aud": CLIENT_ID,
        "sub": sub,
        "email": email,
        "email_verified": email_verified,
        "name": "Alice Liddell",
        "iat": now(),
        "exp": now() + 3600,
    })
}

/// The app, accepting ID tokens for our app (and another) checked against `jwks`,
/// with `extra` settings.
pub async fn spawn(jwks: &FakeJwks, extra: &[(&str, &str)]) -> TestApp {
    let ids = format!("other-app.apps.googleusercontent.com, {CLIENT_ID}");
    let mut settings = vec![
        ("GOOGLE_CLIENT_IDS", ids.as_str()),
        ("GOOGLE_JWKS_URL", jwks.url.as_str()),
    ];
    settings.extend_from_slice(extra);
    TestApp::spawn_with(&settings).await
}

pub async fn google(app: &TestApp, body: Value) -> reqwest::Response {
    app.post_json("/api/v1/auth/google", &body).await
}

pub async fn sign_in(app: &TestApp, token: &str) -> reqwest::Response {
    google(app, json!({ "id_token": token })).await
}

#[derive(diesel::QueryableByName)]
struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

/// How many rows `query` (a `SELECT count(*) AS n …`) counts.
pub async fn count(app: &TestApp, query: &str) -> i64 {
    let mut conn = app.db.connect().await;
    let row: Count = diesel::sql_query(query)
        .get_result(&mut conn)
        .await
        .unwrap();
    row.n
}

fn keys(object: &Value) -> BTreeSet<String> {
    object.as_object().unwrap().keys().cloned().collect()
}

#[actix_web::test]
async fn a_new_google_user_gets_an_account_and_the_same_answer_as_login() {
    let jwks = FakeJwks::start(&[SigningKey::nth(0)], 3600);
    let app = spawn(&jwks, &[]).await;
    let info: Value = app.get("/api/v1/info").await.json().await.unwrap();
    assert_eq!(info["features"]["google_sign_in"], true);
    // The address's local part is someone's username already.
    let login: Value = app.signed_up("alice").await;
    let token = SigningKey::nth(0).sign(&claims("1001", "alice@gmail.com", true));

    // camelCase, with the access token the apps send (null here).
    let response = google(&app, json!({"idToken": token, "accessToken": null})).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(keys(&body), keys(&login), "{body}");
    assert_eq!(keys(&body["user"]), keys(&login["user"]), "{body}");
    assert_eq!(body["token_type"], "bearer");
    let user = &body["user"];
    assert_eq!(user["username"], "alice2");
    assert_eq!(user["email"], "alice@gmail.com");
    assert_eq!(user["full_name"], "Alice Liddell");
    assert_eq!(user["is_verified"], true);
    assert_eq!(user["subscription_plan"], "free");
    assert!(user["last_login"].is_string(), "{user}");
    let me: Value = app
        .authed_client(body["access_token"].as_str().unwrap())
        .get("/api/v1/auth/me")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(me["id"], user["id"]);

    // Again, snake_case and the other spelling of the issuer: the same account.
    let mut again = claims("1001", "alice@gmail.com", true);
    again["iss"] = json!("accounts.google.com");
    let response = sign_in(&app, &SigningKey::nth(0).sign(&again)).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["user"]["id"], user["id"]);
    let linked = "SELECT count(*) AS n FROM users WHERE google_sub = '1001'";
    assert_eq!(count(&app, linked).await, 1);
    assert_eq!(count(&app, "SELECT count(*) AS n FROM users").await, 2);
    // Nobody can sign in to it with a password until one is set.
    let password = app.login("alice2", PASSWORD).await;
    assert_error(password, 401, "unauthorized").await;
}

#[actix_web::test]
async fn tokens_that_fail_verification_are_401_naming_why_and_make_nothing() {
    let jwks = FakeJwks::start(&[SigningKey::nth(0)], 3600);
    let app = spawn(&jwks, &[]).await;
    let admin = app.admin_token("root").await;
    let key = SigningKey::nth(0);
    let good = || claims("2002", "bob@gmail.com", true);
    let with = |name: &str, value: Value| {
        let mut claims = good();
        claims[name] = value;
        claims
    };
    let mut expired = with("exp", json!(now() - 3600));
    expired["iat"] = json!(now() - 7200);
    let valid = key.sign(&good());
    let (head, rest) = valid.split_once('.').unwrap();
    let (_, signature) = rest.split_once('.').unwrap();
    let other_payload = key.sign(&with("sub", json!("9999")));
    let other_payload = other_payload.split('.').nth(1).unwrap();
    let cases = [
        (
            key.sign(&with(
                "aud",
                json!("someone-else.apps.googleusercontent.com"),
            )),
            "audience",
        ),
        (
            key.sign(&with("iss", json!("https://evil.example.com"))),
            "not issued by Google",
        ),
        (key.sign(&expired), "expired"),
        (SigningKey::nth(1).sign(&good()), "unknown `kid`"),
        (
            format!("{head}.{other_payload}.{signature}"),
            "signature is not valid",
        ),
        (key.sign(&with("iat", json!(now() + 3600))), "not valid yet"),
        ("not-a-jwt".to_owned(), "not a well-formed JWT"),
    ];
    for (token, reason) in &cases {
        let body = assert_error(sign_in(&app, token).await, 401, "unauthorized").await;
        let detail = body["detail"].as_str().unwrap();
        assert!(detail.contains(reason), "{reason}: {detail}");
    }
    // Missing or empty: 422 on `id_token`.
    for body in [json!({}), json!({"id_token": "  "})] {
        let response = google(&app, body).await;
        let error = assert_error(response, 422, "validation_error").await;
        assert!(error["context"]["fields"]["id_token"].is_array(), "{error}");
    }
    assert_eq!(count(&app, "SELECT count(*) AS n FROM users").await, 1);

    let failures = audit_until(&app, &admin, "action=auth.google_sign_in", |events| {
        events.len() == cases.len()
    })
    .await;
    let reasons: BTreeSet<&str> = failures
        .iter()
        .map(|e| {
            assert_eq!(e["outcome"], "failure", "{e}");
            e["details"]["reason"].as_str().unwrap()
        })
        .collect();
    let expected = [
        "wrong_audience",
        "wrong_issuer",
        "expired",
        "unknown_key",
        "bad_signature",
        "not_yet_valid",
        "malformed",
    ];
    assert_eq!(reasons, expected.into_iter().collect());
}

#[actix_web::test]
async fn the_key_set_is_reused_and_refetched_for_an_unknown_key_not_more() {
    let (old, new) = (SigningKey::nth(0), SigningKey::nth(1));
    let jwks = FakeJwks::start(&[old], 3600);
    let app = spawn(&jwks, &[]).await;
    let token =
        |key: &SigningKey, sub: &str| key.sign(&claims(sub, &format!("u{sub}@gmail.com"), true));
    assert_eq!(jwks.fetches(), 0, "fetched when needed, not at start-up");
    assert_eq!(sign_in(&app, &token(old, "31")).await.status(), 200);
    assert_eq!(sign_in(&app, &token(old, "32")).await.status(), 200);
    assert_eq!(jwks.fetches(), 1, "a fresh set is reused");

    // Google rotates: a token signed with the new key fetches the set again.
    jwks.publish(&[new]);
    assert_eq!(sign_in(&app, &token(new, "33")).await.status(), 200);
    assert_eq!(jwks.fetches(), 2);
    assert_eq!(sign_in(&app, &token(new, "34")).await.status(), 200);
    assert_eq!(jwks.fetches(), 2);

    // Made-up key ids (and the retired key) do not make it fetch again at once.
    for kid in ["made-up-1", "made-up-2", "key-0"] {
        let forged = SigningKey::nth(2).sign_as(kid, &claims("35", "x@gmail.com", true));
        let body = assert_error(sign_in(&app, &forged).await, 401, "unauthorized").await;
        assert!(
            body["detail"].as_str().unwrap().contains("unknown `kid`"),
            "{body}"
        );
    }
    assert_eq!(jwks.fetches(), 2);
}

#[actix_web::test]
async fn a_key_set_without_max_age_to_keep_is_fetched_each_time() {
    let key = SigningKey::nth(0);
    let jwks = FakeJwks::start(&[key], 0);
    let app = spawn(&jwks, &[]).await;
    for (n, sub) in ["41", "42"].into_iter().enumerate() {
        let token = key.sign(&claims(sub, &format!("u{sub}@gmail.com"), true));
        assert_eq!(sign_in(&app, &token).await.status(), 200);
        assert_eq!(jwks.fetches(), n + 1);
    }
}

#[actix_web::test]
async fn without_client_ids_google_sign_in_is_off() {
    let app = TestApp::spawn().await;
    let info: Value = app.get("/api/v1/info").await.json().await.unwrap();
    assert_eq!(info["features"]["google_sign_in"], false);
    let token = SigningKey::nth(0).sign(&claims("5005", "off@gmail.com", true));
    let body = assert_error(sign_in(&app, &token).await, 503, "service_unavailable").await;
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("Google sign-in is not configured"),
        "{body}"
    );
}

#[actix_web::test]
async fn google_sign_in_shares_the_sign_up_limit_per_address() {
    let key = SigningKey::nth(0);
    let jwks = FakeJwks::start(&[key], 3600);
    let app = spawn(&jwks, &[("DEVPOCKET_RATE_LIMIT_REGISTER_IP", "2/1h")]).await;
    app.signed_up("grace").await;
    let token = key.sign(&claims("81", "grace@gmail.com", true));
    assert_eq!(sign_in(&app, &token).await.status(), 200);
    let refused = assert_error(sign_in(&app, &token).await, 429, "rate_limited").await;
    assert!(
        refused["context"]["retry_after_seconds"].is_u64(),
        "{refused}"
    );
    assert_eq!(jwks.fetches(), 1, "refused before the token is checked");
}
