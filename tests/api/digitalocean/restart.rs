//! The server killed (SIGKILL) while DigitalOcean is creating an environment's
//! droplet — after the create took effect, before its answer arrived — and started
//! again: it finds the droplet by the environment's tag, makes no second one, and
//! the bootstrap runs once.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::settings;
use crate::fake_do::FakeDo;
use crate::helpers::{PASSWORD, TestDatabase, devpocket, serve, test_root};

/// A server process, killed when dropped: a failing assertion leaves none behind.
struct Server(std::process::Child);

impl Server {
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

fn start(
    fake: &FakeDo,
    db: &TestDatabase,
    data_dir: &std::path::Path,
    api_timeout: &str,
) -> (Server, String) {
    let mut cmd = devpocket();
    cmd.env("DATABASE_URL", &db.url)
        .env("DEVPOCKET_DATA_DIR", data_dir)
        .env("DEVPOCKET_LEASE_TTL", "2s");
    for (key, value) in settings(fake) {
        cmd.env(key, value);
    }
    cmd.env("DO_API_TIMEOUT", api_timeout);
    let (child, address) = serve(cmd);
    (Server(child), address)
}

#[actix_web::test]
async fn killed_mid_create_and_restarted_makes_no_second_droplet() {
    let fake = FakeDo::start();
    // The create takes effect, but its answer is held back: the server dies waiting.
    fake.configure(|c| c.delays = vec![("droplets_create", Duration::from_secs(20))]);
    let db = TestDatabase::create().await;
    let root = test_root().join(format!("do-restart-{}", uuid::Uuid::new_v4().simple()));
    let data_dir = root.join("data");
    let (mut server, address) = start(&fake, &db, &data_dir, "60s");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let session: Value = client
        .post(format!("{address}/api/v1/auth/register"))
        .json(&json!({"username": "phoenix", "email": "phoenix@example.com", "password": PASSWORD}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = session["access_token"].as_str().unwrap().to_owned();
    let env: Value = client
        .post(format!("{address}/api/v1/environments"))
        .bearer_auth(&token)
        .json(&json!({"name": "interrupted", "template_id": "ubuntu"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = env["id"].as_str().unwrap().to_owned();
    let tag = format!("devpocket-env-{id}");
    fake.wait_until("the droplet is created", |f| f.ever_created(&tag) == 1)
        .await;
    server.kill();
    fake.configure(|c| c.delays.clear());

    let (mut server, address) = start(&fake, &db, &data_dir, "2s");
    let deadline = Instant::now() + Duration::from_secs(120);
    let env = loop {
        let env: Value = client
            .get(format!("{address}/api/v1/environments/{id}"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if env["status"] != "creating" {
            break env;
        }
        assert!(Instant::now() < deadline, "still creating: {env}");
        actix_web::rt::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(env["status"], "running", "{env}");
    assert_eq!(fake.ever_created(&tag), 1, "no second droplet");
    assert_eq!(fake.droplets_tagged(&tag).len(), 1);
    assert_eq!(fake.volumes().len(), 1, "no second volume");
    let logs: Value = client
        .get(format!(
            "{address}/api/v1/environments/{id}/logs?lines=1000"
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let runs = logs["logs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| {
            l.as_str()
                .unwrap()
                .contains("running the template bootstrap")
        })
        .count();
    assert_eq!(runs, 1, "the bootstrap ran once: {logs}");

    let r = client
        .delete(format!("{address}/api/v1/environments/{id}"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    fake.wait_until("droplet and volume deleted", |f| {
        f.droplets().is_empty() && f.volumes().is_empty()
    })
    .await;
    server.kill();
    let _ = std::fs::remove_dir_all(&root);
    fake.assert_valid();
}
