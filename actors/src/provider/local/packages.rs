//! The template's Debian packages on the host. A cloud machine installs them from its
//! cloud-init; a local machine uses the host's own, so when the server runs as root the
//! ones the host lacks are installed on it with apt — once, for every environment after
//! — before the machine's init runs the bootstrap, with apt's output in the
//! environment's provisioning log. Unprivileged, a missing package fails the create
//! with the command that installs it.
//!
//! One installation runs at a time in this process (others wait their turn and say so
//! in their logs); other processes using apt are waited for through apt's own lock.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use super::tenant::{LogWriter, read_bounded, wait_bounded};
use crate::provider::{Cancel, ProviderError};

const DPKG_QUERY: &str = "/usr/bin/dpkg-query";
const APT_GET: &str = "/usr/bin/apt-get";
/// Each package's state, name and the virtual packages it provides (a package can be
/// there under another's name: a vendor's `nodejs` provides `npm`).
const STATUS_FORMAT: &str = "${db:Status-Abbrev}\t${Package}\t${Provides}\n";
/// What the package database may print (a few hundred bytes per package).
const STATUS_LIMIT: u64 = 16 * 1024 * 1024;
const QUERY_TIMEOUT: Duration = Duration::from_secs(60);
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
pub const PREFIX: &str = "==> devpocket: ";

/// The packages of `wanted` that no installed package is or provides, in their order,
/// once each. `status` is what `dpkg-query -W -f STATUS_FORMAT` prints.
pub fn unsatisfied(wanted: &[String], status: &str) -> Vec<String> {
    let mut present: HashSet<&str> = HashSet::new();
    for line in status.lines() {
        let mut fields = line.split('\t');
        let (Some(state), Some(name)) = (fields.next(), fields.next()) else {
            continue;
        };
        // The second letter is the state: `i` for installed (`ii`, `hi`); a package
        // only unpacked, half-configured or removed is not there.
        if state.as_bytes().get(1) != Some(&b'i') {
            continue;
        }
        present.insert(name.trim());
        for provided in fields.next().unwrap_or_default().split(',') {
            // `npm (= 10.8.2)`: the name is the first word.
            if let Some(provided) = provided.split_whitespace().next() {
                present.insert(provided);
            }
        }
    }
    let mut seen = HashSet::new();
    wanted
        .iter()
        .filter(|p| !present.contains(p.as_str()) && seen.insert(p.as_str()))
        .cloned()
        .collect()
}

/// What the host lacks of `wanted`, asked of the package database; `None` on a host
/// without dpkg (not a Debian system: the bootstrap's own checks then decide).
pub fn missing(wanted: &[String]) -> Result<Option<Vec<String>>, ProviderError> {
    if wanted.is_empty() {
        return Ok(Some(Vec::new()));
    }
    // Templates are validated when written; these names reach apt's command line as
    // root, so they are checked again: no option can pass for a package.
    if let Some(bad) = wanted.iter().find(|p| !is_package_name(p)) {
        return Err(ProviderError::Failed(format!(
            "`{bad}` is not an apt package name"
        )));
    }
    if !Path::new(DPKG_QUERY).exists() {
        return Ok(None);
    }
    let what = "asking dpkg which packages are installed";
    let mut child = system(DPKG_QUERY)
        .args(["-W", "-f", STATUS_FORMAT])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| ProviderError::Failed(format!("{what}: {e}")))?;
    let out = read_bounded(child.stdout.take(), STATUS_LIMIT);
    let status = wait_bounded(&mut child, QUERY_TIMEOUT);
    let out = out.join();
    match status {
        Some(status) if status.success() => Ok(Some(unsatisfied(wanted, &out))),
        Some(status) => Err(ProviderError::Failed(format!(
            "{what}: dpkg-query {status}"
        ))),
        None => Err(ProviderError::Failed(format!(
            "{what}: dpkg-query gave no answer within {} s",
            QUERY_TIMEOUT.as_secs()
        ))),
    }
}

/// Debian policy: lowercase letters, digits, `+ - .`, at least two characters,
/// starting with a letter or digit.
fn is_package_name(name: &str) -> bool {
    (2..=100).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '+' | '-' | '.'))
}

/// Why an unprivileged server cannot make an environment whose packages are missing.
pub fn unprivileged_error(missing: &[String]) -> ProviderError {
    let list = missing.join(" ");
    ProviderError::Failed(format!(
        "this host lacks packages the template needs: {list}. The server does not run as \
         root, so it cannot install them: install them as root (apt-get install {list}) \
         and create the environment again, or run the server as root, which installs them \
         itself"
    ))
}

/// Why an installation stopped short.
#[derive(Debug)]
pub enum Stop {
    /// The environment is being deleted: nothing more is written.
    Cancelled,
    /// A line for the log saying what went wrong.
    Failed(String),
}

/// Installs what the host still lacks of `packages`, once it is this process's turn,
/// with apt's output in `log` (by way of a file in `scratch`, a directory of root's).
/// apt itself is never interrupted for a cancel: what it installs serves the next
/// environment too.
pub fn install(
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

/// A system tool run as root, with a predictable environment.
fn system(program: &str) -> Command {
    let mut cmd = Command::new(program);
    cmd.env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("LANG", "C")
        .stdin(Stdio::null())
        .current_dir("/");
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn only_installed_or_provided_packages_count() {
        let status = "ii \tgit\t\n\
                      ii \tnodejs\tnodejs-doc, npm (= 10.8.2)\n\
                      rc \tgolang-go\t\n\
                      iU \trustc\t\n\
                      hi \ttmux\t\n\
                      un \tcargo\t\n";
        let wanted = names(&[
            "git",
            "npm",
            "golang-go",
            "rustc",
            "tmux",
            "cargo",
            "golang-go",
        ]);
        assert_eq!(
            unsatisfied(&wanted, status),
            names(&["golang-go", "rustc", "cargo"])
        );
        assert!(unsatisfied(&[], status).is_empty());
    }

    #[test]
    fn only_package_names_reach_apt() {
        for bad in [
            "-oAPT::Update::Pre-Invoke::=id",
            "--purge",
            "Git",
            "a",
            "x y",
        ] {
            let error = missing(&names(&["git", bad])).unwrap_err().to_string();
            assert!(error.contains("not an apt package name"), "{bad}: {error}");
        }
    }

    #[test]
    fn the_host_database_is_asked() {
        let wanted = names(&["dpkg", "devpocket-no-such-package"]);
        let expected = Path::new(DPKG_QUERY)
            .exists()
            .then(|| names(&["devpocket-no-such-package"]));
        assert_eq!(missing(&wanted).unwrap(), expected);
    }

    #[test]
    fn an_unprivileged_create_fails_before_making_anything() {
        let root = std::env::temp_dir().join(format!("dp-unprivileged-{}", uuid::Uuid::new_v4()));
        let mut provider = super::super::LocalProvider::new(root.clone(), None).unwrap();
        // As if the server were not root (the tests run as root in CI).
        provider.as_root = false;
        let unused = || "unused".to_owned();
        let spec = crate::provider::MachineSpec {
            environment_id: uuid::Uuid::new_v4(),
            user_id: uuid::Uuid::new_v4(),
            slug: "tools".into(),
            region: "local".into(),
            size: "small".into(),
            bootstrap: "#!/bin/sh\n".into(),
            packages: names(&["dpkg", "devpocket-no-such-package"]),
            cloud_init: serde_json::Map::new(),
            environment_variables: std::collections::BTreeMap::new(),
            keys: crate::model::MachineKeys {
                host_private: unused(),
                host_public: unused(),
                user_private: unused(),
                user_public: unused(),
            },
        };
        let result = provider.create_blocking(&spec, &Cancel::never());
        let made: Vec<_> = fs::read_dir(&provider.root).unwrap().collect();
        let _ = fs::remove_dir_all(&root);
        if !Path::new(DPKG_QUERY).exists() {
            return;
        }
        let message = result.unwrap_err().to_string();
        assert!(
            message.contains("needs: devpocket-no-such-package.")
                && message.contains("apt-get install devpocket-no-such-package)"),
            "{message}"
        );
        assert!(made.is_empty(), "{made:?}");
    }

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

    #[test]
    fn an_unprivileged_server_names_the_packages_and_the_command() {
        let message = unprivileged_error(&names(&["golang-go", "git"])).to_string();
        assert!(message.contains("golang-go git"), "{message}");
        assert!(
            message.contains("apt-get install golang-go git"),
            "{message}"
        );
    }
}
