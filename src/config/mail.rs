//! Outgoing mail: where it goes (an SMTP server, or files in the data directory),
//! who it is from, how it is retried, the link a password reset mails, and what an
//! account whose e-mail address is not verified yet may not do.

use std::time::Duration;

use lettre::message::Mailbox;

use super::source::{Source, invalid};
use super::{ConfigError, Secret};

#[derive(Debug, Clone)]
pub struct MailSettings {
    /// `SMTP_URL`, e.g. `smtps://user:password@mail.example.com` (TLS) or
    /// `smtp://user:password@mail.example.com:587?tls=required` (STARTTLS). `None`:
    /// mail is written to `$DEVPOCKET_DATA_DIR/outbox/` as `.eml` files.
    pub smtp_url: Option<Secret<String>>,
    pub from: Mailbox,
    /// A password-reset mail links to this URL with `?token=…` added.
    pub reset_url: url::Url,
    /// The first retry after a failed send; each further one waits twice as long,
    /// up to `retry_max`.
    pub retry_min: Duration,
    pub retry_max: Duration,
    /// A mail that could not be sent for this long is given up (and counted failed).
    pub give_up_after: Duration,
    /// How often the outbox is read for mail due (new mail wakes the sender at once).
    pub poll_every: Duration,
    /// What an account may not do until its e-mail address is verified.
    pub unverified_may_not: Vec<Restricted>,
}

/// What `DEVPOCKET_UNVERIFIED_MAY_NOT` can hold back from an unverified account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restricted {
    /// Link a Google identity to the account.
    GoogleLink,
    /// Change the account's e-mail address.
    ChangeEmail,
    /// Create an environment.
    CreateEnvironment,
    /// Register a server.
    RegisterServer,
}

impl Restricted {
    pub const ALL: [Restricted; 4] = [
        Restricted::GoogleLink,
        Restricted::ChangeEmail,
        Restricted::CreateEnvironment,
        Restricted::RegisterServer,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Restricted::GoogleLink => "google_link",
            Restricted::ChangeEmail => "change_email",
            Restricted::CreateEnvironment => "create_environment",
            Restricted::RegisterServer => "register_server",
        }
    }

    /// What the refusal says the user could not do.
    pub fn describe(self) -> &'static str {
        match self {
            Restricted::GoogleLink => "link a Google account",
            Restricted::ChangeEmail => "change the e-mail address",
            Restricted::CreateEnvironment => "create an environment",
            Restricted::RegisterServer => "register a server",
        }
    }
}

impl MailSettings {
    pub(super) fn load(source: &Source) -> Result<Self, ConfigError> {
        let smtp_url = match source.get("SMTP_URL").filter(|u| !u.trim().is_empty()) {
            Some(url) => {
                // Checked now, so that a typo stops the start rather than every mail.
                lettre::AsyncSmtpTransport::<lettre::Tokio1Executor>::from_url(url).map_err(
                    |e| {
                        invalid(
                            "SMTP_URL",
                            format!(
                                "is not an SMTP URL ({e}); for example \
                                 smtps://user:password@mail.example.com or \
                                 smtp://user:password@mail.example.com:587?tls=required"
                            ),
                        )
                    },
                )?;
                Some(Secret::new(url.to_owned()))
            }
            None => None,
        };
        let from = source
            .get("MAIL_FROM")
            .unwrap_or("DevPocket <devpocket@localhost>");
        let from: Mailbox = from.parse().map_err(|e| {
            invalid(
                "MAIL_FROM",
                format!("`{from}` is not a mail address ({e}); for example DevPocket <noreply@example.com>"),
            )
        })?;
        let reset = source
            .get("DEVPOCKET_PASSWORD_RESET_URL")
            .unwrap_or("devpocket://reset-password");
        let reset_url = url::Url::parse(reset).map_err(|e| {
            invalid(
                "DEVPOCKET_PASSWORD_RESET_URL",
                format!("`{reset}` is not a URL ({e})"),
            )
        })?;
        let retry_min = source.duration("DEVPOCKET_MAIL_RETRY_MIN", Duration::from_secs(10))?;
        let retry_max =
            source.duration("DEVPOCKET_MAIL_RETRY_MAX", Duration::from_secs(15 * 60))?;
        if retry_min.is_zero() || retry_max < retry_min {
            return Err(invalid(
                "DEVPOCKET_MAIL_RETRY_MAX",
                "must be at least DEVPOCKET_MAIL_RETRY_MIN, which must be more than zero",
            ));
        }
        let give_up_after = source.duration(
            "DEVPOCKET_MAIL_GIVE_UP_AFTER",
            Duration::from_secs(3 * 86_400),
        )?;
        let poll_every = source.duration("DEVPOCKET_MAIL_POLL_EVERY", Duration::from_secs(30))?;
        if poll_every.is_zero() {
            return Err(invalid(
                "DEVPOCKET_MAIL_POLL_EVERY",
                "must be more than zero",
            ));
        }
        let unverified_may_not = match source.get("DEVPOCKET_UNVERIFIED_MAY_NOT") {
            None => vec![Restricted::GoogleLink, Restricted::ChangeEmail],
            Some(list) => parse_restricted(list)?,
        };
        Ok(Self {
            smtp_url,
            from,
            reset_url,
            retry_min,
            retry_max,
            give_up_after,
            poll_every,
            unverified_may_not,
        })
    }

    pub fn restricts(&self, what: Restricted) -> bool {
        self.unverified_may_not.contains(&what)
    }
}

fn parse_restricted(list: &str) -> Result<Vec<Restricted>, ConfigError> {
    let mut out = Vec::new();
    for item in list.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        if item == "nothing" {
            continue;
        }
        let Some(what) = Restricted::ALL.into_iter().find(|r| r.as_str() == item) else {
            let known: Vec<&str> = Restricted::ALL.iter().map(|r| r.as_str()).collect();
            return Err(invalid(
                "DEVPOCKET_UNVERIFIED_MAY_NOT",
                format!(
                    "`{item}` is not one of {} (or `nothing`), comma-separated",
                    known.join(", ")
                ),
            ));
        };
        if !out.contains(&what) {
            out.push(what);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(vars: &[(&str, &str)]) -> Result<MailSettings, ConfigError> {
        MailSettings::load(&Source::from_map(vars.iter().copied()))
    }

    #[test]
    fn the_defaults_write_files_and_hold_back_google_linking_and_e_mail_changes() {
        let settings = load(&[]).unwrap_or_else(|e| panic!("{e}"));
        assert!(settings.smtp_url.is_none());
        assert_eq!(
            settings.unverified_may_not,
            [Restricted::GoogleLink, Restricted::ChangeEmail]
        );
        assert_eq!(settings.from.email.to_string(), "devpocket@localhost");
    }

    #[test]
    fn bad_values_are_named() {
        for (name, value) in [
            ("SMTP_URL", "http://mail.example.com"),
            ("MAIL_FROM", "not an address"),
            ("DEVPOCKET_UNVERIFIED_MAY_NOT", "google_link,fly"),
            ("DEVPOCKET_PASSWORD_RESET_URL", "no scheme"),
        ] {
            let err = load(&[(name, value)]).err().map(|e| e.to_string());
            assert!(
                err.as_deref().is_some_and(|e| e.contains(name)),
                "{name}={value}: {err:?}"
            );
        }
        let nothing = load(&[("DEVPOCKET_UNVERIFIED_MAY_NOT", "nothing")]);
        assert!(nothing.is_ok_and(|s| s.unverified_may_not.is_empty()));
    }
}
