//! Content-defined chunking inside one extent (FastCDC, the 2020 variant with normalised chunking).
//! Cut points restart at every extent boundary, so an extent's chunks depend only on its bytes.

use crate::error::DedupeError;
use std::ops::Range;

/// Chunk size bounds in bytes. Stored in the store's configuration: changing them changes every
/// chunk id, so a store keeps the parameters it was created with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkerParams {
    pub min: u32,
    pub avg: u32,
    pub max: u32,
}

impl ChunkerParams {
    /// Chosen by measurement on a Debian root filesystem image: see docs/BENCHMARKS.md.
    pub const DEFAULT: ChunkerParams = ChunkerParams { min: 16 * 1024, avg: 64 * 1024, max: 256 * 1024 };

    pub fn validate(&self) -> Result<(), DedupeError> {
        let ok = self.min >= 64
            && self.min <= self.avg
            && self.avg <= self.max
            && self.avg >= 256
            && self.max <= 16 * 1024 * 1024
            && self.min <= 1024 * 1024
            && self.avg <= 4 * 1024 * 1024;
        if ok {
            Ok(())
        } else {
            Err(DedupeError::Invalid(format!(
                "chunker sizes min {} avg {} max {} are out of range (64 <= min <= avg <= max, avg 256..4 MiB, max <= 16 MiB)",
                self.min, self.avg, self.max
            )))
        }
    }

    /// The byte ranges of `data`'s chunks, in order, covering it exactly.
    pub fn cut(&self, data: &[u8]) -> Vec<Range<usize>> {
        if data.is_empty() {
            return Vec::new();
        }
        fastcdc::v2020::FastCDC::new(data, self.min, self.avg, self.max)
            .map(|c| c.offset..c.offset + c.length)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn chunks_cover_the_extent_within_bounds() {
        let p = ChunkerParams::DEFAULT;
        let data = noise(4 << 20, 7);
        let cuts = p.cut(&data);
        let mut next = 0;
        for (i, r) in cuts.iter().enumerate() {
            assert_eq!(r.start, next);
            assert!(r.len() <= p.max as usize);
            if i + 1 < cuts.len() {
                assert!(r.len() >= p.min as usize);
            }
            next = r.end;
        }
        assert_eq!(next, data.len());
    }

    #[test]
    fn a_small_edit_changes_few_chunks() {
        let p = ChunkerParams::DEFAULT;
        let a = noise(4 << 20, 9);
        let mut b = a.clone();
        b[2_000_000..2_000_000 + 64 * 1024].fill(0x5a);
        let ca: std::collections::HashSet<_> = p.cut(&a).into_iter().map(|r| a[r].to_vec()).collect();
        let changed = p.cut(&b).into_iter().filter(|r| !ca.contains(&b[r.clone()])).count();
        assert!(changed <= 4, "a 64 KiB edit changed {changed} chunks");
    }

    #[test]
    fn rejects_nonsense_sizes() {
        assert!(ChunkerParams { min: 10, avg: 5, max: 1 }.validate().is_err());
        assert!(ChunkerParams::DEFAULT.validate().is_ok());
    }
}
