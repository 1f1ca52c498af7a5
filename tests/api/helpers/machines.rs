//! Machines: what a test's local machines leave behind, and reaching an
//! environment over SSH the way the server does.

use std::time::Duration;

use devpocket::crypto::SecretBox;
use devpocket_actors::model::MachineAccess;
use devpocket_actors::ssh::SshSession;
use devpocket_testkit::cluster::on_own_runtime;
use diesel_async::RunQueryDsl;

use super::{SECRET_KEY, TestApp};

/// Removes what local machines under `data_dir` left (sshd, bootstrap, every
/// process, files and, as root, the user of each environment), so tests leave
/// nothing behind: the provider's own sweep, with no environment kept.
pub fn shut_down_machines(data_dir: &std::path::Path) {
    let environments = data_dir.join("environments");
    if !environments.is_dir() {
        return;
    }
    let group = nix::unistd::Uid::effective()
        .is_root()
        .then(|| "devpocket-env".to_owned());
    on_own_runtime(async move {
        match devpocket_actors::provider::local::LocalProvider::new(environments, group) {
            Ok(provider) => {
                if let Err(e) = provider.sweep(std::collections::HashSet::new()).await {
                    eprintln!("could not remove a test's machines: {e}");
                }
            }
            Err(e) => eprintln!("could not remove a test's machines: {e}"),
        }
    });
}

#[derive(diesel::QueryableByName)]
struct Access {
    #[diesel(sql_type = diesel::sql_types::Text)]
    ip_address: String,
    #[diesel(sql_type = diesel::sql_types::Integer)]
    ssh_port: i32,
    #[diesel(sql_type = diesel::sql_types::Text)]
    ssh_user: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    host_public_key: String,
    #[diesel(sql_type = diesel::sql_types::Bytea)]
    user_private_key: Vec<u8>,
}

/// How the server reaches an environment: its stored address and decrypted key.
pub async fn machine_access(app: &TestApp, id: &str) -> (MachineAccess, String) {
    let mut conn = app.db.connect().await;
    let row: Access = diesel::sql_query(
        "SELECT ip_address, ssh_port, ssh_user, host_public_key, user_private_key FROM environments WHERE id = $1",
    )
    .bind::<diesel::sql_types::Uuid, _>(uuid::Uuid::parse_str(id).unwrap())
    .get_result(&mut conn)
    .await
    .unwrap();
    // Stored encrypted: the raw column is not an OpenSSH key.
    assert!(!String::from_utf8_lossy(&row.user_private_key).contains("PRIVATE KEY"));
    let key = String::from_utf8(
        SecretBox::new(SECRET_KEY.as_bytes())
            .open(&row.user_private_key)
            .unwrap(),
    )
    .unwrap();
    let access = MachineAccess {
        host: row.ip_address,
        port: u16::try_from(row.ssh_port).unwrap(),
        user: row.ssh_user,
        host_public_key: row.host_public_key,
    };
    (access, key)
}

/// Opens SSH to an environment the way the server does.
pub async fn ssh(app: &TestApp, id: &str) -> SshSession {
    let (access, key) = machine_access(app, id).await;
    SshSession::connect(&access, &key).await.unwrap()
}

pub async fn run(session: &SshSession, command: &str) -> (u32, String) {
    let out = session
        .run(command, Duration::from_secs(20), 1 << 20)
        .await
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.unwrap_or(255), text)
}

/// The isolated mode (environments as system users of their own) exists only when
/// the server runs as root (as in CI).
pub fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

pub fn skipped() {
    eprintln!("skipped: the isolated mode needs the tests to run as root");
}

/// Waits (bounded: 30 s) until `uid` has no process left.
pub async fn until_no_process_of(uid: u32) {
    let what = format!("the processes of {uid} to end");
    super::eventually(Duration::from_secs(30), &what, async || {
        let out = std::process::Command::new("pgrep")
            .args(["-u", &uid.to_string()])
            .output()
            .unwrap();
        match out.status.code() {
            Some(1) => Ok(()),
            _ => Err(String::from_utf8_lossy(&out.stdout).into_owned()),
        }
    })
    .await;
}
