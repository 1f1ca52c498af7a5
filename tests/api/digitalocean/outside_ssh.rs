//! An SSH session into a droplet from outside DevPocket is activity: the user adds
//! a key of their own through the terminal and connects from another address;
//! while that session is open the environment is not stopped for being idle (its
//! activity says `ssh_session`, from that address), though the server's own
//! terminal connection stays open and is never counted; once the session closes,
//! the idle stop comes.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::SinkExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use super::spawn_app;
use crate::auto_stop::{activity, time};
use crate::fake_do::FakeDo;
use crate::helpers::{TestApp, WsEvent, eventually, test_root, ws_next, ws_until};

/// Where the "outside" connects from: a loopback address no fake droplet and no
/// server uses (they have 127.0.x.y and 127.0.0.1).
const OUTSIDE: &str = "127.1.0.1";

/// An `ssh` client with a session open on the droplet; killed when dropped.
struct Session(Child);

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Connects from `OUTSIDE` as the droplet's user with `key`, and returns once the
/// session runs a command.
async fn connect_from_outside(key: &std::path::Path, ip: &str) -> Session {
    let mut child = Command::new("ssh")
        .args(["-F", "/dev/null", "-T", "-b", OUTSIDE, "-i"])
        .arg(key)
        .args([
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
            &format!("dev@{ip}"),
            "echo outside-session-up; exec sleep 600",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("ssh");
    let stdout = child.stdout.take().expect("stdout");
    let session = Session(child);
    let up = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .any(|line| line == "outside-session-up")
    });
    let up = tokio::time::timeout(Duration::from_secs(30), up).await;
    assert!(
        matches!(up, Ok(Ok(true))),
        "the outside SSH session did not come up"
    );
    session
}

/// Waits until the last activity is an outside SSH session seen after `after`.
async fn seen_outside(app: &TestApp, token: &str, id: &str, after: DateTime<Utc>) -> Value {
    eventually(
        Duration::from_secs(60),
        "the outside session to be seen",
        async || {
            let now = activity(app, token, id).await;
            let last = &now["last_activity"];
            let seen = last["kind"] == "ssh_session" && time(&now["last_activity_at"]) > after;
            if seen { Ok(now) } else { Err(now) }
        },
    )
    .await
}

#[actix_web::test]
async fn an_ssh_session_from_outside_keeps_a_droplet_up_until_it_closes() {
    let fake = FakeDo::start();
    let app = spawn_app(
        &fake,
        &[
            ("DEVPOCKET_AUTO_STOP_ADMIN", "20s"),
            ("DEVPOCKET_AUTO_STOP_WARNING", "8s"),
            ("DEVPOCKET_AUTO_STOP_CHECK", "1s"),
        ],
    )
    .await;
    let token = app.admin_token("outside").await;
    let id = app.ready_environment(&token, "outside", "ubuntu").await;
    let env = app
        .wait_for_env(&token, &id, |e| e["status"] == "running")
        .await;
    let ip = env["ip_address"].as_str().expect("ip").to_owned();

    // The user authorizes a key of their own, through DevPocket's terminal, which
    // stays open (the server's own connection to the droplet) without input.
    let dir = test_root().join(format!("outside-ssh-{id}"));
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("id_ed25519");
    let (private, public) = devpocket_actors::ssh::generate_keypair("laptop").unwrap();
    std::fs::write(&key, private).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut ws = app
        .ws(&format!("/api/v1/ws/terminal/{id}?token={token}"))
        .await;
    let frames = ws_until(&mut ws, "status").await;
    assert_eq!(frames.last().unwrap()["state"], "connected", "{frames:?}");
    let command = format!(
        "mkdir -p ~/.ssh && printf '%s\\n' '{}' >> ~/.ssh/authorized_keys && echo key-$((40+2))\r",
        public.trim()
    );
    let input = json!({"type": "input", "data": command}).to_string();
    ws.send(Message::text(input)).await.unwrap();
    let mut output = String::new();
    while !output.contains("key-42") {
        match ws_next(&mut ws).await {
            WsEvent::Json(f) if f["type"] == "output" => {
                output.push_str(f["data"].as_str().unwrap())
            }
            WsEvent::Json(_) => {}
            WsEvent::Closed(c) => panic!("terminal closed: {c:?}; got {output:?}"),
        }
    }
    let typed = eventually(Duration::from_secs(30), "the input to count", async || {
        let now = activity(&app, &token, &id).await;
        if now["last_activity"]["kind"] == "terminal_input" {
            Ok(now)
        } else {
            Err(now)
        }
    })
    .await;
    let due = time(&typed["stop_at"]);

    let session = connect_from_outside(&key, &ip).await;

    // Seen when the stop is near, as activity from the session's address: the
    // stop is put off by a whole timeout...
    let first = seen_outside(&app, &token, &id, time(&typed["last_activity_at"])).await;
    assert_eq!(first["last_activity"]["client_address"], OUTSIDE, "{first}");
    assert_eq!(first["last_activity"]["session"], Value::Null, "{first}");
    let first_at = time(&first["last_activity_at"]);
    assert_eq!(
        time(&first["stop_at"]),
        first_at + chrono::Duration::seconds(20),
        "{first}"
    );
    // ...and again near the next one, after the time it would have stopped
    // without it: it runs still.
    let second = seen_outside(&app, &token, &id, first_at).await;
    assert!(time(&second["last_activity_at"]) > due, "{second}");
    let env: Value = app
        .authed_client(&token)
        .get(&format!("/api/v1/environments/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(env["status"], "running", "{env}");

    // Closed, it holds nothing: the warning, then the stop, while the server's own
    // terminal connection is still open.
    drop(session);
    let closed = loop {
        match ws_next(&mut ws).await {
            WsEvent::Json(f) if f["type"] == "status" && f["state"] == "closed" => break f,
            WsEvent::Json(_) => {}
            WsEvent::Closed(c) => panic!("terminal closed without a reason: {c:?}"),
        }
    };
    assert!(
        closed["message"]
            .as_str()
            .is_some_and(|m| m.contains("without activity")),
        "{closed}"
    );
    let env = app
        .wait_for_env(&token, &id, |e| e["status"] == "stopped")
        .await;
    assert!(
        env["status_message"]
            .as_str()
            .is_some_and(|m| m.contains("20 seconds without activity")),
        "{env}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
