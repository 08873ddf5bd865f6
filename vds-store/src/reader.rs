//! Reading a disk of a restore point: random access (`read_at`) for restores, exports and file
//! browsing, with a bounded cache of decoded chunks and sequential read-ahead; and a parallel,
//! sparse `export` to a raw file. Every chunk is re-hashed as it is decoded, so a damaged range
//! is an error that names the point and the blob, never wrong bytes.

use crate::disk_map::DiskMap;
use crate::error::{Result, StoreError};
use crate::store::Store;
use dedupe::{BlobId, BlobKind, ChunkStore, ExtentRecord};
use std::collections::HashMap;
use std::fs::File;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Decoded chunks kept per reader.
const CACHE_BYTES: usize = 64 << 20;
/// Extents fetched ahead of a sequential reader.
const READ_AHEAD: u64 = 2;

pub struct DiskReader {
    inner: Arc<Inner>,
}

struct Inner {
    chunks: ChunkStore,
    point: String,
    disk: String,
    map: DiskMap,
    records: Mutex<HashMap<BlobId, Arc<ExtentRecord>>>,
    cache: Mutex<Cache>,
    last_extent: AtomicU64,
    prefetching: AtomicUsize,
}

#[derive(Default)]
struct Cache {
    entries: HashMap<BlobId, (Arc<Vec<u8>>, u64)>,
    bytes: usize,
    tick: u64,
}

impl Cache {
    fn get(&mut self, id: &BlobId) -> Option<Arc<Vec<u8>>> {
        self.tick += 1;
        let tick = self.tick;
        self.entries.get_mut(id).map(|(data, t)| {
            *t = tick;
            data.clone()
        })
    }

    fn put(&mut self, id: BlobId, data: Arc<Vec<u8>>) {
        self.tick += 1;
        self.bytes += data.len();
        if let Some((old, _)) = self.entries.insert(id, (data, self.tick)) {
            self.bytes -= old.len();
        }
        if self.bytes > CACHE_BYTES {
            // Evict the least recently used quarter in one pass.
            let mut ticks: Vec<(u64, BlobId)> = self.entries.iter().map(|(k, (_, t))| (*t, *k)).collect();
            ticks.sort_unstable();
            for (_, k) in ticks {
                if self.bytes <= CACHE_BYTES * 3 / 4 {
                    break;
                }
                if let Some((d, _)) = self.entries.remove(&k) {
                    self.bytes -= d.len();
                }
            }
        }
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub struct ExportStats {
    pub size: u64,
    pub data_bytes: u64,
}

impl Store {
    /// Opens disk `disk` of point `point` for reading.
    pub fn open_disk(&self, point: &str, disk: &str) -> Result<DiskReader> {
        self.require_key()?;
        let entry = self.find(point)?;
        let pd = entry
            .manifest
            .disks
            .iter()
            .find(|d| d.key == disk)
            .ok_or_else(|| StoreError::Invalid(format!("restore point {point} has no disk {disk:?}")))?;
        let map = self.read_disk_map(point, pd)?;
        Ok(DiskReader {
            inner: Arc::new(Inner {
                chunks: self.chunks().clone(),
                point: point.into(),
                disk: disk.into(),
                map,
                records: Mutex::new(HashMap::new()),
                cache: Mutex::new(Cache::default()),
                last_extent: AtomicU64::new(u64::MAX),
                prefetching: AtomicUsize::new(0),
            }),
        })
    }

    /// Opens every disk of a point, as (disk key, reader), in the point's order.
    pub fn open_disks(&self, point: &str) -> Result<Vec<(String, DiskReader)>> {
        let entry = self.find(point)?;
        entry.manifest.disks.iter().map(|d| Ok((d.key.clone(), self.open_disk(point, &d.key)?))).collect()
    }
}

impl Inner {
    /// "POINT disk DISK, bytes A..B": extent `index`'s place, for errors.
    fn range_name(&self, index: u64) -> String {
        let start = index * self.map.extent_size as u64;
        format!("{} disk {}, bytes {start}..{}", self.point, self.disk, start + self.map.extent_len(index) as u64)
    }

    fn blob_err(&self, source: dedupe::DedupeError) -> StoreError {
        StoreError::PointBlob { point: format!("{} disk {}", self.point, self.disk), cause: source }
    }

    fn record(&self, id: &BlobId) -> Result<Arc<ExtentRecord>> {
        if let Some(r) = self.records.lock().expect("records lock").get(id) {
            return Ok(r.clone());
        }
        let bytes = self.chunks.read(id, BlobKind::ExtentRecord).map_err(|e| self.blob_err(e))?;
        let rec = Arc::new(ExtentRecord::decode(id, &bytes).map_err(|e| self.blob_err(e))?);
        let mut records = self.records.lock().expect("records lock");
        if records.len() > 4096 {
            records.clear();
        }
        records.insert(*id, rec.clone());
        Ok(rec)
    }

    fn chunk(&self, id: &BlobId) -> Result<Arc<Vec<u8>>> {
        if let Some(c) = self.cache.lock().expect("cache lock").get(id) {
            return Ok(c);
        }
        let data = Arc::new(self.chunks.read(id, BlobKind::Chunk).map_err(|e| self.blob_err(e))?);
        self.cache.lock().expect("cache lock").put(*id, data.clone());
        Ok(data)
    }

    /// Copies `buf.len()` bytes of extent `index` starting `within` bytes into it.
    fn read_extent_part(&self, index: u64, within: usize, buf: &mut [u8]) -> Result<()> {
        let id = self.map.extents[index as usize];
        if id.is_hole() {
            buf.fill(0);
            return Ok(());
        }
        let record = self.record(&id)?;
        let end = within + buf.len();
        let mut pos = 0usize;
        for c in &record.chunks {
            let (cs, ce) = (pos, pos + c.len as usize);
            pos = ce;
            if ce <= within || cs >= end {
                continue;
            }
            let (s, e) = (cs.max(within), ce.min(end));
            let dst = &mut buf[s - within..e - within];
            if c.id.is_hole() {
                dst.fill(0);
            } else {
                let data = self.chunk(&c.id)?;
                if data.len() != c.len as usize {
                    return Err(StoreError::Invalid(format!(
                        "point {} disk {}: chunk {} is {} bytes, its record says {}",
                        self.point,
                        self.disk,
                        c.id,
                        data.len(),
                        c.len
                    )));
                }
                dst.copy_from_slice(&data[s - cs..e - cs]);
            }
        }
        if pos < end {
            return Err(StoreError::Invalid(format!(
                "point {} disk {}: extent {index} record covers {pos} bytes, fewer than the extent",
                self.point, self.disk
            )));
        }
        Ok(())
    }

    fn prefetch(self: &Arc<Self>, from: u64) {
        let count = self.map.extents.len() as u64;
        if self.prefetching.fetch_add(1, Ordering::AcqRel) >= 1 {
            self.prefetching.fetch_sub(1, Ordering::AcqRel);
            return;
        }
        let me = self.clone();
        std::thread::spawn(move || {
            for i in from..(from + READ_AHEAD).min(count) {
                let id = me.map.extents[i as usize];
                if id.is_hole() {
                    continue;
                }
                let Ok(rec) = me.record(&id) else { break };
                for c in rec.chunks.iter().filter(|c| !c.id.is_hole()) {
                    // Errors surface when the reader itself asks for the chunk.
                    if me.chunk(&c.id).is_err() {
                        break;
                    }
                }
            }
            me.prefetching.fetch_sub(1, Ordering::AcqRel);
        });
    }
}

impl DiskReader {
    pub fn size(&self) -> u64 {
        self.inner.map.size
    }

    pub fn map(&self) -> &DiskMap {
        &self.inner.map
    }

    /// The byte ranges of extent `index` that hold data, as disk offsets: not the holes, not
    /// the all-zero chunks. Read from the extent record alone (no chunk is read), so a writer
    /// can plan a layout (a qcow2 image's allocated clusters) before it copies any data.
    pub fn data_ranges(&self, index: u64) -> Result<Vec<std::ops::Range<u64>>> {
        let inner = &self.inner;
        let Some(id) = inner.map.extents.get(index as usize).copied() else {
            return Err(StoreError::Invalid(format!(
                "point {} disk {}: no extent {index} (the disk has {})",
                inner.point,
                inner.disk,
                inner.map.extents.len()
            )));
        };
        if id.is_hole() {
            return Ok(Vec::new());
        }
        let mut pos = index * inner.map.extent_size as u64;
        let mut out: Vec<std::ops::Range<u64>> = Vec::new();
        for c in &inner.record(&id)?.chunks {
            let end = pos + c.len as u64;
            if !c.id.is_hole() {
                match out.last_mut() {
                    Some(last) if last.end == pos => last.end = end,
                    _ => out.push(pos..end),
                }
            }
            pos = end;
        }
        Ok(out)
    }

    /// Reads `buf.len()` bytes at `offset`; ranges past the end are an error.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let inner = &self.inner;
        let end = offset.checked_add(buf.len() as u64).filter(|&e| e <= inner.map.size).ok_or_else(|| {
            StoreError::Invalid(format!(
                "point {} disk {}: read of {} bytes at {offset} is past the end ({} bytes)",
                inner.point,
                inner.disk,
                buf.len(),
                inner.map.size
            ))
        })?;
        let es = inner.map.extent_size as u64;
        let mut pos = offset;
        while pos < end {
            let index = pos / es;
            let within = (pos % es) as usize;
            let n = ((es - within as u64).min(end - pos)) as usize;
            let at = (pos - offset) as usize;
            let last = inner.last_extent.swap(index, Ordering::Relaxed);
            if last != index && last.wrapping_add(1) == index {
                inner.prefetch(index + 1);
            }
            inner.read_extent_part(index, within, &mut buf[at..at + n])?;
            pos += n as u64;
        }
        Ok(())
    }

    /// Writes the disk to `out`, an empty file, as a sparse raw file: holes and zero chunks are
    /// not written.
    pub fn export(&self, out: &File, threads: usize, progress: &(dyn Fn(u64, u64) + Sync)) -> Result<ExportStats> {
        let inner = &self.inner;
        // A new, empty file: truncating one that holds data would make ext4 flush it all on close
        // (its replace-by-truncate safeguard) and leave stale bytes where this disk has holes.
        let len = out.metadata().map_err(|e| StoreError::io("reading the export file's size", e))?.len();
        if len != 0 {
            return Err(StoreError::Invalid(format!("export of point {}: the output file is not empty", inner.point)));
        }
        self.fill_file(out, &crate::ExportOptions { threads, sync: false, cancel: None }, progress)
    }

    /// Hands every data chunk of the disk to `write(disk offset, bytes)` on `threads` threads,
    /// an extent at a time (an extent's chunks in order, extents in any order); holes and
    /// all-zero chunks are not handed out. `extent_done(length)` follows each extent, holes too.
    /// The first error of either, or of the store, stops every thread; of the errors met by
    /// then, the one of the lowest extent is returned, naming that extent's byte range.
    pub fn copy_out(
        &self,
        threads: usize,
        write: &(dyn Fn(u64, &[u8]) -> std::io::Result<()> + Sync),
        extent_done: &(dyn Fn(u64) -> std::io::Result<()> + Sync),
    ) -> Result<ExportStats> {
        let inner = &self.inner;
        let next = AtomicU64::new(0);
        let data_bytes = AtomicU64::new(0);
        let count = inner.map.extents.len() as u64;
        let failure: Mutex<Option<(u64, StoreError)>> = Mutex::new(None);
        std::thread::scope(|s| {
            for _ in 0..threads.max(1) {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count || failure.lock().expect("failure lock").is_some() {
                        return;
                    }
                    let len = inner.map.extent_len(i) as u64;
                    let outcome = self.copy_extent(i, write).and_then(|n| {
                        extent_done(len).map_err(|e| StoreError::io(format!("after {}", inner.range_name(i)), e))?;
                        Ok(n)
                    });
                    match outcome {
                        Ok(n) => {
                            data_bytes.fetch_add(n, Ordering::Relaxed);
                        }
                        Err(e) => {
                            let mut f = failure.lock().expect("failure lock");
                            if f.as_ref().is_none_or(|(at, _)| i < *at) {
                                *f = Some((i, e));
                            }
                            return;
                        }
                    }
                });
            }
        });
        if let Some((_, e)) = failure.into_inner().expect("failure lock") {
            return Err(e);
        }
        Ok(ExportStats { size: inner.map.size, data_bytes: data_bytes.into_inner() })
    }

    fn copy_extent(&self, index: u64, write: &(dyn Fn(u64, &[u8]) -> std::io::Result<()> + Sync)) -> Result<u64> {
        let inner = &self.inner;
        let id = inner.map.extents[index as usize];
        if id.is_hole() {
            return Ok(0);
        }
        let at = |cause| StoreError::PointBlob { point: inner.range_name(index), cause };
        let bytes = inner.chunks.read(&id, BlobKind::ExtentRecord).map_err(at)?;
        let record = ExtentRecord::decode(&id, &bytes).map_err(at)?;
        let mut offset = index * inner.map.extent_size as u64;
        let mut written = 0;
        for c in &record.chunks {
            if !c.id.is_hole() {
                // Streamed, not cached: an export reads each chunk once.
                let data = inner.chunks.read(&c.id, BlobKind::Chunk).map_err(at)?;
                if data.len() != c.len as usize {
                    return Err(StoreError::Invalid(format!(
                        "restore point {}: chunk {} is {} bytes, its record says {}",
                        inner.range_name(index),
                        c.id,
                        data.len(),
                        c.len
                    )));
                }
                write(offset, &data).map_err(|e| {
                    StoreError::io(format!("writing bytes {offset}..{} of the disk", offset + c.len as u64), e)
                })?;
                written += data.len() as u64;
            }
            offset += c.len as u64;
        }
        Ok(written)
    }
}
