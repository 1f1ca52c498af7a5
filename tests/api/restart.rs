//! Restart safety: the server killed with SIGKILL while an environment provisions,
//! then started again: provisioning resumes, the bootstrap ran once, and no log
//! line is lost or duplicated.

use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use crate::helpers::{
    PASSWORD, TestDatabase, WsEvent, devpocket, serve, shut_down_machines, test_root, ws_next,
};
use serde_json::{Value, json};

const SLOW_TEMPLATE: &str = r#"
name: slow
display_name: Slow
description: Takes its time, to be interrupted.
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

fn start_server(db_url: &str, data_dir: &Path, templates: &Path) -> (Child, String) {
    let mut cmd = devpocket();
    cmd.env("DATABASE_URL", db_url)
        .env("DEVPOCKET_DATA_DIR", data_dir)
        .env("DEVPOCKET_TEMPLATES_DIR", templates)
        .env("DEVPOCKET_LEASE_TTL", "2s");
    serve(cmd)
}

async fn ws(address: &str, path: &str) -> crate::helpers::Ws {
    let url = format!("{}{path}", address.replacen("http://", "ws://", 1));
    tokio_tungstenite::connect_async(url).await.unwrap().0
}

#[actix_web::test]
async fn killed_mid_provisioning_resumes_without_loss_or_duplicates() {
    let db = TestDatabase::create().await;
    let root = test_root().join(format!("restart-{}", uuid::Uuid::new_v4().simple()));
    let (data_dir, templates) = (root.join("data"), root.join("templates"));
    std::fs::create_dir_all(&templates).unwrap();
    std::fs::write(templates.join("slow.yaml"), SLOW_TEMPLATE).unwrap();

    let (mut server, address) = start_server(&db.url, &data_dir, &templates);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let session: Value = client
        .post(format!("{address}/api/v1/auth/register"))
        .json(&json!({"username": "restarter", "email": "restarter@example.com", "password": PASSWORD}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = session["access_token"].as_str().unwrap().to_owned();
    let env: Value = client
        .post(format!("{address}/api/v1/environments"))
        .bearer_auth(&token)
        .json(&json!({"name": "interrupted", "template_id": "slow"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = env["id"].as_str().unwrap().to_owned();

    // Wait until provisioning is under way, then kill the server outright.
    let mut live = ws(&address, &format!("/api/v1/ws/logs/{id}?token={token}")).await;
    loop {
        match ws_next(&mut live).await {
            WsEvent::Json(frame) if frame["data"] == "line 5" => break,
            WsEvent::Json(_) => {}
            WsEvent::Closed(c) => panic!("closed early: {c:?}"),
        }
    }
    server.kill().unwrap();
    server.wait().unwrap();

    let (mut server, address) = start_server(&db.url, &data_dir, &templates);
    let deadline = Instant::now() + Duration::from_secs(120);
    let env = loop {
        let env: Value = client
            .get(format!("{address}/api/v1/environments/{id}"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if env["status"] != "creating" {
            break env;
        }
        assert!(Instant::now() < deadline, "still creating: {env}");
        actix_web::rt::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(env["status"], "running", "{env}");

    let logs: Value = client
        .get(format!(
            "{address}/api/v1/environments/{id}/logs?lines=1000"
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
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
    // The bootstrap ran exactly once.
    let runs = std::fs::read_to_string(
        data_dir
            .join("environments")
            .join(&id)
            .join("home")
            .join("runs"),
    )
    .unwrap();
    assert_eq!(runs.lines().count(), 1, "{runs}");

    // The host goes down with the server (the machine's sshd too); when the server
    // comes back, the running environment comes back up.
    server.kill().unwrap();
    server.wait().unwrap();
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
    let (mut server, address) = start_server(&db.url, &data_dir, &templates);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let metrics = client
            .get(format!("{address}/api/v1/environments/{id}/metrics"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        if metrics.status() == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the machine did not come back: {:?}",
            metrics.text().await
        );
        actix_web::rt::time::sleep(Duration::from_millis(200)).await;
    }

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    server.wait().unwrap();
    shut_down_machines(&data_dir);
    let _ = std::fs::remove_dir_all(&root);
}
