//! The fake's behaviour per operation: droplets (create, get, list by tag or name,
//! delete, delete by tag), droplet actions and their lifecycles, volumes and
//! their attach/detach actions, snapshots, regions, sizes and the account. Status
//! codes and error bodies are DigitalOcean's.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use serde_json::{Value, json};

use super::Inner;
use super::machine::{self, MachineSpec};
use super::model::{
    Action, Droplet, DropletStatus, IMAGES, ImageRef, REGIONS, SIZES, Snapshot, Volume,
    public_image_json, region_json, size_json,
};
use super::userdata::UserData;

/// What the fake answers.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: Option<Value>,
}

pub fn reply(status: u16, body: Value) -> Reply {
    Reply {
        status,
        body: Some(body),
    }
}

pub fn error(status: u16, id: &str, message: &str) -> Reply {
    reply(
        status,
        json!({"id": id, "message": message, "request_id": uuid::Uuid::new_v4().to_string()}),
    )
}

fn not_found() -> Reply {
    error(
        404,
        "not_found",
        "The resource you were accessing could not be found.",
    )
}

fn unprocessable(message: &str) -> Reply {
    error(422, "unprocessable_entity", message)
}

fn no_content() -> Reply {
    Reply {
        status: 204,
        body: None,
    }
}

/// What an action does when it completes.
#[derive(Debug, Clone)]
enum Effect {
    Create,
    PowerOn,
    Shutdown,
    PowerOff,
    Reboot,
    Snapshot(String),
    Resize(String),
    Attach(String),
    Detach(String),
    Nothing,
}

const MAX_USER_DATA: usize = 64 * 1024;

fn valid_tag(tag: &str) -> bool {
    !tag.is_empty()
        && tag.len() <= 255
        && tag
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | ':'))
}

type Query = [(String, String)];

fn param<'a>(query: &'a Query, name: &str) -> Option<&'a str> {
    query
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

impl Inner {
    pub fn dispatch(
        self: &Arc<Self>,
        op: &str,
        vars: &BTreeMap<String, String>,
        query: &Query,
        body: Option<Value>,
    ) -> Reply {
        let body = body.unwrap_or(Value::Null);
        let id = |name: &str| {
            vars.get(name)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let var = |name: &str| vars.get(name).cloned().unwrap_or_default();
        match op {
            "account_get" => reply(
                200,
                json!({"account": {
                    "droplet_limit": 25, "floating_ip_limit": 3, "volume_limit": 100,
                    "email": "devpocket@example.com", "uuid": "b6fr89dbf6d9156cace5f3c78dc9851d957381ef",
                    "email_verified": true, "status": "active", "status_message": "",
                }}),
            ),
            "regions_list" => {
                let items = REGIONS.iter().filter_map(|r| region_json(r.0)).collect();
                self.page("/v2/regions", query, "regions", items)
            }
            "sizes_list" => {
                let items = SIZES.iter().filter_map(|s| size_json(s.0)).collect();
                self.page("/v2/sizes", query, "sizes", items)
            }
            "droplets_create" => self.create_droplet(&body),
            "droplets_list" => self.list_droplets(query),
            "droplets_get" => self.with_droplet(id("droplet_id"), |d, snaps| {
                reply(200, json!({"droplet": d.json(snaps)}))
            }),
            "droplets_destroy" => self.destroy_droplets(|d| d.id == id("droplet_id"), true),
            "droplets_destroy_byTag" => {
                let tag = param(query, "tag_name").unwrap_or_default().to_owned();
                self.destroy_droplets(|d| d.tags.contains(&tag), false)
            }
            "dropletActions_post" => self.droplet_action(id("droplet_id"), &body),
            "dropletActions_get" | "actions_get" => {
                let state = self.lock();
                match state.actions.get(&id("action_id")) {
                    Some(a) => reply(200, json!({"action": a.json()})),
                    None => not_found(),
                }
            }
            "dropletActions_list" => {
                let droplet = id("droplet_id");
                let items = {
                    let state = self.lock();
                    if !state.droplets.contains_key(&droplet) {
                        return not_found();
                    }
                    state
                        .actions
                        .values()
                        .filter(|a| a.resource_type == "droplet" && a.resource_id == droplet as i64)
                        .map(Action::json)
                        .collect()
                };
                self.page(
                    &format!("/v2/droplets/{droplet}/actions"),
                    query,
                    "actions",
                    items,
                )
            }
            "droplets_list_snapshots" => {
                let droplet = id("droplet_id");
                let items = {
                    let state = self.lock();
                    if !state.droplets.contains_key(&droplet) {
                        return not_found();
                    }
                    state
                        .snapshots
                        .iter()
                        .filter(|s| s.droplet_id == droplet)
                        .map(Snapshot::droplet_snapshot_json)
                        .collect()
                };
                self.page(
                    &format!("/v2/droplets/{droplet}/snapshots"),
                    query,
                    "snapshots",
                    items,
                )
            }
            "images_get" => self.image(&var("image_id")),
            "images_delete" | "snapshots_delete" => {
                let key = if op == "images_delete" {
                    "image_id"
                } else {
                    "snapshot_id"
                };
                let mut state = self.lock();
                let before = state.snapshots.len();
                let wanted = var(key);
                state.snapshots.retain(|s| s.id.to_string() != wanted);
                if state.snapshots.len() == before {
                    not_found()
                } else {
                    no_content()
                }
            }
            "snapshots_get" => {
                let state = self.lock();
                match state
                    .snapshots
                    .iter()
                    .find(|s| s.id.to_string() == var("snapshot_id"))
                {
                    Some(s) => reply(200, json!({"snapshot": s.snapshot_json()})),
                    None => not_found(),
                }
            }
            "snapshots_list" => {
                let items = self
                    .lock()
                    .snapshots
                    .iter()
                    .map(Snapshot::snapshot_json)
                    .collect();
                self.page("/v2/snapshots", query, "snapshots", items)
            }
            "volumes_create" => self.create_volume(&body),
            "volumes_list" => {
                let (name, region) = (param(query, "name"), param(query, "region"));
                let items = self
                    .lock()
                    .volumes
                    .values()
                    .filter(|v| name.is_none_or(|n| v.name == n))
                    .filter(|v| region.is_none_or(|r| v.region == r))
                    .map(Volume::json)
                    .collect();
                self.page("/v2/volumes", query, "volumes", items)
            }
            "volumes_get" => match self.lock().volumes.get(&var("volume_id")) {
                Some(v) => reply(200, json!({"volume": v.json()})),
                None => not_found(),
            },
            "volumes_delete" => self.delete_volume(&var("volume_id")),
            "volumeActions_post_byId" => self.volume_action(&var("volume_id"), &body),
            _ => error(
                501,
                "not_implemented",
                &format!("the fake DigitalOcean API does not implement {op}"),
            ),
        }
    }

    /// A page of a listing, with `links.pages` and `meta.total` as DigitalOcean sends them.
    fn page(&self, path: &str, query: &Query, key: &str, items: Vec<Value>) -> Reply {
        let per_page = param(query, "per_page")
            .and_then(|p| p.parse::<usize>().ok())
            .unwrap_or(20)
            .clamp(1, 200);
        let page = param(query, "page")
            .and_then(|p| p.parse::<usize>().ok())
            .unwrap_or(1)
            .max(1);
        let total = items.len();
        let last = total.div_ceil(per_page).max(1);
        let link = |n: usize| {
            let mut url = url::Url::parse(&format!("{}{path}", self.base_url)).expect("url");
            {
                let mut pairs = url.query_pairs_mut();
                for (k, v) in query.iter().filter(|(k, _)| k != "page" && k != "per_page") {
                    pairs.append_pair(k, v);
                }
                pairs.append_pair("page", &n.to_string());
                pairs.append_pair("per_page", &per_page.to_string());
            }
            url.to_string()
        };
        let mut pages = serde_json::Map::new();
        if page < last {
            pages.insert("next".into(), json!(link(page + 1)));
            pages.insert("last".into(), json!(link(last)));
        }
        if page > 1 {
            pages.insert("first".into(), json!(link(1)));
            pages.insert("prev".into(), json!(link(page - 1)));
        }
        let slice: Vec<Value> = items
            .into_iter()
            .skip((page - 1) * per_page)
            .take(per_page)
            .collect();
        reply(
            200,
            json!({key: slice, "links": {"pages": pages}, "meta": {"total": total}}),
        )
    }

    fn with_droplet(&self, id: u64, f: impl FnOnce(&Droplet, &[Snapshot]) -> Reply) -> Reply {
        let state = self.lock();
        match state.droplets.get(&id) {
            Some(d) => f(d, &state.snapshots),
            None => not_found(),
        }
    }

    fn list_droplets(&self, query: &Query) -> Reply {
        let (tag, name) = (param(query, "tag_name"), param(query, "name"));
        let items = {
            let state = self.lock();
            state
                .droplets
                .values()
                .filter(|d| tag.is_none_or(|t| d.tags.iter().any(|x| x == t)))
                .filter(|d| name.is_none_or(|n| d.name == n))
                .map(|d| d.json(&state.snapshots))
                .collect()
        };
        self.page("/v2/droplets", query, "droplets", items)
    }

    fn image(&self, raw: &str) -> Reply {
        if let Some(i) = IMAGES
            .iter()
            .position(|(id, slug, _)| raw == *slug || raw == id.to_string())
        {
            return reply(200, json!({"image": public_image_json(i)}));
        }
        match self
            .lock()
            .snapshots
            .iter()
            .find(|s| s.id.to_string() == raw)
        {
            Some(s) => reply(200, json!({"image": s.image_json()})),
            None => not_found(),
        }
    }

    fn create_droplet(self: &Arc<Self>, body: &Value) -> Reply {
        if body.get("names").is_some() {
            return unprocessable("the fake creates one Droplet per request");
        }
        let name = body["name"].as_str().unwrap_or_default().to_owned();
        let region = body["region"].as_str().unwrap_or("nyc3").to_owned();
        let size = body["size"].as_str().unwrap_or_default().to_owned();
        if !REGIONS.iter().any(|r| r.0 == region) {
            return unprocessable("You specified an invalid region for Droplet creation.");
        }
        if !SIZES.iter().any(|s| s.0 == size) {
            return unprocessable("You specified an invalid size for Droplet creation.");
        }
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

    fn droplet_action(self: &Arc<Self>, id: u64, body: &Value) -> Reply {
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
                if !SIZES.iter().any(|s| s.0 == size) {
                    return unprocessable("You specified an invalid size for Droplet resize.");
                }
                if on {
                    return unprocessable("Droplet must be powered off before it can be resized.");
                }
                (Effect::Resize(size), config.resize_time)
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

    fn destroy_droplets(self: &Arc<Self>, matches: impl Fn(&Droplet) -> bool, one: bool) -> Reply {
        let gone: Vec<Droplet> = {
            let mut state = self.lock();
            let ids: Vec<u64> = state
                .droplets
                .values()
                .filter(|d| matches(d))
                .map(|d| d.id)
                .collect();
            ids.iter()
                .filter_map(|id| state.droplets.remove(id))
                .collect()
        };
        if one && gone.is_empty() {
            return not_found();
        }
        let destroy_time = self.config().destroy_time;
        for droplet in gone {
            let inner = self.clone();
            tokio::spawn(async move {
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

    fn create_volume(&self, body: &Value) -> Reply {
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

    fn delete_volume(&self, id: &str) -> Reply {
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

    fn volume_action(self: &Arc<Self>, id: &str, body: &Value) -> Reply {
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

    fn schedule(self: &Arc<Self>, action: u64, droplet: u64, wait: Duration, effect: Effect) {
        self.schedule_with(action, droplet, wait, effect, false);
    }

    /// Completes an action after `wait`, applying its effect (booting or halting
    /// the machine off the async threads).
    fn schedule_with(
        self: &Arc<Self>,
        action: u64,
        droplet: u64,
        wait: Duration,
        effect: Effect,
        errored: bool,
    ) {
        let inner = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
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

    async fn apply(self: &Arc<Self>, droplet: u64, effect: Effect) -> bool {
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
                let booted = tokio::task::spawn_blocking(move || spec.boot()).await;
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
                    min_disk: SIZES.iter().find(|s| s.0 == d.size).map_or(25, |s| s.3),
                    created_at: Utc::now(),
                };
                state.snapshots.push(snapshot);
                true
            }
            Effect::Resize(size) => {
                if let Some(d) = self.lock().droplets.get_mut(&droplet) {
                    d.size = size;
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

    fn boot_result(&self, booted: Result<Result<(), String>, tokio::task::JoinError>) {
        match booted {
            Ok(Ok(())) => {}
            Ok(Err(e)) => self.violation(format!("a fake droplet failed to boot: {e}")),
            Err(e) => self.violation(format!("a fake droplet failed to boot: {e}")),
        }
    }

    /// The machine a droplet's user-data describes.
    fn machine_spec(&self, droplet: u64) -> Result<Option<MachineSpec>, String> {
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

fn new_action(
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
