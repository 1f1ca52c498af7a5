//! A server of a user's own, for the servers API: a real OpenSSH `sshd` on
//! 127.0.0.1 and a port of its own, with a host key of its own, that lets `root`
//! (the tests run as root) in with the keys authorized in its own file. Stopped,
//! with every connection to it, when dropped.

use std::fs;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use devpocket_testkit::poll_blocking;

use super::test_root;

pub struct TargetServer {
    pub port: u16,
    pub dir: PathBuf,
    /// The host key's fingerprint, `SHA256:…`.
    pub fingerprint: String,
    /// What its sessions get as environment (`SetEnv`).
    env: String,
    sshd: Option<Child>,
}

fn write(path: &std::path::Path, contents: &str) {
    let _ = fs::remove_file(path);
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(contents.as_bytes()))
        .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

impl TargetServer {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// A server whose sessions get `env` (`DOCKER_HOST`, say).
    pub fn start_with(env: &[(&str, &str)]) -> Self {
        let dir = test_root().join(format!("target-{}", uuid::Uuid::new_v4()));
        fs::create_dir_all(&dir).unwrap();
        write(&dir.join("authorized_keys"), "");
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut target = Self {
            port,
            dir,
            fingerprint: String::new(),
            env: env
                .iter()
                .map(|(k, v)| format!("SetEnv {k}={v}\n"))
                .collect(),
            sshd: None,
        };
        target.new_host_key();
        target.run();
        target
    }

    /// A host key of its own (another one than before), effective at the next start.
    pub fn new_host_key(&mut self) {
        let (private, public) = devpocket_actors::ssh::generate_keypair("target").unwrap();
        write(&self.dir.join("host_key"), &private);
        self.fingerprint = devpocket_actors::ssh::fingerprint(&public).unwrap();
    }

    /// Lets `public_key` in.
    pub fn authorize(&self, public_key: &str) {
        let path = self.dir.join("authorized_keys");
        let mut keys = fs::read_to_string(&path).unwrap();
        keys.push_str(public_key.trim());
        keys.push('\n');
        write(&path, &keys);
    }

    fn run(&mut self) {
        fs::create_dir_all("/run/sshd").unwrap();
        let d = self.dir.display();
        let config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\n\
             AuthorizedKeysFile {d}/authorized_keys\nPidFile {d}/sshd.pid\nAllowUsers root\n\
             PermitRootLogin prohibit-password\nPubkeyAuthentication yes\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n\
             StrictModes no\nPrintMotd no\nLogLevel ERROR\n{env}",
            port = self.port,
            env = self.env,
        );
        write(&self.dir.join("sshd_config"), &config);
        let child = Command::new("/usr/sbin/sshd")
            .arg("-D")
            .arg("-e")
            .arg("-f")
            .arg(self.dir.join("sshd_config"))
            .stdin(Stdio::null())
            .stderr(fs::File::create(self.dir.join("sshd.log")).unwrap())
            .spawn()
            .expect("sshd");
        self.sshd = Some(child);
        let port = self.port;
        poll_blocking(Duration::from_secs(10), || {
            TcpStream::connect(("127.0.0.1", port))
        })
        .expect("the target sshd listens");
    }

    /// Stops it: the server is offline.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.sshd.take() {
            // Its connections first (each is a child of its own session), as a
            // machine going away ends them.
            let _ = Command::new("pkill")
                .args(["-KILL", "-P", &child.id().to_string()])
                .status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again (with the host key it has now).
    pub fn restart(&mut self) {
        self.stop();
        self.run();
    }
}

impl Drop for TargetServer {
    fn drop(&mut self) {
        self.stop();
        let _ = fs::remove_dir_all(&self.dir);
    }
}
