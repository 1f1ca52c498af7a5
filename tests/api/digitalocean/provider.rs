//! The DigitalOcean provider on its own, against the fake: create (volume, droplet,
//! cloud-init user-data), the provisioning log and `cloud-init status`, stop with
//! and without a cooperative machine, start, delete, and no second droplet when a
//! create is retried.

use std::collections::BTreeMap;
use std::time::Duration;

use devpocket_actors::logs::EXIT_MARKER;
use devpocket_actors::provider::digitalocean::{
    DigitalOceanConfig, DigitalOceanProvider, environment_tag,
};
use devpocket_actors::provider::{Cancel, MachineSpec, Provider};
use devpocket_actors::ssh::{SshSession, generate_machine_keys};
use uuid::Uuid;

use crate::fake_do::{DropletStatus, FakeDo};

pub fn config(fake: &FakeDo) -> DigitalOceanConfig {
    DigitalOceanConfig {
        api_url: fake.url.clone(),
        request_timeout: Duration::from_secs(2),
        poll_interval: Duration::from_millis(100),
        shutdown_timeout: Duration::from_secs(2),
        create_timeout: Duration::from_secs(60),
        ..DigitalOceanConfig::new(fake.token.clone())
    }
}

fn spec(bootstrap: &str) -> MachineSpec {
    let mut vars = BTreeMap::new();
    vars.insert("GREETING".to_owned(), "hello from the variables".to_owned());
    MachineSpec {
        environment_id: Uuid::new_v4(),
        user_id: Uuid::new_v4(),
        slug: "provider-test-abc123".into(),
        region: "nyc3".into(),
        size: "small".into(),
        bootstrap: bootstrap.into(),
        packages: vec!["git".into()],
        cloud_init: serde_json::Map::new(),
        environment_variables: vars,
        keys: generate_machine_keys("provider-test").unwrap(),
    }
}

const BOOTSTRAP: &str = "#!/bin/sh\nset -eu\necho '==> [1/2] Greeting'\necho \"$GREETING as $(id -un)\"\necho '==> [2/2] Done'\n";

#[actix_web::test]
async fn creates_follows_stops_starts_and_deletes_a_droplet() {
    let fake = FakeDo::start();
    // The machine ignores `shutdown`; the provider gives up on it before DigitalOcean
    // does, so its `power_off` meets the pending shutdown first.
    fake.configure(|c| {
        c.shutdown_ignored = true;
        c.shutdown_ignored_for = Duration::from_millis(1500);
    });
    let provider = DigitalOceanProvider::new(DigitalOceanConfig {
        shutdown_timeout: Duration::from_millis(500),
        ..config(&fake)
    })
    .unwrap();
    let spec = spec(BOOTSTRAP);
    let tag = environment_tag(spec.environment_id);

    let machine = provider.create(&spec, &Cancel::never()).await.unwrap();
    let droplets = fake.droplets_tagged(&tag);
    assert_eq!(droplets.len(), 1);
    let droplet = &droplets[0];
    assert_eq!(machine.access.host, droplet.ip.to_string());
    assert_eq!(
        (machine.access.port, machine.access.user.as_str()),
        (22, "dev")
    );
    assert_eq!(droplet.size, "s-1vcpu-1gb");
    assert!(droplet.tags.contains(&"devpocket".to_owned()));
    assert!(
        droplet
            .tags
            .contains(&format!("devpocket-user-{}", spec.user_id))
    );
    let volumes = fake.volumes();
    assert_eq!(volumes.len(), 1);
    assert_eq!(droplet.volume_ids, vec![volumes[0].id.clone()]);
    assert_eq!(
        machine.provider_ref,
        format!("{}:{}", droplet.id, volumes[0].id)
    );
    let user_data = droplet.user_data.clone().unwrap();
    assert!(user_data.contains(spec.keys.host_public.trim()));
    assert!(!user_data.contains(spec.keys.user_private.trim()));

    // The provisioning log, followed as the environment actor does.
    let ssh = SshSession::connect(&machine.access, &spec.keys.user_private)
        .await
        .unwrap();
    let out = ssh
        .run(
            &provider.bootstrap_watch().tail_command,
            Duration::from_secs(30),
            1 << 20,
        )
        .await
        .unwrap();
    let log = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(log.contains("hello from the variables as dev"), "{log}");
    assert!(log.contains("==> [2/2] Done"), "{log}");
    assert!(
        log.trim_end().ends_with(&format!("{EXIT_MARKER}0")),
        "{log}"
    );
    // The home is the volume.
    let out = ssh
        .run("ls -a ~/.devpocket", Duration::from_secs(5), 1 << 20)
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("bootstrap.sh"));
    assert!(volumes[0].dir.join(".devpocket/bootstrap.sh").exists());
    ssh.close().await;

    // A machine that ignores `shutdown` is powered off after the timeout, once the
    // pending shutdown lets it ("Droplet already has a pending event" meanwhile);
    // then the droplet is destroyed, and the stop ends once the volume is free.
    provider.stop(&machine.provider_ref).await.unwrap();
    assert!(fake.droplets_tagged(&tag).is_empty());
    let kept = fake.volumes();
    assert_eq!(kept.len(), 1);
    assert!(kept[0].droplet_ids.is_empty(), "{kept:?}");
    let actions: Vec<u16> = fake
        .exchanges()
        .iter()
        .filter(|e| e.operation == "dropletActions_post")
        .map(|e| e.status)
        .collect();
    assert_eq!(actions.first(), Some(&201), "{actions:?}");
    assert!(actions.contains(&422), "{actions:?}");
    assert_eq!(actions.last(), Some(&201), "{actions:?}");
    provider.stop(&machine.provider_ref).await.unwrap();

    // Starting makes a new droplet with the same host key and home volume.
    let again = provider.start(&spec, &machine.provider_ref).await.unwrap();
    assert_eq!(again.access.host_public_key, machine.access.host_public_key);
    let droplets = fake.droplets_tagged(&tag);
    assert_eq!(droplets.len(), 1);
    assert_eq!(droplets[0].status, DropletStatus::Active);
    assert_eq!(droplets[0].volume_ids, droplet.volume_ids);
    assert_eq!(
        again.provider_ref,
        format!("{}:{}", droplets[0].id, volumes[0].id)
    );
    let ssh = SshSession::connect(&again.access, &spec.keys.user_private)
        .await
        .unwrap();
    let out = ssh
        .run("ls -a ~/.devpocket", Duration::from_secs(5), 1 << 20)
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("bootstrap.sh"));
    ssh.close().await;

    // Creating (or starting) again finds the droplet it made.
    let same = provider.create(&spec, &Cancel::never()).await.unwrap();
    assert_eq!(same.provider_ref, again.provider_ref);
    let same = provider.start(&spec, &machine.provider_ref).await.unwrap();
    assert_eq!(same.provider_ref, again.provider_ref);
    assert_eq!(fake.count("droplets_create"), 2);

    provider
        .delete(spec.environment_id, Some(&again.provider_ref))
        .await
        .unwrap();
    assert!(fake.droplets().is_empty());
    assert!(fake.volumes().is_empty(), "the home volume is deleted too");
    provider
        .delete(spec.environment_id, Some(&machine.provider_ref))
        .await
        .unwrap();
    fake.assert_valid();
}

#[actix_web::test]
async fn a_failing_bootstrap_is_reported_by_cloud_init_status() {
    let fake = FakeDo::start();
    let provider = DigitalOceanProvider::new(config(&fake)).unwrap();
    let spec = spec("#!/bin/sh\necho 'about to fail'\nexit 3\n");
    let machine = provider.create(&spec, &Cancel::never()).await.unwrap();
    let ssh = SshSession::connect(&machine.access, &spec.keys.user_private)
        .await
        .unwrap();
    let out = ssh
        .run(
            &provider.bootstrap_watch().tail_command,
            Duration::from_secs(30),
            1 << 20,
        )
        .await
        .unwrap();
    let log = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(log.contains("about to fail"), "{log}");
    assert!(
        log.trim_end().ends_with(&format!("{EXIT_MARKER}1")),
        "{log}"
    );
    ssh.close().await;
    provider
        .delete(spec.environment_id, Some(&machine.provider_ref))
        .await
        .unwrap();
}

#[actix_web::test]
async fn many_creates_at_once_queue_behind_the_limiter_instead_of_provoking_429s() {
    // DigitalOcean's 250 a minute, scaled down to 40 in 4 s.
    let fake = FakeDo::start_with(crate::fake_do::FakeConfig {
        rate_limits: vec![
            (5000, Duration::from_secs(3600)),
            (40, Duration::from_secs(4)),
        ],
        ..Default::default()
    });
    let provider = DigitalOceanProvider::new(DigitalOceanConfig {
        requests_per_minute: 36,
        rate_window: Duration::from_secs(4),
        ..config(&fake)
    })
    .unwrap();
    let specs: Vec<MachineSpec> = (0..8).map(|_| spec(BOOTSTRAP)).collect();
    let never = Cancel::never();
    let machines =
        futures_util::future::join_all(specs.iter().map(|s| provider.create(s, &never))).await;
    let machines: Vec<_> = machines.into_iter().map(Result::unwrap).collect();
    let exchanges = fake.exchanges();
    assert!(
        exchanges.len() > 40,
        "the limiter had to hold requests back: {}",
        exchanges.len()
    );
    let throttled = exchanges.iter().filter(|e| e.status == 429).count();
    assert_eq!(throttled, 0, "no 429 storm");
    for spec in &specs {
        assert_eq!(
            fake.droplets_tagged(&environment_tag(spec.environment_id))
                .len(),
            1
        );
    }
    futures_util::future::join_all(
        specs
            .iter()
            .zip(&machines)
            .map(|(s, m)| provider.delete(s.environment_id, Some(&m.provider_ref))),
    )
    .await;
    assert!(fake.droplets().is_empty() && fake.volumes().is_empty());
    fake.assert_valid();
}
