//! Environment lifecycle requests and terminal sessions in the audit log.

use serde_json::{Value, json};

use super::{AGENT, actions, audit_until, post};
use crate::helpers::{TestApp, WsEvent, assert_error, ws_next};

/// Opens a terminal with our user agent and waits until it is attached.
async fn open_terminal(app: &TestApp, token: &str, id: &str) -> crate::helpers::Ws {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let url = format!(
        "{}/api/v1/ws/terminal/{id}?token={token}",
        app.address.replacen("http://", "ws://", 1)
    );
    let mut request = url.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("user-agent", AGENT.parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    loop {
        match ws_next(&mut ws).await {
            WsEvent::Json(f) if f["type"] == "status" && f["state"] == "connected" => return ws,
            WsEvent::Json(_) => {}
            WsEvent::Closed(c) => panic!("terminal closed: {c:?}"),
        }
    }
}

#[actix_web::test]
async fn environment_lifecycle_and_terminal_sessions_are_recorded() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token("root").await;
    let token = app.user_token("carol").await;
    let carol = app.authed_client(&token);
    let carol_id = carol
        .get("/api/v1/auth/me")
        .await
        .json::<Value>()
        .await
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let local = "127.0.0.1";
    let create = |name: &str| json!({"name": name, "template_id": "ubuntu"});

    let created = post(
        &app,
        "/api/v1/environments",
        Some(&token),
        None,
        &create("audited"),
    )
    .await;
    assert_eq!(created.status(), 201);
    let created: Value = created.json().await.unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    // The free plan has room for one: the second is refused, and that is recorded.
    let refused = post(
        &app,
        "/api/v1/environments",
        Some(&token),
        None,
        &create("second"),
    )
    .await;
    assert_error(refused, 403, "quota_exceeded").await;

    app.wait_for_env(&token, &id, |e| e["status"] == "running")
        .await;
    let mut ws = open_terminal(&app, &token, &id).await;
    audit_until(&app, &admin, "action=terminal.attach", |e| e.len() == 1).await;
    ws.close(None).await.unwrap();
    audit_until(&app, &admin, "action=terminal.detach", |e| e.len() == 1).await;

    let stop = post(
        &app,
        &format!("/api/v1/environments/{id}/stop"),
        Some(&token),
        None,
        &json!({}),
    )
    .await;
    assert_eq!(stop.status(), 202);
    app.wait_for_env(&token, &id, |e| e["status"] == "stopped")
        .await;
    let delete = app
        .client
        .delete(app.url(&format!("/api/v1/environments/{id}")))
        .bearer_auth(&token)
        .header("user-agent", AGENT)
        .send()
        .await
        .unwrap();
    assert_eq!(delete.status(), 202);

    let events = audit_until(
        &app,
        &admin,
        &format!("resource_type=environment&resource_id={id}"),
        |e| {
            e.first()
                .is_some_and(|e| e["action"] == "environment.delete")
        },
    )
    .await;
    assert_eq!(
        actions(&events),
        [
            "environment.delete",
            "environment.stop",
            "terminal.detach",
            "terminal.attach",
            "environment.create"
        ]
    );
    for event in &events {
        assert_eq!(event["user_id"], carol_id.as_str(), "{event}");
        assert_eq!(event["outcome"], "success", "{event}");
        assert_eq!(event["ip"], local, "{event}");
        assert_eq!(event["user_agent"], AGENT, "{event}");
    }
    assert_eq!(events[2]["details"]["session"], "main");
    assert_eq!(events[3]["details"]["session"], "main");
    assert_eq!(events[4]["details"]["name"], "audited");
    assert_eq!(events[4]["details"]["template_id"], created["template_id"]);
    assert_eq!(events[4]["details"]["size"], "small");

    let denied = audit_until(
        &app,
        &admin,
        "action=environment.create&outcome=denied",
        |e| e.len() == 1,
    )
    .await;
    assert_eq!(denied[0]["user_id"], carol_id.as_str());
    assert_eq!(denied[0]["resource_id"], Value::Null);
    assert_eq!(denied[0]["details"]["name"], "second");
    assert_eq!(denied[0]["details"]["error"], "quota_exceeded");
}
