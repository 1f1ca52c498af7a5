//! The rate limits: per address, per user, sign-up, refresh, sign-in failures,
//! WebSocket connections and terminal input, as `N/DURATION` rates.

use std::fmt;
use std::num::NonZeroU32;
use std::time::Duration;

use super::ConfigError;
use super::source::{Source, invalid, nonzero, parse_duration};

/// A rate limit: at most `count` in any `per`, as `N/DURATION` (`5/1m`, `300/m`, `10/30s`).
/// Enforced as GCRA: a burst of `count` at once, then one more every `per / count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: NonZeroU32,
    pub per: Duration,
}

impl Rate {
    pub const fn new(count: NonZeroU32, per: Duration) -> Self {
        Self { count, per }
    }

    /// The time one unit takes to come back.
    pub fn interval(&self) -> Duration {
        self.per / self.count.get()
    }

    /// `factor` times as many in the same period.
    pub fn scaled(self, factor: NonZeroU32) -> Self {
        Self {
            count: self.count.saturating_mul(factor),
            per: self.per,
        }
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}s", self.count, self.per.as_secs())
    }
}

impl std::str::FromStr for Rate {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("`{s}` is not a rate such as 5/1m, 300/m or 10/30s");
        let (count, per) = s.split_once('/').ok_or_else(bad)?;
        let count: NonZeroU32 = count.trim().parse().map_err(|_| bad())?;
        let per = per.trim();
        // `5/m` reads as `5/1m`.
        let per = if per.starts_with(|c: char| c.is_ascii_alphabetic()) {
            parse_duration(&format!("1{per}"))
        } else {
            parse_duration(per)
        }
        .filter(|d| !d.is_zero())
        .ok_or_else(bad)?;
        let rate = Self { count, per };
        if rate.interval() < Duration::from_micros(1) {
            return Err(format!("`{s}`: at most a million per second"));
        }
        Ok(rate)
    }
}

#[derive(Debug, Clone)]
pub struct RateLimitSettings {
    /// Requests per client address on `/api/v1`.
    pub ip: Rate,
    /// Requests per signed-in user on the free plan; other plans scale it.
    pub user: Rate,
    /// Sign-ups per client address.
    pub register_ip: Rate,
    /// Token refreshes per client address.
    pub refresh_ip: Rate,
    /// Password-reset requests and attempts per client address.
    pub recovery_ip: Rate,
    /// Failed sign-ins per client address, and wrong passwords per account, not
    /// counting an address that signed in to that account within `known_address_ttl`.
    pub login_failures_ip: Rate,
    pub login_failures_account: Rate,
    /// How long an address that signed in to an account is remembered for it.
    pub known_address_ttl: Duration,
    /// WebSocket connection attempts per user.
    pub ws_connect: Rate,
    /// Terminal `input` frames per second per WebSocket connection.
    pub ws_input_per_second: NonZeroU32,
    /// How often the limiters drop the keys whose allowance is full again.
    pub sweep: Duration,
}

impl RateLimitSettings {
    pub(super) fn load(source: &Source) -> Result<Self, ConfigError> {
        let per_minute = |count| Rate::new(nonzero(count), Duration::from_secs(60));
        let ip = source.rate("DEVPOCKET_RATE_LIMIT_IP", per_minute(1200))?;
        let user = source.rate("DEVPOCKET_RATE_LIMIT_USER", per_minute(300))?;
        let per_hour = |count| Rate::new(nonzero(count), Duration::from_secs(3600));
        for (old, new) in [
            (
                "DEVPOCKET_RATE_LIMIT_AUTH_IP",
                "DEVPOCKET_RATE_LIMIT_REGISTER_IP, DEVPOCKET_RATE_LIMIT_REFRESH_IP and DEVPOCKET_RATE_LIMIT_LOGIN_FAILURES_IP",
            ),
            (
                "DEVPOCKET_RATE_LIMIT_AUTH_ACCOUNT",
                "DEVPOCKET_RATE_LIMIT_LOGIN_FAILURES_ACCOUNT",
            ),
        ] {
            if source.get(old).is_some() {
                return Err(invalid(
                    old,
                    format!("is no longer read: see {new} in the README's settings"),
                ));
            }
        }
        Ok(Self {
            ip,
            user,
            register_ip: source.rate("DEVPOCKET_RATE_LIMIT_REGISTER_IP", per_hour(60))?,
            refresh_ip: source.rate("DEVPOCKET_RATE_LIMIT_REFRESH_IP", per_minute(300))?,
            recovery_ip: source.rate("DEVPOCKET_RATE_LIMIT_RECOVERY_IP", per_hour(30))?,
            login_failures_ip: source
                .rate("DEVPOCKET_RATE_LIMIT_LOGIN_FAILURES_IP", per_hour(100))?,
            login_failures_account: source
                .rate("DEVPOCKET_RATE_LIMIT_LOGIN_FAILURES_ACCOUNT", per_hour(10))?,
            known_address_ttl: source.duration(
                "DEVPOCKET_KNOWN_ADDRESS_TTL",
                Duration::from_secs(30 * 86_400),
            )?,
            ws_connect: source.rate("DEVPOCKET_RATE_LIMIT_WS_CONNECT", per_minute(60))?,
            sweep: source.duration("DEVPOCKET_RATE_LIMIT_SWEEP", Duration::from_secs(60))?,
            ws_input_per_second: source.parse(
                "DEVPOCKET_WS_INPUT_PER_SECOND",
                nonzero(200),
                "a whole number of at least 1",
            )?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(pairs: &[(&str, &str)]) -> RateLimitSettings {
        RateLimitSettings::load(&Source::from_map(pairs.iter().copied())).expect("loads")
    }

    #[test]
    fn rates_read_as_count_per_duration() {
        let rate: Rate = "5/1m".parse().expect("rate");
        assert_eq!(rate.count.get(), 5);
        assert_eq!(rate.per, Duration::from_secs(60));
        assert_eq!(rate.interval(), Duration::from_secs(12));
        assert_eq!("5/m".parse::<Rate>(), Ok(rate));
        assert_eq!("5 / 60".parse::<Rate>(), Ok(rate));
        let hourly: Rate = "100/h".parse().expect("rate");
        assert_eq!(hourly.per, Duration::from_secs(3600));
        for bad in ["5", "/1m", "x/1m", "5/", "5/0", "-1/1m", "5/1x"] {
            assert!(bad.parse::<Rate>().is_err(), "{bad}");
        }
        let s = load(&[("DEVPOCKET_RATE_LIMIT_USER", "10/30s")]);
        assert_eq!(s.user.count.get(), 10);
        assert_eq!(s.register_ip.to_string(), "60/3600s");
        assert_eq!(s.refresh_ip.to_string(), "300/60s");
        assert_eq!(s.login_failures_ip.to_string(), "100/3600s");
        assert_eq!(s.login_failures_account.to_string(), "10/3600s");
        assert_eq!(s.known_address_ttl, Duration::from_secs(30 * 86_400));
        assert_eq!(s.ws_input_per_second.get(), 200);
        assert_eq!(s.sweep, Duration::from_secs(60));
        let s = load(&[("DEVPOCKET_RATE_LIMIT_SWEEP", "5s")]);
        assert_eq!(s.sweep, Duration::from_secs(5));
    }
}
