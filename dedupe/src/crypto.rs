//! Encryption at rest: a random 256-bit master key per store, wrapped by a key derived from the
//! operator's passphrase (Argon2id). Sub-keys for blob ids and blob encryption are derived from the
//! master key with BLAKE3's key derivation, so the two uses never share a key.

use crate::error::DedupeError;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::XChaCha20Poly1305;

const WRAP_AAD: &[u8] = b"holdfast master key v1";

pub struct MasterKey([u8; 32]);

impl MasterKey {
    pub fn generate() -> Result<MasterKey, DedupeError> {
        let mut key = [0u8; 32];
        random(&mut key)?;
        Ok(MasterKey(key))
    }

    /// Key for keyed BLAKE3 blob ids.
    pub fn id_key(&self) -> [u8; 32] {
        blake3::derive_key("holdfast 2026-11 blob id key", &self.0)
    }

    /// Key for XChaCha20-Poly1305 blob encryption.
    pub fn cipher_key(&self) -> [u8; 32] {
        blake3::derive_key("holdfast 2026-11 blob encryption key", &self.0)
    }
}

/// Argon2id cost parameters, kept in the store configuration beside the wrapped key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KdfParams {
    pub m_cost_kib: u32,
    pub t_cost: u32,
    pub p_cost: u32,
    pub salt: [u8; 16],
}

impl KdfParams {
    pub fn new_random() -> Result<KdfParams, DedupeError> {
        let mut salt = [0u8; 16];
        random(&mut salt)?;
        Ok(KdfParams { m_cost_kib: 64 * 1024, t_cost: 3, p_cost: 1, salt })
    }

    fn derive(&self, passphrase: &[u8]) -> Result<[u8; 32], DedupeError> {
        let params = argon2::Params::new(self.m_cost_kib, self.t_cost, self.p_cost, Some(32))
            .map_err(|e| DedupeError::Invalid(format!("key derivation parameters: {e}")))?;
        let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let mut out = [0u8; 32];
        argon
            .hash_password_into(passphrase, &self.salt, &mut out)
            .map_err(|e| DedupeError::Invalid(format!("key derivation: {e}")))?;
        Ok(out)
    }
}

/// The master key encrypted under the passphrase-derived key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WrappedKey {
    pub kdf: KdfParams,
    pub nonce: [u8; 24],
    pub ciphertext: Vec<u8>,
}

impl WrappedKey {
    pub fn wrap(master: &MasterKey, passphrase: &[u8], kdf: KdfParams) -> Result<WrappedKey, DedupeError> {
        let kek = kdf.derive(passphrase)?;
        let mut nonce = [0u8; 24];
        random(&mut nonce)?;
        let cipher = XChaCha20Poly1305::new(&kek.into());
        let ciphertext = cipher
            .encrypt(&nonce.into(), Payload { msg: &master.0, aad: WRAP_AAD })
            .map_err(|_| DedupeError::Invalid("wrapping the master key failed".into()))?;
        Ok(WrappedKey { kdf, nonce, ciphertext })
    }

    pub fn unwrap(&self, passphrase: &[u8]) -> Result<MasterKey, DedupeError> {
        let kek = self.kdf.derive(passphrase)?;
        let cipher = XChaCha20Poly1305::new(&kek.into());
        let plain = cipher
            .decrypt(&self.nonce.into(), Payload { msg: &self.ciphertext, aad: WRAP_AAD })
            .map_err(|_| DedupeError::WrongPassphrase)?;
        let key: [u8; 32] = plain.as_slice().try_into().map_err(|_| DedupeError::WrongPassphrase)?;
        Ok(MasterKey(key))
    }
}

pub(crate) fn random(buf: &mut [u8]) -> Result<(), DedupeError> {
    getrandom::getrandom(buf).map_err(|e| DedupeError::Invalid(format!("no randomness from the OS: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cheap_kdf() -> KdfParams {
        KdfParams { m_cost_kib: 64, t_cost: 1, p_cost: 1, salt: [3; 16] }
    }

    #[test]
    fn wrap_unwrap_and_wrong_passphrase() {
        let master = MasterKey::generate().unwrap();
        let wrapped = WrappedKey::wrap(&master, b"correct horse", cheap_kdf()).unwrap();
        let back = wrapped.unwrap(b"correct horse").unwrap();
        assert_eq!(back.id_key(), master.id_key());
        assert_ne!(master.id_key(), master.cipher_key());
        assert!(matches!(wrapped.unwrap(b"wrong"), Err(DedupeError::WrongPassphrase)));
    }
}
