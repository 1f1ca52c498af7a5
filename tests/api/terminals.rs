//! Shared terminals for real: WebSocket ⇄ TerminalActor ⇄ SSH ⇄ tmux.
//! Non-ASCII is in `terminals/utf8.rs`; terminals of an environment that is
//! stopped or deleted in `terminals/closing.rs`.

mod closing;
mod utf8;

use std::time::Duration;

use crate::helpers::{TestApp, Ws, WsEvent, eventually, ws_next, ws_until};
use futures_util::SinkExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

async fn send(ws: &mut Ws, frame: Value) {
    ws.send(Message::Text(frame.to_string().into()))
        .await
        .unwrap();
}

async fn input(ws: &mut Ws, data: &str) {
    send(ws, json!({"type": "input", "data": data})).await;
}

/// Reads output until `needle` appears (for at most 120 s in all: a screen that
/// keeps changing, such as tmux's clock, must not keep a wrong answer waiting);
/// returns (all text, last seq).
async fn output_until(ws: &mut Ws, needle: &str) -> (String, u64) {
    let mut text = String::new();
    let mut last;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "never saw {needle:?}; got {text:?}"
        );
        match ws_next(ws).await {
            WsEvent::Json(f) if f["type"] == "output" => {
                if std::env::var_os("TEST_LOG").is_some() {
                    eprintln!("output: {f}");
                }
                text.push_str(f["data"].as_str().unwrap());
                last = f["seq"].as_u64().unwrap();
                if text.contains(needle) {
                    return (text, last);
                }
            }
            WsEvent::Json(other) => {
                if std::env::var_os("TEST_LOG").is_some() {
                    eprintln!("frame: {other}");
                }
            }
            WsEvent::Closed(c) => panic!("closed before {needle:?}: {c:?}; got {text:?}"),
        }
    }
}

async fn open(app: &TestApp, token: &str, id: &str, extra: &str) -> Ws {
    let mut ws = app
        .ws(&format!("/api/v1/ws/terminal/{id}?token={token}{extra}"))
        .await;
    let frames = ws_until(&mut ws, "status").await;
    assert!(frames.iter().any(|f| f["type"] == "welcome"), "{frames:?}");
    assert_eq!(frames.last().unwrap()["state"], "connected", "{frames:?}");
    ws
}

#[actix_web::test]
async fn clients_share_a_session_late_joiners_see_the_screen_and_resume_has_no_gap() {
    let app = TestApp::spawn().await;
    let token = app.admin_token("term_admin").await;
    let id = app.ready_environment(&token, "shared", "ubuntu").await;

    let mut phone = open(&app, &token, &id, "&session=work&cols=100&rows=30").await;
    let mut laptop = open(&app, &token, &id, "&session=work").await;
    input(&mut phone, "echo shared-$((6*7))\r").await;
    output_until(&mut phone, "shared-42").await;
    output_until(&mut laptop, "shared-42").await;
    input(&mut laptop, "echo from-laptop-$((2+3))\r").await;
    let (_, phone_seq) = output_until(&mut phone, "from-laptop-5").await;

    // Another session of the same machine is used last (tmux's "current client")...
    let mut other = open(&app, &token, &id, "&session=other").await;
    input(&mut other, "echo other-$((1+1))\r").await;
    output_until(&mut other, "other-2").await;

    // ...and a third client joins `work` late: it is shown `work`'s current screen.
    let mut tablet = open(&app, &token, &id, "&session=work").await;
    output_until(&mut tablet, "from-laptop-5").await;

    // The phone drops; output goes on; it resumes exactly where it left off.
    drop(phone);
    input(&mut laptop, "echo while-away-$((10+1))\r").await;
    output_until(&mut laptop, "while-away-11").await;
    let mut phone = app
        .ws(&format!(
            "/api/v1/ws/terminal/{id}?token={token}&session=work&resume={phone_seq}"
        ))
        .await;
    let mut seqs = Vec::new();
    let mut text = String::new();
    while !text.contains("while-away-11") {
        match ws_next(&mut phone).await {
            WsEvent::Json(f) if f["type"] == "output" => {
                seqs.push(f["seq"].as_u64().unwrap());
                text.push_str(f["data"].as_str().unwrap());
            }
            WsEvent::Json(_) => {}
            WsEvent::Closed(c) => panic!("closed: {c:?}"),
        }
    }
    assert_eq!(seqs[0], phone_seq + 1, "gap or duplicate at the seam");
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");

    // Unknown frames get an error and the connection stays up; pings are answered.
    send(&mut laptop, json!({"type": "dance"})).await;
    let frames = ws_until(&mut laptop, "error").await;
    assert!(
        frames.last().unwrap()["message"]
            .as_str()
            .unwrap()
            .contains("dance")
    );
    send(&mut laptop, json!({"type": "ping", "timestamp": 12345})).await;
    let frames = ws_until(&mut laptop, "pong").await;
    assert_eq!(frames.last().unwrap()["timestamp"], 12345);
}

#[actix_web::test]
async fn the_shell_survives_a_dropped_ssh_connection() {
    let app = TestApp::spawn().await;
    let token = app.admin_token("recover_admin").await;
    let id = app.ready_environment(&token, "sturdy", "ubuntu").await;
    let mut ws = open(&app, &token, &id, "").await;
    input(&mut ws, "export KEPT=survivor-$((40+2)); echo set-$KEPT\r").await;
    output_until(&mut ws, "set-survivor-42").await;

    // Kill the SSH connection's server side (not the machine, not tmux).
    let user = format!(
        "dp-{}",
        id.chars()
            .filter(|c| *c != '-')
            .take(12)
            .collect::<String>()
    );
    let pattern = if nix::unistd::Uid::effective().is_root() {
        format!("sshd: {user}")
    } else {
        "sshd: .*@".to_owned()
    };
    let killed = std::process::Command::new("pkill")
        .args(["-KILL", "-f", &pattern])
        .status()
        .unwrap();
    assert!(killed.success(), "no sshd session process to kill");

    let frames = ws_until(&mut ws, "status").await;
    assert_eq!(
        frames.last().unwrap()["state"],
        "reconnecting",
        "{frames:?}"
    );
    loop {
        let frames = ws_until(&mut ws, "status").await;
        if frames.last().unwrap()["state"] == "connected" {
            break;
        }
    }
    input(&mut ws, "echo still-$KEPT\r").await;
    output_until(&mut ws, "still-survivor-42").await;
}

#[actix_web::test]
async fn bytes_arrive_right_multibyte_and_large_pastes() {
    let app = TestApp::spawn().await;
    let token = app.admin_token("bytes_admin").await;
    let id = app.ready_environment(&token, "bytes", "ubuntu").await;
    let mut ws = open(&app, &token, &id, "").await;

    // Thousands of multi-byte characters cross many SSH reads.
    input(&mut ws, "i=0; while [ $i -lt 3000 ]; do printf '€😀'; i=$((i+1)); done; echo; echo utf8-$((1+1))-done\r").await;
    let (text, _) = output_until(&mut ws, "utf8-2-done").await;
    assert!(
        !text.contains('\u{FFFD}'),
        "a replacement character appeared"
    );
    assert!(
        text.matches('😀').count() >= 3000,
        "{}",
        text.matches('😀').count()
    );

    // A 1 MiB paste, sent as several frames, arrives complete.
    input(&mut ws, "stty -echo; cat > ~/paste.txt\r").await;
    let line = format!("{}\n", "x".repeat(1023));
    let chunk = line.repeat(64); // 64 KiB per frame
    for _ in 0..16 {
        input(&mut ws, &chunk).await;
    }
    input(&mut ws, "\u{4}").await;
    input(&mut ws, "stty echo; echo size-$(wc -c < ~/paste.txt)\r").await;
    output_until(&mut ws, "size-1048576").await;

    // A frame over the limit gets an error, not a crash.
    input(&mut ws, &"y".repeat(300 * 1024)).await;
    let frames = ws_until(&mut ws, "error").await;
    assert!(
        frames.last().unwrap()["message"]
            .as_str()
            .unwrap()
            .contains("too large")
    );
    input(&mut ws, "echo alive\r").await;
    output_until(&mut ws, "alive").await;
}

#[actix_web::test]
async fn terminal_auth_isolation_waiting_and_limits() {
    let app = TestApp::spawn().await;
    let owner = app.signed_up("term_owner").await;
    let token = owner["access_token"].as_str().unwrap().to_owned();
    let env: Value = app
        .authed_client(&token)
        .post(
            "/api/v1/environments",
            &json!({"name": "waiting", "template_id": "ubuntu"}),
        )
        .await
        .json()
        .await
        .unwrap();
    let id = env["id"].as_str().unwrap().to_owned();

    // Opened while the machine is still being created: accepted, status frames,
    // pings answered, then attached.
    let mut early = app
        .ws(&format!("/api/v1/ws/terminal/{id}?token={token}"))
        .await;
    let first = ws_until(&mut early, "welcome").await;
    assert_eq!(first.last().unwrap()["environment"]["id"], id.as_str());
    send(&mut early, json!({"type": "ping"})).await;
    loop {
        let frames = ws_until(&mut early, "status").await;
        if frames.last().unwrap()["state"] == "connected" {
            break;
        }
    }

    let refresh = owner["refresh_token"].as_str().unwrap();
    let stranger = app.user_token("term_stranger").await;
    for (query, why) in [
        (String::new(), "missing token"),
        ("?token=nonsense".to_owned(), "bad token"),
        (format!("?token={refresh}"), "refresh token"),
        (format!("?token={stranger}"), "another user's environment"),
    ] {
        let mut ws = app.ws(&format!("/api/v1/ws/terminal/{id}{query}")).await;
        match ws_next(&mut ws).await {
            WsEvent::Closed(Some((1008, reason))) => assert!(!reason.is_empty(), "{why}"),
            other => panic!("{why}: expected 1008, got {other:?}"),
        }
    }

    // The free plan allows 5 terminal connections at once.
    let mut open_ones = vec![early];
    for _ in 0..4 {
        open_ones.push(
            app.ws(&format!("/api/v1/ws/terminal/{id}?token={token}"))
                .await,
        );
    }
    for ws in open_ones.iter_mut().skip(1) {
        ws_until(ws, "welcome").await;
    }
    let mut sixth = app
        .ws(&format!("/api/v1/ws/terminal/{id}?token={token}"))
        .await;
    match ws_next(&mut sixth).await {
        WsEvent::Closed(Some((1008, reason))) => {
            assert!(reason.contains("too many terminal connections"), "{reason}")
        }
        other => panic!("expected the cap, got {other:?}"),
    }

    // Input floods are refused with an error frame.
    let ws = &mut open_ones[0];
    for _ in 0..260 {
        input(ws, "").await;
    }
    let frames = ws_until(ws, "error").await;
    assert!(
        frames.last().unwrap()["message"]
            .as_str()
            .unwrap()
            .contains("too many input frames")
    );
}

#[actix_web::test]
async fn the_most_recently_active_clients_size_wins() {
    let app = TestApp::spawn().await;
    let token = app.admin_token("size_admin").await;
    let id = app.ready_environment(&token, "sizes", "ubuntu").await;
    let mut phone = open(&app, &token, &id, "&cols=50&rows=20").await;
    // The first client's own size, though it attached while the session connected.
    columns_seen(&mut phone, 500, 50).await;
    let mut laptop = open(&app, &token, &id, "&cols=120&rows=40").await;

    columns_seen(&mut laptop, 0, 120).await;
    // The phone rotates: it is now the active client, its size wins.
    send(
        &mut phone,
        json!({"type": "resize", "cols": 70, "rows": 30}),
    )
    .await;
    columns_seen(&mut phone, 1000, 70).await;
    // Back on the laptop: its screen is restored to its own size.
    columns_seen(&mut laptop, 2000, 120).await;
}

/// Waits until the shell sees `expected` columns after `ws` becomes the active
/// client. tmux applies a client's new size a moment after the keys that caused it
/// (it coalesces resizes), and nothing announces it, so ask — every answer awaited
/// before the next question, which the polling pace keeps under the input limit —
/// for at most 10 seconds. `base` keeps each question's marker apart.
async fn columns_seen(ws: &mut Ws, base: u32, expected: u32) {
    let mut n = base;
    let what = format!("the shell to see {expected} columns");
    eventually(Duration::from_secs(10), &what, async || {
        n += 1;
        input(ws, &format!("echo cols-$(tput cols)-$(({n}+100000))\r")).await;
        // Only the output has the sum; tmux may draw it inside a redraw (after a
        // resize), with escapes around it.
        let marker = format!("-{}", n + 100_000);
        let (text, _) = output_until(ws, &marker).await;
        let end = text.rfind(&marker).unwrap();
        let start = text[..end].rfind("cols-").unwrap() + 5;
        match text[start..end].parse::<u32>() {
            Ok(cols) if cols == expected => Ok(()),
            _ => Err(text[start..end].to_owned()),
        }
    })
    .await;
}

/// Reads output until `needle` appears, keeping only a tail (a flood is megabytes).
async fn flood_until(ws: &mut Ws, needle: &str) -> u64 {
    let mut tail = String::new();
    loop {
        match ws_next(ws).await {
            WsEvent::Json(f) if f["type"] == "output" => {
                tail.push_str(f["data"].as_str().unwrap());
                if tail.contains(needle) {
                    return f["seq"].as_u64().unwrap();
                }
                let keep = tail.len().saturating_sub(needle.len());
                let cut = (keep..=tail.len())
                    .find(|i| tail.is_char_boundary(*i))
                    .unwrap();
                tail.drain(..cut);
            }
            WsEvent::Json(_) => {}
            WsEvent::Closed(c) => panic!("closed before {needle:?}: {c:?}"),
        }
    }
}

#[actix_web::test]
async fn a_stalled_client_does_not_stall_the_others_and_is_skipped_ahead() {
    // A small per-client budget, so the stalled client overflows it quickly.
    let app = TestApp::spawn_with(&[("DEVPOCKET_TERMINAL_CLIENT_QUEUE_BYTES", "65536")]).await;
    let token = app.admin_token("stall_admin").await;
    let id = app.ready_environment(&token, "stall", "ubuntu").await;
    let mut stalled = app
        .ws_small_buffer(&format!("/api/v1/ws/terminal/{id}?token={token}"))
        .await;
    ws_until(&mut stalled, "status").await;
    let mut reader = open(&app, &token, &id, "").await;

    // `stalled` reads nothing while megabytes go by (more than the socket buffers
    // and its queue hold); `reader` gets them all, then later output.
    input(&mut reader, "seq 1 1000000; echo flood-$((2*2))-done\r").await;
    flood_until(&mut reader, "flood-4-done").await;
    input(&mut reader, "echo after-$((3*3))\r").await;
    flood_until(&mut reader, "after-9").await;

    // When it reads again, it gets what was queued in order, then — skipped ahead,
    // not dropped — a jump in `seq` and a repaint of the current screen.
    let mut last = 0u64;
    let mut after_gap: Option<String> = None;
    loop {
        match ws_next(&mut stalled).await {
            WsEvent::Json(f) if f["type"] == "output" => {
                let seq = f["seq"].as_u64().unwrap();
                let data = f["data"].as_str().unwrap();
                if last != 0 && seq != last + 1 {
                    assert!(seq > last, "seq went back: {last} then {seq}");
                    after_gap.get_or_insert_default();
                }
                last = seq;
                if let Some(text) = &mut after_gap {
                    text.push_str(data);
                    if text.contains("after-9") {
                        break;
                    }
                }
            }
            WsEvent::Json(_) => {}
            WsEvent::Closed(other) => panic!("a stalled client was closed: {other:?}"),
        }
    }

    // Both still work.
    input(&mut stalled, "echo both-$((4*4))\r").await;
    flood_until(&mut stalled, "both-16").await;
    flood_until(&mut reader, "both-16").await;

    // Without tmux there is no screen to repaint: a client that falls behind is let
    // go by the terminal, then sent what was queued and closed with a reason that
    // says how to resume.
    let shell = "&session=raw&mode=shell";
    let mut stalled = app
        .ws_small_buffer(&format!("/api/v1/ws/terminal/{id}?token={token}{shell}"))
        .await;
    ws_until(&mut stalled, "status").await;
    input(&mut stalled, "seq 1 1000000\r").await;
    let node = format!("/api/v1/admin/actors/terminal:{id}:shell:raw");
    let client = app.authed_client(&token);
    eventually(
        Duration::from_secs(120),
        "the terminal to let go",
        async || {
            let terminal: Value = client.get(&node).await.json().await.unwrap();
            if terminal["clients"] == 0 {
                Ok(())
            } else {
                Err(terminal)
            }
        },
    )
    .await;
    let mut last = 0u64;
    loop {
        match ws_next(&mut stalled).await {
            WsEvent::Json(f) if f["type"] == "output" => {
                let seq = f["seq"].as_u64().unwrap();
                assert!(last == 0 || seq == last + 1, "gap: {last} then {seq}");
                last = seq;
            }
            WsEvent::Json(_) => {}
            WsEvent::Closed(Some((1013, reason))) => {
                assert!(reason.contains(&format!("resume={last}")), "{reason}");
                break;
            }
            WsEvent::Closed(other) => panic!("unexpected close: {other:?}"),
        }
    }
}

/// Opens a terminal like `open`, and says how many clients `welcome` counted.
async fn open_counted(app: &TestApp, token: &str, id: &str, extra: &str) -> (Ws, u64) {
    let mut ws = app
        .ws(&format!("/api/v1/ws/terminal/{id}?token={token}{extra}"))
        .await;
    let frames = ws_until(&mut ws, "status").await;
    let welcome = frames.iter().find(|f| f["type"] == "welcome").unwrap();
    assert_eq!(frames.last().unwrap()["state"], "connected", "{frames:?}");
    (ws, welcome["session"]["clients"].as_u64().unwrap())
}

#[actix_web::test]
async fn clients_on_two_processes_share_the_session_its_count_and_its_size_rule() {
    let (one, two) = crate::processes::two_on_one_host(&[]).await;
    let token = one.admin_token("roamer").await;
    let id = one.ready_environment(&token, "shared", "ubuntu").await;
    // The phone on one process, the laptop on the other (a load balancer's pick).
    let (mut phone, counted) = open_counted(&one, &token, &id, "&cols=50&rows=20").await;
    assert_eq!(counted, 1);
    let (mut laptop, counted) = open_counted(&two, &token, &id, "&cols=120&rows=40").await;
    assert_eq!(counted, 2, "the phone on the other process counts");
    // One shell: typed on one process, seen on the other.
    input(&mut phone, "echo from-$((40+2))\r").await;
    output_until(&mut laptop, "from-42").await;
    // And one size rule: the most recently active client's, whichever process it
    // is on.
    columns_seen(&mut laptop, 0, 120).await;
    columns_seen(&mut phone, 1000, 50).await;
    columns_seen(&mut laptop, 2000, 120).await;
}
