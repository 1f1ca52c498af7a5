//! Provisioning-log lines: numbering, the stage markers templates print
//! (`==> [2/5] Installing tools`), the completion marker the machine's cloud-init
//! prints last, and the events log subscribers receive.

use chrono::{DateTime, Utc};
use serde::Serialize;

/// How many lines an environment keeps.
pub const KEEP_LINES: i64 = 10_000;

/// The line the machine's init prints when the bootstrap has ended.
pub const EXIT_MARKER: &str = "==> devpocket: bootstrap exited with status ";

/// One provisioning-log line; `seq` is its line number on the machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogLine {
    pub seq: i64,
    pub data: String,
    pub timestamp: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Progress {
    pub stage: String,
    pub step: u32,
    pub total: u32,
    pub percent: u32,
}

/// What log subscribers receive, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogEvent {
    Line(LogLine),
    Progress(Progress),
    Complete,
    Failed(String),
    /// The environment was deleted: the stream ends.
    Closed,
}

/// A stage marker: `==> [STEP/TOTAL] Stage name`.
pub fn parse_stage(line: &str) -> Option<Progress> {
    let rest = line.trim_end().strip_prefix("==> [")?;
    let (counts, stage) = rest.split_once("] ")?;
    let (step, total) = counts.split_once('/')?;
    let step: u32 = step.trim().parse().ok()?;
    let total: u32 = total.trim().parse().ok()?;
    if total == 0 || step == 0 || step > total || stage.trim().is_empty() {
        return None;
    }
    Some(Progress {
        stage: stage.trim().to_owned(),
        step,
        total,
        percent: step * 100 / total,
    })
}

/// The bootstrap's exit status, from the completion marker.
pub fn parse_exit(line: &str) -> Option<i32> {
    line.trim_end()
        .strip_prefix(EXIT_MARKER)?
        .trim()
        .parse()
        .ok()
}

/// Splits a byte stream into lines, carrying a partial line (and a partial UTF-8
/// character) over to the next chunk.
#[derive(Debug, Default)]
pub struct LineSplitter {
    pending: Vec<u8>,
}

impl LineSplitter {
    pub fn push(&mut self, chunk: &[u8]) -> Vec<String> {
        self.pending.extend_from_slice(chunk);
        let mut lines = Vec::new();
        while let Some(pos) = self.pending.iter().position(|b| *b == b'\n') {
            let mut line: Vec<u8> = self.pending.drain(..=pos).collect();
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            lines.push(String::from_utf8_lossy(&line).into_owned());
        }
        lines
    }
}

/// Maps bootstrap progress onto the environment's 0–100: provisioning and boot
/// take the first 20 %, the bootstrap's stages the next 75 %.
pub fn overall_percent(progress: &Progress) -> i32 {
    20 + i32::try_from(progress.percent * 75 / 100).unwrap_or(75)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_markers() {
        let p = parse_stage("==> [2/5] Installing tools").expect("marker");
        assert_eq!(
            (p.step, p.total, p.percent, p.stage.as_str()),
            (2, 5, 40, "Installing tools")
        );
        assert!(parse_stage("==> [0/5] x").is_none());
        assert!(parse_stage("==> [6/5] x").is_none());
        assert!(parse_stage("just text").is_none());
        assert_eq!(
            parse_exit("==> devpocket: bootstrap exited with status 3"),
            Some(3)
        );
    }

    #[test]
    fn splitter_carries_partial_lines_and_characters() {
        let mut s = LineSplitter::default();
        assert!(s.push(b"hel").is_empty());
        let euro = "€".as_bytes();
        assert_eq!(s.push(&[b"lo ", &euro[..1]].concat()), Vec::<String>::new());
        assert_eq!(
            s.push(&[&euro[1..], b"\r\nnext\n"].concat()),
            vec!["hello €", "next"]
        );
    }
}
