//! The idle auto-stop: each plan's idle timeout, how often each process looks for
//! idle environments, and how long before a stop their terminals are warned.

use std::time::Duration;

use super::ConfigError;
use super::source::{Source, invalid, parse_duration};
use crate::plans::Plan;

#[derive(Debug, Clone)]
pub struct AutoStopSettings {
    /// Each plan's idle timeout (`None`: never), in `Plan::ALL`'s order.
    timeouts: [Option<Duration>; 4],
    /// How often each process looks for idle environments; also how often a
    /// terminal session reports its input.
    pub check_every: Duration,
    /// How long before an idle stop its terminals are warned.
    pub warning: Duration,
}

impl AutoStopSettings {
    pub(super) fn load(source: &Source) -> Result<Self, ConfigError> {
        const KEYS: [(&str, u64); 4] = [
            ("DEVPOCKET_AUTO_STOP_FREE", 30 * 60),
            ("DEVPOCKET_AUTO_STOP_STARTER", 2 * 3600),
            ("DEVPOCKET_AUTO_STOP_PRO", 8 * 3600),
            ("DEVPOCKET_AUTO_STOP_ADMIN", 0),
        ];
        let mut timeouts = [None; 4];
        for (slot, (key, default)) in timeouts.iter_mut().zip(KEYS) {
            let timeout = match source.get(key) {
                None => Duration::from_secs(default),
                Some(v) => parse_duration(v).ok_or_else(|| {
                    invalid(
                        key,
                        format!("`{v}` is not a duration such as 30m, 2h or 0 (never)"),
                    )
                })?,
            };
            *slot = Some(timeout).filter(|t| !t.is_zero());
        }
        Ok(Self {
            timeouts,
            check_every: source.duration("DEVPOCKET_AUTO_STOP_CHECK", Duration::from_secs(30))?,
            warning: source.cache_ttl("DEVPOCKET_AUTO_STOP_WARNING", Duration::from_secs(300))?,
        })
    }

    /// The plan's idle timeout, which is also the longest an environment of it may
    /// choose; `None`: never stopped for being idle.
    pub fn plan_timeout(&self, plan: Plan) -> Option<Duration> {
        let i = Plan::ALL.iter().position(|p| *p == plan).unwrap_or(0);
        self.timeouts[i]
    }
}
