//! Blob ids: 32-byte BLAKE3 digests of a blob's plaintext (keyed BLAKE3 in encrypted stores, so
//! equal plaintext in two stores gets unrelated ids). The all-zero id is reserved for "hole".

use std::fmt;

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct BlobId(pub [u8; 32]);

impl BlobId {
    /// The reserved id that stands for an all-zero range: never stored, never hashed.
    pub const HOLE: BlobId = BlobId([0; 32]);

    pub fn is_hole(&self) -> bool {
        self.0 == [0; 32]
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn from_hex(s: &str) -> Option<BlobId> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(BlobId(out))
    }
}

impl fmt::Display for BlobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for BlobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlobId({})", &self.to_hex()[..16])
    }
}

/// How a store names blobs: plain BLAKE3, or BLAKE3 keyed with a secret derived from the
/// store's master key.
#[derive(Clone)]
pub enum IdHasher {
    Blake3,
    KeyedBlake3([u8; 32]),
}

impl IdHasher {
    pub fn id(&self, plain: &[u8]) -> BlobId {
        let digest = match self {
            IdHasher::Blake3 => blake3::hash(plain),
            IdHasher::KeyedBlake3(key) => blake3::keyed_hash(key, plain),
        };
        let id = BlobId(*digest.as_bytes());
        // A real digest equal to the hole id has probability 2^-256; keep the invariant anyway.
        if id.is_hole() {
            BlobId([0xff; 32])
        } else {
            id
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_ids_differ_from_plain_and_between_keys() {
        let data = b"same plaintext";
        let plain = IdHasher::Blake3.id(data);
        let a = IdHasher::KeyedBlake3([1; 32]).id(data);
        let b = IdHasher::KeyedBlake3([2; 32]).id(data);
        assert_ne!(plain, a);
        assert_ne!(a, b);
        assert_eq!(a, IdHasher::KeyedBlake3([1; 32]).id(data));
    }

    #[test]
    fn hex_round_trip() {
        let id = IdHasher::Blake3.id(b"x");
        assert_eq!(BlobId::from_hex(&id.to_hex()), Some(id));
        assert_eq!(BlobId::from_hex("zz"), None);
    }
}
