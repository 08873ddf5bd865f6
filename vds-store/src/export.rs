//! Writing a disk of a restore point out of the store, onto a raw image file or a block device.
//! Nothing here reports success for bytes it did not read from the store and check. A file is
//! written beside its target and renamed over it only when whole, so a failed export leaves the
//! target as it was; a device is written in place after its size is checked, and a failure says
//! that it is partly written and names the first range that could not be read. Other kinds of
//! target (directories, character devices, fifos, sockets) are refused before anything is written.

use crate::error::{Result, StoreError};
use crate::human_bytes;
use crate::reader::{DiskReader, ExportStats};
use std::fs::{self, File, OpenOptions};
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// BLKSSZGET: a block device's logical sector size (int).
const BLKSSZGET: libc::c_ulong = 0x1268;
/// BLKZEROOUT: zero a byte range [start, length] of a block device (falls back to writing zeroes).
const BLKZEROOUT: libc::c_ulong = 0x127f;
/// Zeroes written by hand (unaligned edges, devices that can zero nothing) go in pieces this big.
const ZERO_PIECE: usize = 1 << 20;

#[derive(Clone, Copy, Debug)]
pub struct ExportOptions<'a> {
    pub threads: usize,
    /// fsync before reporting success (a file: before it replaces the target).
    pub sync: bool,
    /// Set (by a signal handler, say) to stop the export; it then fails and cleans up.
    pub cancel: Option<&'a AtomicBool>,
}

/// What an export wrote onto.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExportTarget {
    /// A new regular file.
    NewFile,
    /// A regular file that existed and was replaced whole.
    ReplacedFile,
    /// A block device written in place; `size` is the device's, at least the disk's.
    Device { size: u64 },
}

#[derive(Clone, Copy, Debug)]
pub struct ExportReport {
    pub stats: ExportStats,
    pub target: ExportTarget,
}

impl DiskReader {
    /// Writes this disk onto `out`: a regular file (new, or replaced whole only on success) or a
    /// block device at least as large as the disk (written in place: data where the point has
    /// data, zeroes where it has holes). `progress(done, total)` follows the disk's bytes.
    pub fn export_to(
        &self,
        out: &Path,
        opts: &ExportOptions,
        progress: &(dyn Fn(u64, u64) + Sync),
    ) -> Result<ExportReport> {
        let refuse = |why: String| StoreError::ExportTarget { path: out.to_path_buf(), why };
        let meta = match fs::metadata(out) {
            Ok(m) => Some(m),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(StoreError::io(format!("looking at {}", out.display()), e)),
        };
        let kind = meta.as_ref().map(|m| m.file_type());
        match kind {
            None => self.export_file(out, None, opts, progress),
            Some(t) if t.is_file() => {
                // Through a symlink: the file it names is replaced, the link stays.
                let real =
                    fs::canonicalize(out).map_err(|e| StoreError::io(format!("resolving {}", out.display()), e))?;
                self.export_file(&real, meta, opts, progress)
            }
            Some(t) if t.is_block_device() => self.export_device(out, opts, progress),
            Some(t) => Err(refuse(format!(
                "it is {}; an export writes a regular file (new or replaced) or a block device",
                describe_kind(&t)
            ))),
        }
    }

    fn export_file(
        &self,
        target: &Path,
        existing: Option<fs::Metadata>,
        opts: &ExportOptions,
        progress: &(dyn Fn(u64, u64) + Sync),
    ) -> Result<ExportReport> {
        let dir = match target.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| StoreError::ExportTarget { path: target.to_path_buf(), why: "it names no file".into() })?;
        let staging = dir.join(format!(".{name}.holdfast-export-{}", crate::fslock::random_hex(4)));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(existing.as_ref().map_or(0o644, |m| m.permissions().mode() & 0o7777))
            .open(&staging)
            .map_err(|e| StoreError::io(format!("creating {} beside {}", staging.display(), target.display()), e))?;
        let result = (|| {
            let stats = self.fill_file(&file, opts, progress)?;
            if opts.sync {
                file.sync_all().map_err(|e| StoreError::io(format!("syncing {}", staging.display()), e))?;
            }
            fs::rename(&staging, target)
                .map_err(|e| StoreError::io(format!("renaming {} over {}", staging.display(), target.display()), e))?;
            Ok(stats)
        })();
        let stats = match result {
            Ok(s) => s,
            Err(cause) => {
                let _ = fs::remove_file(&staging);
                return Err(StoreError::ExportFailed {
                    path: target.to_path_buf(),
                    left: if existing.is_some() { "is unchanged" } else { "was not created" },
                    cause: Box::new(cause),
                });
            }
        };
        if opts.sync {
            // The rename itself must survive a power loss too.
            File::open(&dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| StoreError::io(format!("syncing directory {}", dir.display()), e))?;
        }
        let target = if existing.is_some() { ExportTarget::ReplacedFile } else { ExportTarget::NewFile };
        Ok(ExportReport { stats, target })
    }

    /// Fills `file`, new and empty, as a sparse image of the disk.
    pub(crate) fn fill_file(
        &self,
        file: &File,
        opts: &ExportOptions,
        progress: &(dyn Fn(u64, u64) + Sync),
    ) -> Result<ExportStats> {
        file.set_len(self.size()).map_err(|e| StoreError::io("sizing the export file", e))?;
        self.copy_to(opts, progress, &|offset, data| file.write_all_at(data, offset))
    }

    /// `copy_out` with progress over the whole disk and the cancel flag looked at before every write.
    fn copy_to(
        &self,
        opts: &ExportOptions,
        progress: &(dyn Fn(u64, u64) + Sync),
        write: &(dyn Fn(u64, &[u8]) -> std::io::Result<()> + Sync),
    ) -> Result<ExportStats> {
        let total = self.size();
        let done = AtomicU64::new(0);
        self.copy_out(
            opts.threads,
            &|offset, data| {
                opts.check_stop()?;
                write(offset, data)
            },
            &|len| {
                opts.check_stop()?;
                progress(done.fetch_add(len, Ordering::Relaxed) + len, total);
                Ok(())
            },
        )
    }

    fn export_device(
        &self,
        path: &Path,
        opts: &ExportOptions,
        progress: &(dyn Fn(u64, u64) + Sync),
    ) -> Result<ExportReport> {
        let refuse = |why: String| StoreError::ExportTarget { path: path.to_path_buf(), why };
        // O_EXCL on a block device: refused while it is mounted or otherwise held.
        let dev = match OpenOptions::new().write(true).custom_flags(libc::O_EXCL).open(path) {
            Ok(f) => f,
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                return Err(refuse("the device is in use (mounted, or held by another program)".into()))
            }
            Err(e) => return Err(StoreError::io(format!("opening block device {}", path.display()), e)),
        };
        let size = device_size(&dev).map_err(|e| StoreError::io(format!("sizing {}", path.display()), e))?;
        let disk = self.size();
        if size < disk {
            return Err(refuse(format!(
                "the device is {size} bytes ({}), smaller than the disk's {disk} bytes ({})",
                human_bytes(size),
                human_bytes(disk)
            )));
        }
        let sector =
            sector_size(&dev).map_err(|e| StoreError::io(format!("reading {}'s sector size", path.display()), e))?;
        let partly = |cause: StoreError| StoreError::PartlyWritten { path: path.to_path_buf(), cause: Box::new(cause) };
        // What the point holds as holes becomes zeroes first; then the data goes on top.
        let zero_ranges = self.hole_ranges()?;
        for r in &zero_ranges {
            opts.check_stop().map_err(|e| partly(StoreError::io("zeroing the point's holes", e)))?;
            zero_range(&dev, r.clone(), sector).map_err(|e| {
                partly(StoreError::io(format!("zeroing bytes {}..{} of {}", r.start, r.end, path.display()), e))
            })?;
        }
        let stats = self.copy_to(opts, progress, &|offset, data| dev.write_all_at(data, offset)).map_err(partly)?;
        if opts.sync {
            dev.sync_all().map_err(|e| partly(StoreError::io(format!("syncing {}", path.display()), e)))?;
        }
        Ok(ExportReport { stats, target: ExportTarget::Device { size } })
    }

    /// The disk's byte ranges that hold no data (hole extents, all-zero chunks), merged, in order.
    /// Read from the disk map and extent records alone.
    pub fn hole_ranges(&self) -> Result<Vec<Range<u64>>> {
        let map = self.map();
        let es = map.extent_size as u64;
        let mut out: Vec<Range<u64>> = Vec::new();
        let mut push = |r: Range<u64>| {
            if r.is_empty() {
                return;
            }
            match out.last_mut() {
                Some(last) if last.end == r.start => last.end = r.end,
                _ => out.push(r),
            }
        };
        for i in 0..map.extents.len() as u64 {
            let (start, end) = (i * es, i * es + map.extent_len(i) as u64);
            let mut pos = start;
            for d in self.data_ranges(i)? {
                push(pos..d.start);
                pos = d.end;
            }
            push(pos..end);
        }
        Ok(out)
    }
}

impl ExportOptions<'_> {
    /// Fails once the cancel flag is set.
    fn check_stop(&self) -> std::io::Result<()> {
        match self.cancel {
            Some(c) if c.load(Ordering::Relaxed) => {
                Err(std::io::Error::new(std::io::ErrorKind::Interrupted, "stopped by a signal"))
            }
            _ => Ok(()),
        }
    }
}

fn describe_kind(t: &fs::FileType) -> &'static str {
    if t.is_dir() {
        "a directory"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_fifo() {
        "a fifo"
    } else if t.is_socket() {
        "a socket"
    } else {
        "neither a regular file nor a block device"
    }
}

/// Names what a path is when it cannot hold a disk: for error messages of every reader and writer.
pub fn kind_of(meta: &fs::Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_file() {
        "a regular file"
    } else if t.is_block_device() {
        "a block device"
    } else {
        describe_kind(&t)
    }
}

fn device_size(dev: &File) -> std::io::Result<u64> {
    use std::io::{Seek, SeekFrom};
    let mut d = dev;
    let size = d.seek(SeekFrom::End(0))?;
    d.seek(SeekFrom::Start(0))?;
    Ok(size)
}

fn sector_size(dev: &File) -> std::io::Result<u64> {
    let mut n: libc::c_int = 0;
    // SAFETY: BLKSSZGET writes one int through the pointer we pass, on a descriptor we own.
    if unsafe { libc::ioctl(dev.as_raw_fd(), BLKSSZGET as _, &mut n) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(n.max(512) as u64)
}

/// Makes `r` of the device (or file) read as zeroes: the sector-aligned middle discarded with a
/// zeroing guarantee where it can (fallocate punch-hole), else zeroed by the kernel (BLKZEROOUT),
/// the unaligned edges (and anything the kernel refuses) written as zeroes.
pub fn zero_range(dev: &File, r: Range<u64>, sector: u64) -> std::io::Result<()> {
    let (a, b) = (r.start.div_ceil(sector) * sector, r.end / sector * sector);
    if a >= b {
        return write_zeroes(dev, r);
    }
    write_zeroes(dev, r.start..a)?;
    write_zeroes(dev, b..r.end)?;
    let fd = dev.as_raw_fd();
    let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    // SAFETY: fallocate on a descriptor we own; the range lies within the device.
    if unsafe { libc::fallocate(fd, mode, a as libc::off_t, (b - a) as libc::off_t) } == 0 {
        return Ok(());
    }
    let range: [u64; 2] = [a, b - a];
    // SAFETY: BLKZEROOUT reads two u64 (start, length) through the pointer we pass.
    if unsafe { libc::ioctl(fd, BLKZEROOUT as _, range.as_ptr()) } == 0 {
        return Ok(());
    }
    write_zeroes(dev, a..b)
}

fn write_zeroes(dev: &File, r: Range<u64>) -> std::io::Result<()> {
    let zeroes = vec![0u8; ZERO_PIECE.min((r.end - r.start) as usize)];
    let mut pos = r.start;
    while pos < r.end {
        let n = (zeroes.len() as u64).min(r.end - pos) as usize;
        dev.write_all_at(&zeroes[..n], pos)?;
        pos += n as u64;
    }
    Ok(())
}
