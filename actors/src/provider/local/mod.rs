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
//!
//! A machine's files and its sshd are in `machine`, what runs in it as its tenant
//! in `bootstrap`, the removal of what no environment owns in `sweep`.

mod accounts;
mod bootstrap;
mod install;
mod machine;
mod packages;
mod sweep;
mod tenant;

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::{Pid, Uid};
use uuid::Uuid;

use self::accounts::Account;
use self::machine::{Layout, ensure_dir};
use self::tenant::Tenant;
use super::{BootstrapWatch, Cancel, Machine, MachineSpec, Provider, ProviderError};
use crate::model::MachineAccess;

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

/// This host failed at `doing`: the owner is told that much, the log why.
fn failed(doing: &str, err: impl std::fmt::Display) -> ProviderError {
    ProviderError::Host {
        doing: doing.to_owned(),
        cause: err.to_string().into(),
    }
}

impl LocalProvider {
    /// `root` holds one directory per environment (`$DEVPOCKET_DATA_DIR/environments`).
    /// `group`, when running as root, is the (existing) group environment users join.
    pub fn new(root: PathBuf, group: Option<String>) -> Result<Self, ProviderError> {
        if !Path::new(SSHD).exists() {
            return Err(ProviderError::Setup(
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
        let as_root = Uid::effective().is_root();
        if as_root && let Some(shared) = machine::under_private_dir(&root) {
            return Err(ProviderError::Setup(format!(
                "the data directory's environments ({}) are under {shared}, which every \
                 local machine gets a private copy of: its files would vanish from its own \
                 view. Set DEVPOCKET_DATA_DIR (or clone the repository) elsewhere",
                root.display()
            )));
        }
        ensure_dir(&root, 0o711, None)?;
        Ok(Self {
            root,
            as_root,
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
}

/// A system user name for an environment (at most 32 characters).
fn account_name(id: &str) -> String {
    let compact: String = id.chars().filter(|c| *c != '-').take(12).collect();
    format!("dp-{compact}")
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
