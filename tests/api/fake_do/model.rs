//! The fake's durable objects (droplets, actions, volumes, snapshot images) and
//! their JSON as DigitalOcean's API shows them.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};

/// Sizes the fake offers: (slug, vcpus, memory MiB, disk GB, $/month).
pub const SIZES: [(&str, u32, u32, u32, f64); 6] = [
    ("s-1vcpu-1gb", 1, 1024, 25, 6.0),
    ("s-1vcpu-2gb", 1, 2048, 50, 12.0),
    ("s-2vcpu-2gb", 2, 2048, 60, 18.0),
    ("s-2vcpu-4gb", 2, 4096, 80, 24.0),
    ("s-4vcpu-8gb", 4, 8192, 160, 48.0),
    ("s-8vcpu-16gb", 8, 16384, 320, 96.0),
];

pub const REGIONS: [(&str, &str); 6] = [
    ("nyc1", "New York 1"),
    ("nyc3", "New York 3"),
    ("sfo3", "San Francisco 3"),
    ("ams3", "Amsterdam 3"),
    ("fra1", "Frankfurt 1"),
    ("lon1", "London 1"),
];

/// Public images: (id, slug, name).
pub const IMAGES: [(u64, &str, &str); 3] = [
    (170_000_001, "ubuntu-24-04-x64", "24.04 (LTS) x64"),
    (170_000_002, "ubuntu-22-04-x64", "22.04 (LTS) x64"),
    (170_000_003, "debian-12-x64", "12 x64"),
];

pub fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

pub fn size_json(slug: &str) -> Option<Value> {
    let (slug, vcpus, memory, disk, monthly) = SIZES.iter().find(|s| s.0 == slug)?;
    Some(json!({
        "slug": slug,
        "memory": memory,
        "vcpus": vcpus,
        "disk": disk,
        "transfer": 1.0,
        "price_monthly": monthly,
        "price_hourly": (monthly / 672.0 * 100_000.0).round() / 100_000.0,
        "regions": REGIONS.iter().map(|r| r.0).collect::<Vec<_>>(),
        "available": true,
        "description": "Basic",
        "disk_info": [{"type": "local", "size": {"amount": disk, "unit": "gib"}}],
    }))
}

pub fn region_json(slug: &str) -> Option<Value> {
    let (slug, name) = REGIONS.iter().find(|r| r.0 == slug)?;
    Some(json!({
        "slug": slug,
        "name": name,
        "sizes": SIZES.iter().map(|s| s.0).collect::<Vec<_>>(),
        "features": ["backups", "ipv6", "metadata", "install_agent", "storage"],
        "available": true,
    }))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropletStatus {
    New,
    Active,
    Off,
}

impl DropletStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::New => "new",
            Self::Active => "active",
            Self::Off => "off",
        }
    }
}

#[derive(Debug, Clone)]
pub enum ImageRef {
    Public(usize),
    Snapshot(u64),
}

#[derive(Debug, Clone)]
pub struct Droplet {
    pub id: u64,
    pub name: String,
    pub region: String,
    pub size: String,
    /// GiB: the size's at creation; grown only by a resize with `disk: true`, and
    /// never shrunk.
    pub disk: u32,
    pub image: ImageRef,
    pub status: DropletStatus,
    pub created_at: DateTime<Utc>,
    pub tags: Vec<String>,
    pub volume_ids: Vec<String>,
    pub ipv6: bool,
    pub monitoring: bool,
    pub user_data: Option<String>,
    pub ip: Ipv4Addr,
    /// The loopback host number behind `ip`.
    pub slot: u32,
    pub snapshot_ids: Vec<u64>,
    /// The action in progress: a second one is refused.
    pub pending: Option<u64>,
    pub dir: PathBuf,
    /// The machine, once the create action has built it.
    pub machine: Option<super::machine::MachineSpec>,
}

#[derive(Debug, Clone)]
pub struct Snapshot {
    pub id: u64,
    pub name: String,
    pub droplet_id: u64,
    pub region: String,
    pub min_disk: u32,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone)]
pub struct Action {
    pub id: u64,
    pub kind: String,
    pub status: &'static str,
    pub started_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
    pub resource_id: i64,
    pub resource_type: &'static str,
    pub region: String,
}

impl Action {
    pub fn json(&self) -> Value {
        json!({
            "id": self.id,
            "status": self.status,
            "type": self.kind,
            "started_at": time(self.started_at),
            "completed_at": self.completed_at.map(time),
            "resource_id": self.resource_id,
            "resource_type": self.resource_type,
            "region": region_json(&self.region),
            "region_slug": self.region,
        })
    }
}

#[derive(Debug, Clone)]
pub struct Volume {
    pub id: String,
    pub name: String,
    pub region: String,
    pub size_gigabytes: i64,
    pub description: String,
    pub filesystem_type: String,
    pub filesystem_label: String,
    pub tags: Vec<String>,
    pub droplet_ids: Vec<u64>,
    pub created_at: DateTime<Utc>,
    /// The directory standing for the block device's filesystem.
    pub dir: PathBuf,
}

impl Volume {
    pub fn json(&self) -> Value {
        json!({
            "id": self.id,
            "name": self.name,
            "region": region_json(&self.region),
            "size_gigabytes": self.size_gigabytes,
            "description": self.description,
            "droplet_ids": self.droplet_ids,
            "created_at": time(self.created_at),
            "filesystem_type": self.filesystem_type,
            "filesystem_label": self.filesystem_label,
            "tags": self.tags,
        })
    }
}

impl Snapshot {
    pub fn image_json(&self) -> Value {
        json!({
            "id": self.id,
            "name": self.name,
            "distribution": "Ubuntu",
            "slug": null,
            "public": false,
            "regions": [self.region],
            "created_at": time(self.created_at),
            "min_disk_size": self.min_disk,
            "size_gigabytes": 2.36,
            "type": "snapshot",
            "status": "available",
            "tags": [],
            "error_message": "",
        })
    }

    pub fn droplet_snapshot_json(&self) -> Value {
        json!({
            "id": self.id,
            "name": self.name,
            "type": "snapshot",
            "regions": [self.region],
            "created_at": time(self.created_at),
            "min_disk_size": self.min_disk,
            "size_gigabytes": 2.36,
        })
    }

    pub fn snapshot_json(&self) -> Value {
        json!({
            "id": self.id.to_string(),
            "name": self.name,
            "regions": [self.region],
            "created_at": time(self.created_at),
            "resource_id": self.droplet_id.to_string(),
            "resource_type": "droplet",
            "min_disk_size": self.min_disk,
            "size_gigabytes": 2.36,
            "tags": [],
        })
    }
}

pub fn public_image_json(index: usize) -> Value {
    let (id, slug, name) = IMAGES[index];
    json!({
        "id": id,
        "name": name,
        "distribution": if slug.starts_with("debian") { "Debian" } else { "Ubuntu" },
        "slug": slug,
        "public": true,
        "regions": REGIONS.iter().map(|r| r.0).collect::<Vec<_>>(),
        "created_at": "2024-04-25T00:00:00Z",
        "min_disk_size": 7,
        "size_gigabytes": 2.36,
        "type": "base",
        "status": "available",
        "tags": [],
        "error_message": "",
    })
}

impl Droplet {
    pub fn json(&self, snapshots: &[Snapshot]) -> Value {
        let size = size_json(&self.size).unwrap_or_else(|| json!({}));
        let image = match &self.image {
            ImageRef::Public(i) => public_image_json(*i),
            ImageRef::Snapshot(id) => snapshots
                .iter()
                .find(|s| s.id == *id)
                .map(Snapshot::image_json)
                .unwrap_or_else(|| json!({"id": id, "type": "snapshot"})),
        };
        // Addresses are assigned while the droplet is created: none while `new`.
        let (v4, v6) = if self.status == DropletStatus::New {
            (json!([]), json!([]))
        } else {
            let private = format!(
                "10.{}.{}.{}",
                self.slot / 65536 % 256,
                self.slot / 256 % 256,
                self.slot % 256
            );
            let v6 = if self.ipv6 {
                json!([{
                    "ip_address": format!("2604:a880:400:d1::{:x}:1", self.slot),
                    "netmask": 64,
                    "gateway": "2604:a880:400:d1::1",
                    "type": "public",
                }])
            } else {
                json!([])
            };
            (
                json!([
                    {"ip_address": private, "netmask": "255.255.0.0", "gateway": "nil", "type": "private"},
                    {"ip_address": self.ip.to_string(), "netmask": "255.0.0.0", "gateway": "127.0.0.1", "type": "public"},
                ]),
                v6,
            )
        };
        let (vcpus, memory) = SIZES
            .iter()
            .find(|s| s.0 == self.size)
            .map(|s| (s.1, s.2))
            .unwrap_or((1, 1024));
        let disk = self.disk;
        let mut features = vec!["droplet_agent", "private_networking"];
        if self.monitoring {
            features.push("monitoring");
        }
        if self.ipv6 {
            features.push("ipv6");
        }
        json!({
            "id": self.id,
            "name": self.name,
            "memory": memory,
            "vcpus": vcpus,
            "disk": disk,
            "disk_info": [{"type": "local", "size": {"amount": disk, "unit": "gib"}}],
            "locked": self.pending.is_some(),
            "status": self.status.as_str(),
            "kernel": null,
            "created_at": time(self.created_at),
            "features": features,
            "backup_ids": [],
            "next_backup_window": null,
            "snapshot_ids": self.snapshot_ids,
            "image": image,
            "volume_ids": self.volume_ids,
            "size": size,
            "size_slug": self.size,
            "networks": {"v4": v4, "v6": v6},
            "region": region_json(&self.region),
            "tags": self.tags,
            "vpc_uuid": "760e09ef-dc84-11e8-981e-3cfdfeaae000",
        })
    }
}
