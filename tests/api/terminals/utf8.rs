//! Non-ASCII both ways through the terminal, as phones type it: accents, CJK and
//! an emoji reach the shell byte for byte, come back whole, and survive a late
//! joiner's repaint (tmux) or replay (shell mode).

use super::{input, open, output_until};
use crate::helpers::{TestApp, Ws, ws_until};
use crate::templates::custom_template;
use futures_util::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

/// What a user types: a precomposed and a combining accent, CJK, an emoji.
const TYPED: &str = "ü é e\u{301} 日本 😀";

/// `TYPED` as the hex the machine's `od` prints for it.
fn hex(text: &str) -> String {
    text.bytes().map(|b| format!("{b:02x}")).collect()
}

#[actix_web::test]
async fn typed_non_ascii_reaches_the_shell_and_late_joiners_see_it_whole() {
    let app = TestApp::spawn().await;
    let token = app.admin_token("utf8_admin").await;
    // A template that sets no locale anywhere (the built-ins export LANG from the
    // user's start-up files): the terminal alone must make it UTF-8.
    let mut bare = custom_template("bare");
    bare["packages"] = json!([]);
    bare["environment_variables"] = json!({});
    bare["bootstrap"] = json!("#!/bin/sh\necho '==> [1/1] Nothing to set up'\n");
    let created = app
        .authed_client(&token)
        .post("/api/v1/templates", &bare)
        .await;
    assert_eq!(created.status(), 201, "{:?}", created.text().await);
    let id = app.ready_environment(&token, "utf8", "bare").await;

    for (extra, tmux) in [("&session=utf8", true), ("&session=raw&mode=shell", false)] {
        let mode = if tmux { "tmux" } else { "shell" };
        let mut ws = open(&app, &token, &id, extra).await;
        if tmux {
            half_a_character_is_refused(&mut ws).await;
        }

        // Typed one character per frame (a combining accent in a frame of its own):
        // the shell's line holds exactly those bytes.
        input(&mut ws, "t='").await;
        for c in TYPED.chars() {
            input(&mut ws, &c.to_string()).await;
        }
        let expected = hex(TYPED);
        input(
            &mut ws,
            &format!(
                "'; h=$(printf %s \"$t\" | od -An -tx1 | tr -d ' \\n'); \
                 if [ \"$h\" = {expected} ]; then echo same-$((6*7)); \
                 else echo differs-$((6*7))-$h; fi\r"
            ),
        )
        .await;
        // Only the shell's answer has `-42` (the command line says `-$((6*7))`).
        let (text, _) = output_until(&mut ws, "-42").await;
        assert!(
            text.contains("same-42"),
            "{mode}: the shell got other bytes than were typed ({expected}): {text:?}"
        );
        // The echo of what was typed shows the characters, not `_` (each on its
        // own: tmux may draw its status line in the middle of the echo).
        for c in ["ü", "日", "本", "😀"] {
            assert!(text.contains(c), "{mode}: echo lost {c}: {text:?}");
        }

        // Printed by the shell (from escapes, so the typed line cannot match).
        input(
            &mut ws,
            "printf 'out-\\303\\274-\\346\\227\\245\\346\\234\\254-\\360\\237\\230\\200-end\\n'\r",
        )
        .await;
        output_until(&mut ws, "out-ü-日本-😀-end").await;

        // A client that joins now is shown the screen with the characters intact:
        // tmux repaints it; without tmux it asks for the output from the start
        // (which comes before its `connected`, so not through `open`).
        let joiner = if tmux { "" } else { "&resume=0" };
        let mut late = app
            .ws(&format!(
                "/api/v1/ws/terminal/{id}?token={token}{extra}{joiner}"
            ))
            .await;
        let (screen, _) = output_until(&mut late, "out-ü-日本-😀-end").await;
        for c in ["ü", "日", "本", "😀"] {
            assert!(
                screen.contains(c),
                "{mode}: the late joiner lost {c}: {screen:?}"
            );
        }
        assert!(!screen.contains('\u{FFFD}'), "{mode}: {screen:?}");
    }
}

/// Frames are JSON text, so a character cannot be split across two of them: the
/// nearest thing, half a surrogate pair, is refused with a reason and nothing of
/// it is typed; the connection carries on.
async fn half_a_character_is_refused(ws: &mut Ws) {
    for half in [r"\ud83d", r"\ude00"] {
        let frame = format!(r#"{{"type": "input", "data": "zqz{half}"}}"#);
        ws.send(Message::Text(frame.into())).await.unwrap();
        let frames = ws_until(ws, "error").await;
        let message = frames.last().unwrap()["message"].as_str().unwrap();
        assert!(message.contains("escape"), "{message}");
    }
    input(ws, "echo [$((20+1))]\r").await;
    let (text, _) = output_until(ws, "[21]").await;
    assert!(!text.contains("zqz"), "{text:?}");
}
