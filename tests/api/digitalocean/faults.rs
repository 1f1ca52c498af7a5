//! Bad days at DigitalOcean: a fifth of all requests fail (429, 5xx, answers too
//! slow to wait for, dropped connections — half of those after taking effect), and
//! every operation (create, stop, start, snapshot, resize, delete) still completes
//! with exactly one droplet and one snapshot per environment; a
//! droplet that presents another host key than the pinned one is refused; a refused
//! token tells the owner what kind of trouble it is, not DigitalOcean's words or the
//! operator's advice.

use std::time::Duration;

use serde_json::{Value, json};

use super::lifecycle::create;
use super::{metric, series, spawn_app};
use crate::fake_do::{FakeConfig, FakeDo, Faults};
use crate::helpers::{TestApp, WsEvent, ws_next};

/// Sends `POST /api/v1/environments/{id}/{action}` (with `body(i)` for the i-th)
/// to every environment, then waits until each satisfies `done`.
async fn all(
    app: &TestApp,
    token: &str,
    ids: &[String],
    action: &str,
    body: impl Fn(usize) -> Value,
    done: impl Fn(&Value) -> bool + Copy,
) -> Vec<Value> {
    let client = app.authed_client(token);
    for (i, id) in ids.iter().enumerate() {
        let r = client
            .post(&format!("/api/v1/environments/{id}/{action}"), &body(i))
            .await;
        assert_eq!(r.status(), 202, "{action}");
    }
    let mut envs = Vec::new();
    for id in ids {
        envs.push(app.wait_for_env(token, id, done).await);
    }
    envs
}

#[actix_web::test]
async fn every_operation_completes_under_twenty_percent_faults_with_one_droplet_each() {
    let fake = FakeDo::start();
    // Slow answers come after 1.5 s: past the client's 1 s timeout.
    let app = spawn_app(&fake, &[("DO_API_TIMEOUT", "1s")]).await;
    fake.configure(|c| c.faults = Faults::spread(0.2, Duration::from_millis(1500)));
    let token = app.admin_token("stormy").await;
    let client = app.authed_client(&token);

    let mut ids = Vec::new();
    for name in ["first", "second", "third"] {
        ids.push(
            create(&app, &token, name).await["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    for id in &ids {
        let env = app
            .wait_for_env(&token, id, |e| e["status"] != "creating")
            .await;
        assert_eq!(env["status"], "running", "{env}");
    }
    let stopped = |e: &Value| e["phase"] == "stopped" || e["status"] == "error";
    let ready = |e: &Value| e["phase"] == "ready" || e["status"] == "error";
    for env in all(&app, &token, &ids, "stop", |_| json!({}), stopped).await {
        assert_eq!(env["status"], "stopped", "{env}");
    }
    for env in all(&app, &token, &ids, "start", |_| json!({}), ready).await {
        assert_eq!(env["status"], "running", "{env}");
    }
    // A snapshot each: one image each, whatever was retried.
    let name = |i: usize| json!({"name": format!("stormy-{i}")});
    for (i, env) in all(&app, &token, &ids, "snapshot", name, ready)
        .await
        .iter()
        .enumerate()
    {
        let saved = format!("snapshot stormy-{i} saved");
        assert!(
            env["status_message"]
                .as_str()
                .unwrap_or_default()
                .contains(&saved),
            "{env}"
        );
    }
    let mut names: Vec<String> = fake.snapshots().into_iter().map(|s| s.1).collect();
    names.sort();
    assert_eq!(
        names,
        ["stormy-0", "stormy-1", "stormy-2"],
        "one snapshot each"
    );
    // A resize each: stopped, resized, started again.
    let medium = |_| json!({"size": "medium"});
    for env in all(&app, &token, &ids, "resize", medium, ready).await {
        assert_eq!(
            (env["status"].as_str(), env["size"].as_str()),
            (Some("running"), Some("s-2vcpu-4gb")),
            "{env}"
        );
    }
    for id in &ids {
        assert_eq!(
            fake.droplets_tagged(&format!("devpocket-env-{id}")).len(),
            1,
            "one droplet per environment"
        );
        let r = client.delete(&format!("/api/v1/environments/{id}")).await;
        assert_eq!(r.status(), 202);
    }
    fake.wait_until("every droplet and volume deleted", |f| {
        f.droplets().is_empty() && f.volumes().is_empty()
    })
    .await;
    for id in &ids {
        // One droplet for the create and one for the start (a stop destroys the
        // droplet): never a second for either, whatever was retried.
        assert_eq!(
            fake.ever_created(&format!("devpocket-env-{id}")),
            2,
            "one droplet per create or start"
        );
    }
    let exchanges = fake.exchanges();
    let faults = exchanges.iter().filter(|e| e.fault.is_some()).count();
    // About a fifth; at least a twentieth, whatever the dice say.
    assert!(
        faults * 20 > exchanges.len(),
        "{faults} faults in {} requests",
        exchanges.len()
    );
    fake.assert_valid();

    // The bad day shows in /metrics: calls without a 2xx answer, and retries.
    let failed: f64 = series(&app, "devpocket_provider_api_calls_total")
        .await
        .iter()
        .filter(|(labels, _)| {
            labels["provider"] == "digitalocean" && !labels["status"].starts_with('2')
        })
        .map(|(_, calls)| calls)
        .sum();
    assert!(failed >= 1.0, "{faults} faults, {failed} failed calls");
    let retries = metric(
        &app,
        "devpocket_provider_api_retries_total",
        &[("provider", "digitalocean")],
    )
    .await;
    assert!(retries >= 1.0, "{faults} faults, {retries} retries");
}

#[actix_web::test]
async fn a_host_key_that_is_not_the_pinned_one_is_refused() {
    let fake = FakeDo::start_with(FakeConfig {
        host_key_mismatch: true,
        ..FakeConfig::default()
    });
    let app = spawn_app(&fake, &[]).await;
    let token = app.user_token("pinned").await;
    let id = create(&app, &token, "impostor").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut ws = app.ws(&format!("/api/v1/ws/logs/{id}?token={token}")).await;
    let error = loop {
        match ws_next(&mut ws).await {
            WsEvent::Json(f) if f["type"] == "installation_error" => break f,
            WsEvent::Json(f) => assert_ne!(f["type"], "installation_complete", "{f}"),
            WsEvent::Closed(c) => panic!("closed: {c:?}"),
        }
    };
    let message = error["error"].as_str().unwrap();
    assert!(
        message.contains("does not match the pinned one"),
        "{message}"
    );
    let env = app
        .wait_for_env(&token, &id, |e| e["status"] == "error")
        .await;
    assert!(
        env["status_message"]
            .as_str()
            .unwrap()
            .contains("refusing to connect"),
        "{env}"
    );
    // It can still be deleted, with its droplet and volume.
    let r = app
        .authed_client(&token)
        .delete(&format!("/api/v1/environments/{id}"))
        .await;
    assert_eq!(r.status(), 202);
    fake.wait_until("droplet and volume deleted", |f| {
        f.droplets().is_empty() && f.volumes().is_empty()
    })
    .await;
}

#[actix_web::test]
async fn a_refused_token_tells_the_owner_the_trouble_and_keeps_the_operators_advice_in_the_log() {
    let fake = FakeDo::start();
    let app = spawn_app(&fake, &[("DO_API_TOKEN", "not-the-fakes-token")]).await;
    let token = app.user_token("refused").await;
    let id = create(&app, &token, "refused").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let env = app
        .wait_for_env(&token, &id, |e| e["status"] == "error")
        .await;
    let message = env["status_message"].as_str().unwrap();
    assert!(message.contains("credentials"), "{message}");
    // DigitalOcean's own answer ("Unable to authenticate you", 401) and what the
    // operator should do about it are not the owner's to read.
    for secret in ["DO_API_TOKEN", "Unable to authenticate", "401", "scope"] {
        assert!(!message.contains(secret), "{secret:?} in {message}");
    }
    assert!(fake.droplets_tagged("devpocket").is_empty());
}
