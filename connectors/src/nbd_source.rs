//! A disk read over NBD as a store `DiskSource`: data through `NBD_CMD_READ`, holes through the
//! `base:allocation` context (so unallocated and known-zero ranges are never read), and the
//! dirty ranges of a QEMU dirty bitmap (`qemu:dirty-bitmap:NAME`) for incrementals.

use crate::nbd::{BlockExtent, NbdAddress, NbdClient, NbdError};
use std::ops::Range;
use vds_store::DiskSource;

pub const BASE_ALLOCATION: &str = "base:allocation";
const STATE_HOLE: u32 = 1;
const STATE_ZERO: u32 = 2;
/// How much allocation status one query asks for; answers are cached and consumed in order.
const STATUS_WINDOW: u32 = 1 << 30;

pub struct NbdSource {
    client: NbdClient,
    address: NbdAddress,
    export: String,
    /// Known allocation: a range and whether it reads as zero without reading.
    known: Vec<(Range<u64>, bool)>,
}

impl NbdSource {
    /// Opens `export` at `address` with allocation status, and the dirty bitmap `bitmap` (an
    /// incremental's change list) when one is named.
    pub fn open(address: &NbdAddress, export: &str, bitmap: Option<&str>) -> Result<NbdSource, NbdError> {
        let dirty = bitmap.map(|b| format!("qemu:dirty-bitmap:{b}"));
        let mut contexts = vec![BASE_ALLOCATION];
        contexts.extend(dirty.as_deref());
        let client = NbdClient::connect(address, export, &contexts)?;
        Ok(NbdSource { client, address: address.clone(), export: export.into(), known: Vec::new() })
    }

    /// The byte ranges the bitmap named at `open` marks dirty.
    pub fn dirty_ranges(&mut self, bitmap: &str) -> Result<Vec<Range<u64>>, NbdError> {
        dirty_ranges(&mut self.client, bitmap)
    }

    /// Whether [offset, offset+len) reads as zeros, from cached or fresh allocation status.
    fn zero_range(&mut self, offset: u64, len: u64) -> Result<bool, NbdError> {
        let end = offset + len;
        let mut pos = offset;
        while pos < end {
            if let Some((r, zero)) = self.known.iter().find(|(r, _)| r.contains(&pos)).cloned() {
                if !zero {
                    return Ok(false);
                }
                pos = r.end;
                continue;
            }
            let ask = (self.client.size() - pos).min(STATUS_WINDOW as u64) as u32;
            let extents = self.client.block_status(BASE_ALLOCATION, pos, ask)?;
            self.known.clear();
            let mut at = pos;
            for BlockExtent { length, flags } in extents {
                let next = (at + length as u64).min(self.client.size());
                self.known.push((at..next, flags & (STATE_HOLE | STATE_ZERO) != 0));
                at = next;
                if at >= self.client.size() {
                    break;
                }
            }
        }
        Ok(true)
    }
}

fn to_io(e: NbdError) -> std::io::Error {
    std::io::Error::other(e)
}

impl DiskSource for NbdSource {
    fn size(&self) -> u64 {
        self.client.size()
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.client.read_at(offset, buf).map_err(to_io)
    }

    fn is_unallocated(&mut self, offset: u64, len: u64) -> std::io::Result<bool> {
        self.zero_range(offset, len).map_err(to_io)
    }

    fn describe(&self) -> String {
        format!("{} export {:?}", self.address, self.export)
    }
}

/// The byte ranges a dirty bitmap marks, merged, over the whole export.
pub fn dirty_ranges(client: &mut NbdClient, bitmap: &str) -> Result<Vec<Range<u64>>, NbdError> {
    let context = format!("qemu:dirty-bitmap:{bitmap}");
    let size = client.size();
    let mut out: Vec<Range<u64>> = Vec::new();
    let mut pos = 0u64;
    while pos < size {
        let ask = (size - pos).min(STATUS_WINDOW as u64) as u32;
        let extents = client.block_status(&context, pos, ask)?;
        for e in extents {
            let end = (pos + e.length as u64).min(size);
            if e.flags & 1 != 0 {
                match out.last_mut() {
                    Some(last) if last.end == pos => last.end = end,
                    _ => out.push(pos..end),
                }
            }
            pos = end;
            if pos >= size {
                break;
            }
        }
    }
    Ok(out)
}
