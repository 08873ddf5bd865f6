//! Disk maps: one entry per extent of a disk, the hole id or the id of an extent record. A disk
//! map is a blob (kind 2); its id, a hash over every record id and so over every chunk id, is the
//! disk's content checksum.
//!
//! Encoding: u8 version (1), u64 disk size, u32 extent size, u64 entry count, then the entries
//! (32 bytes each). The count is ceil(size / extent size).

use dedupe::{BlobId, DedupeError};

const VERSION: u8 = 1;
const HEADER: usize = 21;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskMap {
    pub size: u64,
    pub extent_size: u32,
    pub extents: Vec<BlobId>,
}

impl DiskMap {
    pub fn empty(size: u64, extent_size: u32) -> DiskMap {
        DiskMap { size, extent_size, extents: vec![BlobId::HOLE; extent_count(size, extent_size) as usize] }
    }

    /// Length of extent `i` (the last may be short).
    pub fn extent_len(&self, i: u64) -> usize {
        let start = i * self.extent_size as u64;
        (self.size - start).min(self.extent_size as u64) as usize
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER + self.extents.len() * 32);
        out.push(VERSION);
        out.extend_from_slice(&self.size.to_le_bytes());
        out.extend_from_slice(&self.extent_size.to_le_bytes());
        out.extend_from_slice(&(self.extents.len() as u64).to_le_bytes());
        for e in &self.extents {
            out.extend_from_slice(&e.0);
        }
        out
    }

    pub fn decode(id: &BlobId, bytes: &[u8]) -> Result<DiskMap, DedupeError> {
        let bad = |cause: &str| DedupeError::Damaged { id: *id, cause: format!("disk map: {cause}") };
        if bytes.len() < HEADER {
            return Err(bad("shorter than its header"));
        }
        if bytes[0] != VERSION {
            return Err(bad(&format!("unknown version {}", bytes[0])));
        }
        let size = u64::from_le_bytes(bytes[1..9].try_into().unwrap());
        let extent_size = u32::from_le_bytes(bytes[9..13].try_into().unwrap());
        let count = u64::from_le_bytes(bytes[13..21].try_into().unwrap());
        if extent_size == 0
            || count != extent_count(size, extent_size)
            || bytes.len() as u64 != HEADER as u64 + count * 32
        {
            return Err(bad("size, extent size and entry count disagree"));
        }
        let extents = bytes[HEADER..].chunks_exact(32).map(|e| BlobId(e.try_into().unwrap())).collect();
        Ok(DiskMap { size, extent_size, extents })
    }
}

pub fn extent_count(size: u64, extent_size: u32) -> u64 {
    size.div_ceil(extent_size as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_short_last_extent() {
        let mut m = DiskMap::empty(10 * 1024 * 1024 + 5, 4 * 1024 * 1024);
        assert_eq!(m.extents.len(), 3);
        assert_eq!(m.extent_len(2), 2 * 1024 * 1024 + 5);
        m.extents[1] = BlobId([9; 32]);
        let id = BlobId([1; 32]);
        assert_eq!(DiskMap::decode(&id, &m.encode()).unwrap(), m);
        let mut bad = m.encode();
        bad[13] ^= 1;
        assert!(DiskMap::decode(&id, &bad).is_err());
    }
}
