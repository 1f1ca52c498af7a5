//! Environments: this server's lease on each, how long provisioning may take, and
//! how long a user's list may be answered from memory.

use std::time::Duration;

use super::ConfigError;
use super::source::Source;

#[derive(Debug, Clone)]
pub struct EnvironmentSettings {
    /// How long this process's claim on an environment lasts without renewal.
    pub lease_ttl: Duration,
    /// Provisioning that has not finished after this long fails.
    pub provision_timeout: Duration,
    /// How long a user's list of environments may be answered from memory.
    pub list_cache_ttl: Duration,
}

impl EnvironmentSettings {
    pub(super) fn load(source: &Source) -> Result<Self, ConfigError> {
        Ok(Self {
            lease_ttl: source.duration("DEVPOCKET_LEASE_TTL", Duration::from_secs(30))?,
            provision_timeout: source
                .duration("DEVPOCKET_PROVISION_TIMEOUT", Duration::from_secs(30 * 60))?,
            list_cache_ttl: source.cache_ttl("DEVPOCKET_LIST_CACHE_TTL", Duration::from_secs(1))?,
        })
    }
}
