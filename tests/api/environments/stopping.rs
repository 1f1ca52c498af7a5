//! A local environment's stop is real: every process of the machine ends (its
//! sshd, tmux and whatever the tenant left running), and a start brings the machine
//! back with its home and without those processes.

use std::os::unix::fs::MetadataExt;

use serde_json::{Value, json};

use crate::helpers::{TestApp, is_root, run, skipped, ssh, until_no_process_of};

async fn lifecycle(app: &TestApp, token: &str, id: &str, action: &str, phase: &str) -> Value {
    let response = app
        .authed_client(token)
        .post(&format!("/api/v1/environments/{id}/{action}"), &json!({}))
        .await;
    assert_eq!(response.status(), 202, "{action}");
    app.wait_for_env(token, id, |e| e["phase"] == phase).await
}

#[actix_web::test]
async fn a_stop_ends_every_process_of_the_machine_and_a_start_keeps_only_the_home() {
    if !is_root() {
        return skipped();
    }
    let app = TestApp::spawn().await;
    let token = app.admin_token("stopper").await;
    let id = app.ready_environment(&token, "stopping", "ubuntu").await;
    let shell = ssh(&app, &id).await;
    // tmux's pane and setsid's child exec `sleep` after their commands return: wait
    // (bounded, on the process table) until both are there.
    let (status, out) = run(
        &shell,
        "echo kept > ~/kept.txt && tmux new-session -d -s left 'sleep 1001' && \
         setsid -f sleep 1002 </dev/null >/dev/null 2>&1 && \
         for _ in $(seq 100); do \
           n=$(pgrep -u \"$(id -u)\" -x sleep | wc -l); [ \"$n\" = 2 ] && break; sleep 0.1; \
         done; echo \"$n\"",
    )
    .await;
    assert_eq!((status, out.trim()), (0, "2"), "{out}");
    shell.close().await;
    let home = app
        .data_dir
        .canonicalize()
        .unwrap()
        .join("environments")
        .join(&id)
        .join("home");
    let uid = std::fs::metadata(&home).unwrap().uid();

    let stopped = lifecycle(&app, &token, &id, "stop", "stopped").await;
    assert_eq!(stopped["status"], "stopped", "{stopped}");
    until_no_process_of(uid).await;

    let started = lifecycle(&app, &token, &id, "start", "ready").await;
    assert_eq!(started["status"], "running", "{started}");
    let shell = ssh(&app, &id).await;
    let (_, out) = run(
        &shell,
        "cat ~/kept.txt; tmux has-session -t left 2>/dev/null && echo tmux-survived; \
         pgrep -u \"$(id -u)\" -x sleep || echo no-sleep",
    )
    .await;
    shell.close().await;
    assert_eq!(
        out.split_whitespace().collect::<Vec<_>>(),
        ["kept", "no-sleep"],
        "{out}"
    );
}
