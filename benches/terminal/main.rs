//! Terminal benchmarks: `cargo bench --bench terminal` (or `./scripts/bench`).
//!
//! Sets everything up on loopback by itself — a release `devpocket serve` with its
//! embedded PostgreSQL in a temporary data directory, one local environment (a real
//! OpenSSH sshd and tmux) — measures the terminal bridge against plain `ssh -tt` on
//! the same sshd, prints a Markdown report (also written to
//! `target/bench/terminal.md`), and stops everything it started.
//!
//! `BENCH_QUICK=1` runs every measurement with fewer samples (a smoke run).

mod client;
mod server;

use std::time::{Duration, Instant};

use anyhow::Context;
use client::{Term, percentile};
use server::{Bench, Machine};
use tokio::sync::watch;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; nothing else is accepted.
    let quick = std::env::var("BENCH_QUICK").is_ok_and(|v| v == "1");
    let bench = Bench::start().await.context("setting up")?;
    let result = run(&bench, quick).await;
    bench.stop().await;
    let report = result?;
    println!("{report}");
    devpocket_testkit::report::save(env!("CARGO_TARGET_TMPDIR"), "terminal.md", &report)?;
    Ok(())
}

struct Scale {
    tput_runs: usize,
    tput_bytes: usize,
    echo_samples: usize,
    fanout_runs: usize,
    stall: Duration,
    /// Stalls, each after as long a time of normal reading.
    stalls: usize,
    idle: [usize; 2],
    sessions: usize,
}

async fn run(bench: &Bench, quick: bool) -> anyhow::Result<String> {
    let scale = if quick {
        Scale {
            tput_runs: 1,
            tput_bytes: 8 << 20,
            echo_samples: 60,
            fanout_runs: 1,
            stall: Duration::from_secs(3),
            stalls: 1,
            idle: [20, 50],
            sessions: 5,
        }
    } else {
        Scale {
            tput_runs: 5,
            tput_bytes: 64 << 20,
            echo_samples: 2000,
            fanout_runs: 3,
            stall: Duration::from_secs(10),
            stalls: 3,
            idle: [100, 500],
            sessions: 20,
        }
    };
    let machine = bench.machine().await?;
    let mut report = String::new();
    report.push_str(&bench.header());

    eprintln!("== throughput");
    report.push_str(&throughput(bench, &machine, &scale).await?);
    eprintln!("== echo latency");
    report.push_str(&echo(bench, &machine, &scale).await?);
    eprintln!("== fan-out");
    report.push_str(&fanout(bench, &scale).await?);
    eprintln!("== echo through a second process");
    report.push_str(&second_process(bench, &scale).await?);
    eprintln!("== slow client");
    report.push_str(&slow_client(bench, &scale).await?);
    eprintln!("== idle memory");
    report.push_str(&idle_memory(bench, &scale).await?);
    Ok(report)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs.get(xs.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Raw PTY throughput: a login shell without tmux runs `cat` of a large file; the
/// time from the keystroke to the end marker, through the bridge and through
/// `ssh -tt` to the same sshd.
async fn throughput(bench: &Bench, machine: &Machine, scale: &Scale) -> anyhow::Result<String> {
    let file = machine.write_file("bench-cat.txt", scale.tput_bytes)?;
    let mut ours = Term::Ws(bench.ws("session=tput&mode=shell&cols=200&rows=50").await?);
    let mut peer = Term::Ssh(machine.ssh(None).await?);
    ours.ready().await?;
    peer.ready().await?;
    let (mut ours_rates, mut peer_rates) = (Vec::new(), Vec::new());
    let mut reconnects = 0;
    for run in 0..scale.tput_runs {
        let marker = format!("END{run}");
        let command = format!("cat {file}; echo EN\"\"D{run}\r");
        // Ours: a client dropped for falling behind reconnects with `resume`, as the
        // app does; the time includes that.
        let start = Instant::now();
        ours.send(&command).await?;
        let mut bytes = 0;
        loop {
            match ours.wait_for(&marker, Duration::from_secs(300)).await {
                Ok(n) => {
                    bytes += n;
                    break;
                }
                Err(e) => {
                    let Term::Ws(ws) = &mut ours else {
                        return Err(e);
                    };
                    if reconnects > 20 {
                        return Err(e);
                    }
                    reconnects += 1;
                    ws.reconnect().await?;
                    // The marker may have been in what was missed: ask for it again
                    // (it runs once `cat` is done).
                    ours.send(&format!("echo EN\"\"D{run}\r")).await?;
                }
            }
        }
        ours_rates.push(bytes as f64 / start.elapsed().as_secs_f64() / (1 << 20) as f64);
        let start = Instant::now();
        peer.send(&command).await?;
        let bytes = peer.wait_for(&marker, Duration::from_secs(300)).await?;
        peer_rates.push(bytes as f64 / start.elapsed().as_secs_f64() / (1 << 20) as f64);
    }
    let gaps = match &ours {
        Term::Ws(ws) => ws.gaps,
        Term::Ssh(_) => 0,
    };
    peer.close().await;
    let (o, p) = (median(ours_rates), median(peer_rates));
    Ok(format!(
        "\n## Raw PTY throughput\n\n`cat` of a {} MiB file in a login shell without tmux, until an end \
         marker; median of {} runs, alternating.\n\n| Path | MiB/s |\n|---|---|\n\
         | WebSocket bridge (`mode=shell`) | {o:.1} |\n| `ssh -tt` (same sshd) | {p:.1} |\n\
         | **ratio** (target ≥ 0.9) | **{:.2}** |\n\n\
         The bridge never slows the machine for a client: a client that falls more than \
         `DEVPOCKET_TERMINAL_CLIENT_QUEUE_BYTES` behind is dropped and reconnects with `resume`. \
         In this run the bench client was dropped {reconnects} times and saw {gaps} gaps in `seq` \
         (output that had left the replay buffer before it came back).\n",
        scale.tput_bytes >> 20,
        scale.tput_runs,
        o / p
    ))
}

const FLOOD: &str = "tmux split-window -v -d 'while :; do seq 1 1000; sleep 0.01; done'\r";

/// Keystroke echo latency through tmux: bridge vs `ssh -tt`, quiet and while
/// another client of the same session starts a flood of output in a second pane.
async fn echo(bench: &Bench, machine: &Machine, scale: &Scale) -> anyhow::Result<String> {
    let mut rows = String::new();
    for flood in [false, true] {
        let label = if flood { "flood" } else { "quiet" };
        let mut ours = Term::Ws(
            bench
                .ws(&format!("session=lat-{label}&cols=200&rows=50"))
                .await?,
        );
        let mut peer = Term::Ssh(machine.ssh(Some(&format!("peer-lat-{label}"))).await?);
        ours.ready().await?;
        peer.ready().await?;
        let mut floods = Vec::new();
        if flood {
            let mut other = Term::Ws(
                bench
                    .ws(&format!("session=lat-{label}&cols=200&rows=50"))
                    .await?,
            );
            other.send(FLOOD).await?;
            let mut other_peer = Term::Ssh(machine.ssh(Some(&format!("peer-lat-{label}"))).await?);
            other_peer.send(FLOOD).await?;
            floods.push(tokio::spawn(other.drain_forever()));
            floods.push(tokio::spawn(other_peer.drain_forever()));
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let (mut o, mut p) = (Vec::new(), Vec::new());
        // Alternate blocks so drift on the machine hits both alike.
        let block = 50;
        for _ in 0..scale.echo_samples.div_ceil(block) {
            o.extend(ours.echo_latencies(block).await?);
            p.extend(peer.echo_latencies(block).await?);
        }
        for f in floods {
            f.abort();
        }
        ours.send("\x15tmux kill-pane -a\r").await?;
        peer.send("\x15tmux kill-pane -a\r").await?;
        peer.close().await;
        let row = |name: &str, xs: &mut Vec<Duration>| {
            format!(
                "| {label} | {name} | {:.2} | {:.2} |\n",
                ms(percentile(xs, 0.50)),
                ms(percentile(xs, 0.99))
            )
        };
        rows.push_str(&row("WebSocket bridge + tmux", &mut o));
        rows.push_str(&row("`ssh -tt` + tmux", &mut p));
        rows.push_str(&format!(
            "| {label} | **difference** (target p50 ≤ +0.3, p99 ≤ +1) | **{:+.2}** | **{:+.2}** |\n",
            ms(percentile(&mut o, 0.50)) - ms(percentile(&mut p, 0.50)),
            ms(percentile(&mut o, 0.99)) - ms(percentile(&mut p, 0.99)),
        ));
    }
    Ok(format!(
        "\n## Keystroke echo latency\n\nOne key at a time at a shell prompt inside tmux, time until \
         its echo arrives; {} samples per path, in alternating blocks. \"flood\": another client of \
         the same session has split the window and runs `while :; do seq 1 1000; sleep 0.01; done` \
         in the other pane (and reads all of it).\n\n| Load | Path | p50 ms | p99 ms |\n|---|---|---|---|\n{rows}",
        scale.echo_samples
    ))
}

/// Echo latency through the process that owns the environment and through another
/// one on the same database, in alternating blocks of the same run: a terminal
/// goes from whichever process the client reached straight to the machine.
async fn second_process(bench: &Bench, scale: &Scale) -> anyhow::Result<String> {
    let second = bench.second()?;
    let result = async {
        let mut owner = Term::Ws(bench.ws("session=lat-owner&cols=200&rows=50").await?);
        let mut other = Term::Ws(
            bench
                .ws_at(&second.address, "session=lat-other&cols=200&rows=50")
                .await?,
        );
        owner.ready().await?;
        other.ready().await?;
        let (mut o, mut s) = (Vec::new(), Vec::new());
        let block = 50;
        for _ in 0..scale.echo_samples.div_ceil(block) {
            o.extend(owner.echo_latencies(block).await?);
            s.extend(other.echo_latencies(block).await?);
        }
        let row = |name: &str, xs: &mut Vec<Duration>| {
            format!(
                "| {name} | {:.2} | {:.2} |\n",
                ms(percentile(xs, 0.50)),
                ms(percentile(xs, 0.99))
            )
        };
        anyhow::Ok(format!(
            "\n## Through another process\n\nA second server process on the same database \
             (started for this, on the same data directory); the environment is the first's. \
             Keystroke echo as above (quiet), {} samples per path in alternating blocks, one \
             tmux session per path.\n\n| Path | p50 ms | p99 ms |\n|---|---|---|\n{}{}",
            scale.echo_samples,
            row("through the owning process", &mut o),
            row("through the other process", &mut s),
        ))
    }
    .await;
    if let Err(e) = second.stop() {
        eprintln!("{e:#}");
    }
    result
}

/// N clients on one session; one of them runs a command; the time until every
/// client has seen its end marker.
async fn fanout(bench: &Bench, scale: &Scale) -> anyhow::Result<String> {
    let mut rows = String::new();
    let mut single = f64::NAN;
    for n in [1usize, 10, 50] {
        let session = format!("session=fan{n}&cols=120&rows=40");
        let mut clients = Vec::new();
        for _ in 0..n {
            let mut c = bench.ws(&session).await?;
            c.ready_attached().await?;
            clients.push(c);
        }
        let mut runs = Vec::new();
        for run in 0..scale.fanout_runs {
            let marker = format!("END{run}");
            let (go_tx, go_rx) = watch::channel(None::<Instant>);
            let mut driver = clients.remove(0);
            let tasks: Vec<_> = clients
                .drain(..)
                .map(|mut c| {
                    let (marker, go) = (marker.clone(), go_rx.clone());
                    tokio::spawn(async move {
                        let r = c.wait_for(&marker, Duration::from_secs(120)).await;
                        let took = go.borrow().map(|s| s.elapsed());
                        (c, r.map(|_| took))
                    })
                })
                .collect();
            tokio::time::sleep(Duration::from_millis(300)).await;
            let start = Instant::now();
            let _ = go_tx.send(Some(start));
            driver
                .input(&format!("seq 1 100000; echo EN\"\"D{run}\r"))
                .await?;
            driver.wait_for(&marker, Duration::from_secs(120)).await?;
            let mut slowest = start.elapsed();
            clients.push(driver);
            for t in tasks {
                let (c, r) = t.await?;
                if let Some(took) = r? {
                    slowest = slowest.max(took);
                }
                clients.push(c);
            }
            runs.push(ms(slowest));
        }
        let slowest = median(runs);
        if n == 1 {
            single = slowest;
        }
        rows.push_str(&format!(
            "| {n} | {slowest:.0} | {:.2} |\n",
            slowest / single
        ));
        for c in clients {
            c.close().await;
        }
    }
    Ok(format!(
        "\n## Fan-out\n\nN clients on one tmux session; one of them runs `seq 1 100000; echo END`; \
         time until the slowest client has seen the end marker (median of {} runs).\n\n\
         | Clients | Slowest ms | × single (target ≤ 2) |\n|---|---|---|\n{rows}",
        scale.fanout_runs
    ))
}

/// During a flood, one client stops reading for a while, several times; another
/// keeps typing. Its echo latency while the third client reads and while it does
/// not (the samples of all rounds together: a p99 of a thousand samples moves by
/// more than the target between identical runs), and the server's memory.
async fn slow_client(bench: &Bench, scale: &Scale) -> anyhow::Result<String> {
    let session = "session=iso&cols=200&rows=50";
    let mut typist = Term::Ws(bench.ws(session).await?);
    typist.ready().await?;
    let mut flooder = Term::Ws(bench.ws(session).await?);
    flooder.send(FLOOD).await?;
    let flood = tokio::spawn(flooder.drain_forever());
    let mut slow = bench.ws(session).await?;
    slow.ready_attached().await?;
    let (pause_tx, pause_rx) = watch::channel(false);
    let slow_task = tokio::spawn(slow.read_pausable(pause_rx));
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The same measurement for the same time before and during each stall.
    let (mut before, mut during) = (Vec::new(), Vec::new());
    let (mut before_rss, mut peak_rss) = (0, 0);
    for _ in 0..scale.stalls {
        let start = Instant::now();
        while start.elapsed() < scale.stall {
            before.extend(typist.echo_latencies(25).await?);
            before_rss = before_rss.max(bench.server_rss()?);
        }
        let _ = pause_tx.send(true);
        let stall_start = Instant::now();
        while stall_start.elapsed() < scale.stall {
            during.extend(typist.echo_latencies(25).await?);
            peak_rss = peak_rss.max(bench.server_rss()?);
        }
        let _ = pause_tx.send(false);
    }
    let outcome = slow_task.await??;
    flood.abort();
    typist.send("\x15tmux kill-pane -a\r").await?;
    let (b50, b99) = (
        ms(percentile(&mut before, 0.5)),
        ms(percentile(&mut before, 0.99)),
    );
    let (stall, stalls) = (scale.stall.as_secs(), scale.stalls);
    let (d50, d99) = (
        ms(percentile(&mut during, 0.5)),
        ms(percentile(&mut during, 0.99)),
    );
    Ok(format!(
        "\n## Slow-client isolation\n\nThree clients on one session: one floods (as above), one types \
         (echo latency measured) for {stall} s, then for {stall} s more while the third stops reading; \
         {stalls} times in a row (the third reads again between its stalls).\n\n\
         | Typist | p50 ms | p99 ms |\n|---|---|---|\n| before the stalls ({} samples) | {b50:.2} | {b99:.2} |\n\
         | during the stalls ({} samples) | {d50:.2} | {d99:.2} |\n| **p99 change** (target < 10 %) | | **{:+.1} %** |\n\n\
         Server RSS: {:.1} MiB at most before, {:.1} MiB at most during the stalls (+{:.1} MiB; the \
         README's bound for one stalled client is its queue, 32 WebSocket frames and 128 KiB of \
         unsent socket buffer). The stalled client, reading again after its last stall: {outcome}.\n",
        before.len(),
        during.len(),
        (d99 / b99 - 1.0) * 100.0,
        before_rss as f64 / 1024.0,
        peak_rss as f64 / 1024.0,
        peak_rss.saturating_sub(before_rss) as f64 / 1024.0,
    ))
}

/// Server memory per idle client (many clients on one session) and per session.
async fn idle_memory(bench: &Bench, scale: &Scale) -> anyhow::Result<String> {
    let session = "session=idle&cols=120&rows=40";
    let mut first = bench.ws(session).await?;
    first.ready_attached().await?;
    let mut drains = vec![tokio::spawn(first.drain())];
    let settle = || tokio::time::sleep(Duration::from_secs(2));
    settle().await;
    let base = bench.server_rss()?;
    let mut rows = String::new();
    let mut opened = 1;
    let mut previous: Option<(usize, u64)> = None;
    for target in scale.idle {
        while opened < target + 1 {
            let mut c = bench.ws(session).await?;
            c.ready_attached().await?;
            drains.push(tokio::spawn(c.drain()));
            opened += 1;
        }
        settle().await;
        let rss = bench.server_rss()?;
        // Per client: the slope from the previous point (the allocator keeps freed
        // memory, so the first clients partly reuse what earlier runs left).
        let (from_n, from_rss) = previous.unwrap_or((0, base));
        rows.push_str(&format!(
            "| {target} idle clients on one session | {:.1} | {:.1} KiB per client from {from_n} to {target} (target ≤ 64) |\n",
            rss as f64 / 1024.0,
            rss.saturating_sub(from_rss) as f64 / (target - from_n) as f64
        ));
        previous = Some((target, rss));
    }
    for d in drains {
        d.abort();
    }
    settle().await;
    let base = bench.server_rss()?;
    let mut sessions = Vec::new();
    for i in 0..scale.sessions {
        let mut c = bench
            .ws(&format!("session=idle-s{i}&cols=120&rows=40"))
            .await?;
        c.ready_attached().await?;
        sessions.push(tokio::spawn(c.drain()));
    }
    settle().await;
    let rss = bench.server_rss()?;
    rows.push_str(&format!(
        "| {} sessions, one client each | {:.1} | {:.1} KiB per session (SSH connection, PTY channel, actor, buffer in use) |\n",
        scale.sessions,
        rss as f64 / 1024.0,
        rss.saturating_sub(base) as f64 / scale.sessions as f64
    ));
    for s in sessions {
        s.abort();
    }
    Ok(format!(
        "\n## Idle memory\n\nResident memory of the server process (not PostgreSQL), 2 s after the \
         clients attached and received their first screen.\n\n| State | RSS MiB | Per unit |\n|---|---|---|\n{rows}"
    ))
}
