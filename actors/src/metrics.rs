//! Resource use measured on the machine over SSH, from `/proc` and `df`: never
//! invented. One exec samples CPU twice, a fifth of a second apart.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::deps::Deps;
use crate::model::{MachineAccess, MachineKeys};
use crate::ssh::{self, OnceError, SshError};

/// The most a sample may print: a few KiB normally (`/proc/net/dev` grows by a
/// line per interface).
pub const MAX_BYTES: usize = 256 * 1024;
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// Prints: two `/proc/stat` cpu lines, MemTotal and MemAvailable, the home
/// file system's `df -Pk` line, and `/proc/net/dev`.
pub const COMMAND: &str = "head -n1 /proc/stat; sleep 0.2; head -n1 /proc/stat; \
     grep -E '^(MemTotal|MemAvailable):' /proc/meminfo; \
     df -Pk \"$HOME\" | tail -n1; echo '--net'; tail -n +3 /proc/net/dev";

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Metrics {
    /// Percent of CPU time busy over the sample.
    pub cpu_usage: f64,
    /// Percent of memory in use.
    pub memory_usage: f64,
    /// Percent of the home file system in use.
    pub disk_usage: f64,
    /// Bytes received and sent since boot, all interfaces but loopback.
    pub network_in: u64,
    pub network_out: u64,
    pub timestamp: DateTime<Utc>,
}

fn cpu_times(line: &str) -> Option<(u64, u64)> {
    let fields: Vec<u64> = line
        .strip_prefix("cpu ")?
        .split_whitespace()
        .filter_map(|f| f.parse().ok())
        .collect();
    if fields.len() < 4 {
        return None;
    }
    let idle = fields[3] + fields.get(4).copied().unwrap_or(0);
    Some((fields.iter().sum(), idle))
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

pub fn parse(output: &str) -> Option<Metrics> {
    let (head, net) = output.split_once("--net\n").unwrap_or((output, ""));
    let lines: Vec<&str> = head.lines().collect();
    let (total1, idle1) = cpu_times(lines.first()?)?;
    let (total2, idle2) = cpu_times(lines.get(1)?)?;
    let total = total2.saturating_sub(total1);
    let busy = total.saturating_sub(idle2.saturating_sub(idle1));
    let cpu_usage = if total == 0 {
        0.0
    } else {
        busy as f64 * 100.0 / total as f64
    };

    let kib = |name: &str| -> Option<f64> {
        lines
            .iter()
            .find(|l| l.starts_with(name))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    let mem_total = kib("MemTotal:")?;
    let mem_available = kib("MemAvailable:")?;
    let memory_usage = if mem_total > 0.0 {
        (mem_total - mem_available) * 100.0 / mem_total
    } else {
        0.0
    };

    let df = lines.iter().find(|l| l.ends_with('/') || l.contains('%'))?;
    let disk_usage: f64 = df
        .split_whitespace()
        .find(|f| f.ends_with('%'))?
        .trim_end_matches('%')
        .parse()
        .ok()?;

    let (mut network_in, mut network_out) = (0u64, 0u64);
    for line in net.lines() {
        let Some((iface, counters)) = line.split_once(':') else {
            continue;
        };
        if iface.trim() == "lo" {
            continue;
        }
        let c: Vec<u64> = counters
            .split_whitespace()
            .filter_map(|f| f.parse().ok())
            .collect();
        if c.len() >= 9 {
            network_in += c[0];
            network_out += c[8];
        }
    }
    Some(Metrics {
        cpu_usage: round1(cpu_usage),
        memory_usage: round1(memory_usage),
        disk_usage,
        network_in,
        network_out,
        timestamp: Utc::now(),
    })
}

/// Why a sample could not be taken: the message is for the user, the source for
/// the log.
#[derive(Debug, Clone, thiserror::Error)]
pub enum MetricsError {
    #[error("the machine cannot be reached to measure it; try again in a moment")]
    Unreachable(#[source] Arc<SshError>),
    #[error("measuring the machine failed; try again in a moment")]
    Measuring(#[source] Arc<SshError>),
    #[error("the machine's measurements could not be read")]
    Unreadable,
    #[error("the environment's controller stopped; try again")]
    Stopped,
}

/// Takes one sample, on its own connection.
pub async fn sample(
    deps: Arc<Deps>,
    machine: MachineAccess,
    keys: MachineKeys,
) -> Result<Metrics, MetricsError> {
    let out = ssh::run_once(
        &deps, "metrics", &machine, &keys, COMMAND, TIMEOUT, MAX_BYTES,
    )
    .await
    .map_err(|e| match e {
        OnceError::Unreachable(e) => MetricsError::Unreachable(Arc::new(e)),
        OnceError::Failed(e) => MetricsError::Measuring(Arc::new(e)),
    })?;
    parse(&String::from_utf8_lossy(&out.stdout)).ok_or(MetricsError::Unreadable)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_real_sample() {
        let out = "cpu  100 0 100 800 0 0 0 0 0 0\n\
                   cpu  150 0 150 900 0 0 0 0 0 0\n\
                   MemTotal:        1000 kB\n\
                   MemAvailable:     250 kB\n\
                   /dev/vda 1000 420 580 42% /\n\
                   --net\n\
                   lo: 5 0 0 0 0 0 0 0 5 0 0 0 0 0 0 0\n\
                   eth0: 1000 0 0 0 0 0 0 0 2000 0 0 0 0 0 0 0\n";
        let m = parse(out).expect("parse");
        assert_eq!(m.cpu_usage, 50.0);
        assert_eq!(m.memory_usage, 75.0);
        assert_eq!(m.disk_usage, 42.0);
        assert_eq!((m.network_in, m.network_out), (1000, 2000));
    }

    #[test]
    fn garbage_is_none() {
        assert!(parse("nonsense").is_none());
    }
}
