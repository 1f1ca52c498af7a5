//! A DigitalOcean environment through the server, for real: create → live logs →
//! running → a terminal session → stop → start → snapshot → resize → delete
//! (droplet and volume gone); snapshots and resizes refused where they cannot be.

use std::time::Duration;

use futures_util::SinkExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use super::{metric, spawn_app};
use crate::fake_do::{DropletStatus, FakeDo};
use crate::helpers::{TestApp, Ws, WsEvent, eventually, ws_next, ws_until};

/// Types `command` into a terminal and reads output until `needle`.
pub async fn run_in_terminal(
    app: &TestApp,
    token: &str,
    id: &str,
    command: &str,
    needle: &str,
) -> String {
    let mut ws: Ws = app
        .ws(&format!(
            "/api/v1/ws/terminal/{id}?token={token}&session=main"
        ))
        .await;
    let frames = ws_until(&mut ws, "status").await;
    assert_eq!(frames.last().unwrap()["state"], "connected", "{frames:?}");
    let input = json!({"type": "input", "data": format!("{command}\r")});
    ws.send(Message::Text(input.to_string().into()))
        .await
        .unwrap();
    let mut text = String::new();
    loop {
        match ws_next(&mut ws).await {
            WsEvent::Json(f) if f["type"] == "output" => {
                text.push_str(f["data"].as_str().unwrap());
                if text.contains(needle) {
                    return text;
                }
            }
            WsEvent::Json(_) => {}
            WsEvent::Closed(c) => panic!("terminal closed before {needle:?}: {c:?}; got {text:?}"),
        }
    }
}

pub async fn create(app: &TestApp, token: &str, name: &str) -> Value {
    let response = app
        .authed_client(token)
        .post(
            "/api/v1/environments",
            &json!({"name": name, "template_id": "ubuntu"}),
        )
        .await;
    assert_eq!(response.status(), 201, "{:?}", response.text().await);
    response.json().await.unwrap()
}

#[actix_web::test]
async fn full_lifecycle_on_digitalocean() {
    let fake = FakeDo::start();
    let app = spawn_app(&fake, &[]).await;
    let info: Value = app.get("/api/v1/info").await.json().await.unwrap();
    assert_eq!(info["default_provider"], "digitalocean", "{info}");
    let token = app.admin_token("ocean").await;

    let env = create(&app, &token, "Ocean Project").await;
    assert_eq!(env["provider"], "digitalocean");
    assert_eq!(
        (env["region"].as_str(), env["size"].as_str()),
        (Some("nyc3"), Some("s-1vcpu-1gb"))
    );
    assert!(
        env["billing_note"]
            .as_str()
            .unwrap()
            .contains("Stopped, only the home volume"),
        "{env}"
    );
    assert_eq!(env["resource_limits"]["cpu"], "1");
    let id = env["id"].as_str().unwrap().to_owned();
    let tag = format!("devpocket-env-{id}");

    // Live provisioning logs, from cloud-init's output on the droplet.
    let mut ws = app.ws(&format!("/api/v1/ws/logs/{id}?token={token}")).await;
    let frames = ws_until(&mut ws, "installation_complete").await;
    let lines: Vec<&str> = frames
        .iter()
        .filter(|f| f["type"] == "installation_log")
        .map(|f| f["data"].as_str().unwrap())
        .collect();
    assert!(
        lines.iter().any(|l| l.starts_with("Cloud-init v.")),
        "{lines:?}"
    );
    assert!(lines.iter().any(|l| l.contains("==> [5/5]")), "{lines:?}");
    let seqs: Vec<i64> = frames
        .iter()
        .filter(|f| f["type"] == "installation_log")
        .map(|f| f["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as i64).collect::<Vec<_>>(),
        "gap or duplicate"
    );
    assert!(frames.iter().any(|f| f["type"] == "installation_progress"));

    let env = app
        .wait_for_env(&token, &id, |e| e["status"] == "running")
        .await;
    let droplets = fake.droplets_tagged(&tag);
    assert_eq!(droplets.len(), 1);
    assert_eq!(env["ip_address"], droplets[0].ip.to_string());
    assert_eq!(env["ssh_port"], 22);

    // A terminal through the server, on the droplet, in the volume-backed home.
    let out = run_in_terminal(
        &app,
        &token,
        &id,
        "echo ocean-$((6*7)) $HOME",
        "ocean-42 /home/dev",
    )
    .await;
    assert!(out.contains("ocean-42"));

    // Stop: the droplet is shut down cleanly, then destroyed; the home volume
    // stays, and nothing but it is billed while the environment is stopped.
    let first = droplets[0].clone();
    let client = app.authed_client(&token);
    let stopping = client
        .post(&format!("/api/v1/environments/{id}/stop"), &json!({}))
        .await;
    assert_eq!(stopping.status(), 202);
    let env = app
        .wait_for_env(&token, &id, |e| e["status"] == "stopped")
        .await;
    assert!(
        env["billing_note"]
            .as_str()
            .unwrap()
            .contains("only the home volume"),
        "{env}"
    );
    assert!(
        fake.droplets_tagged(&tag).is_empty(),
        "a stopped droplet is billed"
    );
    assert!(
        fake.count("dropletActions_post") > 0,
        "shut down before destroyed"
    );
    let volumes = fake.volumes();
    assert_eq!(volumes.len(), 1, "{volumes:?}");
    assert_eq!(first.volume_ids, [volumes[0].id.clone()]);
    let billed = fake.droplet_seconds();
    let _ = app
        .wait_for_env(&token, &id, |e| e["status"] == "stopped")
        .await;
    assert_eq!(
        fake.droplet_seconds(),
        billed,
        "billing went on while stopped"
    );

    // Start: a new droplet from the same user-data (the pinned host key, the
    // volume as home): the terminal reconnects to the same files.
    let starting = client
        .post(&format!("/api/v1/environments/{id}/start"), &json!({}))
        .await;
    assert_eq!(starting.status(), 202);
    let env = app
        .wait_for_env(&token, &id, |e| {
            e["status"] == "running" && e["phase"] == "ready"
        })
        .await;
    let droplets = fake.droplets_tagged(&tag);
    assert_eq!(droplets.len(), 1);
    let second = &droplets[0];
    assert_ne!(second.id, first.id, "a new droplet");
    assert_eq!(second.status, DropletStatus::Active);
    assert_eq!(second.volume_ids, first.volume_ids, "the same home volume");
    assert_eq!(
        second.user_data, first.user_data,
        "the same keys and mounts"
    );
    assert_eq!(env["ip_address"], second.ip.to_string(), "{env}");
    assert_eq!(fake.ever_created(&tag), 2);
    let out = run_in_terminal(&app, &token, &id, "ls ~/workspace", "hello.sh").await;
    assert!(
        out.contains("README.md"),
        "the home survived the stop: {out}"
    );
    let second = second.clone();
    eventually(
        Duration::from_secs(30),
        "the new droplet's first boot to skip the bootstrap",
        async || {
            let log = second.cloud_init_log();
            if log.contains("the bootstrap ran already") {
                Ok(())
            } else {
                Err(log)
            }
        },
    )
    .await;

    // A restart is one reboot action.
    let before = fake.count("dropletActions_post");
    let restarting = client
        .post(&format!("/api/v1/environments/{id}/restart"), &json!({}))
        .await;
    assert_eq!(restarting.status(), 202);
    let body: Value = restarting.json().await.unwrap();
    assert_eq!(body["phase"], "restarting", "{body}");
    let env = app
        .wait_for_env(&token, &id, |e| e["phase"] == "ready")
        .await;
    assert_eq!(env["status_message"], "restarted", "{env}");
    assert_eq!(fake.count("dropletActions_post") - before, 1, "one reboot");

    // A snapshot, while it runs.
    let snapshotting = client
        .post(
            &format!("/api/v1/environments/{id}/snapshot"),
            &json!({"name": "before-resize"}),
        )
        .await;
    assert_eq!(snapshotting.status(), 202);
    let body: Value = snapshotting.json().await.unwrap();
    assert_eq!(body["phase"], "snapshotting", "{body}");
    let env = app
        .wait_for_env(&token, &id, |e| e["phase"] == "ready")
        .await;
    assert!(
        env["status_message"]
            .as_str()
            .unwrap()
            .contains("snapshot before-resize saved"),
        "{env}"
    );
    let snapshots = fake.snapshots();
    assert_eq!(snapshots.len(), 1);
    assert_eq!(snapshots[0].1, "before-resize");

    // A resize: stopped for it, back up afterwards, same files.
    let resizing = client
        .post(
            &format!("/api/v1/environments/{id}/resize"),
            &json!({"size": "medium"}),
        )
        .await;
    assert_eq!(resizing.status(), 202);
    let body: Value = resizing.json().await.unwrap();
    assert_eq!(body["phase"], "resizing", "{body}");
    let env = app
        .wait_for_env(&token, &id, |e| e["phase"] == "ready")
        .await;
    assert_eq!(env["status"], "running", "{env}");
    assert_eq!(env["size"], "s-2vcpu-4gb", "{env}");
    assert_eq!(env["resource_limits"]["memory"], "4Gi", "{env}");
    let droplet = &fake.droplets_tagged(&tag)[0];
    assert_eq!(
        (droplet.size.as_str(), droplet.status),
        ("s-2vcpu-4gb", DropletStatus::Active)
    );
    // A larger size's disk came with it (the resize's `disk` flag): for good.
    assert_eq!(droplet.disk, 80);
    let shrinking = client
        .post(
            &format!("/api/v1/environments/{id}/resize"),
            &json!({"size": "small"}),
        )
        .await;
    assert_eq!(shrinking.status(), 202);
    let env = app
        .wait_for_env(&token, &id, |e| e["phase"] == "ready")
        .await;
    let message = env["status_message"].as_str().unwrap_or_default();
    assert!(
        message.contains("cannot shrink") && message.contains("at least 80 GB"),
        "{env}"
    );
    assert_eq!(env["size"], "s-2vcpu-4gb", "{env}");
    let droplet = &fake.droplets_tagged(&tag)[0];
    assert_eq!(
        (droplet.size.as_str(), droplet.disk, droplet.status),
        ("s-2vcpu-4gb", 80, DropletStatus::Active),
        "refused before the droplet was touched"
    );
    let again = client
        .post(
            &format!("/api/v1/environments/{id}/resize"),
            &json!({"size": "s-2vcpu-4gb"}),
        )
        .await;
    crate::helpers::assert_error(again, 409, "same_size").await;
    run_in_terminal(
        &app,
        &token,
        &id,
        "cat ~/workspace/hello.sh",
        "Hello from DevPocket",
    )
    .await;

    // Delete: droplet and volume are gone.
    let deleting = client.delete(&format!("/api/v1/environments/{id}")).await;
    assert_eq!(deleting.status(), 202);
    fake.wait_until("droplet and volume deleted", |f| {
        f.droplets().is_empty() && f.volumes().is_empty()
    })
    .await;
    // One droplet made by the create, one by the start after the stop.
    assert_eq!(fake.count("droplets_create"), 2);
    fake.assert_valid();

    // Every call to DigitalOcean is counted, by method and status.
    let calls = "devpocket_provider_api_calls_total";
    let provider = ("provider", "digitalocean");
    let created = metric(
        &app,
        calls,
        &[provider, ("method", "POST"), ("status", "202")],
    )
    .await;
    let answered = fake
        .exchanges()
        .iter()
        .filter(|e| e.method == "POST" && e.status == 202)
        .count();
    assert!(answered >= 1, "the droplet's create");
    assert_eq!(created, answered as f64, "as many as the fake answered");
    let read = metric(
        &app,
        calls,
        &[provider, ("method", "GET"), ("status", "200")],
    )
    .await;
    assert!(read > 0.0, "reads: {read}");
    // The droplet goes first; the volume after it (its answer may still be on its way).
    let deleted = metric(
        &app,
        calls,
        &[provider, ("method", "DELETE"), ("status", "204")],
    )
    .await;
    assert!(deleted >= 1.0, "the droplet's delete: {deleted}");
}

#[actix_web::test]
async fn snapshots_and_resizes_are_refused_on_the_local_provider() {
    let app = TestApp::spawn().await;
    let token = app.user_token("grounded").await;
    let id = app.ready_environment(&token, "landlocked", "ubuntu").await;
    let client = app.authed_client(&token);
    // A body is optional, but one that is there must be valid.
    let malformed = reqwest::Client::new()
        .post(app.url(&format!("/api/v1/environments/{id}/snapshot")))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body("{\"name\": ")
        .send()
        .await
        .unwrap();
    crate::helpers::assert_error(malformed, 400, "malformed_json").await;
    let empty = reqwest::Client::new()
        .post(app.url(&format!("/api/v1/environments/{id}/snapshot")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    crate::helpers::assert_error(empty, 409, "operation_unsupported").await;
    let body = crate::helpers::assert_error(
        client
            .post(&format!("/api/v1/environments/{id}/snapshot"), &json!({}))
            .await,
        409,
        "operation_unsupported",
    )
    .await;
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("local provider cannot take snapshots"),
        "{body}"
    );
    let body = crate::helpers::assert_error(
        client
            .post(
                &format!("/api/v1/environments/{id}/resize"),
                &json!({"size": "medium"}),
            )
            .await,
        409,
        "operation_unsupported",
    )
    .await;
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("cannot be resized"),
        "{body}"
    );
    crate::helpers::assert_error(
        client
            .post(&format!("/api/v1/environments/{id}/resize"), &json!({}))
            .await,
        422,
        "validation_error",
    )
    .await;
}

#[actix_web::test]
async fn a_template_too_large_for_user_data_is_refused_before_anything_is_made() {
    let fake = FakeDo::start();
    let app = spawn_app(&fake, &[]).await;
    let token = app.admin_token("bulky").await;
    let client = app.authed_client(&token);
    // Within a template's own limit, but not with the rest of the user-data.
    let bootstrap = format!("#!/bin/sh\n# {}\necho done\n", "x".repeat(63 * 1024));
    let template = client
        .post(
            "/api/v1/templates",
            &json!({
                "name": "bulky", "display_name": "Bulky", "description": "a long bootstrap",
                "category": "operating_system", "tags": [], "docker_image": "debian:12",
                "bootstrap": bootstrap
            }),
        )
        .await;
    assert_eq!(template.status(), 201, "{:?}", template.text().await);
    let refused = client
        .post(
            "/api/v1/environments",
            &json!({"name": "Bulky", "template_id": "bulky"}),
        )
        .await;
    let body = crate::helpers::assert_error(refused, 422, "validation_error").await;
    assert!(
        body.to_string()
            .contains("over DigitalOcean's limit of 64 KiB"),
        "{body}"
    );
    let listed: Vec<Value> = client
        .get("/api/v1/environments")
        .await
        .json()
        .await
        .unwrap();
    assert!(listed.is_empty(), "{listed:?}");
    assert!(fake.droplets().is_empty() && fake.volumes().is_empty());
    assert_eq!(fake.count("droplets_create"), 0);
}
