//! Action lifecycles: an action completes after its (scaled-down) time (or once a
//! test's hold lets it), and then takes effect — booting or halting the droplet's
//! machine off the async threads.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;

use super::Inner;
use super::hold::Step;
use super::machine::MachineSpec;
use super::model::{Action, DropletStatus, Snapshot};
use super::userdata::UserData;

/// What an action does when it completes.
#[derive(Debug, Clone)]
pub(super) enum Effect {
    Create,
    PowerOn,
    Shutdown,
    PowerOff,
    Reboot,
    Snapshot(String),
    /// The new size, and the disk (GiB) after it.
    Resize(String, u32),
    Attach(String),
    Detach(String),
    Nothing,
}

impl Inner {
    pub(super) fn schedule(
        self: &Arc<Self>,
        action: u64,
        droplet: u64,
        wait: Duration,
        effect: Effect,
    ) {
        self.schedule_with(action, droplet, wait, effect, false);
    }

    /// Completes an action after `wait`, applying its effect (booting or halting
    /// the machine off the async threads).
    pub(super) fn schedule_with(
        self: &Arc<Self>,
        action: u64,
        droplet: u64,
        wait: Duration,
        effect: Effect,
        errored: bool,
    ) {
        let inner = self.clone();
        let busy = self.holds.busy();
        let kind = self.lock().actions.get(&action).map(|a| a.kind.clone());
        tokio::spawn(async move {
            let _busy = busy;
            tokio::time::sleep(wait).await;
            if let Some(kind) = kind {
                inner.holds.pass(Step::Action(kind), &[]).await;
            }
            let ok = inner.apply(droplet, effect).await && !errored;
            let mut state = inner.lock();
            if let Some(a) = state.actions.get_mut(&action) {
                a.status = if ok { "completed" } else { "errored" };
                a.completed_at = Some(Utc::now());
            }
            if let Some(d) = state.droplets.get_mut(&droplet)
                && d.pending == Some(action)
            {
                d.pending = None;
            }
        });
    }

    pub(super) async fn apply(self: &Arc<Self>, droplet: u64, effect: Effect) -> bool {
        let machine = |inner: &Arc<Self>| {
            inner
                .lock()
                .droplets
                .get(&droplet)
                .and_then(|d| d.machine.clone())
        };
        let set = |inner: &Arc<Self>, status: DropletStatus| {
            if let Some(d) = inner.lock().droplets.get_mut(&droplet) {
                d.status = status;
            }
        };
        match effect {
            Effect::Create => {
                let spec = match self.machine_spec(droplet) {
                    Ok(Some(spec)) => spec,
                    Ok(None) => return false,
                    Err(e) => {
                        self.violation(e);
                        return false;
                    }
                };
                if let Some(d) = self.lock().droplets.get_mut(&droplet) {
                    d.machine = Some(spec.clone());
                }
                let machine = spec.clone();
                let booted = tokio::task::spawn_blocking(move || machine.boot()).await;
                if !self.lock().droplets.contains_key(&droplet) {
                    // Destroyed while it booted: nothing of it stays up.
                    let _ = tokio::task::spawn_blocking(move || {
                        spec.halt();
                        let _ = std::fs::remove_dir_all(&spec.dir);
                    })
                    .await;
                    return false;
                }
                self.boot_result(booted);
                set(self, DropletStatus::Active);
                true
            }
            Effect::PowerOn => {
                if let Some(spec) = machine(self) {
                    let booted = tokio::task::spawn_blocking(move || spec.boot()).await;
                    self.boot_result(booted);
                }
                set(self, DropletStatus::Active);
                true
            }
            Effect::Shutdown | Effect::PowerOff => {
                if let Some(spec) = machine(self) {
                    let _ = tokio::task::spawn_blocking(move || spec.halt()).await;
                }
                set(self, DropletStatus::Off);
                true
            }
            Effect::Reboot => {
                if let Some(spec) = machine(self) {
                    let booted = tokio::task::spawn_blocking(move || {
                        spec.halt();
                        spec.boot()
                    })
                    .await;
                    self.boot_result(booted);
                }
                true
            }
            Effect::Snapshot(name) => {
                let mut state = self.lock();
                let id = state.next_id();
                let Some(d) = state.droplets.get_mut(&droplet) else {
                    return false;
                };
                d.snapshot_ids.push(id);
                let snapshot = Snapshot {
                    id,
                    name,
                    droplet_id: droplet,
                    region: d.region.clone(),
                    min_disk: d.disk,
                    created_at: Utc::now(),
                };
                state.snapshots.push(snapshot);
                true
            }
            Effect::Resize(size, disk) => {
                if let Some(d) = self.lock().droplets.get_mut(&droplet) {
                    d.size = size;
                    d.disk = disk;
                }
                true
            }
            Effect::Attach(volume) | Effect::Detach(volume) => {
                let attach =
                    matches!(self.lock().volumes.get(&volume), Some(v) if v.droplet_ids.is_empty());
                let mut state = self.lock();
                if let Some(v) = state.volumes.get_mut(&volume) {
                    v.droplet_ids.retain(|d| *d != droplet);
                    if attach {
                        v.droplet_ids.push(droplet);
                    }
                }
                if let Some(d) = state.droplets.get_mut(&droplet) {
                    d.volume_ids.retain(|v| *v != volume);
                    if attach {
                        d.volume_ids.push(volume);
                    }
                }
                true
            }
            Effect::Nothing => true,
        }
    }

    pub(super) fn boot_result(&self, booted: Result<Result<(), String>, tokio::task::JoinError>) {
        match booted {
            Ok(Ok(())) => {}
            Ok(Err(e)) => self.violation(format!("a fake droplet failed to boot: {e}")),
            Err(e) => self.violation(format!("a fake droplet failed to boot: {e}")),
        }
    }

    /// The machine a droplet's user-data describes.
    pub(super) fn machine_spec(&self, droplet: u64) -> Result<Option<MachineSpec>, String> {
        let mismatch = self.config().host_key_mismatch;
        let state = self.lock();
        let Some(d) = state.droplets.get(&droplet) else {
            return Ok(None);
        };
        let data = match &d.user_data {
            Some(raw) => UserData::parse(raw)?,
            None => UserData::default(),
        };
        let host_key = match (&data.host_key_private, mismatch) {
            (Some(key), false) => key.clone(),
            // No pre-seeded key (or a test wants a stranger): the droplet makes its own.
            _ => {
                devpocket_actors::ssh::generate_keypair("fake-droplet")
                    .map_err(|e| e.to_string())?
                    .0
            }
        };
        let mounts = data
            .mounts
            .iter()
            .filter_map(|(device, point)| {
                let name = device.strip_prefix("/dev/disk/by-id/scsi-0DO_Volume_")?;
                let volume = d
                    .volume_ids
                    .iter()
                    .filter_map(|id| state.volumes.get(id))
                    .find(|v| v.name == name)?;
                Some((volume.dir.clone(), point.clone()))
            })
            .collect();
        Ok(Some(MachineSpec {
            dir: d.dir.clone(),
            ip: d.ip,
            uid: uid(d.slot),
            user: data.user.unwrap_or_else(|| "root".into()),
            authorized_keys: data.authorized_keys,
            host_key,
            mounts,
            packages: data.packages,
            scripts: data.scripts,
        }))
    }
}

/// The uid of a droplet's user (each droplet has its own).
pub fn uid(slot: u32) -> u32 {
    61_000 + slot
}

pub(super) fn new_action(
    id: u64,
    kind: &str,
    resource: i64,
    resource_type: &'static str,
    region: &str,
) -> Action {
    Action {
        id,
        kind: kind.to_owned(),
        status: "in-progress",
        started_at: Utc::now(),
        completed_at: None,
        resource_id: resource,
        resource_type,
        region: region.to_owned(),
    }
}
