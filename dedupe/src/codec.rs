//! The blob file format: every chunk, extent record and disk map is stored as one blob.
//!
//! Layout (little endian), specified for readers in vds-store/FORMAT.md:
//!   0  4  magic "HFB1"
//!   4  1  kind        0 chunk, 1 extent record, 2 disk map
//!   5  1  compression 0 none, 1 zstd
//!   6  1  cipher      0 none, 1 XChaCha20-Poly1305 (payload = 24-byte nonce, ciphertext, 16-byte tag)
//!   7  1  reserved, 0
//!   8  4  plaintext length
//!  12  4  payload length
//!  16 32  BLAKE3 of bytes 0..16 then the payload (integrity checkable without the key)
//!  48  …  payload
//! The blob's id (its file name) is the (keyed) BLAKE3 of the plaintext; readers re-hash after
//! decoding, so a damaged blob is an error, never wrong bytes.

use crate::crypto::{random, MasterKey};
use crate::error::DedupeError;
use crate::id::{BlobId, IdHasher};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::XChaCha20Poly1305;
use std::cell::RefCell;

pub const MAGIC: &[u8; 4] = b"HFB1";
pub const HEADER_LEN: usize = 48;
const NONCE_LEN: usize = 24;
/// Largest plaintext a blob may hold (a disk map of a 64 TiB disk with 4 MiB extents is 512 MiB;
/// larger disks need larger extents).
pub const MAX_PLAIN: u32 = 1 << 30;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlobKind {
    Chunk = 0,
    ExtentRecord = 1,
    DiskMap = 2,
}

impl BlobKind {
    fn from_u8(v: u8) -> Option<BlobKind> {
        match v {
            0 => Some(BlobKind::Chunk),
            1 => Some(BlobKind::ExtentRecord),
            2 => Some(BlobKind::DiskMap),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            BlobKind::Chunk => "chunk",
            BlobKind::ExtentRecord => "extent record",
            BlobKind::DiskMap => "disk map",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Zstd { level: i32 },
}

#[derive(Clone, Debug)]
pub struct BlobHeader {
    pub kind: BlobKind,
    pub compressed: bool,
    pub encrypted: bool,
    pub plain_len: u32,
    pub payload_len: u32,
    pub payload_hash: [u8; 32],
}

impl BlobHeader {
    /// Parses and checks the header's structure (not the payload hash).
    pub fn parse(id: &BlobId, bytes: &[u8]) -> Result<BlobHeader, DedupeError> {
        let damaged = |cause: String| DedupeError::Damaged { id: *id, cause };
        if bytes.len() < HEADER_LEN {
            return Err(damaged(format!("file is {} bytes, shorter than the {HEADER_LEN}-byte header", bytes.len())));
        }
        if &bytes[0..4] != MAGIC {
            return Err(damaged("bad magic (not a Holdfast blob, or overwritten)".into()));
        }
        let kind = BlobKind::from_u8(bytes[4]).ok_or_else(|| damaged(format!("unknown blob kind {}", bytes[4])))?;
        let compressed = match bytes[5] {
            0 => false,
            1 => true,
            c => return Err(damaged(format!("unknown compression {c}"))),
        };
        let encrypted = match bytes[6] {
            0 => false,
            1 => true,
            c => return Err(damaged(format!("unknown cipher {c}"))),
        };
        if bytes[7] != 0 {
            return Err(damaged(format!("reserved header byte is {} (a newer format, or damage)", bytes[7])));
        }
        let plain_len = u32::from_le_bytes(bytes[8..12].try_into().unwrap());
        let payload_len = u32::from_le_bytes(bytes[12..16].try_into().unwrap());
        let payload_hash: [u8; 32] = bytes[16..48].try_into().unwrap();
        if plain_len > MAX_PLAIN {
            return Err(damaged(format!("plaintext length {plain_len} is over the limit")));
        }
        if bytes.len() != HEADER_LEN + payload_len as usize {
            return Err(damaged(format!(
                "file is {} bytes but its header says {} (truncated or extended)",
                bytes.len(),
                HEADER_LEN + payload_len as usize
            )));
        }
        Ok(BlobHeader { kind, compressed, encrypted, plain_len, payload_len, payload_hash })
    }

    /// Parses the header and checks the payload against its hash: the key-less integrity check.
    pub fn check(id: &BlobId, bytes: &[u8]) -> Result<BlobHeader, DedupeError> {
        let h = BlobHeader::parse(id, bytes)?;
        if checksum(&bytes[..16], &bytes[HEADER_LEN..]) != h.payload_hash {
            return Err(DedupeError::Damaged {
                id: *id,
                cause: "payload checksum mismatch (bit rot or tampering)".into(),
            });
        }
        Ok(h)
    }
}

/// Encodes and decodes blobs for one store: its id scheme, compression level and key.
#[derive(Clone)]
pub struct BlobCodec {
    hasher: IdHasher,
    cipher: Option<XChaCha20Poly1305>,
    compression: Compression,
    encrypted_store: bool,
}

thread_local! {
    static COMPRESSOR: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> = const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

impl BlobCodec {
    pub fn plain(compression: Compression) -> BlobCodec {
        BlobCodec { hasher: IdHasher::Blake3, cipher: None, compression, encrypted_store: false }
    }

    pub fn encrypted(key: &MasterKey, compression: Compression) -> BlobCodec {
        BlobCodec {
            hasher: IdHasher::KeyedBlake3(key.id_key()),
            cipher: Some(XChaCha20Poly1305::new(&key.cipher_key().into())),
            compression,
            encrypted_store: true,
        }
    }

    /// A codec for an encrypted store opened without its key: it can check payload checksums
    /// (`BlobHeader::check`) but not decode.
    pub fn keyless(compression: Compression) -> BlobCodec {
        BlobCodec { hasher: IdHasher::Blake3, cipher: None, compression, encrypted_store: true }
    }

    pub fn with_compression(&self, compression: Compression) -> BlobCodec {
        BlobCodec { compression, ..self.clone() }
    }

    pub fn has_key(&self) -> bool {
        !self.encrypted_store || self.cipher.is_some()
    }

    pub fn id(&self, plain: &[u8]) -> BlobId {
        self.hasher.id(plain)
    }

    pub fn encode(&self, kind: BlobKind, id: &BlobId, plain: &[u8]) -> Result<Vec<u8>, DedupeError> {
        if plain.len() > MAX_PLAIN as usize {
            return Err(DedupeError::Invalid(format!("blob {id} is {} bytes, over the blob limit", plain.len())));
        }
        if self.encrypted_store && self.cipher.is_none() {
            return Err(DedupeError::KeyNeeded { id: *id });
        }
        let compressed = match self.compression {
            Compression::None => None,
            Compression::Zstd { level } => {
                let out = compress(level, plain).map_err(|e| DedupeError::io(format!("compressing blob {id}"), e))?;
                // Keep incompressible data as it is: reading it back then costs a copy, not a decoder.
                (out.len() < plain.len()).then_some(out)
            }
        };
        let is_compressed = compressed.is_some();
        let body = compressed.as_deref().unwrap_or(plain);
        let payload = match &self.cipher {
            None => None,
            Some(cipher) => {
                let mut nonce = [0u8; NONCE_LEN];
                random(&mut nonce)?;
                let aad = aad(kind, id);
                let ct = cipher
                    .encrypt(&nonce.into(), Payload { msg: body, aad: &aad })
                    .map_err(|_| DedupeError::Invalid(format!("encrypting blob {id} failed")))?;
                let mut p = Vec::with_capacity(NONCE_LEN + ct.len());
                p.extend_from_slice(&nonce);
                p.extend_from_slice(&ct);
                Some(p)
            }
        };
        let payload = payload.as_deref().unwrap_or(body);
        let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
        out.extend_from_slice(MAGIC);
        out.push(kind as u8);
        out.push(is_compressed as u8);
        out.push(self.cipher.is_some() as u8);
        out.push(0);
        out.extend_from_slice(&(plain.len() as u32).to_le_bytes());
        out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        let sum = checksum(&out[..16], payload);
        out.extend_from_slice(&sum);
        out.extend_from_slice(payload);
        Ok(out)
    }

    /// Decodes a blob read from disk and proves it: header, authentication tag, decompression,
    /// and the plaintext's hash against `id` (which covers everything the payload checksum does,
    /// and a blob stored under the wrong name too). Any mismatch is an error.
    pub fn decode(&self, id: &BlobId, expect: BlobKind, bytes: &[u8]) -> Result<Vec<u8>, DedupeError> {
        let h = BlobHeader::parse(id, bytes)?;
        let damaged = |cause: String| DedupeError::Damaged { id: *id, cause };
        if h.kind != expect {
            return Err(damaged(format!("is a {} where a {} was expected", h.kind.name(), expect.name())));
        }
        let payload = &bytes[HEADER_LEN..];
        let decrypted;
        let body: &[u8] = if h.encrypted {
            let cipher = self.cipher.as_ref().ok_or(DedupeError::KeyNeeded { id: *id })?;
            if payload.len() < NONCE_LEN + 16 {
                return Err(damaged("encrypted payload shorter than nonce and tag".into()));
            }
            let (nonce, ct) = payload.split_at(NONCE_LEN);
            let nonce: [u8; NONCE_LEN] = nonce.try_into().unwrap();
            let aad = aad(h.kind, id);
            decrypted = cipher
                .decrypt(&nonce.into(), Payload { msg: ct, aad: &aad })
                .map_err(|_| DedupeError::WrongKey { id: *id })?;
            &decrypted
        } else {
            if self.encrypted_store {
                return Err(damaged("is not encrypted in an encrypted store".into()));
            }
            payload
        };
        let plain = if h.compressed {
            decompress(body, h.plain_len as usize).map_err(|e| damaged(format!("zstd: {e}")))?
        } else {
            body.to_vec()
        };
        if plain.len() != h.plain_len as usize {
            return Err(damaged(format!("decoded to {} bytes, header says {}", plain.len(), h.plain_len)));
        }
        if self.id(&plain) != *id {
            return Err(damaged("content does not match its id (hash mismatch)".into()));
        }
        Ok(plain)
    }
}

/// The stored checksum: BLAKE3 over the first 16 header bytes and the payload.
fn checksum(head: &[u8], payload: &[u8]) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(head);
    h.update(payload);
    *h.finalize().as_bytes()
}

fn aad(kind: BlobKind, id: &BlobId) -> [u8; 33] {
    let mut a = [0u8; 33];
    a[0] = kind as u8;
    a[1..].copy_from_slice(&id.0);
    a
}

fn compress(level: i32, plain: &[u8]) -> std::io::Result<Vec<u8>> {
    COMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.as_ref().map(|(l, _)| *l) != Some(level) {
            *slot = Some((level, zstd::bulk::Compressor::new(level)?));
        }
        slot.as_mut().unwrap().1.compress(plain)
    })
}

fn decompress(body: &[u8], plain_len: usize) -> std::io::Result<Vec<u8>> {
    DECOMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(zstd::bulk::Decompressor::new()?);
        }
        slot.as_mut().unwrap().decompress(body, plain_len)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::MasterKey;

    fn sample() -> Vec<u8> {
        (0..100_000u32).map(|i| (i % 251) as u8).collect()
    }

    #[test]
    fn round_trip_plain_and_encrypted() {
        let key = MasterKey::generate().unwrap();
        for codec in [
            BlobCodec::plain(Compression::Zstd { level: 3 }),
            BlobCodec::plain(Compression::None),
            BlobCodec::encrypted(&key, Compression::Zstd { level: 3 }),
        ] {
            let data = sample();
            let id = codec.id(&data);
            let blob = codec.encode(BlobKind::Chunk, &id, &data).unwrap();
            assert_eq!(codec.decode(&id, BlobKind::Chunk, &blob).unwrap(), data);
            assert!(matches!(codec.decode(&id, BlobKind::DiskMap, &blob), Err(DedupeError::Damaged { .. })));
        }
    }

    #[test]
    fn any_flipped_byte_is_an_error() {
        let codec = BlobCodec::plain(Compression::Zstd { level: 3 });
        let data = sample();
        let id = codec.id(&data);
        let blob = codec.encode(BlobKind::Chunk, &id, &data).unwrap();
        for pos in 0..blob.len() {
            let mut bad = blob.clone();
            bad[pos] ^= 0x40;
            if (16..48).contains(&pos) {
                // The stored payload checksum itself: the data decodes intact, and the key-less
                // check (verify) reports the damage.
                assert!(BlobHeader::check(&id, &bad).is_err(), "flip at {pos} went unnoticed by check");
            } else {
                assert!(codec.decode(&id, BlobKind::Chunk, &bad).is_err(), "flip at {pos} went unnoticed by decode");
                assert!(BlobHeader::check(&id, &bad).is_err(), "flip at {pos} went unnoticed by check");
            }
        }
        assert!(codec.decode(&id, BlobKind::Chunk, &blob[..blob.len() - 1]).is_err());
    }

    #[test]
    fn wrong_key_and_missing_key_are_clear_errors() {
        let a = MasterKey::generate().unwrap();
        let b = MasterKey::generate().unwrap();
        let enc = BlobCodec::encrypted(&a, Compression::Zstd { level: 3 });
        let data = sample();
        let id = enc.id(&data);
        let blob = enc.encode(BlobKind::Chunk, &id, &data).unwrap();
        let other = BlobCodec::encrypted(&b, Compression::Zstd { level: 3 });
        assert!(matches!(other.decode(&id, BlobKind::Chunk, &blob), Err(DedupeError::WrongKey { .. })));
        let keyless = BlobCodec::keyless(Compression::Zstd { level: 3 });
        assert!(matches!(keyless.decode(&id, BlobKind::Chunk, &blob), Err(DedupeError::KeyNeeded { .. })));
        assert!(BlobHeader::check(&id, &blob).is_ok(), "ciphertext integrity is checkable without the key");
    }
}
