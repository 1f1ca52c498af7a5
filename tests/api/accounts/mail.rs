//! The outbox: without an SMTP server mail is written to files; with one that is
//! down, mail waits (the request does not) and leaves when it is back.

use serde_json::json;

use super::{app_mailing_to, code_in};
use crate::helpers::{MailServer, TestApp, eventually, read_maildir};
use crate::observability::{scrape, series};

#[actix_web::test]
async fn with_no_smtp_server_mail_is_written_to_the_outbox_directory() {
    let app = TestApp::spawn().await;
    let session = app.signed_up("offline").await;
    let outbox = app.data_dir.join("outbox");
    let mail = eventually(
        std::time::Duration::from_secs(30),
        "a .eml file in the outbox directory",
        async || read_maildir(&outbox).pop().ok_or("none yet"),
    )
    .await;
    assert_eq!(mail.to, "offline@example.com");
    assert!(mail.subject.starts_with("Your DevPocket code"), "{mail:?}");
    let names: Vec<String> = std::fs::read_dir(&outbox)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| n.ends_with(".eml")), "{names:?}");
    let response = app
        .authed_client(session["access_token"].as_str().unwrap())
        .post(
            "/api/v1/auth/verify-email",
            &json!({ "token": code_in(&mail) }),
        )
        .await;
    assert_eq!(response.status(), 200);
    let metrics = scrape(&app).await;
    assert_eq!(
        series(&metrics, "devpocket_mail_sent_total{kind=\"verification\"}"),
        1.0
    );
}

#[actix_web::test]
async fn an_smtp_outage_delays_mail_and_loses_none() {
    let mut smtp = MailServer::start("outage");
    smtp.stop();
    let app = app_mailing_to(
        &smtp,
        &[
            ("DEVPOCKET_MAIL_RETRY_MIN", "100ms"),
            ("DEVPOCKET_MAIL_RETRY_MAX", "300ms"),
            // Retries are planned for when they are due, not left to the poll.
            ("DEVPOCKET_MAIL_POLL_EVERY", "1h"),
        ],
    )
    .await;
    // Sign-up answers while the mail server is down.
    for name in ["early", "bird"] {
        app.signed_up(name).await;
    }
    eventually(
        std::time::Duration::from_secs(30),
        "failed attempts to be retried, with both mails queued",
        async || {
            let metrics = scrape(&app).await;
            let retries = series(
                &metrics,
                "devpocket_mail_retries_total{kind=\"verification\"}",
            );
            let queued = series(&metrics, "devpocket_mail_queued");
            if retries >= 2.0 && queued == 2.0 {
                Ok(())
            } else {
                Err(format!("retries {retries}, queued {queued}"))
            }
        },
    )
    .await;
    assert!(smtp.received().is_empty());

    smtp.resume();
    for name in ["early", "bird"] {
        let mail = smtp.nth_to(&format!("{name}@example.com"), 1).await;
        code_in(&mail);
    }
    eventually(
        std::time::Duration::from_secs(30),
        "the queue to be empty",
        async || {
            let metrics = scrape(&app).await;
            let sent = series(&metrics, "devpocket_mail_sent_total{kind=\"verification\"}");
            let queued = series(&metrics, "devpocket_mail_queued");
            if sent == 2.0 && queued == 0.0 {
                Ok(())
            } else {
                Err(format!("sent {sent}, queued {queued}"))
            }
        },
    )
    .await;
    assert_eq!(smtp.received().len(), 2, "each mail once");
}
