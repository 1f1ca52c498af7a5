//! `PUT /users/me`: names and addresses read back as stored; a new address is
//! unverified until its own code is typed.

use serde_json::{Value, json};

use super::{app_mailing_to, code_in, verified};
use crate::helpers::{MailServer, assert_error};

#[actix_web::test]
async fn profile_changes_read_back_and_a_new_address_needs_its_own_code() {
    let smtp = MailServer::start("profile");
    let app = app_mailing_to(&smtp, &[]).await;
    let session = verified(&app, &smtp, "profiler").await;
    app.signed_up("taken").await;
    let me = app.authed_client(session["access_token"].as_str().unwrap());

    let response = me
        .put(
            "/api/v1/users/me",
            &json!({ "full_name": "Pro Filer", "username": "pro_filer", "avatar_url": "x", "is_verified": true, "subscription_plan": "admin" }),
        )
        .await;
    assert_eq!(response.status(), 200);
    let user: Value = response.json().await.unwrap();
    assert_eq!(
        (
            &user["username"],
            &user["full_name"],
            &user["is_verified"],
            &user["subscription_plan"]
        ),
        (
            &json!("pro_filer"),
            &json!("Pro Filer"),
            &json!(true),
            &json!("free")
        ),
        "{user}"
    );
    let read: Value = me.get("/api/v1/auth/me").await.json().await.unwrap();
    assert_eq!(read, user);
    assert_eq!(
        app.login("pro_filer", crate::helpers::PASSWORD)
            .await
            .status(),
        200
    );

    for (body, field) in [
        (json!({ "username": "x" }), "username"),
        (json!({ "email": "not-an-address" }), "email"),
        (json!({ "full_name": 42 }), "full_name"),
    ] {
        let response = me.put("/api/v1/users/me", &body).await;
        assert_eq!(response.status(), 422, "{body}");
        let error: Value = response.json().await.unwrap();
        assert!(error["context"]["fields"][field].is_array(), "{error}");
    }
    assert_error(
        me.put("/api/v1/users/me", &json!({ "username": "TAKEN" }))
            .await,
        409,
        "conflict",
    )
    .await;

    let response = me
        .put(
            "/api/v1/users/me",
            &json!({ "email": "new.home@example.com" }),
        )
        .await;
    assert_eq!(response.status(), 200);
    let user: Value = response.json().await.unwrap();
    assert_eq!(
        (&user["email"], &user["is_verified"]),
        (&json!("new.home@example.com"), &json!(false))
    );
    let code = code_in(&smtp.nth_to("new.home@example.com", 1).await);
    let response = me
        .post("/api/v1/auth/verify-email", &json!({ "token": code }))
        .await;
    assert_eq!(response.status(), 200);
    let user: Value = response.json().await.unwrap();
    assert_eq!(user["is_verified"], true);

    // The old address is free again; the new one is taken.
    let other = app.signed_up("other").await;
    let other = app.authed_client(other["access_token"].as_str().unwrap());
    let code = code_in(&smtp.nth_to("other@example.com", 1).await);
    other
        .post("/api/v1/auth/verify-email", &json!({ "token": code }))
        .await;
    assert_error(
        other
            .put(
                "/api/v1/users/me",
                &json!({ "email": "NEW.HOME@example.com" }),
            )
            .await,
        409,
        "conflict",
    )
    .await;
    let moved = other
        .put(
            "/api/v1/users/me",
            &json!({ "email": "profiler@example.com" }),
        )
        .await;
    assert_eq!(moved.status(), 200);
}

#[actix_web::test]
async fn an_unverified_account_may_not_change_its_address_by_default() {
    let smtp = MailServer::start("unverified-email");
    let app = app_mailing_to(&smtp, &[]).await;
    let session = app.signed_up("typo").await;
    let me = app.authed_client(session["access_token"].as_str().unwrap());
    assert_error(
        me.put(
            "/api/v1/users/me",
            &json!({ "email": "elsewhere@example.com" }),
        )
        .await,
        403,
        "email_not_verified",
    )
    .await;
    let user: Value = me.get("/api/v1/auth/me").await.json().await.unwrap();
    assert_eq!(user["email"], "typo@example.com");
    // Its name it may change.
    let renamed = me
        .put("/api/v1/users/me", &json!({ "full_name": null }))
        .await;
    assert_eq!(renamed.status(), 200);
    let user: Value = renamed.json().await.unwrap();
    assert_eq!(user["full_name"], Value::Null);
}
