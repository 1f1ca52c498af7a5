//! Reconciliation: droplets and volumes tagged `devpocket` that belong to no live
//! environment are reported, then destroyed after the grace period; an environment
//! whose droplet was destroyed outside DevPocket moves to `error` saying so.

use std::time::Duration;

use serde_json::{Value, json};

use super::lifecycle::create;
use super::{metric, series, spawn_app};
use crate::fake_do::FakeDo;
use crate::helpers::eventually;

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
    eventually(
        Duration::from_secs(60),
        "both orphans destroyed",
        async || {
            let health: Value = app.get("/health").await.json().await.unwrap();
            if health["digitalocean"]["orphans_destroyed"] == 2 {
                Ok(())
            } else {
                Err(health)
            }
        },
    )
    .await;
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

    // The same in /metrics: what was destroyed, and the lookup of the vanished
    // droplet that found nothing.
    let destroyed = "devpocket_provider_orphans_destroyed_total";
    for resource in ["droplet", "volume"] {
        let n = metric(
            &app,
            destroyed,
            &[("provider", "digitalocean"), ("resource", resource)],
        )
        .await;
        assert_eq!(n, 1.0, "{resource}s destroyed");
    }
    let not_found = metric(
        &app,
        "devpocket_provider_api_errors_total",
        &[("provider", "digitalocean"), ("kind", "not_found")],
    )
    .await;
    assert!(not_found >= 1.0, "{not_found}");
}

#[actix_web::test]
async fn orphans_are_counted_in_metrics_and_left_alone_unless_destroying_is_on() {
    let fake = FakeDo::start();
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
    let app = spawn_app(
        &fake,
        &[
            ("DO_RECONCILE_INTERVAL", "200ms"),
            ("DO_ORPHAN_GRACE", "1ms"),
        ],
    )
    .await;

    let orphans = "devpocket_provider_orphans";
    let labels = |resource| [("provider", "digitalocean"), ("resource", resource)];
    eventually(Duration::from_secs(30), "both orphan gauges", async || {
        let gauges = series(&app, orphans).await;
        if gauges.len() >= 2 {
            Ok(())
        } else {
            Err(format!("{gauges:?}"))
        }
    })
    .await;
    assert_eq!(metric(&app, orphans, &labels("droplet")).await, 1.0);
    assert_eq!(metric(&app, orphans, &labels("volume")).await, 0.0);
    let health: Value = app.get("/health").await.json().await.unwrap();
    assert_eq!(health["digitalocean"]["orphan_droplets"], 1, "{health}");

    // Several rounds later (each lists the droplets), past the grace period:
    // reported, not destroyed.
    let rounds = fake.count("droplets_list");
    fake.wait_until("four more rounds", |f| {
        f.count("droplets_list") >= rounds + 4
    })
    .await;
    assert_eq!(metric(&app, orphans, &labels("droplet")).await, 1.0);
    assert_eq!(
        fake.droplets_tagged(&format!("devpocket-env-{stranger}"))
            .len(),
        1
    );
    let destroyed = metric(&app, "devpocket_provider_orphans_destroyed_total", &[]).await;
    assert_eq!(destroyed, 0.0);
    let health: Value = app.get("/health").await.json().await.unwrap();
    assert_eq!(health["digitalocean"]["orphans_destroyed"], 0, "{health}");
    fake.assert_valid();
}
