//! Templates: the built-in catalogue, filters, lookups by id and name, usage counts.
//! Admin management and the start-up sync are in `templates/admin.rs`.

mod admin;

use diesel_async::RunQueryDsl;
use serde_json::{Value, json};

use crate::helpers::{TestApp, assert_error};

pub const BUILTIN_NAMES: [&str; 5] = ["golang", "nodejs", "python", "rust", "ubuntu"];

/// A template of the kind an admin might add.
pub fn custom_template(name: &str) -> Value {
    json!({
        "name": name,
        "display_name": "PostgreSQL 16",
        "description": "A database server to practise SQL on.",
        "category": "database",
        "tags": ["sql", "postgres"],
        "docker_image": "postgres:16",
        "default_resources": {"cpu": "1", "memory": "512Mi", "storage": "5Gi"},
        "environment_variables": {"PGPORT": "5432"},
        "startup_commands": ["psql --version"],
        "default_port": 5432,
        "documentation_url": "https://www.postgresql.org/docs/16/",
        "icon_url": null,
        "packages": ["postgresql"],
        "bootstrap": "#!/bin/sh\nset -eu\necho '==> [1/1] Nothing to do'\n",
    })
}

/// Every field of the app's contract (and of older apps), with its JSON type.
pub fn assert_template_object(t: &Value) {
    for field in [
        "id",
        "name",
        "display_name",
        "description",
        "docker_image",
        "version",
        "image",
    ] {
        assert!(t[field].is_string(), "{field} must be a string: {t}");
    }
    let category = t["category"].as_str().unwrap();
    assert!(
        [
            "programming_language",
            "framework",
            "database",
            "devops",
            "operating_system"
        ]
        .contains(&category)
    );
    assert!(["active", "deprecated", "beta"].contains(&t["status"].as_str().unwrap()));
    assert!(
        t["tags"].as_array().unwrap().iter().all(Value::is_string),
        "{t}"
    );
    assert!(
        t["startup_commands"]
            .as_array()
            .unwrap()
            .iter()
            .all(Value::is_string)
    );
    for map in ["default_resources", "environment_variables"] {
        let map = t[map].as_object().unwrap();
        assert!(map.values().all(Value::is_string), "{t}");
    }
    for date in ["created_at", "updated_at"] {
        assert!(t[date].as_str().unwrap().ends_with('Z'), "{t}");
    }
    assert!(t["usage_count"].is_i64());
    for optional in ["default_port", "documentation_url", "icon_url", "icon"] {
        assert!(t.get(optional).is_some(), "{optional} missing: {t}");
    }
    assert_eq!(t["image"], t["docker_image"]);
    assert_eq!(t["icon"], t["icon_url"]);
    assert!(t["featured"].is_boolean());
    assert!(t["config"].is_object());
}

pub fn names(list: &Value) -> Vec<&str> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect()
}
#[actix_web::test]
async fn the_catalogue_lists_the_builtins_with_every_contract_field() {
    let app = TestApp::spawn().await;
    let token = app.user_token("alice").await;
    let client = app.authed_client(&token);

    let response = client.get("/api/v1/templates").await;
    assert_eq!(response.status(), 200);
    let list: Value = response.json().await.unwrap();
    assert_eq!(names(&list), BUILTIN_NAMES);
    for t in list.as_array().unwrap() {
        assert_template_object(t);
        assert_eq!(t["status"], "active");
        assert_eq!(t["featured"], true);
        assert_eq!(t["usage_count"], 0);
        assert!(t["default_resources"]["memory"].is_string());
        // The script and machine set-up are for admins only.
        for hidden in ["bootstrap", "packages", "cloud_init"] {
            assert!(t.get(hidden).is_none(), "{hidden} shown to a user");
        }
    }
    let python = &list[2];
    assert_eq!(python["docker_image"], "python3");
    assert_eq!(python["category"], "programming_language");
    assert_eq!(python["default_port"], 8000);
    assert_eq!(python["config"]["default_port"], 8000);
    assert_eq!(list[4]["category"], "operating_system");
    assert_eq!(list[4]["default_port"], Value::Null);

    // The app calls it with a trailing slash too: same answer, no redirect.
    let slash = client.get("/api/v1/templates/").await;
    assert_eq!(slash.status(), 200);
    assert_eq!(names(&slash.json().await.unwrap()), BUILTIN_NAMES);

    // An admin also sees how a machine is set up.
    let admin = app.admin_token("root").await;
    let list: Value = app
        .authed_client(&admin)
        .get("/api/v1/templates")
        .await
        .json()
        .await
        .unwrap();
    assert!(
        list[0]["bootstrap"]
            .as_str()
            .unwrap()
            .contains("==> [$step/$TOTAL]")
    );
    assert!(
        list[0]["packages"]
            .as_array()
            .unwrap()
            .contains(&json!("golang-go"))
    );
    assert!(list[0]["cloud_init"].is_object());
}

#[actix_web::test]
async fn templates_need_a_bearer_token() {
    let app = TestApp::spawn().await;
    assert_error(app.get("/api/v1/templates").await, 401, "unauthorized").await;
    assert_error(
        app.get("/api/v1/templates/python").await,
        401,
        "unauthorized",
    )
    .await;
}

#[actix_web::test]
async fn the_catalogue_filters_by_category_and_search() {
    let app = TestApp::spawn().await;
    let token = app.user_token("alice").await;
    let client = app.authed_client(&token);
    let list = |query: &'static str| {
        let client = &client;
        async move {
            let response = client.get(&format!("/api/v1/templates{query}")).await;
            assert_eq!(response.status(), 200, "{query}");
            response.json::<Value>().await.unwrap()
        }
    };

    assert_eq!(names(&list("?category=operating_system").await), ["ubuntu"]);
    assert_eq!(
        names(&list("?category=programming_language").await).len(),
        4
    );
    assert!(names(&list("?category=database").await).is_empty());
    // Case-insensitive, over name, display name, description and tags.
    assert_eq!(names(&list("?search=PYTHON").await), ["python"]);
    assert_eq!(names(&list("?search=typescript").await), ["nodejs"]);
    assert_eq!(names(&list("?search=backend").await), ["golang", "rust"]);
    assert_eq!(
        names(&list("?search=backend&category=programming_language").await),
        ["golang", "rust"]
    );
    // LIKE wildcards are matched literally.
    assert!(names(&list("?search=%25").await).is_empty());
    assert!(names(&list("?search=_").await).is_empty());
    // Blank filters are no filters.
    assert_eq!(names(&list("?category=&search=").await).len(), 5);

    let body = assert_error(
        client.get("/api/v1/templates?category=games").await,
        422,
        "validation_error",
    )
    .await;
    assert!(
        body["context"]["fields"]["category"][0]
            .as_str()
            .unwrap()
            .contains("devops")
    );
}

#[actix_web::test]
async fn a_template_is_found_by_id_or_by_name() {
    let app = TestApp::spawn().await;
    let token = app.user_token("alice").await;
    let client = app.authed_client(&token);
    let list: Value = client.get("/api/v1/templates").await.json().await.unwrap();
    let rust = &list[3];

    let by_id: Value = client
        .get(&format!(
            "/api/v1/templates/{}",
            rust["id"].as_str().unwrap()
        ))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(&by_id, rust);
    let by_name = client.get("/api/v1/templates/Rust").await;
    assert_eq!(by_name.status(), 200);
    assert_eq!(by_name.json::<Value>().await.unwrap()["id"], rust["id"]);

    let body = assert_error(
        client.get("/api/v1/templates/cobol").await,
        404,
        "not_found",
    )
    .await;
    assert!(body["detail"].as_str().unwrap().contains("cobol"));
    let unknown = uuid::Uuid::new_v4();
    assert_error(
        client.get(&format!("/api/v1/templates/{unknown}")).await,
        404,
        "not_found",
    )
    .await;
}

#[derive(diesel::QueryableByName)]
struct IdRow {
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    id: uuid::Uuid,
}

#[actix_web::test]
async fn usage_count_counts_the_environments_made_from_a_template() {
    let app = TestApp::spawn().await;
    let token = app.user_token("alice").await;
    let client = app.authed_client(&token);
    let mut conn = app.db.connect().await;
    let user: Vec<IdRow> = diesel::sql_query("SELECT id FROM users WHERE username = 'alice'")
        .load(&mut conn)
        .await
        .unwrap();
    for name in ["one", "two"] {
        diesel::sql_query(format!(
            "INSERT INTO environments (id, user_id, name, slug, template_id, provider, region, size, status, phase) \
             SELECT gen_random_uuid(), '{}', '{name}', '{name}', id, 'local', 'local', 'small', 'stopped', 'stopped' \
             FROM templates WHERE name = 'golang'",
            user[0].id
        ))
        .execute(&mut conn)
        .await
        .unwrap();
    }
    let list: Value = client.get("/api/v1/templates").await.json().await.unwrap();
    assert_eq!(list[0]["name"], "golang");
    assert_eq!(list[0]["usage_count"], 2);
    assert_eq!(list[1]["usage_count"], 0);
    let golang: Value = client
        .get("/api/v1/templates/golang")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(golang["usage_count"], 2);
}
