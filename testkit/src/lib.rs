//! What the integration tests (`tests/api`) and the benchmarks (`benches/`) both
//! set up, in one place: polling until something holds (`poll`), a database of its
//! own per test in one embedded cluster (`cluster`), the `devpocket` binary and
//! `devpocket serve` on a free port as a process (`process`), a client of a served
//! instance's API (`api`), and the benchmarks' report (`report`).
//!
//! The root package's test and bench targets alone know where the binary and their
//! scratch directory are (`CARGO_BIN_EXE_devpocket`, `CARGO_TARGET_TMPDIR`): they
//! pass them in.
// Set-up code: a failure to set up is a failed test, said where it happened.
#![allow(clippy::expect_used)]

pub mod api;
pub mod cluster;
pub mod poll;
pub mod process;
pub mod report;

pub use poll::{eventually, poll, poll_blocking};
