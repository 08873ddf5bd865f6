//! The chunk store: one file per blob under `blobs/<first 3 hex digits>/<64 hex digits>`. A fan-out
//! directory is made the first time a blob needs it (at most 4096 times in a store's life).
//!
//! Writes go to a staging file beside the final name and are renamed into place, so a blob under
//! its final name is always whole. They are not fsynced one by one: the caller makes them durable with one
//! `sync_filesystem` before it commits anything that refers to them.
//!
//! A blob's mtime is "last referenced": a writer that finds a blob already present touches it, and
//! garbage collection touches every blob it marks, then sweeps blobs older than its cutoff. The
//! sweep renames a candidate aside and re-checks its mtime before deleting it, so a writer that
//! touched it in between keeps it (and a writer that finds it gone writes it again). A touch only
//! counts when the blob is still under its name afterwards (see `touch`).

use crate::codec::{BlobCodec, BlobKind};
use crate::error::DedupeError;
use crate::id::BlobId;
use std::fs;
use std::io::{ErrorKind, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

#[derive(Clone)]
pub struct ChunkStore {
    blobs: PathBuf,
    tmp: PathBuf,
    codec: BlobCodec,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Inserted {
    pub new: bool,
    /// Bytes the blob takes on disk when it was new, else 0.
    pub stored_bytes: u64,
}

/// What `presence` found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Presence {
    Touched,
    /// Present with the immutable attribute (chattr +i): its time was left as it was.
    Immutable,
    Missing,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SweepStats {
    pub removed: u64,
    pub removed_bytes: u64,
    pub kept: u64,
    pub kept_bytes: u64,
    /// Blobs older than the cutoff that were kept because they are immutable.
    pub immutable: Vec<BlobId>,
}

static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// Hex digits of a blob id that name its directory: 4096 directories keep a store of 100 million
/// chunks at about 25,000 files per directory (measured: see docs/BENCHMARKS.md).
pub const FANOUT_DIGITS: usize = 3;

/// Name prefix of a blob being written; one left by a killed writer is removed by the sweep.
const STAGING_PREFIX: &str = ".tmp.";

impl ChunkStore {
    /// `blobs` holds the fan-out directories; `tmp` is where garbage collection moves a blob it
    /// is about to delete (same filesystem, so renames are atomic).
    pub fn new(blobs: PathBuf, tmp: PathBuf, codec: BlobCodec) -> ChunkStore {
        ChunkStore { blobs, tmp, codec }
    }

    pub fn codec(&self) -> &BlobCodec {
        &self.codec
    }

    pub fn path(&self, id: &BlobId) -> PathBuf {
        let hex = id.to_hex();
        self.blobs.join(&hex[..FANOUT_DIGITS]).join(hex)
    }

    /// Marks a blob as referenced now. Ok(false) when it does not exist.
    pub fn touch(&self, id: &BlobId) -> Result<bool, DedupeError> {
        Ok(self.presence(id)? != Presence::Missing)
    }

    /// Marks a blob as referenced now, telling an immutable blob (whose time cannot change) from
    /// a touched one.
    ///
    /// The timestamp update can land on an inode the sweep has already renamed aside (it looked the
    /// path up first) and then deleted, so the blob is only reported present when the path still
    /// names a file after the update: any later sweep of that file re-checks and sees our time.
    /// An immutable blob needs no time: the sweep cannot move it, and whoever clears the
    /// attribute touches it at once (`release`).
    pub fn presence(&self, id: &BlobId) -> Result<Presence, DedupeError> {
        let path = self.path(id);
        match touch_path(&path).and_then(|()| fs::symlink_metadata(&path).map(|_| ())) {
            Ok(()) => Ok(Presence::Touched),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(Presence::Missing),
            Err(e) if e.raw_os_error() == Some(libc::EPERM) && is_immutable(&path) => Ok(Presence::Immutable),
            Err(e) => Err(DedupeError::io(format!("touching blob {}", path.display()), e)),
        }
    }

    /// Sets or clears a blob's immutable attribute; false where the filesystem or our
    /// privileges do not allow it (or the blob is gone).
    pub fn set_immutable(&self, id: &BlobId, on: bool) -> bool {
        set_immutable(&self.path(id), on)
    }

    pub fn is_immutable(&self, id: &BlobId) -> bool {
        is_immutable(&self.path(id))
    }

    /// Clears a blob's immutable attribute and marks it referenced now, in that order: a writer
    /// that found it immutable (and so could not touch it) since started is covered by this
    /// time, so a sweep cannot take the blob from under that writer's backup.
    pub fn release(&self, id: &BlobId) -> Result<(), DedupeError> {
        let path = self.path(id);
        if !set_immutable(&path, false) && is_immutable(&path) {
            return Err(DedupeError::Invalid(format!("blob {id}: its immutable attribute cannot be cleared")));
        }
        self.touch(id).map(|_| ())
    }

    /// Stores `plain` as a blob unless it is present already (then it is only touched).
    pub fn insert(&self, kind: BlobKind, plain: &[u8]) -> Result<(BlobId, Inserted), DedupeError> {
        let id = self.codec.id(plain);
        Ok((id, self.insert_with_id(kind, &id, plain)?))
    }

    pub fn insert_with_id(&self, kind: BlobKind, id: &BlobId, plain: &[u8]) -> Result<Inserted, DedupeError> {
        if self.touch(id)? {
            return Ok(Inserted { new: false, stored_bytes: 0 });
        }
        let encoded = self.codec.encode(kind, id, plain)?;
        // Staged beside its final name: inodes come from the fan-out directory's own group and
        // the rename stays within one directory (one staging directory for all made every
        // create contend on the same inode bitmap; see docs/BENCHMARKS.md).
        let dest = self.path(id);
        let tmp = dest.with_file_name(format!(
            "{STAGING_PREFIX}{}.{}.{}",
            &id.to_hex()[..16],
            std::process::id(),
            TMP_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let result = write_file(&tmp, &encoded).and_then(|()| fs::rename(&tmp, &dest));
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result.map_err(|e| DedupeError::io(format!("writing blob {id} into {}", self.blobs.display()), e))?;
        Ok(Inserted { new: true, stored_bytes: encoded.len() as u64 })
    }

    /// The blob's raw bytes as stored.
    pub fn read_raw(&self, id: &BlobId) -> Result<Vec<u8>, DedupeError> {
        let path = self.path(id);
        fs::read(&path).map_err(|e| {
            if e.kind() == ErrorKind::NotFound {
                DedupeError::Missing { id: *id, path: path.clone() }
            } else {
                DedupeError::io(format!("reading blob {}", path.display()), e)
            }
        })
    }

    /// The blob's plaintext, proven against its id.
    pub fn read(&self, id: &BlobId, kind: BlobKind) -> Result<Vec<u8>, DedupeError> {
        let raw = self.read_raw(id)?;
        self.codec.decode(id, kind, &raw)
    }

    pub fn exists(&self, id: &BlobId) -> bool {
        self.path(id).exists()
    }

    /// Moves a damaged blob aside (to `<name>.bad`) so the next backup that needs it stores it
    /// again instead of deduplicating against the damaged copy.
    /// A damaged blob of a locked point is moved too: its bytes protect nothing.
    pub fn quarantine(&self, id: &BlobId) -> Result<(), DedupeError> {
        let path = self.path(id);
        let bad = path.with_extension("bad");
        let io = |e| DedupeError::io(format!("moving damaged blob {} aside", path.display()), e);
        match fs::rename(&path, &bad) {
            Err(e) if e.raw_os_error() == Some(libc::EPERM) && set_immutable(&path, false) => {
                fs::rename(&path, &bad).map_err(io)
            }
            other => other.map_err(io),
        }
    }

    /// Calls `f` for every blob file (id, size, mtime), fan-out directory by directory.
    pub fn for_each(
        &self,
        mut f: impl FnMut(BlobId, u64, SystemTime) -> Result<(), DedupeError>,
    ) -> Result<(), DedupeError> {
        self.walk(|entry| match entry {
            Entry::Blob { id, size, mtime } => f(id, size, mtime),
            Entry::Staging { .. } => Ok(()),
        })
    }

    fn walk(&self, mut f: impl FnMut(Entry) -> Result<(), DedupeError>) -> Result<(), DedupeError> {
        let io = |what: &Path, e| DedupeError::io(format!("listing {}", what.display()), e);
        let top = match fs::read_dir(&self.blobs) {
            Ok(t) => t,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io(&self.blobs, e)),
        };
        let mut dirs: Vec<PathBuf> = Vec::new();
        for entry in top {
            let entry = entry.map_err(|e| io(&self.blobs, e))?;
            if entry.file_name().len() == FANOUT_DIGITS {
                dirs.push(entry.path());
            }
        }
        dirs.sort();
        for dir in dirs {
            for entry in fs::read_dir(&dir).map_err(|e| io(&dir, e))? {
                let entry = entry.map_err(|e| io(&dir, e))?;
                let name = entry.file_name();
                let staging = name.as_bytes().starts_with(STAGING_PREFIX.as_bytes());
                let id = std::str::from_utf8(name.as_bytes()).ok().filter(|n| n.len() == 64).and_then(BlobId::from_hex);
                if id.is_none() && !staging {
                    continue;
                }
                let meta = match entry.metadata() {
                    Ok(m) => m,
                    Err(e) if e.kind() == ErrorKind::NotFound => continue,
                    Err(e) => return Err(io(&entry.path(), e)),
                };
                let mtime = meta.modified().map_err(|e| io(&entry.path(), e))?;
                match id {
                    Some(id) => f(Entry::Blob { id, size: meta.len(), mtime })?,
                    None => f(Entry::Staging { path: entry.path(), mtime })?,
                }
            }
        }
        Ok(())
    }

    /// Deletes every blob whose mtime is older than `cutoff` (dry run: only counts them).
    /// Immutable blobs are kept and listed (see `release`).
    pub fn sweep(&self, cutoff: SystemTime, dry_run: bool) -> Result<SweepStats, DedupeError> {
        let mut stats = SweepStats::default();
        let trash = self.tmp.join("gc-trash");
        self.walk(|entry| {
            let (id, size, mtime) = match entry {
                Entry::Blob { id, size, mtime } => (id, size, mtime),
                Entry::Staging { path, mtime } => {
                    // A blob a killed writer never finished.
                    if mtime < cutoff && !dry_run {
                        let _ = fs::remove_file(path);
                    }
                    return Ok(());
                }
            };
            if mtime >= cutoff {
                stats.kept += 1;
                stats.kept_bytes += size;
                return Ok(());
            }
            if dry_run {
                stats.removed += 1;
                stats.removed_bytes += size;
                return Ok(());
            }
            let path = self.path(&id);
            match fs::rename(&path, &trash) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EPERM) && is_immutable(&path) => {
                    stats.kept += 1;
                    stats.kept_bytes += size;
                    stats.immutable.push(id);
                    return Ok(());
                }
                Err(e) => return Err(DedupeError::io(format!("sweeping {}", path.display()), e)),
            }
            let touched = fs::metadata(&trash).and_then(|m| m.modified()).map(|m| m >= cutoff).unwrap_or(false);
            if touched {
                // A writer referenced it between our listing and the rename: put it back.
                fs::rename(&trash, &path).map_err(|e| DedupeError::io(format!("restoring {}", path.display()), e))?;
                stats.kept += 1;
                stats.kept_bytes += size;
            } else {
                fs::remove_file(&trash).map_err(|e| DedupeError::io(format!("deleting {}", path.display()), e))?;
                stats.removed += 1;
                stats.removed_bytes += size;
            }
            Ok(())
        })?;
        Ok(stats)
    }
}

enum Entry {
    Blob { id: BlobId, size: u64, mtime: SystemTime },
    Staging { path: PathBuf, mtime: SystemTime },
}

fn write_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = match fs::File::create(path) {
        // The fan-out directory's first blob.
        Err(e) if e.kind() == ErrorKind::NotFound => {
            fs::create_dir_all(path.parent().expect("blob path has a parent"))?;
            fs::File::create(path)?
        }
        other => other?,
    };
    f.write_all(bytes)?;
    // Start writeback now, without waiting for it: the final sync_filesystem then finds most
    // of a backup already on disk instead of writing all of it at the end (the page cache
    // would otherwise hold hundreds of megabytes until then). Only a hint: failure is harmless.
    // SAFETY: `f` is an open file descriptor; offset 0 and length 0 mean the whole file.
    unsafe { libc::sync_file_range(f.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
    Ok(())
}

fn touch_path(path: &Path) -> std::io::Result<()> {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|_| ErrorKind::InvalidInput)?;
    let times = [
        libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_NOW },
        libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_NOW },
    ];
    // SAFETY: `c` is a valid NUL-terminated path and `times` points at two timespecs.
    let rc = unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

const FS_IOC_GETFLAGS: libc::c_ulong = 0x8008_6601;
const FS_IOC_SETFLAGS: libc::c_ulong = 0x4008_6602;
const FS_IMMUTABLE_FL: libc::c_int = 0x10;

fn file_flags(f: &fs::File) -> Option<libc::c_int> {
    let mut flags: libc::c_int = 0;
    // SAFETY: FS_IOC_GETFLAGS writes one int through the pointer we pass, on a descriptor we own.
    (unsafe { libc::ioctl(f.as_raw_fd(), FS_IOC_GETFLAGS as _, &mut flags) } == 0).then_some(flags)
}

/// Sets or clears the immutable attribute (chattr +i) where the filesystem and our privileges
/// allow it. Returns whether the attribute is now as asked.
pub fn set_immutable(path: &Path, on: bool) -> bool {
    let Ok(f) = fs::File::open(path) else {
        return false;
    };
    let Some(flags) = file_flags(&f) else { return false };
    let want = if on { flags | FS_IMMUTABLE_FL } else { flags & !FS_IMMUTABLE_FL };
    // SAFETY: FS_IOC_SETFLAGS reads one int through the pointer we pass.
    want == flags || unsafe { libc::ioctl(f.as_raw_fd(), FS_IOC_SETFLAGS as _, &want) } == 0
}

/// Whether the file has the immutable attribute (false when it cannot be read).
pub fn is_immutable(path: &Path) -> bool {
    fs::File::open(path).ok().and_then(|f| file_flags(&f)).is_some_and(|f| f & FS_IMMUTABLE_FL != 0)
}

/// Flushes every file of the filesystem holding `dir` to stable storage (syncfs): one call makes
/// all blobs a backup wrote durable before its manifest is committed.
pub fn sync_filesystem(dir: &Path) -> Result<(), DedupeError> {
    let f = fs::File::open(dir).map_err(|e| DedupeError::io(format!("opening {} to sync it", dir.display()), e))?;
    // SAFETY: syncfs takes a valid open file descriptor, which `f` holds for the call.
    if unsafe { libc::syncfs(f.as_raw_fd()) } != 0 {
        return Err(DedupeError::io(
            format!("syncing the filesystem of {}", dir.display()),
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Compression;
    use std::time::Duration;

    fn store(dir: &Path) -> ChunkStore {
        fs::create_dir_all(dir.join("tmp")).unwrap();
        ChunkStore::new(dir.join("blobs"), dir.join("tmp"), BlobCodec::plain(Compression::Zstd { level: 3 }))
    }

    #[test]
    fn insert_dedupes_and_reads_back() {
        let d = tempfile::tempdir().unwrap();
        let s = store(d.path());
        let (id, a) = s.insert(BlobKind::Chunk, b"hello hello hello").unwrap();
        assert!(a.new && a.stored_bytes > 0);
        let (id2, b) = s.insert(BlobKind::Chunk, b"hello hello hello").unwrap();
        assert_eq!(id, id2);
        assert!(!b.new);
        assert_eq!(s.read(&id, BlobKind::Chunk).unwrap(), b"hello hello hello");
        let mut n = 0;
        s.for_each(|_, _, _| {
            n += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(n, 1);
    }

    /// A writer that finds a blob present while a sweep removes it must either keep it (its touch
    /// reached the blob before the sweep's re-check) or write it again. Touching by path alone
    /// lost blobs when the sweep renamed and deleted one between the writer's path lookup and its
    /// timestamp update; the window is microseconds wide, so many blobs race in many rounds.
    #[test]
    fn a_blob_a_writer_dedupes_against_survives_a_concurrent_sweep() {
        let d = tempfile::tempdir().unwrap();
        let s = store(d.path());
        let blobs: Vec<Vec<u8>> = (0..400u32).map(|i| format!("blob {i}").into_bytes()).collect();
        let ids: Vec<BlobId> = blobs.iter().map(|b| s.insert(BlobKind::Chunk, b).unwrap().0).collect();
        for round in 0..60 {
            let old = SystemTime::now() - Duration::from_secs(3600);
            for id in &ids {
                fs::File::options().write(true).open(s.path(id)).unwrap().set_modified(old).unwrap();
            }
            // Everything the writer touches from here on is younger than the cutoff.
            let cutoff = SystemTime::now() - Duration::from_millis(100);
            let barrier = std::sync::Barrier::new(2);
            std::thread::scope(|sc| {
                sc.spawn(|| {
                    barrier.wait();
                    for b in blobs.iter().rev() {
                        s.insert(BlobKind::Chunk, b).unwrap();
                    }
                });
                barrier.wait();
                s.sweep(cutoff, false).unwrap();
            });
            for id in &ids {
                assert!(s.exists(id), "round {round}: blob {id} was deduplicated against, then swept");
            }
        }
    }

    #[test]
    fn sweep_removes_only_blobs_older_than_the_cutoff() {
        let d = tempfile::tempdir().unwrap();
        let s = store(d.path());
        let (old, _) = s.insert(BlobKind::Chunk, b"old").unwrap();
        std::thread::sleep(Duration::from_millis(30));
        let cutoff = SystemTime::now();
        std::thread::sleep(Duration::from_millis(30));
        let (young, _) = s.insert(BlobKind::Chunk, b"young").unwrap();
        let dry = s.sweep(cutoff, true).unwrap();
        assert_eq!((dry.removed, dry.kept), (1, 1));
        assert!(s.exists(&old));
        let real = s.sweep(cutoff, false).unwrap();
        assert_eq!((real.removed, real.kept), (1, 1));
        assert!(!s.exists(&old) && s.exists(&young));
        assert!(matches!(s.read(&old, BlobKind::Chunk), Err(DedupeError::Missing { .. })));
    }
}
