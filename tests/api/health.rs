//! Health probes and server information.

use crate::helpers::{DbProxy, TestApp, assert_error, test_database};
use serde_json::Value;

#[actix_web::test]
async fn health_reports_status_version_database_and_uptime() {
    let app = TestApp::spawn().await;
    let response = app.get("/health").await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "ok");
    assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(body["database"]["status"], "up");
    assert!(body["uptime_seconds"].is_u64());

    let live = app.get("/health/live").await;
    assert_eq!(live.status(), 200);
}

#[actix_web::test]
async fn readiness_follows_the_database_without_a_restart() {
    let db = test_database().await;
    let proxy = DbProxy::start(&db).await;
    let app = TestApp::spawn_on(db, Some(&proxy.url), &[]).await;
    assert_eq!(app.get("/health/ready").await.status(), 200);

    proxy.cut();
    assert_error(app.get("/health/ready").await, 503, "service_unavailable").await;
    // Liveness does not depend on the database; details say it is down.
    assert_eq!(app.get("/health/live").await.status(), 200);
    let health: Value = app.get("/health").await.json().await.unwrap();
    assert_eq!(health["database"]["status"], "down");
    assert_eq!(health["status"], "degraded");

    proxy.restore();
    assert_eq!(app.get("/health/ready").await.status(), 200);
}

#[actix_web::test]
async fn info_lists_name_version_features_and_plan_limits() {
    let app = TestApp::spawn().await;
    let body: Value = app.get("/api/v1/info").await.json().await.unwrap();
    assert_eq!(body["name"], "DevPocket");
    assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(body["features"]["accounts"], true);
    assert_eq!(body["plans"]["free"]["active_environments"], 1);
    assert_eq!(body["plans"]["starter"]["active_environments"], 3);
    assert_eq!(body["plans"]["pro"]["active_environments"], 10);
    assert!(body["plans"]["admin"]["active_environments"].is_null());
}
