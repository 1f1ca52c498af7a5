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

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use nix::unistd::{Gid, Uid, User};

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

    /// Starts the cluster unless it is already running, and waits until it accepts
    /// connections.
    pub fn ensure_running(&mut self) -> Result<(), EmbeddedError> {
        if self.is_running()? {
            return Ok(());
        }
        if self.lock.is_none() {
            // Another process owns the cluster and is starting it.
            return self.wait_until_running(Duration::from_secs(60));
        }
        self.write_runtime_config()?;
        let log = self.pgdata.join("server.log");
        let out = self
            .pg_command("pg_ctl")
            .arg("start")
            .arg("-D")
            .arg(&self.pgdata)
            .arg("-l")
            .arg(&log)
            .args(["-w", "-t", "60", "-s"])
            .output()
            .map_err(io_err(&self.bin_dir))?;
        if !out.status.success() {
            let tail = fs::read_to_string(&log)
                .map(|l| l.lines().rev().take(5).collect::<Vec<_>>().join(" | "))
                .unwrap_or_default();
            return Err(EmbeddedError::Command {
                action: "starting the embedded PostgreSQL".into(),
                detail: format!("{} {tail}", describe(&out)),
            });
        }
        self.started_here = true;
        tracing::info!(pgdata = %self.pgdata.display(), "embedded PostgreSQL started");
        Ok(())
    }

    fn wait_until_running(&self, timeout: Duration) -> Result<(), EmbeddedError> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.is_running()? && self.socket_dir.join(format!(".s.PGSQL.{PORT}")).exists() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Err(EmbeddedError::Setup(format!(
            "the embedded PostgreSQL in {} did not come up within {}s",
            self.pgdata.display(),
            timeout.as_secs()
        )))
    }

    pub fn is_running(&self) -> Result<bool, EmbeddedError> {
        let out = self
            .pg_command("pg_ctl")
            .arg("status")
            .arg("-D")
            .arg(&self.pgdata)
            .output()
            .map_err(io_err(&self.bin_dir))?;
        Ok(out.status.success())
    }

    /// Whether this process owns the cluster (and so stops it).
    pub fn is_owner(&self) -> bool {
        self.lock.is_some()
    }

    /// Stops the cluster if this process owns it.
    pub fn stop(&mut self) -> Result<(), EmbeddedError> {
        if self.lock.is_none() || !self.is_running()? {
            return Ok(());
        }
        // Always a fast shutdown: a smart one that times out keeps refusing new
        // connections. Whether others still need the cluster is the caller's call.
        let out = self
            .pg_command("pg_ctl")
            .arg("stop")
            .arg("-D")
            .arg(&self.pgdata)
            .args(["-m", "fast", "-w", "-t", "60", "-s"])
            .output()
            .map_err(io_err(&self.bin_dir))?;
        if out.status.success() {
            tracing::info!("embedded PostgreSQL stopped");
            Ok(())
        } else {
            Err(EmbeddedError::Command {
                action: "stopping the embedded PostgreSQL".into(),
                detail: describe(&out),
            })
        }
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

    fn load_or_create_password(&self) -> Result<String, EmbeddedError> {
        use rand::RngCore;
        match fs::read_to_string(&self.password_file) {
            Ok(p) if !p.trim().is_empty() => return Ok(p.trim().to_owned()),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&self.password_file)(e)),
        }
        if self.pgdata.join("PG_VERSION").exists() {
            return Err(EmbeddedError::Setup(format!(
                "{} is missing but the cluster in {} exists: restore the file or remove the cluster",
                self.password_file.display(),
                self.pgdata.display()
            )));
        }
        let mut bytes = [0u8; 24];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        let password = hex::encode(bytes);
        write_private(&self.password_file, password.as_bytes(), None)?;
        Ok(password)
    }

    fn init_cluster(&self) -> Result<(), EmbeddedError> {
        mkdir_private(&self.pgdata, self.run_as.as_ref())?;
        // initdb reads the superuser password from a file its user can read.
        let pwfile = self
            .pgdata
            .parent()
            .unwrap_or(Path::new("/"))
            .join("postgres.initpw");
        write_private(
            &pwfile,
            self.password.expose().as_bytes(),
            self.run_as.as_ref(),
        )?;
        let out = self
            .pg_command("initdb")
            .arg("-D")
            .arg(&self.pgdata)
            .args([
                "-U",
                SUPERUSER,
                "--auth=scram-sha-256",
                "-E",
                "UTF8",
                "--no-locale",
            ])
            .arg(format!("--pwfile={}", pwfile.display()))
            .output();
        let _ = fs::remove_file(&pwfile);
        let out = out.map_err(io_err(&self.bin_dir))?;
        if !out.status.success() {
            // Leave nothing half-made behind: the next start tries again from scratch.
            let _ = fs::remove_dir_all(&self.pgdata);
            return Err(EmbeddedError::Command {
                action: "initdb".into(),
                detail: describe(&out),
            });
        }
        let conf = self.pgdata.join("postgresql.conf");
        let mut file = fs::OpenOptions::new()
            .append(true)
            .open(&conf)
            .map_err(io_err(&conf))?;
        writeln!(
            file,
            "\n# DevPocket: settings rewritten at every start\ninclude_if_exists = 'devpocket.conf'"
        )
        .map_err(io_err(&conf))?;
        tracing::info!(pgdata = %self.pgdata.display(), "embedded PostgreSQL cluster created");
        self.start_once_to_create_database()
    }

    /// Creates the application database right after initdb.
    fn start_once_to_create_database(&self) -> Result<(), EmbeddedError> {
        self.write_runtime_config()?;
        let log = self.pgdata.join("server.log");
        let start = self
            .pg_command("pg_ctl")
            .arg("start")
            .arg("-D")
            .arg(&self.pgdata)
            .arg("-l")
            .arg(&log)
            .args(["-w", "-t", "60", "-s"])
            .output()
            .map_err(io_err(&self.bin_dir))?;
        if !start.status.success() {
            return Err(EmbeddedError::Command {
                action: "first start of the embedded PostgreSQL".into(),
                detail: describe(&start),
            });
        }
        let create = self
            .pg_command("createdb")
            .env("PGPASSWORD", self.password.expose())
            .args(["-h"])
            .arg(&self.socket_dir)
            .args(["-p", &PORT.to_string(), "-U", SUPERUSER, DATABASE])
            .output();
        let stop = self
            .pg_command("pg_ctl")
            .arg("stop")
            .arg("-D")
            .arg(&self.pgdata)
            .args(["-m", "fast", "-w", "-s"])
            .output();
        let create = create.map_err(io_err(&self.bin_dir))?;
        if !create.status.success() {
            return Err(EmbeddedError::Command {
                action: format!("creating the database {DATABASE}"),
                detail: describe(&create),
            });
        }
        stop.map_err(io_err(&self.bin_dir))?;
        Ok(())
    }

    fn write_runtime_config(&self) -> Result<(), EmbeddedError> {
        mkdir_private(&self.socket_dir, self.run_as.as_ref())?;
        let mut conf = format!(
            "listen_addresses = ''\n\
             unix_socket_directories = '{}'\n\
             unix_socket_permissions = 0700\n\
             port = {PORT}\n\
             max_connections = 300\n\
             password_encryption = 'scram-sha-256'\n",
            self.socket_dir.display().to_string().replace('\'', "''")
        );
        if self.durability == Durability::Ephemeral {
            conf.push_str("fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n");
        }
        write_private(
            &self.pgdata.join("devpocket.conf"),
            conf.as_bytes(),
            self.run_as.as_ref(),
        )
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

fn find_binaries(explicit: Option<&Path>) -> Result<PathBuf, EmbeddedError> {
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

fn mkdir_private(dir: &Path, owner: Option<&RunAs>) -> Result<(), EmbeddedError> {
    use std::os::unix::fs::MetadataExt;
    if dir.exists() {
        // The socket directory may live in a shared temporary directory: refuse one
        // that somebody else made.
        let meta = fs::metadata(dir).map_err(io_err(dir))?;
        let me = Uid::effective().as_raw();
        let expected = owner.map_or(me, |o| o.uid.as_raw());
        if meta.uid() != expected && meta.uid() != me {
            return Err(EmbeddedError::Setup(format!(
                "{} belongs to another user; remove it or choose another DEVPOCKET_DATA_DIR",
                dir.display()
            )));
        }
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io_err(dir))?;
    } else {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_err(dir))?;
    }
    if let Some(owner) = owner {
        nix::unistd::chown(dir, Some(owner.uid), Some(owner.gid))
            .map_err(|e| io_err(dir)(e.into()))?;
    }
    Ok(())
}

fn write_private(path: &Path, contents: &[u8], owner: Option<&RunAs>) -> Result<(), EmbeddedError> {
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_err(&tmp))?;
    file.write_all(contents).map_err(io_err(&tmp))?;
    if let Some(owner) = owner {
        nix::unistd::chown(&tmp, Some(owner.uid), Some(owner.gid))
            .map_err(|e| io_err(&tmp)(e.into()))?;
    }
    fs::rename(&tmp, path).map_err(io_err(path))
}
