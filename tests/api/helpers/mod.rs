//! The shared test harness, by concern: the test database (`database`), the
//! application and its HTTP clients (`app`), WebSockets (`ws`), the `devpocket`
//! binary (`process`), environments' machines (`machines`), users' own servers
//! (`target`), the Docker engine their apps run on (`docker`) and Google's key set
//! (`jwks`).

mod app;
mod browser;
mod database;
mod docker;
mod jwks;
mod machines;
mod mail;
mod process;
mod target;
mod ws;

pub use app::*;
pub use browser::*;
pub use database::*;
pub use docker::*;
pub use jwks::*;
pub use machines::*;
pub use mail::*;
pub use process::*;
pub use target::*;
pub use ws::*;

/// Polling, where no event can be awaited: the one way tests wait.
pub use devpocket_testkit::eventually;
