//! A tenant's machine that prints too much: its shell start-up files, its sshd's
//! `~/.ssh/rc` and its bootstrap cannot grow the server by what they print.

use std::time::Duration;

use devpocket_actors::logs::{MAX_LINE_BYTES, MAX_LOG_BYTES};
use devpocket_actors::ssh::{SshError, SshSession};
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;

use crate::digitalocean::metric;
use crate::helpers::TestApp;
use crate::helpers::{run, ssh};

/// The attack's size: what a start-up file prints into the server's command.
const FLOOD: u64 = 400_000_000;
/// How much the server may grow meanwhile, generously: other tests share the
/// process, and the flood is four times as much.
const GROWTH_BOUND_KB: u64 = 100 * 1024;

/// This process's peak resident memory (the server runs in it), in KiB.
fn peak_rss_kb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/self/status")
}

async fn metrics(app: &TestApp, token: &str, id: &str) -> reqwest::Response {
    app.authed_client(token)
        .get(&format!("/api/v1/environments/{id}/metrics"))
        .await
}

fn assert_real_metrics(body: &Value) {
    for field in [
        "cpu_usage",
        "memory_usage",
        "disk_usage",
        "network_in",
        "network_out",
    ] {
        assert!(body[field].is_number(), "{field}: {body}");
    }
    assert!(body["memory_usage"].as_f64().unwrap() > 0.0, "{body}");
}

/// Runs `command` on a PTY, as a terminal does, and returns what it printed.
async fn on_pty(session: &SshSession, command: &str) -> String {
    let mut channel = session.pty(command, 80, 24).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(
        Duration::from_secs(20),
        channel.make_reader().read_to_end(&mut out),
    )
    .await
    .expect("the PTY command ended")
    .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

#[actix_web::test]
async fn a_bashrc_that_floods_the_metrics_command_is_not_sourced_for_it() {
    let app = TestApp::spawn().await;
    let token = app.admin_token("bashrc_flood").await;
    let id = app.ready_environment(&token, "flooded", "ubuntu").await;
    let shell = ssh(&app, &id).await;
    // Prints 400 MB into any command that reads /proc/stat, the metrics sample's.
    let (status, out) = run(
        &shell,
        &format!(
            "{{ printf '%s\\n' 'export DEVPOCKET_MARK=sourced' \
             'case \"$BASH_EXECUTION_STRING\" in *proc/stat*) head -c {FLOOD} /dev/zero; exit 0;; esac'; \
             cat ~/.bashrc; }} > ~/.bashrc.new && mv ~/.bashrc.new ~/.bashrc"
        ),
    )
    .await;
    assert_eq!(status, 0, "{out}");

    let before = peak_rss_kb();
    let response = metrics(&app, &token, &id).await;
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_real_metrics(&body);
    let grown = peak_rss_kb().saturating_sub(before);
    assert!(grown < GROWTH_BOUND_KB, "the server grew by {grown} KiB");

    // The server's own commands skip the user's start-up files; a terminal's do not.
    let (_, exec) = run(&shell, "echo \"mark=$DEVPOCKET_MARK\"").await;
    assert_eq!(exec.trim(), "mark=");
    let pty = on_pty(&shell, "echo \"mark=$DEVPOCKET_MARK\"").await;
    assert!(pty.contains("mark=sourced"), "{pty:?}");
    shell.close().await;
}

#[actix_web::test]
async fn a_machine_that_prints_into_every_session_gets_a_clear_error_not_the_servers_memory() {
    let app = TestApp::spawn().await;
    let token = app.admin_token("rc_flood").await;
    let id = app.ready_environment(&token, "rc", "ubuntu").await;
    let shell = ssh(&app, &id).await;
    // sshd runs ~/.ssh/rc before every session's command, its output included.
    let (status, out) = run(
        &shell,
        &format!("mkdir -p ~/.ssh && echo 'head -c {FLOOD} /dev/zero' > ~/.ssh/rc"),
    )
    .await;
    assert_eq!(status, 0, "{out}");
    shell.close().await;

    let before = peak_rss_kb();
    let response = metrics(&app, &token, &id).await;
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    let grown = peak_rss_kb().saturating_sub(before);
    assert!(grown < GROWTH_BOUND_KB, "the server grew by {grown} KiB");
    // If sshd is ever told to skip the user's rc, the sample is simply real.
    if status == 503 {
        let detail = body["detail"].as_str().unwrap();
        assert!(detail.contains("printed more than"), "{body}");
    } else {
        assert_eq!(status, 200, "{body}");
        assert_real_metrics(&body);
    }
}

#[actix_web::test]
async fn a_command_past_its_byte_cap_or_deadline_is_stopped_and_the_connection_carries_on() {
    let app = TestApp::spawn().await;
    let token = app.admin_token("cap").await;
    let id = app.ready_environment(&token, "capped", "ubuntu").await;
    let shell = ssh(&app, &id).await;

    let err = shell
        .run("yes devpocket", Duration::from_secs(20), 64 * 1024)
        .await
        .expect_err("past the cap");
    assert!(matches!(err, SshError::OutputTooLarge(65536)), "{err}");
    assert!(
        err.to_string()
            .contains("the machine printed more than 65536 bytes"),
        "{err}"
    );
    let err = shell
        .run("sleep 60", Duration::from_millis(300), 1024)
        .await
        .expect_err("past the deadline");
    assert!(matches!(err, SshError::CommandTimeout), "{err}");

    // The same connection still answers: nothing of the stopped channels blocks it.
    // And the command was stopped, not just left unread: sshd closed its output,
    // so `yes` dies of the broken pipe.
    let out = shell
        .run(
            "timeout 20 sh -c 'while pgrep -u \"$(id -u)\" -x yes >/dev/null; do sleep 0.05; done' \
             && echo stopped",
            Duration::from_secs(30),
            1024,
        )
        .await
        .unwrap();
    assert_eq!(out.stdout, b"stopped\n", "{out:?}");
    shell.close().await;
}

#[actix_web::test]
async fn concurrent_metrics_requests_share_one_sample() {
    let app = TestApp::spawn().await;
    let token = app.admin_token("single_flight").await;
    let id = app.ready_environment(&token, "sampled", "ubuntu").await;
    let samples = || {
        metric(
            &app,
            "devpocket_ssh_connects_total",
            &[("purpose", "metrics")],
        )
    };
    assert_eq!(samples().await, 0.0);

    let requests = (0..8).map(|_| metrics(&app, &token, &id));
    let answers = futures_util::future::join_all(requests).await;
    let mut timestamps = Vec::new();
    for response in answers {
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        assert_real_metrics(&body);
        timestamps.push(body["timestamp"].clone());
    }
    assert!(
        timestamps.windows(2).all(|w| w[0] == w[1]),
        "{timestamps:?}"
    );
    assert_eq!(samples().await, 1.0);
}

#[actix_web::test]
async fn a_log_line_of_tens_of_megabytes_is_stored_truncated() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token("long_line").await;
    let size: u64 = 30_000_000;
    let template = app
        .authed_client(&admin)
        .post(
            "/api/v1/templates",
            &json!({
                "name": "longline", "display_name": "Long line", "description": "one huge line",
                "category": "operating_system", "tags": [], "docker_image": "debian:12",
                "bootstrap": format!(
                    "#!/bin/sh\nhead -c {size} /dev/zero | tr '\\0' x\necho\necho '==> [1/1] Done'\n"
                )
            }),
        )
        .await;
    assert_eq!(template.status(), 201, "{:?}", template.text().await);

    let before = peak_rss_kb();
    let id = app.ready_environment(&admin, "long", "longline").await;
    let grown = peak_rss_kb().saturating_sub(before);
    assert!(grown < GROWTH_BOUND_KB, "the server grew by {grown} KiB");

    let logs: Value = app
        .authed_client(&admin)
        .get(&format!("/api/v1/environments/{id}/logs?lines=1000"))
        .await
        .json()
        .await
        .unwrap();
    let lines: Vec<&str> = logs["logs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    let long = lines
        .iter()
        .find(|l| l.starts_with("xxxx"))
        .expect("the long line is stored");
    let dropped = size - MAX_LINE_BYTES as u64;
    assert_eq!(
        *long,
        format!(
            "{}… [line truncated: {dropped} bytes]",
            "x".repeat(MAX_LINE_BYTES)
        )
    );
    assert!(lines.contains(&"==> [1/1] Done"), "{lines:?}");
}

#[actix_web::test]
async fn a_provisioning_log_past_its_limit_fails_the_provisioning() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token("endless_log").await;
    // More than the limit, then a bootstrap that would go on for long.
    let size = MAX_LOG_BYTES + 1024 * 1024;
    let template = app
        .authed_client(&admin)
        .post(
            "/api/v1/templates",
            &json!({
                "name": "endless", "display_name": "Endless", "description": "prints and prints",
                "category": "operating_system", "tags": [], "docker_image": "debian:12",
                "bootstrap": format!(
                    "#!/bin/sh\nhead -c {size} /dev/zero | tr '\\0' x\nsleep 600\n"
                )
            }),
        )
        .await;
    assert_eq!(template.status(), 201, "{:?}", template.text().await);
    let env: Value = app
        .authed_client(&admin)
        .post(
            "/api/v1/environments",
            &json!({"name": "endless", "template_id": "endless"}),
        )
        .await
        .json()
        .await
        .unwrap();
    let id = env["id"].as_str().unwrap();
    let env = app
        .wait_for_env(&admin, id, |e| e["status"] != "creating")
        .await;
    assert_eq!(env["status"], "error", "{env}");
    let message = env["status_message"].as_str().unwrap_or_default();
    assert!(message.contains("provisioning log passed"), "{message}");
}
