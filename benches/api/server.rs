//! The server the benchmark runs against, started and stopped by it: a release
//! `devpocket serve` with its embedded PostgreSQL in a temporary data directory,
//! restarted with other settings between parts of the run (the data stays).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::Context;
use devpocket_testkit::api::Api;
use devpocket_testkit::process::{self, create_user, succeeded};
use devpocket_testkit::report::{machine, sh};

/// Everything the benchmark writes: the server's data directory and wrk's scripts.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("bench-api")
}

fn data_dir() -> PathBuf {
    root().join("data")
}

/// A `devpocket` command on the benchmark's data directory.
fn devpocket(secret: &str) -> Command {
    let mut cmd = process::command(env!("CARGO_BIN_EXE_devpocket"), secret);
    cmd.env("DEVPOCKET_DATA_DIR", data_dir());
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

pub struct Server {
    process: process::Server,
    secret: String,
    /// `127.0.0.1:PORT`
    pub address: String,
    /// The server's API, at `http://127.0.0.1:PORT`.
    pub api: Api,
}

impl Server {
    /// Starts `devpocket serve` on a free loopback port with `settings` and waits
    /// until it listens. The secret stays the same across restarts (tokens survive).
    pub fn start(secret: &str, settings: &[(&str, &str)]) -> anyhow::Result<Self> {
        let mut cmd = devpocket(secret);
        for (k, v) in settings {
            cmd.env(k, v);
        }
        let process = process::Server::start(cmd)?;
        let address = process
            .address
            .strip_prefix("http://")
            .context("the listening address is not http://")?
            .to_owned();
        let api = Api::new(&process.address);
        Ok(Self {
            process,
            secret: secret.to_owned(),
            address,
            api,
        })
    }

    /// Stops the server and its PostgreSQL.
    pub fn stop(self) {
        if let Err(e) = self.process.stop() {
            eprintln!("{e:#}");
        }
    }

    pub fn url(&self, path: &str) -> String {
        self.api.url(path)
    }

    /// Creates a user with the CLI (password on stdin).
    pub fn create_user(&self, username: &str, password: &str, plan: &str) -> anyhow::Result<()> {
        let mut cmd = devpocket(&self.secret);
        let out = create_user(cmd.env("RUST_LOG", "warn"), username, plan, password)?;
        succeeded(out).context("admin create-user")?;
        Ok(())
    }

    /// Deletes an environment (its sshd, tmux, files, user) and waits until it is gone.
    pub async fn delete_environment(&self, token: &str, id: &str) {
        if let Err(e) = self.api.delete_environment(token, id).await {
            eprintln!("{e:#}");
        }
    }

    /// Every series of `/metrics`, by name with labels (`name{label="v"}`).
    pub async fn metrics(&self) -> anyhow::Result<Metrics> {
        let text = self
            .api
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
        self.process.rss()
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
            server: ticks_of(&self.process.id().to_string()),
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
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).display().to_string();
    let commit = sh(&format!(
        "cd '{repo}' && git rev-parse --short HEAD && \
         (git diff --quiet HEAD -- . || echo '(with uncommitted changes)')"
    ))
    .replace('\n', " ");
    format!(
        "# API benchmarks{}\n\n- Date: {}\n- Command: `{}cargo bench --bench api` at commit {commit}\n\
         - Machine: {}\n- Load generator: {}; PostgreSQL: {}\n\
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
        machine(),
        sh("wrk -v 2>&1 | head -n1 | cut -d' ' -f1-2"),
        sh(
            "d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1); \
            \"${d:-$(pg_config --bindir)}/postgres\" --version"
        ),
        sh("cut -d' ' -f1-3 /proc/loadavg"),
    )
}
