//! Accounts people can get back into (issue 17): e-mail verification with a code,
//! forgotten and changed passwords, the profile, and deleting the account. Mail is
//! received for real, by an SMTP server the tests start (`helpers::mail`), or read
//! from the outbox directory when no SMTP server is configured.

mod deletion;
mod mail;
mod passwords;
mod profile;
mod verification;

use serde_json::{Value, json};

use crate::helpers::{Mail, MailServer, TestApp};

/// The verification code in a mail: in its subject, and in both of its parts.
pub fn code_in(mail: &Mail) -> String {
    let code = mail
        .subject
        .rsplit(' ')
        .next()
        .unwrap_or_default()
        .to_owned();
    assert!(
        code.len() == 6 && code.bytes().all(|b| b.is_ascii_digit()),
        "{mail:?}"
    );
    assert!(
        mail.text.contains(&code) && mail.html.contains(&code),
        "{mail:?}"
    );
    code
}

/// The reset token of a reset mail, from its link (`…?token=…`).
pub fn reset_token_in(mail: &Mail) -> String {
    let token: String = mail
        .text
        .split("token=")
        .nth(1)
        .unwrap_or_else(|| panic!("no link in {mail:?}"))
        .chars()
        .take_while(char::is_ascii_hexdigit)
        .collect();
    assert_eq!(token.len(), 64, "{mail:?}");
    assert!(mail.html.contains(&token), "{mail:?}");
    token
}

/// An application that mails through `smtp`, with `overrides`.
pub async fn app_mailing_to(smtp: &MailServer, overrides: &[(&str, &str)]) -> TestApp {
    let url = smtp.url();
    let mut settings = vec![("SMTP_URL", url.as_str())];
    settings.extend_from_slice(overrides);
    TestApp::spawn_with(&settings).await
}

/// Verifies `username`'s address with the code of its first mail.
pub async fn verified(app: &TestApp, smtp: &MailServer, username: &str) -> Value {
    let session = app.signed_up(username).await;
    let token = session["access_token"].as_str().unwrap().to_owned();
    let mail = smtp.nth_to(&format!("{username}@example.com"), 1).await;
    let response = app
        .authed_client(&token)
        .post(
            "/api/v1/auth/verify-email",
            &json!({ "token": code_in(&mail) }),
        )
        .await;
    assert_eq!(response.status(), 200);
    session
}
