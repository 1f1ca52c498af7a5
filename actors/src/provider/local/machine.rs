//! A machine's files and its sshd: the directory layout, the private temporary
//! directories and mount namespace of the isolated mode, the sshd configuration,
//! and starting sshd.

use std::fs;
use std::io::Write;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::accounts::Account;
use super::{HOST, LocalProvider, SSHD, failed};
use crate::provider::{MachineSpec, ProviderError};

/// The files of one local machine. Only `home` (and the machine's private
/// temporary directories) can be written by the environment's user; everything
/// else is root's.
pub(super) struct Layout {
    pub(super) dir: PathBuf,
    machine: PathBuf,
    keys: PathBuf,
    pub(super) home: PathBuf,
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

/// The shared temporary directory `path` lies under, if any: a machine's files
/// there would be hidden by its private copy of that directory.
pub(super) fn under_private_dir(path: &Path) -> Option<&'static str> {
    PRIVATE_DIRS
        .iter()
        .map(|(_, shared)| *shared)
        .find(|shared| path.starts_with(shared))
}

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

impl Layout {
    pub(super) fn new(root: &Path, id: &str) -> Self {
        let dir = root.join(id);
        Self {
            machine: dir.join("machine"),
            keys: dir.join("keys"),
            home: dir.join("home"),
            private: dir.join("private"),
            dir,
        }
    }
    pub(super) fn pid_file(&self) -> PathBuf {
        self.machine.join("sshd.pid")
    }
    fn port_file(&self) -> PathBuf {
        self.machine.join("port")
    }
    fn config(&self) -> PathBuf {
        self.machine.join("sshd_config")
    }
    pub(super) fn bootstrap_pgid(&self) -> PathBuf {
        self.machine.join("bootstrap.pgid")
    }
}

impl LocalProvider {
    /// Directories, keys and configuration; idempotent.
    pub(super) fn prepare(
        &self,
        spec: &MachineSpec,
        layout: &Layout,
    ) -> Result<Account, ProviderError> {
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
    pub(super) fn tmux_dir(&self, layout: &Layout) -> Option<PathBuf> {
        if self.as_root {
            return None;
        }
        let id = layout.dir.file_name()?.to_string_lossy().replace('-', "");
        Some(std::env::temp_dir().join(format!("dp-tmux-{}", &id[..id.len().min(12)])))
    }

    /// The machine's sshd, if it runs: the pid in its pid file, checked to be that
    /// sshd (a stale file may name a process that has since taken the number).
    pub(super) fn sshd_pid(layout: &Layout) -> Option<Pid> {
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
    pub(super) fn ensure_sshd(
        &self,
        layout: &Layout,
        account: &Account,
    ) -> Result<u16, ProviderError> {
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
                return Err(failed(
                    "starting the machine's sshd",
                    format!("sshd did not start listening on port {port}"),
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(port)
    }
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
pub(super) fn ensure_dir(
    dir: &Path,
    mode: u32,
    owner: Option<&Account>,
) -> Result<(), ProviderError> {
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
pub(super) fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), ProviderError> {
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::under_private_dir;

    #[test]
    fn a_data_directory_under_a_shared_temporary_directory_is_named() {
        assert_eq!(
            under_private_dir(Path::new("/tmp/clone/.devpocket")),
            Some("/tmp")
        );
        assert_eq!(under_private_dir(Path::new("/dev/shm/x")), Some("/dev/shm"));
        assert_eq!(under_private_dir(Path::new("/tmpfoo/x")), None);
        assert_eq!(
            under_private_dir(Path::new("/root/devpocket/.devpocket")),
            None
        );
    }
}
