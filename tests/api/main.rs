//! Integration tests: the real application on port 0, a fresh PostgreSQL database
//! per test (cloned from a migrated template), driven over HTTP like the mobile app.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod accounts;
mod admin;
mod apps;
mod audit;
mod auth;
mod auto_stop;
mod cli;
mod console;
mod deletion;
mod digitalocean;
mod environments;
mod fake_do;
mod first_hour;
mod google;
mod health;
mod helpers;
mod hostile;
mod http;
mod isolation;
mod nul;
mod observability;
mod openapi;
mod poison;
mod processes;
mod provisioning_progress;
mod races;
mod ratelimit;
mod restart;
mod servers;
mod signin;
mod templates;
mod tenancy;
mod terminals;
mod tools;
