//! Requests that meet a change of the same environment or the same plan: a metrics
//! sample in flight while the environment is deleted answers as if it had come just
//! after (409 or 404), never 503 (found by `scripts/check-api`); two starts at once
//! within a plan that has room for one start exactly one.

use serde_json::{Value, json};

use crate::helpers::{TestApp, assert_error};

/// The free plan has one place for an environment that is not stopped. Two stopped
/// ones started at the same moment: the plan's check and the start's write are one
/// step under the user's lock, so exactly one starts and the other is refused and
/// stays stopped.
#[actix_web::test]
async fn two_starts_at_once_on_a_free_plan_start_exactly_one() {
    let app = TestApp::spawn().await;
    let token = app.user_token("two-starts").await;
    let client = app.authed_client(&token);
    let mut ids = Vec::new();
    for name in ["one", "two"] {
        let id = app.ready_environment(&token, name, "ubuntu").await;
        let stopping = client
            .post(&format!("/api/v1/environments/{id}/stop"), &json!({}))
            .await;
        assert_eq!(stopping.status(), 202);
        app.wait_for_env(&token, &id, |e| e["phase"] == "stopped")
            .await;
        ids.push(id);
    }
    let paths: Vec<String> = ids
        .iter()
        .map(|id| format!("/api/v1/environments/{id}/start"))
        .collect();
    let empty = json!({});
    let (first, second) = futures_util::join!(
        client.post(&paths[0], &empty),
        client.post(&paths[1], &empty)
    );
    let (started, refused) = match (first.status().as_u16(), second.status().as_u16()) {
        (202, _) => ((&ids[0], first), (&ids[1], second)),
        (_, 202) => ((&ids[1], second), (&ids[0], first)),
        other => panic!("neither start was accepted: {other:?}"),
    };
    let body = assert_error(refused.1, 403, "quota_exceeded").await;
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("Stop or delete one first"),
        "{body}"
    );
    let accepted: Value = started.1.json().await.unwrap();
    assert_eq!(accepted["phase"], "starting", "{accepted}");
    app.wait_for_env(&token, started.0, |e| e["status"] == "running")
        .await;
    let still: Value = client
        .get(&format!("/api/v1/environments/{}", refused.0))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        (&still["status"], &still["phase"]),
        (&json!("stopped"), &json!("stopped")),
        "{still}"
    );
}

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
