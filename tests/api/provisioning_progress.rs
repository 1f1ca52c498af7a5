//! Provisioning progress on the log socket: a subscriber that connects in the
//! middle of provisioning is told where it stands right after the history, and
//! every phase change reaches every subscriber as it happens.

use serde_json::{Value, json};

use crate::helpers::{TestApp, Ws, WsEvent, ws_next, ws_until};
use crate::templates::custom_template;

/// The phases of provisioning, in order.
const PHASES: [&str; 6] = [
    "queued",
    "provisioning",
    "booting",
    "installing",
    "configuring",
    "ready",
];

/// Waits at its second stage until the test says go (a file in its home).
const GATED: &str = "#!/bin/sh
echo '==> [1/3] Preparing'
echo '==> [2/3] Waiting for the go-ahead'
while [ ! -e \"$HOME/go-ahead\" ]; do sleep 0.1; done
echo '==> [3/3] Finishing'
";

/// Reads frames until one of type `kind` that satisfies `pred`; returns them all.
async fn frames_until(ws: &mut Ws, kind: &str, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
    let mut frames = Vec::new();
    loop {
        match ws_next(ws).await {
            WsEvent::Json(f) => {
                let done = f["type"] == kind && pred(&f);
                frames.push(f);
                if done {
                    return frames;
                }
            }
            WsEvent::Closed(c) => panic!("closed before {kind}: {c:?}; got {frames:?}"),
        }
    }
}

fn progress(frames: &[Value]) -> Vec<&Value> {
    let progress: Vec<&Value> = frames
        .iter()
        .filter(|f| f["type"] == "installation_progress")
        .collect();
    for f in &progress {
        for field in ["phase", "stage"] {
            assert!(f[field].is_string(), "{field}: {f}");
        }
        for field in ["progress", "step", "total", "percent"] {
            assert!(f[field].is_u64(), "{field}: {f}");
        }
    }
    progress
}

/// The phases the frames went through, each once, checked to be consecutive
/// phases of provisioning: none was left out.
fn phases_in_order(frames: &[&Value]) -> Vec<String> {
    let mut seen: Vec<String> = Vec::new();
    for f in frames {
        let phase = f["phase"].as_str().unwrap().to_owned();
        if seen.last() != Some(&phase) {
            seen.push(phase);
        }
    }
    let index = |p: &String| PHASES.iter().position(|q| q == p).unwrap();
    assert!(
        seen.windows(2).all(|w| index(&w[1]) == index(&w[0]) + 1),
        "phases skipped or out of order: {seen:?}"
    );
    seen
}

#[actix_web::test]
async fn a_late_log_subscriber_gets_the_current_stage_and_every_phase_as_it_happens() {
    let app = TestApp::spawn().await;
    let token = app.admin_token("progress_admin").await;
    let client = app.authed_client(&token);
    let mut gated = custom_template("gated");
    gated["packages"] = json!([]);
    gated["bootstrap"] = json!(GATED);
    let created = client.post("/api/v1/templates", &gated).await;
    assert_eq!(created.status(), 201, "{:?}", created.text().await);
    let env: Value = client
        .post(
            "/api/v1/environments",
            &json!({"name": "gated", "template_id": "gated"}),
        )
        .await
        .json()
        .await
        .unwrap();
    let id = env["id"].as_str().unwrap().to_owned();
    let logs = format!("/api/v1/ws/logs/{id}?token={token}");

    // Subscribed from the start: told where provisioning stands, then every phase
    // up to the bootstrap's second stage, where it waits.
    let mut early = app.ws(&logs).await;
    let first = frames_until(&mut early, "installation_progress", |f| f["step"] == 2).await;
    let seen = phases_in_order(&progress(&first));
    assert_eq!(seen.last().unwrap(), "installing", "{first:?}");

    // Subscribed now: the history, then — before anything else — where it stands.
    let env = app.wait_for_env(&token, &id, |_| true).await;
    let mut late = app.ws(&logs).await;
    let mut lines = Vec::new();
    let standing = loop {
        match ws_next(&mut late).await {
            WsEvent::Json(f) if f["type"] == "installation_log" => lines.push(f),
            WsEvent::Json(f) => break f,
            WsEvent::Closed(c) => panic!("closed: {c:?}"),
        }
    };
    assert!(
        lines
            .iter()
            .any(|l| l["data"] == "==> [2/3] Waiting for the go-ahead"),
        "{lines:?}"
    );
    assert_eq!(standing["type"], "installation_progress", "{standing}");
    assert_eq!(standing["phase"], "installing", "{standing}");
    assert_eq!(standing["stage"], "Waiting for the go-ahead", "{standing}");
    assert_eq!(
        (&standing["step"], &standing["total"], &standing["percent"]),
        (&json!(2), &json!(3), &json!(66)),
        "{standing}"
    );
    assert_eq!(standing["progress"], env["progress"], "{standing} vs {env}");
    assert!(standing["progress"].as_u64().unwrap() > 20, "{standing}");

    // Go on: both get the last stage and every phase to `ready`, then completion.
    let home = app.data_dir.join("environments").join(&id).join("home");
    assert!(home.is_dir(), "no home at {}", home.display());
    std::fs::write(home.join("go-ahead"), "").unwrap();
    for ws in [&mut early, &mut late] {
        let rest = ws_until(ws, "installation_complete").await;
        let rest = progress(&rest);
        assert!(
            rest.iter()
                .any(|f| f["step"] == 3 && f["phase"] == "installing"),
            "{rest:?}"
        );
        assert_eq!(
            phases_in_order(&rest),
            ["installing", "configuring", "ready"],
            "{rest:?}"
        );
        let last = rest.last().unwrap();
        assert_eq!(
            (&last["phase"], &last["progress"]),
            (&json!("ready"), &json!(100))
        );
        assert_eq!(last["stage"], "Finishing");
    }

    // After completion: the history, where it stands (ready), then completion.
    let mut after = app.ws(&logs).await;
    let frames = ws_until(&mut after, "installation_complete").await;
    let tail: Vec<&Value> = frames
        .iter()
        .filter(|f| f["type"] != "installation_log")
        .collect();
    assert_eq!(tail.len(), 2, "{tail:?}");
    assert_eq!(
        (&tail[0]["phase"], &tail[0]["progress"], &tail[0]["step"]),
        (&json!("ready"), &json!(100), &json!(3)),
        "{tail:?}"
    );
}
