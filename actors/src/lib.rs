//! DevPocket's actor tree: the Registry of user supervisors, environment actors
//! and terminal actors, and the `Provider` trait that knows where machines live.
//!
//! This crate knows neither HTTP nor SQL: it reaches persistence through the
//! `Store` trait, which the server implements.

pub mod app;
pub mod backoff;
pub mod deps;
pub mod environment;
pub mod inspect;
pub mod logs;
pub mod metrics;
pub mod model;
pub mod outside_ssh;
pub mod provider;
pub mod registry;
pub mod remote;
pub mod server;
pub mod ssh;
pub mod store;
pub mod supervisor;
pub mod terminal;

pub use deps::{ActorSettings, Deps, Gauges};
pub use registry::ActorSystem;

/// An error with all its causes, for the log: the messages errors show people
/// leave their causes out.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut chain = err.to_string();
    let mut next = err.source();
    while let Some(cause) = next {
        chain.push_str(": ");
        chain.push_str(&cause.to_string());
        next = cause.source();
    }
    chain
}
