//! Templates managed by admins (create, partial update, deprecate), who may do it,
//! what is refused, and the start-up sync of the template files.

use std::time::Duration;

use devpocket::config::Secret;
use serde_json::{Value, json};

use super::{BUILTIN_NAMES, assert_template_object, custom_template, names};
use crate::helpers::{TestApp, assert_error};

#[actix_web::test]
async fn admins_create_update_and_deprecate_templates() {
    let app = TestApp::spawn().await;
    let admin_token = app.admin_token("root").await;
    let admin = app.authed_client(&admin_token);
    let user_token = app.user_token("alice").await;
    let user = app.authed_client(&user_token);

    let created = admin
        .post("/api/v1/templates", &custom_template("postgres"))
        .await;
    assert_eq!(created.status(), 201);
    let created: Value = created.json().await.unwrap();
    assert_template_object(&created);
    assert_eq!(created["status"], "active");
    assert_eq!(created["version"], "1.0.0");
    assert_eq!(created["featured"], false);
    assert_eq!(created["packages"], json!(["postgresql"]));
    assert!(created["bootstrap"].as_str().unwrap().contains("==> [1/1]"));
    let id = created["id"].as_str().unwrap().to_owned();

    let seen: Value = user
        .get("/api/v1/templates/postgres")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(seen["id"], created["id"]);
    assert!(seen.get("bootstrap").is_none());

    // A partial update: only what is sent changes; `null` clears an optional field.
    tokio::time::sleep(Duration::from_millis(10)).await;
    let updated = admin
        .put(
            &format!("/api/v1/templates/{id}"),
            &json!({"display_name": "PostgreSQL 17", "docker_image": "postgres:17",
                    "default_port": null, "status": "beta"}),
        )
        .await;
    assert_eq!(updated.status(), 200);
    let updated: Value = updated.json().await.unwrap();
    assert_eq!(updated["display_name"], "PostgreSQL 17");
    assert_eq!(updated["image"], "postgres:17");
    assert_eq!(updated["default_port"], Value::Null);
    assert_eq!(updated["status"], "beta");
    assert_eq!(updated["tags"], created["tags"]);
    assert_eq!(updated["bootstrap"], created["bootstrap"]);
    assert_eq!(updated["created_at"], created["created_at"]);
    assert_ne!(updated["updated_at"], created["updated_at"]);

    // What GET returned can be sent back as it is (read-only fields are ignored).
    let mut round_trip = updated.clone();
    round_trip["description"] = json!("Edited from a fetched copy.");
    let response = admin.put("/api/v1/templates/postgres", &round_trip).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.json::<Value>().await.unwrap()["description"],
        "Edited from a fetched copy."
    );

    // DELETE deprecates: 200 with the template, hidden from users, kept for admins.
    let deleted = admin.delete(&format!("/api/v1/templates/{id}")).await;
    assert_eq!(deleted.status(), 200);
    assert_eq!(
        deleted.json::<Value>().await.unwrap()["status"],
        "deprecated"
    );
    let again = admin.delete("/api/v1/templates/postgres").await;
    assert_eq!(again.status(), 200, "deprecating twice is harmless");

    let user_list: Value = user.get("/api/v1/templates").await.json().await.unwrap();
    assert_eq!(names(&user_list), BUILTIN_NAMES);
    assert_error(
        user.get(&format!("/api/v1/templates/{id}")).await,
        404,
        "not_found",
    )
    .await;
    assert_error(
        user.get("/api/v1/templates/postgres").await,
        404,
        "not_found",
    )
    .await;
    assert!(
        names(
            &user
                .get("/api/v1/templates?search=postgres")
                .await
                .json()
                .await
                .unwrap()
        )
        .is_empty()
    );

    let admin_list: Value = admin.get("/api/v1/templates").await.json().await.unwrap();
    assert!(names(&admin_list).contains(&"postgres"));
    let seen = admin.get("/api/v1/templates/postgres").await;
    assert_eq!(seen.status(), 200);
    assert_eq!(seen.json::<Value>().await.unwrap()["status"], "deprecated");

    // An admin brings it back by setting its status.
    let revived = admin
        .put("/api/v1/templates/postgres", &json!({"status": "active"}))
        .await;
    assert_eq!(revived.status(), 200);
    assert_eq!(user.get("/api/v1/templates/postgres").await.status(), 200);

    assert_error(
        admin.delete("/api/v1/templates/cobol").await,
        404,
        "not_found",
    )
    .await;
    assert_error(
        admin
            .put("/api/v1/templates/cobol", &json!({"version": "2"}))
            .await,
        404,
        "not_found",
    )
    .await;
}

#[actix_web::test]
async fn only_admins_change_templates() {
    let app = TestApp::spawn().await;
    let token = app.user_token("alice").await;
    let user = app.authed_client(&token);

    for response in [
        user.post("/api/v1/templates", &custom_template("postgres"))
            .await,
        // Forbidden comes before validation: a user learns nothing from the body.
        user.post("/api/v1/templates", &json!({"name": "?"})).await,
        user.put("/api/v1/templates/python", &json!({"version": "9"}))
            .await,
        user.delete("/api/v1/templates/python").await,
    ] {
        let body = assert_error(response, 403, "forbidden").await;
        assert!(
            body["detail"].as_str().unwrap().contains("administrators"),
            "{body}"
        );
    }
    let python: Value = user
        .get("/api/v1/templates/python")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(python["status"], "active");
    assert_eq!(python["version"], "1.0.0");
}

#[actix_web::test]
async fn invalid_or_duplicate_templates_are_refused() {
    let app = TestApp::spawn().await;
    let token = app.admin_token("root").await;
    let admin = app.authed_client(&token);

    let field_error = |body: Value, field: &'static str| {
        let admin = &admin;
        async move {
            let response = admin.post("/api/v1/templates", &body).await;
            let error = assert_error(response, 422, "validation_error").await;
            assert!(
                error["context"]["fields"][field].is_array(),
                "{field}: {error}"
            );
        }
    };
    let mut bad = custom_template("Bad Name");
    field_error(bad.clone(), "name").await;
    bad = custom_template("postgres");
    bad["category"] = json!("games");
    field_error(bad, "category").await;
    bad = custom_template("postgres");
    bad.as_object_mut().unwrap().remove("bootstrap");
    field_error(bad, "bootstrap").await;
    bad = custom_template("postgres");
    bad["default_resources"]["cpu"] = json!(2);
    field_error(bad, "default_resources.cpu").await;
    bad = custom_template("postgres");
    bad["packages"] = json!(["postgresql", "x; reboot"]);
    field_error(bad, "packages[1]").await;
    bad = custom_template("postgres");
    bad["colour"] = json!("blue");
    field_error(bad, "colour").await;

    // Names are unique, ignoring case (stored names are lowercase).
    let body = assert_error(
        admin
            .post("/api/v1/templates", &custom_template("python"))
            .await,
        409,
        "conflict",
    )
    .await;
    assert_eq!(body["context"]["field"], "name");
    assert_eq!(
        admin
            .post("/api/v1/templates", &custom_template("postgres"))
            .await
            .status(),
        201
    );
    assert_error(
        admin
            .put("/api/v1/templates/postgres", &json!({"name": "ubuntu"}))
            .await,
        409,
        "conflict",
    )
    .await;
    let error = assert_error(
        admin
            .put("/api/v1/templates/postgres", &json!({"bootstrap": ""}))
            .await,
        422,
        "validation_error",
    )
    .await;
    assert!(error["context"]["fields"]["bootstrap"].is_array());
    let error = assert_error(
        admin
            .put("/api/v1/templates/postgres", &json!({"display_name": null}))
            .await,
        422,
        "validation_error",
    )
    .await;
    assert!(error["context"]["fields"]["display_name"].is_array());
}

#[actix_web::test]
async fn the_start_up_sync_restores_files_but_keeps_deprecations() {
    let app = TestApp::spawn().await;
    let token = app.admin_token("root").await;
    let admin = app.authed_client(&token);
    let pool =
        devpocket::db::build_pool(&Secret::new(app.db.url.clone()), 2, Duration::from_secs(5))
            .unwrap();

    let before: Value = admin
        .get("/api/v1/templates/python")
        .await
        .json()
        .await
        .unwrap();
    // Running it again changes nothing.
    assert_eq!(devpocket::templates::sync(&pool, None).await.unwrap(), 5);
    let after: Value = admin
        .get("/api/v1/templates/python")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(after, before);

    // The file wins over an edit, but a deprecation survives a restart.
    admin
        .put(
            "/api/v1/templates/python",
            &json!({"description": "edited"}),
        )
        .await;
    admin.delete("/api/v1/templates/python").await;
    devpocket::templates::sync(&pool, None).await.unwrap();
    let synced: Value = admin
        .get("/api/v1/templates/python")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(synced["id"], before["id"]);
    assert_eq!(synced["description"], before["description"]);
    assert_eq!(synced["status"], "deprecated");

    // Templates from an operator's directory are added; bad files are named.
    let dir = app.data_dir.join("extra-templates");
    std::fs::create_dir_all(&dir).unwrap();
    let custom = custom_template("postgres");
    std::fs::write(
        dir.join("postgres.yaml"),
        serde_json::to_string(&custom).unwrap(),
    )
    .unwrap();
    assert_eq!(
        devpocket::templates::sync(&pool, Some(&dir)).await.unwrap(),
        6
    );
    let postgres = admin.get("/api/v1/templates/postgres").await;
    assert_eq!(postgres.status(), 200);
    assert_eq!(
        postgres.json::<Value>().await.unwrap()["category"],
        "database"
    );

    std::fs::write(dir.join("broken.yaml"), "name: broken\ncategory: games\n").unwrap();
    let err = devpocket::templates::sync(&pool, Some(&dir))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("broken.yaml") && err.contains("`category`"),
        "{err}"
    );
}
