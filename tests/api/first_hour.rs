//! The product as a new user first meets it: a checkout in root's home, the
//! environment they make from it, and the next one they make after deleting it.

use std::os::unix::fs::PermissionsExt;

use serde_json::Value;

use crate::fake_do::{FakeDo, Point};
use crate::helpers::{TestApp, test_database, test_root};
use crate::helpers::{run, ssh};

#[actix_web::test]
async fn a_data_directory_inside_a_private_directory_of_roots_works() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: only root has a private home to start from");
        return;
    }
    // As a clone in /root (0700) would have it.
    let private = test_root().join(format!("root-home-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&private).unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
    let db = test_database().await;
    let app = TestApp::spawn_at(db, None, private.join("devpocket").join("data"), &[]).await;
    let token = app.admin_token("newcomer").await;
    let id = app.ready_environment(&token, "first try", "ubuntu").await;

    // The bootstrap ran as the environment's user, and its sessions reach home.
    let shell = ssh(&app, &id).await;
    let (status, out) = run(
        &shell,
        "cat ~/.devpocket/provisioning.log && test -f ~/.tmux.conf && cd && pwd",
    )
    .await;
    assert_eq!(status, 0, "{out}");
    assert!(out.contains("bootstrap exited with status 0"), "{out}");
    shell.close().await;
    drop(app);
    let _ = std::fs::remove_dir_all(&private);
}

#[actix_web::test]
async fn an_environment_shown_as_terminated_counts_against_no_quota() {
    // DigitalOcean's fake can hold the droplet's destroy: the environment then stays
    // terminated (being deleted) for as long as the test needs.
    let fake = FakeDo::start();
    let app = crate::digitalocean::spawn_app(&fake, &[]).await;
    let token = app.user_token("one_at_a_time").await;
    let first = crate::digitalocean::lifecycle::create(&app, &token, "Project").await;
    let id = first["id"].as_str().unwrap();
    app.wait_for_env(&token, id, |e| e["status"] == "running")
        .await;

    let destroy = fake.hold(Point::Arrival, "droplets_destroy");
    let deleted = app
        .authed_client(&token)
        .delete(&format!("/api/v1/environments/{id}"))
        .await;
    assert_eq!(deleted.status(), 202);
    destroy.arrived().await;
    let shown: Value = app
        .authed_client(&token)
        .get(&format!("/api/v1/environments/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(shown["status"], "terminated", "{shown}");

    // The free plan's one environment is free again, and so is its name.
    let again = crate::digitalocean::lifecycle::create(&app, &token, "Project").await;
    assert_eq!(again["status"], "creating", "{again}");
    destroy.release();
    app.wait_for_env(&token, id, |e| e["code"] == "not_found")
        .await;
}

#[actix_web::test]
async fn an_invalid_field_is_named_before_the_quota_is_counted() {
    let fake = FakeDo::start();
    let app = crate::digitalocean::spawn_app(&fake, &[]).await;
    let token = app.user_token("at_quota").await;
    crate::digitalocean::lifecycle::create(&app, &token, "The one").await;
    let client = app.authed_client(&token);

    let refused = client
        .post(
            "/api/v1/environments",
            &serde_json::json!({"name": "Second", "template_id": "ubuntu", "region": "mars1"}),
        )
        .await;
    let body = crate::helpers::assert_error(refused, 422, "validation_error").await;
    assert!(body["context"]["fields"]["region"].is_array(), "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("nyc3"),
        "the regions there are: {body}"
    );

    // A valid request is then refused by the quota, as before.
    let over = client
        .post(
            "/api/v1/environments",
            &serde_json::json!({"name": "Second", "template_id": "ubuntu", "region": "nyc3"}),
        )
        .await;
    assert_eq!(over.status(), 403);
}
