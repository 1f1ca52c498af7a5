//! The fake DigitalOcean API itself, driven directly: it follows the description
//! (shapes, pagination, errors, rate limits), runs action lifecycles, and its
//! droplets are machines reachable over SSH that boot from their user-data.

use std::time::Duration;

use devpocket_actors::model::MachineAccess;
use devpocket_actors::ssh::{SshSession, generate_machine_keys};
use serde_json::{Value, json};

use crate::fake_do::{DropletStatus, FakeConfig, FakeDo};
use crate::helpers::eventually;

struct Api<'a> {
    fake: &'a FakeDo,
    client: reqwest::Client,
}

impl<'a> Api<'a> {
    fn new(fake: &'a FakeDo) -> Self {
        Self {
            fake,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()
                .unwrap(),
        }
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        let url = if path.starts_with("http") {
            path.to_owned()
        } else {
            format!("{}{path}", self.fake.url)
        };
        let mut req = self
            .client
            .request(method, url)
            .bearer_auth(&self.fake.token);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let text = res.text().await.unwrap();
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap()
        };
        (status, headers, body)
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let (s, _, b) = self.call(reqwest::Method::GET, path, None).await;
        (s, b)
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let (s, _, b) = self.call(reqwest::Method::POST, path, Some(body)).await;
        (s, b)
    }

    async fn delete(&self, path: &str) -> u16 {
        self.call(reqwest::Method::DELETE, path, None).await.0
    }

    async fn wait_action(&self, id: u64) -> Value {
        let what = format!("action {id} to finish");
        eventually(Duration::from_secs(10), &what, async || {
            let (status, body) = self.get(&format!("/v2/actions/{id}")).await;
            assert_eq!(status, 200, "{body}");
            let action = body["action"].clone();
            if action["status"] != "in-progress" {
                Ok(action)
            } else {
                Err(action)
            }
        })
        .await
    }
}

/// As on a real droplet, the shell part runs as root, and the fresh volume mounted
/// as the user's home is root's until someone hands it over.
const SCRIPT: &str = "#!/bin/sh\necho \"booting as $(id -un) in $HOME; /home/dev is $(stat -c %U /home/dev)'s\"\n\
                      echo hello > /home/dev/from-user-data\nchown -R dev:dev /home/dev\necho done\n";

fn user_data(keys: &devpocket_actors::model::MachineKeys, volume: &str) -> String {
    let indented: String = keys
        .host_private
        .lines()
        .map(|l| format!("    {l}\n"))
        .collect();
    format!(
        "Content-Type: multipart/mixed; boundary=\"BOUNDARY\"\nMIME-Version: 1.0\n\n\
         --BOUNDARY\nContent-Type: text/cloud-config; charset=\"utf-8\"\n\n\
         #cloud-config\nusers:\n  - name: dev\n    shell: /bin/bash\n    ssh_authorized_keys:\n      - {user}\n\
         ssh_keys:\n  ed25519_private: |\n{indented}  ed25519_public: {host}\n\
         mounts:\n  - [/dev/disk/by-id/scsi-0DO_Volume_{volume}, /home/dev, ext4, \"defaults,nofail\", \"0\", \"2\"]\n\
         --BOUNDARY\nContent-Type: text/x-shellscript; charset=\"utf-8\"\n\n{SCRIPT}\n--BOUNDARY--\n",
        user = keys.user_public,
        host = keys.host_public,
    )
}

#[actix_web::test]
async fn the_fake_follows_the_api_description_and_its_droplets_boot_for_real() {
    let fake = FakeDo::start();
    let api = Api::new(&fake);

    // Authentication, rate-limit headers, the account.
    let res = reqwest::get(format!("{}/v2/account", fake.url))
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let body: Value = res.json().await.unwrap();
    assert!(
        body["id"].is_string() && body["message"].is_string(),
        "{body}"
    );
    let (status, headers, body) = api.call(reqwest::Method::GET, "/v2/account", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["ratelimit-limit"], "5000");
    assert!(
        headers["ratelimit-remaining"]
            .to_str()
            .unwrap()
            .parse::<u32>()
            .unwrap()
            < 5000
    );
    assert!(
        headers["ratelimit-reset"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            > 1_700_000_000
    );

    // Pagination: follow `links.pages.next` to the end.
    let mut next = Some(format!("{}/v2/sizes?per_page=2", fake.url));
    let (mut seen, mut total) = (0, 0);
    while let Some(url) = next {
        let (status, body) = api.get(&url).await;
        assert_eq!(status, 200, "{body}");
        seen += body["sizes"].as_array().unwrap().len();
        total = body["meta"]["total"].as_u64().unwrap();
        next = body["links"]["pages"]["next"].as_str().map(str::to_owned);
    }
    assert_eq!(seen as u64, total);
    assert!(total > 2);

    // A request that does not match the description is refused and recorded.
    let (status, body) = api
        .post("/v2/droplets", json!({"name": "no size", "image": 1}))
        .await;
    assert_eq!(status, 400, "{body}");
    let (status, _) = api.get("/v2/droplets?per_page=500").await;
    assert_eq!(status, 400);
    let violations = fake.take_violations();
    assert_eq!(violations.len(), 2, "{violations:?}");
    assert!(
        violations[0].contains("size") && violations[1].contains("per_page"),
        "{violations:?}"
    );

    // A volume, then a droplet booting from user-data with the volume as home.
    let (status, body) = api
        .post(
            "/v2/volumes",
            json!({"name": "fake-test-home", "region": "nyc3", "size_gigabytes": 10,
                   "filesystem_type": "ext4", "tags": ["devpocket"]}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let volume_id = body["volume"]["id"].as_str().unwrap().to_owned();
    let keys = generate_machine_keys("fake-test").unwrap();
    let (status, body) = api
        .post(
            "/v2/droplets",
            json!({"name": "fake-test", "region": "nyc3", "size": "s-1vcpu-1gb",
                   "image": "ubuntu-24-04-x64", "ssh_keys": [], "tags": ["devpocket", "devpocket-env-x"],
                   "volumes": [volume_id], "user_data": user_data(&keys, "fake-test-home"),
                   "ipv6": true, "monitoring": true}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["droplet"]["status"], "new");
    assert_eq!(body["droplet"]["networks"]["v4"], json!([]));
    let droplet_id = body["droplet"]["id"].as_u64().unwrap();
    let action_id = body["links"]["actions"][0]["id"].as_u64().unwrap();
    // A second action while the create is pending.
    let (status, body) = api
        .post(
            &format!("/v2/droplets/{droplet_id}/actions"),
            json!({"type": "reboot"}),
        )
        .await;
    assert_eq!(
        (status, body["message"].as_str()),
        (422, Some("Droplet already has a pending event."))
    );
    assert_eq!(api.wait_action(action_id).await["status"], "completed");

    let (_, body) = api.get(&format!("/v2/droplets/{droplet_id}")).await;
    assert_eq!(body["droplet"]["status"], "active");
    let ip = body["droplet"]["networks"]["v4"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["type"] == "public")
        .unwrap()["ip_address"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_, listed) = api
        .get("/v2/droplets?tag_name=devpocket-env-x&per_page=200")
        .await;
    assert_eq!(listed["droplets"].as_array().unwrap().len(), 1);
    assert_eq!(listed["meta"]["total"], 1);

    // Over SSH, with the pinned host key, as the user-data's user.
    let access = MachineAccess {
        host: ip,
        port: 22,
        user: "dev".into(),
        host_public_key: keys.host_public.clone(),
    };
    let ssh = SshSession::connect(&access, &keys.user_private)
        .await
        .unwrap();
    let out = ssh
        .run(
            "cloud-init status --wait; echo \"exit=$?\"",
            Duration::from_secs(20),
            1 << 20,
        )
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        text.contains("status: done") && text.contains("exit=0"),
        "{text}"
    );
    let out = ssh
        .run(
            "cat /var/log/cloud-init-output.log; id -un; echo $HOME; cat ~/from-user-data",
            Duration::from_secs(10),
            1 << 20,
        )
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        text.contains("booting as root in /root; /home/dev is root's"),
        "{text}"
    );
    assert!(
        text.contains("Cloud-init v.") && text.contains("finished at"),
        "{text}"
    );
    assert!(text.contains("dev\n/home/dev\nhello"), "{text}");
    ssh.close().await;
    // The home is the volume.
    let volume = fake
        .volumes()
        .into_iter()
        .find(|v| v.id == volume_id)
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(volume.dir.join("from-user-data")).unwrap(),
        "hello\n"
    );
    assert_eq!(volume.droplet_ids, vec![droplet_id]);

    // Power cycle: off means unreachable, on means the same machine again.
    let (status, body) = api
        .post(
            &format!("/v2/droplets/{droplet_id}/actions"),
            json!({"type": "shutdown"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    api.wait_action(body["action"]["id"].as_u64().unwrap())
        .await;
    assert_eq!(fake.droplets()[0].status, DropletStatus::Off);
    assert!(
        SshSession::connect(&access, &keys.user_private)
            .await
            .is_err()
    );
    let (status, body) = api
        .post(
            &format!("/v2/droplets/{droplet_id}/actions"),
            json!({"type": "power_on"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    api.wait_action(body["action"]["id"].as_u64().unwrap())
        .await;
    let ssh = SshSession::connect(&access, &keys.user_private)
        .await
        .unwrap();
    let out = ssh
        .run("cat ~/from-user-data", Duration::from_secs(10), 1 << 20)
        .await
        .unwrap();
    assert_eq!(out.stdout, b"hello\n");
    ssh.close().await;

    // Deleting: the volume stays attached a moment, then can go.
    assert_eq!(api.delete(&format!("/v2/droplets/{droplet_id}")).await, 204);
    assert_eq!(api.get(&format!("/v2/droplets/{droplet_id}")).await.0, 404);
    let (status, _, body) = api
        .call(
            reqwest::Method::DELETE,
            &format!("/v2/volumes/{volume_id}"),
            None,
        )
        .await;
    assert_eq!(status, 409, "{body}");
    fake.wait_until("the volume is detached", |f| {
        f.volumes()[0].droplet_ids.is_empty()
    })
    .await;
    assert_eq!(api.delete(&format!("/v2/volumes/{volume_id}")).await, 204);
    assert!(fake.volumes().is_empty());
    fake.assert_valid();
}

#[actix_web::test]
async fn the_fake_rate_limits_with_retry_after() {
    let fake = FakeDo::start_with(FakeConfig {
        rate_limits: vec![
            (100, Duration::from_secs(3600)),
            (3, Duration::from_secs(2)),
        ],
        ..FakeConfig::default()
    });
    let api = Api::new(&fake);
    for _ in 0..3 {
        assert_eq!(api.get("/v2/account").await.0, 200);
    }
    let (status, headers, body) = api.call(reqwest::Method::GET, "/v2/account", None).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["id"], "too_many_requests");
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry), "{retry}");
    tokio::time::sleep(Duration::from_secs(retry)).await;
    assert_eq!(api.get("/v2/account").await.0, 200);
}
