//! Why an operation's work failed. The message (`Display`) is what the
//! environment's owner reads in its `status_message`, written for them; the cause
//! (`source`) — a database error, an SSH error, a provider's own words — goes to
//! the log only.

use std::error::Error as _;

use crate::provider::ProviderError;
use crate::ssh::SshError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub(super) enum WorkError {
    /// A later operation (a delete) superseded this one: nothing to record.
    #[error("cancelled: the environment is being deleted")]
    Cancelled,
    #[error("the environment's state could not be saved; try again in a moment")]
    Store(#[from] StoreError),
    #[error("the {0} provider is not configured on this server")]
    NoProvider(String),
    #[error("the machine was never created")]
    NoMachine,
    #[error("the machine is gone: {0}")]
    Gone(String),
    #[error("{doing} failed: {source}")]
    Provider {
        doing: &'static str,
        #[source]
        source: ProviderError,
    },
    #[error("the machine's SSH keys could not be made")]
    Keys(#[source] SshError),
    #[error("the machine's SSH host key does not match the pinned one: refusing to connect")]
    HostKey(#[source] SshError),
    #[error("could not reach the machine over SSH")]
    Unreachable(#[source] SshError),
    #[error("could not follow the provisioning log on the machine")]
    Tail(#[source] SshError),
    #[error(
        "the provisioning log passed {0} MiB, more than any bootstrap should print; see its first lines"
    )]
    LogTooLong(u64),
    #[error(
        "provisioning did not finish within {0} minutes (the bootstrap hung or the machine restarted); see the provisioning log"
    )]
    Timeout(u64),
    #[error("the {template} template's bootstrap failed with exit status {status}{}", because(.reason))]
    Bootstrap {
        template: String,
        status: i32,
        /// The machine's own words: its last `error:` line or its line just before
        /// the end.
        reason: Option<String>,
    },
}

fn because(reason: &Option<String>) -> String {
    match reason {
        Some(reason) => format!(": {reason}"),
        None => "; see the provisioning log".to_owned(),
    }
}

impl WorkError {
    /// Maps a provider's error for `doing` ("starting the machine"): a machine that
    /// is gone and a cancelled call keep their own meaning.
    pub(super) fn provider(doing: &'static str) -> impl FnOnce(ProviderError) -> Self {
        move |err| match err {
            ProviderError::Gone(what) => Self::Gone(what),
            ProviderError::Cancelled => Self::Cancelled,
            source => Self::Provider { doing, source },
        }
    }

    /// The causes below the message, for the log.
    pub(super) fn causes(&self) -> String {
        self.source().map(crate::error_chain).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_owner_reads_the_message_and_the_log_gets_the_cause() {
        let err = WorkError::Store(StoreError::database("connection refused by 10.0.0.5"));
        assert!(!err.to_string().contains("10.0.0.5"), "{err}");
        assert!(err.causes().contains("10.0.0.5"), "{}", err.causes());

        let gone = WorkError::provider("starting the machine")(ProviderError::Gone(
            "droplet 7 was destroyed".into(),
        ));
        assert_eq!(
            gone.to_string(),
            "the machine is gone: droplet 7 was destroyed"
        );
        assert!(matches!(
            WorkError::provider("deleting the machine")(ProviderError::Cancelled),
            WorkError::Cancelled
        ));
    }

    #[test]
    fn a_failed_bootstrap_says_why_or_where_to_look() {
        let with = WorkError::Bootstrap {
            template: "python".into(),
            status: 3,
            reason: Some("error: pip failed".into()),
        };
        assert_eq!(
            with.to_string(),
            "the python template's bootstrap failed with exit status 3: error: pip failed"
        );
        let without = WorkError::Bootstrap {
            template: "python".into(),
            status: 3,
            reason: None,
        };
        assert!(without.to_string().ends_with("; see the provisioning log"));
    }
}
