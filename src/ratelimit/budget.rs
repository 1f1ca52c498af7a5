//! A keyed GCRA allowance that can be given back: the wrong-password budget of an
//! account. A sign-in takes one unit before its password is checked (so concurrent
//! guesses cannot overshoot) and gives it back when the password was right, so only
//! failures spend it. `governor` cannot give back, hence this small twin of `Keyed`.

use std::hash::Hash;
use std::time::Duration;

use dashmap::DashMap;
use governor::clock::{Clock, DefaultClock, Reference};
use governor::nanos::Nanos;

use super::Status;
use crate::config::Rate;

/// `d` in nanoseconds, saturating (a setting may name centuries).
pub(super) fn nanos(d: Duration) -> Nanos {
    Nanos::new(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// `count` units per `per`, `count` at once; per key, the theoretical arrival time
/// (TAT) of the next unit, as in GCRA: a key is full again once its TAT has passed.
pub struct Budget<K: Hash + Eq, C: Clock = DefaultClock> {
    limit: u32,
    interval: Nanos,
    /// How far ahead of now a TAT may be: the whole allowance.
    span: Nanos,
    tats: DashMap<K, C::Instant>,
    clock: C,
}

impl<K: Hash + Eq> Budget<K> {
    pub fn new(rate: Rate) -> Self {
        Self::with_clock(rate, DefaultClock::default())
    }
}

impl<K: Hash + Eq, C: Clock> Budget<K, C> {
    pub fn with_clock(rate: Rate, clock: C) -> Self {
        let interval = nanos(rate.interval());
        Self {
            limit: rate.count.get(),
            interval,
            span: Nanos::new(
                interval
                    .as_u64()
                    .saturating_mul(u64::from(rate.count.get())),
            ),
            tats: DashMap::new(),
            clock,
        }
    }

    /// Takes one unit for `key`: `Ok` with what is left, `Err` with when to retry
    /// (a refusal takes nothing).
    pub fn take(&self, key: K) -> Result<Status, Status> {
        let now = self.clock.now();
        let mut tat = self.tats.entry(key).or_insert(now);
        let next = (*tat).max(now) + self.interval;
        let ahead = next.duration_since(now);
        if ahead > self.span {
            return Err(Status {
                limit: self.limit,
                remaining: 0,
                reset: (ahead.saturating_sub(self.span)).into(),
            });
        }
        *tat = next;
        let left = self.span.saturating_sub(ahead).as_u64() / self.interval.as_u64().max(1);
        Ok(Status {
            limit: self.limit,
            remaining: u32::try_from(left).unwrap_or(u32::MAX),
            reset: ahead.into(),
        })
    }

    /// Gives back a unit taken for `key`.
    pub fn give_back(&self, key: &K) {
        if let Some(mut tat) = self.tats.get_mut(key) {
            *tat = tat.saturating_sub(self.interval);
        }
    }

    /// Drops the keys whose allowance is full again (the same as absent ones).
    pub fn sweep(&self) {
        let now = self.clock.now();
        self.tats.retain(|_, tat| *tat > now);
        self.tats.shrink_to_fit();
    }

    /// Keys held.
    pub fn len(&self) -> usize {
        self.tats.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;
    use std::num::NonZeroU32;

    fn per_hour(count: u32) -> Rate {
        Rate::new(
            NonZeroU32::new(count).expect("non-zero"),
            Duration::from_secs(3600),
        )
    }

    #[test]
    fn given_back_units_are_not_spent() {
        let clock = FakeRelativeClock::default();
        let budget = Budget::with_clock(per_hour(3), clock.clone());
        for _ in 0..10 {
            let status = budget.take("k").expect("a right password costs nothing");
            assert_eq!(status.remaining, 2);
            budget.give_back(&"k");
        }
        let statuses: Vec<u32> = (0..3)
            .map(|_| budget.take("k").expect("allowed").remaining)
            .collect();
        assert_eq!(statuses, [2, 1, 0]);
        let refused = budget.take("k").expect_err("spent");
        assert_eq!(refused.reset, Duration::from_secs(1200));
        assert_eq!(refused.limit, 3);
        assert!(budget.take("other").is_ok(), "each key its own");
        clock.advance(Duration::from_secs(1200));
        assert!(budget.take("k").is_ok());
        assert!(budget.take("k").is_err());
    }

    #[test]
    fn an_endless_attack_gets_twice_the_rate_in_the_first_hour_then_the_rate() {
        let clock = FakeRelativeClock::default();
        let budget = Budget::with_clock(per_hour(10), clock.clone());
        // One attempt a second for ten hours; when each one passed.
        let mut passed = Vec::new();
        for second in 0..10 * 3600u64 {
            if budget.take(()).is_ok() {
                passed.push(second);
            }
            clock.advance(Duration::from_secs(1));
        }
        let most_in_an_hour = passed
            .iter()
            .map(|start| {
                passed
                    .iter()
                    .filter(|t| (*start..=start + 3600).contains(t))
                    .count()
            })
            .max();
        assert_eq!(most_in_an_hour, Some(20), "the burst and an hour's worth");
        assert_eq!(passed.len(), 10 + 10 * 10 - 1, "then 10 an hour");
    }

    #[test]
    fn sweeping_drops_full_keys_only() {
        let clock = FakeRelativeClock::default();
        let budget = Budget::with_clock(per_hour(10), clock.clone());
        for n in 0..1000u32 {
            budget.take(n).expect("first");
        }
        budget.take(7).expect("second");
        budget.take(5000).expect("taken");
        budget.give_back(&5000);
        assert_eq!(budget.len(), 1001);
        budget.sweep();
        assert_eq!(budget.len(), 1000, "the given-back key is full again");
        clock.advance(Duration::from_secs(360));
        budget.sweep();
        assert_eq!(budget.len(), 1, "only the key with two spent");
    }
}
