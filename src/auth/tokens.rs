//! JSON Web Tokens: short-lived access tokens and rotating refresh tokens, both
//! HS256 with an integer `exp` (the mobile app decodes them). The two kinds are not
//! interchangeable, and only HS256 is accepted.

use std::time::Duration;

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use uuid::Uuid;

const ISSUER: &str = "devpocket";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenKind {
    Access,
    Refresh,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// The user id.
    pub sub: Uuid,
    /// The sign-in session (refresh-token family).
    pub sid: Uuid,
    /// This token's id; for refresh tokens, the row that records its use.
    pub jti: Uuid,
    pub typ: TokenKind,
    pub iss: String,
    pub iat: i64,
    pub exp: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid")]
    Invalid,
    #[error("a {0:?} token cannot be used here")]
    WrongKind(TokenKind),
    #[error("could not sign the token: {0}")]
    Sign(String),
}

/// A signed token and when it expires.
pub struct Issued {
    pub token: String,
    pub jti: Uuid,
    pub expires_at: DateTime<Utc>,
}

#[derive(Clone)]
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    pub access_ttl: Duration,
    pub refresh_ttl: Duration,
}

/// Derives a purpose-specific key from the server secret, so the JWT key is never
/// the key that encrypts data at rest.
pub fn derive_key(secret: &[u8], purpose: &str) -> [u8; 32] {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(purpose.as_bytes());
    mac.finalize().into_bytes().into()
}

impl TokenKeys {
    pub fn new(secret: &[u8], access_ttl: Duration, refresh_ttl: Duration) -> Self {
        let key = derive_key(secret, "devpocket jwt signing v1");
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        validation.set_issuer(&[ISSUER]);
        validation.set_required_spec_claims(&["exp", "sub", "iss"]);
        // Only an empty key is refused, and a derived key is 32 bytes.
        Self {
            encoding: EncodingKey::from_secret(&key)
                .unwrap_or_else(|_| unreachable!("a derived key is never empty")),
            decoding: DecodingKey::from_secret(&key)
                .unwrap_or_else(|_| unreachable!("a derived key is never empty")),
            validation,
            access_ttl,
            refresh_ttl,
        }
    }

    pub fn issue(&self, kind: TokenKind, user: Uuid, session: Uuid) -> Result<Issued, TokenError> {
        let now = Utc::now();
        let ttl = match kind {
            TokenKind::Access => self.access_ttl,
            TokenKind::Refresh => self.refresh_ttl,
        };
        let expires_at =
            now + chrono::Duration::from_std(ttl).map_err(|e| TokenError::Sign(e.to_string()))?;
        let claims = Claims {
            sub: user,
            sid: session,
            jti: Uuid::new_v4(),
            typ: kind,
            iss: ISSUER.to_owned(),
            iat: now.timestamp(),
            exp: expires_at.timestamp(),
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| TokenError::Sign(e.to_string()))?;
        Ok(Issued {
            token,
            jti: claims.jti,
            expires_at,
        })
    }

    /// Verifies signature, algorithm, issuer, expiry and kind.
    pub fn decode(&self, token: &str, expected: TokenKind) -> Result<Claims, TokenError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenError::Expired,
                _ => TokenError::Invalid,
            })?;
        if data.claims.typ != expected {
            return Err(TokenError::WrongKind(data.claims.typ));
        }
        Ok(data.claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    fn keys() -> TokenKeys {
        TokenKeys::new(
            b"0123456789abcdef0123456789abcdef",
            Duration::from_secs(60),
            Duration::from_secs(600),
        )
    }

    #[test]
    fn round_trip_and_kinds_are_not_interchangeable() {
        let keys = keys();
        let (user, session) = (Uuid::new_v4(), Uuid::new_v4());
        let access = keys.issue(TokenKind::Access, user, session).expect("issue");
        let claims = keys
            .decode(&access.token, TokenKind::Access)
            .expect("decode");
        assert_eq!((claims.sub, claims.sid), (user, session));
        assert!(matches!(
            keys.decode(&access.token, TokenKind::Refresh),
            Err(TokenError::WrongKind(TokenKind::Access))
        ));
        let refresh = keys
            .issue(TokenKind::Refresh, user, session)
            .expect("issue");
        assert!(keys.decode(&refresh.token, TokenKind::Access).is_err());
    }

    #[test]
    fn exp_is_an_integer_claim() {
        let access = keys()
            .issue(TokenKind::Access, Uuid::new_v4(), Uuid::new_v4())
            .expect("issue");
        let payload = access.token.split('.').nth(1).expect("payload");
        let json: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("b64")).expect("json");
        assert!(json["exp"].is_i64());
    }

    #[test]
    fn alg_none_tampering_other_keys_and_expiry_are_rejected() {
        let keys = keys();
        let access = keys
            .issue(TokenKind::Access, Uuid::new_v4(), Uuid::new_v4())
            .expect("issue");
        let mut parts: Vec<&str> = access.token.split('.').collect();

        let none_header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
        let unsigned = format!("{none_header}.{}.", parts[1]);
        assert!(keys.decode(&unsigned, TokenKind::Access).is_err());

        let mut claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).expect("b64")).expect("json");
        claims["sub"] = serde_json::json!(Uuid::new_v4());
        let forged = URL_SAFE_NO_PAD.encode(claims.to_string());
        parts[1] = &forged;
        assert!(keys.decode(&parts.join("."), TokenKind::Access).is_err());

        let other = TokenKeys::new(
            b"another-secret-another-secret-xx",
            Duration::from_secs(60),
            Duration::from_secs(600),
        );
        assert!(other.decode(&access.token, TokenKind::Access).is_err());

        let claims = Claims {
            sub: Uuid::new_v4(),
            sid: Uuid::new_v4(),
            jti: Uuid::new_v4(),
            typ: TokenKind::Access,
            iss: ISSUER.into(),
            iat: 0,
            exp: Utc::now().timestamp() - 3600,
        };
        let expired = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &keys.encoding)
            .expect("encode");
        assert!(matches!(
            keys.decode(&expired, TokenKind::Access),
            Err(TokenError::Expired)
        ));
    }
}
