//! Terminal sessions: the output kept for resuming clients, the queue per client,
//! and how long a session outlives its last client.

use std::time::Duration;

use super::ConfigError;
use super::source::{Source, invalid};

#[derive(Debug, Clone)]
pub struct TerminalSettings {
    /// Terminal output kept per session for resuming clients.
    pub buffer_bytes: usize,
    /// Terminal output queued per client before it is dropped as too slow.
    pub client_queue_bytes: usize,
    /// How long a terminal stays connected after its last client leaves.
    pub linger: Duration,
}

impl TerminalSettings {
    pub(super) fn load(source: &Source) -> Result<Self, ConfigError> {
        let buffer_bytes = source.parse(
            "DEVPOCKET_TERMINAL_BUFFER_BYTES",
            256 * 1024usize,
            "a number of bytes",
        )?;
        let client_queue_bytes = source.parse(
            "DEVPOCKET_TERMINAL_CLIENT_QUEUE_BYTES",
            4 * 1024 * 1024usize,
            "a number of bytes",
        )?;
        if client_queue_bytes < 64 * 1024 {
            return Err(invalid(
                "DEVPOCKET_TERMINAL_CLIENT_QUEUE_BYTES",
                "must be at least 65536 (one SSH packet is up to 32 KiB)".to_owned(),
            ));
        }
        Ok(Self {
            buffer_bytes,
            client_queue_bytes,
            linger: source.duration("DEVPOCKET_TERMINAL_LINGER", Duration::from_secs(60))?,
        })
    }
}
