//! `DELETE /users/me`: the account goes, and so does everything it runs.

use serde_json::{Value, json};

use crate::deletion::leftovers;
use crate::fake_do::FakeDo;
use crate::helpers::{PASSWORD, TestApp, assert_error, eventually, is_root, skipped};

#[actix_web::test]
async fn deleting_the_account_deletes_its_machines_and_keeps_its_audit_entries() {
    if !is_root() {
        return skipped();
    }
    let app = TestApp::spawn().await;
    let token = app.admin_token("leaver").await;
    let auditor = app.admin_token("auditor").await;
    let id = app.ready_environment(&token, "going", "ubuntu").await;
    let me = app.authed_client(&token);

    let refused = me
        .delete_json("/api/v1/users/me", &json!({ "password": "Not-the-pass-1" }))
        .await;
    let body = assert_error(refused, 400, "wrong_password").await;
    assert!(
        body["detail"].as_str().unwrap().contains("not deleted"),
        "{body}"
    );
    assert_eq!(me.get("/api/v1/environments").await.status(), 200);

    let deleted = me
        .delete_json("/api/v1/users/me", &json!({ "password": PASSWORD }))
        .await;
    assert_eq!(deleted.status(), 200);
    let again = me
        .delete_json("/api/v1/users/me", &json!({ "password": PASSWORD }))
        .await;
    assert_error(again, 401, "unauthorized").await;
    assert_eq!(app.login("leaver", PASSWORD).await.status(), 401);

    let data_dir = app.data_dir.canonicalize().unwrap();
    eventually(
        std::time::Duration::from_secs(60),
        "the deleted account's machine to be gone",
        async || {
            let left = leftovers(&data_dir, &id);
            if left.is_empty() {
                Ok(())
            } else {
                Err(left.join(", "))
            }
        },
    )
    .await;

    // The name and the address are free again.
    let again = app.signed_up("leaver").await;
    assert_eq!(again["user"]["email"], "leaver@example.com");

    let audit: Value = app
        .authed_client(&auditor)
        .get("/api/v1/admin/audit?action=account.delete")
        .await
        .json()
        .await
        .unwrap();
    let items = audit["items"].as_array().unwrap();
    let success: Vec<&Value> = items.iter().filter(|e| e["outcome"] == "success").collect();
    assert_eq!(success.len(), 1, "{audit}");
    assert_eq!(
        (&success[0]["username"], &success[0]["user_deleted"]),
        (&json!("leaver"), &json!(true)),
        "{audit}"
    );
    assert_eq!(success[0]["details"]["environments_deleted"], 1, "{audit}");
    let theirs: Value = app
        .authed_client(&auditor)
        .get(&format!(
            "/api/v1/admin/audit?user={}&per_page=100",
            success[0]["user_id"].as_str().unwrap()
        ))
        .await
        .json()
        .await
        .unwrap();
    let actions: Vec<&str> = theirs["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for kept in [
        "auth.register",
        "environment.create",
        "environment.delete",
        "account.delete",
    ] {
        assert!(actions.contains(&kept), "{kept} in {actions:?}");
    }
}

#[actix_web::test]
async fn a_deleted_account_leaves_no_droplet_and_no_volume_billing() {
    let fake = FakeDo::start();
    let app = crate::digitalocean::spawn_app(&fake, &[]).await;
    let token = app.admin_token("cloudy").await;
    let id = app
        .ready_environment(&token, "in-the-cloud", "ubuntu")
        .await;
    assert_eq!((fake.droplets().len(), fake.volumes().len()), (1, 1));

    let deleted = app
        .authed_client(&token)
        .delete_json("/api/v1/users/me", &json!({ "password": PASSWORD }))
        .await;
    assert_eq!(deleted.status(), 200);
    eventually(
        std::time::Duration::from_secs(60),
        "the account's droplet and volume to be destroyed",
        async || {
            let (droplets, volumes) = (fake.droplets(), fake.volumes());
            if droplets.is_empty() && volumes.is_empty() {
                Ok(())
            } else {
                Err(format!("{droplets:?} {volumes:?} ({id})"))
            }
        },
    )
    .await;
    fake.settled().await;
    assert!(fake.droplets().is_empty() && fake.volumes().is_empty());
    fake.assert_valid();
}
