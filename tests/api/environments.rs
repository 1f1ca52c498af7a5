//! Environments with the local provider, for real: sshd, the bootstrap, the SSH log
//! tail, lifecycle, quotas and isolation.

mod list;
mod stopping;

use crate::helpers::{TestApp, WsEvent, assert_error, eventually, ws_next, ws_until};
use serde_json::{Value, json};

async fn create(app: &TestApp, token: &str, name: &str, template: &str) -> Value {
    let response = app
        .authed_client(token)
        .post("/api/v1/environments/", &json!({"name": name, "template_id": template, "resource_limits": null, "environment_variables": {"GREETING": "hello"}}))
        .await;
    assert_eq!(response.status(), 201, "{:?}", response.text().await);
    response.json().await.unwrap()
}

fn seqs(frames: &[Value]) -> Vec<i64> {
    frames
        .iter()
        .filter(|f| f["type"] == "installation_log")
        .map(|f| f["seq"].as_i64().unwrap())
        .collect()
}

#[actix_web::test]
async fn full_lifecycle_with_live_provisioning_logs() {
    let app = TestApp::spawn().await;
    let token = app.user_token("lifecycle").await;
    let env = create(&app, &token, "My Awesome Project", "python").await;
    assert_eq!(env["status"], "creating");
    for field in [
        "id",
        "name",
        "template_id",
        "template",
        "status",
        "resource_limits",
        "resources",
        "environment_variables",
        "created_at",
        "updated_at",
        "provider",
        "region",
        "size",
        "phase",
        "progress",
    ] {
        assert!(env.get(field).is_some(), "{field} missing: {env}");
    }
    assert_eq!(env["template"], env["template_id"]);
    assert_eq!(env["provider"], "local");
    let id = env["id"].as_str().unwrap().to_owned();

    // Live stream: history then live, numbered without gaps, with progress.
    let mut ws = app.ws(&format!("/api/v1/ws/logs/{id}?token={token}")).await;
    let frames = ws_until(&mut ws, "installation_complete").await;
    let lines = seqs(&frames);
    assert!(!lines.is_empty());
    assert_eq!(
        lines,
        (1..=lines.len() as i64).collect::<Vec<_>>(),
        "gap or duplicate"
    );
    let progress: Vec<&Value> = frames
        .iter()
        .filter(|f| f["type"] == "installation_progress")
        .collect();
    assert!(!progress.is_empty(), "no progress: {frames:?}");
    let last = progress.last().unwrap();
    assert_eq!(last["step"], last["total"]);
    assert_eq!(last["percent"], 100);

    let env = app
        .wait_for_env(&token, &id, |e| e["status"] == "running")
        .await;
    assert_eq!(env["phase"], "ready");
    assert_eq!(env["progress"], 100);
    assert_eq!(env["ip_address"], "127.0.0.1");
    assert!(env["ssh_port"].as_i64().unwrap() > 0);
    assert!(env["started_at"].is_string());

    // A late subscriber gets the whole history, then completion.
    let mut late = app.ws(&format!("/api/v1/ws/logs/{id}?token={token}")).await;
    let replay = ws_until(&mut late, "installation_complete").await;
    assert_eq!(seqs(&replay), lines);
    // Resuming after a line sends only what follows it.
    let mut resumed = app
        .ws(&format!("/api/v1/ws/logs/{id}?token={token}&after=3"))
        .await;
    let rest = ws_until(&mut resumed, "installation_complete").await;
    assert_eq!(seqs(&rest), lines[3..].to_vec());

    // Over HTTP, as the app reads it.
    let logs: Value = app
        .authed_client(&token)
        .get(&format!("/api/v1/environments/{id}/logs?lines=2"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(logs["logs"].as_array().unwrap().len(), 2);
    assert!(logs["logs"][0].is_string());
    assert_eq!(logs["total"], lines.len());
    assert_eq!(logs["has_more"], true);
    let after: Value = app
        .authed_client(&token)
        .get(&format!(
            "/api/v1/environments/{id}/logs?after={}",
            lines.len() - 1
        ))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(after["logs"].as_array().unwrap().len(), 1);
    assert_eq!(after["has_more"], false);

    // Metrics are measured on the machine.
    let metrics: Value = app
        .authed_client(&token)
        .get(&format!("/api/v1/environments/{id}/metrics"))
        .await
        .json()
        .await
        .unwrap();
    for field in [
        "cpu_usage",
        "memory_usage",
        "disk_usage",
        "network_in",
        "network_out",
    ] {
        assert!(metrics[field].is_number(), "{field}: {metrics}");
    }
    assert!(metrics["memory_usage"].as_f64().unwrap() > 0.0);
    assert!(metrics["timestamp"].is_string());

    // Stop, start, restart.
    let client = app.authed_client(&token);
    let stopping = client
        .post(&format!("/api/v1/environments/{id}/stop"), &json!({}))
        .await;
    assert_eq!(stopping.status(), 202);
    app.wait_for_env(&token, &id, |e| e["status"] == "stopped")
        .await;
    assert_error(
        client
            .post(&format!("/api/v1/environments/{id}/stop"), &json!({}))
            .await,
        409,
        "environment_already_stopped",
    )
    .await;
    assert_error(
        client
            .get(&format!("/api/v1/environments/{id}/metrics"))
            .await,
        409,
        "environment_not_running",
    )
    .await;

    assert_eq!(
        client
            .post(&format!("/api/v1/environments/{id}/start"), &json!({}))
            .await
            .status(),
        202
    );
    app.wait_for_env(&token, &id, |e| {
        e["status"] == "running" && e["phase"] == "ready"
    })
    .await;
    // The row says running a moment before the environment's actor has closed the
    // start (its work writes, then tells the actor): a start in between is busy.
    let again: Value = eventually(
        std::time::Duration::from_secs(10),
        "the start to be over",
        async || {
            let response = client
                .post(&format!("/api/v1/environments/{id}/start"), &json!({}))
                .await;
            assert_eq!(response.status(), 409);
            let body: Value = response.json().await.unwrap();
            if body["code"] == "operation_in_progress" {
                Err(body)
            } else {
                Ok(body)
            }
        },
    )
    .await;
    assert_eq!(again["code"], "environment_already_running", "{again}");

    let restarting: Value = client
        .post(&format!("/api/v1/environments/{id}/restart"), &json!({}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(restarting["phase"], "restarting");
    let env = app
        .wait_for_env(&token, &id, |e| {
            e["status"] == "running" && e["phase"] == "ready"
        })
        .await;
    assert_eq!(env["name"], "My Awesome Project");

    // Rename and variables.
    let renamed = client
        .put(
            &format!("/api/v1/environments/{id}"),
            &json!({"name": "Renamed", "environment_variables": {"A": "1"}}),
        )
        .await;
    assert_eq!(renamed.status(), 200);
    let renamed: Value = renamed.json().await.unwrap();
    assert_eq!(renamed["name"], "Renamed");
    assert_eq!(renamed["environment_variables"], json!({"A": "1"}));

    // Delete: subscribers are closed cleanly, the machine's files are gone.
    let mut watcher = app.ws(&format!("/api/v1/ws/logs/{id}?token={token}")).await;
    ws_until(&mut watcher, "installation_complete").await;
    let deleting = client.delete(&format!("/api/v1/environments/{id}")).await;
    assert_eq!(deleting.status(), 202);
    match ws_next(&mut watcher).await {
        WsEvent::Closed(Some((1000, _))) => {}
        other => panic!("expected a normal close, got {other:?}"),
    }
    assert_error(
        client.get(&format!("/api/v1/environments/{id}")).await,
        404,
        "not_found",
    )
    .await;
    assert!(!app.data_dir.join("environments").join(&id).exists());
    let list: Vec<Value> = client
        .get("/api/v1/environments")
        .await
        .json()
        .await
        .unwrap();
    assert!(list.is_empty());
}

#[actix_web::test]
async fn a_failing_bootstrap_ends_in_error_with_installation_error() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token("failing_admin").await;
    let template = app
        .authed_client(&admin)
        .post(
            "/api/v1/templates",
            &json!({
                "name": "broken", "display_name": "Broken", "description": "fails on purpose",
                "category": "operating_system", "tags": [], "docker_image": "debian:12",
                "bootstrap": "#!/bin/sh\necho '==> [1/2] Starting'\necho 'something went wrong' >&2\nexit 3\n"
            }),
        )
        .await;
    assert_eq!(template.status(), 201, "{:?}", template.text().await);
    let env = create(&app, &admin, "broken one", "broken").await;
    let id = env["id"].as_str().unwrap();
    let mut ws = app.ws(&format!("/api/v1/ws/logs/{id}?token={admin}")).await;
    let frames = ws_until(&mut ws, "installation_error").await;
    let error = frames.last().unwrap()["error"].as_str().unwrap().to_owned();
    assert!(error.contains("exit status 3"), "{error}");
    assert!(
        frames.iter().any(|f| f["data"] == "something went wrong"),
        "stderr is in the log: {frames:?}"
    );
    let env = app
        .wait_for_env(&admin, id, |e| e["status"] == "error")
        .await;
    assert_eq!(env["phase"], "failed");
    assert!(
        env["status_message"]
            .as_str()
            .unwrap()
            .contains("exit status 3")
    );
}

#[actix_web::test]
async fn quotas_sizes_and_templates_are_checked() {
    let app = TestApp::spawn().await;
    let token = app.user_token("quota").await;
    let client = app.authed_client(&token);
    let unknown = client
        .post(
            "/api/v1/environments",
            &json!({"name": "x", "template_id": "cobol"}),
        )
        .await;
    let body = assert_error(unknown, 422, "validation_error").await;
    let message = body["context"]["fields"]["template_id"][0]
        .as_str()
        .unwrap();
    assert!(
        message.contains("python") && message.contains("nodejs"),
        "{message}"
    );

    let too_big = client
        .post(
            "/api/v1/environments",
            &json!({"name": "big", "template_id": "ubuntu", "size": "large"}),
        )
        .await;
    let body = assert_error(too_big, 403, "forbidden").await;
    assert!(body["detail"].as_str().unwrap().contains("free plan"));

    let first = create(&app, &token, "first", "ubuntu").await;
    let second = client
        .post(
            "/api/v1/environments",
            &json!({"name": "second", "template_id": "ubuntu"}),
        )
        .await;
    let body = assert_error(second, 403, "quota_exceeded").await;
    assert!(
        body["detail"].as_str().unwrap().contains("Stop or delete"),
        "{body}"
    );

    // Same name again → 409, whatever the quota says.
    let admin = app.admin_token("quota_admin").await;
    create(&app, &admin, "dup", "ubuntu").await;
    let dup = app
        .authed_client(&admin)
        .post(
            "/api/v1/environments",
            &json!({"name": "DUP", "template_id": "ubuntu"}),
        )
        .await;
    let body = assert_error(dup, 409, "name_taken").await;
    assert_eq!(body["context"]["field"], "name", "{body}");

    // Another user's environment does not exist for them, over HTTP and WebSocket.
    let id = first["id"].as_str().unwrap();
    let stranger = app.user_token("stranger").await;
    let other = app.authed_client(&stranger);
    assert_error(
        other.get(&format!("/api/v1/environments/{id}")).await,
        404,
        "not_found",
    )
    .await;
    assert_error(
        other.delete(&format!("/api/v1/environments/{id}")).await,
        404,
        "not_found",
    )
    .await;
    assert_error(
        other.get(&format!("/api/v1/environments/{id}/logs")).await,
        404,
        "not_found",
    )
    .await;
    let list: Vec<Value> = other
        .get("/api/v1/environments")
        .await
        .json()
        .await
        .unwrap();
    assert!(list.is_empty());
    let mut ws = app
        .ws(&format!("/api/v1/ws/logs/{id}?token={stranger}"))
        .await;
    match ws_next(&mut ws).await {
        WsEvent::Closed(Some((1008, reason))) => assert!(reason.contains("not found"), "{reason}"),
        other => panic!("expected 1008, got {other:?}"),
    }
    let mut ws = app.ws(&format!("/api/v1/ws/logs/{id}?token=garbage")).await;
    assert!(matches!(
        ws_next(&mut ws).await,
        WsEvent::Closed(Some((1008, _)))
    ));
    let mut ws = app.ws(&format!("/api/v1/ws/logs/{id}")).await;
    assert!(matches!(
        ws_next(&mut ws).await,
        WsEvent::Closed(Some((1008, _)))
    ));
}
