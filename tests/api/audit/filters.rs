//! The filters and pages of `GET /api/v1/admin/audit`, on seeded events.

use diesel_async::RunQueryDsl;
use serde_json::{Value, json};

use super::audit_until;
use crate::helpers::{TestApp, assert_error};

/// Seeds 30 events a minute apart from 2026-01-01T00:00:00Z: actions alternate
/// start/stop, the first ten are on `env-a` and the rest on `env-b`, even ones
/// are `user`'s, and every third one failed.
async fn seed_events(app: &TestApp, user: &str) {
    let mut conn = app.db.connect().await;
    diesel::sql_query(format!(
        "INSERT INTO audit_events (id, user_id, action, resource_type, resource_id, details, ip, user_agent, outcome, created_at) \
         SELECT gen_random_uuid(), CASE WHEN i % 2 = 0 THEN '{user}'::uuid END, \
                CASE WHEN i % 2 = 0 THEN 'environment.start' ELSE 'environment.stop' END, \
                'environment', CASE WHEN i < 10 THEN 'env-a' ELSE 'env-b' END, \
                jsonb_build_object('i', i), '192.0.2.1', 'seed', \
                CASE WHEN i % 3 = 0 THEN 'failure' ELSE 'success' END, \
                '2026-01-01T00:00:00Z'::timestamptz + i * interval '1 minute' \
         FROM generate_series(0, 29) AS i"
    ))
    .execute(&mut conn)
    .await
    .unwrap();
}

async fn page(app: &TestApp, admin: &str, query: &str) -> Value {
    let response = app
        .authed_client(admin)
        .get(&format!("/api/v1/admin/audit?{query}"))
        .await;
    assert_eq!(response.status(), 200, "{query}");
    response.json().await.unwrap()
}

#[actix_web::test]
async fn the_audit_log_filters_and_pages() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token("root").await;
    let dave = app.signed_up("dave").await["user"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    seed_events(&app, &dave).await;
    let seeded = "until=2026-01-02T00:00:00Z";
    let total = |body: &Value| body["total"].as_i64().unwrap();

    // Inclusive time bounds, in any offset.
    let window = page(
        &app,
        &admin,
        "since=2026-01-01T00:10:00Z&until=2026-01-01T01:19:00%2B01:00",
    )
    .await;
    assert_eq!(total(&window), 10);
    assert_eq!(window["items"][0]["details"]["i"], 19);
    assert_eq!(window["items"][9]["details"]["i"], 10);

    let by_user = page(&app, &admin, &format!("user={dave}&{seeded}")).await;
    assert_eq!(total(&by_user), 15);
    assert!(
        by_user["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["user_id"] == dave.as_str() && e["username"] == "dave")
    );
    // The live events are there too: dave's registration and first code.
    let dave_all = audit_until(&app, &admin, &format!("user={dave}"), |e| e.len() == 17).await;
    assert_eq!(
        (&dave_all[0]["action"], &dave_all[1]["action"]),
        (&json!("auth.verification_sent"), &json!("auth.register"))
    );

    let stops = page(&app, &admin, &format!("action=environment.stop&{seeded}")).await;
    assert_eq!(total(&stops), 15);
    let on_a = page(&app, &admin, "resource_type=environment&resource_id=env-a").await;
    assert_eq!(total(&on_a), 10);
    let failures = page(&app, &admin, &format!("outcome=failure&{seeded}")).await;
    assert_eq!(total(&failures), 10);
    let combined = page(
        &app,
        &admin,
        &format!("user={dave}&action=environment.start&resource_id=env-b&outcome=failure"),
    )
    .await;
    // Even, from 10, multiples of 3: 12, 18, 24.
    assert_eq!(total(&combined), 3);

    // Pages: newest first, no overlap, no gap.
    let mut seen = Vec::new();
    for n in 1..=5 {
        let body = page(&app, &admin, &format!("{seeded}&per_page=7&page={n}")).await;
        assert_eq!(
            (
                total(&body),
                body["page"].as_i64(),
                body["per_page"].as_i64()
            ),
            (30, Some(n), Some(7))
        );
        assert_eq!(body["has_more"], n < 5, "page {n}");
        let items = body["items"].as_array().unwrap();
        assert_eq!(items.len(), if n < 5 { 7 } else { 2 });
        seen.extend(items.iter().map(|e| e["details"]["i"].as_i64().unwrap()));
    }
    assert_eq!(seen, (0..30).rev().collect::<Vec<i64>>());
    let beyond = page(&app, &admin, &format!("{seeded}&per_page=7&page=6")).await;
    assert_eq!(beyond["items"], json!([]));
    assert_eq!(beyond["has_more"], false);
    let default = page(&app, &admin, seeded).await;
    assert_eq!(default["per_page"], 50);
    assert_eq!(page(&app, &admin, "per_page=200").await["per_page"], 200);

    // Bad filters: 422 naming the parameter.
    for (query, field) in [
        ("per_page=201", "per_page"),
        ("per_page=0", "per_page"),
        ("page=0", "page"),
        ("page=two", "page"),
        ("user=not-a-uuid", "user"),
        ("action=auth.dance", "action"),
        ("resource_type=planet", "resource_type"),
        ("outcome=maybe", "outcome"),
        ("since=yesterday", "since"),
        ("until=2026-13-01T00:00:00Z", "until"),
        (
            "since=2026-01-02T00:00:00Z&until=2026-01-01T00:00:00Z",
            "until",
        ),
        ("usr=x", "usr"),
        ("action=auth.login&action=auth.logout", "action"),
    ] {
        let response = app
            .authed_client(&admin)
            .get(&format!("/api/v1/admin/audit?{query}"))
            .await;
        let body = assert_error(response, 422, "validation_error").await;
        assert!(
            body["context"]["fields"][field].is_array(),
            "{query}: {body}"
        );
        assert!(body["detail"].as_str().unwrap().contains(field), "{body}");
    }
}
