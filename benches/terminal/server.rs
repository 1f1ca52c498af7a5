//! Everything the benchmark runs against, started and stopped by it: the release
//! server with its embedded PostgreSQL, a user, and one local environment.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use devpocket_testkit::api::Api;
use devpocket_testkit::process::{self, Server, create_user, succeeded};
use devpocket_testkit::report::{machine, sh};

use crate::client::{SshClient, WsClient};

const PASSWORD: &str = "Bench-password-1";

/// How long the environment may take to be made.
const CREATE: Duration = Duration::from_secs(300);

pub struct Bench {
    server: Server,
    dir: PathBuf,
    secret: String,
    api: Api,
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
    let mut cmd = process::command(env!("CARGO_BIN_EXE_devpocket"), secret);
    cmd.env("DEVPOCKET_DATA_DIR", dir)
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
        let server = Server::start(devpocket(&dir, &secret))?;
        let mut cmd = devpocket(&dir, &secret);
        let created = create_user(cmd.env("RUST_LOG", "warn"), "bench", "admin", PASSWORD)?;
        succeeded(created).context("admin create-user")?;
        let api = Api::new(&server.address);
        let token = api.login("bench", PASSWORD).await?;
        let env_id = api.create_environment(&token, "bench", "ubuntu").await?;
        let bench = Self {
            server,
            dir,
            secret,
            api,
            token,
            env_id,
        };
        if let Err(e) = bench.api.running(&bench.token, &bench.env_id, CREATE).await {
            bench.stop().await;
            return Err(e);
        }
        Ok(bench)
    }

    pub fn header(&self) -> String {
        format!(
            "# Terminal benchmarks\n\n- Date: {}\n- Command: `cargo bench --bench terminal`\n\
             - Machine: {}\n- Peers: {}, {}\n\
             - Everything on loopback: server (release build), its embedded PostgreSQL, the \
             environment's sshd and tmux, and the clients (this program) share the machine.\n\
             - Load average when the run began (1, 5, 15 min): {}\n",
            sh("date -u +'%Y-%m-%d %H:%M UTC'"),
            machine(),
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
        self.ws_at(&self.api.base, query).await
    }

    /// A terminal through the server at `base` (`http://…`).
    pub async fn ws_at(&self, base: &str, query: &str) -> anyhow::Result<WsClient> {
        let url = format!(
            "{}/api/v1/ws/terminal/{}?token={}&{query}",
            base.replacen("http", "ws", 1),
            self.env_id,
            self.token
        );
        WsClient::connect(&url).await
    }

    /// A second server process on the same data directory: it shares the first's
    /// embedded PostgreSQL, and the environment stays the first's.
    pub fn second(&self) -> anyhow::Result<Server> {
        Server::start(devpocket(&self.dir, &self.secret))
    }

    /// The server process's resident memory, in KiB.
    pub fn server_rss(&self) -> anyhow::Result<u64> {
        self.server.rss()
    }

    /// Deletes the environment (its sshd, tmux, files and user), stops the server
    /// (and with it the embedded PostgreSQL) and removes the data.
    pub async fn stop(self) {
        if let Err(e) = self.api.delete_environment(&self.token, &self.env_id).await {
            eprintln!("{e:#}");
        }
        let dir = self.dir.clone();
        if let Err(e) = self.server.stop() {
            eprintln!("{e:#}");
        }
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
