//! Compose apps on a user's own server, for real: a real `sshd` on loopback
//! (`TargetServer`) whose sessions reach the tests' Docker engine, and stacks of
//! the busybox image serving HTTP on 127.0.0.1. Start → the app's URL answers →
//! stop → it does not; a directory named to break a shell; a start while starting
//! refused; a compose failure reported with its output; a stack stopped by hand
//! seen at the next check; the auto-stop and an extend, and a server restart that
//! neither loses nor doubles it, nor two processes; projects and servers that still
//! hold apps; another user's apps as 404s.

use std::net::TcpListener;
use std::time::Duration;

use futures_util::SinkExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::audit::audit_until;
use crate::auto_stop::audited;
use crate::helpers::{
    Api, IMAGE, PASSWORD, TargetServer, TestApp, WsEvent, assert_error, devpocket, docker,
    eventually, serve, test_database, test_root, ws_next, ws_until,
};

/// Servers on loopback, apps' minutes of a second, checks every second.
const SETTINGS: [(&str, &str); 3] = [
    ("DEVPOCKET_SERVERS_ALLOW_PRIVATE", "true"),
    ("DEVPOCKET_APPS_MINUTE", "1s"),
    ("DEVPOCKET_AUTO_STOP_CHECK", "1s"),
];

/// A signed-in owner with a trusted, online server whose sessions reach Docker,
/// and a project.
struct Setup {
    app: TestApp,
    token: String,
    /// Up for as long as the test.
    _target: TargetServer,
    server_id: String,
    project_id: String,
}

async fn setup(user: &str) -> Setup {
    let engine = docker();
    let app = TestApp::spawn_with(&SETTINGS).await;
    let token = app.admin_token(user).await;
    let target = TargetServer::start_with(&[("DOCKER_HOST", &engine.host)]);
    let client = app.authed_client(&token);
    let response = client
        .post(
            "/api/v1/servers",
            &json!({"name": "box", "host": "127.0.0.1", "port": target.port, "username": "root"}),
        )
        .await;
    assert_eq!(response.status(), 201);
    let server: Value = response.json().await.unwrap();
    target.authorize(server["public_key"].as_str().unwrap());
    let server_id = server["id"].as_str().unwrap().to_owned();
    let trusted: Value = client
        .post(
            &format!("/api/v1/servers/{server_id}/trust"),
            &json!({"fingerprint": target.fingerprint}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(trusted["status"], "online", "{trusted}");
    assert_eq!(trusted["compose_command"], "docker-compose", "{trusted}");
    let project: Value = client
        .post("/api/v1/projects", &json!({"name": "web"}))
        .await
        .json()
        .await
        .unwrap();
    Setup {
        project_id: project["id"].as_str().unwrap().to_owned(),
        app,
        token,
        _target: target,
        server_id,
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A directory holding a compose file whose one service serves `text` on `port`.
fn stack(dir: &std::path::Path, port: u16, text: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("docker-compose.yml"),
        format!(
            "version: \"3\"\nservices:\n  web:\n    image: {IMAGE}\n    network_mode: host\n    \
             command: [\"/bin/sh\", \"-c\", \"mkdir -p /www && echo {text} > /www/index.html && echo serving-{text} && exec httpd -f -p 127.0.0.1:{port} -h /www\"]\n"
        ),
    )
    .unwrap();
}

async fn fetch(port: u16) -> Option<String> {
    let response = reqwest::get(format!("http://127.0.0.1:{port}/"))
        .await
        .ok()?;
    response.text().await.ok()
}

impl Setup {
    async fn create_app(&self, name: &str, path: &str, extra: Value) -> Value {
        let mut body = json!({"name": name, "project_id": self.project_id,
            "server_id": self.server_id, "path": path});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let response = self
            .app
            .authed_client(&self.token)
            .post("/api/v1/apps", &body)
            .await;
        assert_eq!(response.status(), 201, "{:?}", response.text().await);
        response.json().await.unwrap()
    }

    async fn post(&self, path: &str, body: Value) -> reqwest::Response {
        self.app.authed_client(&self.token).post(path, &body).await
    }

    async fn get(&self, path: &str) -> Value {
        let response = self.app.authed_client(&self.token).get(path).await;
        assert_eq!(response.status(), 200, "{path}");
        response.json().await.unwrap()
    }

    /// Waits until the app's status is `status`.
    async fn until(&self, id: &str, status: &str) -> Value {
        let what = format!("the app to be {status}");
        eventually(Duration::from_secs(90), &what, async || {
            let app = self.get(&format!("/api/v1/apps/{id}")).await;
            if app["status"] == status {
                Ok(app)
            } else {
                Err(app)
            }
        })
        .await
    }
}

#[actix_web::test]
async fn an_app_in_a_hostile_directory_starts_answers_stops_and_its_runs_are_kept() {
    let s = setup("composer").await;
    let port = free_port();
    let marker = format!("devpocket-pwned-{port}");
    let dir = test_root()
        .join(format!("apps-{}", uuid::Uuid::new_v4()))
        .join(format!("it's a \"$(touch {marker})\" `touch {marker}` dir"));
    stack(&dir, port, "hello-app");
    let path = dir.to_str().unwrap();
    let url = format!("http://127.0.0.1:{port}/");
    let app = s
        .create_app("site", path, json!({"url": url, "auto_stop_minutes": 0}))
        .await;
    let id = app["id"].as_str().unwrap();
    assert_eq!(
        (app["status"].as_str(), app["path"].as_str()),
        (Some("stopped"), Some(path))
    );

    // A client follows the app's runs as they happen.
    let mut live = s
        .app
        .ws(&format!("/api/v1/ws/apps/{id}/logs?token={}", s.token))
        .await;
    let first = ws_until(&mut live, "app").await;
    assert_eq!(first.last().unwrap()["status"], "stopped", "{first:?}");

    let response = s.post(&format!("/api/v1/apps/{id}/start"), json!({})).await;
    assert_eq!(response.status(), 202);
    let starting: Value = response.json().await.unwrap();
    assert_eq!(starting["status"], "starting");
    let again = s.post(&format!("/api/v1/apps/{id}/start"), json!({})).await;
    assert_error(again, 409, "operation_in_progress").await;

    let running = s.until(id, "running").await;
    assert_eq!(
        running["stops_at"],
        Value::Null,
        "never stops by itself: {running}"
    );
    assert_eq!(
        fetch(port).await.as_deref().map(str::trim),
        Some("hello-app")
    );
    let run = ws_until(&mut live, "run_finished").await;
    assert_eq!(run[0]["type"], "run_started", "{run:?}");
    assert_eq!(run[0]["action"], "start", "{run:?}");
    let printed: String = run
        .iter()
        .filter(|f| f["type"] == "run_output")
        .map(|f| f["data"].as_str().unwrap())
        .collect();
    assert!(!printed.trim().is_empty(), "{run:?}");
    let finished = run.last().unwrap();
    assert_eq!(
        (
            finished["status"].as_str(),
            finished["exit_status"].as_i64()
        ),
        (Some("running"), Some(0))
    );
    // And, asked, the containers' own logs.
    let ask = json!({"type": "compose_logs", "tail": 10}).to_string();
    live.send(Message::text(ask)).await.unwrap();
    let mut logs = String::new();
    while !logs.contains("serving-hello-app") {
        match ws_next(&mut live).await {
            WsEvent::Json(f) if f["type"] == "compose_log" => {
                logs.push_str(f["data"].as_str().unwrap())
            }
            WsEvent::Json(f) => assert_ne!(f["type"], "compose_logs_ended", "{f}"),
            WsEvent::Closed(c) => panic!("closed: {c:?}"),
        }
    }
    live.send(Message::text(json!({"type": "stop_logs"}).to_string()))
        .await
        .unwrap();
    let ended = ws_until(&mut live, "compose_logs_ended").await;
    assert!(ended.last().unwrap()["reason"].is_string(), "{ended:?}");
    let bad = json!({"type": "rm -rf"}).to_string();
    live.send(Message::text(bad)).await.unwrap();
    let error = ws_until(&mut live, "error").await;
    assert!(
        error.last().unwrap()["message"]
            .as_str()
            .unwrap()
            .contains("compose_logs"),
        "{error:?}"
    );

    let response = s.post(&format!("/api/v1/apps/{id}/stop"), json!({})).await;
    assert_eq!(response.status(), 202);
    s.until(id, "stopped").await;
    assert_eq!(fetch(port).await, None, "still answering after the stop");
    let again = s.post(&format!("/api/v1/apps/{id}/stop"), json!({})).await;
    assert_error(again, 409, "app_not_running").await;

    let logs = s.get(&format!("/api/v1/apps/{id}/logs")).await;
    let runs = logs["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2, "{logs}");
    assert_eq!(
        (runs[0]["action"].as_str(), runs[1]["action"].as_str()),
        (Some("stop"), Some("start"))
    );
    for run in runs {
        assert_eq!(run["exit_status"], 0, "{run}");
        assert!(run["finished_at"].is_string(), "{run}");
        assert!(!run["output"].as_str().unwrap().trim().is_empty(), "{run}");
    }

    // Nothing of the directory's name ran.
    for place in [
        dir.clone(),
        dir.parent().unwrap().to_path_buf(),
        "/root".into(),
    ] {
        assert!(
            !place.join(&marker).exists(),
            "{} ran",
            place.join(&marker).display()
        );
    }

    // Stopped by hand on the server: the next check says so.
    s.post(&format!("/api/v1/apps/{id}/start"), json!({})).await;
    s.until(id, "running").await;
    // Off the test's one thread, so that its idle HTTP connections keep up.
    let here = dir.clone();
    let down = tokio::task::spawn_blocking(move || {
        std::process::Command::new("docker-compose")
            .env("DOCKER_HOST", &docker().host)
            .arg("down")
            .current_dir(here)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        down.status.success(),
        "{}",
        String::from_utf8_lossy(&down.stderr)
    );
    let checked = s
        .post(&format!("/api/v1/servers/{}/check", s.server_id), json!({}))
        .await;
    assert_eq!(checked.status(), 200);
    let app = s.get(&format!("/api/v1/apps/{id}")).await;
    assert_eq!(app["status"], "stopped", "{app}");
    assert!(
        app["status_message"]
            .as_str()
            .unwrap()
            .contains("outside DevPocket"),
        "{app}"
    );
    let _ = std::fs::remove_dir_all(dir.parent().unwrap());
}

#[actix_web::test]
async fn a_compose_failure_is_reported_with_its_output() {
    let s = setup("breaker").await;
    let dir = test_root().join(format!("apps-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("docker-compose.yml"),
        "services: [this is: not: compose\n",
    )
    .unwrap();
    let app = s
        .create_app("broken", dir.to_str().unwrap(), json!({}))
        .await;
    let id = app["id"].as_str().unwrap();
    assert_eq!(app["auto_stop_minutes"], 60);
    s.post(&format!("/api/v1/apps/{id}/start"), json!({})).await;
    let failed = s.until(id, "error").await;
    assert!(
        failed["status_message"].as_str().unwrap().contains("logs"),
        "{failed}"
    );
    let logs = s.get(&format!("/api/v1/apps/{id}/logs")).await;
    let run = &logs["runs"][0];
    assert_ne!(run["exit_status"], 0, "{run}");
    assert!(!run["output"].as_str().unwrap().trim().is_empty(), "{run}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[actix_web::test]
async fn an_app_stops_by_itself_after_its_time_and_an_extend_puts_it_off() {
    let s = setup("sleepy").await;
    let port = free_port();
    let dir = test_root().join(format!("apps-{}", uuid::Uuid::new_v4()));
    stack(&dir, port, "brief");
    let app = s
        .create_app(
            "brief",
            dir.to_str().unwrap(),
            json!({"auto_stop_minutes": 6}),
        )
        .await;
    let id = app["id"].as_str().unwrap();
    s.post(&format!("/api/v1/apps/{id}/start"), json!({})).await;
    let running = s.until(id, "running").await;
    // Its actor holds the timer, beside its server's.
    let tree = s.get("/api/v1/admin/actors").await;
    for kind in ["app", "server"] {
        assert!(
            tree["totals"][kind]["alive"].as_u64() >= Some(1),
            "{kind}: {}",
            tree["totals"]
        );
    }
    let first: chrono::DateTime<chrono::Utc> =
        running["stops_at"].as_str().unwrap().parse().unwrap();
    let response = s
        .post(&format!("/api/v1/apps/{id}/extend"), json!({"minutes": 12}))
        .await;
    assert_eq!(response.status(), 200);
    let extended: Value = response.json().await.unwrap();
    let later: chrono::DateTime<chrono::Utc> =
        extended["stops_at"].as_str().unwrap().parse().unwrap();
    assert!(later > first, "{running} then {extended}");
    let bad = s
        .post(&format!("/api/v1/apps/{id}/extend"), json!({"minutes": 0}))
        .await;
    assert_error(bad, 422, "validation_error").await;

    let stopped = s.until(id, "stopped").await;
    assert!(
        stopped["status_message"]
            .as_str()
            .unwrap()
            .contains("stopped after 6 minutes"),
        "{stopped}"
    );
    assert!(chrono::Utc::now() >= later, "stopped before its time");
    assert_eq!(fetch(port).await, None);
    let events = audit_until(&s.app, &s.token, "action=app.auto_stop", |e| !e.is_empty()).await;
    assert_eq!(events[0]["outcome"], "success", "{events:#?}");
    assert_eq!(events[0]["details"]["auto_stop_minutes"], 6, "{events:#?}");
    let after = s
        .post(&format!("/api/v1/apps/{id}/extend"), json!({"minutes": 5}))
        .await;
    assert_error(after, 409, "app_not_running").await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[actix_web::test]
async fn projects_and_servers_keep_their_apps_and_other_users_see_none() {
    let s = setup("keeper").await;
    let dir = test_root().join(format!("apps-{}", uuid::Uuid::new_v4()));
    let path = dir.to_str().unwrap().to_owned();
    let app = s.create_app("kept", &path, json!({})).await;
    let id = app["id"].as_str().unwrap();
    let client = s.app.authed_client(&s.token);

    for (body, field) in [
        (json!({"path": "relative/dir"}), "path"),
        (json!({"path": "/srv/../etc"}), "path"),
        (json!({"compose_file": "../../etc/passwd"}), "compose_file"),
        (json!({"url": "javascript:alert(1)"}), "url"),
        (json!({"auto_stop_minutes": -1}), "auto_stop_minutes"),
        (json!({"server_id": s.server_id}), "server_id"),
    ] {
        let response = client.put(&format!("/api/v1/apps/{id}"), &body).await;
        let err = assert_error(response, 422, "validation_error").await;
        assert!(err["context"]["fields"][field].is_array(), "{body}: {err}");
    }
    let response = client
        .post(
            "/api/v1/apps",
            &json!({"name": "x", "project_id": s.project_id,
            "server_id": uuid::Uuid::new_v4(), "path": "/srv/x"}),
        )
        .await;
    assert_error(response, 422, "validation_error").await;

    let project = format!("/api/v1/projects/{}", s.project_id);
    let held = assert_error(client.delete(&project).await, 409, "project_has_apps").await;
    assert_eq!(held["context"]["apps"], json!(["kept"]), "{held}");
    let server = format!("/api/v1/servers/{}", s.server_id);
    let held = assert_error(client.delete(&server).await, 409, "server_has_apps").await;
    assert!(held["detail"].as_str().unwrap().contains("kept"), "{held}");

    let mallory = s.app.user_token("mallory").await;
    let theirs = s.app.authed_client(&mallory);
    let apps: Value = theirs.get("/api/v1/apps").await.json().await.unwrap();
    assert_eq!(apps, json!([]));
    let path_of = format!("/api/v1/apps/{id}");
    assert_error(theirs.get(&path_of).await, 404, "not_found").await;
    assert_error(
        theirs.put(&path_of, &json!({"name": "mine"})).await,
        404,
        "not_found",
    )
    .await;
    assert_error(
        theirs.post(&format!("{path_of}/start"), &json!({})).await,
        404,
        "not_found",
    )
    .await;
    assert_error(
        theirs.get(&format!("{path_of}/logs")).await,
        404,
        "not_found",
    )
    .await;
    assert_error(theirs.delete(&path_of).await, 404, "not_found").await;
    assert_error(theirs.get(&project).await, 404, "not_found").await;
    assert_error(
        theirs.delete(&format!("{project}?cascade=true")).await,
        404,
        "not_found",
    )
    .await;
    let response = theirs
        .post(
            "/api/v1/apps",
            &json!({"name": "x", "project_id": s.project_id,
            "server_id": s.server_id, "path": "/srv/x"}),
        )
        .await;
    assert_error(response, 422, "validation_error").await;

    // A cascade takes the project and its (stopped) app.
    assert_eq!(
        client
            .delete(&format!("{project}?cascade=true"))
            .await
            .status(),
        204
    );
    assert_error(client.get(&path_of).await, 404, "not_found").await;
    assert_eq!(client.delete(&server).await.status(), 204);
}

#[actix_web::test]
async fn a_server_restart_neither_loses_nor_doubles_an_apps_stop() {
    let engine = docker();
    let db = test_database().await;
    let data_dir = test_root().join(format!("apps-restart-{}", uuid::Uuid::new_v4().simple()));
    let start = || {
        let mut cmd = devpocket();
        cmd.env("DATABASE_URL", &db.url)
            .env("DEVPOCKET_DATA_DIR", &data_dir)
            .env("DEVPOCKET_SERVERS_ALLOW_PRIVATE", "true")
            .env("DEVPOCKET_APPS_MINUTE", "1s")
            .env("DEVPOCKET_AUTO_STOP_CHECK", "1s");
        serve(cmd)
    };
    let mut server = start();
    let api = Api::new(&server.address);
    let token = api.register("restarted", PASSWORD).await.unwrap();
    let call = async |api: &Api, method: reqwest::Method, path: &str, body: Value| -> Value {
        let response = api
            .http
            .request(method, api.url(path))
            .bearer_auth(&token)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "{path}: {}",
            response.status()
        );
        response.json().await.unwrap()
    };
    let target = TargetServer::start_with(&[("DOCKER_HOST", &engine.host)]);
    let registered = call(
        &api,
        reqwest::Method::POST,
        "/api/v1/servers",
        json!({"name": "box", "host": "127.0.0.1", "port": target.port, "username": "root"}),
    )
    .await;
    target.authorize(registered["public_key"].as_str().unwrap());
    let server_id = registered["id"].as_str().unwrap();
    let trust = format!("/api/v1/servers/{server_id}/trust");
    call(
        &api,
        reqwest::Method::POST,
        &trust,
        json!({"fingerprint": target.fingerprint}),
    )
    .await;
    let project = call(
        &api,
        reqwest::Method::POST,
        "/api/v1/projects",
        json!({"name": "p"}),
    )
    .await;
    let port = free_port();
    let dir = test_root().join(format!("apps-{}", uuid::Uuid::new_v4()));
    stack(&dir, port, "restarted");
    let app = call(
        &api,
        reqwest::Method::POST,
        "/api/v1/apps",
        json!({"name": "a", "project_id": project["id"], "server_id": server_id,
            "path": dir.to_str().unwrap(), "auto_stop_minutes": 10}),
    )
    .await;
    let path = format!("/api/v1/apps/{}", app["id"].as_str().unwrap());
    call(
        &api,
        reqwest::Method::POST,
        &format!("{path}/start"),
        json!({}),
    )
    .await;
    let status = async |api: &Api, want: &str| {
        eventually(Duration::from_secs(90), want, async || {
            let app = call(api, reqwest::Method::GET, &path, json!({})).await;
            if app["status"] == want {
                Ok(app)
            } else {
                Err(app)
            }
        })
        .await
    };
    status(&api, "running").await;
    server.kill();

    // Another process, after the restart, makes the stop at its time.
    let server = start();
    let api = Api::new(&server.address);
    let stopped = status(&api, "stopped").await;
    assert!(
        stopped["status_message"]
            .as_str()
            .unwrap()
            .contains("stopped after 10 minutes"),
        "{stopped}"
    );
    assert_eq!(fetch(port).await, None);
    let mut conn = db.connect().await;
    assert_eq!(audited(&mut conn, "app.auto_stop").await, 1);
    server.stop().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[actix_web::test]
async fn with_two_processes_an_extend_made_on_either_holds_and_the_app_stops_once() {
    let s = setup("twice").await;
    // A second process on the same database (its own actors and timers).
    let other = TestApp::spawn_on(test_database().await, Some(&s.app.db.url), &SETTINGS).await;
    let port = free_port();
    let dir = test_root().join(format!("apps-{}", uuid::Uuid::new_v4()));
    stack(&dir, port, "twice");
    let app = s
        .create_app(
            "twice",
            dir.to_str().unwrap(),
            json!({"auto_stop_minutes": 4}),
        )
        .await;
    let id = app["id"].as_str().unwrap();
    // Started through the other process (whose actor times the first stop)...
    let started = other
        .authed_client(&s.token)
        .post(&format!("/api/v1/apps/{id}/start"), &json!({}))
        .await;
    assert_eq!(started.status(), 202);
    s.until(id, "running").await;
    // ...extended through this one: the other's timer finds nothing due.
    let response = s
        .post(&format!("/api/v1/apps/{id}/extend"), json!({"minutes": 12}))
        .await;
    let extended: Value = response.json().await.unwrap();
    let until: chrono::DateTime<chrono::Utc> =
        extended["stops_at"].as_str().unwrap().parse().unwrap();

    let stopped = s.until(id, "stopped").await;
    assert!(
        chrono::Utc::now() >= until,
        "stopped before its extended time: {stopped}"
    );
    let mut conn = s.app.db.connect().await;
    assert_eq!(audited(&mut conn, "app.auto_stop").await, 1);
    let logs = s.get(&format!("/api/v1/apps/{id}/logs")).await;
    let stops = logs["runs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["action"] == "auto_stop")
        .count();
    assert_eq!(stops, 1, "{logs}");
    let _ = std::fs::remove_dir_all(&dir);
}
