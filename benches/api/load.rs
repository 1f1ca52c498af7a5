//! The load: wrk for throughput and floods (with Lua scripts this program writes),
//! and a small HTTP/1.1 client of its own for what wrk cannot do — a low-rate
//! latency prober, and a million requests each from a different forwarded address.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::server;

/// What every script adds: one machine-readable summary line at the end.
const DONE: &str = r#"
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH %.0f %.0f %.0f %.0f %.0f %.0f %.0f %.0f %.0f %.0f %.0f\n',
    summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    e.connect, e.read, e.write, e.status, e.timeout))
end
"#;

/// One wrk run.
pub struct Wrk<'a> {
    /// The script's name (its file in the benchmark's directory).
    pub name: &'a str,
    /// Lua run before [`DONE`]: may set `wrk.*` or define `init`/`request`.
    pub script: &'a str,
    pub url: String,
    pub connections: usize,
    pub duration: Duration,
    pub timeout: Duration,
    pub headers: Vec<String>,
}

/// What wrk measured. Latencies are from send to the full response, per
/// connection (wrk, not wrk2: no correction for coordinated omission).
#[derive(Debug, Clone)]
pub struct WrkResult {
    pub requests: u64,
    pub elapsed: Duration,
    pub p50: Duration,
    pub p90: Duration,
    pub p99: Duration,
    pub max: Duration,
    /// Socket errors (connect, read, write) and timeouts.
    pub socket_errors: u64,
    pub timeouts: u64,
    /// Responses other than 2xx or 3xx.
    pub non_2xx: u64,
}

impl WrkResult {
    pub fn rps(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }
}

/// The niceness of a flood whose victim is being timed: lower than the server's and
/// the prober's. On this machine wrk shares the cores with them, which clients over
/// a network do not; at the same priority the kernel's time slices (milliseconds)
/// would be in every percentile the prober reports.
pub const FLOOD_NICENESS: u8 = 10;

impl<'a> Wrk<'a> {
    /// A plain `GET url` with no script, timed out after 5 s.
    pub fn get(name: &'a str, url: String, connections: usize, duration: Duration) -> Self {
        Self {
            name,
            script: "",
            url,
            connections,
            duration,
            timeout: Duration::from_secs(5),
            headers: Vec::new(),
        }
    }

    pub async fn run(&self) -> anyhow::Result<WrkResult> {
        self.run_at(0).await
    }

    /// As [`Wrk::run`], at [`FLOOD_NICENESS`].
    pub async fn run_as_flood(&self) -> anyhow::Result<WrkResult> {
        self.run_at(FLOOD_NICENESS).await
    }

    async fn run_at(&self, niceness: u8) -> anyhow::Result<WrkResult> {
        let dir = server::root().join("wrk");
        std::fs::create_dir_all(&dir)?;
        let script = dir.join(format!("{}.lua", self.name));
        std::fs::write(&script, format!("{}\n{DONE}", self.script))?;
        let threads = self.connections.min(2);
        let mut cmd = tokio::process::Command::new("nice");
        cmd.arg(format!("-n{niceness}"))
            .arg("wrk")
            .arg(format!("-t{threads}"))
            .arg(format!("-c{}", self.connections))
            .arg(format!("-d{}s", self.duration.as_secs().max(1)))
            .arg(format!("--timeout={}s", self.timeout.as_secs().max(1)))
            .arg("-s")
            .arg(&script);
        for h in &self.headers {
            cmd.arg("-H").arg(h);
        }
        let out = cmd
            .arg(&self.url)
            .kill_on_drop(true)
            .output()
            .await
            .context("running wrk (apt-get install wrk)")?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!(
                "wrk failed: {stdout}{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let fields: Vec<u64> = stdout
            .lines()
            .find_map(|l| l.strip_prefix("BENCH "))
            .with_context(|| format!("no summary from wrk: {stdout}"))?
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()?;
        let [
            requests,
            us,
            p50,
            p90,
            p99,
            max,
            connect,
            read,
            write,
            status,
            timeout,
        ] = fields[..]
        else {
            bail!("unexpected summary from wrk: {stdout}");
        };
        Ok(WrkResult {
            requests,
            elapsed: Duration::from_micros(us),
            p50: Duration::from_micros(p50),
            p90: Duration::from_micros(p90),
            p99: Duration::from_micros(p99),
            max: Duration::from_micros(max),
            socket_errors: connect + read + write,
            timeouts: timeout,
            non_2xx: status,
        })
    }
}

/// A keep-alive HTTP/1.1 connection that sends one request at a time.
pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

impl Conn {
    pub async fn connect(address: &str) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(address).await?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            buf: Vec::with_capacity(4096),
        })
    }

    /// Sends `request` (a whole HTTP/1.1 request) and reads the whole response;
    /// its status.
    pub async fn send(&mut self, request: &[u8]) -> anyhow::Result<u16> {
        self.stream.write_all(request).await?;
        let head = loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                break end + 4;
            }
            self.fill().await?;
        };
        let text = std::str::from_utf8(&self.buf[..head])?;
        let status: u16 = text
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("not an HTTP response: {text}"))?;
        let length: usize = text
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse().ok())?
            })
            .with_context(|| format!("no content-length: {text}"))?;
        while self.buf.len() < head + length {
            self.fill().await?;
        }
        self.buf.drain(..head + length);
        Ok(status)
    }

    async fn fill(&mut self) -> anyhow::Result<()> {
        let mut chunk = [0u8; 8192];
        let n = self.stream.read(&mut chunk).await?;
        if n == 0 {
            bail!("the server closed the connection");
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

/// `GET path` with extra header lines (each ending in `\r\n`).
pub fn get(address: &str, path: &str, headers: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: {address}\r\n{headers}\r\n").into_bytes()
}

/// Latencies of `GET path`, one request every `every` on one keep-alive
/// connection (as a load balancer's health check), until `until`. Failed
/// requests reconnect and are counted.
pub async fn probe(
    address: &str,
    path: &str,
    every: Duration,
    until: Instant,
) -> anyhow::Result<Probed> {
    let request = get(address, path, "");
    let mut conn = Conn::connect(address).await?;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut probed = Probed::default();
    while Instant::now() < until {
        tick.tick().await;
        let start = Instant::now();
        match conn.send(&request).await {
            Ok(200) => probed.latencies.push(start.elapsed()),
            Ok(_) | Err(_) => {
                probed.failures += 1;
                conn = Conn::connect(address).await?;
            }
        }
    }
    Ok(probed)
}

#[derive(Default)]
pub struct Probed {
    pub latencies: Vec<Duration>,
    pub failures: u64,
}

/// `count` requests of `GET path`, each with its own `X-Forwarded-For` address
/// (`first`, `first + 1`, …), over `connections` connections. The time taken and
/// the statuses.
pub async fn distinct_clients(
    address: &str,
    path: &str,
    connections: usize,
    first: Ipv4Addr,
    count: u32,
) -> anyhow::Result<(Duration, BTreeMap<u16, u64>)> {
    let next = Arc::new(AtomicU32::new(0));
    let first = u32::from(first);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (next, address, path) = (next.clone(), address.to_owned(), path.to_owned());
        tasks.push(tokio::spawn(async move {
            let mut statuses = BTreeMap::new();
            let mut conn = Conn::connect(&address).await?;
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= count {
                    break;
                }
                let ip = Ipv4Addr::from(first.wrapping_add(n));
                let request = get(&address, &path, &format!("X-Forwarded-For: {ip}\r\n"));
                let status = conn.send(&request).await?;
                *statuses.entry(status).or_insert(0u64) += 1;
            }
            anyhow::Ok(statuses)
        }));
    }
    let mut statuses = BTreeMap::new();
    for task in tasks {
        for (status, n) in task.await?? {
            *statuses.entry(status).or_insert(0) += n;
        }
    }
    Ok((start.elapsed(), statuses))
}

/// The `p`th quantile (0–1) of `xs` (sorted in place).
pub fn percentile(xs: &mut [Duration], p: f64) -> Duration {
    if xs.is_empty() {
        return Duration::ZERO;
    }
    xs.sort_unstable();
    let i = ((xs.len() as f64 * p).ceil() as usize).clamp(1, xs.len()) - 1;
    xs[i]
}
