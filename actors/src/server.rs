//! `ServerActor`: one per server a user registered — a machine of their own,
//! reached over SSH as the user they named, with the key they gave or one DevPocket
//! made, and only while it presents the host key they confirmed. It keeps at most
//! one SSH connection to the server, shared by every check and command and closed
//! once unused for `ServerSettings::connection_idle`; the actor itself stops after
//! `ActorSettings::environment_idle` without requests.
//!
//! It knows no database: each request carries how to reach the server
//! ([`ServerAccess`]), so a changed address, key or trusted host key takes effect
//! at the next request, on a new connection. Every read from the server is bounded
//! in bytes and time.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use serde::Serialize;
use uuid::Uuid;

use crate::deps::Deps;
use crate::inspect::{ActorStats, Instrumented, Kind, Registration};
use crate::model::MachineAccess;
use crate::ssh::{self, ExecOutput, Live, SshError, SshSession};

/// Timings and the address policy for users' servers.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// For the TCP connection, and again for the handshake and authentication.
    pub connect_timeout: Duration,
    /// For a status check's command.
    pub command_timeout: Duration,
    /// An SSH connection unused for this long is closed.
    pub connection_idle: Duration,
    /// Whether servers may be on loopback, private, link-local or other
    /// non-public addresses (the server's own network).
    pub allow_private_addresses: bool,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            command_timeout: Duration::from_secs(30),
            connection_idle: Duration::from_secs(60),
            allow_private_addresses: false,
        }
    }
}

/// How to reach a server, as its owner set it up.
#[derive(Clone, PartialEq, Eq)]
pub struct ServerAccess {
    pub host: String,
    pub port: u16,
    pub username: String,
    /// The client key, OpenSSH format, decrypted only in memory.
    pub private_key: String,
    /// The host key its owner confirmed, `ssh-ed25519 AAAA…`.
    pub host_key: String,
}

impl fmt::Debug for ServerAccess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerAccess")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// What a status check found (each figure `None` when the server did not say).
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct ServerFacts {
    pub uptime_seconds: Option<u64>,
    /// Over 1, 5 and 15 minutes.
    pub load_average: Option<[f64; 3]>,
    pub memory_total_bytes: Option<u64>,
    pub memory_used_bytes: Option<u64>,
    /// The root file system.
    pub disk_total_bytes: Option<u64>,
    pub disk_used_bytes: Option<u64>,
    /// Whether a Docker engine answers the user.
    pub docker: bool,
    /// How compose is run there: `docker compose` or `docker-compose`; `None`
    /// when neither is.
    pub compose: Option<String>,
    /// Containers running, when Docker answers.
    pub containers_running: Option<u64>,
}

/// Why a request to a server failed; `status` is what the server's record says.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ServerError {
    #[error("{0}")]
    Offline(String),
    #[error("the server refused the key for user {0}")]
    AuthFailed(String),
    #[error(
        "the server presented the host key {presented}, not the trusted {trusted}; confirm the new one only if you know why it changed"
    )]
    HostKeyMismatch { presented: String, trusted: String },
    #[error("the stored key cannot be used: {0}")]
    BadKey(String),
    #[error("the command on the server failed: {0}")]
    Command(String),
    #[error("the server's controller stopped; try again")]
    Stopped,
}

impl ServerError {
    /// The server's `status` after this error.
    pub fn status(&self) -> &'static str {
        match self {
            Self::AuthFailed(_) | Self::BadKey(_) => "auth_failed",
            Self::HostKeyMismatch { .. } => "host_key_mismatch",
            Self::Offline(_) | Self::Command(_) | Self::Stopped => "offline",
        }
    }

    fn of_connect(err: SshError) -> Self {
        match err {
            SshError::AuthRejected(user) => Self::AuthFailed(user),
            SshError::HostKeyMismatch {
                presented,
                expected,
            } => Self::HostKeyMismatch {
                presented,
                trusted: expected,
            },
            SshError::Key(e) => Self::BadKey(e),
            other => Self::Offline(other.to_string()),
        }
    }
}

impl From<MailboxError> for ServerError {
    fn from(_: MailboxError) -> Self {
        Self::Stopped
    }
}

/// Whether DevPocket may connect to `ip` when private addresses are not allowed:
/// a public unicast address.
pub fn is_public(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || a == 0
                || a >= 240
                || (a == 100 && (64..128).contains(&b))
                || (a == 198 && (b == 18 || b == 19)))
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
                || (first == 0x2001 && v6.segments()[1] == 0x0db8))
        }
    }
}

/// The address DevPocket connects to for `host:port`: the first one it resolves
/// to, refused when it is not public and `allow_private` is off (checked on what
/// the name resolves to now, not on the name).
pub async fn resolve(
    host: &str,
    port: u16,
    allow_private: bool,
    timeout: Duration,
) -> Result<SocketAddr, ServerError> {
    let lookup = tokio::net::lookup_host((host, port));
    let addr = tokio::time::timeout(timeout, lookup)
        .await
        .map_err(|_| ServerError::Offline(format!("resolving {host} timed out")))?
        .map_err(|e| ServerError::Offline(format!("{host} cannot be resolved: {e}")))?
        .next()
        .ok_or_else(|| ServerError::Offline(format!("{host} resolves to no address")))?;
    if !allow_private && !is_public(addr.ip()) {
        return Err(ServerError::Offline(format!(
            "{host} is a private address ({}): DevPocket connects only to servers on public addresses here",
            addr.ip()
        )));
    }
    Ok(addr)
}

/// The host key the server at `host:port` presents now, for its owner to confirm.
pub async fn presented_host_key(
    settings: &ServerSettings,
    host: &str,
    port: u16,
) -> Result<String, ServerError> {
    let addr = resolve(
        host,
        port,
        settings.allow_private_addresses,
        settings.connect_timeout,
    )
    .await?;
    ssh::presented_host_key(
        &host_for(addr),
        port,
        settings.connect_timeout,
        settings.connect_timeout,
    )
    .await
    .map_err(|e| ServerError::Offline(e.to_string()))
}

fn host_for(addr: SocketAddr) -> String {
    match addr.ip() {
        IpAddr::V4(ip) => ip.to_string(),
        IpAddr::V6(ip) => format!("[{ip}]"),
    }
}

/// The most a check prints: a dozen short lines.
const CHECK_MAX_BYTES: usize = 16 * 1024;

/// Prints `key=value` lines: uptime, load, memory and root disk from `/proc` and
/// `df`, and whether Docker and compose are there and how many containers run.
pub const CHECK_COMMAND: &str = "echo \"uptime=$(cut -d' ' -f1 /proc/uptime 2>/dev/null)\"; \
     echo \"load=$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null)\"; \
     echo \"memory_kb=$(awk '/^MemTotal:/{t=$2} /^MemAvailable:/{a=$2} END{print t, a}' /proc/meminfo 2>/dev/null)\"; \
     echo \"disk_kb=$(df -Pk / 2>/dev/null | awk 'NR==2{print $2, $3}')\"; \
     if docker info --format '{{.ServerVersion}}' >/dev/null 2>&1; then \
       echo docker=yes; echo \"containers=$(docker ps -q 2>/dev/null | wc -l)\"; \
     else echo docker=no; fi; \
     if docker compose version >/dev/null 2>&1; then echo 'compose=docker compose'; \
     elif command -v docker-compose >/dev/null 2>&1; then echo compose=docker-compose; \
     else echo compose=; fi";

/// Reads what [`CHECK_COMMAND`] printed; lines it does not know are skipped.
pub fn parse_check(out: &str) -> ServerFacts {
    let mut facts = ServerFacts::default();
    let numbers = |v: &str| -> Vec<f64> {
        v.split_whitespace()
            .filter_map(|n| n.parse::<f64>().ok())
            .filter(|n| n.is_finite() && *n >= 0.0)
            .collect()
    };
    let whole = |n: f64| n as u64;
    for line in out.lines() {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let n = numbers(value);
        match (key, n.as_slice()) {
            ("uptime", [up, ..]) => facts.uptime_seconds = Some(whole(*up)),
            ("load", [a, b, c, ..]) => facts.load_average = Some([*a, *b, *c]),
            ("memory_kb", [total, available, ..]) => {
                facts.memory_total_bytes = Some(whole(*total).saturating_mul(1024));
                facts.memory_used_bytes =
                    Some(whole((total - available).max(0.0)).saturating_mul(1024));
            }
            ("disk_kb", [total, used, ..]) => {
                facts.disk_total_bytes = Some(whole(*total).saturating_mul(1024));
                facts.disk_used_bytes = Some(whole(*used).saturating_mul(1024));
            }
            ("docker", _) => facts.docker = value.trim() == "yes",
            ("containers", [n, ..]) => facts.containers_running = Some(whole(*n)),
            ("compose", _) => {
                facts.compose = match value.trim() {
                    v @ ("docker compose" | "docker-compose") => Some(v.to_owned()),
                    _ => None,
                }
            }
            _ => {}
        }
    }
    facts
}

/// The one connection, and when it was last used.
struct Pool {
    conn: Option<(ServerAccess, Arc<SshSession>)>,
    used: Instant,
}

pub struct ServerActor {
    deps: Arc<Deps>,
    pool: Arc<tokio::sync::Mutex<Pool>>,
    last_request: Instant,
    registration: Registration,
}

impl ServerActor {
    pub fn new(deps: Arc<Deps>, user_id: Uuid, id: Uuid) -> Self {
        let registration = deps.inspector.register(
            Kind::Server,
            format!("server:{id}"),
            vec![format!("user:{user_id}")],
        );
        registration.stats.set_state("idle");
        Self {
            deps,
            pool: Arc::new(tokio::sync::Mutex::new(Pool {
                conn: None,
                used: Instant::now(),
            })),
            last_request: Instant::now(),
            registration,
        }
    }
}

impl Instrumented for ServerActor {
    fn stats(&self) -> &Arc<ActorStats> {
        &self.registration.stats
    }
}

crate::instrumented!(ServerActor);

impl Actor for ServerActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let idle = self.deps.servers.connection_idle;
        let every = (idle / 4).clamp(Duration::from_millis(100), Duration::from_secs(15));
        ctx.run_interval(every, move |act, ctx| {
            // Busy (a request holds the pool): not idle.
            if let Ok(mut pool) = act.pool.try_lock()
                && pool.used.elapsed() >= idle
                && let Some((_, session)) = pool.conn.take()
            {
                act.registration.stats.set_state("idle");
                actix::spawn(async move { session.close().await });
            }
            if act.last_request.elapsed() >= act.deps.settings.environment_idle {
                ctx.stop();
            }
        });
    }
}

/// Stops the actor now (its server was deleted), closing its connection.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Forget;

impl Handler<Forget> for ServerActor {
    type Result = ();

    fn handle(&mut self, _: Forget, ctx: &mut Context<Self>) {
        let pool = self.pool.clone();
        actix::spawn(async move {
            if let Some((_, session)) = pool.lock().await.conn.take() {
                session.close().await;
            }
        });
        ctx.stop();
    }
}

/// Runs the status check on the server: what it found, or why it could not.
#[derive(Message)]
#[rtype(result = "Result<ServerFacts, ServerError>")]
pub struct CheckServer(pub ServerAccess);

impl Handler<CheckServer> for ServerActor {
    type Result = ResponseFuture<Result<ServerFacts, ServerError>>;

    fn handle(&mut self, CheckServer(access): CheckServer, _: &mut Context<Self>) -> Self::Result {
        let run = self.run(
            access,
            CHECK_COMMAND,
            None,
            CHECK_MAX_BYTES,
            Live::default(),
        );
        Box::pin(async move {
            let out = run.await?;
            Ok(parse_check(&String::from_utf8_lossy(&out.stdout)))
        })
    }
}

/// Runs one command on the server (on its shared connection), bounded by
/// `timeout` (default: the command timeout setting) and `max_bytes` of output.
#[derive(Message)]
#[rtype(result = "Result<ExecOutput, ServerError>")]
pub struct RunOnServer {
    pub access: ServerAccess,
    pub command: String,
    pub timeout: Option<Duration>,
    pub max_bytes: usize,
    /// Who follows the output as it comes, and what stops it early.
    pub live: Live,
}

impl Handler<RunOnServer> for ServerActor {
    type Result = ResponseFuture<Result<ExecOutput, ServerError>>;

    fn handle(&mut self, msg: RunOnServer, _: &mut Context<Self>) -> Self::Result {
        let run = self.run(
            msg.access,
            &msg.command,
            msg.timeout,
            msg.max_bytes,
            msg.live,
        );
        Box::pin(run)
    }
}

impl ServerActor {
    /// Runs `command` on the pooled connection, connecting first when there is
    /// none (or it was made with other settings, or has dropped).
    fn run(
        &mut self,
        access: ServerAccess,
        command: &str,
        timeout: Option<Duration>,
        max_bytes: usize,
        live: Live,
    ) -> impl Future<Output = Result<ExecOutput, ServerError>> + 'static {
        self.last_request = Instant::now();
        self.registration.stats.set_state("connected");
        let (pool, deps) = (self.pool.clone(), self.deps.clone());
        let command = command.to_owned();
        async move {
            let session = connection(&pool, &deps, &access).await?;
            let timeout = timeout.unwrap_or(deps.servers.command_timeout);
            let out = session.run_live(&command, timeout, max_bytes, live).await;
            pool.lock().await.used = Instant::now();
            out.map_err(|e| match e {
                SshError::CommandTimeout => {
                    ServerError::Command(format!("no answer within {} s", timeout.as_secs()))
                }
                SshError::OutputTooLarge(n) => {
                    ServerError::Command(format!("it printed more than {n} bytes"))
                }
                SshError::Stopped => ServerError::Command("stopped".to_owned()),
                other => ServerError::Offline(other.to_string()),
            })
        }
    }
}

/// The pooled connection for `access`, made if needed.
async fn connection(
    pool: &tokio::sync::Mutex<Pool>,
    deps: &Deps,
    access: &ServerAccess,
) -> Result<Arc<SshSession>, ServerError> {
    let mut pool = pool.lock().await;
    pool.used = Instant::now();
    if let Some((made_for, session)) = &pool.conn
        && made_for == access
        && !session.is_closed()
    {
        return Ok(session.clone());
    }
    if let Some((_, old)) = pool.conn.take() {
        old.close().await;
    }
    let session = Arc::new(open_session(deps, access, "server").await?);
    pool.conn = Some((access.clone(), session.clone()));
    Ok(session)
}

/// A new SSH connection to the server (counted as `purpose`): to the address its
/// name resolves to now, within the address policy and the connect timeout, and
/// only if it presents the trusted host key.
pub async fn open_session(
    deps: &Deps,
    access: &ServerAccess,
    purpose: &'static str,
) -> Result<SshSession, ServerError> {
    let settings = &deps.servers;
    let addr = resolve(
        &access.host,
        access.port,
        settings.allow_private_addresses,
        settings.connect_timeout,
    )
    .await?;
    let machine = MachineAccess {
        host: host_for(addr),
        port: access.port,
        user: access.username.clone(),
        host_public_key: access.host_key.clone(),
    };
    let session = SshSession::connect_within(
        &machine,
        &access.private_key,
        settings.connect_timeout,
        settings.connect_timeout,
    )
    .await;
    deps.ssh_connect(purpose, session.is_ok());
    session.map_err(ServerError::of_connect)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_check_is_read_from_what_the_server_printed() {
        let out = "uptime=3600.52\nload=0.10 0.20 0.30\nmemory_kb=2000 500\n\
                   disk_kb=10000 2500\ndocker=yes\ncontainers=3\ncompose=docker compose\n";
        let f = parse_check(out);
        assert_eq!(f.uptime_seconds, Some(3600));
        assert_eq!(f.load_average, Some([0.1, 0.2, 0.3]));
        assert_eq!(
            (f.memory_total_bytes, f.memory_used_bytes),
            (Some(2_048_000), Some(1_536_000))
        );
        assert_eq!(
            (f.disk_total_bytes, f.disk_used_bytes),
            (Some(10_240_000), Some(2_560_000))
        );
        assert!(f.docker);
        assert_eq!(f.containers_running, Some(3));
        assert_eq!(f.compose.as_deref(), Some("docker compose"));
    }

    #[test]
    fn a_server_without_docker_or_figures_says_so_and_garbage_is_skipped() {
        let f = parse_check("uptime=\nload=x y\ndocker=no\ncompose=\nnoise\n=\ncompose=rm -rf\n");
        assert_eq!(f, ServerFacts::default());
        let f = parse_check("memory_kb=-5 NaN\nuptime=inf\ndisk_kb=1e400 1\nload=1e300 1 1\n");
        assert_eq!(f.memory_total_bytes, None);
        assert_eq!(f.uptime_seconds, None);
        assert_eq!(f.disk_total_bytes, None);
        let f = parse_check("memory_kb=1e300 1\n");
        assert_eq!(f.memory_total_bytes, Some(u64::MAX));
    }

    #[test]
    fn only_public_addresses_are_public() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
        for public in [
            "203.0.114.9",
            "8.8.8.8",
            "2606:4700::1111",
            "::ffff:8.8.4.4",
        ] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
    }
}
