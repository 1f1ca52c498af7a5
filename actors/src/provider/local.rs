//! The local provider, the embedded default: a machine is a private OpenSSH `sshd`
//! on a loopback port with its own host key, serving a home directory under
//! `<root>/<environment id>/home`. Its "cloud-init" runs the template's bootstrap
//! once, detached from the server (like a real machine, it goes on if the server
//! dies), writing the provisioning log in the home directory.
//!
//! When the server runs as root, every environment gets its own unprivileged system
//! user, so one environment's shell can read neither another's files nor the
//! server's data. Otherwise environments run as the server's user (see README).

use std::fs;
use std::io::Write;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::{Gid, Pid, Uid, User};

use super::{BootstrapWatch, Machine, MachineSpec, Provider, ProviderError};
use crate::logs::EXIT_MARKER;
use crate::model::MachineAccess;
use crate::ssh::shell_quote;

const SSHD: &str = "/usr/sbin/sshd";
const HOST: &str = "127.0.0.1";

#[derive(Debug, Clone)]
pub struct LocalProvider {
    root: PathBuf,
    as_root: bool,
    /// When running as root: the group every environment user joins, which may
    /// pass through the directories above the environments (and nothing more).
    group: Option<String>,
}

fn failed(context: &str, err: impl std::fmt::Display) -> ProviderError {
    ProviderError::Failed(format!("{context}: {err}"))
}

/// The files of one local machine.
struct Layout {
    dir: PathBuf,
    machine: PathBuf,
    keys: PathBuf,
    home: PathBuf,
    state: PathBuf,
}

impl Layout {
    fn new(root: &Path, id: &str) -> Self {
        let dir = root.join(id);
        let home = dir.join("home");
        Self {
            machine: dir.join("machine"),
            keys: dir.join("keys"),
            state: home.join(".devpocket"),
            home,
            dir,
        }
    }
    fn log(&self) -> PathBuf {
        self.state.join("provisioning.log")
    }
    fn pid_file(&self) -> PathBuf {
        self.machine.join("sshd.pid")
    }
    fn port_file(&self) -> PathBuf {
        self.machine.join("port")
    }
    fn bootstrap_pgid(&self) -> PathBuf {
        self.machine.join("bootstrap.pgid")
    }
}

/// The account a machine's shells run as.
#[derive(Clone)]
struct Account {
    name: String,
    uid: Uid,
    gid: Gid,
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
            .mode(0o711)
            .create(&root)
            .map_err(|e| failed("creating the environments directory", e))?;
        let root = root
            .canonicalize()
            .map_err(|e| failed("resolving the environments directory", e))?;
        Ok(Self {
            root,
            as_root: Uid::effective().is_root(),
            group,
        })
    }

    fn account(&self, id: &str, home: &Path) -> Result<Account, ProviderError> {
        if !self.as_root {
            let user = User::from_uid(Uid::effective())
                .map_err(|e| failed("looking up the server's user", e))?
                .ok_or_else(|| ProviderError::Failed("the server's user has no name".into()))?;
            return Ok(Account {
                name: user.name,
                uid: user.uid,
                gid: user.gid,
            });
        }
        let name = account_name(id);
        if let Some(user) = User::from_name(&name).map_err(|e| failed("looking up user", e))? {
            return Ok(Account {
                name,
                uid: user.uid,
                gid: user.gid,
            });
        }
        let mut useradd = Command::new("useradd");
        if let Some(group) = &self.group {
            useradd.args(["--groups", group]);
        }
        let out = useradd
            .args([
                "--system",
                "--user-group",
                "--no-create-home",
                "--shell",
                "/bin/bash",
            ])
            .arg("--home-dir")
            .arg(home)
            // `*`: no password, but not "locked" (sshd without PAM refuses locked accounts).
            .args(["--password", "*"])
            .arg(&name)
            .output()
            .map_err(|e| failed("running useradd", e))?;
        if !out.status.success() && out.status.code() != Some(9) {
            return Err(failed(
                "creating the environment's user",
                String::from_utf8_lossy(&out.stderr).trim(),
            ));
        }
        let user = User::from_name(&name)
            .map_err(|e| failed("looking up user", e))?
            .ok_or_else(|| ProviderError::Failed(format!("user {name} was not created")))?;
        Ok(Account {
            name,
            uid: user.uid,
            gid: user.gid,
        })
    }

    /// Directories, keys and configuration; idempotent.
    fn prepare(&self, spec: &MachineSpec, layout: &Layout) -> Result<Account, ProviderError> {
        mkdir(&layout.dir, 0o711)?;
        mkdir(&layout.machine, 0o700)?;
        mkdir(&layout.keys, 0o711)?;
        mkdir(&layout.home, 0o700)?;
        let account = self.account(&spec.environment_id.to_string(), &layout.home)?;
        mkdir(&layout.state, 0o700)?;
        if self.as_root {
            for dir in [&layout.home, &layout.state] {
                chown(dir, &account)?;
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
    /// its own user and so its own `/tmp/tmux-UID`; unprivileged, all machines share
    /// one user, so each gets a short private directory (socket paths are limited
    /// to 107 bytes, so not under the home directory).
    fn tmux_dir(&self, layout: &Layout) -> Option<PathBuf> {
        if self.as_root {
            return None;
        }
        let id = layout.dir.file_name()?.to_string_lossy().replace('-', "");
        Some(std::env::temp_dir().join(format!("dp-tmux-{}", &id[..id.len().min(12)])))
    }

    fn sshd_pid(layout: &Layout) -> Option<Pid> {
        let pid: i32 = fs::read_to_string(layout.pid_file())
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let pid = Pid::from_raw(pid);
        kill(pid, None).ok().map(|()| pid)
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
            mkdir(&dir, 0o700)?;
        }
        let config = layout.machine.join("sshd_config");
        write_file(
            &config,
            self.sshd_config(layout, account, port).as_bytes(),
            0o600,
        )?;
        if self.as_root {
            // sshd's privilege-separation directory.
            let _ = fs::DirBuilder::new().mode(0o755).create("/run/sshd");
        }
        let out = Command::new(SSHD)
            .arg("-f")
            .arg(&config)
            .arg("-E")
            .arg(layout.machine.join("sshd.log"))
            .stdin(Stdio::null())
            .output()
            .map_err(|e| failed("starting sshd", e))?;
        if !out.status.success() {
            let log = fs::read_to_string(layout.machine.join("sshd.log")).unwrap_or_default();
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
        let path = layout.state.join("environment.sh");
        write_file(&path, env_file.as_bytes(), 0o600)?;
        let hook =
            "[ -f \"$HOME/.devpocket/environment.sh\" ] && . \"$HOME/.devpocket/environment.sh\"\n";
        let mut owned = vec![path];
        for rc in [".profile", ".bashrc"] {
            let rc = layout.home.join(rc);
            let current = fs::read_to_string(&rc).unwrap_or_default();
            if !current.contains(".devpocket/environment.sh") {
                let mut file = fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .mode(0o644)
                    .open(&rc)
                    .map_err(|e| failed("writing the shell profile", e))?;
                file.write_all(hook.as_bytes())
                    .map_err(|e| failed("writing the shell profile", e))?;
            }
            owned.push(rc);
        }
        if self.as_root {
            for file in &owned {
                chown(file, account)?;
            }
        }
        Ok(())
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
        if layout.state.join("init.lock").exists() {
            return Ok(());
        }
        let bootstrap = layout.state.join("bootstrap.sh");
        write_file(&bootstrap, spec.bootstrap.as_bytes(), 0o700)?;
        let init = format!(
            "#!/bin/sh\n\
             # The machine's init: run the bootstrap once, then say how it ended.\n\
             mkdir \"$HOME/.devpocket/init.lock\" 2>/dev/null || exit 0\n\
             umask 077\n\
             cd \"$HOME\"\n\
             . \"$HOME/.devpocket/environment.sh\"\n\
             status=0\n\
             /bin/sh \"$HOME/.devpocket/bootstrap.sh\" 2>&1 || status=$?\n\
             echo \"{EXIT_MARKER}$status\"\n"
        );
        let init_path = layout.state.join("init.sh");
        write_file(&init_path, init.as_bytes(), 0o700)?;
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(layout.log())
            .map_err(|e| failed("opening the provisioning log", e))?;
        if self.as_root {
            for file in [&bootstrap, &init_path, &layout.log()] {
                chown(file, account)?;
            }
        }
        let err_log = log
            .try_clone()
            .map_err(|e| failed("opening the provisioning log", e))?;
        let mut cmd = Command::new("/bin/sh");
        cmd.arg(&init_path)
            .current_dir(&layout.home)
            .env_clear()
            .env("HOME", &layout.home)
            .env("USER", &account.name)
            .env("LOGNAME", &account.name)
            .env("SHELL", "/bin/bash")
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("LANG", "C.UTF-8")
            .env("DEVPOCKET_ENVIRONMENT_ID", spec.environment_id.to_string())
            .env("DEVPOCKET_ENVIRONMENT", &spec.slug)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err_log)
            // Its own process group: the server's signals are not the machine's.
            .process_group(0);
        if self.as_root {
            cmd.uid(account.uid.as_raw()).gid(account.gid.as_raw());
        }
        let child = cmd
            .spawn()
            .map_err(|e| failed("starting the bootstrap", e))?;
        write_file(
            &layout.bootstrap_pgid(),
            child.id().to_string().as_bytes(),
            0o600,
        )?;
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

    fn stop_blocking(&self, id: &str) -> Result<(), ProviderError> {
        let layout = Layout::new(&self.root, id);
        if let Some(pid) = Self::sshd_pid(&layout) {
            let _ = kill(pid, Signal::SIGTERM);
        }
        if let Some(pgid) = fs::read_to_string(layout.bootstrap_pgid())
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
        {
            let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
        }
        if self.as_root {
            // Every process of the machine's user: shells, tmux, what they started.
            let _ = Command::new("pkill")
                .args(["-KILL", "-u", &account_name(id)])
                .status();
        } else {
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

fn mkdir(dir: &Path, mode: u32) -> Result<(), ProviderError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)
        .map_err(|e| failed(&format!("creating {}", dir.display()), e))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(mode))
        .map_err(|e| failed(&format!("securing {}", dir.display()), e))
}

fn chown(path: &Path, account: &Account) -> Result<(), ProviderError> {
    nix::unistd::chown(path, Some(account.uid), Some(account.gid))
        .map_err(|e| failed(&format!("handing {} to the environment", path.display()), e))
}

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

    async fn create(&self, spec: &MachineSpec) -> Result<Machine, ProviderError> {
        let this = self.clone();
        let spec = spec.clone();
        blocking(move || {
            let id = spec.environment_id.to_string();
            let layout = Layout::new(&this.root, &id);
            let account = this.prepare(&spec, &layout)?;
            this.write_environment(&spec, &layout, &account)?;
            let port = this.ensure_sshd(&layout, &account)?;
            this.launch_bootstrap(&spec, &layout, &account)?;
            Ok(Self::machine(&account, port, &id, &spec.keys.host_public))
        })
        .await
    }

    async fn start(
        &self,
        spec: &MachineSpec,
        provider_ref: &str,
    ) -> Result<Machine, ProviderError> {
        let this = self.clone();
        let spec = spec.clone();
        let id = provider_ref.to_owned();
        blocking(move || {
            let layout = Layout::new(&this.root, &id);
            if !layout.home.exists() {
                return Err(ProviderError::Gone(format!(
                    "{} is missing",
                    layout.home.display()
                )));
            }
            let account = this.prepare(&spec, &layout)?;
            this.write_environment(&spec, &layout, &account)?;
            let port = this.ensure_sshd(&layout, &account)?;
            Ok(Self::machine(&account, port, &id, &spec.keys.host_public))
        })
        .await
    }

    async fn stop(&self, provider_ref: &str) -> Result<(), ProviderError> {
        let this = self.clone();
        let id = provider_ref.to_owned();
        blocking(move || this.stop_blocking(&id)).await
    }

    async fn delete(&self, provider_ref: &str) -> Result<(), ProviderError> {
        let this = self.clone();
        let id = provider_ref.to_owned();
        blocking(move || {
            this.stop_blocking(&id)?;
            let layout = Layout::new(&this.root, &id);
            if layout.dir.exists() {
                fs::remove_dir_all(&layout.dir)
                    .map_err(|e| failed("removing the environment's files", e))?;
            }
            if this.as_root {
                let _ = Command::new("userdel").arg(account_name(&id)).output();
            }
            Ok(())
        })
        .await
    }

    fn bootstrap_watch(&self) -> BootstrapWatch {
        BootstrapWatch {
            tail_command: "exec tail -n +1 -F \"$HOME/.devpocket/provisioning.log\" 2>/dev/null"
                .to_owned(),
        }
    }
}
