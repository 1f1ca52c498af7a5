//! Exponential backoff, the one way the actors wait before trying again: a delay
//! that doubles with each attempt, optionally capped and jittered.

use std::time::Duration;

use rand::RngExt;

/// How long to wait before attempt `n` of something that failed: `base × 2^n`, at
/// most `max`, and with jitter a random part of it (so that many waiting at once
/// do not all come back at the same moment).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    jitter: bool,
}

impl Backoff {
    /// `base`, doubled with each attempt, without a cap or jitter.
    pub const fn doubling(base: Duration) -> Self {
        Self {
            base,
            max: Duration::MAX,
            jitter: false,
        }
    }

    /// Never more than `max`.
    pub const fn at_most(self, max: Duration) -> Self {
        Self { max, ..self }
    }

    /// Half to all of the delay, at random.
    pub const fn jittered(self) -> Self {
        Self {
            jitter: true,
            ..self
        }
    }

    /// The delay before attempt `attempt` (0 waits `base`); never overflows.
    pub fn delay(&self, attempt: u32) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(2u32.saturating_pow(attempt))
            .min(self.max);
        if self.jitter {
            ceiling.mul_f64(rand::rng().random_range(0.5..=1.0))
        } else {
            ceiling
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn the_delay_doubles_from_the_base() {
        let backoff = Backoff::doubling(100 * MS);
        let delays: Vec<_> = (0..5).map(|n| backoff.delay(n)).collect();
        assert_eq!(delays, [100 * MS, 200 * MS, 400 * MS, 800 * MS, 1600 * MS]);
    }

    #[test]
    fn the_cap_holds_however_many_attempts() {
        let backoff = Backoff::doubling(200 * MS).at_most(Duration::from_secs(5));
        assert_eq!(backoff.delay(4), 3200 * MS);
        assert_eq!(backoff.delay(5), Duration::from_secs(5));
        assert_eq!(backoff.delay(u32::MAX), Duration::from_secs(5));
    }

    #[test]
    fn without_a_cap_a_huge_attempt_saturates_instead_of_overflowing() {
        let backoff = Backoff::doubling(Duration::from_secs(1));
        assert!(backoff.delay(u32::MAX) >= backoff.delay(31));
    }

    #[test]
    fn jitter_waits_half_to_all_of_the_delay() {
        let backoff = Backoff::doubling(100 * MS)
            .at_most(Duration::from_secs(1))
            .jittered();
        for _ in 0..100 {
            let first = backoff.delay(1);
            assert!((100 * MS..=200 * MS).contains(&first), "{first:?}");
            let capped = backoff.delay(10);
            assert!((500 * MS..=1000 * MS).contains(&capped), "{capped:?}");
        }
        let spread: std::collections::HashSet<_> = (0..20).map(|_| backoff.delay(3)).collect();
        assert!(spread.len() > 1, "the same delay every time: {spread:?}");
    }
}
