//! Removing what a crash or an unfinished delete left behind: machines and users
//! that belong to no environment.

use std::collections::HashSet;
use std::fs;
use std::path::Path;

use uuid::Uuid;

use super::{LocalProvider, ProviderError, accounts, blocking, failed};

impl LocalProvider {
    /// Removes the machines (and, as root, the users) under this provider's
    /// directory that belong to none of `live`: what a crash or a delete that
    /// never finished left behind. Returns the environment ids removed.
    pub async fn sweep(&self, live: HashSet<Uuid>) -> Result<Vec<String>, ProviderError> {
        let this = self.clone();
        blocking(move || {
            let mut orphans: HashSet<String> = HashSet::new();
            let entries = fs::read_dir(&this.root)
                .map_err(|e| failed("listing the environments directory", e))?;
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if Uuid::parse_str(&name).is_ok_and(|id| !live.contains(&id)) {
                    orphans.insert(name);
                }
            }
            if this.as_root {
                for (user, home) in accounts::under(&this.root) {
                    let id = home
                        .parent()
                        .and_then(Path::file_name)
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    match Uuid::parse_str(&id) {
                        Ok(uuid) if live.contains(&uuid) => {}
                        Ok(_) => {
                            orphans.insert(id);
                        }
                        // Not one of ours by its home: leave it.
                        Err(_) => tracing::warn!(user, "an environment user with an unexpected home"),
                    }
                }
            }
            let mut removed = Vec::new();
            for id in orphans {
                match this.delete_blocking(&id) {
                    Ok(()) => removed.push(id),
                    Err(e) => tracing::warn!(environment_id = %id, error = %crate::error_chain(&e), "could not remove an orphan machine"),
                }
            }
            Ok(removed)
        })
        .await
    }
}
