//! Several server processes on one database, as behind a load balancer. What one
//! process changes is dropped from every other process's caches as it happens, not
//! when the cache's time is up (the cache tests give the caches an hour, so only
//! the notification can make the other process see the change). A process that
//! does not own an environment sends its changes to the owner and relays the
//! owner's answer, streams its log from the owner's writes, and takes it over when
//! the owner dies.

use std::path::PathBuf;
use std::time::Duration;

use diesel_async::RunQueryDsl;
use serde_json::{Value, json};

use crate::deletion::leftovers;
use crate::helpers::{
    Api, PASSWORD, TestApp, TestDatabase, WsEvent, assert_error, eventually, test_database,
    test_root, ws_next,
};
use crate::restart;

fn templates_dir(name: &str) -> PathBuf {
    let dir = test_root().join(format!("{name}-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("slow.yaml"), restart::SLOW_TEMPLATE).unwrap();
    dir
}

/// Two processes on one database and one data directory (local machines live on
/// this host, so every process reaches them).
pub(crate) async fn two_on_one_host(overrides: &[(&str, &str)]) -> (TestApp, TestApp) {
    let one = TestApp::spawn_with(overrides).await;
    let two = TestApp::spawn_at(
        test_database().await,
        Some(&one.db.url),
        one.data_dir.clone(),
        overrides,
    )
    .await;
    (one, two)
}

async fn lease_owner(db: &TestDatabase, id: &str) -> Option<uuid::Uuid> {
    status_and_owner(db, id).await.1
}

async fn create(app: &TestApp, token: &str, name: &str, template: &str) -> String {
    let created = app
        .authed_client(token)
        .post(
            "/api/v1/environments",
            &json!({"name": name, "template_id": template}),
        )
        .await;
    assert_eq!(created.status(), 201);
    let created: Value = created.json().await.unwrap();
    created["id"].as_str().unwrap().to_owned()
}

async fn status_and_owner(db: &TestDatabase, id: &str) -> (String, Option<uuid::Uuid>) {
    let mut conn = db.connect().await;
    #[derive(diesel::QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Text)]
        status: String,
        #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Uuid>)]
        lease_owner: Option<uuid::Uuid>,
    }
    let row: Row = diesel::sql_query("SELECT status, lease_owner FROM environments WHERE id = $1")
        .bind::<diesel::sql_types::Uuid, _>(uuid::Uuid::parse_str(id).unwrap())
        .get_result(&mut conn)
        .await
        .unwrap();
    (row.status, row.lease_owner)
}

/// Log frames until `installation_complete` (included).
async fn frames_until_complete(ws: &mut crate::helpers::Ws) -> Vec<Value> {
    let mut frames = Vec::new();
    loop {
        match ws_next(ws).await {
            WsEvent::Json(frame) => {
                let done = frame["type"] == "installation_complete";
                assert_ne!(frame["type"], "installation_error", "{frame}");
                frames.push(frame);
                if done {
                    return frames;
                }
            }
            WsEvent::Closed(c) => panic!("closed early: {c:?} after {frames:?}"),
        }
    }
}

/// Every line of the bootstrap once, numbered from 1 without a gap.
fn assert_whole_log(frames: &[Value]) {
    let lines: Vec<(i64, &str)> = frames
        .iter()
        .filter(|f| f["type"] == "installation_log")
        .map(|f| (f["seq"].as_i64().unwrap(), f["data"].as_str().unwrap()))
        .collect();
    let seqs: Vec<i64> = lines.iter().map(|(seq, _)| *seq).collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as i64).collect::<Vec<_>>(),
        "a gap or a duplicate: {lines:?}"
    );
    for i in 0..30 {
        let wanted = format!("line {i}");
        assert_eq!(
            lines.iter().filter(|(_, l)| *l == wanted).count(),
            1,
            "{wanted} in {lines:?}"
        );
    }
}

const LONG_CACHES: [(&str, &str); 2] = [
    ("DEVPOCKET_SESSION_CACHE_TTL", "1h"),
    ("DEVPOCKET_LIST_CACHE_TTL", "1h"),
];

async fn two_processes() -> (TestApp, TestApp) {
    let one = TestApp::spawn_with(&LONG_CACHES).await;
    let two = TestApp::spawn_on(test_database().await, Some(&one.db.url), &LONG_CACHES).await;
    (one, two)
}

async fn status_of_me(app: &TestApp, token: &str) -> u16 {
    app.authed_client(token)
        .get("/api/v1/auth/me")
        .await
        .status()
        .as_u16()
}

/// Until `app` answers 401 to `token` (bounded: 5 s, far less than the caches'
/// hour).
async fn refused_soon(app: &TestApp, token: &str, what: &str) {
    eventually(Duration::from_secs(5), what, async || {
        match status_of_me(app, token).await {
            401 => Ok(()),
            other => Err(other),
        }
    })
    .await;
}

#[actix_web::test]
async fn a_sign_out_on_one_process_is_refused_on_the_other_at_once() {
    let (one, two) = two_processes().await;
    let session = one.signed_up("roamer").await;
    let token = session["access_token"].as_str().unwrap();
    // The other process has seen the session live, and may keep that for an hour.
    assert_eq!(status_of_me(&two, token).await, 200);
    let out = one
        .authed_client(token)
        .post("/api/v1/auth/logout", &json!({}))
        .await;
    assert_eq!(out.status(), 200);
    refused_soon(&two, token, "the other process to refuse the session").await;
}

#[actix_web::test]
async fn a_deactivation_and_a_new_environment_are_seen_by_the_other_process_at_once() {
    let (one, two) = two_processes().await;
    let admin = one.admin_token("boss").await;
    let session = one.signed_up("worker").await;
    let token = session["access_token"].as_str().unwrap();
    let id = session["user"]["id"].as_str().unwrap();

    // A list cached on the other process, then an environment made on this one.
    let list = async || -> Value {
        let listed = two.authed_client(token).get("/api/v1/environments").await;
        listed.json().await.unwrap()
    };
    assert_eq!(list().await, json!([]));
    create(&one, token, "seen", "ubuntu").await;
    eventually(
        Duration::from_secs(5),
        "the other process to list it",
        async || {
            let listed = list().await;
            if listed.as_array().is_some_and(|l| l.len() == 1) {
                Ok(())
            } else {
                Err(listed)
            }
        },
    )
    .await;

    assert_eq!(status_of_me(&two, token).await, 200);
    let changed = one
        .client
        .patch(one.url(&format!("/api/v1/admin/users/{id}")))
        .bearer_auth(&admin)
        .json(&json!({"is_active": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(changed.status(), 200);
    refused_soon(&two, token, "the other process to refuse the account").await;
}

#[actix_web::test]
async fn every_change_through_the_process_that_does_not_own_the_environment_is_the_owners() {
    let (one, two) = two_on_one_host(&[]).await;
    let token = one.user_token("driver").await;
    let id = create(&one, &token, "driven", "ubuntu").await;
    // The other process follows it from its creation on (its log is watched
    // there): what it remembers of the environment is soon out of date.
    let mut ws = two.ws(&format!("/api/v1/ws/logs/{id}?token={token}")).await;
    frames_until_complete(&mut ws).await;
    two.wait_for_env(&token, &id, |e| e["status"] == "running")
        .await;
    let owner = lease_owner(&one.db, &id).await;
    assert!(owner.is_some());
    let path = format!("/api/v1/environments/{id}");
    let other = two.authed_client(&token);

    let stopped = other.post(&format!("{path}/stop"), &json!({})).await;
    assert_eq!(stopped.status(), 202, "{:?}", stopped.text().await);
    two.wait_for_env(&token, &id, |e| e["status"] == "stopped")
        .await;
    // The owner's refusal, as the owner words it.
    let again = other.post(&format!("{path}/stop"), &json!({})).await;
    assert_error(again, 409, "environment_already_stopped").await;

    let started = other.post(&format!("{path}/start"), &json!({})).await;
    assert_eq!(started.status(), 202);
    two.wait_for_env(&token, &id, |e| e["status"] == "running")
        .await;
    let restarted = other.post(&format!("{path}/restart"), &json!({})).await;
    assert_eq!(restarted.status(), 202);
    let body: Value = restarted.json().await.unwrap();
    assert_eq!(body["phase"], "restarting", "{body}");
    two.wait_for_env(&token, &id, |e| {
        e["status"] == "running" && e["phase"] == "ready"
    })
    .await;

    let renamed = other.put(&path, &json!({"name": "renamed"})).await;
    assert_eq!(renamed.status(), 200);
    let body: Value = renamed.json().await.unwrap();
    assert_eq!(body["name"], "renamed", "{body}");
    let awake = other
        .post(&format!("{path}/keep-awake"), &json!({"minutes": 5}))
        .await;
    assert_eq!(awake.status(), 200);
    let held: Value = one
        .authed_client(&token)
        .get(&format!("{path}/activity"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(held["last_activity"]["kind"], "keep_awake", "{held}");
    // What the owner's provider cannot do, the owner refuses, as it words it.
    let snapshot = other
        .post(&format!("{path}/snapshot"), &json!({"name": "before"}))
        .await;
    assert_error(snapshot, 409, "operation_unsupported").await;
    // All of it was done by the owner: the lease never moved.
    assert_eq!(lease_owner(&one.db, &id).await, owner);

    let deleted = other.delete(&path).await;
    assert_eq!(deleted.status(), 202);
    for app in [&one, &two] {
        app.wait_for_env(&token, &id, |e| e["code"] == "not_found")
            .await;
    }
    let data = one.data_dir.canonicalize().unwrap();
    eventually(
        Duration::from_secs(30),
        "nothing of the machine to be left",
        async || match leftovers(&data, &id) {
            left if left.is_empty() => Ok(()),
            left => Err(left.join(", ")),
        },
    )
    .await;
}

#[actix_web::test]
async fn the_log_through_the_other_process_is_whole_and_live() {
    let templates = templates_dir("processes-log");
    let templates_setting = [("DEVPOCKET_TEMPLATES_DIR", templates.to_str().unwrap())];
    let (one, two) = two_on_one_host(&templates_setting).await;
    let token = one.user_token("watcher").await;
    let id = create(&one, &token, "watched", "slow").await;
    let mut ws = two.ws(&format!("/api/v1/ws/logs/{id}?token={token}")).await;
    let frames = frames_until_complete(&mut ws).await;
    assert_whole_log(&frames);
    // Opened while provisioning went on, and followed it: the first progress said
    // so, and a later one came with the bootstrap's stage.
    let progress: Vec<&Value> = frames
        .iter()
        .filter(|f| f["type"] == "installation_progress")
        .collect();
    assert_ne!(progress[0]["phase"], "ready", "{frames:?}");
    assert!(
        progress.iter().any(|p| p["stage"] == "Counting"),
        "{progress:?}"
    );
    let _ = std::fs::remove_dir_all(&templates);
}

#[actix_web::test]
async fn when_the_owner_is_killed_mid_provisioning_another_process_finishes_it() {
    let templates = templates_dir("processes-failover");
    let db = test_database().await;
    let data_dir = test_root().join(format!("failover-{}", uuid::Uuid::new_v4().simple()));
    let mut owner = restart::start_server(&db.url, &data_dir, &templates);
    let survivor = TestApp::spawn_at(
        test_database().await,
        Some(&db.url),
        data_dir.clone(),
        &[
            ("DEVPOCKET_TEMPLATES_DIR", templates.to_str().unwrap()),
            ("DEVPOCKET_LEASE_TTL", "2s"),
        ],
    )
    .await;
    let (token, id) = Api::new(&owner.address)
        .new_user_with_environment(("survivor", PASSWORD), "taken over", "slow")
        .await
        .unwrap();
    restart::under_way(&owner, &token, &id).await;
    owner.kill();

    // Nobody asks the survivor anything: it takes the environment over once the
    // dead owner's lease lapses, and finishes provisioning (watched in the
    // database, so that no request wakes an actor on the survivor).
    let dead = lease_owner(&db, &id).await;
    eventually(
        Duration::from_secs(90),
        "the survivor to finish provisioning on its own",
        async || {
            let (status, owner) = status_and_owner(&db, &id).await;
            if status == "running" && owner.is_some() && owner != dead {
                Ok(())
            } else {
                Err(format!("{status}, lease {owner:?} (dead: {dead:?})"))
            }
        },
    )
    .await;
    // A client reconnecting to it carries on: the whole log, once.
    let mut ws = survivor
        .ws(&format!("/api/v1/ws/logs/{id}?token={token}"))
        .await;
    let frames = frames_until_complete(&mut ws).await;
    assert_whole_log(&frames);
    survivor
        .wait_for_env(&token, &id, |e| e["status"] == "running")
        .await;
    restart::assert_ran_once(&data_dir, &id);
    let _ = std::fs::remove_dir_all(&templates);
}

async fn login_from(app: &TestApp, from: &str, login: &str, password: &str) -> u16 {
    app.client
        .post(app.url("/api/v1/auth/login"))
        .header("x-forwarded-for", from)
        .json(&json!({"username_or_email": login, "password": password}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[actix_web::test]
async fn the_sign_in_limits_are_the_same_whichever_process_is_asked() {
    let settings = [
        ("DEVPOCKET_TRUSTED_PROXIES", "127.0.0.1"),
        ("DEVPOCKET_RATE_LIMIT_LOGIN_FAILURES_ACCOUNT", "4/1h"),
    ];
    let one = TestApp::spawn_with(&settings).await;
    let two = TestApp::spawn_on(test_database().await, Some(&one.db.url), &settings).await;
    one.signed_up("guarded").await;
    // A load balancer spreads a stranger's guesses over both processes, each from
    // an address of its own: together they get the account's budget, not twice it.
    let wrong = "Wrong-horse-9";
    let mut checked = 0;
    for n in 0..8 {
        let app = if n % 2 == 0 { &one } else { &two };
        match login_from(app, &format!("203.0.113.{n}"), "guarded", wrong).await {
            401 => checked += 1,
            429 => {}
            other => panic!("guess {n}: {other}"),
        }
    }
    assert_eq!(checked, 4, "the account's budget, across processes");
    // The owner, from the address they signed up from (known on both), gets in
    // through either process.
    assert_eq!(two.login("guarded", PASSWORD).await.status(), 200);
    assert_eq!(one.login("guarded", PASSWORD).await.status(), 200);
}
