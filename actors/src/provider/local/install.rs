//! Installing a template's packages on the host, as root: on a thread of the server,
//! after the machine's sshd is up and before its init, so that `create` returns and the
//! provisioning log, where apt's output goes, is followed all along. The packages stay
//! for every environment after. When they cannot be installed, the log says why and
//! ends with the init's exit marker, and the init never runs.
//!
//! One installation runs at a time in this process (others wait their turn and say so
//! in their logs); other processes using apt are waited for through apt's own lock.

use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, ExitStatus};
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use super::accounts::Account;
use super::packages::{missing, system};
use super::tenant::LogWriter;
use super::{Layout, LocalProvider};
use crate::logs::EXIT_MARKER;
use crate::provider::{Cancel, MachineSpec, ProviderError};

const APT_GET: &str = "/usr/bin/apt-get";
/// How long apt may refresh its lists, and install; past that it is ended.
const UPDATE_TIMEOUT: Duration = Duration::from_secs(5 * 60);
const INSTALL_TIMEOUT: Duration = Duration::from_secs(20 * 60);
/// Lists refreshed this recently are not refreshed again.
const UPDATE_FRESH: Duration = Duration::from_secs(10 * 60);
/// How long apt waits for another process's apt or dpkg to finish (apt's own lock).
const APT_LOCK_TIMEOUT_SECS: u32 = 300;
/// How much of apt's output goes into one environment's log (apt prints a few
/// hundred bytes per package).
const FORWARD_LIMIT: u64 = 4 * 1024 * 1024;
/// How often apt's output is looked at, and how often a waiting log says it waits.
const POLL: Duration = Duration::from_millis(100);
const WAIT_NOTICE: Duration = Duration::from_secs(15);
/// Lines of the installer start like the init's own (reserved for the init).
const PREFIX: &str = "==> devpocket: ";

/// Run as the tenant when the init cannot start (its packages could not be
/// installed): takes the init's lock, so that it never runs, and ends the log as the
/// init would, with `$1` and the exit marker `$2`.
const FAIL_INIT: &str = r#"umask 077
dir="$HOME/.devpocket"
mkdir "$dir/init.lock" 2>/dev/null || exit 0
printf '%s\n%s\n' "$1" "$2" >> "$dir/provisioning.log"
"#;

impl LocalProvider {
    /// Installs the packages the host lacks on a thread of its own, then starts the
    /// init; `create` returns meanwhile, so the log (where apt's output goes) is
    /// followed from the start. At most one such thread per machine.
    pub(super) fn install_then_launch(
        &self,
        spec: &MachineSpec,
        account: &Account,
        cancel: &Cancel,
        missing: Vec<String>,
    ) {
        let id = spec.environment_id.to_string();
        let mut running = self
            .installing
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if !running.insert(id.clone()) {
            return;
        }
        drop(running);
        let (this, spec, account, cancel) =
            (self.clone(), spec.clone(), account.clone(), cancel.clone());
        std::thread::spawn(move || {
            this.install_blocking(&spec, &account, &cancel, &missing);
            this.installing
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&id);
        });
    }

    /// The installer thread's work: the packages, then the init, or the failure and
    /// the init's exit marker in the log. Nothing more once the environment is being
    /// deleted.
    fn install_blocking(
        &self,
        spec: &MachineSpec,
        account: &Account,
        cancel: &Cancel,
        missing: &[String],
    ) {
        if cancel.is_cancelled() {
            return;
        }
        let id = spec.environment_id.to_string();
        let layout = Layout::new(&self.root, &id);
        let tenant = self.tenant(account, &layout);
        let log = tenant.log_writer();
        let outcome = install(missing, &self.root, &log, cancel);
        // Everything written before the init's first line.
        drop(log);
        let _lock = self.lock(&id);
        // Deleted meanwhile: the delete removed (or is removing) it all.
        if cancel.is_cancelled() || !layout.home.exists() {
            return;
        }
        let failure = match outcome {
            Ok(()) => match self.launch_bootstrap(spec, &layout, account) {
                Ok(()) => return,
                Err(e) => format!("could not start the bootstrap: {e}"),
            },
            Err(Stop::Cancelled) => return,
            Err(Stop::Failed(message)) => message,
        };
        tracing::warn!(environment_id = %id, "{failure}");
        let line = format!("{PREFIX}{}", failure.replace(['\n', '\r'], " "));
        if let Err(e) = tenant.sh(
            "recording the failed installation",
            FAIL_INIT,
            &[&line, &format!("{EXIT_MARKER}1")],
            &[],
        ) {
            tracing::warn!(environment_id = %id, error = %e, "the failure could not reach the log");
        }
    }
}

/// Why an installation stopped short.
#[derive(Debug)]
enum Stop {
    /// The environment is being deleted: nothing more is written.
    Cancelled,
    /// A line for the log saying what went wrong.
    Failed(String),
}

/// Installs what the host still lacks of `packages`, once it is this process's turn,
/// with apt's output in `log` (by way of a file in `scratch`, a directory of root's).
/// apt itself is never interrupted for a cancel: what it installs serves the next
/// environment too.
fn install(
    packages: &[String],
    scratch: &Path,
    log: &LogWriter,
    cancel: &Cancel,
) -> Result<(), Stop> {
    let list = packages.join(" ");
    log.line(&format!(
        "{PREFIX}this host lacks packages the template needs, installing them: {list}"
    ));
    let _turn = Turn::wait(log, cancel)?;
    let failed = |e: ProviderError| Stop::Failed(e.to_string());
    // Another environment's installation may have brought them meanwhile.
    let missing = missing(packages).map_err(failed)?.unwrap_or_default();
    if missing.is_empty() {
        log.line(&format!("{PREFIX}the host has them all now"));
        return Ok(());
    }
    if cancel.is_cancelled() {
        return Err(Stop::Cancelled);
    }
    let list = missing.join(" ");
    refresh_lists(scratch, log);
    if cancel.is_cancelled() {
        return Err(Stop::Cancelled);
    }
    log.line(&format!("{PREFIX}apt-get install {list}"));
    let lock = format!("DPkg::Lock::Timeout={APT_LOCK_TIMEOUT_SECS}");
    let mut args = vec![
        "install",
        "-y",
        "--no-install-recommends",
        "-o",
        &lock,
        "-o",
        "Dpkg::Options::=--force-confdef",
        "-o",
        "Dpkg::Options::=--force-confold",
    ];
    args.extend(missing.iter().map(String::as_str));
    let status = run_logged(&args, scratch, INSTALL_TIMEOUT, log).map_err(Stop::Failed)?;
    if !status.success() {
        return Err(Stop::Failed(format!(
            "could not install {list}: apt-get install failed ({status}); see its messages above"
        )));
    }
    let left = self::missing(&missing).map_err(failed)?.unwrap_or_default();
    if !left.is_empty() {
        return Err(Stop::Failed(format!(
            "apt-get succeeded but the host still lacks {}",
            left.join(" ")
        )));
    }
    log.line(&format!("{PREFIX}installed {list}"));
    Ok(())
}

/// Refreshes apt's package lists unless this process did a little while ago. Installing
/// from the lists the host has may still work when it fails.
fn refresh_lists(scratch: &Path, log: &LogWriter) {
    let mut last = LAST_UPDATE.lock().unwrap_or_else(PoisonError::into_inner);
    if last.is_some_and(|at| at.elapsed() < UPDATE_FRESH) {
        return;
    }
    log.line(&format!(
        "{PREFIX}refreshing the package lists (apt-get update)"
    ));
    match run_logged(&["update"], scratch, UPDATE_TIMEOUT, log) {
        Ok(status) if status.success() => *last = Some(Instant::now()),
        Ok(status) => log.line(&format!(
            "{PREFIX}apt-get update failed ({status}); installing from the lists this host has"
        )),
        Err(message) => log.line(&format!(
            "{PREFIX}{message}; installing from the lists this host has"
        )),
    }
}

/// Runs apt-get with `args` until it ends or `timeout` passes, following its output
/// into `log`. The output goes to a file (made in `scratch` and unlinked at once, so
/// nothing is left behind) rather than a pipe, so that apt finishes its work even if
/// this server dies meanwhile. Only the holder of the turn calls this.
fn run_logged(
    args: &[&str],
    scratch: &Path,
    timeout: Duration,
    log: &LogWriter,
) -> Result<ExitStatus, String> {
    let io = |e: std::io::Error| format!("running apt-get: {e}");
    let path = scratch.join(format!(".apt-output-{}", std::process::id()));
    let _ = fs::remove_file(&path);
    let out = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(io)?;
    let reader = fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(&path);
    let _ = fs::remove_file(&path);
    let mut reader = reader.map_err(io)?;
    let mut child = system(APT_GET)
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdout(out.try_clone().map_err(io)?)
        .stderr(out)
        // Its own process group: a timeout ends dpkg and whatever it started too.
        .process_group(0)
        .spawn()
        .map_err(io)?;
    let deadline = Instant::now() + timeout;
    let mut forwarded = 0u64;
    loop {
        // Whether it ended is asked first: what it wrote before is then all there.
        let ended = child.try_wait().map_err(io)?;
        forward(&mut reader, &mut forwarded, log);
        if let Some(status) = ended {
            return Ok(status);
        }
        if Instant::now() > deadline {
            kill_group(&mut child);
            return Err(format!(
                "apt-get {} did not finish within {} minutes and was ended",
                args.first().copied().unwrap_or_default(),
                timeout.as_secs() / 60
            ));
        }
        std::thread::sleep(POLL);
    }
}

/// Passes on what apt wrote since the last call, up to `FORWARD_LIMIT` in all.
fn forward(reader: &mut File, forwarded: &mut u64, log: &LogWriter) {
    let mut buf = [0u8; 16 * 1024];
    while *forwarded < FORWARD_LIMIT {
        match reader.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let room = usize::try_from(FORWARD_LIMIT - *forwarded).unwrap_or(usize::MAX);
                let chunk = &buf[..n.min(room)];
                *forwarded += chunk.len() as u64;
                log.bytes(chunk);
                if *forwarded >= FORWARD_LIMIT {
                    log.line(&format!(
                        "\n{PREFIX}apt's output goes on; the rest is not shown"
                    ));
                }
            }
        }
    }
}

fn kill_group(child: &mut Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
    }
    let _ = child.wait();
}

/// This process's one installation at a time.
static BUSY: Mutex<bool> = Mutex::new(false);
static FREED: Condvar = Condvar::new();
/// When this process last refreshed apt's lists.
static LAST_UPDATE: Mutex<Option<Instant>> = Mutex::new(None);

/// The turn to run apt, held until dropped.
struct Turn;

impl Turn {
    fn wait(log: &LogWriter, cancel: &Cancel) -> Result<Self, Stop> {
        let since = Instant::now();
        let mut noticed = since;
        let mut busy = BUSY.lock().unwrap_or_else(PoisonError::into_inner);
        if *busy {
            log.line(&format!(
                "{PREFIX}waiting for another environment's installation to finish"
            ));
        }
        while *busy {
            if cancel.is_cancelled() {
                return Err(Stop::Cancelled);
            }
            busy = FREED
                .wait_timeout(busy, Duration::from_secs(1))
                .unwrap_or_else(PoisonError::into_inner)
                .0;
            if *busy && noticed.elapsed() >= WAIT_NOTICE {
                noticed = Instant::now();
                log.line(&format!(
                    "{PREFIX}still waiting ({} s)",
                    since.elapsed().as_secs()
                ));
            }
        }
        *busy = true;
        Ok(Self)
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        *BUSY.lock().unwrap_or_else(PoisonError::into_inner) = false;
        FREED.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn one_installation_runs_at_a_time() {
        let log = LogWriter::spawn(Command::new("/nonexistent/devpocket-no-such-program"));
        let first = Turn::wait(&log, &Cancel::never()).unwrap();
        // While it runs, no other gets a turn: a waiter that is cancelled gives up.
        let (canceller, cancel) = Cancel::new();
        canceller.cancel();
        assert!(matches!(Turn::wait(&log, &cancel), Err(Stop::Cancelled)));
        let waiter = std::thread::spawn(|| {
            let log = LogWriter::spawn(Command::new("/nonexistent/devpocket-no-such-program"));
            Turn::wait(&log, &Cancel::never()).is_ok()
        });
        drop(first);
        assert!(waiter.join().unwrap());
        // Free again once the waiter's turn ended.
        assert!(Turn::wait(&log, &cancel).is_ok());
    }
}
