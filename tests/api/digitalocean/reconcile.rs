//! Reconciliation: droplets and volumes tagged `devpocket` that belong to no live
//! environment are reported, then destroyed after the grace period; an environment
//! whose droplet was destroyed outside DevPocket moves to `error` saying so.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::lifecycle::create;
use super::spawn_app;
use crate::fake_do::FakeDo;

async fn fake_call(
    fake: &FakeDo,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .request(method, format!("{}{path}", fake.url))
        .bearer_auth(&fake.token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

#[actix_web::test]
async fn orphans_are_reported_then_destroyed_and_a_vanished_droplet_fails_its_environment() {
    let fake = FakeDo::start();
    // Left behind by someone: a droplet of an environment that does not exist, and
    // a volume of nobody.
    let stranger = uuid::Uuid::new_v4();
    let (status, orphan) = fake_call(
        &fake,
        reqwest::Method::POST,
        "/v2/droplets",
        Some(json!({"name": "left-behind", "region": "nyc3", "size": "s-1vcpu-1gb",
                    "image": "ubuntu-24-04-x64", "tags": ["devpocket", format!("devpocket-env-{stranger}")]})),
    )
    .await;
    assert_eq!(status, 202, "{orphan}");
    let (status, volume) = fake_call(
        &fake,
        reqwest::Method::POST,
        "/v2/volumes",
        Some(json!({"name": "forgotten", "region": "nyc3", "size_gigabytes": 1, "tags": ["devpocket"]})),
    )
    .await;
    assert_eq!(status, 201, "{volume}");

    let app = spawn_app(
        &fake,
        &[
            ("DO_RECONCILE_INTERVAL", "300ms"),
            ("DO_ORPHAN_GRACE", "1s"),
            ("DO_DESTROY_ORPHANS", "true"),
        ],
    )
    .await;
    let token = app.user_token("tidy").await;
    let id = create(&app, &token, "keeper").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    app.wait_for_env(&token, &id, |e| e["status"] == "running")
        .await;
    let tag = format!("devpocket-env-{id}");

    let health: Value = app.get("/health").await.json().await.unwrap();
    assert!(
        health["digitalocean"]["last_reconciled"].is_string(),
        "{health}"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let health: Value = app.get("/health").await.json().await.unwrap();
        if health["digitalocean"]["orphans_destroyed"] == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "orphans never destroyed: {health}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(fake.ever_created(&format!("devpocket-env-{stranger}")), 1);
    assert!(
        fake.droplets_tagged(&format!("devpocket-env-{stranger}"))
            .is_empty()
    );
    let droplets = fake.droplets_tagged(&tag);
    assert_eq!(droplets.len(), 1, "the live environment keeps its droplet");
    let volumes = fake.volumes();
    assert_eq!(volumes.len(), 1, "and its volume only: {volumes:?}");
    assert_eq!(volumes[0].droplet_ids, vec![droplets[0].id]);

    // Destroyed behind DevPocket's back.
    let (status, _) = fake_call(
        &fake,
        reqwest::Method::DELETE,
        &format!("/v2/droplets/{}", droplets[0].id),
        None,
    )
    .await;
    assert_eq!(status, 204);
    let env = app
        .wait_for_env(&token, &id, |e| e["status"] == "error")
        .await;
    assert!(
        env["status_message"]
            .as_str()
            .unwrap()
            .contains("no longer exists on DigitalOcean"),
        "{env}"
    );
    let r = app
        .authed_client(&token)
        .delete(&format!("/api/v1/environments/{id}"))
        .await;
    assert_eq!(r.status(), 202);
    fake.wait_until("the volume is deleted too", |f| f.volumes().is_empty())
        .await;
    fake.assert_valid();
}
