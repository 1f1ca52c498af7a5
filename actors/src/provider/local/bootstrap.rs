//! What runs inside a machine as its tenant: the environment's variables for its
//! shells, and the template's bootstrap run once as the machine's init.

use std::process::Stdio;

use super::accounts::Account;
use super::machine::{Layout, write_file};
use super::{LocalProvider, failed};
use crate::logs::EXIT_MARKER;
use crate::provider::{MachineSpec, ProviderError};
use crate::ssh::shell_quote;

/// Run as the tenant: the environment's variables for every login shell, and the
/// line in `~/.profile` and `~/.bashrc` that reads them. A start-up file the
/// tenant made unwritable is reported, not fatal.
const WRITE_ENVIRONMENT: &str = r#"set -eu
umask 077
dir="$HOME/.devpocket"
[ -d "$dir" ] || mkdir "$dir"
rm -f "$dir/environment.sh.tmp"
cat > "$dir/environment.sh.tmp"
mv -f "$dir/environment.sh.tmp" "$dir/environment.sh"
hook='[ -f "$HOME/.devpocket/environment.sh" ] && . "$HOME/.devpocket/environment.sh"'
for rc in "$HOME/.profile" "$HOME/.bashrc"; do
  grep -qsF '.devpocket/environment.sh' "$rc" || printf '%s\n' "$hook" >> "$rc" ||
    echo "could not add the environment hook to $rc"
done
"#;

/// Run as the tenant: the bootstrap, unless the init has run already (it says
/// `started` then).
const WRITE_BOOTSTRAP: &str = r#"set -eu
umask 077
dir="$HOME/.devpocket"
if [ -e "$dir/init.lock" ]; then echo started; exit 0; fi
rm -f "$dir/bootstrap.sh.tmp"
cat > "$dir/bootstrap.sh.tmp"
mv -f "$dir/bootstrap.sh.tmp" "$dir/bootstrap.sh"
"#;

impl LocalProvider {
    /// The environment's variables, for the init and for every login shell; written
    /// at each create and start, so a change takes effect at the next start.
    pub(super) fn write_environment(
        &self,
        spec: &MachineSpec,
        layout: &Layout,
        account: &Account,
    ) -> Result<(), ProviderError> {
        let mut env_file = String::from(
            "# Environment variables of this DevPocket environment (rewritten at start)\n",
        );
        for (key, value) in &spec.environment_variables {
            env_file.push_str(&format!("export {key}={}\n", shell_quote(value)));
        }
        let said = self.tenant(account, layout).sh(
            "writing the environment's variables",
            WRITE_ENVIRONMENT,
            &[],
            env_file.as_bytes(),
        )?;
        for line in said.lines() {
            tracing::warn!(environment_id = %spec.environment_id, "{line}");
        }
        Ok(())
    }

    /// Writes the bootstrap into the home; false if the init has started already.
    pub(super) fn write_bootstrap(
        &self,
        spec: &MachineSpec,
        layout: &Layout,
        account: &Account,
    ) -> Result<bool, ProviderError> {
        let said = self.tenant(account, layout).sh(
            "writing the bootstrap",
            WRITE_BOOTSTRAP,
            &[],
            spec.bootstrap.as_bytes(),
        )?;
        Ok(said.trim() != "started")
    }

    /// Runs the bootstrap as the machine's init, once per machine: the init takes an
    /// atomic lock (`mkdir`) before anything else, so a second launch — a resumed
    /// create after a crash — exits at once.
    pub(super) fn launch_bootstrap(
        &self,
        spec: &MachineSpec,
        layout: &Layout,
        account: &Account,
    ) -> Result<(), ProviderError> {
        let tenant = self.tenant(account, layout);
        // The log is opened by the init itself, as the tenant, after its lock.
        let init = format!(
            "# The machine's init: run the bootstrap once, then say how it ended.\n\
             mkdir \"$HOME/.devpocket/init.lock\" 2>/dev/null || exit 0\n\
             umask 077\n\
             exec >>\"$HOME/.devpocket/provisioning.log\" 2>&1\n\
             cd \"$HOME\"\n\
             . \"$HOME/.devpocket/environment.sh\"\n\
             status=0\n\
             /bin/sh \"$HOME/.devpocket/bootstrap.sh\" 2>&1 || status=$?\n\
             echo \"{EXIT_MARKER}$status\"\n"
        );
        // In the isolated mode it runs where the machine's shells run: in the
        // namespace of its sshd, with its private `/tmp`.
        let namespace = if self.as_root {
            Some(Self::sshd_pid(layout).ok_or_else(|| {
                ProviderError::ForOwner("the machine's sshd is not running".into())
            })?)
        } else {
            None
        };
        let child = tenant
            .command("/bin/sh", namespace)
            .arg("-c")
            .arg(init)
            .env("DEVPOCKET_ENVIRONMENT_ID", spec.environment_id.to_string())
            .env("DEVPOCKET_ENVIRONMENT", &spec.slug)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| failed("starting the bootstrap", e))?;
        if !self.as_root {
            // Without a user of its own, the machine's processes are found by group.
            write_file(
                &layout.bootstrap_pgid(),
                child.id().to_string().as_bytes(),
                0o600,
            )?;
        }
        // Reap it when it ends, without tying the machine to this thread.
        std::thread::spawn(move || {
            let mut child = child;
            let _ = child.wait();
        });
        Ok(())
    }
}
