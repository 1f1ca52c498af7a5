//! Extreme values in an environment's JSON members (`resource_limits`, `resources`,
//! `environment_variables`), on create and on PUT: refused with a 422 naming the
//! member and nothing stored, or stored and read back exactly as sent.

use serde_json::{Value, json};

use super::{nested, texts};
use crate::helpers::{AuthedClient, TestApp, assert_error};

/// POSTs a new environment with `extra` members and expects a 422 naming `field`.
async fn refused(client: &AuthedClient<'_>, extra: Value, field: &str) {
    let mut body = json!({"name": "extreme", "template_id": "ubuntu"});
    for (key, value) in extra.as_object().unwrap() {
        body[key] = value.clone();
    }
    let response = client.post("/api/v1/environments", &body).await;
    let error = assert_error(response, 422, "validation_error").await;
    assert!(
        error["context"]["fields"].get(field).is_some(),
        "{field} is not named for {extra}: {error}"
    );
}

#[actix_web::test]
async fn extreme_limits_and_variables_are_refused_before_anything_is_stored() {
    let app = TestApp::spawn().await;
    let token = app.admin_token("extreme").await;
    let client = app.authed_client(&token);

    // The attack of the issue, then its relatives.
    for (limits, field) in [
        (json!({"cpu": f64::MAX}), "resource_limits.cpu"),
        (json!({"cpu": 1e308}), "resource_limits.cpu"),
        (json!({"cpu": -1e308}), "resource_limits.cpu"),
        (json!({"cpu": 5e-324}), "resource_limits.cpu"),
        (json!({"memory": -0.0}), "resource_limits.memory"),
        (json!({"memory": 0}), "resource_limits.memory"),
        (json!({"storage": u64::MAX}), "resource_limits.storage"),
        (json!({"storage": i64::MIN}), "resource_limits.storage"),
        (
            json!({"max_instances": 1e20}),
            "resource_limits.max_instances",
        ),
        (
            json!({"max_instances": 2.5}),
            "resource_limits.max_instances",
        ),
        (json!({"cpu": nested(100, json!(1))}), "resource_limits.cpu"),
        (json!({"memory": [1]}), "resource_limits.memory"),
        (json!({"memory": true}), "resource_limits.memory"),
        (
            json!({"storage": format!("{}Gi", "9".repeat(10_000))}),
            "resource_limits.storage",
        ),
        (json!({"storage": "1e400"}), "resource_limits.storage"),
        (json!({"cpu": "two"}), "resource_limits.cpu"),
        (json!({"gpu": 1}), "resource_limits.gpu"),
        (json!({"a": nested(100, json!(1))}), "resource_limits.a"),
        (json!("4Gi"), "resource_limits"),
        (json!([1, 2]), "resource_limits"),
    ] {
        refused(&client, json!({ "resource_limits": limits }), field).await;
    }
    // Older apps' name for it, the same rules.
    refused(
        &client,
        json!({"resources": {"cpu": f64::MAX}}),
        "resources.cpu",
    )
    .await;

    // A number written out in full, past what a u64 holds: read as a double (1.2e29).
    let body = r#"{"name": "extreme", "template_id": "ubuntu",
                   "resource_limits": {"memory": 123456789012345678901234567890}}"#;
    let response = app
        .client
        .post(app.url("/api/v1/environments"))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let error = assert_error(response, 422, "validation_error").await;
    assert!(error["context"]["fields"]["resource_limits.memory"].is_array());

    for (variables, field) in [
        (json!({"A": {"nested": 1}}), "environment_variables"),
        (json!({"A": [f64::MAX]}), "environment_variables"),
        (json!({"A": "x".repeat(5000)}), "environment_variables"),
        (json!({"A".repeat(200): "x"}), "environment_variables"),
        (json!([1]), "environment_variables"),
    ] {
        refused(
            &client,
            json!({ "environment_variables": variables }),
            field,
        )
        .await;
    }

    let stored = texts(&app, "SELECT id::text AS text FROM environments").await;
    assert!(stored.is_empty(), "nothing was stored: {stored:?}");
    let listed: Value = client
        .get("/api/v1/environments")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed, json!([]));
}

#[actix_web::test]
async fn accepted_extremes_read_back_exactly_as_sent() {
    let app = TestApp::spawn().await;
    let token = app.admin_token("extreme").await;
    let client = app.authed_client(&token);

    // The edges of each range, in each form the app may use.
    let limits = json!({
        "cpu": 0.30000000000000004,
        "memory": 9_007_199_254_740_992_u64,
        "storage": "0.001Ti",
        "max_instances": 100,
    });
    // Variables take numbers (stored as their text): every double is one.
    let variables = json!({"MAX": f64::MAX, "TINY": 5e-324, "NEG": -0.0, "BIG": u64::MAX,
                           "LONG": "x".repeat(4096)});
    let created = client
        .post(
            "/api/v1/environments",
            &json!({"name": "edges", "template_id": "ubuntu",
                    "resource_limits": limits, "environment_variables": variables}),
        )
        .await;
    assert_eq!(created.status(), 201);
    let created: Value = created.json().await.unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    let texts_of = |v: &Value| -> Value {
        v.as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), json!(v.to_string().trim_matches('"'))))
            .collect()
    };
    let expected_variables = texts_of(&variables);

    let mut seen = vec![created];
    seen.push(
        client
            .get(&format!("/api/v1/environments/{id}"))
            .await
            .json()
            .await
            .unwrap(),
    );
    let listed: Value = client
        .get("/api/v1/environments")
        .await
        .json()
        .await
        .unwrap();
    seen.push(listed[0].clone());
    for env in &seen {
        assert_eq!(env["resource_limits"], limits, "{env}");
        let cpu = env["resource_limits"]["cpu"].as_f64().unwrap();
        assert_eq!(cpu.to_bits(), 0.30000000000000004_f64.to_bits());
        assert_eq!(env["resources"]["memory"], "9007199254740992");
        assert_eq!(env["environment_variables"], expected_variables, "{env}");
    }

    // A PUT of variables: checked the same way, and read back as sent.
    let changed = json!({"ZERO": 0, "HALF": 0.5, "E": 1e308});
    let response = client
        .put(
            &format!("/api/v1/environments/{id}"),
            &json!({"environment_variables": changed}),
        )
        .await;
    assert_eq!(response.status(), 200);
    let again: Value = client
        .get(&format!("/api/v1/environments/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(again["environment_variables"], texts_of(&changed));
    let response = client
        .put(
            &format!("/api/v1/environments/{id}"),
            &json!({"environment_variables": {"A": nested(100, json!(1))}}),
        )
        .await;
    assert_error(response, 422, "validation_error").await;
    let after: Value = client
        .get(&format!("/api/v1/environments/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        after["environment_variables"],
        again["environment_variables"]
    );
}
