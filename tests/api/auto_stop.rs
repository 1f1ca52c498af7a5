//! The idle auto-stop, with timeouts of seconds: an environment nobody types into
//! is warned, then stopped once, saying why; input resets the timer and cancels the
//! warning, output alone does not; a keep-awake holds it up within the plan's
//! bound; the timeout an environment chooses is checked against its plan; and a
//! server restart in between neither loses the stop nor makes it twice.

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::SinkExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::{
    Api, PASSWORD, TestApp, Ws, WsEvent, assert_error, devpocket, eventually, serve,
    shut_down_machines, test_database, test_root, ws_next,
};

/// A free plan whose environments stop after 20 s without activity, warned 8 s
/// before, checked every second.
const IDLE: [(&str, &str); 3] = [
    ("DEVPOCKET_AUTO_STOP_FREE", "20s"),
    ("DEVPOCKET_AUTO_STOP_WARNING", "8s"),
    ("DEVPOCKET_AUTO_STOP_CHECK", "1s"),
];

async fn input(ws: &mut Ws, data: &str) {
    let frame = json!({"type": "input", "data": data}).to_string();
    ws.send(Message::text(frame)).await.expect("send input");
}

/// Reads terminal frames until a `status` frame in `state`; returns it.
async fn status(ws: &mut Ws, state: &str) -> Value {
    loop {
        match ws_next(ws).await {
            WsEvent::Json(f) if f["type"] == "status" && f["state"] == state => return f,
            WsEvent::Json(f) if f["type"] == "status" => {
                panic!("expected status {state}, got {f}")
            }
            WsEvent::Json(_) => {}
            WsEvent::Closed(c) => panic!("closed before status {state}: {c:?}"),
        }
    }
}

/// A time as the API writes it.
pub fn time(v: &Value) -> DateTime<Utc> {
    v.as_str()
        .unwrap_or_else(|| panic!("a time: {v}"))
        .parse()
        .expect("RFC 3339")
}

/// `GET /environments/{id}/activity`.
pub async fn activity(app: &TestApp, token: &str, id: &str) -> Value {
    let response = app
        .authed_client(token)
        .get(&format!("/api/v1/environments/{id}/activity"))
        .await;
    assert_eq!(response.status(), 200);
    response.json().await.expect("json")
}

/// Waits until the environment's last activity is input on terminal `session`.
async fn typed_in(app: &TestApp, token: &str, id: &str, session: &str) -> Value {
    eventually(Duration::from_secs(30), "the input to count", async || {
        let now = activity(app, token, id).await;
        let last = &now["last_activity"];
        if last["kind"] == "terminal_input" && last["session"] == session {
            Ok(now)
        } else {
            Err(now)
        }
    })
    .await
}

#[actix_web::test]
async fn an_idle_environment_is_warned_then_stopped_once_and_input_not_output_keeps_it_up() {
    let app = TestApp::spawn_with(&IDLE).await;
    let token = app.user_token("idle_user").await;
    let id = app.ready_environment(&token, "idle", "ubuntu").await;

    // Coming up starts the timer.
    let started = activity(&app, &token, &id).await;
    assert_eq!(started["last_activity"]["kind"], "started", "{started}");
    assert_eq!(started["idle_timeout_seconds"], 20, "{started}");
    assert_eq!(started["held_awake_by"], json!([]), "{started}");
    let last = time(&started["last_activity_at"]);
    assert_eq!(
        time(&started["stop_at"]),
        last + chrono::Duration::seconds(20)
    );
    assert_eq!(
        time(&started["warning_at"]),
        last + chrono::Duration::seconds(12)
    );

    // A command that prints every second: its output is not activity.
    let mut ws = app
        .ws(&format!("/api/v1/ws/terminal/{id}?token={token}"))
        .await;
    status(&mut ws, "connected").await;
    input(&mut ws, "while :; do echo tick; sleep 1; done\r").await;
    let typed = typed_in(&app, &token, &id, "main").await;
    assert_eq!(
        typed["last_activity"]["client_address"], "127.0.0.1",
        "{typed}"
    );

    let warning = status(&mut ws, "idle_warning").await;
    let first_stop = time(&warning["stop_at"]);
    let now = activity(&app, &token, &id).await;
    assert_eq!(time(&now["stop_at"]), first_stop, "{now}");
    assert_eq!(
        time(&now["last_activity_at"]),
        time(&typed["last_activity_at"]),
        "output counted as activity: {now}"
    );

    // Any input cancels the warning and starts the timer again.
    input(&mut ws, " ").await;
    let cancelled = status(&mut ws, "connected").await;
    assert!(
        cancelled["message"].as_str().unwrap().contains("activity"),
        "{cancelled}"
    );
    let later = eventually(
        Duration::from_secs(10),
        "the timer to restart",
        async || {
            let now = activity(&app, &token, &id).await;
            match now["stop_at"].as_str() {
                Some(_) if time(&now["stop_at"]) > first_stop => Ok(now),
                _ => Err(now),
            }
        },
    )
    .await;

    // Then nobody types: warned again, then stopped, with the reason.
    let warning = status(&mut ws, "idle_warning").await;
    assert_eq!(time(&warning["stop_at"]), time(&later["stop_at"]));
    let closed = status(&mut ws, "closed").await;
    let why = "stopped after 20 seconds without activity";
    assert_eq!(closed["message"], why, "{closed}");
    match ws_next(&mut ws).await {
        WsEvent::Closed(Some((1000, _))) => {}
        other => panic!("expected a clean close, got {other:?}"),
    }
    let env = app
        .wait_for_env(&token, &id, |e| e["phase"] == "stopped")
        .await;
    assert_eq!(env["status"], "stopped", "{env}");
    assert_eq!(env["status_message"], why, "{env}");
    let stopped = activity(&app, &token, &id).await;
    assert!(stopped["stop_at"].is_null(), "{stopped}");

    // Audited once, with the rule that fired, and counted.
    let admin = app.admin_token("idle_admin").await;
    let events = eventually(Duration::from_secs(10), "the audit event", async || {
        let page: Value = app
            .authed_client(&admin)
            .get("/api/v1/admin/audit?action=environment.auto_stop")
            .await
            .json()
            .await
            .expect("json");
        match page["items"].as_array() {
            Some(events) if !events.is_empty() => Ok(events.clone()),
            _ => Err(page),
        }
    })
    .await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["resource_id"], id.as_str());
    assert_eq!(events[0]["details"]["rule"], "idle");
    assert_eq!(events[0]["details"]["detail"], why);
    assert_eq!(events[0]["details"]["idle_timeout_seconds"], 20);
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("devpocket_auto_stops_total{plan=\"free\"} 1"),
        "{metrics}"
    );
}

#[actix_web::test]
async fn a_keep_awake_holds_an_environment_up_within_the_plans_bound() {
    let app = TestApp::spawn_with(&[
        ("DEVPOCKET_AUTO_STOP_FREE", "3s"),
        ("DEVPOCKET_AUTO_STOP_CHECK", "1s"),
        ("DEVPOCKET_AUTO_STOP_WARNING", "1s"),
    ])
    .await;
    let token = app.user_token("awake_user").await;
    let client = app.authed_client(&token);
    let id = app.ready_environment(&token, "awake", "ubuntu").await;
    let path = format!("/api/v1/environments/{id}/keep-awake");

    for bad in [
        json!({"minutes": 0}),
        json!({"minutes": 121}),
        json!({"minutes": "5"}),
        json!({}),
    ] {
        let body = assert_error(client.post(&path, &bad).await, 422, "validation_error").await;
        assert!(
            body["detail"].to_string().contains("from 1 to 120"),
            "{bad}: {body}"
        );
    }
    let response = client.post(&path, &json!({"minutes": 1})).await;
    assert_eq!(response.status(), 200);
    let held: Value = response.json().await.unwrap();
    assert_eq!(held["last_activity"]["kind"], "keep_awake", "{held}");
    assert_eq!(held["held_awake_by"], json!(["keep_awake"]), "{held}");
    let until = time(&held["kept_awake_until"]);
    assert_eq!(time(&held["stop_at"]), until, "{held}");
    let asked = time(&held["last_activity_at"]) + chrono::Duration::minutes(1);
    assert!((until - asked).num_seconds().abs() <= 1, "{held}");

    // Nothing to await here: the point is that nothing happens. Past the 3 s timeout
    // and several checks, it still runs.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let env: Value = client
        .get(&format!("/api/v1/environments/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(env["status"], "running", "{env}");
    assert_eq!(env["phase"], "ready", "{env}");

    // Stopped, it cannot be kept awake.
    let stop = client
        .post(&format!("/api/v1/environments/{id}/stop"), &json!({}))
        .await;
    assert_eq!(stop.status(), 202);
    app.wait_for_env(&token, &id, |e| e["phase"] == "stopped")
        .await;
    assert_error(
        client.post(&path, &json!({"minutes": 1})).await,
        409,
        "environment_not_running",
    )
    .await;
}

#[actix_web::test]
async fn an_environments_own_timeout_is_checked_against_its_plan_and_reads_back() {
    let app = TestApp::spawn().await;
    let token = app.user_token("timeout_user").await;
    let client = app.authed_client(&token);
    for bad in [json!(0), json!(31), json!(-5), json!(2.5), json!("10")] {
        let body = assert_error(
            client
                .post(
                    "/api/v1/environments",
                    &json!({"name": "t", "template_id": "ubuntu", "auto_stop_minutes": bad}),
                )
                .await,
            422,
            "validation_error",
        )
        .await;
        assert!(
            body["detail"].to_string().contains("auto_stop_minutes")
                || body["context"].to_string().contains("auto_stop_minutes"),
            "{bad}: {body}"
        );
    }
    let list: Value = client
        .get("/api/v1/environments")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list, json!([]), "a refused create stored something");

    let created: Value = client
        .post(
            "/api/v1/environments",
            &json!({"name": "timed", "template_id": "ubuntu", "auto_stop_minutes": 10}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(created["auto_stop_minutes"], 10, "{created}");
    let id = created["id"].as_str().unwrap();
    let path = format!("/api/v1/environments/{id}");
    let updated: Value = client
        .put(&path, &json!({"auto_stop_minutes": 30}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(updated["auto_stop_minutes"], 30, "{updated}");
    assert_error(
        client.put(&path, &json!({"auto_stop_minutes": 45})).await,
        422,
        "validation_error",
    )
    .await;
    let read: Value = client.get(&path).await.json().await.unwrap();
    assert_eq!(read["auto_stop_minutes"], 30, "{read}");
    let now = activity(&app, &token, id).await;
    assert_eq!(now["idle_timeout_seconds"], 30 * 60, "{now}");

    // An admin's environments never stop by default, and may say so explicitly.
    let admin = app.admin_token("timeout_admin").await;
    let never = app
        .authed_client(&admin)
        .post(
            "/api/v1/environments",
            &json!({"name": "forever", "template_id": "ubuntu", "auto_stop_minutes": 0}),
        )
        .await;
    assert_eq!(never.status(), 201);
    let never: Value = never.json().await.unwrap();
    assert_eq!(never["auto_stop_minutes"], 0, "{never}");
    let forever = never["id"].as_str().unwrap();
    app.wait_for_env(&admin, forever, |e| e["phase"] == "ready")
        .await;
    let held = activity(&app, &admin, forever).await;
    assert!(held["idle_timeout_seconds"].is_null(), "{held}");
    assert!(held["stop_at"].is_null(), "{held}");
    assert_eq!(held["held_awake_by"], json!(["no_idle_timeout"]), "{held}");

    let info: Value = app.get("/api/v1/info").await.json().await.unwrap();
    assert_eq!(info["auto_stop"]["idle_timeout_seconds"]["free"], 1800);
    assert!(info["auto_stop"]["idle_timeout_seconds"]["admin"].is_null());
    assert!(
        info["auto_stop"]["rule"]
            .as_str()
            .unwrap()
            .contains("Output alone")
    );
    for created in [id, never["id"].as_str().unwrap()] {
        let owner = if created == id { &token } else { &admin };
        let response = app
            .authed_client(owner)
            .delete(&format!("/api/v1/environments/{created}"))
            .await;
        assert_eq!(response.status(), 202);
    }
}

#[actix_web::test]
async fn with_two_processes_input_seen_by_either_counts_and_the_owner_stops_it_once() {
    let owner = TestApp::spawn_with(&IDLE).await;
    // A second process on the same database (its own data directory and actors).
    let other = TestApp::spawn_on(test_database().await, Some(&owner.db.url), &IDLE).await;
    let token = owner.user_token("two_process_user").await;
    let id = owner.ready_environment(&token, "shared", "ubuntu").await;

    // Typed into a terminal served by the other process: it counts.
    let mut ws = other
        .ws(&format!(
            "/api/v1/ws/terminal/{id}?token={token}&session=elsewhere"
        ))
        .await;
    status(&mut ws, "connected").await;
    input(&mut ws, "true\r").await;
    let typed = typed_in(&owner, &token, &id, "elsewhere").await;
    drop(ws);

    // Both processes check; the one holding the lease stops it, once.
    let env = owner
        .wait_for_env(&token, &id, |e| e["phase"] == "stopped")
        .await;
    assert_eq!(
        env["status_message"], "stopped after 20 seconds without activity",
        "{env}"
    );
    let stopped_at = time(&env["stopped_at"]);
    let idle_from = time(&typed["last_activity_at"]);
    assert!(
        stopped_at >= idle_from + chrono::Duration::seconds(20),
        "{env}"
    );
    let mut conn = owner.db.connect().await;
    let stops = audited(&mut conn, "environment.auto_stop").await;
    assert_eq!(stops, 1);
}

/// How many `action` events are recorded, once there is one (polled: writes are
/// asynchronous).
pub async fn audited(conn: &mut diesel_async::AsyncPgConnection, action: &str) -> i64 {
    use diesel::dsl::count_star;
    use diesel::prelude::*;
    use diesel_async::RunQueryDsl;
    diesel::table! { audit_events (id) { id -> Uuid, action -> Text } }
    eventually(Duration::from_secs(10), "the audit event", async || {
        let n: i64 = audit_events::table
            .filter(audit_events::action.eq(action))
            .select(count_star())
            .get_result(&mut *conn)
            .await
            .map_err(|e| e.to_string())?;
        if n > 0 {
            Ok(n)
        } else {
            Err("none yet".to_owned())
        }
    })
    .await
}

#[actix_web::test]
async fn a_server_restart_neither_loses_nor_doubles_an_idle_stop() {
    let db = test_database().await;
    let data_dir = test_root().join(format!("idle-restart-{}", uuid::Uuid::new_v4().simple()));
    let start = || {
        let mut cmd = devpocket();
        cmd.env("DATABASE_URL", &db.url)
            .env("DEVPOCKET_DATA_DIR", &data_dir)
            .env("DEVPOCKET_LEASE_TTL", "2s")
            .env("DEVPOCKET_AUTO_STOP_FREE", "15s")
            .env("DEVPOCKET_AUTO_STOP_CHECK", "1s");
        serve(cmd)
    };
    let mut server = start();
    let (token, id) = Api::new(&server.address)
        .new_user_with_environment(("idle_restarter", PASSWORD), "interrupted", "ubuntu")
        .await
        .unwrap();
    let api = Api::new(&server.address);
    api.running(&token, &id, Duration::from_secs(120))
        .await
        .unwrap();
    server.kill();

    let server = start();
    let api = Api::new(&server.address);
    let stopped = eventually(Duration::from_secs(60), "the idle stop", async || {
        let env = api
            .environment(&token, &id)
            .await
            .map_err(|e| e.to_string())?;
        if env["phase"] == "stopped" {
            Ok(env)
        } else {
            Err(env.to_string())
        }
    })
    .await;
    assert_eq!(
        stopped["status_message"], "stopped after 15 seconds without activity",
        "{stopped}"
    );
    let mut conn = db.connect().await;
    assert_eq!(audited(&mut conn, "environment.auto_stop").await, 1);
    server.stop().unwrap();
    shut_down_machines(&data_dir);
}
