//! A child that panics is noticed by its supervisor and re-created from durable
//! state; one that keeps panicking is given up on, durably.
//!
//! Driven through the public API (`ActorSystem`), with an in-memory `Store` and a
//! `Provider` whose `create` panics.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::Utc;
use devpocket_actors::backoff::Backoff;
use devpocket_actors::model::{
    Changes, EnvironmentRecord, MachineAccess, MachineKeys, NewEnvironment, Phase, Status, Times,
    Transition,
};
use devpocket_actors::provider::{
    BootstrapWatch, Cancel, Machine, MachineSpec, Provider, ProviderError,
};
use devpocket_actors::registry::SupervisorFor;
use devpocket_actors::store::{Resumable, Store, StoreError};
use devpocket_actors::supervisor::ChildCount;
use devpocket_actors::{ActorSettings, ActorSystem, Deps, Gauges};
use tokio::sync::Notify;
use uuid::Uuid;

const PROVIDER: &str = "panicky";
const CREATE_ERROR: &str = "no capacity in this region";
const GAVE_UP: &str = "kept crashing";
const DEADLINE: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// In-memory store
// ---------------------------------------------------------------------------

#[derive(Default)]
struct State {
    records: HashMap<Uuid, EnvironmentRecord>,
    /// Every transition written, in order.
    transitions: Vec<(Uuid, Transition)>,
    /// Stored provisioning-log lines per environment, `(seq, line)`.
    logs: HashMap<Uuid, Vec<(i64, String)>>,
    /// `(owner, expires)` per environment.
    leases: HashMap<Uuid, (Uuid, Instant)>,
    keys_saved: usize,
}

#[derive(Default)]
struct MemoryStore {
    state: Mutex<State>,
    /// Woken on every durable write.
    changed: Notify,
}

impl MemoryStore {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn insert(&self, record: EnvironmentRecord) {
        self.lock().records.insert(record.id, record);
        self.changed.notify_waiters();
    }

    fn record(&self, id: Uuid) -> Option<EnvironmentRecord> {
        self.lock().records.get(&id).cloned()
    }

    fn transitions(&self, id: Uuid) -> Vec<Transition> {
        self.lock()
            .transitions
            .iter()
            .filter(|(i, _)| *i == id)
            .map(|(_, t)| t.clone())
            .collect()
    }

    fn keys_saved(&self) -> usize {
        self.lock().keys_saved
    }

    /// Waits, woken by each durable write, until `id`'s record satisfies `done`;
    /// panics with the last state seen after `DEADLINE`.
    async fn wait_for(
        &self,
        id: Uuid,
        what: &str,
        done: impl Fn(&EnvironmentRecord) -> bool,
    ) -> EnvironmentRecord {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            // Registered before the check, so a write in between is not missed.
            notified.as_mut().enable();
            let record = self.record(id);
            if let Some(r) = record.as_ref().filter(|r| done(r)) {
                return r.clone();
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!(
                    "timed out waiting for {what}; last record: {record:?}; transitions: {:?}",
                    self.transitions(id)
                );
            }
        }
    }

    fn missing(id: Uuid) -> StoreError {
        StoreError::database(format!("no environment {id}"))
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn load(&self, id: Uuid) -> Result<Option<EnvironmentRecord>, StoreError> {
        Ok(self.record(id))
    }

    async fn create(&self, _: &NewEnvironment) -> Result<EnvironmentRecord, StoreError> {
        // These tests put their records in directly (`MemoryStore::insert`).
        Err(StoreError::Unsupported("new environments"))
    }

    async fn update(&self, id: Uuid, changes: &Changes) -> Result<Times, StoreError> {
        let times = {
            let mut state = self.lock();
            let record = state
                .records
                .get_mut(&id)
                .ok_or_else(|| Self::missing(id))?;
            if let Some(name) = &changes.name {
                record.name.clone_from(name);
            }
            if let Some(variables) = &changes.environment_variables {
                record.environment_variables.clone_from(variables);
            }
            record.times.updated_at = Utc::now();
            record.times
        };
        self.changed.notify_waiters();
        Ok(times)
    }

    async fn transition(&self, id: Uuid, t: &Transition) -> Result<Times, StoreError> {
        let times = {
            let mut state = self.lock();
            let record = state
                .records
                .get_mut(&id)
                .ok_or_else(|| Self::missing(id))?;
            record.status = t.status;
            record.phase = t.phase;
            record.progress = t.progress;
            record.status_message = t.message.clone();
            record.times.updated_at = Utc::now();
            let times = record.times;
            state.transitions.push((id, t.clone()));
            times
        };
        self.changed.notify_waiters();
        Ok(times)
    }

    /// No plans here: every start has room.
    async fn activate(&self, id: Uuid, t: &Transition) -> Result<Times, StoreError> {
        self.transition(id, t).await
    }

    async fn save_keys(&self, id: Uuid, keys: &MachineKeys) -> Result<(), StoreError> {
        {
            let mut state = self.lock();
            let record = state
                .records
                .get_mut(&id)
                .ok_or_else(|| Self::missing(id))?;
            record.keys = Some(keys.clone());
            state.keys_saved += 1;
        }
        self.changed.notify_waiters();
        Ok(())
    }

    async fn save_machine(
        &self,
        id: Uuid,
        machine: &MachineAccess,
        provider_ref: &str,
    ) -> Result<(), StoreError> {
        {
            let mut state = self.lock();
            let record = state
                .records
                .get_mut(&id)
                .ok_or_else(|| Self::missing(id))?;
            record.machine = Some(machine.clone());
            record.provider_ref = Some(provider_ref.to_owned());
        }
        self.changed.notify_waiters();
        Ok(())
    }

    async fn append_logs(
        &self,
        id: Uuid,
        first_seq: i64,
        lines: &[String],
        keep: i64,
    ) -> Result<(), StoreError> {
        if lines.is_empty() {
            return Ok(());
        }
        {
            let mut state = self.lock();
            if !state.records.contains_key(&id) {
                return Err(Self::missing(id));
            }
            let stored = state.logs.entry(id).or_default();
            for (seq, line) in (first_seq..).zip(lines) {
                // Like `ON CONFLICT DO NOTHING`: a line already stored stays.
                if !stored.iter().any(|(s, _)| *s == seq) {
                    stored.push((seq, line.clone()));
                }
            }
            stored.sort_by_key(|(s, _)| *s);
            let keep = usize::try_from(keep.max(0)).unwrap_or(usize::MAX);
            if stored.len() > keep {
                let excess = stored.len() - keep;
                stored.drain(..excess);
            }
            let last = first_seq + i64::try_from(lines.len()).unwrap_or(1) - 1;
            let record = state
                .records
                .get_mut(&id)
                .ok_or_else(|| Self::missing(id))?;
            record.log_seq = record.log_seq.max(last);
        }
        self.changed.notify_waiters();
        Ok(())
    }

    async fn acquire_lease(
        &self,
        id: Uuid,
        owner: Uuid,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let mut state = self.lock();
        if !state.records.contains_key(&id) {
            return Ok(false);
        }
        let now = Instant::now();
        if let Some((holder, expires)) = state.leases.get(&id)
            && *holder != owner
            && *expires > now
        {
            return Ok(false);
        }
        state.leases.insert(id, (owner, now + ttl));
        Ok(true)
    }

    async fn release_lease(&self, id: Uuid, owner: Uuid) -> Result<(), StoreError> {
        let mut state = self.lock();
        if state
            .leases
            .get(&id)
            .is_some_and(|(holder, _)| *holder == owner)
        {
            state.leases.remove(&id);
        }
        Ok(())
    }

    async fn mark_deleted(&self, id: Uuid) -> Result<(), StoreError> {
        {
            let mut state = self.lock();
            state.records.remove(&id);
            state.logs.remove(&id);
            state.leases.remove(&id);
        }
        self.changed.notify_waiters();
        Ok(())
    }

    async fn resumable(&self) -> Result<Vec<Resumable>, StoreError> {
        Ok(self
            .lock()
            .records
            .values()
            .filter(|r| !matches!(r.phase, Phase::Stopped | Phase::Failed | Phase::Deleted))
            .map(|r| Resumable {
                user_id: r.user_id,
                environment_id: r.id,
            })
            .collect())
    }
}

// ---------------------------------------------------------------------------
// A provider whose `create` panics
// ---------------------------------------------------------------------------

struct PanickyProvider {
    /// `create` panics while it has been called fewer than this many times.
    panics: usize,
    creates: AtomicUsize,
    /// The user public key of every spec `create` was given.
    keys_seen: Mutex<Vec<String>>,
}

impl PanickyProvider {
    fn new(panics: usize) -> Self {
        Self {
            panics,
            creates: AtomicUsize::new(0),
            keys_seen: Mutex::new(Vec::new()),
        }
    }

    fn creates(&self) -> usize {
        self.creates.load(Ordering::SeqCst)
    }

    fn keys_seen(&self) -> Vec<String> {
        self.keys_seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

#[async_trait]
impl Provider for PanickyProvider {
    fn name(&self) -> &'static str {
        PROVIDER
    }

    async fn create(&self, spec: &MachineSpec, _: &Cancel) -> Result<Machine, ProviderError> {
        self.keys_seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(spec.keys.user_public.clone());
        let call = self.creates.fetch_add(1, Ordering::SeqCst) + 1;
        if call <= self.panics {
            panic!("test provider panics on purpose (create call {call})");
        }
        Err(ProviderError::ForOwner(CREATE_ERROR.to_owned()))
    }

    async fn start(
        &self,
        _spec: &MachineSpec,
        _provider_ref: &str,
    ) -> Result<Machine, ProviderError> {
        Err(ProviderError::Unsupported("start"))
    }

    async fn stop(&self, _provider_ref: &str) -> Result<(), ProviderError> {
        Err(ProviderError::Unsupported("stop"))
    }

    async fn delete(&self, _: Uuid, _: Option<&str>) -> Result<(), ProviderError> {
        Ok(())
    }

    fn bootstrap_watch(&self) -> BootstrapWatch {
        BootstrapWatch {
            tail_command: "cat /nonexistent".to_owned(),
        }
    }
}

// ---------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------

const MAX_RESTARTS: u32 = 3;
const BACKOFF: Duration = Duration::from_millis(10);

fn settings() -> ActorSettings {
    ActorSettings {
        lease_ttl: Duration::from_secs(30),
        environment_idle: Duration::from_secs(300),
        supervisor_idle: Duration::from_secs(300),
        restart_backoff: BACKOFF,
        max_restarts: MAX_RESTARTS,
        ..ActorSettings::default()
    }
}

/// A freshly created environment, as the API writes it: queued, no keys yet.
fn queued_record(user_id: Uuid) -> EnvironmentRecord {
    EnvironmentRecord {
        id: Uuid::new_v4(),
        user_id,
        name: "Panic test".into(),
        slug: "panic-test".into(),
        template_id: Uuid::new_v4(),
        resource_limits: serde_json::Map::new(),
        times: Times {
            created_at: Utc::now(),
            updated_at: Utc::now(),
            started_at: None,
            stopped_at: None,
            last_accessed: None,
        },
        provider: PROVIDER.into(),
        region: "local".into(),
        size: "small".into(),
        status: Status::Creating,
        phase: Phase::Queued,
        progress: 0,
        status_message: None,
        template_name: "ubuntu".into(),
        bootstrap: "#!/bin/sh\necho hello\n".into(),
        packages: Vec::new(),
        cloud_init: serde_json::Map::new(),
        environment_variables: BTreeMap::new(),
        keys: None,
        machine: None,
        provider_ref: None,
        log_seq: 0,
        provisioned: false,
        unreadable: None,
        auto_stop_minutes: None,
    }
}

struct Harness {
    system: ActorSystem,
    store: Arc<MemoryStore>,
    provider: Arc<PanickyProvider>,
    user_id: Uuid,
    env_id: Uuid,
}

impl Harness {
    async fn start(panics: usize) -> Self {
        let store = Arc::new(MemoryStore::default());
        let provider = Arc::new(PanickyProvider::new(panics));
        let user_id = Uuid::new_v4();
        let record = queued_record(user_id);
        let env_id = record.id;
        store.insert(record);
        let mut providers: HashMap<String, Arc<dyn Provider>> = HashMap::new();
        providers.insert(PROVIDER.into(), provider.clone());
        let system = ActorSystem::start(Arc::new(Deps {
            store: store.clone(),
            providers,
            owner: Uuid::new_v4(),
            settings: settings(),
            terminal: Default::default(),
            servers: Default::default(),
            gauges: Gauges::default(),
            inspector: devpocket_actors::inspect::Inspector::new(&metrics::NoopRecorder),
            recorder: Arc::new(metrics::NoopRecorder),
            answers: Default::default(),
        }));
        // Not `connected()`: the first actor may already have panicked (its
        // provisioning starts at once, on another thread).
        system
            .environment(user_id, env_id)
            .await
            .expect("the actor system answers")
            .expect("the environment exists");
        Self {
            system,
            store,
            provider,
            user_id,
            env_id,
        }
    }

    fn restarts(&self) -> i64 {
        self.system.deps.gauges.restarts.load(Ordering::SeqCst)
    }

    async fn live_children(&self) -> usize {
        let supervisor = self
            .system
            .registry
            .send(SupervisorFor {
                user_id: self.user_id,
            })
            .await
            .expect("registry answers");
        supervisor
            .send(ChildCount)
            .await
            .expect("supervisor answers")
    }

    /// Lets a longer backoff pass than the supervisor would ever wait, so a restart
    /// that should not happen would have.
    async fn settle(&self) {
        let longest = Backoff::doubling(BACKOFF).delay(MAX_RESTARTS + 1);
        tokio::time::sleep(longest).await;
    }
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

/// `create` panics twice, then fails cleanly: each panic is noticed, the actor is
/// re-created from the store (with the keys and phase the dead one wrote), and the
/// third one records the provider's error durably.
#[actix_rt::test]
async fn panicked_child_is_recreated_from_durable_state() {
    const PANICS: usize = 2;
    let h = Harness::start(PANICS).await;

    let record = h
        .store
        .wait_for(h.env_id, "the provisioning failure", |r| {
            r.status == Status::Error
        })
        .await;
    h.settle().await;

    // (c) The last actor resumed and ended in a durable error with the
    // provider's message.
    assert_eq!(record.status, Status::Error);
    assert_eq!(record.phase, Phase::Failed);
    let message = record.status_message.clone().unwrap_or_default();
    assert!(
        message.contains(CREATE_ERROR),
        "status message {message:?} should carry the provider's error"
    );
    assert!(!message.contains(GAVE_UP), "{message:?}");

    // (a) Every panic was noticed by the supervisor.
    assert_eq!(h.restarts(), i64::try_from(PANICS).unwrap());
    // (b) Re-created once per panic; nothing more after the clean failure.
    assert_eq!(h.provider.creates(), PANICS + 1);

    // Resumed from durable state, not from scratch: the keys the first actor
    // stored were reused (generated and saved once, the same in every spec), and
    // only the first actor moved the record out of `queued`.
    assert_eq!(h.store.keys_saved(), 1);
    let keys = h.provider.keys_seen();
    assert_eq!(keys.len(), PANICS + 1);
    assert!(keys.iter().all(|k| *k == keys[0]), "{keys:?}");
    assert_eq!(
        record.keys.as_ref().map(|k| k.user_public.clone()),
        Some(keys[0].clone())
    );
    let phases: Vec<Phase> = h
        .store
        .transitions(h.env_id)
        .iter()
        .map(|t| t.phase)
        .collect();
    assert_eq!(phases, vec![Phase::Provisioning, Phase::Failed]);

    // The surviving actor is alive and in the supervisor's care.
    assert_eq!(h.live_children().await, 1);
    let again = h
        .system
        .environment(h.user_id, h.env_id)
        .await
        .unwrap()
        .unwrap();
    assert!(again.connected());
    assert_eq!(h.provider.creates(), PANICS + 1, "no new create on lookup");
}

/// `create` always panics: after `max_restarts` re-creations the supervisor gives
/// up and records why, durably, instead of crashing forever.
#[actix_rt::test]
async fn child_that_keeps_panicking_is_given_up_on() {
    let h = Harness::start(usize::MAX).await;

    let record = h
        .store
        .wait_for(h.env_id, "the supervisor to give up", |r| {
            r.status == Status::Error
        })
        .await;
    h.settle().await;

    assert_eq!(record.status, Status::Error);
    assert_eq!(record.phase, Phase::Failed);
    let message = record.status_message.clone().unwrap_or_default();
    assert!(
        message.contains(GAVE_UP),
        "status message {message:?} should say the controller kept crashing"
    );

    let max = usize::try_from(MAX_RESTARTS).unwrap();
    // The first run plus `max_restarts` re-creations, then no more.
    assert_eq!(h.provider.creates(), max + 1);
    assert_eq!(h.restarts(), i64::from(MAX_RESTARTS) + 1);
    assert_eq!(h.live_children().await, 0);

    // The durable record is final: what the last transition says.
    let last = h.store.transitions(h.env_id).pop().expect("transitions");
    assert_eq!(last, Transition::failed(message));
    assert_eq!(h.store.keys_saved(), 1);
}
