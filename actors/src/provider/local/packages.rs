//! The template's Debian packages on the host. A cloud machine installs them from its
//! cloud-init; a local machine uses the host's own. Here: which of them the host lacks
//! (asked of dpkg), and what an unprivileged server, which cannot install them, says.
//! Installing them as root is `install`'s.

use std::collections::HashSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::failed;
use super::tenant::{read_bounded, wait_bounded};
use crate::provider::ProviderError;

const DPKG_QUERY: &str = "/usr/bin/dpkg-query";
/// Each package's state, name and the virtual packages it provides (a package can be
/// there under another's name: a vendor's `nodejs` provides `npm`).
const STATUS_FORMAT: &str = "${db:Status-Abbrev}\t${Package}\t${Provides}\n";
/// What the package database may print (a few hundred bytes per package).
const STATUS_LIMIT: u64 = 16 * 1024 * 1024;
const QUERY_TIMEOUT: Duration = Duration::from_secs(60);

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
        return Err(ProviderError::ForOwner(format!(
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
        .map_err(|e| failed(what, e))?;
    let out = read_bounded(child.stdout.take(), STATUS_LIMIT);
    let status = wait_bounded(&mut child, QUERY_TIMEOUT);
    let out = out.join();
    match status {
        Some(status) if status.success() => Ok(Some(unsatisfied(wanted, &out))),
        Some(status) => Err(failed(what, format!("dpkg-query {status}"))),
        None => Err(failed(
            what,
            format!(
                "dpkg-query gave no answer within {} s",
                QUERY_TIMEOUT.as_secs()
            ),
        )),
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

/// Why an unprivileged server cannot make an environment whose packages are
/// missing: the owner reads which; the operator, in the log, what to run.
pub fn unprivileged_error(missing: &[String]) -> ProviderError {
    let list = missing.join(" ");
    tracing::warn!(
        packages = %list,
        "a template needs packages this host lacks, and the server does not run as root to install them: \
         install them as root (apt-get install {list}), or run the server as root, which installs them itself"
    );
    ProviderError::ForOwner(format!(
        "this server lacks packages the template needs: {list}; its operator has to install \
         them before this template can be used"
    ))
}

/// A system tool run as root, with a predictable environment.
pub fn system(program: &str) -> Command {
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
    use crate::provider::Cancel;
    use std::fs;

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
        // Not under /tmp: as root, the provider refuses machines there.
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../target/tmp")
            .join(format!("dp-unprivileged-{}", uuid::Uuid::new_v4()));
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
            message.contains("needs: devpocket-no-such-package;"),
            "{message}"
        );
        assert!(made.is_empty(), "{made:?}");
    }

    #[test]
    fn an_unprivileged_server_names_the_packages_to_the_owner() {
        let message = unprivileged_error(&names(&["golang-go", "git"])).to_string();
        assert!(message.contains("golang-go git"), "{message}");
        // What to run is the operator's business: in the log, not the message.
        assert!(!message.contains("apt-get"), "{message}");
    }
}
