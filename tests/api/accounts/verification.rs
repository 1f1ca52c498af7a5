//! Registration mails a 6-digit code; typing it verifies the address.

use diesel_async::RunQueryDsl;
use serde_json::{Value, json};

use super::{app_mailing_to, code_in};
use crate::helpers::{MailServer, assert_error};

#[actix_web::test]
async fn the_code_mailed_at_sign_up_verifies_the_address() {
    let smtp = MailServer::start("verify");
    let app = app_mailing_to(&smtp, &[]).await;
    let session = app.signed_up("vera").await;
    assert_eq!(session["user"]["is_verified"], false);
    let me = app.authed_client(session["access_token"].as_str().unwrap());

    let mail = smtp.nth_to("vera@example.com", 1).await;
    let code = code_in(&mail);
    assert!(mail.text.contains("15 minutes"), "{}", mail.text);
    let wrong = if code == "000000" { "000001" } else { "000000" };
    let body = assert_error(
        me.post("/api/v1/auth/verify-email", &json!({ "token": wrong }))
            .await,
        400,
        "verification_code_wrong",
    )
    .await;
    assert!(
        body["detail"].as_str().unwrap().contains("4 tries left"),
        "{body}"
    );
    for malformed in [json!("12345"), json!("abcdef"), json!(123456)] {
        let response = me
            .post("/api/v1/auth/verify-email", &json!({ "token": malformed }))
            .await;
        assert_eq!(response.status(), 422, "{malformed}");
    }

    // As the app sends it: the six boxes' digits, spaces and all.
    let spaced: String = code.chars().flat_map(|c| [c, ' ']).collect();
    let response = me
        .post("/api/v1/auth/verify-email", &json!({ "token": spaced }))
        .await;
    assert_eq!(response.status(), 200);
    let user: Value = response.json().await.unwrap();
    assert_eq!(user["is_verified"], true, "{user}");
    let user: Value = me.get("/api/v1/auth/me").await.json().await.unwrap();
    assert_eq!(user["is_verified"], true, "{user}");

    // A code works once; the verified account needs no other.
    let again = me
        .post("/api/v1/auth/verify-email", &json!({ "token": code }))
        .await;
    assert_eq!(again.status(), 200);
    assert_error(
        me.post("/api/v1/auth/resend-verification", &json!({}))
            .await,
        409,
        "already_verified",
    )
    .await;
    assert_eq!(smtp.received().len(), 1);
}

#[actix_web::test]
async fn a_code_allows_five_tries_and_fifteen_minutes_and_a_new_one_a_minute_later() {
    let smtp = MailServer::start("tries");
    let app = app_mailing_to(&smtp, &[]).await;
    let session = app.signed_up("tryer").await;
    let me = app.authed_client(session["access_token"].as_str().unwrap());
    let code = code_in(&smtp.nth_to("tryer@example.com", 1).await);
    let wrong = if code == "999999" { "999998" } else { "999999" };
    for left in (0..5).rev() {
        let body = assert_error(
            me.post("/api/v1/auth/verify-email", &json!({ "token": wrong }))
                .await,
            400,
            "verification_code_wrong",
        )
        .await;
        if left == 0 {
            assert!(
                body["detail"].as_str().unwrap().contains("last try"),
                "{body}"
            );
        }
    }
    // The right code, after five wrong ones: too late.
    assert_error(
        me.post("/api/v1/auth/verify-email", &json!({ "token": code }))
            .await,
        400,
        "verification_code_expired",
    )
    .await;

    // A new code, but not twice in a minute.
    let refused = me
        .post("/api/v1/auth/resend-verification", &json!({}))
        .await;
    assert_eq!(refused.status(), 429);
    assert!(refused.headers().contains_key("retry-after"));
    let mut conn = app.db.connect().await;
    diesel::sql_query("UPDATE email_verifications SET sent_at = now() - interval '61 seconds'")
        .execute(&mut conn)
        .await
        .unwrap();
    let response = me
        .post("/api/v1/auth/resend-verification", &json!({}))
        .await;
    assert_eq!(response.status(), 202);
    let second = code_in(&smtp.nth_to("tryer@example.com", 2).await);

    // Fifteen minutes later the new code has expired too.
    diesel::sql_query("UPDATE email_verifications SET expires_at = now() - interval '1 second'")
        .execute(&mut conn)
        .await
        .unwrap();
    assert_error(
        me.post("/api/v1/auth/verify-email", &json!({ "token": second }))
            .await,
        400,
        "verification_code_expired",
    )
    .await;
    let user: Value = me.get("/api/v1/auth/me").await.json().await.unwrap();
    assert_eq!(user["is_verified"], false);
}

#[actix_web::test]
async fn what_an_unverified_account_may_not_do_is_a_setting() {
    let smtp = MailServer::start("restricted");
    let app = app_mailing_to(
        &smtp,
        &[(
            "DEVPOCKET_UNVERIFIED_MAY_NOT",
            "create_environment,register_server",
        )],
    )
    .await;
    let session = app.signed_up("newbie").await;
    let me = app.authed_client(session["access_token"].as_str().unwrap());
    let body = assert_error(
        me.post(
            "/api/v1/environments",
            &json!({ "name": "first", "template_id": "ubuntu" }),
        )
        .await,
        403,
        "email_not_verified",
    )
    .await;
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("newbie@example.com"),
        "{body}"
    );
    assert_error(
        me.post(
            "/api/v1/servers",
            &json!({ "name": "vps", "host": "203.0.113.5", "username": "root" }),
        )
        .await,
        403,
        "email_not_verified",
    )
    .await;
    let code = code_in(&smtp.nth_to("newbie@example.com", 1).await);
    me.post("/api/v1/auth/verify-email", &json!({ "token": code }))
        .await;
    let listed: Value = me.get("/api/v1/environments").await.json().await.unwrap();
    assert_eq!(listed, json!([]));
    let created = me
        .post(
            "/api/v1/servers",
            &json!({ "name": "vps", "host": "203.0.113.5", "username": "root" }),
        )
        .await;
    assert_eq!(created.status(), 201);
}
