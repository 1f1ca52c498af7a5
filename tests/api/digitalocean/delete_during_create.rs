//! A DigitalOcean environment deleted at every step of its create, through the
//! server: before its volume is made, while the volume's or the droplet's create
//! request is in flight (before or after it took effect), while the droplet is
//! `new`, while the bootstrap runs, once ready, and while a create whose droplet
//! request lost its answer looks for what it made. Each time the delete waits for
//! the create to stop, the environment goes (404), and DigitalOcean holds no droplet
//! and no volume of it: at once, and still once the fake has finished everything
//! that was in flight.

use devpocket_actors::provider::digitalocean::{environment_tag, volume_name};
use serde_json::{Value, json};
use uuid::Uuid;

use super::lifecycle::create;
use super::spawn_app;
use crate::fake_do::{DropletStatus, FakeDo, Fault, Hold, Point};
use crate::helpers::{TestApp, WsEvent, ws_next, ws_until};

/// A server on `fake` whose calls to DigitalOcean wait as long as a test holds
/// them (none times out meanwhile), and an admin's token.
async fn server(fake: &FakeDo) -> (TestApp, String) {
    let app = spawn_app(fake, &[("DO_API_TIMEOUT", "60s")]).await;
    let token = app.admin_token("hasty").await;
    (app, token)
}

/// A create's look for the environment's droplet (not the server's reconciliation,
/// which lists everything tagged `devpocket`).
fn environment_lookup(query: &[(String, String)]) -> bool {
    query
        .iter()
        .any(|(k, v)| k == "tag_name" && v.starts_with("devpocket-env-"))
}

/// A create's look for the environment's volume, by its name.
fn volume_lookup(query: &[(String, String)]) -> bool {
    query.iter().any(|(k, _)| k == "name")
}

async fn created(app: &TestApp, token: &str, template: &str) -> Uuid {
    let response = app
        .authed_client(token)
        .post(
            "/api/v1/environments",
            &json!({"name": "short-lived", "template_id": template}),
        )
        .await;
    assert_eq!(response.status(), 201, "{:?}", response.text().await);
    let env: Value = response.json().await.unwrap();
    env["id"].as_str().unwrap().parse().unwrap()
}

/// The DELETE is answered at once, whatever the create is doing.
async fn delete(app: &TestApp, token: &str, id: Uuid) {
    let response = app
        .authed_client(token)
        .delete(&format!("/api/v1/environments/{id}"))
        .await;
    assert_eq!(response.status(), 202, "{:?}", response.text().await);
}

/// While its create is held, the environment is being deleted, not gone: the
/// delete waits for the create it interrupts.
async fn assert_deleting(app: &TestApp, token: &str, id: Uuid) {
    let response = app
        .authed_client(token)
        .get(&format!("/api/v1/environments/{id}"))
        .await;
    assert_eq!(response.status(), 200);
    let env: Value = response.json().await.unwrap();
    assert_eq!(env["phase"], "deleting", "{env}");
}

/// DigitalOcean holds nothing of `id`: no droplet tagged with it, no volume named
/// after it, and (the fake being this test's own) nothing at all.
fn assert_nothing_left(fake: &FakeDo, id: Uuid, when: &str) {
    let droplets = fake.droplets_tagged(&environment_tag(id));
    let volumes: Vec<_> = fake
        .volumes()
        .into_iter()
        .filter(|v| v.name == volume_name(id))
        .collect();
    assert!(
        droplets.is_empty() && volumes.is_empty(),
        "{when}: left behind: {droplets:?} {volumes:?}"
    );
    assert!(
        fake.droplets().is_empty() && fake.volumes().is_empty(),
        "{when}: left behind: {:?} {:?}",
        fake.droplets(),
        fake.volumes()
    );
}

/// Waits until the environment is gone (404), then finds nothing of it left.
async fn gone(app: &TestApp, token: &str, fake: &FakeDo, id: Uuid) {
    app.wait_for_env(token, &id.to_string(), |e| {
        assert_ne!(e["status"], "error", "the delete failed: {e}");
        e["code"] == "not_found"
    })
    .await;
    assert_nothing_left(fake, id, "once the environment was gone");
}

/// Nothing appears afterwards either: once every request in flight is answered
/// and every action and destroy has ended.
async fn still_nothing_left(fake: &FakeDo, id: Uuid) {
    fake.settled().await;
    assert_nothing_left(fake, id, "once the fake had finished everything");
    fake.assert_valid();
}

/// Creates an environment, deletes it while `hold` stops its create, then lets the
/// create go on: it stops, and the delete removes whatever it made.
async fn deleted_while_held(fake: &FakeDo, hold: Hold) -> Uuid {
    let (app, token) = server(fake).await;
    let id = created(&app, &token, "ubuntu").await;
    hold.arrived().await;
    delete(&app, &token, id).await;
    assert_deleting(&app, &token, id).await;
    hold.release();
    gone(&app, &token, fake, id).await;
    still_nothing_left(fake, id).await;
    id
}

#[actix_web::test]
async fn deleted_before_its_volume_is_made_it_makes_nothing() {
    let fake = FakeDo::start();
    // The create's look for an existing volume, just before it makes one.
    let lookup = fake.hold_where(Point::Arrival, "volumes_list", volume_lookup);
    deleted_while_held(&fake, lookup).await;
    assert_eq!(
        (fake.count("volumes_create"), fake.count("droplets_create")),
        (0, 0),
        "nothing is made once the delete has come"
    );
}

#[actix_web::test]
async fn deleted_while_its_volume_create_is_in_flight() {
    let fake = FakeDo::start();
    let hold = fake.hold(Point::Arrival, "volumes_create");
    deleted_while_held(&fake, hold).await;
    assert_eq!(fake.count("volumes_create"), 1);
    assert_eq!(fake.count("droplets_create"), 0, "no droplet after it");
}

#[actix_web::test]
async fn deleted_while_its_droplet_create_is_in_flight() {
    let fake = FakeDo::start();
    let hold = fake.hold(Point::Arrival, "droplets_create");
    let id = deleted_while_held(&fake, hold).await;
    // The request was seen through, and what it made destroyed.
    assert_eq!(fake.ever_created(&environment_tag(id)), 1);
    assert_eq!(fake.count("droplets_create"), 1);
}

#[actix_web::test]
async fn deleted_after_its_droplet_create_took_effect_but_before_the_answer() {
    let fake = FakeDo::start();
    let hold = fake.hold(Point::Answer, "droplets_create");
    let id = deleted_while_held(&fake, hold).await;
    assert_eq!(fake.ever_created(&environment_tag(id)), 1);
    assert_eq!(fake.count("droplets_create"), 1);
}

#[actix_web::test]
async fn deleted_while_its_droplet_is_new() {
    let fake = FakeDo::start();
    let (app, token) = server(&fake).await;
    // The droplet's create action stays in progress.
    let booting = fake.hold_actions("create");
    let id = created(&app, &token, "ubuntu").await;
    booting.arrived().await;
    let droplets = fake.droplets_tagged(&environment_tag(id));
    assert_eq!(droplets.len(), 1);
    assert_eq!(droplets[0].status, DropletStatus::New);
    delete(&app, &token, id).await;
    // Waiting is given up at once: the delete does not wait for the droplet.
    gone(&app, &token, &fake, id).await;
    // The create action ends after its droplet is gone: nothing comes of it.
    booting.release();
    still_nothing_left(&fake, id).await;
}

#[actix_web::test]
async fn deleted_while_its_bootstrap_runs() {
    let fake = FakeDo::start();
    let (app, token) = server(&fake).await;
    let client = app.authed_client(&token);
    let bootstrap = "#!/bin/sh\necho '==> [1/2] Holding until deleted'\nsleep 600\necho '==> [2/2] Never here'\n";
    let template = client
        .post(
            "/api/v1/templates",
            &json!({
                "name": "endless", "display_name": "Endless", "description": "a bootstrap that never ends",
                "category": "operating_system", "tags": [], "docker_image": "debian:12",
                "bootstrap": bootstrap
            }),
        )
        .await;
    assert_eq!(template.status(), 201, "{:?}", template.text().await);
    let id = created(&app, &token, "endless").await;
    let mut ws = app.ws(&format!("/api/v1/ws/logs/{id}?token={token}")).await;
    loop {
        match ws_next(&mut ws).await {
            WsEvent::Json(f) if f["type"] == "installation_log" => {
                if f["data"]
                    .as_str()
                    .unwrap()
                    .contains("Holding until deleted")
                {
                    break;
                }
            }
            WsEvent::Json(f) => assert_ne!(f["type"], "installation_complete", "{f}"),
            WsEvent::Closed(c) => panic!("closed before the bootstrap began: {c:?}"),
        }
    }
    let droplets = fake.droplets_tagged(&environment_tag(id));
    assert_eq!(droplets.len(), 1);
    assert_eq!(droplets[0].status, DropletStatus::Active);
    delete(&app, &token, id).await;
    gone(&app, &token, &fake, id).await;
    still_nothing_left(&fake, id).await;
}

#[actix_web::test]
async fn deleted_once_ready() {
    let fake = FakeDo::start();
    let (app, token) = server(&fake).await;
    let env = create(&app, &token, "ready").await;
    let id: Uuid = env["id"].as_str().unwrap().parse().unwrap();
    let mut ws = app.ws(&format!("/api/v1/ws/logs/{id}?token={token}")).await;
    ws_until(&mut ws, "installation_complete").await;
    app.wait_for_env(&token, &id.to_string(), |e| e["phase"] == "ready")
        .await;
    delete(&app, &token, id).await;
    gone(&app, &token, &fake, id).await;
    still_nothing_left(&fake, id).await;
}

/// Creates an environment whose droplet request meets `fault`, and deletes it
/// while the create looks for the droplet by the environment's tag (what it does
/// when it cannot tell whether the request took effect).
async fn deleted_while_a_lost_create_looks(fault: Fault) -> (FakeDo, Uuid) {
    let fake = FakeDo::start();
    let (app, token) = server(&fake).await;
    // Past the create's first look for a droplet: at its volume.
    let volume = fake.hold(Point::Arrival, "volumes_create");
    let id = created(&app, &token, "ubuntu").await;
    volume.arrived().await;
    fake.fault_next("droplets_create", fault);
    let lookup = fake.hold_where(Point::Arrival, "droplets_list", environment_lookup);
    volume.release();
    lookup.arrived().await;
    delete(&app, &token, id).await;
    assert_deleting(&app, &token, id).await;
    lookup.release();
    gone(&app, &token, &fake, id).await;
    still_nothing_left(&fake, id).await;
    (fake, id)
}

#[actix_web::test]
async fn deleted_while_a_create_whose_answer_was_lost_looks_for_its_droplet() {
    let (fake, id) = deleted_while_a_lost_create_looks(Fault::DropAfter).await;
    // Made, unrecorded, found by its tag and destroyed.
    assert_eq!(fake.ever_created(&environment_tag(id)), 1);
    assert_eq!(fake.count("droplets_create"), 1, "not sent again");
}

#[actix_web::test]
async fn deleted_while_a_create_whose_request_was_lost_looks_for_its_droplet() {
    let (fake, id) = deleted_while_a_lost_create_looks(Fault::DropBefore).await;
    // Nothing was made, and the create does not try again once the delete has come.
    assert_eq!(fake.count("droplets_create"), 1, "not sent again");
    assert_eq!(fake.ever_created(&environment_tag(id)), 0);
}
