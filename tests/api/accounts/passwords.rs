//! Forgotten, reset and changed passwords.

use serde_json::{Value, json};

use super::{app_mailing_to, reset_token_in};
use crate::helpers::{MailServer, PASSWORD, assert_error};

const NEW_PASSWORD: &str = "Brand-new-pass-7";

#[actix_web::test]
async fn a_forgotten_password_is_reset_with_the_mailed_code_and_everything_else_signed_out() {
    let smtp = MailServer::start("reset");
    let app = app_mailing_to(&smtp, &[]).await;
    let phone = app.signed_up("forgetful").await;
    let laptop: Value = app.login("forgetful", PASSWORD).await.json().await.unwrap();
    smtp.nth_to("forgetful@example.com", 1).await; // the verification code
    // Someone else's guesses lock the phone's address out of the account.
    for _ in 0..5 {
        app.login("forgetful", "Wrong-guess-123").await;
    }
    assert_eq!(app.login("forgetful", PASSWORD).await.status(), 423);

    let known = app
        .post_json(
            "/api/v1/auth/forgot-password",
            &json!({ "email": "Forgetful@Example.com" }),
        )
        .await;
    let unknown = app
        .post_json(
            "/api/v1/auth/forgot-password",
            &json!({ "email": "nobody@example.com" }),
        )
        .await;
    assert_eq!(
        (known.status().as_u16(), unknown.status().as_u16()),
        (202, 202)
    );
    let (known, unknown): (Value, Value) =
        (known.json().await.unwrap(), unknown.json().await.unwrap());
    assert_eq!(known, unknown);

    let mail = smtp.nth_to("forgetful@example.com", 2).await;
    assert!(
        mail.text.contains("devpocket://reset-password?token="),
        "{}",
        mail.text
    );
    let token = reset_token_in(&mail);

    assert_error(
        app.post_json(
            "/api/v1/auth/reset-password",
            &json!({ "token": "0".repeat(64), "new_password": NEW_PASSWORD }),
        )
        .await,
        400,
        "reset_token_invalid",
    )
    .await;
    let weak = app
        .post_json(
            "/api/v1/auth/reset-password",
            &json!({ "token": token, "new_password": "short" }),
        )
        .await;
    assert_eq!(weak.status(), 422);
    let weak: Value = weak.json().await.unwrap();
    assert!(
        weak["context"]["fields"]["new_password"].is_array(),
        "{weak}"
    );

    // `password` is also accepted.
    let reset = app
        .post_json(
            "/api/v1/auth/reset-password",
            &json!({ "token": token, "password": NEW_PASSWORD }),
        )
        .await;
    assert_eq!(reset.status(), 200);

    for session in [&phone, &laptop] {
        let token = session["access_token"].as_str().unwrap();
        assert_error(
            app.authed_client(token).get("/api/v1/auth/me").await,
            401,
            "unauthorized",
        )
        .await;
    }
    assert_eq!(app.login("forgetful", PASSWORD).await.status(), 401);
    // The lockout is cleared with it.
    assert_eq!(app.login("forgetful", NEW_PASSWORD).await.status(), 200);
    // The code works once.
    assert_error(
        app.post_json(
            "/api/v1/auth/reset-password",
            &json!({ "token": token, "new_password": "Another-pass-8" }),
        )
        .await,
        400,
        "reset_token_invalid",
    )
    .await;
    let notice = smtp.nth_to("forgetful@example.com", 3).await;
    assert!(
        notice.subject.contains("password was changed"),
        "{notice:?}"
    );
    assert!(
        smtp.received().iter().all(|m| m.to != "nobody@example.com"),
        "an unknown address got mail"
    );
}

#[actix_web::test]
async fn reset_attempts_are_limited_per_address() {
    let smtp = MailServer::start("reset-limit");
    let app = app_mailing_to(&smtp, &[("DEVPOCKET_RATE_LIMIT_RECOVERY_IP", "3/1h")]).await;
    for _ in 0..3 {
        let guess = app
            .post_json(
                "/api/v1/auth/reset-password",
                &json!({ "token": "f".repeat(64), "new_password": NEW_PASSWORD }),
            )
            .await;
        assert_eq!(guess.status(), 400);
    }
    let limited = app
        .post_json(
            "/api/v1/auth/reset-password",
            &json!({ "token": "f".repeat(64), "new_password": NEW_PASSWORD }),
        )
        .await;
    assert_eq!(limited.status(), 429);
    let forgot = app
        .post_json(
            "/api/v1/auth/forgot-password",
            &json!({ "email": "a@example.com" }),
        )
        .await;
    assert_eq!(forgot.status(), 429);
}

#[actix_web::test]
async fn changing_the_password_keeps_this_session_and_ends_the_others() {
    let smtp = MailServer::start("change");
    let app = app_mailing_to(&smtp, &[]).await;
    let phone = app.signed_up("changer").await;
    let laptop: Value = app.login("changer", PASSWORD).await.json().await.unwrap();
    let phone = app.authed_client(phone["access_token"].as_str().unwrap());
    let laptop = app.authed_client(laptop["access_token"].as_str().unwrap());

    // A wrong current password is not a 401: the app would sign the user out.
    let body = assert_error(
        phone
            .post(
                "/api/v1/auth/change-password",
                &json!({ "current_password": "Not-my-pass-1", "new_password": NEW_PASSWORD }),
            )
            .await,
        400,
        "wrong_password",
    )
    .await;
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("current password"),
        "{body}"
    );
    let weak = phone
        .post(
            "/api/v1/auth/change-password",
            &json!({ "current_password": PASSWORD, "new_password": "weak" }),
        )
        .await;
    assert_eq!(weak.status(), 422);

    let changed = phone
        .post(
            "/api/v1/auth/change-password",
            &json!({ "currentPassword": PASSWORD, "newPassword": NEW_PASSWORD }),
        )
        .await;
    assert_eq!(changed.status(), 200);
    assert_eq!(phone.get("/api/v1/auth/me").await.status(), 200);
    assert_error(laptop.get("/api/v1/auth/me").await, 401, "unauthorized").await;
    assert_eq!(app.login("changer", PASSWORD).await.status(), 401);
    assert_eq!(app.login("changer", NEW_PASSWORD).await.status(), 200);
    let notice = smtp.nth_to("changer@example.com", 2).await;
    assert!(
        notice.subject.contains("password was changed"),
        "{notice:?}"
    );
}
