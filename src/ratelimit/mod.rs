//! Rate limits (GCRA, on `governor`): requests per client address on the API,
//! sign-ups and refreshes per address, failed sign-ins per address and per account
//! (not counting the addresses that signed in to the account lately), requests per
//! signed-in user scaled by plan, WebSocket connection attempts per user, and terminal
//! input frames per connection. Keyed state lives in DashMaps that a background task sweeps, so
//! memory follows the keys seen lately, not every key ever seen; each process counts
//! its own. The sign-in limits protect accounts, so they are shared by every process,
//! in the database (`signin`). See README, Rate limits.

mod middleware;
mod signin;

pub use middleware::{
    add_headers, answer_deferred, check_at_edge, insert_headers, limit_recovery_by_ip,
    limit_refresh_by_ip, limit_register_by_ip, record,
};
pub use signin::LoginAttempt;

use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use uuid::Uuid;

use crate::config::{Rate, RateLimitSettings};
use crate::db::DbPool;
use crate::db::users::User;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::plans::Plan;

/// Where a caller stands with one limit: what the `RateLimit-*` headers say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    /// The burst allowance.
    pub limit: u32,
    pub remaining: u32,
    /// Allowed: until the whole allowance is back. Refused: until the next request
    /// may pass (the `Retry-After`).
    pub reset: Duration,
}

impl Status {
    /// `reset` in whole seconds, rounded up, so that waiting that long is enough.
    pub fn reset_seconds(&self) -> u64 {
        self.reset.as_secs() + u64::from(self.reset.subsec_nanos() > 0)
    }

    /// Seconds to wait after a refusal: at least 1.
    pub fn retry_after_seconds(&self) -> u64 {
        self.reset_seconds().max(1)
    }
}

fn quota(rate: Rate) -> Quota {
    // `Rate` guarantees a non-zero interval; the fallback is never used.
    Quota::with_period(rate.interval())
        .unwrap_or_else(|| Quota::per_second(rate.count))
        .allow_burst(rate.count)
}

/// One limit, with a state per key (address, user, account).
pub struct Keyed<K: Hash + Eq + Clone, C: Clock = DefaultClock> {
    limiter: RateLimiter<K, DashMapStateStore<K>, C, StateInformationMiddleware>,
}

impl<K: Hash + Eq + Clone> Keyed<K> {
    pub fn new(rate: Rate) -> Self {
        Self::with_clock(rate, DefaultClock::default())
    }
}

impl<K: Hash + Eq + Clone, C: Clock> Keyed<K, C> {
    pub fn with_clock(rate: Rate, clock: C) -> Self {
        Self {
            limiter: RateLimiter::dashmap_with_clock(quota(rate), clock)
                .with_middleware::<StateInformationMiddleware>(),
        }
    }

    /// Counts one request for `key`: `Ok` with what is left, `Err` with when to retry.
    /// A refused request costs nothing.
    pub fn check(&self, key: &K) -> Result<Status, Status> {
        match self.limiter.check_key(key) {
            Ok(snapshot) => {
                let quota = snapshot.quota();
                let limit = quota.burst_size().get();
                let remaining = snapshot.remaining_burst_capacity();
                Ok(Status {
                    limit,
                    remaining,
                    reset: quota.replenish_interval() * limit.saturating_sub(remaining),
                })
            }
            Err(not_until) => Err(Status {
                limit: not_until.quota().burst_size().get(),
                remaining: 0,
                reset: not_until.wait_time_from(self.limiter.clock().now()),
            }),
        }
    }

    /// Drops the keys whose allowance is full again (they are the same as absent
    /// ones) and gives the memory back.
    pub fn sweep(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }

    /// Keys held.
    pub fn len(&self) -> usize {
        self.limiter.len()
    }

    pub fn is_empty(&self) -> bool {
        self.limiter.is_empty()
    }
}

/// The key of a client address: IPv6 clients usually hold a whole /64, so they
/// count as one.
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        },
    }
}

fn refused(what: &str, status: Status) -> ApiError {
    ApiError::RateLimited {
        detail: format!("{what}; retry in {} s.", status.retry_after_seconds()),
        status,
    }
}

/// The routes, besides sign-in, that hand out tokens: each is limited per address
/// on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credentials {
    Register,
    Refresh,
    /// Asking for a password reset, and using one.
    Recovery,
}

/// Every limit of the server, shared by all workers (one process counts its own).
pub struct RateLimits {
    ip: Keyed<IpAddr>,
    register_ip: Keyed<IpAddr>,
    refresh_ip: Keyed<IpAddr>,
    recovery_ip: Keyed<IpAddr>,
    /// Failed sign-ins per address and per account, except from the addresses
    /// each account signed in from lately (in the database, see `signin`).
    signin: SigninRates,
    /// Keys the sign-in limits held at the latest sweep: address budgets, account
    /// budgets, accounts with remembered addresses.
    signin_keys: [AtomicUsize; 3],
    /// One per plan that has a per-user limit.
    users: Vec<(Plan, Keyed<Uuid>)>,
    ws_connect: Keyed<Uuid>,
    ws_input: Quota,
    rejected: Rejections,
}

/// `devpocket_rate_limit_rejections_total{limiter}`, one counter per limiter.
struct Rejections {
    ip: ::metrics::Counter,
    register_ip: ::metrics::Counter,
    login_ip: ::metrics::Counter,
    refresh_ip: ::metrics::Counter,
    recovery_ip: ::metrics::Counter,
    login_account: ::metrics::Counter,
    user: ::metrics::Counter,
    ws_connect: ::metrics::Counter,
    ws_input: ::metrics::Counter,
}

impl Rejections {
    fn new(metrics: &Metrics) -> Self {
        let counter = |limiter: &'static str| ::metrics::counter!("devpocket_rate_limit_rejections_total", "limiter" => limiter);
        metrics.record(|| Self {
            ip: counter("ip"),
            register_ip: counter("register_ip"),
            login_ip: counter("login_ip"),
            refresh_ip: counter("refresh_ip"),
            recovery_ip: counter("recovery_ip"),
            login_account: counter("login_account"),
            user: counter("user"),
            ws_connect: counter("ws_connect"),
            ws_input: counter("ws_input"),
        })
    }
}

#[derive(Debug, Clone, Copy)]
struct SigninRates {
    per_address: Rate,
    per_account: Rate,
    known_ttl: Duration,
}

impl RateLimits {
    pub fn new(settings: &RateLimitSettings, metrics: &Metrics) -> Self {
        Self {
            rejected: Rejections::new(metrics),
            ip: Keyed::new(settings.ip),
            register_ip: Keyed::new(settings.register_ip),
            refresh_ip: Keyed::new(settings.refresh_ip),
            recovery_ip: Keyed::new(settings.recovery_ip),
            signin: SigninRates {
                per_address: settings.login_failures_ip,
                per_account: settings.login_failures_account,
                known_ttl: settings.known_address_ttl,
            },
            signin_keys: Default::default(),
            users: Plan::ALL
                .into_iter()
                .filter_map(|plan| {
                    let factor = plan.rate_limit_multiplier()?;
                    Some((plan, Keyed::new(settings.user.scaled(factor))))
                })
                .collect(),
            ws_connect: Keyed::new(settings.ws_connect),
            ws_input: Quota::per_second(settings.ws_input_per_second),
        }
    }

    /// Any request to the API from `ip`.
    pub fn check_ip(&self, ip: IpAddr) -> Result<Status, ApiError> {
        self.ip.check(&address_key(ip)).map_err(|s| {
            self.rejected.ip.increment(1);
            refused("Too many requests from your network address", s)
        })
    }

    /// A sign-up or a refresh from `ip` (sign-ins are limited by [`begin_login`](Self::begin_login)).
    pub fn check_credentials(&self, route: Credentials, ip: IpAddr) -> Result<Status, ApiError> {
        let (limiter, rejected, what) = match route {
            Credentials::Register => (
                &self.register_ip,
                &self.rejected.register_ip,
                "Too many sign-ups from your network address",
            ),
            Credentials::Refresh => (
                &self.refresh_ip,
                &self.rejected.refresh_ip,
                "Too many token refreshes from your network address",
            ),
            Credentials::Recovery => (
                &self.recovery_ip,
                &self.rejected.recovery_ip,
                "Too many password-reset requests from your network address",
            ),
        };
        limiter.check(&address_key(ip)).map_err(|s| {
            rejected.increment(1);
            refused(what, s)
        })
    }

    /// An authenticated request; `None` when the user's plan has no per-user limit.
    pub fn check_user(&self, user: &User) -> Result<Option<Status>, ApiError> {
        let plan = user.subscription_plan;
        let Some((_, limiter)) = self.users.iter().find(|(p, _)| *p == plan) else {
            return Ok(None);
        };
        limiter.check(&user.id).map(Some).map_err(|s| {
            self.rejected.user.increment(1);
            refused(
                &format!("Too many requests for your account on the {plan} plan"),
                s,
            )
        })
    }

    /// A WebSocket connection by `user`: `Err` with how long to wait.
    pub fn check_ws_connect(&self, user: Uuid) -> Result<(), Status> {
        self.ws_connect.check(&user).map(|_| ()).inspect_err(|_| {
            self.rejected.ws_connect.increment(1);
        })
    }

    /// Counts an input frame refused by a [`ws_input_limiter`](Self::ws_input_limiter).
    pub fn rejected_ws_input(&self) {
        self.rejected.ws_input.increment(1);
    }

    /// A limiter for the input frames of one terminal connection.
    pub fn ws_input_limiter(&self) -> DefaultDirectRateLimiter {
        RateLimiter::direct(self.ws_input)
    }

    /// Keys held per limiter, named as in `devpocket_rate_limit_keys{limiter}` (the
    /// per-user limits of all plans count together as `user`).
    pub fn keys(&self) -> [(&'static str, usize); 9] {
        [
            ("ip", self.ip.len()),
            ("register_ip", self.register_ip.len()),
            ("login_ip", self.signin_keys[0].load(Ordering::Relaxed)),
            ("refresh_ip", self.refresh_ip.len()),
            ("recovery_ip", self.recovery_ip.len()),
            ("login_account", self.signin_keys[1].load(Ordering::Relaxed)),
            ("login_known", self.signin_keys[2].load(Ordering::Relaxed)),
            ("user", self.users.iter().map(|(_, l)| l.len()).sum()),
            ("ws_connect", self.ws_connect.len()),
        ]
    }

    /// Sweeps every keyed limit.
    pub fn sweep(&self) {
        self.ip.sweep();
        self.register_ip.sweep();
        self.refresh_ip.sweep();
        self.recovery_ip.sweep();
        for (_, limiter) in &self.users {
            limiter.sweep();
        }
        self.ws_connect.sweep();
    }
}

/// Sweeps `limits` every `period` (`DEVPOCKET_RATE_LIMIT_SWEEP`) until they are
/// dropped (the server stopped), the sign-in limits' rows in `pool` too (every
/// process sweeps them; it is idempotent).
pub fn spawn_sweeper(limits: &Arc<RateLimits>, period: Duration, pool: DbPool) {
    crate::periodic::every(limits, period, move |limits| {
        let pool = pool.clone();
        async move {
            let signin = async {
                let mut conn = pool.get().await.map_err(|e| e.to_string())?;
                crate::db::signin_limits::sweep(&mut conn, limits.signin.known_ttl)
                    .await
                    .map_err(|e| e.to_string())
            };
            match signin.await {
                Ok(counts) => {
                    for (held, n) in limits.signin_keys.iter().zip(<[usize; 3]>::from(counts)) {
                        held.store(n, Ordering::Relaxed);
                    }
                }
                Err(error) => tracing::warn!(%error, "could not sweep the sign-in limits"),
            }
            // Many keys take a moment: off the async workers.
            let _ = tokio::task::spawn_blocking(move || limits.sweep()).await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;
    use std::num::NonZeroU32;

    fn rate(count: u32, secs: u64) -> Rate {
        Rate::new(
            NonZeroU32::new(count).expect("non-zero"),
            Duration::from_secs(secs),
        )
    }

    #[test]
    fn allows_the_burst_then_says_when_to_retry() {
        let clock = FakeRelativeClock::default();
        let limit = Keyed::with_clock(rate(3, 60), clock.clone());
        let statuses: Vec<Status> = (0..3)
            .map(|_| limit.check(&"k").expect("allowed"))
            .collect();
        assert_eq!(
            statuses.iter().map(|s| s.remaining).collect::<Vec<_>>(),
            [2, 1, 0]
        );
        assert_eq!(statuses[0].limit, 3);
        assert_eq!(statuses[2].reset, Duration::from_secs(60));
        let refused = limit.check(&"k").expect_err("limited");
        assert_eq!(refused.remaining, 0);
        assert_eq!(refused.reset, Duration::from_secs(20));
        assert_eq!(refused.retry_after_seconds(), 20);
        // Another key has its own allowance.
        assert!(limit.check(&"other").is_ok());
        clock.advance(Duration::from_secs(20));
        assert!(limit.check(&"k").is_ok());
        assert!(limit.check(&"k").is_err());
    }

    #[test]
    fn sweeping_bounds_memory() {
        let clock = FakeRelativeClock::default();
        let limit = Keyed::with_clock(rate(5, 60), clock.clone());
        for n in 0..100_000u32 {
            limit.check(&n).expect("first request of a key");
        }
        assert_eq!(limit.len(), 100_000);
        // Sweeping early keeps keys whose allowance is not back yet.
        limit.sweep();
        assert_eq!(limit.len(), 100_000);
        // One request takes 12 s to come back; governor keeps a key one interval more.
        clock.advance(Duration::from_secs(25));
        limit.check(&7).expect("a recent key");
        limit.sweep();
        assert_eq!(limit.len(), 1, "only the key used since is kept");
    }

    #[test]
    fn ipv6_clients_count_per_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().expect("ip");
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().expect("ip");
        let c: IpAddr = "2001:db8:1:3::1".parse().expect("ip");
        assert_eq!(address_key(a), address_key(b));
        assert_ne!(address_key(a), address_key(c));
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().expect("ip");
        assert_eq!(
            address_key(mapped),
            "192.0.2.1".parse::<IpAddr>().expect("ip")
        );
    }
}
