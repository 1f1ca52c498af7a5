//! Restart safety: the server killed with SIGKILL while an environment provisions,
//! then started again: provisioning resumes, the bootstrap ran once, and no log
//! line is lost or duplicated.

use std::path::Path;
use std::time::Duration;

use crate::helpers::{
    Api, PASSWORD, Server, WsEvent, devpocket, eventually, serve, shut_down_machines,
    test_database, test_root, ws_connect, ws_next,
};

/// A bootstrap that prints for about three seconds, in two stages.
pub(crate) const SLOW_TEMPLATE: &str = r#"
name: slow
display_name: Slow
description: Takes its time, to be interrupted or watched from elsewhere.
category: operating_system
tags: [test]
docker_image: "debian:12"
bootstrap: |
  #!/bin/sh
  set -eu
  echo "ran" >> "$HOME/runs"
  echo "==> [1/2] Counting"
  i=0
  while [ $i -lt 30 ]; do
    echo "line $i"
    i=$((i + 1))
    sleep 0.1
  done
  echo "==> [2/2] Done"
"#;

pub(crate) fn start_server(db_url: &str, data_dir: &Path, templates: &Path) -> Server {
    let mut cmd = devpocket();
    cmd.env("DATABASE_URL", db_url)
        .env("DEVPOCKET_DATA_DIR", data_dir)
        .env("DEVPOCKET_TEMPLATES_DIR", templates)
        .env("DEVPOCKET_LEASE_TTL", "2s");
    serve(cmd)
}

/// The slow bootstrap ran exactly once on environment `id`'s machine.
pub(crate) fn assert_ran_once(data_dir: &Path, id: &str) {
    let runs = data_dir
        .join("environments")
        .join(id)
        .join("home")
        .join("runs");
    let runs = std::fs::read_to_string(runs).unwrap();
    assert_eq!(runs.lines().count(), 1, "the bootstrap ran again: {runs}");
}

/// Until the slow bootstrap has printed its sixth line, as `server`'s log shows.
pub(crate) async fn under_way(server: &Server, token: &str, id: &str) {
    let mut live = ws_connect(
        &server.address,
        &format!("/api/v1/ws/logs/{id}?token={token}"),
    )
    .await;
    loop {
        match ws_next(&mut live).await {
            WsEvent::Json(frame) if frame["data"] == "line 5" => break,
            WsEvent::Json(_) => {}
            WsEvent::Closed(c) => panic!("closed early: {c:?}"),
        }
    }
}

#[actix_web::test]
async fn killed_mid_provisioning_resumes_without_loss_or_duplicates() {
    let db = test_database().await;
    let root = test_root().join(format!("restart-{}", uuid::Uuid::new_v4().simple()));
    let (data_dir, templates) = (root.join("data"), root.join("templates"));
    std::fs::create_dir_all(&templates).unwrap();
    std::fs::write(templates.join("slow.yaml"), SLOW_TEMPLATE).unwrap();

    let mut server = start_server(&db.url, &data_dir, &templates);
    let (token, id) = Api::new(&server.address)
        .new_user_with_environment(("restarter", PASSWORD), "interrupted", "slow")
        .await
        .unwrap();

    // Wait until provisioning is under way, then kill the server outright.
    under_way(&server, &token, &id).await;
    server.kill();

    let mut server = start_server(&db.url, &data_dir, &templates);
    let api = Api::new(&server.address);
    api.running(&token, &id, Duration::from_secs(120))
        .await
        .unwrap();

    let logs = api.logs(&token, &id).await.unwrap();
    let lines: Vec<&str> = logs["logs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    for i in 0..30 {
        let wanted = format!("line {i}");
        assert_eq!(
            lines.iter().filter(|l| **l == wanted).count(),
            1,
            "{wanted} in {lines:?}"
        );
    }
    assert_eq!(logs["first_seq"], 1);
    assert_eq!(
        logs["last_seq"].as_i64().unwrap(),
        lines.len() as i64,
        "numbering has a gap"
    );
    assert_ran_once(&data_dir, &id);

    // The host goes down with the server (the machine's sshd too); when the server
    // comes back, the running environment comes back up.
    server.kill();
    let machine = data_dir.join("environments").join(&id).join("machine");
    let sshd: i32 = std::fs::read_to_string(machine.join("sshd.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(sshd),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let server = start_server(&db.url, &data_dir, &templates);
    let api = Api::new(&server.address);
    let metrics = api.url(&format!("/api/v1/environments/{id}/metrics"));
    eventually(
        Duration::from_secs(60),
        "the machine to come back",
        async || {
            let response = api.http.get(&metrics).bearer_auth(&token).send().await;
            match response.unwrap() {
                r if r.status() == 200 => Ok(()),
                r => Err(format!("{}: {}", r.status(), r.text().await.unwrap())),
            }
        },
    )
    .await;

    server.stop().unwrap();
    shut_down_machines(&data_dir);
    let _ = std::fs::remove_dir_all(&root);
}
