//! The server killed (SIGKILL) while DigitalOcean is creating an environment's
//! droplet — after the create took effect, before its answer arrived — and started
//! again: it finds the droplet by the environment's tag, makes no second one, and
//! the bootstrap runs once.

use std::time::Duration;

use super::settings;
use crate::fake_do::FakeDo;
use crate::helpers::{
    Api, PASSWORD, Server, TestDatabase, devpocket, serve, test_database, test_root,
};

fn start(
    fake: &FakeDo,
    db: &TestDatabase,
    data_dir: &std::path::Path,
    api_timeout: &str,
) -> Server {
    let mut cmd = devpocket();
    cmd.env("DATABASE_URL", &db.url)
        .env("DEVPOCKET_DATA_DIR", data_dir)
        .env("DEVPOCKET_LEASE_TTL", "2s");
    for (key, value) in settings(fake) {
        cmd.env(key, value);
    }
    cmd.env("DO_API_TIMEOUT", api_timeout);
    serve(cmd)
}

#[actix_web::test]
async fn killed_mid_create_and_restarted_makes_no_second_droplet() {
    let fake = FakeDo::start();
    // The create takes effect, but its answer is held back: the server dies waiting.
    fake.configure(|c| c.delays = vec![("droplets_create", Duration::from_secs(20))]);
    let db = test_database().await;
    let root = test_root().join(format!("do-restart-{}", uuid::Uuid::new_v4().simple()));
    let data_dir = root.join("data");
    let mut server = start(&fake, &db, &data_dir, "60s");
    let (token, id) = Api::new(&server.address)
        .new_user_with_environment(("phoenix", PASSWORD), "interrupted", "ubuntu")
        .await
        .unwrap();
    let tag = format!("devpocket-env-{id}");
    fake.wait_until("the droplet is created", |f| f.ever_created(&tag) == 1)
        .await;
    server.kill();
    fake.configure(|c| c.delays.clear());

    let mut server = start(&fake, &db, &data_dir, "2s");
    let api = Api::new(&server.address);
    api.running(&token, &id, Duration::from_secs(120))
        .await
        .unwrap();
    assert_eq!(fake.ever_created(&tag), 1, "no second droplet");
    assert_eq!(fake.droplets_tagged(&tag).len(), 1);
    assert_eq!(fake.volumes().len(), 1, "no second volume");
    let logs = api.logs(&token, &id).await.unwrap();
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

    let r = api
        .http
        .delete(api.url(&format!("/api/v1/environments/{id}")))
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
