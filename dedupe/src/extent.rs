//! Extent records: the chunks one disk extent is made of, in order. A record is itself a blob
//! (kind 1), so an unchanged extent in the next restore point is the same record id again.
//!
//! Encoding: u8 version (1), u32 count, then count entries of (u32 length, 32-byte blob id);
//! the hole id (all zero) marks an all-zero run that is not stored.

use crate::error::DedupeError;
use crate::id::BlobId;

const VERSION: u8 = 1;
const ENTRY: usize = 36;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkRef {
    pub len: u32,
    pub id: BlobId,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExtentRecord {
    pub chunks: Vec<ChunkRef>,
}

impl ExtentRecord {
    pub fn len(&self) -> u64 {
        self.chunks.iter().map(|c| c.len as u64).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(5 + self.chunks.len() * ENTRY);
        out.push(VERSION);
        out.extend_from_slice(&(self.chunks.len() as u32).to_le_bytes());
        for c in &self.chunks {
            out.extend_from_slice(&c.len.to_le_bytes());
            out.extend_from_slice(&c.id.0);
        }
        out
    }

    pub fn decode(id: &BlobId, bytes: &[u8]) -> Result<ExtentRecord, DedupeError> {
        let bad = |cause: &str| DedupeError::Damaged { id: *id, cause: format!("extent record: {cause}") };
        if bytes.len() < 5 {
            return Err(bad("shorter than its header"));
        }
        if bytes[0] != VERSION {
            return Err(bad(&format!("unknown record version {}", bytes[0])));
        }
        let count = u32::from_le_bytes(bytes[1..5].try_into().unwrap()) as usize;
        if bytes.len() != 5 + count * ENTRY {
            return Err(bad("length does not match its entry count"));
        }
        let chunks = bytes[5..]
            .chunks_exact(ENTRY)
            .map(|e| ChunkRef {
                len: u32::from_le_bytes(e[0..4].try_into().unwrap()),
                id: BlobId(e[4..36].try_into().unwrap()),
            })
            .collect();
        Ok(ExtentRecord { chunks })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage() {
        let r = ExtentRecord {
            chunks: vec![ChunkRef { len: 10, id: BlobId([7; 32]) }, ChunkRef { len: 5, id: BlobId::HOLE }],
        };
        let id = BlobId([1; 32]);
        let bytes = r.encode();
        assert_eq!(ExtentRecord::decode(&id, &bytes).unwrap(), r);
        assert_eq!(r.len(), 15);
        assert!(ExtentRecord::decode(&id, &bytes[..bytes.len() - 1]).is_err());
    }
}
