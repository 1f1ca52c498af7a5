//! Secrets at rest (SSH private keys): AES-256-GCM under a key derived from
//! `SECRET_KEY`, with a random nonce per value. Stored as `nonce || ciphertext`.

use aes_gcm::aead::{Aead, KeyInit, OsRng};
use aes_gcm::{AeadCore, Aes256Gcm, Key, Nonce};

use crate::auth::tokens::derive_key;

const NONCE_LEN: usize = 12;

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("encryption failed")]
    Encrypt,
    #[error("a stored secret could not be decrypted (was SECRET_KEY changed?)")]
    Decrypt,
}

#[derive(Clone)]
pub struct SecretBox {
    cipher: Aes256Gcm,
}

impl SecretBox {
    pub fn new(secret: &[u8]) -> Self {
        let key = derive_key(secret, "devpocket secrets at rest v1");
        Self {
            cipher: Aes256Gcm::new(&Key::<Aes256Gcm>::from(key)),
        }
    }

    pub fn seal(&self, plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let mut out = nonce.to_vec();
        out.extend(
            self.cipher
                .encrypt(&nonce, plaintext)
                .map_err(|_| CryptoError::Encrypt)?,
        );
        Ok(out)
    }

    pub fn open(&self, sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if sealed.len() < NONCE_LEN {
            return Err(CryptoError::Decrypt);
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| CryptoError::Decrypt)?;
        self.cipher
            .decrypt(&Nonce::from(nonce), ciphertext)
            .map_err(|_| CryptoError::Decrypt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_random_nonce_and_tamper_detection() {
        let sb = SecretBox::new(b"0123456789abcdef0123456789abcdef");
        let a = sb.seal(b"private key").expect("seal");
        let b = sb.seal(b"private key").expect("seal");
        assert_ne!(a, b, "nonces must differ");
        assert!(!a.windows(11).any(|w| w == b"private key"));
        assert_eq!(sb.open(&a).expect("open"), b"private key");
        let mut tampered = a.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert!(sb.open(&tampered).is_err());
        let other = SecretBox::new(b"another-secret-another-secret-xx");
        assert!(other.open(&a).is_err());
    }
}
