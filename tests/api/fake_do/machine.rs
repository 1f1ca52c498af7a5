//! A fake droplet's machine: an OpenSSH `sshd` on the droplet's own loopback
//! address (127.0.0.N, port 22) inside a private mount namespace, where `/var/log`,
//! `/home`, `/tmp`, `/usr/local/bin`, `/etc/passwd` and `/etc/group` are the
//! droplet's own (the last two through an overlay on `/etc`: a file bind-mounted
//! over `/etc/passwd` is detached from the namespace as soon as the host replaces
//! its own `/etc/passwd`, as every `useradd` of a local environment does). So, as
//! on a real droplet, the droplet's user (its own uid) logs in with the key from
//! the user-data or one they add to `~/.ssh/authorized_keys` (from any address:
//! droplets share the host's network), the host key is the pre-seeded one, an
//! attached volume is mounted where cloud-config `mounts` says (and, fresh,
//! belongs to root), the
//! user-data's shell parts run as root at first boot with their output in
//! `/var/log/cloud-init-output.log`, and `cloud-init status --wait` reports how
//! they ended. Needs root (mount namespaces, port 22).

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use devpocket_testkit::poll_blocking;

/// Where a droplet sees its `cloud` directory (in its own `/etc`).
const CLOUD: &str = "/etc/devpocket-fake-cloud";

/// Loopback host numbers in use by fake droplets of this process.
static ADDRESSES: Mutex<BTreeSet<u32>> = Mutex::new(BTreeSet::new());

/// A loopback address of its own (127.0.0.2 and up) whose port 22 is free.
pub fn allocate_address() -> Result<(Ipv4Addr, u32), String> {
    let mut used = ADDRESSES.lock().map_err(|e| e.to_string())?;
    for n in 2u32..=250 * 256 {
        if used.contains(&n) {
            continue;
        }
        let ip = Ipv4Addr::new(127, 0, (n / 256) as u8, (n % 256) as u8);
        if n % 256 < 2 || n % 256 == 255 {
            continue;
        }
        if TcpListener::bind(SocketAddr::from((ip, 22))).is_ok() {
            used.insert(n);
            return Ok((ip, n));
        }
    }
    Err("no free loopback address for a fake droplet".into())
}

pub fn release_address(n: u32) {
    if let Ok(mut used) = ADDRESSES.lock() {
        used.remove(&n);
    }
}

/// What a machine is made of.
#[derive(Debug, Clone)]
pub struct MachineSpec {
    pub dir: PathBuf,
    pub ip: Ipv4Addr,
    pub uid: u32,
    pub user: String,
    pub authorized_keys: Vec<String>,
    /// The host key (OpenSSH private key).
    pub host_key: String,
    /// (directory standing for a volume, mount point).
    pub mounts: Vec<(PathBuf, String)>,
    pub packages: Vec<String>,
    pub scripts: Vec<String>,
}

fn write(path: &Path, contents: &str, mode: u32) -> Result<(), String> {
    let _ = fs::remove_file(path);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| format!("writing {}: {e}", path.display()))?;
    file.write_all(contents.as_bytes())
        .map_err(|e| format!("writing {}: {e}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(|e| e.to_string())
}

fn mkdir(path: &Path, mode: u32) -> Result<(), String> {
    fs::create_dir_all(path).map_err(|e| format!("creating {}: {e}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(|e| e.to_string())
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

impl MachineSpec {
    fn machine(&self) -> PathBuf {
        self.dir.join("machine")
    }
    fn cloud(&self) -> PathBuf {
        self.dir.join("cloud")
    }
    fn home(&self) -> String {
        format!("/home/{}", self.user)
    }

    /// Lays out the droplet's files (idempotent; the root filesystem survives).
    pub fn prepare(&self) -> Result<(), String> {
        let (machine, cloud, root) = (self.machine(), self.cloud(), self.dir.join("root"));
        mkdir(&self.dir, 0o755)?;
        mkdir(&machine, 0o700)?;
        mkdir(&cloud, 0o755)?;
        mkdir(&cloud.join("bin"), 0o755)?;
        mkdir(&cloud.join("parts"), 0o755)?;
        for sub in ["var/log", "home"] {
            mkdir(&root.join(sub), 0o755)?;
        }
        mkdir(&root.join("tmp"), 0o1777)?;
        write(&machine.join("ssh_host_ed25519_key"), &self.host_key, 0o600)?;
        write(
            &cloud.join("authorized_keys"),
            &format!("{}\n", self.authorized_keys.join("\n")),
            0o644,
        )?;
        let passwd = fs::read_to_string("/etc/passwd").map_err(|e| e.to_string())?;
        let group = fs::read_to_string("/etc/group").map_err(|e| e.to_string())?;
        let uid = self.uid;
        let etc = machine.join("etc");
        mkdir(&etc, 0o755)?;
        mkdir(&machine.join("etc-work"), 0o700)?;
        write(
            &etc.join("passwd"),
            &format!(
                "{passwd}{}:*:{uid}:{uid}:DevPocket fake droplet user:{}:/bin/bash\n",
                self.user,
                self.home()
            ),
            0o644,
        )?;
        write(
            &etc.join("group"),
            &format!("{group}{}:x:{uid}:\n", self.user),
            0o644,
        )?;
        write(
            &machine.join("sshd_config"),
            &format!(
                "# Fake DigitalOcean droplet\n\
                 Port 22\n\
                 ListenAddress {ip}\n\
                 HostKey {machine}/ssh_host_ed25519_key\n\
                 AuthorizedKeysFile {CLOUD}/authorized_keys .ssh/authorized_keys\n\
                 PidFile {machine}/sshd.pid\n\
                 AllowUsers {user}\n\
                 PubkeyAuthentication yes\n\
                 PasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\n\
                 UsePAM no\n\
                 StrictModes no\n\
                 PermitRootLogin no\n\
                 X11Forwarding no\n\
                 AllowTcpForwarding no\n\
                 PrintMotd no\n\
                 MaxStartups 100:30:200\n\
                 MaxSessions 100\n\
                 LogLevel ERROR\n",
                ip = self.ip,
                machine = machine.display(),
                user = self.user,
            ),
            0o600,
        )?;
        write(
            &cloud.join("bin/cloud-init"),
            &self.cloud_init_script(),
            0o755,
        )?;
        for (i, script) in self.scripts.iter().enumerate() {
            write(
                &cloud.join(format!("parts/part-{:03}", i + 1)),
                script,
                0o755,
            )?;
        }
        for (dir, _) in &self.mounts {
            mkdir(dir, 0o755)?;
        }
        write(&machine.join("init.sh"), &self.init_script(), 0o700)
    }

    /// `cloud-init status [--wait]`, answered from the status the init writes.
    fn cloud_init_script(&self) -> String {
        format!(
            "#!/bin/sh\n\
             # Fake cloud-init: only `status [--wait] [--long]`.\n\
             [ \"${{1:-}}\" = status ] || {{ echo \"fake cloud-init: only 'status' is implemented\" >&2; exit 1; }}\n\
             shift\n\
             wait=no\n\
             for a in \"$@\"; do case \"$a\" in --wait|-w) wait=yes ;; esac; done\n\
             while :; do\n\
             \x20 if [ -s {status} ]; then\n\
             \x20   read -r state code < {status}\n\
             \x20   echo \"status: $state\"\n\
             \x20   exit \"$code\"\n\
             \x20 fi\n\
             \x20 [ \"$wait\" = yes ] || {{ echo 'status: running'; exit 0; }}\n\
             \x20 sleep 0.1\n\
             done\n",
            status = quote(&format!("{CLOUD}/status")),
        )
    }

    /// The droplet's boot, run as root in a new mount namespace.
    fn init_script(&self) -> String {
        let d = |p: &str| quote(&self.dir.join(p).display().to_string());
        let mut s = String::from("#!/bin/sh\n# Fake droplet boot.\nset -u\n");
        for (src, dst) in [
            ("root/var/log", "/var/log"),
            ("root/home", "/home"),
            ("root/tmp", "/tmp"),
            ("cloud/bin", "/usr/local/bin"),
        ] {
            // A droplet whose files live under /tmp (a checkout there) would hide
            // them all behind its own /tmp: it shares the host's instead.
            if dst == "/tmp" && self.dir.starts_with("/tmp") {
                continue;
            }
            s.push_str(&format!("mount --bind {} {dst} || exit 1\n", d(src)));
        }
        // The droplet's passwd and group over the host's /etc.
        let overlay = format!(
            "lowerdir=/etc,upperdir={},workdir={}",
            self.dir.join("machine/etc").display(),
            self.dir.join("machine/etc-work").display()
        );
        s.push_str(&format!(
            "mount -t overlay overlay -o {} /etc || exit 1\n",
            quote(&overlay)
        ));
        // What the droplet's user reads of the fake (its keys, cloud-init's status),
        // at a path of the droplet's own: the test's directories may lie where the
        // user cannot go (a checkout in root's private home).
        s.push_str(&format!(
            "mkdir -p {CLOUD} && mount --bind {} {CLOUD} || exit 1\n",
            d("cloud")
        ));
        for (dir, point) in &self.mounts {
            s.push_str(&format!(
                "mkdir -p {p} && mount --bind {src} {p} || exit 1\n",
                p = quote(point),
                src = quote(&dir.display().to_string()),
            ));
        }
        // cloud-init's users module makes the user's home, owned by the user; but a
        // volume the `mounts` module (which runs first) mounted there stays root's,
        // as on a real droplet: the user-data's own shell part hands it over.
        let home = self.home();
        if !self.mounts.iter().any(|(_, point)| *point == home) {
            let (uid, home) = (self.uid, quote(&home));
            s.push_str(&format!(
                "mkdir -p {home} && chown {uid}:{uid} {home} && chmod 0755 {home}\n"
            ));
        }
        s.push_str(&format!(
            "/usr/sbin/sshd -f {} -E {} || exit 1\n",
            d("machine/sshd_config"),
            d("machine/sshd.log")
        ));
        let packages = if self.packages.is_empty() {
            String::new()
        } else {
            format!(
                "echo {}\n",
                quote(&format!(
                    "fake cloud-init: not installing packages: {}",
                    self.packages.join(" ")
                ))
            )
        };
        s.push_str(&format!(
            "status={status}\n\
             [ -s \"$status\" ] && exit 0\n\
             log=/var/log/cloud-init-output.log\n\
             touch \"$log\" && chmod 0644 \"$log\"\n\
             start=$(date +%s)\n\
             {{\n\
             echo \"Cloud-init v. 24.4-fake running 'modules:final' at $(date -u '+%a, %d %b %Y %H:%M:%S +0000').\"\n\
             {packages}\
             }} >> \"$log\"\n\
             state=done; code=0\n\
             cd /\n\
             for part in {parts}/part-*; do\n\
             \x20 [ -e \"$part\" ] || continue\n\
             \x20 env -i HOME=/root USER=root LOGNAME=root SHELL=/bin/sh \
             PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 \"$part\" >> \"$log\" 2>&1 \
             || {{ echo \"$(date -u '+%Y-%m-%d %H:%M:%S') - cc_scripts_user.py[WARNING]: Failed to run module scripts_user\" >> \"$log\"; state=error; code=1; }}\n\
             done\n\
             echo \"Cloud-init v. 24.4-fake finished at $(date -u '+%a, %d %b %Y %H:%M:%S +0000'). Datasource DataSourceDigitalOcean.  Up $(( $(date +%s) - start )) seconds\" >> \"$log\"\n\
             echo \"$state $code\" > \"$status.tmp\" && mv \"$status.tmp\" \"$status\"\n",
            status = d("cloud/status"),
            parts = d("cloud/parts"),
        ));
        s
    }

    /// Boots the machine (first boot runs the user-data) and waits for its sshd.
    pub fn boot(&self) -> Result<(), String> {
        self.prepare()?;
        let _ = fs::create_dir_all("/run/sshd");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.machine().join("init.log"))
            .map_err(|e| e.to_string())?;
        let err = log.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "/bin/sh"])
            .arg(self.machine().join("init.sh"))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .process_group(0)
            .spawn()
            .map_err(|e| format!("starting the droplet: {e}"))?;
        write(
            &self.machine().join("init.pid"),
            &child.id().to_string(),
            0o600,
        )?;
        std::thread::spawn(move || {
            let mut child = child;
            let _ = child.wait();
        });
        let up = poll_blocking(Duration::from_secs(15), || {
            TcpStream::connect_timeout(&SocketAddr::from((self.ip, 22)), Duration::from_millis(200))
        });
        if up.is_err() {
            let log = fs::read_to_string(self.machine().join("init.log")).unwrap_or_default();
            return Err(format!(
                "the droplet's sshd did not come up on {}:22: {log}",
                self.ip
            ));
        }
        Ok(())
    }

    /// Powers the machine off: every process of it dies, the files stay.
    pub fn halt(&self) {
        halt(&self.dir, self.uid, self.ip);
    }
}

fn read_pid(path: &Path) -> Option<i32> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Kills a machine's init, sshd and every process of its user.
pub fn halt(dir: &Path, uid: u32, ip: Ipv4Addr) {
    use nix::sys::signal::{Signal, kill, killpg};
    use nix::unistd::Pid;
    let machine = dir.join("machine");
    if let Some(pid) = read_pid(&machine.join("init.pid")) {
        let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
    }
    if let Some(pid) = read_pid(&machine.join("sshd.pid")) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    let _ = fs::remove_file(machine.join("sshd.pid"));
    let _ = fs::remove_file(machine.join("init.pid"));
    // Several rounds: a shell may fork while the first round runs.
    for _ in 0..3 {
        let _ = Command::new("pkill")
            .args(["-KILL", "-U", &uid.to_string()])
            .output();
    }
    // Down once its port 22 refuses (waited for 5 s at most: halting is best effort).
    let _ = poll_blocking(Duration::from_secs(5), || match TcpStream::connect_timeout(
        &SocketAddr::from((ip, 22)),
        Duration::from_millis(100),
    ) {
        Ok(_) => Err("sshd still answers"),
        Err(_) => Ok(()),
    });
}
