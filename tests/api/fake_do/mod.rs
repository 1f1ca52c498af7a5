//! A stateful fake of DigitalOcean's API v2, started by the tests: the paths,
//! status codes, JSON shapes, error bodies, pagination and rate-limit headers of
//! the real API, checked against its published OpenAPI description (a request that
//! does not match it is answered 400 and fails the test). Actions run their
//! lifecycles on scaled-down timings; faults can be injected by rate or aimed at a
//! request, and a request or an action can be held at a given step (see `hold`).
//! Droplets are real machines reachable over SSH (see `machine`).
//!
//! The server runs on a thread and runtime of its own, so the application under
//! test and the fake never wait on each other.

// Test support: not every accessor is used by every test.
#![allow(dead_code)]

mod api;
mod effects;
mod hold;
mod machine;
mod model;
mod openapi;
mod resources;
mod server;
mod userdata;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::helpers::eventually;

pub use hold::{Hold, Point};
pub use model::DropletStatus;
pub use server::Fault;

/// Faults injected into requests, each a probability per request.
#[derive(Debug, Clone, Copy)]
pub struct Faults {
    /// 429 with `retry-after`.
    pub throttle: f64,
    /// 500/503; half of them after the request took effect.
    pub server_error: f64,
    /// The answer comes after `slow_for` (past the client's timeout).
    pub slow: f64,
    pub slow_for: Duration,
    /// The connection closes without an answer; half of them after the request
    /// took effect.
    pub dropped: f64,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            throttle: 0.0,
            server_error: 0.0,
            slow: 0.0,
            slow_for: Duration::from_secs(3),
            dropped: 0.0,
        }
    }
}

impl Faults {
    /// `rate` of all requests fail, spread evenly over the four kinds.
    pub fn spread(rate: f64, slow_for: Duration) -> Self {
        Self {
            throttle: rate / 4.0,
            server_error: rate / 4.0,
            slow: rate / 4.0,
            slow_for,
            dropped: rate / 4.0,
        }
    }
}

/// How the fake behaves; changeable while it runs.
#[derive(Debug, Clone)]
pub struct FakeConfig {
    pub create_time: Duration,
    /// power_on, shutdown, reboot; power_off takes half.
    pub action_time: Duration,
    pub snapshot_time: Duration,
    pub resize_time: Duration,
    /// How long a deleted droplet keeps its volumes attached.
    pub destroy_time: Duration,
    /// The machine ignores `shutdown`: the action errors after `shutdown_ignored_for`.
    pub shutdown_ignored: bool,
    pub shutdown_ignored_for: Duration,
    /// Droplets present a host key of their own instead of the pre-seeded one.
    pub host_key_mismatch: bool,
    /// (requests, per): the first is reported in the `ratelimit-*` headers.
    pub rate_limits: Vec<(u32, Duration)>,
    pub faults: Faults,
    /// Answers to these operations are held back this long (after taking effect).
    pub delays: Vec<(&'static str, Duration)>,
}

impl Default for FakeConfig {
    fn default() -> Self {
        Self {
            create_time: Duration::from_millis(400),
            action_time: Duration::from_millis(200),
            snapshot_time: Duration::from_millis(300),
            resize_time: Duration::from_millis(300),
            destroy_time: Duration::from_millis(300),
            shutdown_ignored: false,
            shutdown_ignored_for: Duration::from_secs(1),
            host_key_mismatch: false,
            rate_limits: vec![
                (5000, Duration::from_secs(3600)),
                (250, Duration::from_secs(60)),
            ],
            faults: Faults::default(),
            delays: Vec::new(),
        }
    }
}

/// One request the fake received and what it did with it.
#[derive(Debug, Clone)]
pub struct Exchange {
    pub method: String,
    pub path: String,
    pub query: Vec<(String, String)>,
    pub operation: String,
    /// 0: the connection was dropped.
    pub status: u16,
    pub fault: Option<&'static str>,
    /// When it arrived.
    pub at: Instant,
}

#[derive(Default)]
pub(crate) struct State {
    next: u64,
    droplets: BTreeMap<u64, model::Droplet>,
    actions: BTreeMap<u64, model::Action>,
    volumes: BTreeMap<String, model::Volume>,
    snapshots: Vec<model::Snapshot>,
    /// Every droplet ever created: (id, tags).
    created: Vec<(u64, Vec<String>)>,
    /// What destroyed droplets were billed: DigitalOcean bills a droplet from its
    /// creation to its destruction, powered off or not.
    billed: chrono::Duration,
    /// Per rate-limit window: (start, requests counted).
    windows: Vec<(Instant, u32)>,
}

impl State {
    fn next_id(&mut self) -> u64 {
        self.next += 1;
        3_164_400 + self.next
    }
}

pub(crate) struct Inner {
    base_url: String,
    token: String,
    root: PathBuf,
    state: Mutex<State>,
    config: Mutex<FakeConfig>,
    exchanges: Mutex<Vec<Exchange>>,
    violations: Mutex<Vec<String>>,
    holds: hold::Holds,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn config(&self) -> FakeConfig {
        self.config
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn violation(&self, problem: String) {
        eprintln!("fake DigitalOcean: {problem}");
        self.violations
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(problem);
    }

    fn log(&self, exchange: Exchange) {
        self.exchanges
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(exchange);
    }
}

/// A droplet as a test sees it.
#[derive(Debug, Clone)]
pub struct DropletView {
    pub id: u64,
    pub name: String,
    pub status: DropletStatus,
    pub size: String,
    /// GiB.
    pub disk: u32,
    pub tags: Vec<String>,
    pub volume_ids: Vec<String>,
    pub ip: std::net::Ipv4Addr,
    pub user_data: Option<String>,
    pub snapshot_ids: Vec<u64>,
    dir: PathBuf,
}

impl DropletView {
    /// The droplet's `/var/log/cloud-init-output.log`.
    pub fn cloud_init_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("root/var/log/cloud-init-output.log"))
            .unwrap_or_default()
    }
}

#[derive(Debug, Clone)]
pub struct VolumeView {
    pub id: String,
    pub name: String,
    pub region: String,
    pub size_gigabytes: i64,
    pub droplet_ids: Vec<u64>,
    pub tags: Vec<String>,
    /// The directory standing for its filesystem.
    pub dir: PathBuf,
}

pub struct FakeDo {
    inner: Arc<Inner>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    pub url: String,
    pub token: String,
}

impl FakeDo {
    pub fn start() -> Self {
        Self::start_with(FakeConfig::default())
    }

    pub fn start_with(config: FakeConfig) -> Self {
        assert!(
            nix::unistd::Uid::effective().is_root(),
            "the fake DigitalOcean droplets need root (mount namespaces, sshd on port 22)"
        );
        openapi::spec();
        let root = crate::helpers::test_root()
            .join("fake-do")
            .join(uuid::Uuid::new_v4().simple().to_string());
        std::fs::create_dir_all(root.join("droplets")).expect("fake root");
        std::fs::create_dir_all(root.join("volumes")).expect("fake root");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind fake");
        listener.set_nonblocking(true).expect("nonblocking");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let token = format!("dop_v1_fake{}", uuid::Uuid::new_v4().simple());
        let inner = Arc::new(Inner {
            base_url: url.clone(),
            token: token.clone(),
            root,
            state: Mutex::default(),
            config: Mutex::new(config),
            exchanges: Mutex::default(),
            violations: Mutex::default(),
            holds: hold::Holds::default(),
        });
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let server_inner = inner.clone();
        let thread = std::thread::Builder::new()
            .name("fake-digitalocean".into())
            .spawn(move || {
                // Two workers: a burst of requests is not held up behind one
                // validation or machine boot (which would skew its rate limits).
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("fake runtime");
                runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                    server::serve(server_inner, listener, stopped).await;
                });
            })
            .expect("fake thread");
        Self {
            inner,
            stop: Some(stop),
            thread: Some(thread),
            url,
            token,
        }
    }

    pub fn configure(&self, f: impl FnOnce(&mut FakeConfig)) {
        f(&mut self.inner.config.lock().unwrap_or_else(|p| p.into_inner()));
    }

    pub fn droplets(&self) -> Vec<DropletView> {
        self.inner
            .lock()
            .droplets
            .values()
            .map(|d| DropletView {
                id: d.id,
                name: d.name.clone(),
                status: d.status,
                size: d.size.clone(),
                disk: d.disk,
                tags: d.tags.clone(),
                volume_ids: d.volume_ids.clone(),
                ip: d.ip,
                user_data: d.user_data.clone(),
                snapshot_ids: d.snapshot_ids.clone(),
                dir: d.dir.clone(),
            })
            .collect()
    }

    pub fn droplets_tagged(&self, tag: &str) -> Vec<DropletView> {
        self.droplets()
            .into_iter()
            .filter(|d| d.tags.iter().any(|t| t == tag))
            .collect()
    }

    /// The droplet time billed so far, in seconds: every droplet from its creation
    /// to its destruction (or to now), whatever its power state. Volumes aside.
    pub fn droplet_seconds(&self) -> f64 {
        let state = self.inner.lock();
        let now = chrono::Utc::now();
        let live = state
            .droplets
            .values()
            .fold(chrono::Duration::zero(), |sum, d| {
                sum + (now - d.created_at)
            });
        (state.billed + live).as_seconds_f64()
    }

    /// How many droplets carrying `tag` were ever created (deleted ones included).
    pub fn ever_created(&self, tag: &str) -> usize {
        self.inner
            .lock()
            .created
            .iter()
            .filter(|(_, tags)| tags.iter().any(|t| t == tag))
            .count()
    }

    pub fn volumes(&self) -> Vec<VolumeView> {
        self.inner
            .lock()
            .volumes
            .values()
            .map(|v| VolumeView {
                id: v.id.clone(),
                name: v.name.clone(),
                region: v.region.clone(),
                size_gigabytes: v.size_gigabytes,
                droplet_ids: v.droplet_ids.clone(),
                tags: v.tags.clone(),
                dir: v.dir.clone(),
            })
            .collect()
    }

    pub fn snapshots(&self) -> Vec<(u64, String, u64)> {
        self.inner
            .lock()
            .snapshots
            .iter()
            .map(|s| (s.id, s.name.clone(), s.droplet_id))
            .collect()
    }

    pub fn exchanges(&self) -> Vec<Exchange> {
        self.inner
            .exchanges
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Requests of an operation (by operationId) that reached the API.
    pub fn count(&self, operation: &str) -> usize {
        self.exchanges()
            .iter()
            .filter(|e| e.operation == operation)
            .count()
    }

    pub fn violations(&self) -> Vec<String> {
        self.inner
            .violations
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The violations so far, which then no longer fail the test (for tests that
    /// send invalid requests on purpose).
    pub fn take_violations(&self) -> Vec<String> {
        std::mem::take(
            &mut *self
                .inner
                .violations
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        )
    }

    pub fn assert_valid(&self) {
        let violations = self.violations();
        assert!(
            violations.is_empty(),
            "requests or answers that do not match DigitalOcean's API description:\n{}",
            violations.join("\n")
        );
    }

    /// Waits until `pred` holds for the fake's state (bounded: 60 s).
    pub async fn wait_until(&self, what: &str, pred: impl Fn(&FakeDo) -> bool) {
        let seen = async || if pred(self) { Ok(()) } else { Err("not yet") };
        eventually(Duration::from_secs(60), what, seen).await;
    }
}

impl Drop for FakeDo {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let droplets: Vec<_> = self
            .inner
            .lock()
            .droplets
            .values()
            .map(|d| (d.dir.clone(), d.slot, d.ip))
            .collect();
        for (dir, slot, ip) in droplets {
            machine::halt(&dir, effects::uid(slot), ip);
            machine::release_address(slot);
        }
        let _ = std::fs::remove_dir_all(&self.inner.root);
        if !std::thread::panicking() {
            self.assert_valid();
        }
    }
}
