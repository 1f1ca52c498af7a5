//! Nothing a deleted environment owned survives it: a delete at any step of a
//! create waits for the create to stop and then removes its machine, files, user
//! and processes; at start-up, local machines that belong to no live environment
//! (a crash between the steps of a delete, say) are removed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{
    Api, PASSWORD, Server, TestApp, WsEvent, devpocket, serve, shut_down_machines, test_database,
    test_root, ws_connect, ws_next,
};

/// A bootstrap that takes a while in the middle, to be deleted during.
const SLOW_TEMPLATE: &str = r#"
name: slow
display_name: Slow
description: Takes its time, to be deleted halfway.
category: operating_system
tags: [test]
docker_image: "debian:12"
bootstrap: |
  #!/bin/sh
  echo "==> [1/2] Waiting"
  sleep 30
  echo "==> [2/2] Done"
"#;

fn templates_dir() -> PathBuf {
    let dir = test_root().join(format!("templates-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("slow.yaml"), SLOW_TEMPLATE).unwrap();
    dir
}

/// What is left of environment `id`'s local machine under `data_dir`: its
/// directory, its user, and processes that name it (its sshd) or carry its id
/// (its init and bootstrap).
pub fn leftovers(data_dir: &Path, id: &str) -> Vec<String> {
    let mut left = Vec::new();
    let dir = data_dir.join("environments").join(id);
    if dir.exists() {
        left.push(format!("directory {}", dir.display()));
    }
    let user = format!("dp-{}", id.replace('-', "").get(..12).unwrap_or_default());
    if nix::unistd::User::from_name(&user).unwrap().is_some() {
        left.push(format!("user {user}"));
    }
    let marker = format!("DEVPOCKET_ENVIRONMENT_ID={id}");
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let proc = entry.path();
        let cmdline = std::fs::read(proc.join("cmdline")).unwrap_or_default();
        let environ = std::fs::read(proc.join("environ")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(id)
            || String::from_utf8_lossy(&environ).contains(&marker)
        {
            left.push(format!(
                "process {}: {}",
                entry.file_name().to_string_lossy(),
                String::from_utf8_lossy(&cmdline).replace('\0', " ")
            ));
        }
    }
    left
}

async fn create(app: &TestApp, token: &str, name: &str) -> String {
    let env: Value = app
        .authed_client(token)
        .post(
            "/api/v1/environments",
            &json!({"name": name, "template_id": "slow"}),
        )
        .await
        .json()
        .await
        .unwrap();
    env["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{env}"))
        .to_owned()
}

async fn delete(app: &TestApp, token: &str, id: &str) {
    let response = app
        .authed_client(token)
        .delete(&format!("/api/v1/environments/{id}"))
        .await;
    assert_eq!(response.status(), 202, "{:?}", response.text().await);
    app.wait_for_env(token, id, |e| e["code"] == "not_found")
        .await;
}

#[actix_web::test]
async fn a_delete_at_any_step_of_a_create_leaves_nothing_behind() {
    let templates = templates_dir();
    let app =
        TestApp::spawn_with(&[("DEVPOCKET_TEMPLATES_DIR", templates.to_str().unwrap())]).await;
    let token = app.admin_token("deleter").await;
    let data = app.data_dir.canonicalize().unwrap();
    let mut deleted = Vec::new();

    // While the machine is being made: at once, and at moments spread over the
    // provider's steps (user, home, sshd, init), which take a few hundred ms.
    for (i, pause) in [0u64, 10, 40, 100, 200, 400].into_iter().enumerate() {
        let id = create(&app, &token, &format!("during create {i}")).await;
        actix_web::rt::time::sleep(Duration::from_millis(pause)).await;
        delete(&app, &token, &id).await;
        assert_eq!(
            leftovers(&data, &id),
            Vec::<String>::new(),
            "after {pause} ms"
        );
        deleted.push(id);
    }

    // While the bootstrap runs: its first line has been logged.
    let id = create(&app, &token, "during bootstrap").await;
    let mut logs = app.ws(&format!("/api/v1/ws/logs/{id}?token={token}")).await;
    loop {
        match ws_next(&mut logs).await {
            WsEvent::Json(frame) if frame["type"] == "installation_log" => break,
            WsEvent::Json(_) => {}
            WsEvent::Closed(c) => panic!("closed early: {c:?}"),
        }
    }
    delete(&app, &token, &id).await;
    assert_eq!(leftovers(&data, &id), Vec::<String>::new());
    deleted.push(id);

    // Every create ended before its delete went on: nothing came back since.
    for id in &deleted {
        assert_eq!(leftovers(&data, id), Vec::<String>::new(), "{id} came back");
    }
    let _ = std::fs::remove_dir_all(&templates);
}

fn start_server(db_url: &str, data_dir: &Path) -> Server {
    let mut cmd = devpocket();
    cmd.env("DATABASE_URL", db_url)
        .env("DEVPOCKET_DATA_DIR", data_dir);
    serve(cmd)
}

#[actix_web::test]
async fn machines_of_no_live_environment_are_removed_at_start_up() {
    let db = test_database().await;
    let root = test_root().join(format!("orphans-{}", uuid::Uuid::new_v4().simple()));
    let data_dir = root.join("data");
    let mut server = start_server(&db.url, &data_dir);
    let api = Api::new(&server.address);
    let token = api.register("orphaner", PASSWORD).await.unwrap();
    // Two environments at once: more than the free plan's.
    let mut conn = db.connect().await;
    diesel_async::RunQueryDsl::execute(
        diesel::sql_query("UPDATE users SET subscription_plan = 'admin'"),
        &mut conn,
    )
    .await
    .unwrap();
    let mut ids = Vec::new();
    for name in ["kept", "orphaned"] {
        let id = api
            .create_environment(&token, name, "ubuntu")
            .await
            .unwrap();
        let mut logs = ws_connect(
            &server.address,
            &format!("/api/v1/ws/logs/{id}?token={token}"),
        )
        .await;
        loop {
            match ws_next(&mut logs).await {
                WsEvent::Json(frame) if frame["type"] == "installation_complete" => break,
                WsEvent::Json(_) => {}
                WsEvent::Closed(c) => panic!("closed early: {c:?}"),
            }
        }
        ids.push(id);
    }
    // The server dies after the database has forgotten one environment but before
    // its machine was removed.
    server.kill();
    diesel_async::RunQueryDsl::execute(
        diesel::sql_query(
            "UPDATE environments SET deleted_at = now(), status = 'terminated', phase = 'deleted' WHERE id = $1",
        )
        .bind::<diesel::sql_types::Uuid, _>(uuid::Uuid::parse_str(&ids[1]).unwrap()),
        &mut conn,
    )
    .await
    .unwrap();
    let data = data_dir.canonicalize().unwrap();
    assert!(!leftovers(&data, &ids[1]).is_empty());

    let server = start_server(&db.url, &data_dir);
    assert_eq!(leftovers(&data, &ids[1]), Vec::<String>::new());
    assert!(
        data.join("environments")
            .join(&ids[0])
            .join("home")
            .is_dir(),
        "a live environment's machine was removed"
    );

    server.stop().unwrap();
    shut_down_machines(&data_dir);
    let _ = std::fs::remove_dir_all(&root);
}
