//! The server the benchmark runs against, started and stopped by it: a release
//! `devpocket serve` with its embedded PostgreSQL in a temporary data directory,
//! restarted with other settings between parts of the run (the data stays).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

/// Everything the benchmark writes: the server's data directory and wrk's scripts.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("bench-api")
}

fn data_dir() -> PathBuf {
    root().join("data")
}

/// A `devpocket` command on the benchmark's data directory, with nothing from the
/// caller's environment but `PATH`.
fn devpocket(secret: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_devpocket"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("SECRET_KEY", secret)
        .env("DEVPOCKET_DATA_DIR", data_dir())
        .env("DEVPOCKET_LOG_FORMAT", "json");
    cmd
}

/// Removes what a previous run left (stopping its PostgreSQL if it was killed) and
/// makes an empty directory.
pub fn fresh_root() -> anyhow::Result<()> {
    let root = root();
    if root.exists() {
        if data_dir().join("postgres").exists() {
            let _ = devpocket(&"x".repeat(32))
                .args(["db", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        std::fs::remove_dir_all(&root).context("removing a previous run's data")?;
    }
    std::fs::create_dir_all(&root)?;
    Ok(())
}

/// `"level":"…"` of a JSON log line, if near its start.
fn level(line: &[u8]) -> Option<&[u8]> {
    const KEY: &[u8] = b"\"level\":\"";
    let head = &line[..line.len().min(120)];
    let at = head.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let rest = &head[at..];
    Some(&rest[..rest.iter().position(|&b| b == b'"')?])
}

/// Reads the server's log: sends the listening address on `tx`, prints warnings
/// and errors (up to [`LOGGED_PROBLEMS`]) and drops the rest. The log is one JSON
/// line per request at the default level, as in production; it is read in large
/// chunks through a 1 MiB pipe, a few times a second, so that reading it costs
/// little next to writing it.
fn read_log(mut stderr: std::process::ChildStderr, tx: &std::sync::mpsc::Sender<String>) {
    use std::io::Read;
    let _ = nix::fcntl::fcntl(&stderr, nix::fcntl::FcntlArg::F_SETPIPE_SZ(1 << 20));
    const LISTENING: &[u8] = b"DevPocket is listening";
    let mut chunk = vec![0u8; 1 << 20];
    let mut pending = Vec::new();
    let mut problems = 0;
    loop {
        let n = match stderr.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        pending.extend_from_slice(&chunk[..n]);
        let mut start = 0;
        while let Some(end) = pending[start..].iter().position(|&b| b == b'\n') {
            let line = &pending[start..start + end];
            start += end + 1;
            match level(line) {
                Some(b"WARN" | b"ERROR") => {
                    problems += 1;
                    if problems <= LOGGED_PROBLEMS {
                        eprintln!("server: {}", String::from_utf8_lossy(line));
                    }
                }
                Some(b"INFO") if line.windows(LISTENING.len()).any(|w| w == LISTENING) => {
                    if let Ok(json) = serde_json::from_slice::<Value>(line) {
                        let address = json["fields"]["address"].as_str().unwrap_or_default();
                        let _ = tx.send(address.to_owned());
                    }
                }
                _ => {}
            }
        }
        pending.drain(..start);
        std::thread::sleep(Duration::from_millis(5));
    }
}

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

/// Warnings and errors the server logged, printed up to this many.
const LOGGED_PROBLEMS: usize = 20;

pub struct Server {
    child: ServerProcess,
    secret: String,
    /// `http://127.0.0.1:PORT`
    pub base: String,
    /// `127.0.0.1:PORT`
    pub address: String,
    pub http: reqwest::Client,
}

impl Server {
    /// Starts `devpocket serve` on a free loopback port with `settings` and waits
    /// until it listens. The secret stays the same across restarts (tokens survive).
    pub fn start(secret: &str, settings: &[(&str, &str)]) -> anyhow::Result<Self> {
        let mut cmd = devpocket(secret);
        cmd.env("DEVPOCKET_LISTEN", "127.0.0.1:0");
        for (k, v) in settings {
            cmd.env(k, v);
        }
        let mut child = cmd
            .arg("serve")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting devpocket serve")?;
        let stderr = child.stderr.take().context("stderr")?;
        let child = ServerProcess(child);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || read_log(stderr, &tx));
        let base = rx
            .recv_timeout(Duration::from_secs(120))
            .context("the server did not start")?;
        let address = base
            .strip_prefix("http://")
            .context("the listening address is not http://")?
            .to_owned();
        Ok(Self {
            child,
            secret: secret.to_owned(),
            base,
            address,
            http: reqwest::Client::new(),
        })
    }

    /// Stops the server and its PostgreSQL.
    pub fn stop(self) {
        drop(self);
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Creates a user with the CLI (password on stdin).
    pub fn create_user(&self, username: &str, password: &str, plan: &str) -> anyhow::Result<()> {
        let mut create = devpocket(&self.secret)
            .args(["admin", "create-user", "--username", username])
            .args([
                "--email",
                &format!("{username}@example.com"),
                "--plan",
                plan,
            ])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()?;
        create
            .stdin
            .take()
            .context("stdin")?
            .write_all(format!("{password}\n").as_bytes())?;
        if !create.wait()?.success() {
            bail!("admin create-user failed");
        }
        Ok(())
    }

    /// Signs in; the access token.
    pub async fn login(&self, username: &str, password: &str) -> anyhow::Result<String> {
        let login: Value = self
            .http
            .post(self.url("/api/v1/auth/login"))
            .json(&json!({"username_or_email": username, "password": password}))
            .send()
            .await?
            .json()
            .await?;
        Ok(login["access_token"]
            .as_str()
            .with_context(|| format!("login gave no token: {login}"))?
            .to_owned())
    }

    /// Creates an environment from `template` and waits until it runs; its id.
    pub async fn create_environment(
        &self,
        token: &str,
        name: &str,
        template: &str,
    ) -> anyhow::Result<String> {
        let env: Value = self
            .http
            .post(self.url("/api/v1/environments"))
            .bearer_auth(token)
            .json(&json!({"name": name, "template_id": template}))
            .send()
            .await?
            .json()
            .await?;
        let id = env["id"]
            .as_str()
            .with_context(|| format!("creating the environment: {env}"))?
            .to_owned();
        let start = Instant::now();
        loop {
            let env: Value = self
                .http
                .get(self.url(&format!("/api/v1/environments/{id}")))
                .bearer_auth(token)
                .send()
                .await?
                .json()
                .await?;
            if env["status"] == "running" {
                return Ok(id);
            }
            if env["status"] == "error" || start.elapsed() > Duration::from_secs(300) {
                bail!("the environment did not start: {env}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Deletes an environment (its sshd, tmux, files, user) and waits until it is gone.
    pub async fn delete_environment(&self, token: &str, id: &str) {
        let url = self.url(&format!("/api/v1/environments/{id}"));
        let _ = self.http.delete(&url).bearer_auth(token).send().await;
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(60) {
            match self.http.get(&url).bearer_auth(token).send().await {
                Ok(r) if r.status() == 404 => break,
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    /// Every series of `/metrics`, by name with labels (`name{label="v"}`).
    pub async fn metrics(&self) -> anyhow::Result<Metrics> {
        let text = self
            .http
            .get(self.url("/metrics"))
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        Ok(Metrics(
            text.lines()
                .filter(|l| !l.starts_with('#'))
                .filter_map(|l| {
                    let (series, value) = l.rsplit_once(' ')?;
                    Some((series.to_owned(), value.parse().ok()?))
                })
                .collect(),
        ))
    }

    /// The server process's resident memory, in KiB (not PostgreSQL's).
    pub fn rss(&self) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.0.id()))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .context("no VmRSS")
    }
}

/// CPU time so far (in clock ticks): the machine's, and that of the server, its
/// PostgreSQL (the postmaster and its children) and this program.
pub struct Cpu {
    busy: u64,
    total: u64,
    server: u64,
    postgres: u64,
    me: u64,
}

/// `/proc/PID/stat`: (parent, user + system ticks).
fn process_ticks(pid: &str) -> Option<(u32, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name, which may hold spaces: state, ppid, … utime, stime.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ppid = fields.get(1)?.parse().ok()?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((ppid, utime + stime))
}

impl Server {
    pub fn cpu(&self) -> Cpu {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let ticks: Vec<u64> = stat
            .lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .skip(1)
            .take(8)
            .filter_map(|v| v.parse().ok())
            .collect();
        let total: u64 = ticks.iter().sum();
        // idle and iowait
        let idle = ticks.get(3).copied().unwrap_or(0) + ticks.get(4).copied().unwrap_or(0);
        let postmaster: Option<u32> =
            std::fs::read_to_string(data_dir().join("postgres/postmaster.pid"))
                .ok()
                .and_then(|s| s.lines().next()?.trim().parse().ok());
        let mut postgres = 0;
        if let Some(postmaster) = postmaster
            && let Ok(entries) = std::fs::read_dir("/proc")
        {
            for entry in entries.flatten() {
                let name = entry.file_name();
                let Some(pid) = name
                    .to_str()
                    .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
                else {
                    continue;
                };
                if let Some((ppid, ticks)) = process_ticks(pid)
                    && (ppid == postmaster || pid == postmaster.to_string())
                {
                    postgres += ticks;
                }
            }
        }
        let ticks_of = |pid: &str| process_ticks(pid).map_or(0, |(_, t)| t);
        Cpu {
            busy: total.saturating_sub(idle),
            total,
            server: ticks_of(&self.child.0.id().to_string()),
            postgres,
            me: ticks_of("self"),
        }
    }
}

impl Cpu {
    /// Where the CPU went since `before`, in % of one core.
    pub fn since(&self, before: &Cpu) -> String {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let total = self.total.saturating_sub(before.total).max(1) as f64;
        let pct = |ticks: u64| ticks as f64 / total * cores * 100.0;
        let busy = self.busy.saturating_sub(before.busy);
        let (server, postgres, me) = (
            self.server.saturating_sub(before.server),
            self.postgres.saturating_sub(before.postgres),
            self.me.saturating_sub(before.me),
        );
        format!(
            "server {:.0} %, PostgreSQL {:.0} %, this program {:.0} %, everything else {:.0} %, \
             idle {:.0} % (of {:.0} %)",
            pct(server),
            pct(postgres),
            pct(me),
            pct(busy.saturating_sub(server + postgres + me)),
            pct(self.total.saturating_sub(before.total).saturating_sub(busy)),
            cores * 100.0
        )
    }
}

/// One scrape of `/metrics`.
pub struct Metrics(BTreeMap<String, f64>);

impl Metrics {
    /// The sum of the series named `name` whose labels include every one of
    /// `labels` (`key="value"`); 0 when none.
    pub fn sum(&self, name: &str, labels: &[&str]) -> f64 {
        self.0
            .iter()
            .filter(|(series, _)| {
                let (n, rest) = series.split_once('{').unwrap_or((series, ""));
                n == name && labels.iter().all(|l| rest.contains(l))
            })
            .map(|(_, v)| v)
            .sum()
    }

    /// `devpocket_rate_limit_keys{limiter="ip"}`.
    pub fn ip_keys(&self) -> f64 {
        self.sum("devpocket_rate_limit_keys", &["limiter=\"ip\""])
    }
}

/// The report's header: where and when it ran.
pub fn header(quick: bool) -> String {
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
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).display().to_string();
    let commit = sh(&format!(
        "cd '{repo}' && git rev-parse --short HEAD && \
         (git diff --quiet HEAD -- . || echo '(with uncommitted changes)')"
    ))
    .replace('\n', " ");
    format!(
        "# API benchmarks{}\n\n- Date: {}\n- Command: `{}cargo bench --bench api` at commit {commit}\n\
         - Machine: {}, {} cores, {} ; {}\n- Load generator: {}; PostgreSQL: {}\n\
         - Everything on loopback: the server (release build, `DEVPOCKET_WORKERS` = cores, \
         logging at its default level, one JSON line per request, unless said otherwise), its \
         embedded PostgreSQL, wrk and this program share the machine.\n\
         - Load average when the run began (1, 5, 15 min): {}\n",
        if quick {
            " (BENCH_QUICK=1 smoke run)"
        } else {
            ""
        },
        sh("date -u +'%Y-%m-%d %H:%M UTC'"),
        if quick { "BENCH_QUICK=1 " } else { "" },
        sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'"),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        sh("grep MemTotal /proc/meminfo | awk '{printf \"%.0f GiB RAM\", $2/1048576}'"),
        sh("uname -sr"),
        sh("wrk -v 2>&1 | head -n1 | cut -d' ' -f1-2"),
        sh(
            "d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1); \
            \"${d:-$(pg_config --bindir)}/postgres\" --version"
        ),
        sh("cut -d' ' -f1-3 /proc/loadavg"),
    )
}
