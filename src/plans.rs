//! Subscription plans and what each allows. One table, read by quotas and `/api/v1/info`.

use std::io::Write;
use std::num::NonZeroU32;

use diesel::deserialize::{self, FromSql, FromSqlRow};
use diesel::expression::AsExpression;
use diesel::pg::{Pg, PgValue};
use diesel::serialize::{self, IsNull, Output, ToSql};
use diesel::sql_types::Text;
use serde::{Deserialize, Serialize};

#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    AsExpression,
    FromSqlRow,
    utoipa::ToSchema,
)]
#[diesel(sql_type = Text)]
#[serde(rename_all = "snake_case")]
pub enum Plan {
    Free,
    Starter,
    Pro,
    Admin,
}

/// What a plan allows. `None` means unlimited.
#[derive(Debug, Clone, Copy, Serialize, utoipa::ToSchema)]
pub struct PlanLimits {
    /// Environments that are not stopped (`null`: unlimited).
    pub active_environments: Option<u32>,
    /// Environments in total, stopped ones included (`null`: unlimited).
    pub total_environments: Option<u32>,
    /// The largest machine size the plan may use.
    #[schema(example = "small")]
    pub max_size: &'static str,
    /// Concurrent terminal connections (`null`: unlimited).
    pub terminal_connections: Option<u32>,
    /// The longest keep-awake (`POST /environments/{id}/keep-awake`), in minutes.
    pub max_keep_awake_minutes: u32,
    /// Servers of one's own registered (`null`: unlimited).
    pub servers: Option<u32>,
    /// Compose apps on them (`null`: unlimited).
    pub apps: Option<u32>,
}

impl Plan {
    pub const ALL: [Plan; 4] = [Plan::Free, Plan::Starter, Plan::Pro, Plan::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Plan::Free => "free",
            Plan::Starter => "starter",
            Plan::Pro => "pro",
            Plan::Admin => "admin",
        }
    }

    pub fn limits(self) -> PlanLimits {
        match self {
            Plan::Free => PlanLimits {
                active_environments: Some(1),
                total_environments: Some(3),
                max_size: "small",
                terminal_connections: Some(5),
                max_keep_awake_minutes: 120,
                servers: Some(2),
                apps: Some(5),
            },
            Plan::Starter => PlanLimits {
                active_environments: Some(3),
                total_environments: Some(10),
                max_size: "medium",
                terminal_connections: Some(15),
                max_keep_awake_minutes: 480,
                servers: Some(5),
                apps: Some(20),
            },
            Plan::Pro => PlanLimits {
                active_environments: Some(10),
                total_environments: Some(30),
                max_size: "large",
                terminal_connections: Some(50),
                max_keep_awake_minutes: 1440,
                servers: Some(20),
                apps: Some(100),
            },
            Plan::Admin => PlanLimits {
                active_environments: None,
                total_environments: None,
                max_size: "xlarge",
                terminal_connections: None,
                max_keep_awake_minutes: 10080,
                servers: None,
                apps: None,
            },
        }
    }
}

impl Plan {
    /// How many times `DEVPOCKET_RATE_LIMIT_USER` (the free plan's rate) the plan may
    /// make; `None`: no per-user limit (the per-address limit still applies).
    pub fn rate_limit_multiplier(self) -> Option<NonZeroU32> {
        match self {
            Plan::Free => NonZeroU32::new(1),
            Plan::Starter => NonZeroU32::new(2),
            Plan::Pro => NonZeroU32::new(4),
            Plan::Admin => None,
        }
    }
}

/// A machine size: what it offers, as strings the app shows.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Size {
    pub name: &'static str,
    pub cpu: &'static str,
    pub memory: &'static str,
    pub storage: &'static str,
}

/// Sizes from smallest to largest.
pub const SIZES: [Size; 4] = [
    Size {
        name: "small",
        cpu: "1",
        memory: "1Gi",
        storage: "10Gi",
    },
    Size {
        name: "medium",
        cpu: "2",
        memory: "4Gi",
        storage: "25Gi",
    },
    Size {
        name: "large",
        cpu: "4",
        memory: "8Gi",
        storage: "50Gi",
    },
    Size {
        name: "xlarge",
        cpu: "8",
        memory: "16Gi",
        storage: "100Gi",
    },
];

pub fn size(name: &str) -> Option<&'static Size> {
    SIZES.iter().find(|s| s.name == name)
}

impl Plan {
    /// Whether a machine of `vcpus` CPUs and `memory_mib` MiB of memory is within
    /// the plan's largest size (for cloud sizes that are not DevPocket's own).
    pub fn fits(self, vcpus: u64, memory_mib: u64) -> bool {
        let Some(max) = size(self.limits().max_size) else {
            return false;
        };
        let cpus: u64 = max.cpu.parse().unwrap_or(0);
        let memory: u64 = max
            .memory
            .strip_suffix("Gi")
            .and_then(|g| g.parse::<u64>().ok())
            .map_or(0, |g| g * 1024);
        vcpus <= cpus && memory_mib <= memory
    }

    /// Whether the plan may use a machine of this size.
    pub fn allows_size(self, name: &str) -> bool {
        let rank = |n: &str| SIZES.iter().position(|s| s.name == n);
        matches!((rank(name), rank(self.limits().max_size)), (Some(a), Some(b)) if a <= b)
    }
}

impl std::fmt::Display for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Plan {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Plan::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| format!("`{s}` is not a plan (free, starter, pro, admin)"))
    }
}

impl ToSql<Text, Pg> for Plan {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> serialize::Result {
        out.write_all(self.as_str().as_bytes())?;
        Ok(IsNull::No)
    }
}

impl FromSql<Text, Pg> for Plan {
    fn from_sql(bytes: PgValue<'_>) -> deserialize::Result<Self> {
        let s = std::str::from_utf8(bytes.as_bytes())?;
        Ok(s.parse()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cloud_sizes_fit_a_plan_by_cpus_and_memory() {
        assert!(Plan::Free.fits(1, 1024));
        assert!(!Plan::Free.fits(1, 2048));
        assert!(Plan::Starter.fits(2, 4096));
        assert!(!Plan::Starter.fits(4, 4096));
        assert!(Plan::Admin.fits(8, 16384));
    }
}
