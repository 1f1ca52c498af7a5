//! DevPocket's actor tree: the Registry of user supervisors, environment and terminal
//! actors, and the `Provider` trait that knows where machines live.
//!
//! This crate knows neither HTTP nor SQL: it reaches persistence through traits that
//! the server crate implements.
