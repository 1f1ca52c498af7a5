//! The local provider, the embedded default: a machine is a private OpenSSH `sshd`
//! on a loopback port with its own host key, serving a home directory under
//! `<root>/<environment id>/home`. Its "cloud-init" runs the template's bootstrap
//! once, detached from the server (like a real machine, it goes on if the server
//! dies), writing the provisioning log in the home directory.
//!
//! When the server runs as root (the isolated mode), every environment gets its own
//! unprivileged system user with an id never used before on this host (see
//! `accounts`), and its own mount namespace in which `/tmp`, `/var/tmp`, `/dev/shm`,
//! `/run/lock` are private directories of the machine and the home is mounted
//! `nosuid,nodev`: one environment can neither read another's files nor leave
//! anything where another could find it. Whatever the server does inside a home
//! it does as that user (see `tenant`); as root it only touches directories no
//! tenant can write. Otherwise environments run as the server's user (see README).
//!
//! The template's packages come from the host (see `packages`): as root, the ones it
//! lacks are installed before the init starts (see `install`); unprivileged, they
//! must be there.

mod accounts;
mod install;
mod packages;
mod tenant;

use std::collections::HashSet;
use std::fs;
use std::io::Write;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::{Pid, Uid};
use uuid::Uuid;

use self::accounts::Account;
use self::tenant::Tenant;
use super::{BootstrapWatch, Cancel, Machine, MachineSpec, Provider, ProviderError};
use crate::logs::EXIT_MARKER;
use crate::model::MachineAccess;
use crate::ssh::shell_quote;

const SSHD: &str = "/usr/sbin/sshd";
const HOST: &str = "127.0.0.1";
/// Operations on one machine never overlap; machines share these locks by hash.
const LOCK_STRIPES: usize = 64;

#[derive(Debug, Clone)]
pub struct LocalProvider {
    root: PathBuf,
    as_root: bool,
    /// When running as root: the group every environment user joins, which may
    /// pass through the directories above the environments (and nothing more).
    group: Option<String>,
    locks: Arc<[Mutex<()>]>,
    /// The machines whose packages are being installed (by a thread of this process).
    installing: Arc<Mutex<HashSet<String>>>,
}

fn failed(context: &str, err: impl std::fmt::Display) -> ProviderError {
    ProviderError::Failed(format!("{context}: {err}"))
}

/// The files of one local machine. Only `home` (and the machine's private
/// temporary directories) can be written by the environment's user; everything
/// else is root's.
struct Layout {
    dir: PathBuf,
    machine: PathBuf,
    keys: PathBuf,
    home: PathBuf,
    /// The machine's `/tmp` and the like (isolated mode): mounted in its namespace,
    /// unreachable from outside it.
    private: PathBuf,
}

/// The private directories and where the machine sees them.
const PRIVATE_DIRS: [(&str, &str); 4] = [
    ("tmp", "/tmp"),
    ("var-tmp", "/var/tmp"),
    ("shm", "/dev/shm"),
    ("lock", "/run/lock"),
];

/// Starts a machine's sshd in a mount namespace of its own: the private
/// directories (opened before anything is mounted, as they may lie under `/tmp`
/// themselves) over the shared ones, and the home over itself, all `nosuid,nodev`.
/// `$1` is the private directory, `$2` the home, the rest the sshd command.
const NAMESPACE_INIT: &str = r#"set -eu
private=$1 home=$2
shift 2
exec 3<"$private/tmp" 4<"$private/var-tmp" 5<"$private/shm" 6<"$private/lock" 7<"$home"
for pair in 3:/tmp 4:/var/tmp 5:/dev/shm 6:/run/lock 7:"$home"; do
  fd=${pair%%:*} target=${pair#*:}
  [ -d "$target" ] || continue
  mount --bind "/proc/self/fd/$fd" "$target"
  mount -o remount,bind,nosuid,nodev "$target"
done
exec 3<&- 4<&- 5<&- 6<&- 7<&-
exec "$@"
"#;

/// Run as the tenant: the environment's variables for every login shell, and the
/// line in `~/.profile` and `~/.bashrc` that reads them. A start-up file the
/// tenant made unwritable is reported, not fatal.
const WRITE_ENVIRONMENT: &str = r#"set -eu
umask 077
dir="$HOME/.devpocket"
[ -d "$dir" ] || mkdir "$dir"
rm -f "$dir/environment.sh.tmp"
cat > "$dir/environment.sh.tmp"
mv -f "$dir/environment.sh.tmp" "$dir/environment.sh"
hook='[ -f "$HOME/.devpocket/environment.sh" ] && . "$HOME/.devpocket/environment.sh"'
for rc in "$HOME/.profile" "$HOME/.bashrc"; do
  grep -qsF '.devpocket/environment.sh' "$rc" || printf '%s\n' "$hook" >> "$rc" ||
    echo "could not add the environment hook to $rc"
done
"#;

/// Run as the tenant: the bootstrap, unless the init has run already (it says
/// `started` then).
const WRITE_BOOTSTRAP: &str = r#"set -eu
umask 077
dir="$HOME/.devpocket"
if [ -e "$dir/init.lock" ]; then echo started; exit 0; fi
rm -f "$dir/bootstrap.sh.tmp"
cat > "$dir/bootstrap.sh.tmp"
mv -f "$dir/bootstrap.sh.tmp" "$dir/bootstrap.sh"
"#;

impl Layout {
    fn new(root: &Path, id: &str) -> Self {
        let dir = root.join(id);
        Self {
            machine: dir.join("machine"),
            keys: dir.join("keys"),
            home: dir.join("home"),
            private: dir.join("private"),
            dir,
        }
    }
    fn pid_file(&self) -> PathBuf {
        self.machine.join("sshd.pid")
    }
    fn port_file(&self) -> PathBuf {
        self.machine.join("port")
    }
    fn config(&self) -> PathBuf {
        self.machine.join("sshd_config")
    }
    fn bootstrap_pgid(&self) -> PathBuf {
        self.machine.join("bootstrap.pgid")
    }
}

impl LocalProvider {
    /// `root` holds one directory per environment (`$DEVPOCKET_DATA_DIR/environments`).
    /// `group`, when running as root, is the (existing) group environment users join.
    pub fn new(root: PathBuf, group: Option<String>) -> Result<Self, ProviderError> {
        if !Path::new(SSHD).exists() {
            return Err(ProviderError::Failed(
                "OpenSSH server is not installed: apt-get install openssh-server".into(),
            ));
        }
        fs::DirBuilder::new()
            .recursive(true)
            .create(&root)
            .map_err(|e| failed("creating the environments directory", e))?;
        let root = root
            .canonicalize()
            .map_err(|e| failed("resolving the environments directory", e))?;
        ensure_dir(&root, 0o711, None)?;
        Ok(Self {
            root,
            as_root: Uid::effective().is_root(),
            group,
            locks: (0..LOCK_STRIPES).map(|_| Mutex::new(())).collect(),
            installing: Arc::default(),
        })
    }

    /// Serialises the operations on one machine (a create still running in its
    /// thread when the delete that cancelled it starts, say).
    fn lock(&self, id: &str) -> MutexGuard<'_, ()> {
        let stripe = id
            .bytes()
            .fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(b.into()));
        self.locks[stripe % self.locks.len()]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn account(&self, id: &str, home: &Path) -> Result<Account, ProviderError> {
        if self.as_root {
            accounts::ensure(&account_name(id), home, self.group.as_deref())
        } else {
            Account::current()
        }
    }

    fn tenant<'a>(&self, account: &'a Account, layout: &'a Layout) -> Tenant<'a> {
        Tenant {
            account,
            home: &layout.home,
            switch: self.as_root,
        }
    }

    /// Directories, keys and configuration; idempotent.
    fn prepare(&self, spec: &MachineSpec, layout: &Layout) -> Result<Account, ProviderError> {
        ensure_dir(&layout.dir, 0o711, None)?;
        ensure_dir(&layout.machine, 0o700, None)?;
        ensure_dir(&layout.keys, 0o711, None)?;
        let account = self.account(&spec.environment_id.to_string(), &layout.home)?;
        ensure_dir(&layout.home, 0o700, self.as_root.then_some(&account))?;
        if self.as_root {
            ensure_dir(&layout.private, 0o700, None)?;
            for (dir, _) in PRIVATE_DIRS {
                ensure_dir(&layout.private.join(dir), 0o1777, None)?;
            }
        }
        write_file(
            &layout.machine.join("ssh_host_ed25519_key"),
            spec.keys.host_private.as_bytes(),
            0o600,
        )?;
        write_file(
            &layout.keys.join("authorized_keys"),
            format!("{}\n", spec.keys.user_public.trim()).as_bytes(),
            0o644,
        )?;
        Ok(account)
    }

    fn sshd_config(&self, layout: &Layout, account: &Account, port: u16) -> String {
        let q = |p: &Path| format!("\"{}\"", p.display());
        format!(
            "# DevPocket local machine: rewritten at every start\n\
             Port {port}\n\
             ListenAddress {HOST}\n\
             HostKey {host_key}\n\
             AuthorizedKeysFile {authorized}\n\
             PidFile {pid}\n\
             AllowUsers {user}\n\
             PubkeyAuthentication yes\n\
             PasswordAuthentication no\n\
             KbdInteractiveAuthentication no\n\
             UsePAM no\n\
             StrictModes no\n\
             PermitRootLogin no\n\
             X11Forwarding no\n\
             AllowAgentForwarding no\n\
             AllowTcpForwarding no\n\
             PermitTunnel no\n\
             PrintMotd no\n\
             ClientAliveInterval 30\n\
             ClientAliveCountMax 4\n\
             MaxStartups 100:30:200\n\
             MaxSessions 100\n\
             LogLevel ERROR\n\
             AcceptEnv SHLVL\n\
             PermitUserRC no\n\
             SetEnv HOME={home}{tmux}\n",
            host_key = q(&layout.machine.join("ssh_host_ed25519_key")),
            authorized = q(&layout.keys.join("authorized_keys")),
            pid = q(&layout.pid_file()),
            user = account.name,
            home = layout.home.display(),
            tmux = self
                .tmux_dir(layout)
                .map(|d| format!(" TMUX_TMPDIR={}", d.display()))
                .unwrap_or_default(),
        )
    }

    /// Where the machine's tmux server keeps its socket. As root every machine has
    /// its own user and its own `/tmp`; unprivileged, all machines share one user,
    /// so each gets a short private directory (socket paths are limited to 107
    /// bytes, so not under the home directory).
    fn tmux_dir(&self, layout: &Layout) -> Option<PathBuf> {
        if self.as_root {
            return None;
        }
        let id = layout.dir.file_name()?.to_string_lossy().replace('-', "");
        Some(std::env::temp_dir().join(format!("dp-tmux-{}", &id[..id.len().min(12)])))
    }

    /// The machine's sshd, if it runs: the pid in its pid file, checked to be that
    /// sshd (a stale file may name a process that has since taken the number).
    fn sshd_pid(layout: &Layout) -> Option<Pid> {
        let pid: i32 = fs::read_to_string(layout.pid_file())
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let config = layout.config();
        let config = config.to_string_lossy();
        String::from_utf8_lossy(&cmdline)
            .contains(config.as_ref())
            .then(|| Pid::from_raw(pid))
    }

    /// Starts the machine's sshd unless it runs; returns its port.
    fn ensure_sshd(&self, layout: &Layout, account: &Account) -> Result<u16, ProviderError> {
        let saved_port: Option<u16> = fs::read_to_string(layout.port_file())
            .ok()
            .and_then(|p| p.trim().parse().ok());
        // Running means answering on its port: a pid alone can be a zombie that
        // nobody reaped yet (after a crash of the host side, say).
        match (saved_port, Self::sshd_pid(layout)) {
            (Some(port), Some(_)) if TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok() => {
                return Ok(port);
            }
            (_, Some(stale)) => {
                let _ = kill(stale, Signal::SIGKILL);
            }
            _ => {}
        }
        // Keep the port across restarts when it is still free.
        let port = match saved_port {
            Some(port) if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() => port,
            _ => free_port()?,
        };
        write_file(&layout.port_file(), port.to_string().as_bytes(), 0o600)?;
        if let Some(dir) = self.tmux_dir(layout) {
            fs::DirBuilder::new()
                .recursive(true)
                .create(&dir)
                .map_err(|e| failed("creating the tmux directory", e))?;
            ensure_dir(&dir, 0o700, None)?;
        }
        write_file(
            &layout.config(),
            self.sshd_config(layout, account, port).as_bytes(),
            0o600,
        )?;
        let log = layout.machine.join("sshd.log");
        let mut cmd = if self.as_root {
            // sshd's privilege-separation directory.
            let _ = fs::DirBuilder::new().mode(0o755).create("/run/sshd");
            let mut cmd = Command::new("unshare");
            cmd.args(["--mount", "--propagation", "private", "--", "/bin/sh", "-c"])
                .arg(NAMESPACE_INIT)
                .arg("sh")
                .arg(&layout.private)
                .arg(&layout.home)
                .arg(SSHD);
            cmd
        } else {
            Command::new(SSHD)
        };
        let out = cmd
            .arg("-f")
            .arg(layout.config())
            .arg("-E")
            .arg(&log)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| failed("starting sshd", e))?;
        if !out.status.success() {
            let log = fs::read_to_string(&log).unwrap_or_default();
            return Err(failed(
                "starting sshd",
                format!(
                    "{} {}",
                    String::from_utf8_lossy(&out.stderr).trim(),
                    log.trim()
                ),
            ));
        }
        // sshd forks into the background; wait until it accepts connections.
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err() {
            if Instant::now() > deadline {
                return Err(ProviderError::Failed(format!(
                    "sshd did not start listening on port {port}"
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(port)
    }

    /// The environment's variables, for the init and for every login shell; written
    /// at each create and start, so a change takes effect at the next start.
    fn write_environment(
        &self,
        spec: &MachineSpec,
        layout: &Layout,
        account: &Account,
    ) -> Result<(), ProviderError> {
        let mut env_file = String::from(
            "# Environment variables of this DevPocket environment (rewritten at start)\n",
        );
        for (key, value) in &spec.environment_variables {
            env_file.push_str(&format!("export {key}={}\n", shell_quote(value)));
        }
        let said = self.tenant(account, layout).sh(
            "writing the environment's variables",
            WRITE_ENVIRONMENT,
            &[],
            env_file.as_bytes(),
        )?;
        for line in said.lines() {
            tracing::warn!(environment_id = %spec.environment_id, "{line}");
        }
        Ok(())
    }

    /// Writes the bootstrap into the home; false if the init has started already.
    fn write_bootstrap(
        &self,
        spec: &MachineSpec,
        layout: &Layout,
        account: &Account,
    ) -> Result<bool, ProviderError> {
        let said = self.tenant(account, layout).sh(
            "writing the bootstrap",
            WRITE_BOOTSTRAP,
            &[],
            spec.bootstrap.as_bytes(),
        )?;
        Ok(said.trim() != "started")
    }

    /// Runs the bootstrap as the machine's init, once per machine: the init takes an
    /// atomic lock (`mkdir`) before anything else, so a second launch — a resumed
    /// create after a crash — exits at once.
    fn launch_bootstrap(
        &self,
        spec: &MachineSpec,
        layout: &Layout,
        account: &Account,
    ) -> Result<(), ProviderError> {
        let tenant = self.tenant(account, layout);
        // The log is opened by the init itself, as the tenant, after its lock.
        let init = format!(
            "# The machine's init: run the bootstrap once, then say how it ended.\n\
             mkdir \"$HOME/.devpocket/init.lock\" 2>/dev/null || exit 0\n\
             umask 077\n\
             exec >>\"$HOME/.devpocket/provisioning.log\" 2>&1\n\
             cd \"$HOME\"\n\
             . \"$HOME/.devpocket/environment.sh\"\n\
             status=0\n\
             /bin/sh \"$HOME/.devpocket/bootstrap.sh\" 2>&1 || status=$?\n\
             echo \"{EXIT_MARKER}$status\"\n"
        );
        // In the isolated mode it runs where the machine's shells run: in the
        // namespace of its sshd, with its private `/tmp`.
        let namespace =
            if self.as_root {
                Some(Self::sshd_pid(layout).ok_or_else(|| {
                    ProviderError::Failed("the machine's sshd is not running".into())
                })?)
            } else {
                None
            };
        let child = tenant
            .command("/bin/sh", namespace)
            .arg("-c")
            .arg(init)
            .env("DEVPOCKET_ENVIRONMENT_ID", spec.environment_id.to_string())
            .env("DEVPOCKET_ENVIRONMENT", &spec.slug)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| failed("starting the bootstrap", e))?;
        if !self.as_root {
            // Without a user of its own, the machine's processes are found by group.
            write_file(
                &layout.bootstrap_pgid(),
                child.id().to_string().as_bytes(),
                0o600,
            )?;
        }
        // Reap it when it ends, without tying the machine to this thread.
        std::thread::spawn(move || {
            let mut child = child;
            let _ = child.wait();
        });
        Ok(())
    }

    fn machine(account: &Account, port: u16, id: &str, host_public: &str) -> Machine {
        Machine {
            access: MachineAccess {
                host: HOST.to_owned(),
                port,
                user: account.name.clone(),
                host_public_key: host_public.trim().to_owned(),
            },
            provider_ref: id.to_owned(),
        }
    }

    fn create_blocking(
        &self,
        spec: &MachineSpec,
        cancel: &Cancel,
    ) -> Result<Machine, ProviderError> {
        let id = spec.environment_id.to_string();
        // Unprivileged, the packages must be there already: fail before making anything.
        if !self.as_root
            && let Some(missing) = packages::missing(&spec.packages)?
            && !missing.is_empty()
        {
            return Err(packages::unprivileged_error(&missing));
        }
        let _lock = self.lock(&id);
        let layout = Layout::new(&self.root, &id);
        // Given up between steps when the environment is deleted meanwhile: the
        // delete, which waits for this, removes whatever was made.
        cancel.check()?;
        let account = self.prepare(spec, &layout)?;
        cancel.check()?;
        self.write_environment(spec, &layout, &account)?;
        cancel.check()?;
        let port = self.ensure_sshd(&layout, &account)?;
        cancel.check()?;
        let machine = Self::machine(&account, port, &id, &spec.keys.host_public);
        if !self.write_bootstrap(spec, &layout, &account)? {
            return Ok(machine);
        }
        let missing = if self.as_root {
            packages::missing(&spec.packages)?.unwrap_or_default()
        } else {
            Vec::new()
        };
        if missing.is_empty() {
            self.launch_bootstrap(spec, &layout, &account)?;
        } else {
            self.install_then_launch(spec, &account, cancel, missing);
        }
        Ok(machine)
    }

    fn start_blocking(&self, spec: &MachineSpec, id: &str) -> Result<Machine, ProviderError> {
        let _lock = self.lock(id);
        let layout = Layout::new(&self.root, id);
        if !layout.home.exists() {
            return Err(ProviderError::Gone(format!(
                "{} is missing",
                layout.home.display()
            )));
        }
        let account = self.prepare(spec, &layout)?;
        self.write_environment(spec, &layout, &account)?;
        let port = self.ensure_sshd(&layout, &account)?;
        Ok(Self::machine(&account, port, id, &spec.keys.host_public))
    }

    /// Stops sshd and every process of the machine. Callers hold the lock.
    fn stop_locked(&self, id: &str) -> Result<(), ProviderError> {
        let layout = Layout::new(&self.root, id);
        if let Some(pid) = Self::sshd_pid(&layout) {
            let _ = kill(pid, Signal::SIGTERM);
        }
        if self.as_root {
            // Every process of the machine's user: shells, tmux, the bootstrap and
            // whatever they started, in whichever process group.
            if let Some(account) = Account::lookup(&account_name(id))? {
                accounts::kill_all(&account)?;
            }
        } else {
            if let Some(pgid) = fs::read_to_string(layout.bootstrap_pgid())
                .ok()
                .and_then(|p| p.trim().parse::<i32>().ok())
            {
                let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
            }
            // Same user as the server: stop this machine's own tmux server only.
            let _ = Command::new("tmux")
                .env("TMUX_TMPDIR", self.tmux_dir(&layout).unwrap_or_default())
                .arg("kill-server")
                .stderr(Stdio::null())
                .status();
        }
        let _ = fs::remove_file(layout.pid_file());
        Ok(())
    }

    /// Removes everything the machine of environment `id` had: processes, files
    /// (std's `remove_dir_all` never follows a link), user and group.
    fn delete_blocking(&self, id: &str) -> Result<(), ProviderError> {
        let _lock = self.lock(id);
        self.stop_locked(id)?;
        let layout = Layout::new(&self.root, id);
        match fs::remove_dir_all(&layout.dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(failed("removing the environment's files", e));
            }
            _ => {}
        }
        if self.as_root {
            accounts::remove(&account_name(id))?;
        }
        Ok(())
    }

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
                    Err(e) => tracing::warn!(environment_id = %id, error = %e, "could not remove an orphan machine"),
                }
            }
            Ok(removed)
        })
        .await
    }
}

/// A system user name for an environment (at most 32 characters).
fn account_name(id: &str) -> String {
    let compact: String = id.chars().filter(|c| *c != '-').take(12).collect();
    format!("dp-{compact}")
}

fn free_port() -> Result<u16, ProviderError> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| failed("finding a free port", e))
}

/// Makes `dir` (its parent must exist and be root's) unless it exists, then sets
/// its mode and owner on the directory itself: opened without following a link,
/// changed through the descriptor.
fn ensure_dir(dir: &Path, mode: u32, owner: Option<&Account>) -> Result<(), ProviderError> {
    let what = |e: std::io::Error| failed(&format!("preparing {}", dir.display()), e);
    match fs::create_dir(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(what(e)),
        _ => {}
    }
    let handle = fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_DIRECTORY | nix::libc::O_NOFOLLOW)
        .open(dir)
        .map_err(what)?;
    if let Some(owner) = owner {
        std::os::unix::fs::fchown(&handle, Some(owner.uid.as_raw()), Some(owner.gid.as_raw()))
            .map_err(what)?;
    }
    handle
        .set_permissions(fs::Permissions::from_mode(mode))
        .map_err(what)
}

/// Writes a file in one of root's directories (never in a home).
fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), ProviderError> {
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| failed(&format!("writing {}", path.display()), e))?;
    file.write_all(contents)
        .map_err(|e| failed(&format!("writing {}", path.display()), e))?;
    fs::rename(&tmp, path).map_err(|e| failed(&format!("writing {}", path.display()), e))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ProviderError> + Send + 'static,
) -> Result<T, ProviderError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| failed("local provider task", e))?
}

#[async_trait]
impl Provider for LocalProvider {
    fn name(&self) -> &'static str {
        "local"
    }

    async fn create(&self, spec: &MachineSpec, cancel: &Cancel) -> Result<Machine, ProviderError> {
        let (this, spec, cancel) = (self.clone(), spec.clone(), cancel.clone());
        blocking(move || this.create_blocking(&spec, &cancel)).await
    }

    async fn start(
        &self,
        spec: &MachineSpec,
        provider_ref: &str,
    ) -> Result<Machine, ProviderError> {
        let (this, spec, id) = (self.clone(), spec.clone(), provider_ref.to_owned());
        blocking(move || this.start_blocking(&spec, &id)).await
    }

    async fn stop(&self, provider_ref: &str) -> Result<(), ProviderError> {
        let (this, id) = (self.clone(), provider_ref.to_owned());
        blocking(move || {
            let _lock = this.lock(&id);
            this.stop_locked(&id)
        })
        .await
    }

    async fn delete(
        &self,
        environment_id: Uuid,
        _provider_ref: Option<&str>,
    ) -> Result<(), ProviderError> {
        // A machine is named by its environment, recorded or not.
        let (this, id) = (self.clone(), environment_id.to_string());
        blocking(move || this.delete_blocking(&id)).await
    }

    fn bootstrap_watch(&self) -> BootstrapWatch {
        BootstrapWatch {
            tail_command: "exec tail -n +1 -F \"$HOME/.devpocket/provisioning.log\" 2>/dev/null"
                .to_owned(),
        }
    }
}
