//! Starting, watching and stopping the embedded cluster once it exists.

use std::fs;
use std::time::{Duration, Instant};

use super::{EmbeddedError, EmbeddedPostgres, PORT, describe, io_err};

impl EmbeddedPostgres {
    /// Starts the cluster unless it is already running, and waits until it accepts
    /// connections.
    pub fn ensure_running(&mut self) -> Result<(), EmbeddedError> {
        if self.is_running()? {
            return Ok(());
        }
        if self.lock.is_none() {
            // Another process owns the cluster and is starting it.
            return self.wait_until_running(Duration::from_secs(60));
        }
        self.write_runtime_config()?;
        let log = self.pgdata.join("server.log");
        let out = self
            .pg_command("pg_ctl")
            .arg("start")
            .arg("-D")
            .arg(&self.pgdata)
            .arg("-l")
            .arg(&log)
            .args(["-w", "-t", "60", "-s"])
            .output()
            .map_err(io_err(&self.bin_dir))?;
        if !out.status.success() {
            let tail = fs::read_to_string(&log)
                .map(|l| l.lines().rev().take(5).collect::<Vec<_>>().join(" | "))
                .unwrap_or_default();
            return Err(EmbeddedError::Command {
                action: "starting the embedded PostgreSQL".into(),
                detail: format!("{} {tail}", describe(&out)),
            });
        }
        self.started_here = true;
        tracing::info!(pgdata = %self.pgdata.display(), "embedded PostgreSQL started");
        Ok(())
    }

    fn wait_until_running(&self, timeout: Duration) -> Result<(), EmbeddedError> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.is_running()? && self.socket_dir.join(format!(".s.PGSQL.{PORT}")).exists() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Err(EmbeddedError::Setup(format!(
            "the embedded PostgreSQL in {} did not come up within {}s",
            self.pgdata.display(),
            timeout.as_secs()
        )))
    }

    pub fn is_running(&self) -> Result<bool, EmbeddedError> {
        let out = self
            .pg_command("pg_ctl")
            .arg("status")
            .arg("-D")
            .arg(&self.pgdata)
            .output()
            .map_err(io_err(&self.bin_dir))?;
        Ok(out.status.success())
    }

    /// Stops the cluster if this process owns it.
    pub fn stop(&mut self) -> Result<(), EmbeddedError> {
        if self.lock.is_none() || !self.is_running()? {
            return Ok(());
        }
        // Always a fast shutdown: a smart one that times out keeps refusing new
        // connections. Whether others still need the cluster is the caller's call.
        let out = self
            .pg_command("pg_ctl")
            .arg("stop")
            .arg("-D")
            .arg(&self.pgdata)
            .args(["-m", "fast", "-w", "-t", "60", "-s"])
            .output()
            .map_err(io_err(&self.bin_dir))?;
        if out.status.success() {
            tracing::info!("embedded PostgreSQL stopped");
            Ok(())
        } else {
            Err(EmbeddedError::Command {
                action: "stopping the embedded PostgreSQL".into(),
                detail: describe(&out),
            })
        }
    }
}
