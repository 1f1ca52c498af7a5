//! The `devpocket` binary as a process (the testkit's runner, with the tests'
//! secret and scratch directory): its commands, and `devpocket serve`.

use std::process::Command;

pub use devpocket_testkit::api::Api;
pub use devpocket_testkit::process::{Server, create_user, succeeded};

use super::SECRET_KEY;

/// The `devpocket` binary with only what a test sets: no DATABASE_URL or `.env`
/// leaking in from the caller.
pub fn devpocket() -> Command {
    let mut cmd = devpocket_testkit::process::command(env!("CARGO_BIN_EXE_devpocket"), SECRET_KEY);
    cmd.current_dir(env!("CARGO_TARGET_TMPDIR"));
    cmd
}

/// Runs `devpocket serve` from `cmd` (one worker, on a free port) until it
/// listens; stopped when dropped.
pub fn serve(mut cmd: Command) -> Server {
    cmd.env("DEVPOCKET_WORKERS", "1");
    Server::start(cmd).expect("devpocket serve")
}
