//! Environment users in the isolated mode (the server runs as root): one system
//! user and group per environment, with an id that no other account on this host
//! has had, and that no later environment gets again. A deleted tenant's files that
//! somehow survived (a crash between steps, a directory we did not think of) can
//! then never belong to the next tenant.
//!
//! Ids come from a range of their own, above the ranges `useradd` hands out to people
//! and to subordinate ids, and a host-wide high-water mark (kept under a lock, since
//! several servers may share a host) remembers the last one given, even after its
//! user is gone.

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use nix::unistd::{Gid, Uid, User};

use super::failed;
use crate::provider::ProviderError;

/// The first and last ids environment users get.
pub const FIRST_ID: u32 = 1_000_000_000;
pub const LAST_ID: u32 = 2_000_000_000;

/// The host-wide record of the last id handed out.
const STATE_DIR: &str = "/var/lib/devpocket";
const HIGH_WATER: &str = "/var/lib/devpocket/environment-ids";

/// The account a machine's processes run as.
#[derive(Debug, Clone)]
pub struct Account {
    pub name: String,
    pub uid: Uid,
    pub gid: Gid,
}

impl Account {
    pub fn lookup(name: &str) -> Result<Option<Self>, ProviderError> {
        let user = User::from_name(name).map_err(|e| failed("looking up a user", e))?;
        Ok(user.map(|u| Self {
            name: u.name,
            uid: u.uid,
            gid: u.gid,
        }))
    }

    /// The server's own user (environments share it when the server is not root).
    pub fn current() -> Result<Self, ProviderError> {
        let user = User::from_uid(Uid::effective())
            .map_err(|e| failed("looking up the server's user", e))?
            .ok_or_else(|| ProviderError::Setup("the server's user has no name".into()))?;
        Ok(Self {
            name: user.name,
            uid: user.uid,
            gid: user.gid,
        })
    }
}

/// The environment's user, created with a fresh id unless it exists. `home` is
/// recorded in the user database; `group` is a supplementary group (the one that
/// may pass through the directories above the environments).
pub fn ensure(name: &str, home: &Path, group: Option<&str>) -> Result<Account, ProviderError> {
    if let Some(account) = Account::lookup(name)? {
        return Ok(account);
    }
    let mut lock = HighWater::lock()?;
    // Made by another server between the lookup and the lock.
    if let Some(account) = Account::lookup(name)? {
        return Ok(account);
    }
    let id = lock.next()?;
    let out = command("groupadd")
        .args(["--system", "--gid", &id.to_string(), name])
        .output()
        .map_err(|e| failed("running groupadd", e))?;
    if !out.status.success() {
        return Err(failed("creating the environment's group", describe(&out)));
    }
    let mut useradd = command("useradd");
    if let Some(group) = group {
        useradd.args(["--groups", group]);
    }
    let out = useradd
        .args(["--system", "--no-create-home", "--shell", "/bin/bash"])
        .args(["--uid", &id.to_string(), "--gid", &id.to_string()])
        .arg("--home-dir")
        .arg(home)
        // `*`: no password, but not "locked" (sshd without PAM refuses locked accounts).
        .args(["--password", "*"])
        .arg(name)
        .output()
        .map_err(|e| failed("running useradd", e))?;
    if !out.status.success() {
        let _ = command("groupdel").arg(name).output();
        return Err(failed("creating the environment's user", describe(&out)));
    }
    drop(lock);
    Account::lookup(name)?.ok_or_else(|| {
        failed(
            "creating the environment's user",
            format!("user {name} was not created"),
        )
    })
}

/// Ends every process of the account: as the account itself, `kill -KILL -1`
/// reaches exactly its own processes, whatever they are called or however many
/// they fork. Repeated until none is left (bounded).
pub fn kill_all(account: &Account) -> Result<(), ProviderError> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let _ = command("setpriv")
            .arg(format!("--reuid={}", account.uid))
            .arg(format!("--regid={}", account.gid))
            .args(["--clear-groups", "--", "kill", "-KILL", "-1"])
            .stderr(Stdio::null())
            .status();
        let alive = command("pgrep")
            .args(["-u", &account.uid.to_string()])
            .stdout(Stdio::null())
            .status()
            .map_err(|e| failed("running pgrep", e))?;
        // pgrep: 1 means no process matched.
        if alive.code() == Some(1) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(failed(
                "ending the machine's processes",
                format!("the processes of {} would not end", account.name),
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Removes the account and its group (its processes must be gone). The id stays
/// used: the high-water mark never goes back.
pub fn remove(name: &str) -> Result<(), ProviderError> {
    if Account::lookup(name)?.is_some() {
        let out = command("userdel")
            .arg(name)
            .output()
            .map_err(|e| failed("running userdel", e))?;
        // 6: no such user (removed concurrently).
        if !out.status.success() && out.status.code() != Some(6) {
            return Err(failed("removing the environment's user", describe(&out)));
        }
    }
    if nix::unistd::Group::from_name(name)
        .map_err(|e| failed("looking up a group", e))?
        .is_some()
    {
        let _ = command("groupdel").arg(name).output();
    }
    Ok(())
}

/// Environment users whose home lies under `root`: (name, home).
pub fn under(root: &Path) -> Vec<(String, std::path::PathBuf)> {
    let Ok(passwd) = fs::read_to_string("/etc/passwd") else {
        return Vec::new();
    };
    passwd
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            let (name, uid, home) = (fields.first()?, fields.get(2)?, fields.get(5)?);
            let uid: u32 = uid.parse().ok()?;
            let home = Path::new(home);
            ((FIRST_ID..=LAST_ID).contains(&uid) && home.starts_with(root))
                .then(|| ((*name).to_owned(), home.to_path_buf()))
        })
        .collect()
}

/// The host-wide high-water mark, held under an exclusive lock.
struct HighWater {
    file: Flock<fs::File>,
}

impl HighWater {
    fn lock() -> Result<Self, ProviderError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(STATE_DIR)
            .map_err(|e| failed(&format!("creating {STATE_DIR}"), e))?;
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(HIGH_WATER)
            .map_err(|e| failed(&format!("opening {HIGH_WATER}"), e))?;
        let file = Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, e)| failed(&format!("locking {HIGH_WATER}"), e))?;
        Ok(Self { file })
    }

    /// The next id: above the last one handed out and above every id in use in
    /// the range (the record may be younger than the host's users).
    fn next(&mut self) -> Result<u32, ProviderError> {
        let mut text = String::new();
        self.file
            .read_to_string(&mut text)
            .map_err(|e| failed(&format!("reading {HIGH_WATER}"), e))?;
        let recorded: u32 = text.trim().parse().unwrap_or(0);
        let in_use = ["/etc/passwd", "/etc/group"]
            .iter()
            .filter_map(|f| fs::read_to_string(f).ok())
            .flat_map(|db| {
                db.lines()
                    .filter_map(|l| l.split(':').nth(2)?.parse::<u32>().ok())
                    .filter(|id| (FIRST_ID..=LAST_ID).contains(id))
                    .collect::<Vec<_>>()
            })
            .max()
            .unwrap_or(0);
        let next = recorded.max(in_use).max(FIRST_ID - 1) + 1;
        if next > LAST_ID {
            return Err(failed(
                "choosing the environment's user id",
                "no environment user ids are left on this host",
            ));
        }
        let file = &mut *self.file;
        file.set_len(0)
            .and_then(|()| file.seek(SeekFrom::Start(0)))
            .and_then(|_| file.write_all(format!("{next}\n").as_bytes()))
            .and_then(|()| file.sync_all())
            .map_err(|e| failed(&format!("writing {HIGH_WATER}"), e))?;
        Ok(next)
    }
}

/// A system tool, with a predictable environment.
fn command(program: &str) -> Command {
    let mut cmd = Command::new(program);
    cmd.env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("LANG", "C")
        .stdin(Stdio::null());
    cmd
}

pub fn describe(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    format!("{} ({})", stderr.trim(), out.status)
}
