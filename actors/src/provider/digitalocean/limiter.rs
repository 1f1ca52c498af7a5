//! The client-side rate limiter, one per API token and shared by every actor that
//! uses it: requests are paced under the per-minute limit (DigitalOcean allows 250
//! a minute and 5,000 an hour per token), never exceed the budget the
//! `ratelimit-remaining`/`ratelimit-reset` headers report, and all wait when a 429
//! says to (`retry-after`). So a thousand environments created at once queue here
//! instead of provoking a storm of 429s.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[derive(Debug)]
struct State {
    /// Token bucket for the per-minute pace.
    tokens: f64,
    capacity: f64,
    per_second: f64,
    refilled: Instant,
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
    pub fn new(per_minute: u32) -> Self {
        let capacity = f64::from(per_minute.max(1));
        Self {
            state: Mutex::new(State {
                tokens: capacity,
                capacity,
                per_second: capacity / 60.0,
                refilled: Instant::now(),
                remaining: None,
                reset_at: None,
                paused_until: None,
                in_flight: 0,
            }),
        }
    }

    /// The limiter of `token` in this process (made on first use).
    pub fn for_token(token: &str, per_minute: u32) -> Arc<Self> {
        let registry = LIMITERS.get_or_init(Mutex::default);
        let mut map = registry.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, weak| weak.strong_count() > 0);
        if let Some(existing) = map.get(token).and_then(Weak::upgrade) {
            return existing;
        }
        let limiter = Arc::new(Self::new(per_minute));
        map.insert(token.to_owned(), Arc::downgrade(&limiter));
        limiter
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How long to wait before a request may go, or `None` (and it is counted).
    fn try_take(&self, now: Instant) -> Option<Duration> {
        let mut s = self.lock();
        let elapsed = now.saturating_duration_since(s.refilled).as_secs_f64();
        s.tokens = (s.tokens + elapsed * s.per_second).min(s.capacity);
        s.refilled = now;
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
        if s.tokens < 1.0 {
            return Some(Duration::from_secs_f64((1.0 - s.tokens) / s.per_second));
        }
        s.tokens -= 1.0;
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
    fn paces_to_the_per_minute_budget() {
        let limiter = Limiter::new(60);
        let now = Instant::now();
        for _ in 0..60 {
            assert!(limiter.try_take(now).is_none());
        }
        let wait = limiter.try_take(now).expect("must wait");
        assert!(
            wait <= Duration::from_secs(1) && wait > Duration::from_millis(900),
            "{wait:?}"
        );
        assert!(limiter.try_take(now + Duration::from_secs(1)).is_none());
    }

    #[test]
    fn honours_the_servers_budget_and_429s() {
        let limiter = Limiter::new(1000);
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
        let other = Limiter::new(1000);
        other.pause(Duration::from_secs(3));
        assert!(other.try_take(Instant::now()).expect("paused") > Duration::from_secs(2));
    }

    #[test]
    fn one_limiter_per_token() {
        let a = Limiter::for_token("token-a", 250);
        let b = Limiter::for_token("token-a", 250);
        let c = Limiter::for_token("token-b", 250);
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &c));
    }
}
