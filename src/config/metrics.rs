//! `/metrics`: the token it may require and the address it may be served on apart.

use std::net::SocketAddr;

use super::source::{Source, invalid};
use super::{ConfigError, Secret};

#[derive(Debug, Clone)]
pub struct MetricsSettings {
    /// When set, `/metrics` needs `Authorization: Bearer` this.
    pub token: Option<Secret<String>>,
    /// When set, `/metrics` is served there instead of on the main listener.
    pub listen: Option<SocketAddr>,
}

impl MetricsSettings {
    pub(super) fn load(source: &Source) -> Result<Self, ConfigError> {
        let token = match source.get("DEVPOCKET_METRICS_TOKEN") {
            Some(t) if t.len() < 16 => {
                return Err(invalid(
                    "DEVPOCKET_METRICS_TOKEN",
                    "must be at least 16 characters (for example: openssl rand -hex 24)",
                ));
            }
            t => t.map(|t| Secret::new(t.to_owned())),
        };
        let listen = match source.get("DEVPOCKET_METRICS_LISTEN") {
            None => None,
            Some(v) => Some(v.parse::<SocketAddr>().map_err(|_| {
                invalid(
                    "DEVPOCKET_METRICS_LISTEN",
                    format!("`{v}` is not an address such as 127.0.0.1:9100"),
                )
            })?),
        };
        Ok(Self { token, listen })
    }
}
