//! `GET /api/v1/regions` and `/api/v1/sizes`: DigitalOcean's lists (cached),
//! sizes filtered by the caller's plan; the local provider's own.

use serde_json::{Value, json};

use super::spawn_app;
use crate::fake_do::FakeDo;
use crate::helpers::{TestApp, assert_error};

async fn list(app: &TestApp, token: &str, path: &str) -> Vec<Value> {
    let response = app.authed_client(token).get(path).await;
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

fn slugs(items: &[Value]) -> Vec<&str> {
    items.iter().map(|i| i["slug"].as_str().unwrap()).collect()
}

#[actix_web::test]
async fn regions_and_sizes_come_from_digitalocean_and_sizes_follow_the_plan() {
    let fake = FakeDo::start();
    let app = spawn_app(&fake, &[]).await;
    let free = app.user_token("thrifty").await;
    let admin = app.admin_token("lavish").await;

    let regions = list(&app, &free, "/api/v1/regions").await;
    assert!(slugs(&regions).contains(&"fra1"), "{regions:?}");
    let nyc3 = regions.iter().find(|r| r["slug"] == "nyc3").unwrap();
    assert_eq!(nyc3["default"], true);
    assert_eq!(nyc3["provider"], "digitalocean");
    list(&app, &admin, "/api/v1/regions").await;
    assert_eq!(fake.count("regions_list"), 1, "cached");

    let sizes = list(&app, &free, "/api/v1/sizes").await;
    assert_eq!(
        slugs(&sizes),
        vec!["s-1vcpu-1gb"],
        "the free plan allows 1 CPU and 1 GiB"
    );
    assert_eq!(sizes[0]["memory"], "1Gi");
    assert_eq!(sizes[0]["default"], true);
    assert!(sizes[0]["price_monthly"].is_number());
    let all = list(&app, &admin, "/api/v1/sizes").await;
    assert!(slugs(&all).contains(&"s-8vcpu-16gb"), "{all:?}");

    // Creating follows the same rules.
    let refused = app
        .authed_client(&free)
        .post(
            "/api/v1/environments",
            &json!({"name": "big", "template_id": "ubuntu", "size": "s-2vcpu-2gb"}),
        )
        .await;
    assert_error(refused, 403, "forbidden").await;
    let unknown = app
        .authed_client(&free)
        .post(
            "/api/v1/environments",
            &json!({"name": "odd", "template_id": "ubuntu", "size": "s-99vcpu"}),
        )
        .await;
    assert_error(unknown, 422, "validation_error").await;
    assert_eq!(fake.count("droplets_create"), 0);
    fake.assert_valid();
}

#[actix_web::test]
async fn the_local_provider_lists_its_own_region_and_sizes() {
    let app = TestApp::spawn().await;
    let token = app.user_token("homebody").await;
    let regions = list(&app, &token, "/api/v1/regions").await;
    assert_eq!(slugs(&regions), vec!["local"]);
    let sizes = list(&app, &token, "/api/v1/sizes").await;
    assert_eq!(slugs(&sizes), vec!["small"]);
    assert_error(app.get("/api/v1/sizes").await, 401, "unauthorized").await;
}
