//! API benchmarks: `cargo bench --bench api`.
//!
//! Sets everything up on loopback by itself — a release `devpocket serve` with its
//! embedded PostgreSQL in a temporary data directory, restarted with the settings
//! each part needs — drives it with wrk and a small client of its own, prints a
//! Markdown report (also written to `target/bench/api.md`), and stops everything it
//! started. Needs `wrk` on the PATH.
//!
//! `BENCH_QUICK=1` runs every measurement shorter (a smoke run).
//!
//! This file runs the servers one after the other and puts the report together;
//! each measurement and its section of the report is a module (`environments`,
//! `flood`, `refusals`, `memory`), as are the server (`server`), the load (`load`)
//! and the 429 path's peer (`peer`).

mod environments;
mod flood;
mod load;
mod memory;
mod peer;
mod refusals;
mod server;

use std::time::{Duration, Instant};

use flood::{Flood, health_during_logins};
use load::Wrk;
use server::Server;

const USER: &str = "bench";
const PASSWORD: &str = "Bench-password-1";
const ENVIRONMENTS: [&str; 2] = ["bench-a", "bench-b"];

/// How long each part runs.
struct Scale {
    /// A wrk throughput run, after a warm-up.
    run: Duration,
    warmup: Duration,
    /// `/health/live` alone, and under a login flood.
    probe: Duration,
    flood: Duration,
    /// Distinct client addresses per round of the memory part.
    keys: u32,
    /// The per-address limit of the memory part: one request keeps a key about two
    /// emission intervals (period/count), `key_hold`, which must outlast a round.
    key_limit: &'static str,
    key_hold: Duration,
}

fn main() -> anyhow::Result<()> {
    // This executable is also the 429 path's peer, started by itself.
    if let Ok(spec) = std::env::var(peer::ENV) {
        return peer::serve(&spec);
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(bench())
}

async fn bench() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; nothing else is accepted.
    let quick = std::env::var("BENCH_QUICK").is_ok_and(|v| v == "1");
    let scale = if quick {
        Scale {
            run: Duration::from_secs(4),
            warmup: Duration::from_secs(1),
            probe: Duration::from_secs(3),
            flood: Duration::from_secs(6),
            keys: 100_000,
            key_limit: "10/100s",
            key_hold: Duration::from_secs(20),
        }
    } else {
        Scale {
            run: Duration::from_secs(15),
            warmup: Duration::from_secs(3),
            probe: Duration::from_secs(20),
            flood: Duration::from_secs(25),
            keys: 1_000_000,
            key_limit: "15/10m",
            key_hold: Duration::from_secs(80),
        }
    };
    let started = Instant::now();
    let mut report = server::header(quick);
    server::fresh_root()?;
    let secret = hex::encode(rand::random::<[u8; 32]>());
    let result = run(&secret, &scale, &mut report).await;
    // Every server is stopped by now (dropped on the way out if a part failed).
    let _ = std::fs::remove_dir_all(server::root());
    result?;
    report.push_str(&format!(
        "\nThe whole run took {:.0} s.\n",
        started.elapsed().as_secs_f64()
    ));
    println!("{report}");
    devpocket_testkit::report::save(env!("CARGO_TARGET_TMPDIR"), "api.md", &report)?;
    Ok(())
}

/// What the report says, gathered part by part.
#[derive(Default)]
struct Sections {
    environments: String,
    floods: Vec<Flood>,
    /// Table rows and CPU lines.
    refusals: (String, String),
    memory: String,
}

async fn run(secret: &str, scale: &Scale, report: &mut String) -> anyhow::Result<()> {
    let mut sections = Sections::default();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    eprintln!("== limits raised: list of environments, /health/live during a login flood");
    raised(secret, scale, &mut sections).await?;
    eprintln!("== limits raised, one hash per core: /health/live during a login flood");
    one_hash(secret, scale, &mut sections).await?;
    eprintln!("== default limits: /health/live during a login flood, the 429 path");
    defaults(secret, scale, &mut sections).await?;
    eprintln!("== default limits, no request log: the 429 path");
    quiet(secret, scale, &mut sections).await?;
    eprintln!("== memory with many client addresses");
    memory::memory(secret, scale, &mut sections).await?;
    report.push_str(&format!(
        "\nThe server runs five times on the same data directory, restarted between parts:\n\n\
         1. limits raised: {} (and the defaults otherwise);\n\
         2. the same with `DEVPOCKET_HASH_CONCURRENCY={cores}`, one hash per core (the default \
         leaves one core free: {} here);\n\
         3. the default settings;\n\
         4. the default settings but `RUST_LOG={QUIET_LOG}`: no log line per request;\n\
         5. for the memory part: {}.\n\n\
         CPU shares are from `/proc` over each measurement, in % of one core ({} % is the whole \
         machine); \"everything else\" is mostly wrk (and whatever else the machine runs).\n",
        settings_list(&RAISED),
        hashes(cores.saturating_sub(1).max(1)),
        settings_list(&memory::settings(scale)),
        cores * 100,
    ));
    report.push_str(&sections.environments);
    report.push_str(&flood::section(&mut sections.floods, scale));
    report.push_str(&refusals::section(&sections.refusals, scale));
    report.push_str(&sections.memory);
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Limits out of the way: every request does the work it would do for a client
/// within its allowance.
const RAISED: [(&str, &str); 8] = [
    ("DEVPOCKET_RATE_LIMIT_IP", "1000000/1s"),
    // The bench user is on the `starter` plan: twice this.
    ("DEVPOCKET_RATE_LIMIT_USER", "500000/1s"),
    ("DEVPOCKET_RATE_LIMIT_REGISTER_IP", "1000000/1s"),
    ("DEVPOCKET_RATE_LIMIT_REFRESH_IP", "1000000/1s"),
    ("DEVPOCKET_RATE_LIMIT_LOGIN_FAILURES_IP", "1000000/1s"),
    ("DEVPOCKET_RATE_LIMIT_LOGIN_FAILURES_ACCOUNT", "1000000/1s"),
    // Half the flood's passwords are wrong; a lock would turn them into cheap 423s.
    ("DEVPOCKET_LOCKOUT_THRESHOLD", "1000000"),
    ("DEVPOCKET_LOCKOUT_DURATION", "1s"),
];

fn settings_list(settings: &[(&str, &str)]) -> String {
    settings
        .iter()
        .map(|(k, v)| format!("`{k}={v}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The first server: limits raised. The user and two running environments are made
/// here; the environments are deleted before it stops.
async fn raised(secret: &str, scale: &Scale, sections: &mut Sections) -> anyhow::Result<()> {
    let server = Server::start(secret, &RAISED)?;
    server.create_user(USER, PASSWORD, "starter")?;
    let token = server.api.login(USER, PASSWORD).await?;
    let mut ids = Vec::new();
    let result = async {
        for name in ENVIRONMENTS {
            eprintln!("creating environment {name}");
            let id = server
                .api
                .create_environment(&token, name, "ubuntu")
                .await?;
            ids.push(id.clone());
            server
                .api
                .running(&token, &id, environments::CREATE)
                .await?;
        }
        sections.environments = environments::list(&server, &token, scale).await?;
        eprintln!("== the list through a second process");
        let second = Server::start(secret, &RAISED)?;
        let two = environments::list_on_two(&server, &token, scale, &second).await;
        second.stop();
        sections.environments.push_str(&two?);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        sections.floods.push(
            health_during_logins(
                &server,
                scale,
                format!(
                    "1. limits raised, {} at once (default)",
                    hashes(cores.saturating_sub(1).max(1))
                ),
            )
            .await?,
        );
        anyhow::Ok(())
    }
    .await;
    for id in &ids {
        server.delete_environment(&token, id).await;
    }
    server.stop();
    result
}

fn hashes(n: usize) -> String {
    if n == 1 {
        "1 hash".to_owned()
    } else {
        format!("{n} hashes")
    }
}

/// The second server: as the first, one hash per core (what the default was).
async fn one_hash(secret: &str, scale: &Scale, sections: &mut Sections) -> anyhow::Result<()> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let concurrency = cores.to_string();
    let mut settings = RAISED.to_vec();
    settings.push(("DEVPOCKET_HASH_CONCURRENCY", &concurrency));
    let server = Server::start(secret, &settings)?;
    let flood = health_during_logins(
        &server,
        scale,
        format!("2. limits raised, {} at once (one per core)", hashes(cores)),
    )
    .await;
    server.stop();
    sections.floods.push(flood?);
    Ok(())
}

/// The third server: default limits. A login flood and the 429 path.
async fn defaults(secret: &str, scale: &Scale, sections: &mut Sections) -> anyhow::Result<()> {
    let server = Server::start(secret, &[])?;
    let result = async {
        sections
            .floods
            .push(health_during_logins(&server, scale, "3. default limits".to_owned()).await?);
        refusals::refused(
            &server,
            scale,
            "3. default limits",
            &[64, 256],
            &mut sections.refusals,
        )
        .await?;
        anyhow::Ok(())
    }
    .await;
    server.stop();
    result
}

const QUIET_LOG: &str = "warn,devpocket::cli=info";

/// The fourth server: default limits, no log line per request. The 429 path.
async fn quiet(secret: &str, scale: &Scale, sections: &mut Sections) -> anyhow::Result<()> {
    // The start-up lines stay (the address is read from them).
    let server = Server::start(secret, &[("RUST_LOG", QUIET_LOG)])?;
    // Spend the address's allowance first, as the login flood did on server 3.
    let result = async {
        let url = server.url("/api/v1/environments");
        Wrk::get("spend", url, 16, Duration::from_secs(1))
            .run()
            .await?;
        refusals::refused(
            &server,
            scale,
            "4. no request log",
            &[256],
            &mut sections.refusals,
        )
        .await?;
        let answer = refusals::a_refusal(&server).await?;
        refusals::by_peer(&answer, scale, &mut sections.refusals).await
    }
    .await;
    server.stop();
    result
}
