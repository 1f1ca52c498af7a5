//! Everything the benchmark runs against, started and stopped by it: the release
//! server with its embedded PostgreSQL, a user, and one local environment.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::client::{SshClient, WsClient};

const PASSWORD: &str = "Bench-password-1";

/// The server process, stopped (SIGTERM, which also stops its PostgreSQL) when
/// dropped, whether the benchmark finished or failed.
struct ServerProcess(std::process::Child);

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.0.wait();
    }
}

pub struct Bench {
    child: ServerProcess,
    dir: PathBuf,
    base: String,
    http: reqwest::Client,
    token: String,
    env_id: String,
}

/// The environment's machine, for the `ssh -tt` peer.
pub struct Machine {
    port: u16,
    user: String,
    home: PathBuf,
    key: PathBuf,
}

fn devpocket(dir: &std::path::Path, secret: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_devpocket"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("SECRET_KEY", secret)
        .env("DEVPOCKET_DATA_DIR", dir)
        .env("DEVPOCKET_LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        // The benchmark opens hundreds of connections from one address on purpose.
        .env("DEVPOCKET_RATE_LIMIT_IP", "1000000/1m")
        .env("DEVPOCKET_RATE_LIMIT_WS_CONNECT", "1000000/1m")
        .env("DEVPOCKET_TERMINAL_LINGER", "5s");
    cmd
}

impl Bench {
    pub async fn start() -> anyhow::Result<Self> {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("bench-terminal");
        if dir.exists() {
            // A previous run that was killed: stop what it left.
            let _ = devpocket(&dir, "x".repeat(32).as_str())
                .args(["db", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            std::fs::remove_dir_all(&dir).context("removing a previous run's data")?;
        }
        std::fs::create_dir_all(&dir)?;
        let secret = hex::encode(rand::random::<[u8; 32]>());
        eprintln!("starting the server (data in {})", dir.display());
        let mut child = devpocket(&dir, &secret)
            .env("DEVPOCKET_LISTEN", "127.0.0.1:0")
            .arg("serve")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting devpocket serve")?;
        let stderr = child.stderr.take().context("stderr")?;
        let child = ServerProcess(child);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let Ok(json) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                if json["fields"]["message"] == "DevPocket is listening" {
                    let address = json["fields"]["address"].as_str().unwrap_or_default();
                    let _ = tx.send(address.to_owned());
                } else if json["level"] == "WARN" || json["level"] == "ERROR" {
                    eprintln!("server: {line}");
                }
            }
        });
        let address = rx
            .recv_timeout(Duration::from_secs(120))
            .context("the server did not start")?;
        let base = address;

        let mut create = devpocket(&dir, &secret)
            .args(["admin", "create-user", "--username", "bench"])
            .args(["--email", "bench@example.com", "--plan", "admin"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .env("RUST_LOG", "warn")
            .spawn()?;
        create
            .stdin
            .take()
            .context("stdin")?
            .write_all(format!("{PASSWORD}\n").as_bytes())?;
        if !create.wait()?.success() {
            bail!("admin create-user failed");
        }
        let http = reqwest::Client::new();
        let login: Value = http
            .post(format!("{base}/api/v1/auth/login"))
            .json(&json!({"username_or_email": "bench", "password": PASSWORD}))
            .send()
            .await?
            .json()
            .await?;
        let token = login["access_token"]
            .as_str()
            .context("login gave no token")?
            .to_owned();
        let env: Value = http
            .post(format!("{base}/api/v1/environments"))
            .bearer_auth(&token)
            .json(&json!({"name": "bench", "template_id": "ubuntu"}))
            .send()
            .await?
            .json()
            .await?;
        let env_id = env["id"]
            .as_str()
            .with_context(|| format!("creating the environment: {env}"))?
            .to_owned();
        let bench = Self {
            child,
            dir,
            base,
            http,
            token,
            env_id,
        };
        bench.wait_running().await?;
        Ok(bench)
    }

    async fn wait_running(&self) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            let env: Value = self
                .http
                .get(format!("{}/api/v1/environments/{}", self.base, self.env_id))
                .bearer_auth(&self.token)
                .send()
                .await?
                .json()
                .await?;
            if env["status"] == "running" {
                return Ok(());
            }
            if env["status"] == "error" || start.elapsed() > Duration::from_secs(300) {
                bail!("the environment did not start: {env}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub fn header(&self) -> String {
        let sh = |cmd: &str| {
            Command::new("sh")
                .args(["-c", cmd])
                .output()
                .map(|o| {
                    let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
                    s.push_str(&String::from_utf8_lossy(&o.stderr));
                    s.trim().to_owned()
                })
                .unwrap_or_default()
        };
        format!(
            "# Terminal benchmarks\n\n- Date: {}\n- Command: `cargo bench --bench terminal`\n\
             - Machine: {}, {} cores, {} ; {}\n- Peers: {}, {}\n\
             - Everything on loopback: server (release build), its embedded PostgreSQL, the \
             environment's sshd and tmux, and the clients (this program) share the machine.\n\
             - Load average when the run began (1, 5, 15 min): {}\n",
            sh("date -u +'%Y-%m-%d %H:%M UTC'"),
            sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"),
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            sh("grep MemTotal /proc/meminfo | awk '{printf \"%.0f GiB RAM\", $2/1048576}'"),
            sh("uname -sr"),
            sh("ssh -V"),
            sh("tmux -V"),
            sh("cut -d' ' -f1-3 /proc/loadavg"),
        )
    }

    pub async fn machine(&self) -> anyhow::Result<Machine> {
        let root = self.dir.join("environments").join(&self.env_id);
        let port: u16 = std::fs::read_to_string(root.join("machine/port"))?
            .trim()
            .parse()?;
        let config = std::fs::read_to_string(root.join("machine/sshd_config"))?;
        let user = config
            .lines()
            .find_map(|l| l.strip_prefix("AllowUsers "))
            .context("no AllowUsers in the machine's sshd_config")?
            .trim()
            .to_owned();
        let key = self.dir.join("bench_key");
        let status = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&key)
            .status()?;
        if !status.success() {
            bail!("ssh-keygen failed");
        }
        let public = std::fs::read_to_string(key.with_extension("pub"))?;
        std::fs::OpenOptions::new()
            .append(true)
            .open(root.join("keys/authorized_keys"))?
            .write_all(public.as_bytes())?;
        Ok(Machine {
            port,
            user,
            home: root.join("home"),
            key,
        })
    }

    pub async fn ws(&self, query: &str) -> anyhow::Result<WsClient> {
        let url = format!(
            "{}/api/v1/ws/terminal/{}?token={}&{query}",
            self.base.replacen("http", "ws", 1),
            self.env_id,
            self.token
        );
        WsClient::connect(&url).await
    }

    /// The server process's resident memory, in KiB.
    pub fn server_rss(&self) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.0.id()))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .context("no VmRSS")
    }

    /// Deletes the environment (its sshd, tmux, files and user), stops the server
    /// (and with it the embedded PostgreSQL) and removes the data.
    pub async fn stop(self) {
        let url = format!("{}/api/v1/environments/{}", self.base, self.env_id);
        let _ = self.http.delete(&url).bearer_auth(&self.token).send().await;
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(60) {
            match self.http.get(&url).bearer_auth(&self.token).send().await {
                Ok(r) if r.status() == 404 => break,
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
        let dir = self.dir.clone();
        drop(self);
        let _ = std::fs::remove_dir_all(dir);
    }
}

impl Machine {
    /// Writes `bytes` of base64 text to a file in the machine's home; returns its
    /// path as the machine's shell sees it.
    pub fn write_file(&self, name: &str, bytes: usize) -> anyhow::Result<String> {
        let path = self.home.join(name);
        let status = Command::new("sh")
            .args([
                "-c",
                &format!(
                    "head -c {} /dev/urandom | base64 -w 100 > '{}'",
                    bytes / 4 * 3,
                    path.display()
                ),
            ])
            .status()?;
        if !status.success() {
            bail!("writing {}", path.display());
        }
        let owner = std::fs::metadata(&self.home)?;
        use std::os::unix::fs::MetadataExt;
        std::os::unix::fs::chown(&path, Some(owner.uid()), Some(owner.gid()))?;
        Ok(format!("~/{name}"))
    }

    /// `ssh -tt` to the machine: a login shell, or tmux session `tmux`.
    pub async fn ssh(&self, tmux: Option<&str>) -> anyhow::Result<SshClient> {
        let mut cmd = tokio::process::Command::new("ssh");
        cmd.arg("-tt")
            .arg("-i")
            .arg(&self.key)
            .args(["-p", &self.port.to_string()])
            .args([
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
            ])
            .args(["-o", "LogLevel=ERROR", "-o", "BatchMode=yes"])
            .arg(format!("{}@127.0.0.1", self.user))
            .env("TERM", "xterm-256color")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        if let Some(session) = tmux {
            cmd.arg(format!("tmux new-session -A -s {session}"));
        }
        SshClient::new(cmd.spawn().context("starting ssh")?)
    }
}
