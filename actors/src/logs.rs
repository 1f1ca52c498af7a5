//! Provisioning-log lines: numbering, the stage markers templates print
//! (`==> [2/5] Installing tools`), the completion marker the machine's cloud-init
//! prints last, and the events log subscribers receive.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::model::Phase;

/// How many lines an environment keeps.
pub const KEEP_LINES: i64 = 10_000;

/// How much of a provisioning log the server reads in all (every reconnect reads
/// it again from the start): a bootstrap, or a tenant writing into the log, that
/// prints more fails its provisioning instead of keeping the server busy.
pub const MAX_LOG_BYTES: u64 = 64 * 1024 * 1024;

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

/// Where provisioning stands, as a progress bar shows it: sent to a subscriber
/// when it subscribes, at each stage marker and at each phase change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Standing {
    pub phase: Phase,
    /// How far provisioning got, 0–100: the environment's `progress`.
    pub progress: i32,
    /// The bootstrap's latest stage marker, once there is one.
    pub stage: Option<Progress>,
}

/// What log subscribers receive, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogEvent {
    Line(LogLine),
    /// Lines up to this one are stored (written by another process): read them
    /// from the store.
    Stored(i64),
    Progress(Standing),
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

/// The most of one provisioning-log line that is kept, in bytes; the rest is
/// dropped and counted in a marker (see [`LineSplitter`]).
pub const MAX_LINE_BYTES: usize = 4096;

/// How long a failure's reason quoted in an environment's status may be.
const MAX_REASON_CHARS: usize = 300;

/// What the machine itself says in its log (`==> devpocket: …`: its init, the
/// package installer), shortened for a status.
pub fn machine_says(line: &str) -> Option<&str> {
    line.trim().strip_prefix("==> devpocket: ").map(shorten)
}

/// A bootstrap's `error: …` line, shortened for a status.
pub fn error_line(line: &str) -> Option<&str> {
    let line = line.trim();
    line.starts_with("error: ").then(|| shorten(line))
}

fn shorten(text: &str) -> &str {
    match text.char_indices().nth(MAX_REASON_CHARS) {
        Some((cut, _)) => &text[..cut],
        None => text,
    }
}

/// Splits a byte stream into lines, carrying a partial line (and a partial UTF-8
/// character) over to the next chunk.
///
/// A line's first [`MAX_LINE_BYTES`] are kept and the rest only counted: the line
/// then ends in `… [line truncated: N bytes]`, N being what was dropped. So the
/// splitter never holds more than that many bytes of a partial line, and each byte
/// is looked at once, however long the line and however small the chunks.
#[derive(Debug, Default)]
pub struct LineSplitter {
    /// The current line's kept bytes.
    pending: Vec<u8>,
    /// How many bytes of the current line were dropped.
    dropped: u64,
    /// Whether the current line's last byte so far is `\r` (kept or dropped).
    ends_in_cr: bool,
}

impl LineSplitter {
    /// The lines `chunk` completes, in order; at most one per newline in it.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<String> {
        let mut lines = Vec::new();
        let mut rest = chunk;
        while let Some(pos) = rest.iter().position(|b| *b == b'\n') {
            self.take(&rest[..pos]);
            lines.push(self.finish());
            rest = &rest[pos + 1..];
        }
        self.take(rest);
        lines
    }

    /// Bytes of the partial line held for the next chunk.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    fn take(&mut self, bytes: &[u8]) {
        let Some(last) = bytes.last() else {
            return;
        };
        self.ends_in_cr = *last == b'\r';
        let room = MAX_LINE_BYTES.saturating_sub(self.pending.len());
        let (kept, dropped) = bytes.split_at(room.min(bytes.len()));
        self.pending.extend_from_slice(kept);
        self.dropped += dropped.len() as u64;
    }

    fn finish(&mut self) -> String {
        if std::mem::take(&mut self.ends_in_cr) {
            if self.dropped > 0 {
                self.dropped -= 1;
            } else {
                self.pending.pop();
            }
        }
        let mut dropped = std::mem::take(&mut self.dropped);
        if dropped > 0 {
            // Cut at a character boundary, not inside the last character.
            let cut = incomplete_tail(&self.pending);
            self.pending.truncate(self.pending.len() - cut);
            dropped += cut as u64;
        }
        let mut line = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        if dropped > 0 {
            line.push_str(&format!("… [line truncated: {dropped} bytes]"));
        }
        line
    }
}

/// How many bytes at the end of `bytes` are the start of a UTF-8 character whose
/// remaining bytes are missing.
fn incomplete_tail(bytes: &[u8]) -> usize {
    for back in 1..=bytes.len().min(4) {
        let byte = bytes[bytes.len() - back];
        if byte & 0b1100_0000 == 0b1000_0000 {
            continue; // a continuation byte: the character starts further back
        }
        let width = match byte {
            0xC0..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF7 => 4,
            _ => 1,
        };
        return if width > back { back } else { 0 };
    }
    0
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
    fn reasons_are_the_machines_words_or_errors_shortened() {
        assert_eq!(
            machine_says("==> devpocket: could not install golang-go"),
            Some("could not install golang-go")
        );
        assert_eq!(machine_says("==> [1/2] Stage"), None);
        assert_eq!(error_line("error: no go"), Some("error: no go"));
        assert_eq!(error_line("an error: no"), None);
        let long = format!("error: {}", "é".repeat(400));
        assert_eq!(
            error_line(&long).map(|l| l.chars().count()),
            Some(MAX_REASON_CHARS)
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

    #[test]
    fn a_huge_line_is_kept_up_to_the_cap_and_never_held_whole() {
        let mut s = LineSplitter::default();
        let total = 30 * 1024 * 1024;
        let chunk = [b'x'; 1000];
        let mut fed = 0;
        while fed < total {
            let n = chunk.len().min(total - fed);
            assert!(s.push(&chunk[..n]).is_empty());
            fed += n;
            assert!(s.pending() <= MAX_LINE_BYTES, "held {} bytes", s.pending());
        }
        let lines = s.push(b"\r\nafter\n");
        assert_eq!(lines.len(), 2);
        let dropped = total - MAX_LINE_BYTES;
        let marker = format!("… [line truncated: {dropped} bytes]");
        assert_eq!(lines[0], format!("{}{marker}", "x".repeat(MAX_LINE_BYTES)));
        assert_eq!(lines[1], "after");
        assert_eq!(s.pending(), 0);
    }

    #[test]
    fn truncation_does_not_split_a_character() {
        let mut s = LineSplitter::default();
        // "€" is three bytes; the cap falls after its first one.
        let mut line = vec![b'a'; MAX_LINE_BYTES - 1];
        line.extend_from_slice("€€\n".as_bytes());
        let lines = s.push(&line);
        assert_eq!(
            lines,
            vec![format!(
                "{}… [line truncated: 6 bytes]",
                "a".repeat(MAX_LINE_BYTES - 1)
            )]
        );
    }

    #[test]
    fn a_line_of_exactly_the_cap_is_whole_and_empty_lines_count() {
        let mut s = LineSplitter::default();
        let mut data = vec![b'y'; MAX_LINE_BYTES];
        data.extend_from_slice(b"\r\n\n\r\n");
        let lines = s.push(&data);
        assert_eq!(
            lines,
            vec!["y".repeat(MAX_LINE_BYTES), String::new(), String::new()]
        );
    }
}
