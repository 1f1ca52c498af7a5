//! The fake's operations, dispatched by operationId: reads here (account,
//! regions, sizes, droplets, actions, volumes, snapshots, images), with
//! DigitalOcean's pagination; changes in `resources`, action lifecycles in
//! `effects`. Status codes and error bodies are DigitalOcean's.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Value, json};

use super::Inner;
use super::model::{
    Action, Droplet, IMAGES, REGIONS, SIZES, Snapshot, Volume, public_image_json, region_json,
    size_json,
};

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

pub(super) fn not_found() -> Reply {
    error(
        404,
        "not_found",
        "The resource you were accessing could not be found.",
    )
}

pub(super) fn unprocessable(message: &str) -> Reply {
    error(422, "unprocessable_entity", message)
}

pub(super) fn no_content() -> Reply {
    Reply {
        status: 204,
        body: None,
    }
}

pub(super) type Query = [(String, String)];

pub(super) fn param<'a>(query: &'a Query, name: &str) -> Option<&'a str> {
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
    pub(super) fn page(&self, path: &str, query: &Query, key: &str, items: Vec<Value>) -> Reply {
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

    pub(super) fn with_droplet(
        &self,
        id: u64,
        f: impl FnOnce(&Droplet, &[Snapshot]) -> Reply,
    ) -> Reply {
        let state = self.lock();
        match state.droplets.get(&id) {
            Some(d) => f(d, &state.snapshots),
            None => not_found(),
        }
    }

    pub(super) fn list_droplets(&self, query: &Query) -> Reply {
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

    pub(super) fn image(&self, raw: &str) -> Reply {
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
}
