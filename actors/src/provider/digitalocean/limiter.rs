//! The client-side rate limiter, one per API token and shared by every actor that
//! uses it: at most `limit` requests start in any `window` (DigitalOcean allows 250
//! a minute and 5,000 an hour per token), requests never exceed the budget the
//! `ratelimit-remaining`/`ratelimit-reset` headers report, and all wait when a 429
//! says to (`retry-after`). So a thousand environments created at once queue here
//! instead of provoking a storm of 429s.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[derive(Debug)]
struct State {
    /// When the requests of the last `window` started (a sliding window: a burst is
    /// allowed, and still no more than `limit` in any `window`).
    sent: VecDeque<Instant>,
    limit: usize,
    window: Duration,
    /// The server's word: requests left until `reset_at`.
    remaining: Option<u64>,
    reset_at: Option<Instant>,
    /// After a 429: nobody sends before this.
    paused_until: Option<Instant>,
    in_flight: u64,
}

#[derive(Debug)]
pub struct Limiter {
    state: Mutex<State>,
}

/// A request under way; dropping it frees its place.
pub struct Permit {
    limiter: Arc<Limiter>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut s = self.limiter.lock();
        s.in_flight = s.in_flight.saturating_sub(1);
    }
}

static LIMITERS: OnceLock<Mutex<HashMap<String, Weak<Limiter>>>> = OnceLock::new();

impl Limiter {
    pub fn new(limit: u32, window: Duration) -> Self {
        Self {
            state: Mutex::new(State {
                sent: VecDeque::new(),
                limit: usize::try_from(limit.max(1)).unwrap_or(usize::MAX),
                window,
                remaining: None,
                reset_at: None,
                paused_until: None,
                in_flight: 0,
            }),
        }
    }

    /// The limiter of `token` in this process (made on first use).
    pub fn for_token(token: &str, limit: u32, window: Duration) -> Arc<Self> {
        let registry = LIMITERS.get_or_init(Mutex::default);
        let mut map = registry.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, weak| weak.strong_count() > 0);
        if let Some(existing) = map.get(token).and_then(Weak::upgrade) {
            return existing;
        }
        let limiter = Arc::new(Self::new(limit, window));
        map.insert(token.to_owned(), Arc::downgrade(&limiter));
        limiter
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How long to wait before a request may go, or `None` (and it is counted).
    fn try_take(&self, now: Instant) -> Option<Duration> {
        let mut s = self.lock();
        // A request counts a little longer than the window: the server's clock and
        // window edges are not ours, and latencies differ.
        let window = s.window + s.window / 20;
        while s
            .sent
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= window)
        {
            s.sent.pop_front();
        }
        if let Some(until) = s.paused_until {
            if until > now {
                return Some(until - now);
            }
            s.paused_until = None;
        }
        if let (Some(remaining), Some(reset)) = (s.remaining, s.reset_at) {
            if reset <= now {
                s.remaining = None;
                s.reset_at = None;
            } else if remaining <= s.in_flight {
                return Some(reset - now);
            }
        }
        if s.sent.len() >= s.limit
            && let Some(oldest) = s.sent.front()
        {
            return Some(
                (*oldest + window)
                    .saturating_duration_since(now)
                    .max(Duration::from_millis(1)),
            );
        }
        s.sent.push_back(now);
        s.in_flight += 1;
        None
    }

    /// Waits for a place to send a request.
    pub async fn acquire(self: &Arc<Self>) -> Permit {
        loop {
            match self.try_take(Instant::now()) {
                None => {
                    return Permit {
                        limiter: self.clone(),
                    };
                }
                // Re-check at least every few seconds: others' answers change the picture.
                Some(wait) => tokio::time::sleep(wait.min(Duration::from_secs(5))).await,
            }
        }
    }

    /// Takes in what an answer's `ratelimit-*` headers say.
    pub fn observe(&self, remaining: Option<u64>, reset_epoch: Option<u64>) {
        let mut s = self.lock();
        if let Some(remaining) = remaining {
            // Requests still in flight are not in this figure yet: `try_take` keeps
            // them apart.
            s.remaining = Some(remaining);
        }
        if let Some(reset) = reset_epoch {
            let now_epoch = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            s.reset_at =
                Some(Instant::now() + Duration::from_secs(reset.saturating_sub(now_epoch)));
        }
    }

    /// A 429: everyone waits this long.
    pub fn pause(&self, wait: Duration) {
        let mut s = self.lock();
        let until = Instant::now() + wait;
        if s.paused_until.is_none_or(|u| u < until) {
            s.paused_until = Some(until);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_more_than_the_limit_in_any_window() {
        let limiter = Limiter::new(60, Duration::from_secs(60));
        let now = Instant::now();
        for i in 0..60 {
            assert!(limiter.try_take(now + Duration::from_millis(i)).is_none());
        }
        let wait = limiter
            .try_take(now + Duration::from_secs(1))
            .expect("must wait");
        // 60 s after the oldest, and a margin of 3 s.
        assert_eq!(wait, Duration::from_secs(62));
        assert!(limiter.try_take(now + Duration::from_secs(63)).is_none());
        assert!(limiter.try_take(now + Duration::from_secs(63)).is_some());
    }

    #[test]
    fn honours_the_servers_budget_and_429s() {
        let limiter = Limiter::new(1000, Duration::from_secs(60));
        let reset = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("now")
            .as_secs()
            + 30;
        limiter.observe(Some(1), Some(reset));
        let now = Instant::now();
        assert!(limiter.try_take(now).is_none());
        let wait = limiter.try_take(now).expect("budget used up");
        assert!(wait > Duration::from_secs(20), "{wait:?}");
        let other = Limiter::new(1000, Duration::from_secs(60));
        other.pause(Duration::from_secs(3));
        assert!(other.try_take(Instant::now()).expect("paused") > Duration::from_secs(2));
    }

    #[test]
    fn one_limiter_per_token() {
        let minute = Duration::from_secs(60);
        let a = Limiter::for_token("token-a", 250, minute);
        let b = Limiter::for_token("token-a", 250, minute);
        let c = Limiter::for_token("token-b", 250, minute);
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &c));
    }
}
