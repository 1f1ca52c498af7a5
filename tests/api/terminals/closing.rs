//! A terminal open while its environment is stopped or deleted: every client gets
//! `status closed` saying why, then a clean close (1000) — and never a
//! `reconnecting` in between, which the app shows as "connection lost".

use super::{input, open, output_until};
use crate::helpers::{TestApp, Ws, WsEvent, ws_next};
use serde_json::{Value, json};

/// Reads `ws` to its end: every `status` frame after attaching must be the one
/// `closed`, whose message says `why`, and then the socket closes with 1000.
async fn assert_closed_cleanly(ws: &mut Ws, why: &str) {
    let mut statuses: Vec<Value> = Vec::new();
    loop {
        match ws_next(ws).await {
            WsEvent::Json(f) if f["type"] == "status" => statuses.push(f),
            WsEvent::Json(_) => {}
            WsEvent::Closed(Some((1000, _))) => break,
            WsEvent::Closed(other) => {
                panic!("expected a clean close, got {other:?} after {statuses:?}")
            }
        }
    }
    let states: Vec<&Value> = statuses.iter().map(|f| &f["state"]).collect();
    assert_eq!(states, [&json!("closed")], "{statuses:?}");
    let message = statuses[0]["message"].as_str().unwrap();
    assert!(message.contains(why), "{message:?} does not say {why:?}");
}

/// A tmux session and a shell-mode session on `id`, both attached and answering.
async fn two_terminals(app: &TestApp, token: &str, id: &str) -> [Ws; 2] {
    let mut shell = open(app, token, id, "&session=raw&mode=shell").await;
    input(&mut shell, "echo in-tmux-[${TMUX:+yes}]\r").await;
    output_until(&mut shell, "in-tmux-[]").await;
    let mut tmux = open(app, token, id, "").await;
    input(&mut tmux, "echo in-tmux-[${TMUX:+yes}]\r").await;
    output_until(&mut tmux, "in-tmux-[yes]").await;
    [shell, tmux]
}

#[actix_web::test]
async fn stopping_the_environment_closes_its_terminals_without_reconnecting() {
    let app = TestApp::spawn().await;
    let token = app.user_token("closing_user").await;
    let id = app.ready_environment(&token, "closing", "ubuntu").await;

    // A `shell` session is a login shell straight on the PTY; the default is tmux.
    let mut terminals = two_terminals(&app, &token, &id).await;
    let mut bad = app
        .ws(&format!(
            "/api/v1/ws/terminal/{id}?token={token}&mode=screen"
        ))
        .await;
    match ws_next(&mut bad).await {
        WsEvent::Closed(Some((1008, reason))) => assert!(reason.contains("mode"), "{reason}"),
        other => panic!("expected 1008 for a bad mode, got {other:?}"),
    }

    let response = app
        .authed_client(&token)
        .post(&format!("/api/v1/environments/{id}/stop"), &json!({}))
        .await;
    assert!(response.status().is_success(), "{}", response.status());
    for ws in &mut terminals {
        assert_closed_cleanly(ws, "stopped").await;
    }
    // The test ends with the stop, not in the middle of it.
    app.wait_for_env(&token, &id, |e| e["status"] == "stopped")
        .await;
}

#[actix_web::test]
async fn deleting_the_environment_closes_its_terminals_without_reconnecting() {
    let app = TestApp::spawn().await;
    let token = app.user_token("deleting_user").await;
    let id = app.ready_environment(&token, "deleting", "ubuntu").await;
    let mut terminals = two_terminals(&app, &token, &id).await;

    let response = app
        .authed_client(&token)
        .delete(&format!("/api/v1/environments/{id}"))
        .await;
    assert!(response.status().is_success(), "{}", response.status());
    for ws in &mut terminals {
        assert_closed_cleanly(ws, "deleted").await;
    }
    // The test ends with the delete, not in the middle of it.
    app.wait_for_env(&token, &id, |e| e["code"] == "not_found")
        .await;
}
