//! The tests' Docker engine, for compose apps on users' servers: Debian's `dockerd`
//! with a data root of its own under the test root, no bridge and no iptables rules
//! (it touches no host networking: containers use the host's network, listening on
//! 127.0.0.1), started once per test run and reused while it answers, and the one
//! image the tests' apps run, `devpocket-busybox`, built `FROM scratch` from
//! Debian's static busybox (no image registry is reachable). `scripts/test` stops
//! the engine at the end.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use devpocket_testkit::poll_blocking;

use super::test_root;

pub const IMAGE: &str = "devpocket-busybox";

pub struct Docker {
    /// `unix:///…`, for `DOCKER_HOST`.
    pub host: String,
    /// The engine, when this process started it: it outlives the process (the
    /// next tests reuse it; `scripts/test` stops it).
    _engine: Option<std::process::Child>,
}

impl Docker {
    fn client(&self) -> Command {
        let mut cmd = Command::new("docker");
        cmd.env("DOCKER_HOST", &self.host);
        cmd
    }

    fn answers(&self) -> bool {
        self.client()
            .arg("version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }
}

/// The engine, started (and the image built) on first use.
pub fn docker() -> &'static Docker {
    static DOCKER: OnceLock<Docker> = OnceLock::new();
    DOCKER.get_or_init(start)
}

fn start() -> Docker {
    let dir = test_root().join("docker");
    std::fs::create_dir_all(&dir).unwrap();
    // Unix socket paths are short: the engine's runtime files go under /run, in a
    // directory named after this checkout's.
    let tag = format!("{:08x}", fnv(dir.to_string_lossy().as_bytes()));
    let run = PathBuf::from(format!("/run/devpocket-test-docker-{tag}"));
    std::fs::create_dir_all(&run).unwrap();
    let mut docker = Docker {
        host: format!("unix://{}", run.join("docker.sock").display()),
        _engine: None,
    };
    if !docker.answers() {
        let log = std::fs::File::create(dir.join("dockerd.log")).unwrap();
        let engine = Command::new("/usr/sbin/dockerd")
            .arg("--data-root")
            .arg(dir.join("data"))
            .arg("--exec-root")
            .arg(run.join("exec"))
            .arg("--pidfile")
            .arg(dir.join("dockerd.pid"))
            .arg("-H")
            .arg(&docker.host)
            .args(["--bridge=none", "--iptables=false", "--ip6tables=false"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("dockerd (scripts/test installs docker.io)");
        docker._engine = Some(engine);
        poll_blocking(Duration::from_secs(60), || {
            if docker.answers() { Ok(()) } else { Err(()) }
        })
        .unwrap_or_else(|()| {
            panic!(
                "dockerd did not answer: see {}",
                dir.join("dockerd.log").display()
            )
        });
    }
    build_image(&docker, &dir.join("image"));
    docker
}

/// `devpocket-busybox`: the static busybox and its applets, nothing else.
fn build_image(docker: &Docker, dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::copy("/bin/busybox", dir.join("busybox")).expect("a static busybox (busybox-static)");
    std::fs::write(
        dir.join("Dockerfile"),
        "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n",
    )
    .unwrap();
    let out = docker
        .client()
        .args(["build", "-q", "-t", IMAGE])
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "building {IMAGE}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn fnv(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}
