//! Envelope for secrets at rest: AES-256-GCM, a random 96-bit nonce per value, and associated data
//! binding the ciphertext to its tenant, table, column and row, so a value copied elsewhere fails to decrypt.
//!
//! Stored form: `{key_id}:{base64(nonce || ciphertext+tag)}`; the key id lets master keys rotate.

use std::collections::BTreeMap;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use rand::RngCore;
use uuid::Uuid;

use crate::config::EncryptionSettings;
use crate::store::ids::TenantId;

const NONCE_LEN: usize = 12;

/// Where a secret lives; it is the associated data of its ciphertext.
#[derive(Clone, Copy, Debug)]
pub struct SecretLocation<'a> {
    pub tenant_id: TenantId,
    pub table: &'a str,
    pub column: &'a str,
    pub row_id: Uuid,
}

impl SecretLocation<'_> {
    fn associated_data(&self) -> Vec<u8> {
        format!("postbridge/v1/{}/{}/{}/{}", self.tenant_id, self.table, self.column, self.row_id).into_bytes()
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    #[error("stored secret is malformed")]
    Malformed,
    #[error("stored secret uses key id {0}, which is not configured")]
    UnknownKey(String),
    /// Wrong key, tampered ciphertext, or a value moved to another row.
    #[error("stored secret failed authentication")]
    Authentication,
    #[error("encryption failed")]
    Encryption,
}

pub struct Cipher {
    keys: BTreeMap<String, Aes256Gcm>,
    active_key_id: String,
}

impl Cipher {
    pub fn new(settings: &EncryptionSettings) -> Self {
        let keys = settings.keys.iter().map(|(kid, key)| (kid.clone(), Aes256Gcm::new(&(*key).into()))).collect();
        Cipher { keys, active_key_id: settings.active_key_id.clone() }
    }

    pub fn active_key_id(&self) -> &str {
        &self.active_key_id
    }

    pub fn encrypt(&self, location: SecretLocation<'_>, plaintext: &str) -> Result<String, CryptoError> {
        let cipher = self.keys.get(&self.active_key_id).ok_or(CryptoError::Encryption)?;
        let mut nonce_bytes = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce_bytes);
        let nonce = Nonce::from(nonce_bytes);
        let aad = location.associated_data();
        let sealed =
            cipher.encrypt(&nonce, Payload { msg: plaintext.as_bytes(), aad: &aad }).map_err(|_| CryptoError::Encryption)?;
        let mut blob = Vec::with_capacity(NONCE_LEN + sealed.len());
        blob.extend_from_slice(&nonce_bytes);
        blob.extend_from_slice(&sealed);
        Ok(format!("{}:{}", self.active_key_id, base64::engine::general_purpose::STANDARD.encode(blob)))
    }

    pub fn decrypt(&self, location: SecretLocation<'_>, stored: &str) -> Result<String, CryptoError> {
        let (kid, b64) = stored.split_once(':').ok_or(CryptoError::Malformed)?;
        let cipher = self.keys.get(kid).ok_or_else(|| CryptoError::UnknownKey(kid.to_owned()))?;
        let blob = base64::engine::general_purpose::STANDARD.decode(b64).map_err(|_| CryptoError::Malformed)?;
        if blob.len() < NONCE_LEN + 16 {
            return Err(CryptoError::Malformed);
        }
        let (nonce_bytes, sealed) = blob.split_at(NONCE_LEN);
        let nonce_array: [u8; NONCE_LEN] = nonce_bytes.try_into().map_err(|_| CryptoError::Malformed)?;
        let aad = location.associated_data();
        let plain = cipher
            .decrypt(&Nonce::from(nonce_array), Payload { msg: sealed, aad: &aad })
            .map_err(|_| CryptoError::Authentication)?;
        String::from_utf8(plain).map_err(|_| CryptoError::Malformed)
    }

    /// The key id a stored value was encrypted with.
    pub fn key_id_of(stored: &str) -> Option<&str> {
        stored.split_once(':').map(|(kid, _)| kid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(active: &str) -> EncryptionSettings {
        EncryptionSettings {
            keys: BTreeMap::from([("old".to_owned(), [1u8; 32]), ("new".to_owned(), [2u8; 32])]),
            active_key_id: active.to_owned(),
        }
    }

    fn location(row_id: Uuid) -> SecretLocation<'static> {
        SecretLocation { tenant_id: TenantId::from(Uuid::from_u128(1)), table: "email_accounts", column: "password", row_id }
    }

    #[test]
    fn round_trip_uses_a_fresh_nonce_each_time() {
        let cipher = Cipher::new(&settings("new"));
        let row = Uuid::from_u128(9);
        let a = cipher.encrypt(location(row), "hunter2").expect("encrypt");
        let b = cipher.encrypt(location(row), "hunter2").expect("encrypt");
        assert_ne!(a, b);
        assert!(a.starts_with("new:"));
        assert_eq!(cipher.decrypt(location(row), &a).expect("decrypt"), "hunter2");
    }

    #[test]
    fn a_value_moved_to_another_row_column_or_tenant_fails() {
        let cipher = Cipher::new(&settings("new"));
        let stored = cipher.encrypt(location(Uuid::from_u128(9)), "s3cret").expect("encrypt");
        assert_eq!(cipher.decrypt(location(Uuid::from_u128(10)), &stored), Err(CryptoError::Authentication));
        let other_column = SecretLocation { column: "client_secret", ..location(Uuid::from_u128(9)) };
        assert_eq!(cipher.decrypt(other_column, &stored), Err(CryptoError::Authentication));
        let other_tenant = SecretLocation { tenant_id: TenantId::from(Uuid::from_u128(2)), ..location(Uuid::from_u128(9)) };
        assert_eq!(cipher.decrypt(other_tenant, &stored), Err(CryptoError::Authentication));
    }

    #[test]
    fn tampering_is_detected() {
        let cipher = Cipher::new(&settings("new"));
        let row = Uuid::from_u128(9);
        let stored = cipher.encrypt(location(row), "s3cret").expect("encrypt");
        let (kid, b64) = stored.split_once(':').expect("kid");
        let mut blob = base64::engine::general_purpose::STANDARD.decode(b64).expect("b64");
        let last = blob.len() - 1;
        blob[last] ^= 1;
        let tampered = format!("{kid}:{}", base64::engine::general_purpose::STANDARD.encode(blob));
        assert_eq!(cipher.decrypt(location(row), &tampered), Err(CryptoError::Authentication));
        assert_eq!(cipher.decrypt(location(row), "new:!!"), Err(CryptoError::Malformed));
    }

    #[test]
    fn old_keys_still_decrypt_after_rotation_and_unknown_keys_are_named() {
        let row = Uuid::from_u128(9);
        let before = Cipher::new(&settings("old")).encrypt(location(row), "s3cret").expect("encrypt");
        let after = Cipher::new(&settings("new"));
        assert_eq!(after.decrypt(location(row), &before).expect("decrypt"), "s3cret");
        assert_eq!(Cipher::key_id_of(&before), Some("old"));
        let only_new = Cipher::new(&EncryptionSettings {
            keys: BTreeMap::from([("new".to_owned(), [2u8; 32])]),
            active_key_id: "new".to_owned(),
        });
        assert_eq!(only_new.decrypt(location(row), &before), Err(CryptoError::UnknownKey("old".to_owned())));
    }
}
