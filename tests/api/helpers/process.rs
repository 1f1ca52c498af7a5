//! The `devpocket` binary as a process: its commands, and `devpocket serve`.

use serde_json::Value;

use super::SECRET_KEY;

/// The `devpocket` binary with only what a test sets: no DATABASE_URL or `.env`
/// leaking in from the caller.
pub fn devpocket() -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_devpocket"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DEVPOCKET_LOG_FORMAT", "json")
        .env("SECRET_KEY", SECRET_KEY)
        .current_dir(env!("CARGO_TARGET_TMPDIR"));
    cmd
}

/// Runs `devpocket serve` from `cmd` (on a free port) and returns the process with
/// its address, read from its log.
pub fn serve(mut cmd: std::process::Command) -> (std::process::Child, String) {
    use std::io::{BufRead, BufReader};
    let mut child = cmd
        .env("DEVPOCKET_LISTEN", "127.0.0.1:0")
        .env("DEVPOCKET_WORKERS", "1")
        .arg("serve")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn devpocket serve");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let Ok(json) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            if json["fields"]["message"] == "DevPocket is listening" {
                let address = json["fields"]["address"].as_str().unwrap_or_default();
                let _ = tx.send(address.to_owned());
            }
        }
    });
    let address = rx
        .recv_timeout(std::time::Duration::from_secs(120))
        .expect("server did not start");
    (child, address)
}
