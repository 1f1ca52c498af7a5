//! A terminal's output fan-out, without the actor: output is numbered and kept in
//! a bounded replay buffer for resuming clients, and offered to every client
//! through a bounded queue (frames and bytes). A client that cannot keep up is
//! never waited for: in a tmux session it is skipped ahead (no output until it has
//! taken most of what was queued, then a fresh screen); without tmux there is no
//! screen to redraw, so it is dropped and resumes with `resume=SEQ`.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;

use super::TerminalSettings;

/// One numbered piece of output, shared by the replay buffer and every client's
/// queue: it is stored once however many clients there are.
#[derive(Debug)]
pub struct Chunk {
    pub seq: u64,
    pub data: String,
    wire: OnceLock<bytestring::ByteString>,
}

impl Chunk {
    fn new(seq: u64, data: String) -> Self {
        Self {
            seq,
            data,
            wire: OnceLock::new(),
        }
    }

    /// The chunk as a wire frame, built by the first client that sends it and
    /// shared (not copied) by the others.
    pub fn wire(&self, build: impl FnOnce(&Chunk) -> String) -> bytestring::ByteString {
        self.wire.get_or_init(|| build(self).into()).clone()
    }
}

/// Where a terminal session stands, as its clients are told.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TermState {
    /// Attached to the machine: output flows, input is sent.
    Connected,
    /// Not attached (the machine is not running yet, or the SSH connection
    /// dropped): the terminal attaches by itself when it can.
    Reconnecting,
    /// The environment was stopped or deleted: the terminal is gone.
    Closed,
    /// Attached, and the environment stops for being idle at `stop_at` unless a
    /// client types something first.
    IdleWarning,
}

impl TermState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connected => "connected",
            Self::Reconnecting => "reconnecting",
            Self::Closed => "closed",
            Self::IdleWarning => "idle_warning",
        }
    }
}

/// What a client receives.
#[derive(Debug, Clone)]
pub enum TermEvent {
    Output(Arc<Chunk>),
    Status {
        state: TermState,
        message: String,
        /// When the idle stop is due (`IdleWarning` only).
        stop_at: Option<DateTime<Utc>>,
    },
}

/// The fan-out's end of a client's bounded queue.
struct Client {
    tx: mpsc::Sender<TermEvent>,
    /// Output bytes queued and not yet taken by the client's connection.
    queued: Arc<AtomicUsize>,
    cols: u32,
    rows: u32,
    /// Fell behind: gets no output until it catches up, then a fresh screen.
    skipping: bool,
}

/// Why an event could not be queued for a client.
enum Refused {
    /// The client fell behind: its queue is full.
    Full,
    /// The client is gone.
    Closed,
}

impl Client {
    fn offer(&self, event: TermEvent, budget: usize) -> Result<(), Refused> {
        let len = match &event {
            TermEvent::Output(chunk) => chunk.data.len(),
            TermEvent::Status { .. } => 0,
        };
        if len > 0 && self.queued.load(Ordering::Relaxed) + len > budget {
            return Err(Refused::Full);
        }
        self.queued.fetch_add(len, Ordering::Relaxed);
        self.tx.try_send(event).map_err(|e| {
            self.queued.fetch_sub(len, Ordering::Relaxed);
            match e {
                mpsc::error::TrySendError::Full(_) => Refused::Full,
                mpsc::error::TrySendError::Closed(_) => Refused::Closed,
            }
        })
    }
}

/// A client's end of its queue: at most `client_queue` events and
/// `client_queue_bytes` bytes of output. A client that would exceed either is
/// skipped ahead or dropped (see the module); a dropped one receives what was
/// queued, then `None`.
pub struct ClientQueue {
    rx: mpsc::Receiver<TermEvent>,
    queued: Arc<AtomicUsize>,
}

impl ClientQueue {
    pub async fn recv(&mut self) -> Option<TermEvent> {
        let event = self.rx.recv().await?;
        if let TermEvent::Output(chunk) = &event {
            self.queued.fetch_sub(chunk.data.len(), Ordering::Relaxed);
        }
        Some(event)
    }
}

/// A new client, as [`Fanout::attach`] made it.
pub(super) struct Joined {
    pub id: u64,
    pub queue: ClientQueue,
    /// It missed output the buffer cannot replay: it needs a repaint.
    pub fresh_screen: bool,
}

pub(super) struct Fanout {
    client_queue: usize,
    client_queue_bytes: usize,
    buffer_bytes: usize,
    /// Skip slow clients ahead (tmux repaints them) rather than dropping them.
    skip_ahead: bool,
    clients: HashMap<u64, Client>,
    next_client: u64,
    ring: VecDeque<Arc<Chunk>>,
    ring_bytes: usize,
    /// The seq of the last output chunk.
    seq: u64,
}

impl Fanout {
    pub fn new(settings: &TerminalSettings, skip_ahead: bool) -> Self {
        Self {
            client_queue: settings.client_queue,
            client_queue_bytes: settings.client_queue_bytes,
            buffer_bytes: settings.buffer_bytes,
            skip_ahead,
            clients: HashMap::new(),
            next_client: 1,
            ring: VecDeque::new(),
            ring_bytes: 0,
            seq: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.clients.len()
    }

    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }

    /// Adds a client. With `resume` (the last seq it saw), the output it missed is
    /// queued first if the buffer still holds all of it and it fits the queue;
    /// otherwise it needs a fresh screen. `status`, if any, follows.
    pub fn attach(
        &mut self,
        cols: u32,
        rows: u32,
        resume: Option<u64>,
        status: Option<TermEvent>,
    ) -> Joined {
        let id = self.next_client;
        self.next_client += 1;
        let (tx, rx) = mpsc::channel(self.client_queue);
        let queued = Arc::new(AtomicUsize::new(0));
        let client = Client {
            tx,
            queued: queued.clone(),
            cols,
            rows,
            skipping: false,
        };
        let oldest = self.ring.front().map_or(self.seq + 1, |c| c.seq);
        let replay: Option<Vec<Arc<Chunk>>> = resume
            .filter(|r| *r <= self.seq && r + 1 >= oldest)
            .map(|r| self.ring.iter().filter(|c| c.seq > r).cloned().collect());
        let budget = self.client_queue_bytes;
        let fits = |frames: &Vec<Arc<Chunk>>| {
            frames.len() < self.client_queue
                && frames.iter().map(|c| c.data.len()).sum::<usize>() <= budget
        };
        let mut fresh_screen = true;
        if let Some(frames) = replay.filter(fits) {
            for chunk in frames {
                let _ = client.offer(TermEvent::Output(chunk), budget);
            }
            fresh_screen = false;
        }
        if let Some(status) = status {
            let _ = client.offer(status, budget);
        }
        self.clients.insert(id, client);
        Joined {
            id,
            queue: ClientQueue { rx, queued },
            fresh_screen,
        }
    }

    pub fn detach(&mut self, id: u64) {
        self.clients.remove(&id);
    }

    /// Lets every client go: their queues end after what was queued.
    pub fn clear(&mut self) {
        self.clients.clear();
    }

    pub fn size_of(&self, id: u64) -> Option<(u32, u32)> {
        self.clients.get(&id).map(|c| (c.cols, c.rows))
    }

    pub fn set_size(&mut self, id: u64, cols: u32, rows: u32) {
        if let Some(c) = self.clients.get_mut(&id) {
            (c.cols, c.rows) = (cols, rows);
        }
    }

    /// Numbers `data`, keeps it for resuming clients (dropping the oldest output
    /// past the buffer's size) and offers it to every client.
    pub fn push_output(&mut self, data: String) {
        if data.is_empty() {
            return;
        }
        self.seq += 1;
        let chunk = Arc::new(Chunk::new(self.seq, data));
        self.ring_bytes += chunk.data.len();
        self.ring.push_back(chunk.clone());
        while self.ring_bytes > self.buffer_bytes {
            match self.ring.pop_front() {
                Some(old) => self.ring_bytes -= old.data.len(),
                None => break,
            }
        }
        self.broadcast(&TermEvent::Output(chunk));
    }

    /// Offers an event to every client. A client whose queue is full is skipped
    /// ahead or dropped (see the module); one that is gone is removed. Status
    /// events still reach a client being skipped ahead.
    pub fn broadcast(&mut self, event: &TermEvent) {
        let budget = self.client_queue_bytes;
        let output = matches!(event, TermEvent::Output(_));
        let skip_ahead = output && self.skip_ahead;
        self.clients.retain(|id, client| {
            if output && client.skipping {
                return true;
            }
            match client.offer(event.clone(), budget) {
                Ok(()) => true,
                Err(Refused::Full) if skip_ahead => {
                    tracing::info!(
                        client = id,
                        "a terminal client fell behind; skipping it ahead"
                    );
                    client.skipping = true;
                    true
                }
                Err(Refused::Full) => {
                    tracing::info!(client = id, "dropping a terminal client that fell behind");
                    false
                }
                Err(Refused::Closed) => false,
            }
        });
    }

    pub fn any_skipping(&self) -> bool {
        self.clients.values().any(|c| c.skipping)
    }

    /// Lets clients being skipped ahead that have taken most of what was queued
    /// (down to a quarter of the bytes and half the frames) have live output again.
    /// True if any did: they need a fresh screen.
    pub fn catch_up(&mut self) -> bool {
        let low_water = self.client_queue_bytes / 4;
        let mut caught_up = false;
        for client in self.clients.values_mut().filter(|c| c.skipping) {
            if client.queued.load(Ordering::Relaxed) <= low_water
                && client.tx.capacity() >= client.tx.max_capacity() / 2
            {
                client.skipping = false;
                caught_up = true;
            }
        }
        caught_up
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(
        client_queue: usize,
        client_queue_bytes: usize,
        buffer_bytes: usize,
    ) -> TerminalSettings {
        TerminalSettings {
            buffer_bytes,
            client_queue,
            client_queue_bytes,
            ..TerminalSettings::default()
        }
    }

    /// Everything queued for `queue` right now: output as (seq, data), statuses by name.
    fn drain(queue: &mut ClientQueue) -> Vec<String> {
        let mut got = Vec::new();
        while let Ok(event) = queue.rx.try_recv() {
            if let TermEvent::Output(chunk) = &event {
                queue.queued.fetch_sub(chunk.data.len(), Ordering::Relaxed);
            }
            got.push(match event {
                TermEvent::Output(c) => format!("{}:{}", c.seq, c.data),
                TermEvent::Status { state, .. } => state.as_str().to_owned(),
            });
        }
        got
    }

    fn connected() -> TermEvent {
        TermEvent::Status {
            state: TermState::Connected,
            message: String::new(),
            stop_at: None,
        }
    }

    #[test]
    fn every_client_gets_every_chunk_numbered_in_order_and_stored_once() {
        let mut fan = Fanout::new(&settings(16, 1024, 1024), true);
        let mut a = fan.attach(80, 24, None, Some(connected()));
        let mut b = fan.attach(80, 24, None, None);
        assert!(a.fresh_screen && b.fresh_screen);
        fan.push_output("one".into());
        fan.push_output(String::new()); // nothing to number
        fan.push_output("two".into());
        assert_eq!(drain(&mut a.queue), ["connected", "1:one", "2:two"]);
        assert_eq!(drain(&mut b.queue), ["1:one", "2:two"]);
        // The buffer and both queues held the same chunk.
        fan.push_output("three".into());
        let (Ok(TermEvent::Output(x)), Ok(TermEvent::Output(y))) =
            (a.queue.rx.try_recv(), b.queue.rx.try_recv())
        else {
            panic!("no output");
        };
        assert!(Arc::ptr_eq(&x, &y) && Arc::ptr_eq(&x, fan.ring.back().unwrap()));
    }

    #[test]
    fn a_resuming_client_gets_exactly_what_it_missed_while_the_buffer_holds_it() {
        let mut fan = Fanout::new(&settings(16, 1024, 10), true);
        for data in ["aaaa", "bbbb", "cccc"] {
            fan.push_output(data.into());
        }
        // 12 bytes pushed into a 10-byte buffer: chunk 1 is gone.
        let mut resumed = fan.attach(80, 24, Some(2), None);
        assert!(!resumed.fresh_screen);
        assert_eq!(drain(&mut resumed.queue), ["3:cccc"]);
        // Seen everything: nothing to replay, nothing missing.
        let mut current = fan.attach(80, 24, Some(3), None);
        assert!(!current.fresh_screen);
        assert!(drain(&mut current.queue).is_empty());
        // Missed chunk 1, which the buffer no longer holds; or a seq from the future.
        for resume in [0, 9] {
            let mut late = fan.attach(80, 24, Some(resume), None);
            assert!(late.fresh_screen, "resume={resume}");
            assert!(drain(&mut late.queue).is_empty());
        }
    }

    #[test]
    fn a_replay_larger_than_the_queue_is_a_fresh_screen_instead() {
        let mut fan = Fanout::new(&settings(16, 6, 1024), true);
        for data in ["aaaa", "bbbb"] {
            fan.push_output(data.into());
        }
        let mut resumed = fan.attach(80, 24, Some(0), None);
        assert!(resumed.fresh_screen);
        assert!(drain(&mut resumed.queue).is_empty());
    }

    #[test]
    fn a_stalled_tmux_client_is_skipped_ahead_without_holding_up_the_others() {
        let mut fan = Fanout::new(&settings(64, 8, 1024), true);
        let mut stalled = fan.attach(80, 24, None, None);
        let mut reader = fan.attach(80, 24, None, None);
        for data in ["aaaa", "bbbb", "cccc", "dddd"] {
            fan.push_output(data.into());
            drain(&mut reader.queue);
        }
        // Its 8 bytes held chunks 1 and 2; 3 overflowed it, and 4 was not offered.
        assert!(fan.any_skipping());
        assert_eq!(fan.len(), 2, "skipped, not dropped");
        // Not caught up while its queue is full.
        assert!(!fan.catch_up());
        // Statuses still reach it.
        fan.broadcast(&connected());
        assert_eq!(drain(&mut stalled.queue), ["1:aaaa", "2:bbbb", "connected"]);
        assert_eq!(drain(&mut reader.queue), ["connected"]);
        // Having taken what was queued, it has live output again, after a gap.
        assert!(fan.catch_up());
        assert!(!fan.any_skipping());
        fan.push_output("eeee".into());
        assert_eq!(drain(&mut stalled.queue), ["5:eeee"]);
        assert_eq!(drain(&mut reader.queue), ["5:eeee"]);
    }

    #[test]
    fn a_full_frame_queue_also_counts_as_falling_behind() {
        let mut fan = Fanout::new(&settings(2, 1024, 1024), true);
        let mut stalled = fan.attach(80, 24, None, None);
        for data in ["a", "b", "c"] {
            fan.push_output(data.into());
        }
        assert!(fan.any_skipping());
        assert_eq!(drain(&mut stalled.queue), ["1:a", "2:b"]);
    }

    #[test]
    fn without_tmux_a_stalled_client_is_dropped_after_what_was_queued() {
        let mut fan = Fanout::new(&settings(64, 8, 1024), false);
        let mut stalled = fan.attach(80, 24, None, None);
        let mut reader = fan.attach(80, 24, None, None);
        for data in ["aaaa", "bbbb", "cccc"] {
            fan.push_output(data.into());
            drain(&mut reader.queue);
        }
        assert_eq!(fan.len(), 1);
        assert!(!fan.any_skipping());
        assert_eq!(drain(&mut stalled.queue), ["1:aaaa", "2:bbbb"]);
        // Its queue then ends: the connection closes, saying where to resume.
        let ended = futures_util::FutureExt::now_or_never(stalled.queue.recv());
        assert!(matches!(ended, Some(None)));
    }

    #[test]
    fn clients_that_left_are_removed_and_sizes_are_per_client() {
        let mut fan = Fanout::new(&settings(16, 1024, 1024), true);
        let gone = fan.attach(80, 24, None, None);
        let stays = fan.attach(100, 30, None, None);
        drop(gone.queue);
        fan.push_output("x".into());
        assert_eq!(fan.len(), 1);
        assert_eq!(fan.size_of(stays.id), Some((100, 30)));
        fan.set_size(stays.id, 120, 40);
        assert_eq!(fan.size_of(stays.id), Some((120, 40)));
        assert_eq!(fan.size_of(gone.id), None);
        fan.detach(stays.id);
        assert!(fan.is_empty());
    }
}
