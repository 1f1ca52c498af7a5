//! The benchmarks' reports: facts about the machine they ran on, and where a
//! report is kept.

use std::path::Path;

use anyhow::Context;

/// What the shell command `cmd` prints (its output, then its errors), trimmed;
/// empty if it cannot run.
pub fn sh(cmd: &str) -> String {
    std::process::Command::new("sh")
        .args(["-c", cmd])
        .output()
        .map(|o| {
            let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
            s.push_str(&String::from_utf8_lossy(&o.stderr));
            s.trim().to_owned()
        })
        .unwrap_or_default()
}

/// The machine, for a report's header: CPU model, cores, memory and kernel.
pub fn machine() -> String {
    format!(
        "{}, {} cores, {} ; {}",
        sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'"),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        sh("grep MemTotal /proc/meminfo | awk '{printf \"%.0f GiB RAM\", $2/1048576}'"),
        sh("uname -sr"),
    )
}

/// Writes `report` to `target/bench/<file>`, beside the bench's scratch directory
/// `tmpdir` (its `env!("CARGO_TARGET_TMPDIR")`), and says where.
pub fn save(tmpdir: &str, file: &str, report: &str) -> anyhow::Result<()> {
    let out = Path::new(tmpdir)
        .parent()
        .map(|p| p.join("bench"))
        .context("target dir")?;
    std::fs::create_dir_all(&out)?;
    std::fs::write(out.join(file), report)?;
    eprintln!("written to {}", out.join(file).display());
    Ok(())
}
