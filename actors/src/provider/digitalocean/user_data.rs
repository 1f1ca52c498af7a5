//! Cloud-init user-data for a DigitalOcean droplet, from the environment's
//! template: a MIME multipart archive of
//! - cloud-config: the dev user (sudo, the environment's own public key, no
//!   password), the pre-seeded ed25519 host key the server pins, the home volume
//!   mounted at the user's home, the template's packages and extra cloud-config,
//!   a system-wide tmux configuration, an sshd drop-in that accepts `SHLVL`;
//! - a shell script cloud-init runs once at first boot (as root): it hands the
//!   home to the user and runs the template's bootstrap as that user, writing
//!   progress markers. Its output is `/var/log/cloud-init-output.log`.
//!
//! Never the user's password: the account is locked, SSH takes keys only.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::model::MachineKeys;
use crate::ssh::shell_quote;

/// DigitalOcean refuses larger user-data.
pub const MAX_USER_DATA: usize = 64 * 1024;

/// cloud-config keys DevPocket sets itself: a template cannot override them
/// (nor set a password).
const RESERVED: [&str; 12] = [
    "users",
    "ssh_keys",
    "ssh_authorized_keys",
    "ssh_pwauth",
    "disable_root",
    "mounts",
    "chpasswd",
    "password",
    "ssh_deletekeys",
    "ssh_genkeytypes",
    "ssh_publish_hostkeys",
    "user",
];

/// A device path for a DigitalOcean volume, as the droplet sees it.
pub fn volume_device(volume_name: &str) -> String {
    format!("/dev/disk/by-id/scsi-0DO_Volume_{volume_name}")
}

const TMUX_CONF: &str = "# DevPocket: terminals from a phone (written by cloud-init).\n\
set -g mouse on\n\
set -g history-limit 50000\n\
set -sg escape-time 10\n\
setw -g aggressive-resize on\n\
set -g default-terminal \"screen-256color\"\n";

/// Lets the server's own commands skip the user's shell start-up files (see
/// `SshSession::exec`). cloud-init writes it before sshd first starts (sshd waits
/// for cloud-init's network stage, which also installs the host key the server
/// pins), and Ubuntu's `sshd_config` includes `sshd_config.d/*.conf`.
const SSHD_DROP_IN: &str = "/etc/ssh/sshd_config.d/60-devpocket.conf";
const SSHD_CONF: &str = "# DevPocket (written by cloud-init).\nAcceptEnv SHLVL\n";

#[derive(Debug, Clone)]
pub struct UserDataSpec<'a> {
    pub environment_id: Uuid,
    pub slug: &'a str,
    pub user: &'a str,
    pub keys: &'a MachineKeys,
    /// The home volume's name, mounted at the user's home.
    pub volume_name: Option<&'a str>,
    pub packages: &'a [String],
    pub cloud_init: &'a Map<String, Value>,
    pub bootstrap: &'a str,
    pub environment_variables: &'a BTreeMap<String, String>,
}

#[derive(Debug, thiserror::Error)]
pub enum UserDataError {
    #[error(
        "the machine's cloud-init user-data would be {bytes} bytes, over DigitalOcean's limit of 64 KiB ({MAX_USER_DATA} bytes): shorten the template's bootstrap, packages or cloud_init"
    )]
    TooLarge { bytes: usize },
    #[error("rendering the cloud-init user-data: {0}")]
    Render(String),
}

/// A here-document delimiter that does not occur as a line of `body`.
fn delimiter(base: &str, body: &str) -> String {
    let mut candidate = base.to_owned();
    let mut n = 0;
    while body.lines().any(|l| l.trim() == candidate) {
        n += 1;
        candidate = format!("{base}_{n}");
    }
    candidate
}

fn heredoc(target: &str, base: &str, body: &str) -> String {
    let end = delimiter(base, body);
    let body = if body.ends_with('\n') {
        body.to_owned()
    } else {
        format!("{body}\n")
    };
    format!("cat > {target} <<'{end}'\n{body}{end}\n")
}

impl UserDataSpec<'_> {
    fn cloud_config(&self) -> Result<String, UserDataError> {
        let home = format!("/home/{}", self.user);
        let mut config = Map::new();
        config.insert(
            "users".into(),
            json!([{
                "name": self.user,
                "gecos": "DevPocket",
                "shell": "/bin/bash",
                // adm reads /var/log/cloud-init-output.log, which the server follows.
                "groups": ["adm", "sudo"],
                "sudo": "ALL=(ALL) NOPASSWD:ALL",
                "lock_passwd": true,
                "ssh_authorized_keys": [self.keys.user_public.trim()],
            }]),
        );
        config.insert("disable_root".into(), json!(true));
        config.insert("ssh_pwauth".into(), json!(false));
        config.insert("ssh_deletekeys".into(), json!(true));
        config.insert("ssh_genkeytypes".into(), json!([]));
        config.insert(
            "ssh_keys".into(),
            json!({
                "ed25519_private": self.keys.host_private,
                "ed25519_public": self.keys.host_public.trim(),
            }),
        );
        if let Some(volume) = self.volume_name {
            config.insert(
                "mounts".into(),
                json!([[
                    volume_device(volume),
                    home,
                    "ext4",
                    "defaults,nofail,discard,noatime",
                    "0",
                    "2"
                ]]),
            );
        }
        let mut packages: Vec<Value> = self.packages.iter().map(|p| json!(p)).collect();
        for (key, value) in self.cloud_init {
            if RESERVED.contains(&key.as_str()) {
                tracing::warn!(environment_id = %self.environment_id, key, "ignoring a template cloud-config key DevPocket sets itself");
                continue;
            }
            if key == "packages" {
                packages.extend(value.as_array().into_iter().flatten().cloned());
                continue;
            }
            config.insert(key.clone(), value.clone());
        }
        if !packages.is_empty() {
            config.insert("package_update".into(), json!(true));
            config.insert("packages".into(), Value::Array(packages));
        }
        let mut files = config
            .remove("write_files")
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default();
        files.push(json!({"path": "/etc/tmux.conf", "permissions": "0644", "content": TMUX_CONF}));
        files.push(json!({"path": SSHD_DROP_IN, "permissions": "0644", "content": SSHD_CONF}));
        config.insert("write_files".into(), Value::Array(files));
        let yaml = serde_norway::to_string(&Value::Object(config))
            .map_err(|e| UserDataError::Render(e.to_string()))?;
        Ok(format!(
            "#cloud-config\n# DevPocket environment {} ({}).\n{yaml}",
            self.slug, self.environment_id
        ))
    }

    /// What the user runs at first boot: variables, then the template's bootstrap.
    fn user_script(&self) -> String {
        let mut variables = String::new();
        for (key, value) in self.environment_variables {
            variables.push_str(&format!("export {key}={}\n", shell_quote(value)));
        }
        let hook =
            r#"[ -f "$HOME/.devpocket/environment.sh" ] && . "$HOME/.devpocket/environment.sh""#;
        format!(
            "#!/bin/sh\n\
             # The environment's first boot, as its user.\n\
             set -u\n\
             mkdir \"$HOME/.devpocket/init.lock\" 2>/dev/null || {{ echo '==> devpocket: the bootstrap ran already'; exit 0; }}\n\
             umask 077\n\
             cd \"$HOME\"\n\
             {env}\
             for rc in .profile .bashrc; do\n\
             \x20 grep -qs 'devpocket/environment.sh' \"$HOME/$rc\" || echo {hook} >> \"$HOME/$rc\"\n\
             done\n\
             {bootstrap}\
             . \"$HOME/.devpocket/environment.sh\"\n\
             export DEVPOCKET_ENVIRONMENT={slug} DEVPOCKET_ENVIRONMENT_ID={id}\n\
             echo '==> devpocket: running the template bootstrap'\n\
             status=0\n\
             /bin/sh \"$HOME/.devpocket/bootstrap.sh\" </dev/null 2>&1 || status=$?\n\
             echo \"==> devpocket: bootstrap finished (status $status)\"\n\
             exit \"$status\"\n",
            env = heredoc(
                "\"$HOME/.devpocket/environment.sh\"",
                "DEVPOCKET_ENV",
                &variables
            ),
            hook = shell_quote(hook),
            bootstrap = heredoc(
                "\"$HOME/.devpocket/bootstrap.sh\"",
                "DEVPOCKET_BOOTSTRAP",
                self.bootstrap
            ),
            slug = shell_quote(self.slug),
            id = self.environment_id,
        )
    }

    /// The shell part: as root (cloud-init) it hands a fresh home volume to the
    /// user, then runs the user's part as the user; as the user, it runs it.
    fn boot_script(&self) -> String {
        let user = shell_quote(self.user);
        format!(
            "#!/bin/sh\n\
             # DevPocket: first boot of the environment's machine (cloud-init runs this once).\n\
             set -u\n\
             DP_USER={user}\n\
             user_part() {{\n\
             {part}\
             }}\n\
             echo '==> devpocket: preparing the home directory'\n\
             if [ \"$(id -u)\" -eq 0 ]; then\n\
             \x20 home=$(getent passwd \"$DP_USER\" | cut -d: -f6)\n\
             \x20 [ -n \"$home\" ] || {{ echo \"==> devpocket: user $DP_USER is missing\"; exit 1; }}\n\
             \x20 mkdir -p \"$home\"\n\
             \x20 # A fresh volume belongs to root: hand it to the user, with the usual dotfiles.\n\
             \x20 if [ \"$(stat -c %U \"$home\")\" != \"$DP_USER\" ]; then\n\
             \x20   cp -rn /etc/skel/. \"$home\"/ 2>/dev/null || true\n\
             \x20   rm -rf \"$home/lost+found\"\n\
             \x20   chown -R \"$DP_USER:$DP_USER\" \"$home\"\n\
             \x20   chmod 0750 \"$home\"\n\
             \x20 fi\n\
             \x20 install -d -o \"$DP_USER\" -g \"$DP_USER\" -m 0700 \"$home/.devpocket\"\n\
             \x20 user_part > \"$home/.devpocket/init.sh\"\n\
             \x20 chown \"$DP_USER:$DP_USER\" \"$home/.devpocket/init.sh\"\n\
             \x20 exec runuser -u \"$DP_USER\" -- env HOME=\"$home\" USER=\"$DP_USER\" LOGNAME=\"$DP_USER\" SHELL=/bin/bash /bin/sh \"$home/.devpocket/init.sh\" </dev/null\n\
             fi\n\
             mkdir -p \"$HOME/.devpocket\" && chmod 0700 \"$HOME/.devpocket\"\n\
             user_part > \"$HOME/.devpocket/init.sh\"\n\
             exec /bin/sh \"$HOME/.devpocket/init.sh\" </dev/null\n",
            part = heredoc_stdout("DEVPOCKET_INIT", &self.user_script()),
        )
    }

    /// The whole user-data, or why it cannot be sent.
    pub fn render(&self) -> Result<String, UserDataError> {
        let parts = [
            (
                "text/cloud-config",
                "cloud-config.yaml",
                self.cloud_config()?,
            ),
            (
                "text/x-shellscript",
                "devpocket-init.sh",
                self.boot_script(),
            ),
        ];
        let mut boundary = format!("==DEVPOCKET-{}==", self.environment_id.simple());
        while parts.iter().any(|(_, _, body)| body.contains(&boundary)) {
            boundary = format!("==DEVPOCKET-{}==", Uuid::new_v4().simple());
        }
        let mut out = format!(
            "Content-Type: multipart/mixed; boundary=\"{boundary}\"\nMIME-Version: 1.0\n\n"
        );
        for (kind, name, body) in parts {
            out.push_str(&format!(
                "--{boundary}\nContent-Type: {kind}; charset=\"utf-8\"\nMIME-Version: 1.0\n\
                 Content-Transfer-Encoding: 8bit\nContent-Disposition: attachment; filename=\"{name}\"\n\n{body}"
            ));
            if !out.ends_with('\n') {
                out.push('\n');
            }
        }
        out.push_str(&format!("--{boundary}--\n"));
        if out.len() > MAX_USER_DATA {
            return Err(UserDataError::TooLarge { bytes: out.len() });
        }
        Ok(out)
    }
}

/// `cat <<'END' … END`: prints `body` as it is.
fn heredoc_stdout(base: &str, body: &str) -> String {
    let end = delimiter(base, body);
    format!("cat <<'{end}'\n{body}{end}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> MachineKeys {
        crate::ssh::generate_machine_keys("t").expect("keys")
    }

    #[test]
    fn renders_a_multipart_archive_with_pinned_keys_and_no_password() {
        let keys = keys();
        let mut vars = BTreeMap::new();
        vars.insert("GREETING".to_owned(), "it's here".to_owned());
        let mut extra = Map::new();
        extra.insert("timezone".into(), json!("UTC"));
        extra.insert("chpasswd".into(), json!({"list": "dev:secret"}));
        let spec = UserDataSpec {
            environment_id: Uuid::nil(),
            slug: "demo-000000",
            user: "dev",
            keys: &keys,
            volume_name: Some("devpocket-x"),
            packages: &["git".to_owned()],
            cloud_init: &extra,
            bootstrap: "#!/bin/sh\necho '==> [1/1] Hello'\nDEVPOCKET_BOOTSTRAP\n",
            environment_variables: &vars,
        };
        let data = spec.render().expect("renders");
        assert!(data.starts_with("Content-Type: multipart/mixed; boundary="));
        assert!(data.contains("text/cloud-config") && data.contains("text/x-shellscript"));
        let config = spec.cloud_config().expect("config");
        let yaml: serde_norway::Value = serde_norway::from_str(&config).expect("yaml");
        assert_eq!(yaml["users"][0]["name"], "dev");
        assert_eq!(yaml["users"][0]["lock_passwd"], true);
        assert_eq!(
            yaml["users"][0]["ssh_authorized_keys"][0].as_str(),
            Some(keys.user_public.trim())
        );
        assert_eq!(
            yaml["ssh_keys"]["ed25519_private"].as_str(),
            Some(keys.host_private.as_str())
        );
        assert_eq!(
            yaml["mounts"][0][0],
            "/dev/disk/by-id/scsi-0DO_Volume_devpocket-x"
        );
        assert_eq!(yaml["mounts"][0][1], "/home/dev");
        assert_eq!(yaml["timezone"], "UTC");
        let sshd = yaml["write_files"]
            .as_sequence()
            .expect("write_files")
            .iter()
            .find(|f| f["path"] == "/etc/ssh/sshd_config.d/60-devpocket.conf")
            .expect("the sshd drop-in");
        assert!(
            sshd["content"]
                .as_str()
                .is_some_and(|c| c.lines().any(|l| l == "AcceptEnv SHLVL"))
        );
        assert!(
            yaml.get("chpasswd").is_none(),
            "a template cannot set a password"
        );
        assert!(!data.contains("secret"));
        // The bootstrap's own delimiter-like line does not end its here-document.
        assert!(data.contains("DEVPOCKET_BOOTSTRAP_1"));
    }

    #[test]
    fn refuses_more_than_64_kib() {
        let keys = keys();
        let big = format!("#!/bin/sh\n{}\n", "echo x\n".repeat(10_000));
        let spec = UserDataSpec {
            environment_id: Uuid::nil(),
            slug: "big",
            user: "dev",
            keys: &keys,
            volume_name: None,
            packages: &[],
            cloud_init: &Map::new(),
            bootstrap: &big,
            environment_variables: &BTreeMap::new(),
        };
        let err = spec.render().expect_err("too large");
        assert!(err.to_string().contains("64 KiB"), "{err}");
    }
}
