//! The `devpocket` binary as a process: a command with nothing from the caller's
//! environment, `devpocket serve` on a free loopback port (stopped when dropped),
//! and `admin create-user`.

use std::io::{Read, Write};
use std::process::{Child, ChildStderr, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::poll_blocking;

/// The `devpocket` binary at `bin` (the caller's `env!("CARGO_BIN_EXE_devpocket")`)
/// with nothing from the caller's environment but `PATH` — no `DATABASE_URL` or
/// `.env` leaking in — logging JSON lines (which [`Server`] reads).
pub fn command(bin: &str, secret: &str) -> Command {
    let mut cmd = Command::new(bin);
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DEVPOCKET_LOG_FORMAT", "json")
        .env("SECRET_KEY", secret);
    cmd
}

/// `admin create-user` from `cmd`, the password typed on stdin (it is never an
/// argument).
pub fn create_user(
    cmd: &mut Command,
    username: &str,
    plan: &str,
    password: &str,
) -> anyhow::Result<Output> {
    let mut child = cmd
        .args(["admin", "create-user", "--username", username, "--email"])
        .arg(format!("{username}@example.com"))
        .args(["--plan", plan])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting devpocket admin create-user")?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(format!("{password}\n").as_bytes())?;
    Ok(child.wait_with_output()?)
}

/// `out` if its command succeeded, else an error with what it said on stderr.
pub fn succeeded(out: Output) -> anyhow::Result<Output> {
    if !out.status.success() {
        bail!(
            "{}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

/// Warnings and errors a server logs, printed up to this many.
const LOGGED_PROBLEMS: usize = 20;

/// How long a server may take to listen, and to stop after SIGTERM.
const START: Duration = Duration::from_secs(120);
const STOP: Duration = Duration::from_secs(60);

/// `devpocket serve`, stopped (SIGTERM, which also stops an embedded PostgreSQL it
/// started) when dropped, whether its test or benchmark finished or failed.
pub struct Server {
    child: Child,
    /// `http://127.0.0.1:PORT`
    pub address: String,
}

impl Server {
    /// Runs `devpocket serve` from `cmd` on a free loopback port and waits until it
    /// listens (its address is read from its log).
    pub fn start(mut cmd: Command) -> anyhow::Result<Self> {
        let mut child = cmd
            .env("DEVPOCKET_LISTEN", "127.0.0.1:0")
            .arg("serve")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting devpocket serve")?;
        let stderr = child.stderr.take().context("stderr")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || read_log(stderr, &tx));
        let mut server = Self {
            child,
            address: String::new(),
        };
        server.address = rx.recv_timeout(START).context("the server did not start")?;
        Ok(server)
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Kills the server outright (SIGKILL), as a crash would, and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops the server (SIGTERM) and waits for it, at most a minute; how it ended.
    pub fn stop(mut self) -> anyhow::Result<ExitStatus> {
        self.terminate()
    }

    fn terminate(&mut self) -> anyhow::Result<ExitStatus> {
        if let Some(ended) = self.child.try_wait()? {
            return Ok(ended);
        }
        let pid = Pid::from_raw(i32::try_from(self.child.id())?);
        kill(pid, Signal::SIGTERM)?;
        let ended = poll_blocking(STOP, || match self.child.try_wait() {
            Ok(Some(ended)) => Ok(ended),
            Ok(None) => Err("still running".to_owned()),
            Err(e) => Err(e.to_string()),
        });
        match ended {
            Ok(ended) => Ok(ended),
            Err(still) => {
                self.kill();
                bail!("the server did not stop within {STOP:?} of SIGTERM: {still}")
            }
        }
    }

    /// The server process's resident memory, in KiB (not its PostgreSQL's).
    pub fn rss(&self) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .context("no VmRSS")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Err(e) = self.terminate() {
            eprintln!("stopping the server: {e}");
        }
    }
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
/// and errors (up to [`LOGGED_PROBLEMS`]) and drops the rest. Under load the log
/// is one JSON line per request, as in production: it is read in large chunks
/// through a 1 MiB pipe, a few times a second, so that reading it costs little
/// next to writing it.
fn read_log(mut stderr: ChildStderr, tx: &mpsc::Sender<String>) {
    // A larger pipe only makes reads rarer; the default one works too.
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
                    if let Ok(json) = serde_json::from_slice::<serde_json::Value>(line) {
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
