//! Checking a Google ID token: an RS256 JWT signed with one of Google's published
//! keys, issued by Google for one of our OAuth clients, and current. Each reason to
//! refuse one is named, for the client (what to fix) and the audit log.

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde::Deserialize;

use super::jwks::{Jwks, KeyError};

/// The issuers of Google's ID tokens, both spellings.
pub const ISSUERS: [&str; 2] = ["accounts.google.com", "https://accounts.google.com"];
/// How far clocks may disagree about `exp`, `iat` and `nbf`, in seconds.
pub const LEEWAY_SECONDS: u64 = 60;

/// Who Google says signed in.
#[derive(Debug, Clone)]
pub struct GoogleIdentity {
    /// Google's stable id of the account; e-mail addresses can change.
    pub sub: String,
    pub email: String,
    pub email_verified: bool,
    pub name: Option<String>,
}

/// Why an ID token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error(
        "The Google ID token is not a well-formed JWT; send the `id_token` from Google Sign-In as it is."
    )]
    Malformed,
    #[error("The ID token is signed with {0}, not RS256, so it is not a Google ID token.")]
    WrongAlgorithm(String),
    #[error("The ID token names no signing key (`kid`), so it is not a Google ID token.")]
    MissingKeyId,
    #[error(
        "The ID token is signed with a key Google does not publish (unknown `kid`); sign in with Google again."
    )]
    UnknownKey,
    #[error(
        "The Google ID token's signature is not valid: it was altered or not signed by Google."
    )]
    BadSignature,
    #[error("The Google ID token has expired; sign in with Google again for a fresh one.")]
    Expired,
    #[error(
        "The Google ID token is not valid yet (`iat` or `nbf` is in the future); check the device's clock."
    )]
    NotYetValid,
    #[error("The ID token was not issued by Google: `iss` must be accounts.google.com.")]
    WrongIssuer,
    #[error(
        "The Google ID token was issued for another app: its audience (`aud`) is not one of this server's Google client ids."
    )]
    WrongAudience,
    #[error("The Google ID token has no `{0}` claim.")]
    MissingClaim(String),
    #[error(
        "The Google ID token carries no e-mail address; request the `email` scope when signing in with Google."
    )]
    NoEmail,
}

impl Rejection {
    /// The reason as the audit log records it.
    pub fn reason(&self) -> &'static str {
        match self {
            Rejection::Malformed => "malformed",
            Rejection::WrongAlgorithm(_) => "wrong_algorithm",
            Rejection::MissingKeyId => "missing_kid",
            Rejection::UnknownKey => "unknown_key",
            Rejection::BadSignature => "bad_signature",
            Rejection::Expired => "expired",
            Rejection::NotYetValid => "not_yet_valid",
            Rejection::WrongIssuer => "wrong_issuer",
            Rejection::WrongAudience => "wrong_audience",
            Rejection::MissingClaim(_) => "missing_claim",
            Rejection::NoEmail => "no_email",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Rejected(#[from] Rejection),
    /// Google's keys could not be fetched: nothing can be said about the token.
    #[error(transparent)]
    KeysUnavailable(KeyError),
}

/// Google sends `email_verified` as a boolean, and in some older tokens as a string.
#[derive(Deserialize)]
#[serde(untagged)]
enum Flag {
    Bool(bool),
    Text(String),
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    email: Option<String>,
    email_verified: Option<Flag>,
    name: Option<String>,
    iat: Option<i64>,
}

/// Checks ID tokens for the OAuth clients `client_ids` against Google's keys.
pub struct IdTokenVerifier {
    keys: Jwks,
    validation: Validation,
}

impl IdTokenVerifier {
    pub fn new(client_ids: &[String], keys: Jwks) -> Self {
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_audience(client_ids);
        validation.set_issuer(&ISSUERS);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = LEEWAY_SECONDS;
        validation.validate_nbf = true;
        Self { keys, validation }
    }

    pub async fn verify(&self, token: &str) -> Result<GoogleIdentity, VerifyError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| Rejection::Malformed)?;
        if header.alg != Algorithm::RS256 {
            return Err(Rejection::WrongAlgorithm(format!("{:?}", header.alg)).into());
        }
        let kid = header.kid.ok_or(Rejection::MissingKeyId)?;
        let key = match self.keys.key(&kid).await {
            Ok(key) => key,
            Err(KeyError::Unknown) => return Err(Rejection::UnknownKey.into()),
            Err(err) => return Err(VerifyError::KeysUnavailable(err)),
        };
        let claims = jsonwebtoken::decode::<Claims>(token, &key, &self.validation)
            .map_err(|err| rejection(err.into_kind()))?
            .claims;
        let now = jsonwebtoken::get_current_timestamp();
        let iat = claims
            .iat
            .ok_or_else(|| Rejection::MissingClaim("iat".into()))?;
        if u64::try_from(iat).is_ok_and(|iat| iat > now + LEEWAY_SECONDS) {
            return Err(Rejection::NotYetValid.into());
        }
        let email = claims
            .email
            .map(|e| e.trim().to_owned())
            .filter(|e| !e.is_empty())
            .ok_or(Rejection::NoEmail)?;
        let email_verified = match claims.email_verified {
            Some(Flag::Bool(verified)) => verified,
            Some(Flag::Text(text)) => text.eq_ignore_ascii_case("true"),
            None => false,
        };
        Ok(GoogleIdentity {
            sub: claims.sub,
            email,
            email_verified,
            name: claims.name,
        })
    }
}

fn rejection(kind: ErrorKind) -> Rejection {
    match kind {
        ErrorKind::InvalidSignature
        | ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidKeyFormat
        | ErrorKind::Provider(_) => Rejection::BadSignature,
        ErrorKind::ExpiredSignature => Rejection::Expired,
        ErrorKind::ImmatureSignature => Rejection::NotYetValid,
        ErrorKind::InvalidIssuer => Rejection::WrongIssuer,
        ErrorKind::InvalidAudience => Rejection::WrongAudience,
        ErrorKind::MissingRequiredClaim(claim) => Rejection::MissingClaim(claim),
        ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => {
            Rejection::WrongAlgorithm("another algorithm".into())
        }
        _ => Rejection::Malformed,
    }
}
