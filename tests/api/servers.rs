//! Servers of users' own, against real OpenSSH servers on loopback
//! (`TargetServer`): a generated key pair whose public line the owner authorizes,
//! a host key fetched on first contact and trusted only by its fingerprint, a
//! changed host key refused and reported (never taken), offline and refused-key
//! statuses, the owner's own (encrypted) private key, private addresses refused
//! unless allowed, bad input, plans' limits, another user's servers as 404s, and
//! a terminal on a server shared by two clients.

use futures_util::SinkExt;
use std::time::Duration;

use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::audit::{actions, audit_until};
use crate::digitalocean::metric;
use crate::helpers::{
    TargetServer, TestApp, Ws, WsEvent, assert_error, eventually, ws_next, ws_until,
};

/// Servers on loopback are allowed here (they are the tests' own).
const LOOPBACK: [(&str, &str); 1] = [("DEVPOCKET_SERVERS_ALLOW_PRIVATE", "true")];

async fn register(app: &TestApp, token: &str, name: &str, target: &TargetServer) -> Value {
    let response = app
        .authed_client(token)
        .post(
            "/api/v1/servers",
            &json!({"name": name, "host": "127.0.0.1", "port": target.port, "username": "root"}),
        )
        .await;
    assert_eq!(response.status(), 201, "{:?}", response.text().await);
    response.json().await.unwrap()
}

async fn post(app: &TestApp, token: &str, path: &str, body: &Value) -> Value {
    let response = app.authed_client(token).post(path, body).await;
    assert_eq!(
        response.status(),
        200,
        "{path}: {:?}",
        response.text().await
    );
    response.json().await.unwrap()
}

async fn trust(app: &TestApp, token: &str, id: &str, fingerprint: &str) -> Value {
    let path = format!("/api/v1/servers/{id}/trust");
    post(app, token, &path, &json!({ "fingerprint": fingerprint })).await
}

async fn check(app: &TestApp, token: &str, id: &str) -> Value {
    post(
        app,
        token,
        &format!("/api/v1/servers/{id}/check"),
        &json!({}),
    )
    .await
}

#[actix_web::test]
async fn a_server_is_registered_with_a_generated_key_trusted_by_its_fingerprint_and_checked() {
    let app = TestApp::spawn_with(&[LOOPBACK[0], ("DEVPOCKET_SERVER_CONNECTION_IDLE", "1s")]).await;
    let token = app.admin_token("owner").await;
    let target = TargetServer::start();

    let server = register(&app, &token, "home box", &target).await;
    let id = server["id"].as_str().unwrap();
    assert_eq!(server["auth_type"], "generated", "{server}");
    assert_eq!(server["port"], target.port, "{server}");
    let public_key = server["public_key"].as_str().unwrap();
    assert!(public_key.starts_with("ssh-ed25519 "), "{server}");
    assert!(!server.to_string().contains("PRIVATE KEY"), "{server}");
    // First contact: the host key is fetched and waits for its owner's word.
    assert_eq!(server["status"], "pending_trust", "{server}");
    assert_eq!(
        server["presented_host_key_fingerprint"],
        target.fingerprint.as_str()
    );
    assert_eq!(server["host_key_fingerprint"], Value::Null);

    // Another fingerprint than the one presented trusts nothing.
    let response = app
        .authed_client(&token)
        .post(
            &format!("/api/v1/servers/{id}/trust"),
            &json!({"fingerprint": "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}),
        )
        .await;
    let body = assert_error(response, 409, "fingerprint_mismatch").await;
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains(&target.fingerprint),
        "{body}"
    );

    // Trusted before the key is authorized: the server refuses it, and says so.
    let refused = trust(&app, &token, id, &target.fingerprint).await;
    assert_eq!(refused["host_key_fingerprint"], target.fingerprint.as_str());
    assert_eq!(refused["status"], "auth_failed", "{refused}");
    assert!(
        refused["status_message"].as_str().unwrap().contains("root"),
        "{refused}"
    );

    // Authorized: online, with what the server is.
    target.authorize(public_key);
    let online = check(&app, &token, id).await;
    assert_eq!(online["status"], "online", "{online}");
    assert!(online["uptime_seconds"].as_u64().unwrap() > 0, "{online}");
    assert!(
        online["memory_total_bytes"].as_u64().unwrap() > 0,
        "{online}"
    );
    assert!(online["disk_total_bytes"].as_u64().unwrap() > 0, "{online}");
    assert_eq!(online["load_average"].as_array().unwrap().len(), 3);
    assert!(online["docker_available"].is_boolean(), "{online}");
    assert!(online["last_checked"].is_string(), "{online}");
    // Checked again: on the same connection.
    assert_eq!(check(&app, &token, id).await["status"], "online");
    let connects = metric(
        &app,
        "devpocket_ssh_connects_total",
        &[("purpose", "server"), ("outcome", "ok")],
    )
    .await;
    assert_eq!(connects, 1.0, "one connection, reused");
    // Unused for a while, it is closed; the next check opens another.
    let node = format!("/api/v1/admin/actors/server:{id}");
    eventually(
        Duration::from_secs(30),
        "the connection to close",
        async || {
            let actor: Value = app
                .authed_client(&token)
                .get(&node)
                .await
                .json()
                .await
                .unwrap();
            if actor["state"] == "idle" {
                Ok(())
            } else {
                Err(actor)
            }
        },
    )
    .await;
    assert_eq!(check(&app, &token, id).await["status"], "online");
    let connects = metric(
        &app,
        "devpocket_ssh_connects_total",
        &[("purpose", "server"), ("outcome", "ok")],
    )
    .await;
    assert_eq!(connects, 2.0, "a new connection after the idle close");

    let list: Value = app
        .authed_client(&token)
        .get("/api/v1/servers")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list[0]["status"], "online");

    let events = audit_until(&app, &token, "resource_type=server", |e| e.len() >= 3).await;
    let mut names = actions(&events);
    names.sort_unstable();
    assert_eq!(
        names,
        ["server.create", "server.trust", "server.trust"],
        "{events:#?}"
    );
}

#[actix_web::test]
async fn a_changed_host_key_is_refused_and_reported_and_taken_only_when_confirmed() {
    let app = TestApp::spawn_with(&LOOPBACK).await;
    let token = app.admin_token("careful").await;
    let mut target = TargetServer::start();
    let server = register(&app, &token, "vps", &target).await;
    let id = server["id"].as_str().unwrap();
    target.authorize(server["public_key"].as_str().unwrap());
    let first = target.fingerprint.clone();
    assert_eq!(trust(&app, &token, id, &first).await["status"], "online");

    // Another machine (or an attacker) answers there now.
    target.new_host_key();
    target.restart();
    let changed = check(&app, &token, id).await;
    assert_eq!(changed["status"], "host_key_mismatch", "{changed}");
    assert_eq!(changed["host_key_fingerprint"], first.as_str(), "{changed}");
    assert_eq!(
        changed["presented_host_key_fingerprint"],
        target.fingerprint.as_str(),
        "{changed}"
    );
    let message = changed["status_message"].as_str().unwrap();
    assert!(
        message.contains(&target.fingerprint) && message.contains(&first),
        "{message}"
    );
    // Checked again, still refused: nothing was taken silently.
    assert_eq!(check(&app, &token, id).await["status"], "host_key_mismatch");

    // Its owner confirms the new key.
    let trusted = trust(&app, &token, id, &target.fingerprint).await;
    assert_eq!(trusted["status"], "online", "{trusted}");
    assert_eq!(trusted["host_key_fingerprint"], target.fingerprint.as_str());
    assert_eq!(trusted["presented_host_key_fingerprint"], Value::Null);

    // Gone: offline, saying why.
    target.stop();
    let offline = check(&app, &token, id).await;
    assert_eq!(offline["status"], "offline", "{offline}");
    assert!(offline["status_message"].is_string(), "{offline}");
    assert!(online_figures_kept(&offline), "{offline}");
}

/// An offline server still shows what its last good check found.
fn online_figures_kept(server: &Value) -> bool {
    server["memory_total_bytes"].as_u64().is_some_and(|m| m > 0)
}

#[actix_web::test]
async fn an_owners_own_encrypted_key_is_taken_with_its_passphrase_and_never_shown() {
    let app = TestApp::spawn_with(&LOOPBACK).await;
    let token = app.admin_token("keyed").await;
    let target = TargetServer::start();
    let key = target.dir.join("id_owner");
    let status = std::process::Command::new("ssh-keygen")
        .args([
            "-q",
            "-t",
            "ed25519",
            "-N",
            "open sesame",
            "-C",
            "owner",
            "-f",
        ])
        .arg(&key)
        .status()
        .unwrap();
    assert!(status.success());
    let private = std::fs::read_to_string(&key).unwrap();
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    let body = |passphrase: Option<&str>| {
        let mut auth = json!({"type": "private_key", "private_key": private});
        if let Some(p) = passphrase {
            auth["passphrase"] = json!(p);
        }
        json!({"name": "mine", "host": "127.0.0.1", "port": target.port, "username": "root", "auth": auth})
    };
    let client = app.authed_client(&token);
    for (passphrase, field) in [
        (None, "auth.private_key"),
        (Some("wrong"), "auth.passphrase"),
    ] {
        let response = client.post("/api/v1/servers", &body(passphrase)).await;
        let err = assert_error(response, 422, "validation_error").await;
        assert!(err["context"]["fields"][field].is_array(), "{err}");
    }
    let response = client
        .post("/api/v1/servers", &body(Some("open sesame")))
        .await;
    assert_eq!(response.status(), 201);
    let server: Value = response.json().await.unwrap();
    assert_eq!(server["auth_type"], "private_key");
    assert_eq!(server["public_key"].as_str().unwrap().trim(), public.trim());
    assert!(!server.to_string().contains("PRIVATE KEY"));
    target.authorize(&public);
    let id = server["id"].as_str().unwrap();
    assert_eq!(
        trust(&app, &token, id, &target.fingerprint).await["status"],
        "online"
    );

    // Nothing of the key is stored in the clear.
    let mut conn = app.db.connect().await;
    let stored: Vec<u8> = {
        use diesel::prelude::*;
        use diesel_async::RunQueryDsl;
        #[derive(QueryableByName)]
        struct Row {
            #[diesel(sql_type = diesel::sql_types::Bytea)]
            private_key: Vec<u8>,
        }
        diesel::sql_query(format!("SELECT private_key FROM servers WHERE id = '{id}'"))
            .get_result::<Row>(&mut conn)
            .await
            .unwrap()
            .private_key
    };
    assert!(!stored.windows(7).any(|w| w == b"OPENSSH"));
}

#[actix_web::test]
async fn private_addresses_are_refused_unless_allowed() {
    let app = TestApp::spawn().await;
    let token = app.user_token("reacher").await;
    let target = TargetServer::start();
    let server = register(&app, &token, "inside", &target).await;
    assert_eq!(server["status"], "offline", "{server}");
    assert!(
        server["status_message"]
            .as_str()
            .unwrap()
            .contains("private address"),
        "{server}"
    );
    assert_eq!(server["presented_host_key_fingerprint"], Value::Null);
}

#[actix_web::test]
async fn bad_input_plans_and_other_users_servers() {
    let app = TestApp::spawn_with(&LOOPBACK).await;
    let token = app.user_token("alice").await;
    let client = app.authed_client(&token);
    let target = TargetServer::start();
    for (body, field) in [
        (json!({"host": "h", "username": "u"}), "name"),
        (
            json!({"name": "n", "host": "$(reboot)", "username": "u"}),
            "host",
        ),
        (
            json!({"name": "n", "host": "h", "username": "-oProxyCommand=sh"}),
            "username",
        ),
        (
            json!({"name": "n", "host": "h", "username": "u", "port": 0}),
            "port",
        ),
        (
            json!({"name": "n", "host": "h", "username": "u", "auth": {"type": "password"}}),
            "auth.type",
        ),
    ] {
        let response = client.post("/api/v1/servers", &body).await;
        let err = assert_error(response, 422, "validation_error").await;
        assert!(err["context"]["fields"][field].is_array(), "{body}: {err}");
    }
    let list: Value = client.get("/api/v1/servers").await.json().await.unwrap();
    assert_eq!(list, json!([]), "nothing stored by a refused request");

    let first = register(&app, &token, "one", &target).await;
    let response = client
        .post(
            "/api/v1/servers",
            &json!({"name": "ONE", "host": "127.0.0.1", "port": target.port, "username": "root"}),
        )
        .await;
    assert_error(response, 409, "name_taken").await;
    register(&app, &token, "two", &target).await;
    // The free plan registers two.
    let response = client
        .post(
            "/api/v1/servers",
            &json!({"name": "three", "host": "127.0.0.1", "port": target.port, "username": "root"}),
        )
        .await;
    assert_error(response, 403, "quota_exceeded").await;
    let info: Value = app.get("/api/v1/info").await.json().await.unwrap();
    assert_eq!(info["plans"]["free"]["servers"], 2, "{info}");

    // Renamed; moved to another port: its trust starts again.
    let id = first["id"].as_str().unwrap();
    let renamed: Value = client
        .put(&format!("/api/v1/servers/{id}"), &json!({"name": "uno"}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(renamed["name"], "uno", "{renamed}");
    trust(&app, &token, id, &target.fingerprint).await;
    let other = TargetServer::start();
    let moved: Value = client
        .put(
            &format!("/api/v1/servers/{id}"),
            &json!({"port": other.port}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(moved["status"], "pending_trust", "{moved}");
    assert_eq!(moved["host_key_fingerprint"], Value::Null, "{moved}");
    assert_eq!(
        moved["presented_host_key_fingerprint"],
        other.fingerprint.as_str()
    );

    // Someone else sees none of it.
    let mallory = app.user_token("mallory").await;
    let theirs = app.authed_client(&mallory);
    let list: Value = theirs.get("/api/v1/servers").await.json().await.unwrap();
    assert_eq!(list, json!([]));
    let path = format!("/api/v1/servers/{id}");
    assert_error(theirs.get(&path).await, 404, "not_found").await;
    assert_error(
        theirs.put(&path, &json!({"name": "mine"})).await,
        404,
        "not_found",
    )
    .await;
    assert_error(
        theirs.post(&format!("{path}/check"), &json!({})).await,
        404,
        "not_found",
    )
    .await;
    let fingerprint = json!({"fingerprint": other.fingerprint});
    assert_error(
        theirs.post(&format!("{path}/trust"), &fingerprint).await,
        404,
        "not_found",
    )
    .await;
    assert_error(theirs.delete(&path).await, 404, "not_found").await;

    // Its owner deletes it.
    assert_eq!(client.delete(&path).await.status(), 204);
    assert_error(client.get(&path).await, 404, "not_found").await;
}

/// Reads a terminal's frames until its output shows `needle`.
async fn output_until(ws: &mut Ws, needle: &str) -> String {
    let mut text = String::new();
    while !text.contains(needle) {
        match ws_next(ws).await {
            WsEvent::Json(f) if f["type"] == "output" => text.push_str(f["data"].as_str().unwrap()),
            WsEvent::Json(_) => {}
            WsEvent::Closed(c) => panic!("closed before {needle:?}: {c:?}; got {text:?}"),
        }
    }
    text
}

#[actix_web::test]
async fn a_terminal_on_a_server_is_shared_by_two_clients_and_only_when_trusted() {
    let app = TestApp::spawn_with(&LOOPBACK).await;
    let token = app.admin_token("shell_user").await;
    let target = TargetServer::start();
    let server = register(&app, &token, "shell box", &target).await;
    let id = server["id"].as_str().unwrap();
    // A session name of this test's own: tmux runs as the server's user (root here).
    let session = format!("srv{}", &id[..8]);
    let path = format!("/api/v1/ws/servers/{id}/terminal?token={token}&session={session}");

    // Not trusted yet: refused, saying why.
    let mut early = app.ws(&path).await;
    match ws_next(&mut early).await {
        WsEvent::Closed(Some((1008, reason))) => {
            assert!(reason.contains("not trusted"), "{reason}")
        }
        other => panic!("expected a 1008 close, got {other:?}"),
    }

    target.authorize(server["public_key"].as_str().unwrap());
    trust(&app, &token, id, &target.fingerprint).await;
    let mut phone = app.ws(&path).await;
    let frames = ws_until(&mut phone, "status").await;
    let welcome = frames.iter().find(|f| f["type"] == "welcome").unwrap();
    assert_eq!(welcome["environment"]["id"], id, "{welcome}");
    assert_eq!(welcome["environment"]["name"], "shell box", "{welcome}");
    assert_eq!(welcome["environment"]["template"], "server", "{welcome}");
    assert_eq!(frames.last().unwrap()["state"], "connected", "{frames:?}");
    let mut laptop = app.ws(&path).await;
    ws_until(&mut laptop, "status").await;

    let input = json!({"type": "input", "data": "echo shared-$((40+2))\r"}).to_string();
    phone.send(Message::text(input)).await.unwrap();
    output_until(&mut phone, "shared-42").await;
    output_until(&mut laptop, "shared-42").await;

    // Someone else's: not found.
    let mallory = app.user_token("mallory").await;
    let mut theirs = app
        .ws(&format!("/api/v1/ws/servers/{id}/terminal?token={mallory}"))
        .await;
    match ws_next(&mut theirs).await {
        WsEvent::Closed(Some((1008, reason))) => assert_eq!(reason, "server not found"),
        other => panic!("expected a 1008 close, got {other:?}"),
    }

    // Deleted, it lets nobody in any more: its terminals end, saying why.
    let deleted = app
        .authed_client(&token)
        .delete(&format!("/api/v1/servers/{id}"))
        .await;
    assert_eq!(deleted.status(), 204);
    for ws in [&mut phone, &mut laptop] {
        let closed = loop {
            match ws_next(ws).await {
                WsEvent::Json(f) if f["type"] == "status" && f["state"] == "closed" => break f,
                WsEvent::Json(_) => {}
                WsEvent::Closed(c) => panic!("closed without saying why: {c:?}"),
            }
        };
        assert_eq!(closed["message"], "the server was deleted", "{closed}");
    }
    let _ = std::process::Command::new("tmux")
        .args(["kill-session", "-t", &session])
        .status();
}
