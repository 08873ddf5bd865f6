//! The copy-on-write overlay of one exported disk: what clients write never reaches the restore
//! point; it goes to a sparse file beside the session, at the disk's own offsets, in whole
//! 4 KiB blocks (a write that covers part of a block first takes the rest of that block from
//! the point, or from the overlay if written before). Which blocks are written is kept in a
//! journal of (first block, count) records, replayed at open. A record reaches the journal only
//! once its data is on disk (at a stable write, or at the COMMIT after unstable ones), so after a
//! crash the journal never claims a block whose data was lost: such a block reads from the point
//! again, and the client, seeing a new write verifier, sends its unstable writes again. Reads
//! take each block from the overlay where written, else from the point.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};

/// The overlay's unit of copy-on-write.
pub const BLOCK: u64 = 4096;
/// Journal size past which a sync rewrites it as runs.
const COMPACT_AT: u64 = 1 << 20;
/// Blocks per lazily allocated bitmap page (1 GiB of disk, 32 KiB of bitmap).
const PAGE_BLOCKS: u64 = 1 << 18;

/// Where the unwritten parts of the disk come from (the restore point).
pub type Base<'a> = &'a dyn Fn(&mut [u8], u64) -> std::io::Result<()>;

#[derive(Default)]
struct Blocks {
    pages: HashMap<u64, Box<[u64]>>,
    count: u64,
}

impl Blocks {
    fn get(&self, b: u64) -> bool {
        self.pages.get(&(b / PAGE_BLOCKS)).is_some_and(|p| {
            let i = b % PAGE_BLOCKS;
            p[(i / 64) as usize] & (1 << (i % 64)) != 0
        })
    }

    fn set(&mut self, b: u64) {
        let page = self.pages.entry(b / PAGE_BLOCKS).or_insert_with(|| vec![0u64; (PAGE_BLOCKS / 64) as usize].into());
        let i = b % PAGE_BLOCKS;
        let word = &mut page[(i / 64) as usize];
        if *word & (1 << (i % 64)) == 0 {
            *word |= 1 << (i % 64);
            self.count += 1;
        }
    }
}

pub struct Overlay {
    size: u64,
    data: File,
    journal: Mutex<File>,
    /// The journal's path, for its compaction.
    journal_path: std::path::PathBuf,
    written: RwLock<Blocks>,
    /// One write at a time: a partial block's fill and its write are one step.
    writing: Mutex<()>,
    /// Journal records of unstable writes whose data is not yet known to be on disk.
    pending: Mutex<Vec<[u8; 16]>>,
    bytes_written: AtomicU64,
    /// When it was last written (nanoseconds since the epoch; 0: not since it was opened).
    changed: AtomicU64,
}

impl Overlay {
    /// Opens (or makes) the overlay `name` of a disk of `size` bytes in `dir`, replaying its
    /// journal; a record cut short by a crash is dropped (its write was never acknowledged as
    /// stable).
    pub fn open(dir: &Path, name: &str, size: u64) -> std::io::Result<Overlay> {
        std::fs::create_dir_all(dir)?;
        let data = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join(format!("{name}.overlay")))?;
        let journal_path = dir.join(format!("{name}.journal"));
        let mut journal = OpenOptions::new().read(true).append(true).create(true).open(&journal_path)?;
        let mut records = Vec::new();
        journal.read_to_end(&mut records)?;
        let whole = records.len() / 16 * 16;
        if whole != records.len() {
            journal.set_len(whole as u64)?;
        }
        let mut written = Blocks::default();
        for r in records[..whole].chunks_exact(16) {
            let first = u64::from_be_bytes(r[..8].try_into().expect("8 bytes"));
            let count = u64::from_be_bytes(r[8..].try_into().expect("8 bytes"));
            for b in first..first.saturating_add(count).min(size.div_ceil(BLOCK)) {
                written.set(b);
            }
        }
        Ok(Overlay {
            size,
            data,
            journal: Mutex::new(journal),
            journal_path,
            written: RwLock::new(written),
            writing: Mutex::new(()),
            pending: Mutex::new(Vec::new()),
            bytes_written: AtomicU64::new(0),
            changed: AtomicU64::new(0),
        })
    }

    /// Bytes of the disk the overlay holds (written blocks).
    pub fn used(&self) -> u64 {
        self.written.read().expect("overlay lock").count * BLOCK
    }

    /// Bytes clients wrote since it was opened.
    pub fn bytes_written(&self) -> u64 {
        self.bytes_written.load(Ordering::Relaxed)
    }

    /// When it was last written (nanoseconds since the epoch), 0 if not since it was opened.
    pub fn changed(&self) -> u64 {
        self.changed.load(Ordering::Relaxed)
    }

    /// Fills `buf` from `offset`: written blocks from the overlay, the others from `base`.
    pub fn read(&self, buf: &mut [u8], offset: u64, base: Base<'_>) -> std::io::Result<()> {
        let written = self.written.read().expect("overlay lock");
        let mut done = 0usize;
        while done < buf.len() {
            let at = offset + done as u64;
            let ours = written.get(at / BLOCK);
            // The run of blocks in the same state, up to the end of the buffer.
            let mut end = (at / BLOCK + 1) * BLOCK;
            while end < offset + buf.len() as u64 && written.get(end / BLOCK) == ours {
                end += BLOCK;
            }
            let n = (end.min(offset + buf.len() as u64) - at) as usize;
            let part = &mut buf[done..done + n];
            if ours {
                self.data.read_exact_at(part, at)?;
            } else {
                base(part, at)?;
            }
            done += n;
        }
        Ok(())
    }

    /// Writes `data` at `offset` (within the disk); `sync`: durable before it returns.
    pub fn write(&self, data: &[u8], offset: u64, sync: bool, base: Base<'_>) -> std::io::Result<()> {
        let end = offset.checked_add(data.len() as u64).filter(|e| *e <= self.size).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("a write past the disk's {} bytes", self.size),
            )
        })?;
        if data.is_empty() {
            return Ok(());
        }
        let _one = self.writing.lock().expect("overlay write lock");
        let (first, last) = (offset / BLOCK, (end - 1) / BLOCK);
        let start = first * BLOCK;
        let stop = ((last + 1) * BLOCK).min(self.size);
        let mut whole = vec![0u8; (stop - start) as usize];
        // Partial first and last blocks keep what they hold now.
        if offset != start {
            let n = BLOCK.min(stop - start) as usize;
            self.read(&mut whole[..n], start, base)?;
        }
        if end != stop && (last != first || offset == start) {
            let b = (last * BLOCK - start) as usize;
            self.read(&mut whole[b..], last * BLOCK, base)?;
        }
        whole[(offset - start) as usize..(end - start) as usize].copy_from_slice(data);
        self.data.write_all_at(&whole, start)?;
        // A record only for blocks not yet written (rewrites need none).
        let new = { (first..=last).any(|b| !self.written.read().expect("overlay lock").get(b)) };
        if new {
            let mut record = [0u8; 16];
            record[..8].copy_from_slice(&first.to_be_bytes());
            record[8..].copy_from_slice(&(last - first + 1).to_be_bytes());
            self.pending.lock().expect("pending lock").push(record);
        }
        if sync {
            self.sync()?;
        }
        let mut written = self.written.write().expect("overlay lock");
        for b in first..=last {
            written.set(b);
        }
        drop(written);
        self.bytes_written.fetch_add(data.len() as u64, Ordering::Relaxed);
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        self.changed.store(now, Ordering::Relaxed);
        Ok(())
    }

    /// Rewrites the journal as one record per run of written blocks, with no write under way
    /// (so every block in the map has its data on disk once the data is synced): a new file
    /// made durable, then renamed over the old one.
    fn compact(&self) -> std::io::Result<()> {
        let _no_writes = self.writing.lock().expect("overlay write lock");
        self.data.sync_data()?;
        let mut journal = self.journal.lock().expect("journal lock");
        let mut records = Vec::new();
        for r in self.written_ranges() {
            let (first, last) = (r.start / BLOCK, (r.end - 1) / BLOCK);
            records.extend_from_slice(&first.to_be_bytes());
            records.extend_from_slice(&(last - first + 1).to_be_bytes());
        }
        let tmp = self.journal_path.with_extension("journal.tmp");
        let mut f = File::create(&tmp)?;
        f.write_all(&records)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &self.journal_path)?;
        if let Some(dir) = self.journal_path.parent() {
            File::open(dir)?.sync_all()?;
        }
        *journal = OpenOptions::new().read(true).append(true).open(&self.journal_path)?;
        self.pending.lock().expect("pending lock").clear();
        Ok(())
    }

    /// The byte ranges written, in order, adjacent blocks joined (clipped to the disk's size).
    pub fn written_ranges(&self) -> Vec<std::ops::Range<u64>> {
        let written = self.written.read().expect("overlay lock");
        let mut pages: Vec<u64> = written.pages.keys().copied().collect();
        pages.sort_unstable();
        let mut out: Vec<std::ops::Range<u64>> = Vec::new();
        for page in pages {
            for b in page * PAGE_BLOCKS..(page + 1) * PAGE_BLOCKS {
                if !written.get(b) {
                    continue;
                }
                let (start, end) = (b * BLOCK, ((b + 1) * BLOCK).min(self.size));
                match out.last_mut() {
                    Some(last) if last.end == start => last.end = end,
                    _ => out.push(start..end),
                }
            }
        }
        out
    }

    /// Makes every write so far durable (NFS COMMIT): the data first, then the records of the
    /// blocks it holds. A journal grown past 1 MiB is rewritten as the runs of written blocks.
    pub fn sync(&self) -> std::io::Result<()> {
        self.data.sync_data()?;
        let mut journal = self.journal.lock().expect("journal lock");
        if journal.metadata()?.len() > COMPACT_AT {
            drop(journal);
            return self.compact();
        }
        let records = std::mem::take(&mut *self.pending.lock().expect("pending lock"));
        if !records.is_empty() {
            if let Err(e) = journal.write_all(&records.concat()) {
                // Not recorded: they stay pending for the next sync.
                self.pending.lock().expect("pending lock").splice(0..0, records);
                return Err(e);
            }
        }
        journal.sync_data()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base_byte(at: u64) -> u8 {
        (at % 253) as u8
    }

    fn base(buf: &mut [u8], at: u64) -> std::io::Result<()> {
        for (i, b) in buf.iter_mut().enumerate() {
            *b = base_byte(at + i as u64);
        }
        Ok(())
    }

    #[test]
    fn writes_land_in_the_overlay_in_whole_blocks_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let size = 10 * BLOCK + 100;
        let mut want: Vec<u8> = (0..size).map(base_byte).collect();
        let o = Overlay::open(dir.path(), "vda", size).unwrap();
        // Inside one block, across blocks, the odd tail of the disk, a whole aligned block.
        for (at, len, fill) in
            [(10u64, 5usize, 0xaa), (BLOCK - 3, 10, 0xbb), (size - 50, 50, 0xcc), (4 * BLOCK, BLOCK as usize, 0xdd)]
        {
            o.write(&vec![fill; len], at, false, &base).unwrap();
            want[at as usize..at as usize + len].fill(fill);
        }
        assert!(o.write(&[1], size, false, &base).is_err(), "past the end");
        let check = |o: &Overlay| {
            let mut got = vec![0u8; size as usize];
            o.read(&mut got, 0, &base).unwrap();
            assert!(got == want);
            // Unaligned reads across written and unwritten blocks.
            let mut part = vec![0u8; 3 * BLOCK as usize];
            o.read(&mut part, BLOCK - 7, &base).unwrap();
            assert!(part[..] == want[(BLOCK - 7) as usize..(4 * BLOCK - 7) as usize]);
        };
        check(&o);
        assert_eq!(o.used(), 4 * BLOCK, "blocks 0, 1, 4 and 10");
        // Unstable writes reach the journal only at the sync (their data first).
        assert_eq!(std::fs::metadata(dir.path().join("vda.journal")).unwrap().len(), 0);
        assert_eq!(o.written_ranges(), [0..2 * BLOCK, 4 * BLOCK..5 * BLOCK, 10 * BLOCK..size]);
        o.sync().unwrap();
        drop(o);
        let again = Overlay::open(dir.path(), "vda", size).unwrap();
        check(&again);
        // A torn last journal record is dropped: its block reads from the base again.
        let mut j = OpenOptions::new().append(true).open(dir.path().join("vda.journal")).unwrap();
        j.write_all(&[0, 0, 0]).unwrap();
        drop(j);
        let torn = Overlay::open(dir.path(), "vda", size).unwrap();
        check(&torn);
    }

    #[test]
    fn a_long_journal_is_rewritten_as_runs_and_still_replays() {
        let dir = tempfile::tempdir().unwrap();
        let size = 4096 * BLOCK;
        let o = Overlay::open(dir.path(), "vda", size).unwrap();
        // Every other block, then the blocks between: 4,096 records (64 KiB); compacted, one.
        for b in (0..4096).step_by(2).chain((1..4096).step_by(2)) {
            o.write(&[b as u8; 10], b * BLOCK, false, &base).unwrap();
        }
        o.sync().unwrap();
        assert_eq!(std::fs::metadata(dir.path().join("vda.journal")).unwrap().len(), 4096 * 16);
        o.compact().unwrap();
        assert_eq!(std::fs::metadata(dir.path().join("vda.journal")).unwrap().len(), 16, "one run");
        o.write(&[7; 5], 3, true, &base).unwrap();
        drop(o);
        let again = Overlay::open(dir.path(), "vda", size).unwrap();
        assert_eq!(again.used(), size);
        let mut b = [0u8; 12];
        again.read(&mut b, 0, &base).unwrap();
        // Block 0: its first write (ten zeros), the stable one over it, then the point's bytes.
        assert_eq!(b, [0, 0, 0, 7, 7, 7, 7, 7, 0, 0, 10, 11]);
    }
}
