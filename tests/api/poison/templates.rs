//! Extreme values in a template's JSON fields through the admin API: before these
//! checks, `cloud_init: {"x": 1.7976931348623157e308}` was stored and `GET /templates`
//! failed for everyone. Each is refused with a 422 naming it and nothing stored, or
//! stored and read back exactly as sent.

use serde_json::{Value, json};

use super::nested;
use crate::helpers::{TestApp, assert_error};
use crate::templates::{custom_template, names};

#[actix_web::test]
async fn extreme_template_values_are_refused_before_anything_is_stored() {
    let app = TestApp::spawn().await;
    let token = app.admin_token("root").await;
    let admin = app.authed_client(&token);
    let before: Value = admin.get("/api/v1/templates").await.json().await.unwrap();

    for (field, value, named) in [
        ("cloud_init", json!({"x": f64::MAX}), "cloud_init.x"),
        ("cloud_init", json!({"x": 1e308}), "cloud_init.x"),
        ("cloud_init", json!({"x": [-1e300]}), "cloud_init.x[0]"),
        ("cloud_init", json!({"x": -0.0}), "cloud_init.x"),
        ("cloud_init", json!({"x": 5e-324}), "cloud_init.x"),
        ("cloud_init", json!({"x": u64::MAX}), "cloud_init.x"),
        (
            "cloud_init",
            json!({"x": nested(40, json!(1))}),
            "cloud_init.x",
        ),
        ("cloud_init", json!({"x": "y".repeat(70_000)}), "cloud_init"),
        ("cloud_init", json!([1]), "cloud_init"),
        ("tags", json!([f64::MAX]), "tags[0]"),
        ("tags", json!(["t".repeat(41)]), "tags[0]"),
        (
            "default_resources",
            json!({"cpu": 1e308}),
            "default_resources.cpu",
        ),
        (
            "default_resources",
            json!({"cpu": "9".repeat(41)}),
            "default_resources.cpu",
        ),
        (
            "environment_variables",
            json!({"A": [1]}),
            "environment_variables.A",
        ),
        ("startup_commands", json!([{"a": 1}]), "startup_commands[0]"),
        ("packages", json!([1e308]), "packages[0]"),
        ("default_port", json!(1e308), "default_port"),
        ("default_port", json!(70_000), "default_port"),
    ] {
        let mut template = custom_template("extreme");
        template[field] = value;
        let response = admin.post("/api/v1/templates", &template).await;
        let body = assert_error(response, 422, "validation_error").await;
        let fields = body["context"]["fields"].as_object().unwrap();
        assert!(
            fields.keys().any(|f| f.starts_with(named)),
            "{named} is not named: {body}"
        );
        // The same through a change of an existing template.
        let response = admin
            .put(
                "/api/v1/templates/python",
                &json!({ field: template[field] }),
            )
            .await;
        assert_error(response, 422, "validation_error").await;
    }
    assert_error(
        admin.get("/api/v1/templates/extreme").await,
        404,
        "not_found",
    )
    .await;
    let after: Value = admin.get("/api/v1/templates").await.json().await.unwrap();
    assert_eq!(after, before, "nothing changed");
}

#[actix_web::test]
async fn accepted_template_extremes_read_back_exactly_as_sent() {
    let app = TestApp::spawn().await;
    let token = app.admin_token("root").await;
    let admin = app.authed_client(&token);
    let user_token = app.user_token("alice").await;
    let user = app.authed_client(&user_token);

    let cloud_init = json!({
        "largest": 9_007_199_254_740_992_u64,
        "smallest": -9_007_199_254_740_992_i64,
        "fraction": 0.000001,
        "precise": 0.30000000000000004,
        "zero": 0.0,
        "flags": [true, false, null],
        "text": "z".repeat(10_000),
        "deep": nested(14, json!([1.5])),
    });
    let mut template = custom_template("extreme");
    template["cloud_init"] = cloud_init.clone();
    template["tags"] = json!(["t".repeat(40)]);
    template["default_port"] = json!(65535);
    let created = admin.post("/api/v1/templates", &template).await;
    assert_eq!(created.status(), 201);
    let created: Value = created.json().await.unwrap();

    let listed: Value = admin.get("/api/v1/templates").await.json().await.unwrap();
    let from_list = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "extreme")
        .unwrap()
        .clone();
    let alone: Value = admin
        .get("/api/v1/templates/extreme")
        .await
        .json()
        .await
        .unwrap();
    for seen in [&created, &from_list, &alone] {
        assert_eq!(seen["cloud_init"], cloud_init);
        let precise = seen["cloud_init"]["precise"].as_f64().unwrap();
        assert_eq!(precise.to_bits(), 0.30000000000000004_f64.to_bits());
        assert_eq!(seen["tags"], template["tags"]);
        assert_eq!(seen["default_port"], 65535);
    }
    // Everyone's list still reads.
    let listed: Value = user.get("/api/v1/templates").await.json().await.unwrap();
    assert!(names(&listed).contains(&"extreme"));

    // A partial change keeps the stored values as they were.
    let changed = admin
        .put(
            "/api/v1/templates/extreme",
            &json!({"description": "edited"}),
        )
        .await;
    assert_eq!(changed.status(), 200);
    let changed: Value = changed.json().await.unwrap();
    assert_eq!(changed["cloud_init"], cloud_init);
}
