//! What operators see: `/metrics` and `/api/v1/admin/actors` agree with each other
//! and with what is really running, and go back to zero when it is gone.

use crate::helpers::{TestApp, Ws, eventually, ws_until};
use serde_json::Value;

/// The value of one series in Prometheus text, 0 when absent.
pub fn series(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

pub async fn scrape(app: &TestApp) -> String {
    let response = app.get("/metrics").await;
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    response.text().await.unwrap()
}

async fn actor_tree(app: &TestApp, admin: &str) -> Value {
    let response = app.authed_client(admin).get("/api/v1/admin/actors").await;
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

/// Every node of `kind` in the tree, flattened.
fn nodes<'a>(nodes: &'a Value, kind: &str, out: &mut Vec<&'a Value>) {
    for node in nodes.as_array().unwrap() {
        if node["kind"] == kind {
            out.push(node);
        }
        nodes_of(node, kind, out);
    }
}

fn nodes_of<'a>(node: &'a Value, kind: &str, out: &mut Vec<&'a Value>) {
    nodes(&node["children"], kind, out);
}

fn count(tree: &Value, kind: &str) -> usize {
    let mut out = Vec::new();
    nodes(&tree["actors"], kind, &mut out);
    out.len()
}

async fn terminal(app: &TestApp, token: &str, id: &str, session: &str) -> Ws {
    let mut ws = app
        .ws(&format!(
            "/api/v1/ws/terminal/{id}?token={token}&session={session}"
        ))
        .await;
    let frames = ws_until(&mut ws, "status").await;
    assert_eq!(frames.last().unwrap()["state"], "connected", "{frames:?}");
    ws
}

#[actix_web::test]
async fn metrics_and_the_actor_tree_agree_with_reality_and_return_to_zero() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token("operator").await;
    // An admin owns the environments here (the free plan allows one).
    let user = admin.clone();
    let outsider = app.user_token("outsider").await;
    let a = app.ready_environment(&user, "observed-a", "ubuntu").await;
    let b = app.ready_environment(&user, "observed-b", "ubuntu").await;
    // Two clients share a session of `a`; one client on a session of `b`.
    let phone = terminal(&app, &user, &a, "main").await;
    let laptop = terminal(&app, &user, &a, "main").await;
    let tablet = terminal(&app, &user, &b, "other").await;

    let metrics = scrape(&app).await;
    let tree = actor_tree(&app, &admin).await;
    for (kind, expected) in [("user_supervisor", 1), ("environment", 2), ("terminal", 2)] {
        let label = format!("devpocket_actors{{kind=\"{kind}\"}}");
        assert_eq!(
            series(&metrics, &label),
            expected as f64,
            "{label}\n{metrics}"
        );
        assert_eq!(tree["totals"][kind]["alive"], expected, "{kind}: {tree}");
        assert_eq!(count(&tree, kind), expected, "{kind}: {tree}");
    }
    assert_eq!(
        series(
            &metrics,
            "devpocket_websocket_connections{endpoint=\"terminal\"}"
        ),
        3.0
    );
    // The tree: user → environments → terminals → their WebSocket clients.
    let users = tree["actors"].as_array().unwrap();
    assert_eq!(users.len(), 1, "{tree}");
    let shared = format!("terminal:{a}:main");
    let mut terminals = Vec::new();
    nodes(&tree["actors"], "terminal", &mut terminals);
    let shared = terminals.iter().find(|t| t["id"] == shared).unwrap();
    assert_eq!(shared["parent"], format!("environment:{a}"));
    assert_eq!(shared["clients"], 2);
    assert_eq!(shared["state"], "connected");
    let clients: Vec<_> = shared["children"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["kind"] == "websocket")
        .collect();
    assert_eq!(clients.len(), 2, "{shared}");
    assert!(
        shared["messages_handled"].as_u64().unwrap() >= 2,
        "{shared}"
    );
    assert!(shared["uptime_seconds"].as_f64().unwrap() >= 0.0);
    assert!(shared["last_activity_at"].is_string(), "{shared}");
    // Instrumented mailboxes: messages were handled, with time in queue measured.
    assert!(
        series(
            &metrics,
            "devpocket_actor_messages_total{kind=\"terminal\"}"
        ) >= 2.0
    );
    assert!(
        series(
            &metrics,
            "devpocket_actor_queue_seconds_count{kind=\"environment\"}"
        ) >= 1.0
    );
    // HTTP requests by route template, never by raw path.
    assert!(
        series(
            &metrics,
            "devpocket_http_requests_total{method=\"GET\",route=\"/api/v1/environments/{id}\",status=\"200\"}"
        ) >= 1.0,
        "{metrics}"
    );
    assert!(!metrics.contains(&format!("route=\"/api/v1/environments/{a}\"")));
    assert!(metrics.contains("devpocket_db_pool_connections{state=\"idle\"}"));
    assert!(metrics.contains("devpocket_provisioning_duration_seconds_bucket{"));
    assert!(
        series(
            &metrics,
            "devpocket_ssh_connects_total{purpose=\"terminal\",outcome=\"ok\"}"
        ) >= 2.0
    );

    // One node by id; unknown ids and non-admins are refused.
    let node: Value = app
        .authed_client(&admin)
        .get(&format!("/api/v1/admin/actors/environment:{a}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(node["kind"], "environment");
    assert_eq!(node["state"], "running/ready");
    assert_eq!(node["children"][0]["id"], format!("terminal:{a}:main"));
    let missing = app
        .authed_client(&admin)
        .get("/api/v1/admin/actors/environment:nope")
        .await;
    assert_eq!(missing.status(), 404);
    for path in [
        "/api/v1/admin/actors",
        &format!("/api/v1/admin/actors/user:{a}"),
    ] {
        assert_eq!(app.authed_client(&outsider).get(path).await.status(), 403);
        assert_eq!(app.get(path).await.status(), 401);
    }

    // All gone: the clients leave, the environments are deleted.
    drop((phone, laptop, tablet));
    for id in [&a, &b] {
        let r = app
            .authed_client(&user)
            .delete(&format!("/api/v1/environments/{id}"))
            .await;
        assert!(r.status().is_success(), "{}", r.status());
    }
    let back_to_zero = async || {
        let metrics = scrape(&app).await;
        let tree = actor_tree(&app, &admin).await;
        let zero = ["environment", "terminal"].iter().all(|kind| {
            series(&metrics, &format!("devpocket_actors{{kind=\"{kind}\"}}")) == 0.0
                && count(&tree, kind) == 0
        }) && series(
            &metrics,
            "devpocket_websocket_connections{endpoint=\"terminal\"}",
        ) == 0.0
            && count(&tree, "websocket") == 0
            && series(
                &metrics,
                "devpocket_actor_mailbox_depth{kind=\"environment\"}",
            ) == 0.0;
        if zero {
            Ok(())
        } else {
            Err(format!("\n{tree}\n{metrics}"))
        }
    };
    let within = std::time::Duration::from_secs(60);
    eventually(within, "every gauge back to zero", back_to_zero).await;
}

#[actix_web::test]
async fn metrics_can_need_a_token_and_live_on_their_own_listener() {
    let app = TestApp::spawn_with(&[("DEVPOCKET_METRICS_TOKEN", "scrape-me-please-0123")]).await;
    assert_eq!(app.get("/metrics").await.status(), 401);
    let ok = app
        .authed_client("scrape-me-please-0123")
        .get("/metrics")
        .await;
    assert_eq!(ok.status(), 200);
    assert!(
        ok.text()
            .await
            .unwrap()
            .contains("devpocket_actors{kind=\"environment\"} 0")
    );

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let address = format!("127.0.0.1:{port}");
    let app = TestApp::spawn_with(&[("DEVPOCKET_METRICS_LISTEN", address.as_str())]).await;
    assert_eq!(app.get("/metrics").await.status(), 404);
    let separate = reqwest::get(format!("http://{address}/metrics"))
        .await
        .unwrap();
    assert_eq!(separate.status(), 200);
    assert!(separate.text().await.unwrap().contains("devpocket_actors{"));
}
