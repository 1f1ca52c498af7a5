//! A hostile tenant against the isolated mode (the server runs as root): links
//! planted in its home for the server to follow, files left behind for the next
//! tenant, temporary files shared with its neighbours. Each test reproduces an
//! attack from the tenant's own shell; without root there is no isolated mode, and
//! the tests check what the unprivileged mode promises instead.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use devpocket_actors::logs::EXIT_MARKER;
use devpocket_actors::provider::local::LocalProvider;
use devpocket_actors::provider::{Cancel, MachineSpec, Provider};
use serde_json::Value;

use crate::helpers::{TestApp, eventually, shut_down_machines, test_root};
use crate::helpers::{is_root, run, skipped, ssh, until_no_process_of};

/// Files and a directory of root's outside any home, for links to point at.
struct Victims {
    dir: PathBuf,
}

impl Victims {
    const FILES: [&'static str; 4] = ["bashrc", "profile", "environment", "log"];

    fn plant() -> Self {
        let dir = test_root().join(format!("victims-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(dir.join("directory")).unwrap();
        for name in Self::FILES {
            std::fs::write(dir.join(name), format!("root's {name}\n")).unwrap();
        }
        Self { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    /// Every victim as planted: content, owner and mode; the directory empty.
    fn assert_untouched(&self) {
        for name in Self::FILES {
            let path = self.dir.join(name);
            let meta = std::fs::symlink_metadata(&path).unwrap();
            assert_eq!(
                std::fs::read_to_string(&path).unwrap(),
                format!("root's {name}\n"),
                "{name} was written"
            );
            assert_eq!((meta.uid(), meta.gid()), (0, 0), "{name} changed hands");
            assert_eq!(meta.mode() & 0o7777, 0o644, "{name} changed mode");
        }
        let dir = self.dir.join("directory");
        let meta = std::fs::symlink_metadata(&dir).unwrap();
        assert_eq!(
            (meta.uid(), meta.gid()),
            (0, 0),
            "the directory changed hands"
        );
        assert_eq!(meta.mode() & 0o7777, 0o755, "the directory changed mode");
        let entries: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().collect();
        assert!(
            entries.is_empty(),
            "files appeared in root's directory: {entries:?}"
        );
    }
}

impl Drop for Victims {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Asks for `action` (`start`, `stop`, `restart`) and waits until the environment
/// rests where the action leads (stopped after a stop, running after a start or a
/// restart, which passes through stopped on its way) or in error.
async fn lifecycle(app: &TestApp, token: &str, id: &str, action: &str) -> Value {
    let response = app
        .authed_client(token)
        .post(&format!("/api/v1/environments/{id}/{action}"), &Value::Null)
        .await;
    assert!(
        response.status().is_success(),
        "{action}: {}",
        response.status()
    );
    let rest = if action == "stop" {
        ("stopped", "stopped")
    } else {
        ("running", "ready")
    };
    app.wait_for_env(token, id, |e| {
        e["status"] == "error" || (e["status"] == rest.0 && e["phase"] == rest.1)
    })
    .await
}

fn home_of(app: &TestApp, id: &str) -> PathBuf {
    app.data_dir
        .canonicalize()
        .unwrap()
        .join("environments")
        .join(id)
        .join("home")
}

#[actix_web::test]
async fn links_planted_in_a_home_are_not_followed_when_the_machine_starts() {
    if !is_root() {
        return skipped();
    }
    let app = TestApp::spawn().await;
    let token = app.admin_token("planter").await;
    let id = app.ready_environment(&token, "planted", "ubuntu").await;
    let victims = Victims::plant();

    // The start-up files link to root's files (a file, last component); the state
    // directory links to root's directory (a directory, first component).
    let shell = ssh(&app, &id).await;
    let (status, out) = run(
        &shell,
        &format!(
            "ln -sf '{bashrc}' ~/.bashrc && ln -sf '{profile}' ~/.profile && \
             mv ~/.devpocket ~/.devpocket.own && ln -s '{dir}' ~/.devpocket",
            bashrc = victims.path("bashrc"),
            profile = victims.path("profile"),
            dir = victims.path("directory"),
        ),
    )
    .await;
    assert_eq!(status, 0, "{out}");
    shell.close().await;
    let env = lifecycle(&app, &token, &id, "restart").await;
    victims.assert_untouched();
    // The tenant broke its own machine, and is told so.
    assert_eq!(env["status"], "error", "{env}");
    let message = env["status_message"].as_str().unwrap_or_default();
    assert!(message.contains("environment's variables"), "{message}");

    // Inside a real state directory, the files the server writes are links (last
    // component), and a start-up file is a directory.
    let own = home_of(&app, &id);
    let plant = format!(
        "rm ~/.devpocket && mv ~/.devpocket.own ~/.devpocket && \
         ln -sf '{environment}' ~/.devpocket/environment.sh && \
         ln -sf '{environment}' ~/.devpocket/environment.sh.tmp && \
         rm -f ~/.profile && ln -s '{dir}' ~/.profile",
        environment = victims.path("environment"),
        dir = victims.path("directory"),
    );
    // The machine may be down (error): plant as the tenant would from a shell.
    as_tenant(&own, &plant);
    let env = lifecycle(&app, &token, &id, "start").await;
    assert_eq!(
        (env["status"].as_str(), env["phase"].as_str()),
        (Some("running"), Some("ready")),
        "{env}"
    );
    victims.assert_untouched();
    // The server's own file replaced the link, and is the tenant's.
    let written = own.join(".devpocket/environment.sh");
    let meta = std::fs::symlink_metadata(&written).unwrap();
    assert!(meta.file_type().is_file(), "{meta:?}");
    assert_eq!(meta.uid(), std::fs::metadata(&own).unwrap().uid());

    // Links to root's files from the home and from the machine's /tmp, as the
    // machine is deleted: the delete removes the links, not what they name.
    let shell = ssh(&app, &id).await;
    let (status, out) = run(
        &shell,
        &format!(
            "ln -s '{dir}' ~/escape && ln -s '{file}' ~/escape-file && \
             ln -s '{dir}' /tmp/escape && mkdir -p ~/deep/er && ln -s '{dir}' ~/deep/er/escape",
            dir = victims.dir.display(),
            file = victims.path("bashrc"),
        ),
    )
    .await;
    assert_eq!(status, 0, "{out}");
    shell.close().await;
    let deleted = app
        .authed_client(&token)
        .delete(&format!("/api/v1/environments/{id}"))
        .await;
    assert_eq!(deleted.status(), 202);
    app.wait_for_env(&token, &id, |e| e["code"] == "not_found")
        .await;
    assert!(!own.exists());
    victims.assert_untouched();
}

/// Runs `script` with the ids and groups of the owner of `home`, as that user's
/// own shell would (the test's stand-in for a terminal while the machine is down;
/// its groups reach a home under root's private directory, as the machine's do).
fn as_tenant(home: &Path, script: &str) {
    let meta = std::fs::metadata(home).unwrap();
    assert!(is_root());
    let out = std::process::Command::new("setpriv")
        .arg(format!("--reuid={}", meta.uid()))
        .arg(format!("--regid={}", meta.gid()))
        .args(["--init-groups", "--", "/bin/sh", "-c", script])
        .env("HOME", home)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// How long a machine's processes and files may take to show what a test waits for.
const SETTLE: Duration = Duration::from_secs(30);

const GROUP: &str = "devpocket-env";

fn machine_spec(bootstrap: &str) -> MachineSpec {
    let id = uuid::Uuid::new_v4();
    MachineSpec {
        environment_id: id,
        user_id: uuid::Uuid::new_v4(),
        slug: format!("t-{}", id.simple()),
        region: "local".into(),
        size: "small".into(),
        bootstrap: bootstrap.into(),
        packages: Vec::new(),
        cloud_init: serde_json::Map::new(),
        environment_variables: std::collections::BTreeMap::new(),
        keys: devpocket_actors::ssh::generate_machine_keys("tenancy").unwrap(),
    }
}

#[actix_web::test]
async fn a_create_writes_the_state_directory_the_bootstrap_and_its_log_as_the_tenant() {
    if !is_root() {
        return skipped();
    }
    let root = test_root().join(format!("provider-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&root).unwrap();
    devpocket::db::embedded::ensure_system_group(GROUP).unwrap();
    devpocket::db::embedded::ensure_traversable(
        &root.canonicalize().unwrap(),
        &format!("g:{GROUP}"),
    )
    .unwrap();
    let _cleanup = Machines(root.clone());
    let provider = LocalProvider::new(root.join("environments"), Some(GROUP.into())).unwrap();
    let spec = machine_spec("#!/bin/sh\necho bootstrapped\n");
    let id = spec.environment_id;
    let never = Cancel::never();
    provider.create(&spec, &never).await.unwrap();
    let home = root
        .canonicalize()
        .unwrap()
        .join("environments")
        .join(id.to_string())
        .join("home");
    let log = home.join(".devpocket/provisioning.log");
    eventually(SETTLE, "the bootstrap to end", async || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains(EXIT_MARKER) {
            Ok(())
        } else {
            Err(text)
        }
    })
    .await;
    let uid = std::fs::metadata(&home).unwrap().uid();
    until_no_process_of(uid).await;
    let victims = Victims::plant();

    // The create is resumed (after a crash, say) with the state directory a link
    // to root's directory (the first component of every file the init writes).
    as_tenant(
        &home,
        &format!(
            "mv ~/.devpocket ~/.devpocket.own && ln -s '{}' ~/.devpocket",
            victims.path("directory")
        ),
    );
    let refused = provider.create(&spec, &never).await;
    assert!(refused.is_err(), "the tenant's link was written through");
    victims.assert_untouched();

    // Again with a real state directory whose init has not run, and whose log is
    // a link to root's file (the last component).
    as_tenant(
        &home,
        &format!(
            "rm ~/.devpocket && mv ~/.devpocket.own ~/.devpocket && rmdir ~/.devpocket/init.lock && \
             ln -sf '{log}' ~/.devpocket/provisioning.log && \
             ln -sf '{bootstrap}' ~/.devpocket/bootstrap.sh.tmp",
            log = victims.path("log"),
            bootstrap = victims.path("environment"),
        ),
    );
    provider.create(&spec, &never).await.unwrap();
    // The init ran (it took its lock) and ended.
    let lock = home.join(".devpocket/init.lock");
    eventually(SETTLE, "the init to take its lock", async || {
        if lock.is_dir() {
            Ok(())
        } else {
            Err("no lock")
        }
    })
    .await;
    until_no_process_of(uid).await;
    victims.assert_untouched();

    provider.delete(id, None).await.unwrap();
    assert!(!home.exists());
}

/// Removes the machines under a data directory however the test ends.
struct Machines(PathBuf);

impl Drop for Machines {
    fn drop(&mut self) {
        shut_down_machines(&self.0);
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What `command` prints on `id`'s machine, checking it succeeded.
async fn on_machine(app: &TestApp, id: &str, command: &str) -> String {
    let shell = ssh(app, id).await;
    let (status, out) = run(&shell, command).await;
    shell.close().await;
    assert_eq!(status, 0, "{command}: {out}");
    out
}

/// Files under `dirs` owned by `uid`.
fn files_of(uid: u32, dirs: &[&Path]) -> String {
    let out = std::process::Command::new("find")
        .args(dirs)
        .args(["-xdev", "-uid", &uid.to_string()])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[actix_web::test]
async fn a_tenants_user_id_and_temporary_files_never_reach_another_tenant() {
    if !is_root() {
        return skipped();
    }
    let app = TestApp::spawn().await;
    let token = app.admin_token("leaver").await;
    let first = app.ready_environment(&token, "first", "ubuntu").await;
    let neighbour = app.ready_environment(&token, "neighbour", "ubuntu").await;
    let mark = uuid::Uuid::new_v4().simple().to_string();

    // The reproduction: setuid copies of a shell wherever anyone may write, and a
    // note in /tmp.
    let out = on_machine(
        &app,
        &first,
        &format!(
            "id -u && for d in /tmp /var/tmp /dev/shm /run/lock; do \
               cp /bin/sh \"$d/rootsh-{mark}\" && chmod 4755 \"$d/rootsh-{mark}\"; done && \
             echo secret > /tmp/note-{mark} && \
             findmnt -no OPTIONS /tmp && findmnt -no OPTIONS \"$HOME\""
        ),
    )
    .await;
    let mut lines = out.lines();
    let first_uid: u32 = lines.next().unwrap().trim().parse().unwrap();
    for options in lines {
        assert!(
            options.contains("nosuid") && options.contains("nodev"),
            "{options}"
        );
    }
    // Its /tmp is its own: neither the host nor its neighbour sees the files.
    for dir in ["/tmp", "/var/tmp", "/dev/shm", "/run/lock"] {
        assert!(
            !Path::new(&format!("{dir}/rootsh-{mark}")).exists(),
            "{dir} is shared"
        );
    }
    let seen = on_machine(&app, &neighbour, "ls -a /tmp /var/tmp /dev/shm /run/lock").await;
    assert!(!seen.contains(&mark), "{seen}");

    let deleted = app
        .authed_client(&token)
        .delete(&format!("/api/v1/environments/{first}"))
        .await;
    assert_eq!(deleted.status(), 202);
    app.wait_for_env(&token, &first, |e| e["code"] == "not_found")
        .await;

    let second = app.ready_environment(&token, "second", "ubuntu").await;
    let out = on_machine(
        &app,
        &second,
        "id -u && ls -a /tmp /var/tmp /dev/shm /run/lock",
    )
    .await;
    let second_uid: u32 = out.lines().next().unwrap().trim().parse().unwrap();
    assert!(
        second_uid > first_uid,
        "a user id was handed on: {first_uid} then {second_uid}"
    );
    assert!(!out.contains(&mark), "{out}");
    // Nothing of the first tenant is left anywhere it could have written.
    let data = app.data_dir.canonicalize().unwrap();
    let left = files_of(
        first_uid,
        &[
            Path::new("/tmp"),
            Path::new("/var/tmp"),
            Path::new("/dev/shm"),
            Path::new("/run/lock"),
            &data,
        ],
    );
    assert!(left.is_empty(), "left behind: {left}");
    assert!(
        nix::unistd::User::from_uid(first_uid.into())
            .unwrap()
            .is_none()
    );
}
