//! The list of environments is answered from memory (`DEVPOCKET_LIST_CACHE_TTL`),
//! yet follows every change made through this server at once: here the cache is
//! kept for an hour, so any change that did not clear it would never be seen.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{AuthedClient, TestApp, eventually};

async fn list(client: &AuthedClient<'_>, query: &str) -> Vec<Value> {
    let response = client.get(&format!("/api/v1/environments{query}")).await;
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

/// Polls the list (not the environment) until it satisfies `pred`.
async fn list_until(client: &AuthedClient<'_>, what: &str, pred: impl Fn(&[Value]) -> bool) {
    let what = format!("the list to show {what}");
    eventually(Duration::from_secs(120), &what, async || {
        let list = list(client, "").await;
        if pred(&list) {
            Ok(())
        } else {
            Err(format!("{list:?}"))
        }
    })
    .await;
}

#[actix_web::test]
async fn the_list_follows_every_change_at_once() {
    let app = TestApp::spawn_with(&[("DEVPOCKET_LIST_CACHE_TTL", "1h")]).await;
    let token = app.admin_token("lister").await;
    let other = app.user_token("bystander").await;
    let client = app.authed_client(&token);
    let bystander = app.authed_client(&other);
    assert!(list(&client, "").await.is_empty());
    assert!(list(&bystander, "").await.is_empty());

    // Created: listed at once, then every step of provisioning (the actor's writes).
    let created = client
        .post(
            "/api/v1/environments",
            &json!({"name": "Listed", "template_id": "python"}),
        )
        .await;
    assert_eq!(created.status(), 201);
    let id = created.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let listed = list(&client, "").await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["id"], id);
    list_until(&client, "it running", |l| {
        l[0]["status"] == "running" && l[0]["phase"] == "ready" && l[0]["progress"] == 100
    })
    .await;
    assert!(list(&bystander, "").await.is_empty());

    // Renamed through the API.
    let renamed = client
        .put(
            &format!("/api/v1/environments/{id}"),
            &json!({"name": "Renamed"}),
        )
        .await;
    assert_eq!(renamed.status(), 200);
    assert_eq!(list(&client, "").await[0]["name"], "Renamed");

    // Its template renamed by an admin.
    let template = client
        .put("/api/v1/templates/python", &json!({"name": "python-3"}))
        .await;
    assert_eq!(template.status(), 200, "{:?}", template.text().await);
    assert_eq!(list(&client, "").await[0]["template_name"], "python-3");

    // Stopped by its actor; the status filter reads the same memory.
    let stopping = client
        .post(&format!("/api/v1/environments/{id}/stop"), &json!({}))
        .await;
    assert_eq!(stopping.status(), 202);
    list_until(&client, "it stopped", |l| l[0]["status"] == "stopped").await;
    assert_eq!(list(&client, "?status=stopped").await.len(), 1);
    assert!(list(&client, "?status=running").await.is_empty());

    // Deleted.
    let deleting = client.delete(&format!("/api/v1/environments/{id}")).await;
    assert_eq!(deleting.status(), 202);
    list_until(&client, "it gone", <[Value]>::is_empty).await;
}
