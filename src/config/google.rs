//! Google sign-in: the OAuth clients whose ID tokens are accepted, and where
//! Google's signing keys are fetched. Unset client ids turn it off.

use super::ConfigError;
use super::source::{Source, invalid};

/// Where Google publishes the keys its ID tokens are signed with.
pub const GOOGLE_JWKS_URL: &str = "https://www.googleapis.com/oauth2/v3/certs";

#[derive(Debug, Clone)]
pub struct GoogleSettings {
    /// The OAuth client ids of the apps (`aud`) whose ID tokens are accepted.
    pub client_ids: Vec<String>,
    /// Google's JSON Web Key Set (tests point it at a server of their own).
    pub jwks_url: String,
}

impl GoogleSettings {
    /// `None` when `GOOGLE_CLIENT_IDS` is unset: Google sign-in is off.
    pub(super) fn load(source: &Source) -> Result<Option<Self>, ConfigError> {
        let Some(ids) = source.get("GOOGLE_CLIENT_IDS") else {
            return Ok(None);
        };
        let client_ids: Vec<String> = ids
            .split(',')
            .map(str::trim)
            .filter(|id| !id.is_empty())
            .map(str::to_owned)
            .collect();
        if client_ids.is_empty() {
            return Err(invalid(
                "GOOGLE_CLIENT_IDS",
                "lists no client id: give the OAuth client ids, separated by commas",
            ));
        }
        if let Some(bad) = client_ids
            .iter()
            .find(|id| id.chars().any(|c| c.is_whitespace() || c.is_control()))
        {
            return Err(invalid(
                "GOOGLE_CLIENT_IDS",
                format!("`{bad}` is not a client id (no spaces; separate ids with commas)"),
            ));
        }
        let jwks_url = source
            .get("GOOGLE_JWKS_URL")
            .unwrap_or(GOOGLE_JWKS_URL)
            .to_owned();
        let valid_url = url::Url::parse(&jwks_url)
            .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
        if !valid_url {
            return Err(invalid(
                "GOOGLE_JWKS_URL",
                format!("`{jwks_url}` must be an http(s) URL such as {GOOGLE_JWKS_URL}"),
            ));
        }
        Ok(Some(Self {
            client_ids,
            jwks_url,
        }))
    }
}
