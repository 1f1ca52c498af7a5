//! Requests that meet a change of the same environment (found by `scripts/check-api`):
//! a metrics sample in flight while the environment is deleted answers as if it had
//! come just after (409 or 404), never 503.

use serde_json::Value;

use crate::helpers::TestApp;

#[actix_web::test]
async fn metrics_during_a_delete_are_a_409_or_404_never_a_5xx() {
    let app = TestApp::spawn().await;
    let token = app.admin_token("racer").await;
    let client = app.authed_client(&token);
    let id = app.ready_environment(&token, "racing", "ubuntu").await;
    let path = format!("/api/v1/environments/{id}/metrics");
    // Samples back to back, from before the delete until the environment is gone:
    // the first one (nothing measured yet) is in flight on the machine meanwhile.
    let sampler = async {
        let mut statuses = Vec::new();
        loop {
            let response = client.get(&path).await;
            let status = response.status().as_u16();
            if status >= 500 {
                eprintln!("{status}: {}", response.text().await.unwrap_or_default());
            }
            statuses.push(status);
            if status == 404 {
                return statuses;
            }
        }
    };
    let deleter = async {
        let deleted = client.delete(&format!("/api/v1/environments/{id}")).await;
        assert_eq!(deleted.status(), 202);
        deleted.json::<Value>().await.unwrap()
    };
    let (statuses, _) = futures_util::join!(sampler, deleter);
    assert!(
        statuses.iter().all(|s| matches!(s, 200 | 409 | 404)),
        "{statuses:?}"
    );
}
