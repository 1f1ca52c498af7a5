//! Linking accounts to Google: at sign-in, an account with the same e-mail address
//! is linked only when Google and the account both hold the address verified; from
//! the profile, a verified account links and unlinks a Google identity, which
//! links to one account at most. A deactivated account is refused as at login.

use diesel_async::RunQueryDsl;
use serde_json::{Value, json};

use super::{claims, count, sign_in, spawn};
use crate::audit::audit_until;
use crate::helpers::{FakeJwks, PASSWORD, SigningKey, TestApp, assert_error};

async fn sql(app: &TestApp, statement: &str) {
    let mut conn = app.db.connect().await;
    diesel::sql_query(statement)
        .execute(&mut conn)
        .await
        .unwrap();
}

async fn verified(app: &TestApp, username: &str) {
    sql(
        app,
        &format!("UPDATE users SET is_verified = true WHERE username = '{username}'"),
    )
    .await;
}

async fn linked(app: &TestApp, username: &str, sub: &str) -> bool {
    let query = format!(
        "SELECT count(*) AS n FROM users WHERE username = '{username}' AND google_sub = '{sub}'"
    );
    count(app, &query).await == 1
}

#[actix_web::test]
async fn an_account_with_the_address_is_linked_only_when_both_sides_verified_it() {
    let key = SigningKey::nth(0);
    let jwks = FakeJwks::start(&[key], 3600);
    let app = spawn(&jwks, &[]).await;
    for name in ["bob", "carol", "dave"] {
        app.signed_up(name).await;
    }
    verified(&app, "bob").await;
    verified(&app, "dave").await;

    // Verified here and at Google (the address in another case): linked.
    let bob = key.sign(&claims("61", "Bob@Example.com", true));
    let response = sign_in(&app, &bob).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["user"]["username"], "bob");
    assert!(linked(&app, "bob", "61").await);
    assert_eq!(
        app.login("bob", PASSWORD).await.status(),
        200,
        "password kept"
    );

    // Not verified here, or not at Google: refused, nothing linked or made.
    for (name, sub, google_verified) in [("carol", "62", true), ("dave", "63", false)] {
        let token = key.sign(&claims(
            sub,
            &format!("{name}@example.com"),
            google_verified,
        ));
        let body = assert_error(
            sign_in(&app, &token).await,
            409,
            "google_link_requires_verification",
        )
        .await;
        let detail = body["detail"].as_str().unwrap();
        assert!(
            detail.contains("Sign in with your password") && detail.contains("profile"),
            "{detail}"
        );
        assert!(!linked(&app, name, sub).await, "{name}");
    }
    assert_eq!(count(&app, "SELECT count(*) AS n FROM users").await, 3);

    // A deactivated account is refused as at login.
    sql(
        &app,
        "UPDATE users SET is_active = false WHERE username = 'bob'",
    )
    .await;
    assert_error(sign_in(&app, &bob).await, 403, "forbidden").await;
}

#[actix_web::test]
async fn a_verified_account_links_and_unlinks_google_from_its_profile() {
    let key = SigningKey::nth(0);
    let jwks = FakeJwks::start(&[key], 3600);
    // Account changes made in SQL are seen at once.
    let app = spawn(&jwks, &[("DEVPOCKET_SESSION_CACHE_TTL", "0")]).await;
    let admin = app.admin_token("root").await;
    let erin = app.signed_up("erin").await;
    let erin_id = erin["user"]["id"].clone();
    let erin = app.authed_client(erin["access_token"].as_str().unwrap());
    // Another address, which Google has not even verified: the owner proved both.
    let token = key.sign(&claims("71", "erin.personal@gmail.com", false));
    let link = json!({ "id_token": token });

    let body = assert_error(
        erin.post("/api/v1/users/me/google", &link).await,
        403,
        "email_not_verified",
    )
    .await;
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("Verify your e-mail address"),
        "{body}"
    );
    assert!(!linked(&app, "erin", "71").await);

    verified(&app, "erin").await;
    // A bad token is 422, not 401: the session is fine.
    let mut stale = claims("71", "erin.personal@gmail.com", false);
    stale["exp"] = json!(chrono::Utc::now().timestamp() - 3600);
    let expired = json!({ "idToken": key.sign(&stale) });
    let body = assert_error(
        erin.post("/api/v1/users/me/google", &expired).await,
        422,
        "validation_error",
    )
    .await;
    assert!(
        body["detail"].as_str().unwrap().contains("expired"),
        "{body}"
    );

    for _ in 0..2 {
        let response = erin.post("/api/v1/users/me/google", &link).await;
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["google_linked"], true);
    }
    assert!(linked(&app, "erin", "71").await);
    let body: Value = sign_in(&app, &token).await.json().await.unwrap();
    assert_eq!(body["user"]["id"], erin_id);

    // The Google account is erin's: nobody else may link it.
    let frank = app.user_token("frank").await;
    verified(&app, "frank").await;
    assert_error(
        app.authed_client(&frank)
            .post("/api/v1/users/me/google", &link)
            .await,
        409,
        "google_linked_elsewhere",
    )
    .await;
    // Nor may erin link a second Google account without unlinking the first.
    let other = json!({ "id_token": key.sign(&claims("72", "erin2@gmail.com", true)) });
    assert_error(
        erin.post("/api/v1/users/me/google", &other).await,
        409,
        "google_already_linked",
    )
    .await;

    for _ in 0..2 {
        let response = erin.delete("/api/v1/users/me/google").await;
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["google_linked"], false);
    }
    assert!(!linked(&app, "erin", "71").await);
    // Now that Google account signs in to an account of its own, not erin's.
    let body: Value = sign_in(&app, &token).await.json().await.unwrap();
    assert_ne!(body["user"]["id"], erin_id);
    assert_eq!(body["user"]["username"], "erin_personal");

    // Audited: the refusals and the link from the profile, and both unlinks.
    let erin_id = erin_id.as_str().unwrap();
    let links = audit_until(
        &app,
        &admin,
        &format!("action=auth.google_link&user={erin_id}"),
        |e| e.len() == 5,
    )
    .await;
    let outcomes: Vec<&str> = links
        .iter()
        .rev()
        .map(|e| e["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(
        outcomes,
        ["denied", "failure", "success", "success", "failure"]
    );
    let unlinks = audit_until(&app, &admin, "action=auth.google_unlink", |e| e.len() == 2).await;
    assert_eq!(unlinks[1]["details"]["was_linked"], true);
    assert_eq!(unlinks[0]["details"]["was_linked"], false);
}
