//! DevPocket server: the HTTP and WebSocket front of DevPocket's actor system.
//!
//! `startup::Application` builds the server; `cli` holds the commands `main` runs.

pub mod apps;
pub mod audit;
pub mod auth;
pub mod cli;
pub mod config;
pub mod console;
pub mod crypto;
pub mod data_dir;
pub mod db;
pub mod environments;
pub mod error;
pub mod http;
pub mod listener;
pub mod mail;
pub mod metrics;
pub mod openapi;
pub mod periodic;
pub mod plans;
pub mod ratelimit;
pub mod reconcile;
pub mod routes;
pub mod servers;
pub mod startup;
pub mod telemetry;
pub mod templates;
pub mod ws;
