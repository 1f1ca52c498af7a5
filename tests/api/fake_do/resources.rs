//! Requests that change things: creating droplets and volumes, droplet and volume
//! actions, destroying droplets (their volumes come free a little later).

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use serde_json::{Value, json};

use super::Inner;
use super::api::{Reply, error, no_content, not_found, reply, unprocessable};
use super::effects::{Effect, new_action, uid};
use super::machine;
use super::model::{Droplet, DropletStatus, IMAGES, ImageRef, REGIONS, SIZES, Volume};
use super::userdata::UserData;

const MAX_USER_DATA: usize = 64 * 1024;

pub(super) fn valid_tag(tag: &str) -> bool {
    !tag.is_empty()
        && tag.len() <= 255
        && tag
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | ':'))
}

impl Inner {
    pub(super) fn create_droplet(self: &Arc<Self>, body: &Value) -> Reply {
        if body.get("names").is_some() {
            return unprocessable("the fake creates one Droplet per request");
        }
        let name = body["name"].as_str().unwrap_or_default().to_owned();
        let region = body["region"].as_str().unwrap_or("nyc3").to_owned();
        let size = body["size"].as_str().unwrap_or_default().to_owned();
        if !REGIONS.iter().any(|r| r.0 == region) {
            return unprocessable("You specified an invalid region for Droplet creation.");
        }
        let Some(disk) = SIZES.iter().find(|s| s.0 == size).map(|s| s.3) else {
            return unprocessable("You specified an invalid size for Droplet creation.");
        };
        let user_data = body["user_data"].as_str().map(str::to_owned);
        if user_data.as_ref().is_some_and(|u| u.len() > MAX_USER_DATA) {
            return unprocessable("user_data exceeds the maximum size of 64 KiB.");
        }
        if let Some(ud) = &user_data
            && let Err(e) = UserData::parse(ud)
        {
            // cloud-init would skip it and the droplet would boot unreachable.
            self.violation(format!(
                "droplet {name}: user_data cloud-init cannot read: {e}"
            ));
        }
        let tags: Vec<String> = body["tags"]
            .as_array()
            .map(|t| {
                t.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        if let Some(bad) = tags.iter().find(|t| !valid_tag(t)) {
            return unprocessable(&format!(
                "Tag {bad:?} is invalid: tags may contain letters, numbers, colons, dashes and underscores"
            ));
        }
        let volume_ids: Vec<String> = body["volumes"]
            .as_array()
            .map(|t| {
                t.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        let (ip, slot) = match machine::allocate_address() {
            Ok(a) => a,
            Err(e) => return error(500, "server_error", &e),
        };
        let mut state = self.lock();
        let image = match &body["image"] {
            Value::String(slug) => IMAGES
                .iter()
                .position(|i| i.1 == slug)
                .map(ImageRef::Public),
            Value::Number(n) => n.as_u64().and_then(|id| {
                state
                    .snapshots
                    .iter()
                    .any(|s| s.id == id)
                    .then_some(ImageRef::Snapshot(id))
            }),
            _ => None,
        };
        let Some(image) = image else {
            machine::release_address(slot);
            return unprocessable("You specified an invalid image for Droplet creation.");
        };
        for vid in &volume_ids {
            let problem = match state.volumes.get(vid) {
                None => Some(format!("Volume {vid} could not be found.")),
                Some(v) if v.region != region => Some(format!(
                    "Volume {vid} is in {} and cannot be attached in {region}.",
                    v.region
                )),
                Some(v) if !v.droplet_ids.is_empty() => Some(format!(
                    "Volume {vid} is already attached to another Droplet."
                )),
                Some(_) => None,
            };
            if let Some(problem) = problem {
                machine::release_address(slot);
                return unprocessable(&problem);
            }
        }
        let id = state.next_id();
        let action_id = state.next_id();
        for vid in &volume_ids {
            if let Some(v) = state.volumes.get_mut(vid) {
                v.droplet_ids.push(id);
            }
        }
        let droplet = Droplet {
            id,
            name,
            region: region.clone(),
            size,
            disk,
            image,
            status: DropletStatus::New,
            created_at: Utc::now(),
            tags,
            volume_ids,
            ipv6: body["ipv6"].as_bool().unwrap_or(false),
            monitoring: body["monitoring"].as_bool().unwrap_or(false),
            user_data,
            ip,
            slot,
            snapshot_ids: Vec::new(),
            pending: Some(action_id),
            dir: self.root.join("droplets").join(id.to_string()),
            machine: None,
        };
        let json = droplet.json(&state.snapshots);
        state.created.push((id, droplet.tags.clone()));
        state.droplets.insert(id, droplet);
        state.actions.insert(
            action_id,
            new_action(action_id, "create", id as i64, "droplet", &region),
        );
        drop(state);
        let wait = self.config().create_time;
        self.schedule(action_id, id, wait, Effect::Create);
        reply(
            202,
            json!({"droplet": json, "links": {"actions": [{
                "id": action_id, "rel": "create", "href": format!("{}/v2/actions/{action_id}", self.base_url),
            }]}}),
        )
    }

    pub(super) fn droplet_action(self: &Arc<Self>, id: u64, body: &Value) -> Reply {
        let kind = body["type"].as_str().unwrap_or_default().to_owned();
        let config = self.config();
        let mut state = self.lock();
        let Some(droplet) = state.droplets.get(&id) else {
            return not_found();
        };
        if droplet.pending.is_some() {
            return unprocessable("Droplet already has a pending event.");
        }
        let (status, region) = (droplet.status, droplet.region.clone());
        let on = status == DropletStatus::Active;
        let (effect, wait) = match kind.as_str() {
            "power_on" if on => (Effect::Nothing, Duration::ZERO),
            "power_on" => (Effect::PowerOn, config.action_time),
            "shutdown" | "power_off" if !on => (Effect::Nothing, Duration::ZERO),
            "shutdown" if config.shutdown_ignored => (Effect::Nothing, config.shutdown_ignored_for),
            "shutdown" => (Effect::Shutdown, config.action_time),
            "power_off" => (Effect::PowerOff, config.action_time / 2),
            "reboot" if on => (Effect::Reboot, config.action_time),
            "reboot" => (Effect::PowerOn, config.action_time),
            "snapshot" => {
                let name = body["name"]
                    .as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| format!("{}-{}", droplet.name, Utc::now().timestamp()));
                (Effect::Snapshot(name), config.snapshot_time)
            }
            "resize" => {
                let size = body["size"].as_str().unwrap_or_default().to_owned();
                let Some(target) = SIZES.iter().find(|s| s.0 == size) else {
                    return unprocessable("You specified an invalid size for Droplet resize.");
                };
                // A disk never shrinks: a size with a smaller one is out of reach.
                if target.3 < droplet.disk {
                    return unprocessable(&format!(
                        "This size is not available because it has a smaller disk ({} GB) than the Droplet ({} GB).",
                        target.3, droplet.disk
                    ));
                }
                if on {
                    return unprocessable("Droplet must be powered off before it can be resized.");
                }
                let disk = if body["disk"].as_bool().unwrap_or(false) {
                    target.3
                } else {
                    droplet.disk
                };
                (Effect::Resize(size, disk), config.resize_time)
            }
            other => {
                return unprocessable(&format!("the fake does not support {other:?} actions"));
            }
        };
        let action_id = state.next_id();
        let mut action = new_action(action_id, &kind, id as i64, "droplet", &region);
        // `shutdown` of a machine that ignores it ends in an error.
        let errored = kind == "shutdown" && on && config.shutdown_ignored;
        if wait.is_zero() {
            action.status = "completed";
            action.completed_at = Some(Utc::now());
        } else if let Some(d) = state.droplets.get_mut(&id) {
            d.pending = Some(action_id);
        }
        let json = action.json();
        state.actions.insert(action_id, action);
        drop(state);
        if !wait.is_zero() {
            let effect = if errored { Effect::Nothing } else { effect };
            self.schedule_with(action_id, id, wait, effect, errored);
        }
        reply(201, json!({"action": json}))
    }

    pub(super) fn destroy_droplets(
        self: &Arc<Self>,
        matches: impl Fn(&Droplet) -> bool,
        one: bool,
    ) -> Reply {
        let gone: Vec<Droplet> = {
            let mut state = self.lock();
            let ids: Vec<u64> = state
                .droplets
                .values()
                .filter(|d| matches(d))
                .map(|d| d.id)
                .collect();
            let gone: Vec<Droplet> = ids
                .iter()
                .filter_map(|id| state.droplets.remove(id))
                .collect();
            let now = chrono::Utc::now();
            for droplet in &gone {
                state.billed += now - droplet.created_at;
            }
            gone
        };
        if one && gone.is_empty() {
            return not_found();
        }
        let destroy_time = self.config().destroy_time;
        for droplet in gone {
            let inner = self.clone();
            let busy = self.holds.busy();
            tokio::spawn(async move {
                let _busy = busy;
                let (dir, uid, ip, slot) = (
                    droplet.dir.clone(),
                    uid(droplet.slot),
                    droplet.ip,
                    droplet.slot,
                );
                let _ = tokio::task::spawn_blocking(move || {
                    machine::halt(&dir, uid, ip);
                    let _ = std::fs::remove_dir_all(&dir);
                })
                .await;
                machine::release_address(slot);
                // Volumes come free a few seconds after the droplet is gone.
                tokio::time::sleep(destroy_time).await;
                let mut state = inner.lock();
                for v in state.volumes.values_mut() {
                    v.droplet_ids.retain(|d| *d != droplet.id);
                }
            });
        }
        no_content()
    }

    pub(super) fn create_volume(&self, body: &Value) -> Reply {
        let name = body["name"].as_str().unwrap_or_default().to_owned();
        let region = body["region"].as_str().unwrap_or_default().to_owned();
        let valid_name = name.len() <= 64
            && name.starts_with(|c: char| c.is_ascii_lowercase())
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !valid_name {
            return unprocessable(
                "Volume name must be at most 64 lowercase letters, numbers and hyphens, starting with a letter.",
            );
        }
        let size = body["size_gigabytes"].as_i64().unwrap_or(0);
        if !(1..=16 * 1024).contains(&size) {
            return unprocessable("Volume size must be between 1 and 16384 GiB.");
        }
        let mut state = self.lock();
        if state
            .volumes
            .values()
            .any(|v| v.name == name && v.region == region)
        {
            return error(
                409,
                "conflict",
                "a volume with that name already exists in this region",
            );
        }
        let id = uuid::Uuid::new_v4().to_string();
        let volume = Volume {
            dir: self.root.join("volumes").join(&id),
            id: id.clone(),
            name,
            region,
            size_gigabytes: size,
            description: body["description"].as_str().unwrap_or_default().to_owned(),
            filesystem_type: body["filesystem_type"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            filesystem_label: body["filesystem_label"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            tags: body["tags"]
                .as_array()
                .map(|t| {
                    t.iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default(),
            droplet_ids: Vec::new(),
            created_at: Utc::now(),
        };
        if let Err(e) = std::fs::create_dir_all(&volume.dir) {
            return error(500, "server_error", &e.to_string());
        }
        let json = volume.json();
        state.volumes.insert(id, volume);
        reply(201, json!({"volume": json}))
    }

    pub(super) fn delete_volume(&self, id: &str) -> Reply {
        let mut state = self.lock();
        match state.volumes.get(id) {
            None => not_found(),
            Some(v) if !v.droplet_ids.is_empty() => error(
                409,
                "conflict",
                "A volume that's attached to a Droplet cannot be deleted. Please detach it first before deleting.",
            ),
            Some(_) => {
                if let Some(v) = state.volumes.remove(id) {
                    let _ = std::fs::remove_dir_all(&v.dir);
                }
                no_content()
            }
        }
    }

    pub(super) fn volume_action(self: &Arc<Self>, id: &str, body: &Value) -> Reply {
        let kind = body["type"].as_str().unwrap_or_default();
        let droplet = body["droplet_id"].as_u64().unwrap_or(0);
        let mut state = self.lock();
        let Some(volume) = state.volumes.get(id) else {
            return not_found();
        };
        let region = volume.region.clone();
        let Some(d) = state.droplets.get(&droplet) else {
            return unprocessable("Droplet could not be found.");
        };
        let effect = match kind {
            "attach" if volume.droplet_ids.contains(&droplet) => Effect::Nothing,
            "attach" if !volume.droplet_ids.is_empty() => {
                return unprocessable("Volume is already attached to another Droplet.");
            }
            "attach" if d.region != region => {
                return unprocessable("Volume and Droplet must be in the same region.");
            }
            "attach" => Effect::Attach(id.to_owned()),
            "detach" if !volume.droplet_ids.contains(&droplet) => {
                return unprocessable("Attachment not found");
            }
            "detach" => Effect::Detach(id.to_owned()),
            other => {
                return unprocessable(&format!(
                    "the fake does not support {other:?} volume actions"
                ));
            }
        };
        let action_id = state.next_id();
        let action = new_action(
            action_id,
            &format!("{kind}_volume"),
            droplet as i64,
            "volume",
            &region,
        );
        let json = action.json();
        state.actions.insert(action_id, action);
        drop(state);
        let wait = self.config().action_time / 2;
        self.schedule(action_id, droplet, wait, effect);
        reply(202, json!({"action": json}))
    }
}
