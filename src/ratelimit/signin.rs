//! The limits of one sign-in attempt. Only failures count: the attempt takes a unit
//! of its address's budget and of its account's before the password is checked (so
//! concurrent guesses cannot overshoot) and gives them back if the password was
//! right. From an address that signed in to the account lately, neither is taken:
//! only the per-(account, address) lockout applies there, so strangers' wrong
//! passwords, from elsewhere or from the same carrier NAT, do not hold the owner back.
//! They protect accounts, so their state is in the database (`db::signin_limits`),
//! shared by every server process.

use std::net::IpAddr;

use diesel_async::AsyncPgConnection;
use uuid::Uuid;

use super::{RateLimits, address_key, refused};
use crate::db::{DbPool, signin_limits as db};
use crate::error::ApiError;

fn address_budget(address: &str) -> String {
    format!("ip:{address}")
}

fn account_budget(account: Uuid) -> String {
    format!("account:{account}")
}

/// One attempt under way. Dropped without [`failed`](Self::failed) (a right
/// password, or an error before the answer), it gives back what it took.
#[must_use]
pub struct LoginAttempt<'a> {
    limits: &'a RateLimits,
    pool: DbPool,
    account: Option<Uuid>,
    address: Option<String>,
    took_address: bool,
    took_account: bool,
}

impl RateLimits {
    /// Before checking a password for `account` (`None`: no such account) from `ip`
    /// (when known): 429 when the address's or the account's failure budget is spent,
    /// unless the address signed in to the account lately.
    pub async fn begin_login(
        &self,
        conn: &mut AsyncPgConnection,
        pool: &DbPool,
        account: Option<Uuid>,
        ip: Option<IpAddr>,
    ) -> Result<LoginAttempt<'_>, ApiError> {
        let address = ip.map(|ip| address_key(ip).to_string());
        let mut attempt = LoginAttempt {
            limits: self,
            pool: pool.clone(),
            account,
            address: address.clone(),
            took_address: false,
            took_account: false,
        };
        if let (Some(account), Some(address)) = (account, &address)
            && db::is_known(conn, account, address, self.signin.known_ttl).await?
        {
            return Ok(attempt);
        }
        if let Some(address) = &address {
            db::take(conn, &address_budget(address), self.signin.per_address)
                .await?
                .map_err(|s| {
                    self.rejected.login_ip.increment(1);
                    refused("Too many failed sign-ins from your network address", s)
                })?;
            attempt.took_address = true;
        }
        if let Some(account) = account {
            // On a refusal, `attempt` is dropped and gives the address's unit back.
            db::take(conn, &account_budget(account), self.signin.per_account)
                .await?
                .map_err(|s| {
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

    /// After a sign-up (or a password reset, a Google sign-in): the account was
    /// signed in to from `ip`. Not remembering it only costs its owner the budgets'
    /// protection there, so a failure is logged, not answered.
    pub async fn signed_up(&self, pool: &DbPool, account: Uuid, ip: Option<IpAddr>) {
        let Some(ip) = ip else { return };
        let remembered = async {
            let mut conn = pool.get().await.map_err(|e| e.to_string())?;
            db::remember(&mut conn, account, &address_key(ip).to_string())
                .await
                .map_err(|e| e.to_string())
        };
        if let Err(error) = remembered.await {
            tracing::warn!(%error, user_id = %account, "the address an account signed in from could not be remembered");
        }
    }
}

impl LoginAttempt<'_> {
    /// The password was right: what was taken is given back, and the address is
    /// remembered for the account.
    pub async fn succeeded(mut self, conn: &mut AsyncPgConnection) -> Result<(), ApiError> {
        let limits = self.limits.signin;
        if self.took_address
            && let Some(address) = &self.address
        {
            db::give_back(conn, &address_budget(address), limits.per_address).await?;
        }
        self.took_address = false;
        if self.took_account
            && let Some(account) = self.account
        {
            db::give_back(conn, &account_budget(account), limits.per_account).await?;
        }
        self.took_account = false;
        if let (Some(account), Some(address)) = (self.account, &self.address) {
            db::remember(conn, account, address).await?;
        }
        Ok(())
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
        // Ended early (an error, a refusal of the other budget): give back, after.
        let limits = self.limits.signin;
        let mut give = Vec::new();
        if self.took_address
            && let Some(address) = &self.address
        {
            give.push((address_budget(address), limits.per_address));
        }
        if self.took_account
            && let Some(account) = self.account
        {
            give.push((account_budget(account), limits.per_account));
        }
        if give.is_empty() {
            return;
        }
        let pool = self.pool.clone();
        actix_web::rt::spawn(async move {
            let Ok(mut conn) = pool.get().await else {
                tracing::warn!(
                    "a sign-in's budget could not be given back: no database connection"
                );
                return;
            };
            for (key, rate) in give {
                if let Err(error) = db::give_back(&mut conn, &key, rate).await {
                    tracing::warn!(%error, "a sign-in's budget could not be given back");
                }
            }
        });
    }
}
