//! The embedded database: a private PostgreSQL cluster under
//! `$DEVPOCKET_DATA_DIR/postgres`, run from the system's PostgreSQL binaries.
//!
//! It listens only on a unix socket in an owner-only directory, with a random
//! password kept beside it. PostgreSQL refuses to run as root, so when DevPocket runs
//! as root the cluster runs as the unprivileged system user `devpocket-db`.
//!
//! Several DevPocket processes may use one cluster (the server, an admin command,
//! tests): whoever holds `postgres.lock` owns it and stops it when done; the others
//! only connect.

mod cluster;
mod host;
mod running;

pub use host::{ensure_system_group, ensure_system_user, ensure_traversable};

use std::fs::{self, File};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use nix::fcntl::{Flock, FlockArg};
use nix::unistd::{Gid, Uid};

use host::find_binaries;

use crate::config::Secret;

/// The system user the cluster runs as when DevPocket runs as root.
pub const DB_SYSTEM_USER: &str = "devpocket-db";
const SUPERUSER: &str = "devpocket";
pub const DATABASE: &str = "devpocket";
const PORT: u16 = 5432;
/// Unix socket paths are limited to 107 bytes on Linux.
const MAX_SOCKET_PATH: usize = 100;

#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    #[error(
        "PostgreSQL server binaries (initdb, pg_ctl, postgres) were not found. Install them with \
         `apt-get install postgresql` (Debian/Ubuntu) or `dnf install postgresql-server` (Fedora), \
         set DEVPOCKET_PG_BIN to the directory that holds them, or set DATABASE_URL to use an existing server"
    )]
    BinariesMissing,
    #[error("{action} failed: {detail}")]
    Command { action: String, detail: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Setup(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> EmbeddedError + '_ {
    move |source| EmbeddedError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// How durable the cluster must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// The server's data: the PostgreSQL defaults.
    Durable,
    /// Test databases: no fsync, for speed. Never for real data.
    Ephemeral,
}

#[derive(Debug, Clone)]
struct RunAs {
    uid: Uid,
    gid: Gid,
}

/// A handle on the embedded cluster.
#[derive(Debug)]
pub struct EmbeddedPostgres {
    pgdata: PathBuf,
    socket_dir: PathBuf,
    bin_dir: PathBuf,
    password_file: PathBuf,
    run_as: Option<RunAs>,
    durability: Durability,
    password: Secret<String>,
    /// Held while this process owns the cluster.
    lock: Option<Flock<File>>,
    started_here: bool,
}

impl EmbeddedPostgres {
    /// Finds the binaries, prepares the directories (and the system user when
    /// running as root) and creates the cluster on first use. Does not start it.
    pub fn prepare(
        data_dir: &Path,
        bin_dir: Option<&Path>,
        durability: Durability,
    ) -> Result<Self, EmbeddedError> {
        let bin_dir = find_binaries(bin_dir)?;
        crate::data_dir::ensure_data_dir(data_dir)
            .map_err(|e| EmbeddedError::Setup(e.to_string()))?;
        let data_dir = data_dir.canonicalize().map_err(io_err(data_dir))?;
        let run_as = if Uid::effective().is_root() {
            let user = ensure_system_user(DB_SYSTEM_USER)?;
            // The cluster's user must be able to reach (not list) its directory.
            fs::set_permissions(&data_dir, fs::Permissions::from_mode(0o711))
                .map_err(io_err(&data_dir))?;
            ensure_traversable(&data_dir, &format!("u:{DB_SYSTEM_USER}"))?;
            Some(RunAs {
                uid: user.uid,
                gid: user.gid,
            })
        } else {
            None
        };

        let pgdata = data_dir.join("postgres");
        let mut socket_dir = data_dir.join("postgres-run");
        if socket_dir.as_os_str().len() + 16 > MAX_SOCKET_PATH {
            // A deep data directory would overflow the socket path: use a short
            // private directory named after it instead.
            use sha2::Digest;
            let digest = hex::encode(sha2::Sha256::digest(
                data_dir.as_os_str().as_encoded_bytes(),
            ));
            socket_dir = std::env::temp_dir().join(format!("devpocket-pg-{}", &digest[..16]));
        }
        let password_file = data_dir.join("postgres.password");
        let lock_path = data_dir.join("postgres.lock");
        let lock_file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        let lock = Flock::lock(lock_file, FlockArg::LockExclusiveNonblock).ok();

        let mut pg = Self {
            pgdata,
            socket_dir,
            bin_dir,
            password_file,
            run_as,
            durability,
            password: Secret::new(String::new()),
            lock,
            started_here: false,
        };
        pg.password = Secret::new(pg.load_or_create_password()?);
        if !pg.pgdata.join("PG_VERSION").exists() {
            if pg.lock.is_none() {
                return Err(EmbeddedError::Setup(format!(
                    "another DevPocket process is creating the database cluster in {}; try again in a moment",
                    pg.pgdata.display()
                )));
            }
            pg.init_cluster()?;
        }
        Ok(pg)
    }

    /// Whether this process owns the cluster (and so stops it).
    pub fn is_owner(&self) -> bool {
        self.lock.is_some()
    }

    /// The connection URL of a database in this cluster.
    pub fn url(&self, database: &str) -> Secret<String> {
        let host: String =
            url::form_urlencoded::byte_serialize(self.socket_dir.as_os_str().as_encoded_bytes())
                .collect();
        Secret::new(format!(
            "postgresql://{SUPERUSER}:{}@localhost/{database}?host={host}&port={PORT}",
            self.password.expose()
        ))
    }

    fn pg_command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin_dir.join(program));
        cmd.current_dir("/")
            .env("LC_ALL", "C.UTF-8")
            .env_remove("PGDATA");
        if let Some(run_as) = &self.run_as {
            cmd.uid(run_as.uid.as_raw()).gid(run_as.gid.as_raw());
        }
        cmd
    }
}

fn describe(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let text = if stderr.trim().is_empty() {
        stdout.trim()
    } else {
        stderr.trim()
    };
    format!("{} ({})", text, out.status)
}
