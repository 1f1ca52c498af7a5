//! What the server does inside a home directory, it does as the environment's own
//! user. The home and everything in it belong to the tenant, who can plant
//! symlinks, hard links and FIFOs anywhere in it; a process with the tenant's ids
//! and groups meets exactly the tenant's permissions, so whatever was planted leads
//! nowhere the tenant could not already write. Every such process is bounded in
//! time and in what it may print.

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{SyncSender, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use super::accounts::Account;
use super::failed;
use crate::provider::ProviderError;

/// How long one piece of work in a home may take (a FIFO planted where a file
/// was expected would otherwise block it forever).
const TIMEOUT: Duration = Duration::from_secs(10);
/// What such work may print (its own messages are a few lines).
const OUTPUT_LIMIT: u64 = 16 * 1024;

/// The environment's user, acting in its home.
pub struct Tenant<'a> {
    pub account: &'a Account,
    pub home: &'a Path,
    /// Whether the server is root and so must change to the tenant's ids. Otherwise
    /// environments run as the server's own user already.
    pub switch: bool,
}

impl Tenant<'_> {
    /// `program` run as the tenant (with the groups the user database gives it,
    /// as a login would), in a clean environment. `namespace` is a process whose
    /// mount namespace (the machine's private `/tmp`) it joins first.
    pub fn command(&self, program: &str, namespace: Option<Pid>) -> Command {
        let mut argv: Vec<String> = Vec::new();
        if let Some(pid) = namespace {
            argv.extend([
                "nsenter".into(),
                format!("--target={pid}"),
                "--mount".into(),
            ]);
            argv.push("--".into());
        }
        if self.switch {
            argv.extend([
                "setpriv".into(),
                format!("--reuid={}", self.account.uid),
                format!("--regid={}", self.account.gid),
                "--init-groups".into(),
                "--".into(),
            ]);
        }
        argv.push(program.into());
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .env_clear()
            .env("HOME", self.home)
            .env("USER", &self.account.name)
            .env("LOGNAME", &self.account.name)
            .env("SHELL", "/bin/bash")
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("LANG", "C.UTF-8")
            .current_dir("/")
            // Its own process group, so that a timeout ends all it started.
            .process_group(0);
        cmd
    }

    /// A writer that appends to the provisioning log, as the tenant.
    pub fn log_writer(&self) -> LogWriter {
        let mut appender = self.command("/bin/sh", None);
        appender.arg("-c").arg(APPEND_LOG);
        LogWriter::spawn(appender)
    }

    /// Runs `script` with `/bin/sh` as the tenant, `args` as `$1…`, `input` on its
    /// standard input; returns what it printed. Fails with what it said on error.
    pub fn sh(
        &self,
        what: &str,
        script: &str,
        args: &[&str],
        input: &[u8],
    ) -> Result<String, ProviderError> {
        let mut cmd = self.command("/bin/sh", None);
        cmd.arg("-c")
            .arg(script)
            .arg("sh")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| failed(what, e))?;
        let feeder = child.stdin.take().map(|mut stdin| {
            let input = input.to_vec();
            std::thread::spawn(move || {
                let _ = stdin.write_all(&input);
            })
        });
        let stdout = read_bounded(child.stdout.take(), OUTPUT_LIMIT);
        let stderr = read_bounded(child.stderr.take(), OUTPUT_LIMIT);
        let status = wait_bounded(&mut child, TIMEOUT);
        if let Some(feeder) = feeder {
            let _ = feeder.join();
        }
        let (stdout, stderr) = (stdout.join(), stderr.join());
        match status {
            Some(status) if status.success() => Ok(stdout),
            Some(status) => Err(ProviderError::ForOwner(format!(
                "{what}: {} ({status})",
                stderr.trim()
            ))),
            None => Err(ProviderError::ForOwner(format!(
                "{what}: gave up after {} s (is something in the home directory blocking, such as a FIFO?)",
                TIMEOUT.as_secs()
            ))),
        }
    }
}

/// Run as the tenant: appends its standard input to the provisioning log.
const APPEND_LOG: &str = r#"umask 077
dir="$HOME/.devpocket"
[ -d "$dir" ] || mkdir "$dir"
exec cat >> "$dir/provisioning.log"
"#;

/// The provisioning log, appended to by a process of the tenant's (the server never
/// opens a file in a home). Writing never blocks the installer: what the tenant's
/// process does not take in time (it may be stuck on a FIFO planted where the log
/// should be) is dropped.
pub struct LogWriter {
    tx: Option<SyncSender<Vec<u8>>>,
    child: Option<Child>,
    writer: Option<JoinHandle<()>>,
}

impl LogWriter {
    /// Starts `appender`, a tenant's command that appends its standard input to the
    /// log. If it cannot start, the lines go nowhere (the init's marker still decides).
    pub fn spawn(mut appender: Command) -> Self {
        let child = appender
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let mut child = match child {
            Ok(child) => child,
            Err(e) => {
                tracing::warn!(error = %e, "could not start the provisioning log's writer");
                return Self {
                    tx: None,
                    child: None,
                    writer: None,
                };
            }
        };
        // A few MiB of apt's output at most wait for the tenant's process.
        let (tx, rx) = sync_channel::<Vec<u8>>(256);
        let writer = child.stdin.take().map(|mut stdin| {
            std::thread::spawn(move || {
                for chunk in rx {
                    if stdin.write_all(&chunk).is_err() {
                        return;
                    }
                }
            })
        });
        Self {
            tx: Some(tx),
            child: Some(child),
            writer,
        }
    }

    pub fn line(&self, text: &str) {
        self.bytes(format!("{text}\n").as_bytes());
    }

    pub fn bytes(&self, data: &[u8]) {
        if let Some(tx) = &self.tx {
            let _ = tx.try_send(data.to_vec());
        }
    }
}

impl Drop for LogWriter {
    /// Lets the writer finish what it has, bounded in time.
    fn drop(&mut self) {
        self.tx = None;
        if let Some(child) = &mut self.child {
            wait_bounded(child, TIMEOUT);
        }
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

/// Reads at most `limit` bytes of a pipe on a thread of its own.
pub struct Reader(Option<std::thread::JoinHandle<String>>);

impl Reader {
    pub fn join(self) -> String {
        self.0.and_then(|h| h.join().ok()).unwrap_or_default()
    }
}

pub fn read_bounded(pipe: Option<impl Read + Send + 'static>, limit: u64) -> Reader {
    Reader(pipe.map(|pipe| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.take(limit).read_to_end(&mut bytes);
            String::from_utf8_lossy(&bytes).into_owned()
        })
    }))
}

/// Waits for `child` until `timeout`; past it, ends its whole process group (it is
/// not reaped yet, so its id cannot name anyone else) and answers `None`.
pub fn wait_bounded(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            _ => break,
        }
    }
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
    }
    let _ = child.wait();
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_that_takes_nothing_blocks_no_one() {
        // As a tenant's writer stuck opening a FIFO planted where the log should be.
        let mut stuck = Command::new("sleep");
        stuck.arg("600").process_group(0);
        let log = LogWriter::spawn(stuck);
        let line = vec![b'x'; 16 * 1024];
        for _ in 0..2048 {
            log.bytes(&line);
        }
        // Ends the writer (its whole process group) once past its time.
        drop(log);
    }
}
