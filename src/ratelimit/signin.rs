//! The limits of one sign-in attempt. Only failures count: the attempt takes a unit
//! of its address's budget and of its account's before the password is checked (so
//! concurrent guesses cannot overshoot) and gives them back if the password was
//! right. From an address that signed in to the account lately, neither is taken:
//! only the per-(account, address) lockout applies there, so strangers' wrong
//! passwords, from elsewhere or from the same carrier NAT, do not hold the owner back.

use std::net::IpAddr;

use uuid::Uuid;

use super::{RateLimits, address_key, refused};
use crate::error::ApiError;

/// One attempt under way. Dropped without [`failed`](Self::failed) (a right
/// password, or an error before the answer), it gives back what it took.
#[must_use]
pub struct LoginAttempt<'a> {
    limits: &'a RateLimits,
    account: Option<Uuid>,
    address: Option<IpAddr>,
    took_address: bool,
    took_account: bool,
}

impl RateLimits {
    /// Before checking a password for `account` (`None`: no such account) from `ip`
    /// (when known): 429 when the address's or the account's failure budget is spent,
    /// unless the address signed in to the account lately.
    pub fn begin_login(
        &self,
        account: Option<Uuid>,
        ip: Option<IpAddr>,
    ) -> Result<LoginAttempt<'_>, ApiError> {
        let address = ip.map(address_key);
        let mut attempt = LoginAttempt {
            limits: self,
            account,
            address,
            took_address: false,
            took_account: false,
        };
        if let (Some(account), Some(address)) = (account, address)
            && self.known.contains(account, address)
        {
            return Ok(attempt);
        }
        if let Some(address) = address {
            self.login_ip.take(address).map_err(|s| {
                self.rejected.login_ip.increment(1);
                refused("Too many failed sign-ins from your network address", s)
            })?;
            attempt.took_address = true;
        }
        if let Some(account) = account {
            // On a refusal, `attempt` is dropped and gives the address's unit back.
            self.login_account.take(account).map_err(|s| {
                self.rejected.login_account.increment(1);
                refused(
                    "Too many wrong passwords for this account from new networks lately (one you signed in from before is not affected)",
                    s,
                )
            })?;
            attempt.took_account = true;
        }
        Ok(attempt)
    }

    /// After a sign-up: the new account was signed in to from `ip`.
    pub fn signed_up(&self, account: Uuid, ip: Option<IpAddr>) {
        if let Some(ip) = ip {
            self.known.remember(account, address_key(ip));
        }
    }
}

impl LoginAttempt<'_> {
    /// The password was right: the address is remembered for the account.
    pub fn succeeded(self) {
        if let (Some(account), Some(address)) = (self.account, self.address) {
            self.limits.known.remember(account, address);
        }
    }

    /// The password was wrong, or there is no such account: what was taken stays
    /// spent.
    pub fn failed(mut self) {
        self.took_address = false;
        self.took_account = false;
    }
}

impl Drop for LoginAttempt<'_> {
    fn drop(&mut self) {
        if self.took_address
            && let Some(address) = &self.address
        {
            self.limits.login_ip.give_back(address);
        }
        if self.took_account
            && let Some(account) = &self.account
        {
            self.limits.login_account.give_back(account);
        }
    }
}
