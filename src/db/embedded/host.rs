//! What the cluster needs from the host: the PostgreSQL binaries, system users and
//! groups, and traverse access to the data directory.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::unistd::User;

use super::{EmbeddedError, describe, io_err};

pub(super) fn find_binaries(explicit: Option<&Path>) -> Result<PathBuf, EmbeddedError> {
    let has_all = |dir: &Path| {
        ["initdb", "pg_ctl", "postgres", "createdb"]
            .iter()
            .all(|b| dir.join(b).is_file())
    };
    if let Some(dir) = explicit {
        return if has_all(dir) {
            Ok(dir.to_path_buf())
        } else {
            Err(EmbeddedError::Setup(format!(
                "DEVPOCKET_PG_BIN={} does not hold initdb, pg_ctl, postgres and createdb",
                dir.display()
            )))
        };
    }
    // Debian keeps the server binaries out of PATH, one directory per major version:
    // take the newest.
    let mut candidates: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            Some((version, e.path().join("bin")))
        })
        .collect();
    candidates.sort();
    if let Some((_, dir)) = candidates.into_iter().rev().find(|(_, d)| has_all(d)) {
        return Ok(dir);
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && has_all(&dir) {
            return Ok(dir);
        }
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .find(|d| has_all(d))
        .ok_or(EmbeddedError::BinariesMissing)
}

/// Creates (or looks up) an unprivileged system user with no login shell.
pub fn ensure_system_user(name: &str) -> Result<User, EmbeddedError> {
    let lookup = || {
        User::from_name(name)
            .map_err(|e| EmbeddedError::Setup(format!("looking up user {name}: {e}")))
    };
    if let Some(user) = lookup()? {
        return Ok(user);
    }
    let out = Command::new("useradd")
        .args([
            "--system",
            "--user-group",
            "--no-create-home",
            "--home-dir",
            "/nonexistent",
            "--shell",
            "/usr/sbin/nologin",
            name,
        ])
        .output()
        .map_err(|e| {
            EmbeddedError::Setup(format!(
                "running useradd for {name}: {e} (install the `passwd` package)"
            ))
        })?;
    // Exit status 9: created concurrently by another process.
    if !out.status.success() && out.status.code() != Some(9) {
        return Err(EmbeddedError::Command {
            action: format!("creating system user {name}"),
            detail: describe(&out),
        });
    }
    lookup()?.ok_or_else(|| EmbeddedError::Setup(format!("user {name} was not created")))
}

/// Creates (or finds) a system group.
pub fn ensure_system_group(name: &str) -> Result<(), EmbeddedError> {
    if nix::unistd::Group::from_name(name)
        .map_err(|e| EmbeddedError::Setup(format!("looking up group {name}: {e}")))?
        .is_some()
    {
        return Ok(());
    }
    let out = Command::new("groupadd")
        .args(["--system", name])
        .output()
        .map_err(|e| EmbeddedError::Setup(format!("running groupadd for {name}: {e}")))?;
    // Exit status 9: created concurrently by another process.
    if !out.status.success() && out.status.code() != Some(9) {
        return Err(EmbeddedError::Command {
            action: format!("creating system group {name}"),
            detail: describe(&out),
        });
    }
    Ok(())
}

/// Lets `subject` (`u:NAME` or `g:NAME`) pass through (not list) every ancestor of
/// `dir` that others cannot enter, with a POSIX ACL entry (for example `/root` when
/// DevPocket runs from a checkout in root's home).
pub fn ensure_traversable(dir: &Path, subject: &str) -> Result<(), EmbeddedError> {
    let user = subject;
    for ancestor in dir.ancestors().skip(1) {
        let mode = fs::metadata(ancestor)
            .map_err(io_err(ancestor))?
            .permissions()
            .mode();
        if mode & 0o001 != 0 {
            continue;
        }
        let out = Command::new("setfacl")
            .args(["-m", &format!("{subject}:x")])
            .arg(ancestor)
            .output()
            .map_err(|_| {
                EmbeddedError::Setup(format!(
                    "the data directory {} is inside {}, which user {user} cannot enter: install the \
                     `acl` package (apt-get install acl) so DevPocket can grant it traverse-only access, \
                     or set DEVPOCKET_DATA_DIR to a directory outside it (for example /var/lib/devpocket)",
                    dir.display(),
                    ancestor.display()
                ))
            })?;
        if !out.status.success() {
            return Err(EmbeddedError::Command {
                action: format!("granting {user} traverse access to {}", ancestor.display()),
                detail: describe(&out),
            });
        }
    }
    Ok(())
}
