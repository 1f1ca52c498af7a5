//! The addresses each account has signed in from lately: from those, wrong
//! passwords typed elsewhere do not hold the owner back. Only a right password adds
//! one, each account keeps its most recent few, and each is forgotten after a while,
//! so memory is bounded by the accounts that signed in lately, not by attackers.

use std::net::IpAddr;
use std::time::Duration;

use dashmap::DashMap;
use governor::clock::{Clock, DefaultClock, Reference};
use governor::nanos::Nanos;
use uuid::Uuid;

use super::budget::nanos;

/// Addresses remembered per account: home, work, a phone's carrier or two.
pub const PER_ACCOUNT: usize = 8;

pub struct KnownAddresses<C: Clock = DefaultClock> {
    ttl: Nanos,
    accounts: DashMap<Uuid, Vec<(IpAddr, C::Instant)>>,
    clock: C,
}

impl KnownAddresses {
    pub fn new(ttl: Duration) -> Self {
        Self::with_clock(ttl, DefaultClock::default())
    }
}

impl<C: Clock> KnownAddresses<C> {
    pub fn with_clock(ttl: Duration, clock: C) -> Self {
        Self {
            ttl: nanos(ttl),
            accounts: DashMap::new(),
            clock,
        }
    }

    fn fresh(&self, now: C::Instant, at: C::Instant) -> bool {
        now.duration_since(at) < self.ttl
    }

    /// Whether `account` signed in from `address` within the time remembered.
    pub fn contains(&self, account: Uuid, address: IpAddr) -> bool {
        let now = self.clock.now();
        self.accounts.get(&account).is_some_and(|known| {
            known
                .iter()
                .any(|(a, at)| *a == address && self.fresh(now, *at))
        })
    }

    /// `account` signed in from `address` just now. Past [`PER_ACCOUNT`], the
    /// address used least recently is forgotten.
    pub fn remember(&self, account: Uuid, address: IpAddr) {
        let now = self.clock.now();
        let mut known = self.accounts.entry(account).or_default();
        if let Some(entry) = known.iter_mut().find(|(a, _)| *a == address) {
            entry.1 = now;
            return;
        }
        if known.len() >= PER_ACCOUNT
            && let Some(oldest) = (0..known.len()).min_by_key(|i| known[*i].1)
        {
            known.swap_remove(oldest);
        }
        known.push((address, now));
    }

    /// Forgets what is too old, and the accounts left with nothing.
    pub fn sweep(&self) {
        let now = self.clock.now();
        self.accounts.retain(|_, known| {
            known.retain(|(_, at)| self.fresh(now, *at));
            !known.is_empty()
        });
        self.accounts.shrink_to_fit();
    }

    /// Accounts held.
    pub fn len(&self) -> usize {
        self.accounts.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, n])
    }

    #[test]
    fn remembered_for_the_ttl_from_the_last_sign_in() {
        let clock = FakeRelativeClock::default();
        let known = KnownAddresses::with_clock(Duration::from_secs(100), clock.clone());
        let (owner, other) = (Uuid::new_v4(), Uuid::new_v4());
        known.remember(owner, ip(1));
        assert!(known.contains(owner, ip(1)));
        assert!(!known.contains(owner, ip(2)), "another address");
        assert!(!known.contains(other, ip(1)), "another account");
        clock.advance(Duration::from_secs(60));
        known.remember(owner, ip(1));
        clock.advance(Duration::from_secs(60));
        assert!(
            known.contains(owner, ip(1)),
            "counted from the last sign-in"
        );
        clock.advance(Duration::from_secs(40));
        assert!(!known.contains(owner, ip(1)));
        known.sweep();
        assert_eq!(known.len(), 0, "swept");
    }

    #[test]
    fn each_account_keeps_its_most_recent_addresses() {
        let clock = FakeRelativeClock::default();
        let known = KnownAddresses::with_clock(Duration::from_secs(3600), clock.clone());
        let owner = Uuid::new_v4();
        for n in 0..=PER_ACCOUNT as u8 {
            known.remember(owner, ip(n));
            clock.advance(Duration::from_secs(1));
            // The first address is kept in use.
            known.remember(owner, ip(0));
        }
        assert!(known.contains(owner, ip(0)));
        assert!(
            !known.contains(owner, ip(1)),
            "the least recently used went"
        );
        let kept = (0..=PER_ACCOUNT as u8)
            .filter(|n| known.contains(owner, ip(*n)))
            .count();
        assert_eq!(kept, PER_ACCOUNT);
    }
}
