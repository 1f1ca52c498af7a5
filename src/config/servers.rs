//! Users' own servers: how often they are checked, the timeouts of a connection
//! and a command, and whether they may be on private addresses.

use std::time::Duration;

use devpocket_actors::server::ServerSettings;

use super::ConfigError;
use super::source::Source;

#[derive(Debug, Clone)]
pub struct ServersConfig {
    /// How often each registered server is checked.
    pub check_every: Duration,
    /// What the server actors use.
    pub actors: ServerSettings,
    /// How long one of an app's `auto_stop_minutes` (and of an extend) lasts: a
    /// minute, but for tests.
    pub app_minute: Duration,
}

impl ServersConfig {
    pub(super) fn load(source: &Source) -> Result<Self, ConfigError> {
        Ok(Self {
            check_every: source
                .duration("DEVPOCKET_SERVER_CHECK_EVERY", Duration::from_secs(300))?,
            app_minute: source.duration("DEVPOCKET_APPS_MINUTE", Duration::from_secs(60))?,
            actors: ServerSettings {
                connect_timeout: source
                    .duration("DEVPOCKET_SERVER_CONNECT_TIMEOUT", Duration::from_secs(10))?,
                command_timeout: source
                    .duration("DEVPOCKET_SERVER_COMMAND_TIMEOUT", Duration::from_secs(30))?,
                connection_idle: source
                    .duration("DEVPOCKET_SERVER_CONNECTION_IDLE", Duration::from_secs(60))?,
                allow_private_addresses: source.flag("DEVPOCKET_SERVERS_ALLOW_PRIVATE", false)?,
            },
        })
    }
}
