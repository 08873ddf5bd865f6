//! Writing a restore point: read the disks' extents (all of them, or only the changed ones
//! against a parent), store them through the dedupe pipeline, then commit the point.
//!
//! Commit order is what makes a kill at any instant harmless: blobs are written and made durable
//! (one syncfs), then the labels, then the manifest by atomic rename. Until that rename there is
//! no point; blobs left by a killed writer are unreferenced and garbage collection removes them.

use crate::disk_map::{extent_count, DiskMap};
use crate::error::{Result, StoreError};
use crate::fslock::{flock, write_atomic, WriterRegistration};
use crate::manifest::{BackupType, Labels, PointDisk, PointStats, RestorePoint};
use crate::store::{validate_key, Store};
use crate::vm::VmDescription;

use dedupe::{BlobId, BlobKind, DedupeError, ExtentData, ExtentOutcome, Pipeline};
use std::fs::File;
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Where a disk's bytes come from: an image file, a block device, an NBD export.
pub trait DiskSource: Send {
    fn size(&self) -> u64;
    /// Fills `buf` from `offset`; never asked to read past `size()`.
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> std::io::Result<()>;
    /// True when the range is known to hold no data, so it need not be read. False when unknown.
    fn is_unallocated(&mut self, _offset: u64, _len: u64) -> std::io::Result<bool> {
        Ok(false)
    }
    fn describe(&self) -> String;
}

/// A raw image file or block device; asks the filesystem (SEEK_DATA) which ranges are allocated.
pub struct FileSource {
    file: File,
    path: PathBuf,
    size: u64,
    seek_data: bool,
}

impl FileSource {
    /// Opens a raw image file or a block device; anything else (a directory, a character
    /// device such as /dev/zero, a fifo, a socket) is refused naming the path and what it is,
    /// before it is opened (opening a fifo would wait for a writer).
    pub fn open(path: &Path) -> Result<FileSource> {
        let meta =
            std::fs::metadata(path).map_err(|e| StoreError::io(format!("opening disk image {}", path.display()), e))?;
        let disk_kind = |m: &std::fs::Metadata| m.is_file() || m.file_type().is_block_device();
        if !disk_kind(&meta) {
            return Err(StoreError::Invalid(format!(
                "{} is {}, not a disk: give a raw image file or a block device",
                path.display(),
                crate::export::kind_of(&meta)
            )));
        }
        let file = File::open(path).map_err(|e| StoreError::io(format!("opening disk image {}", path.display()), e))?;
        let meta = file.metadata().map_err(|e| StoreError::io(format!("reading {}", path.display()), e))?;
        let size = if meta.is_file() {
            meta.len()
        } else {
            use std::io::{Seek, SeekFrom};
            (&file).seek(SeekFrom::End(0)).map_err(|e| StoreError::io(format!("sizing {}", path.display()), e))?
        };
        Ok(FileSource {
            file,
            path: path.to_path_buf(),
            size,
            seek_data: meta.is_file() && meta.blocks() * 512 < meta.len(),
        })
    }
}

impl DiskSource for FileSource {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn is_unallocated(&mut self, offset: u64, len: u64) -> std::io::Result<bool> {
        if !self.seek_data {
            return Ok(false);
        }
        // SAFETY: lseek on our own descriptor; reads are positional (pread), so moving the offset is harmless.
        let next = unsafe { libc::lseek(self.file.as_raw_fd(), offset as libc::off_t, libc::SEEK_DATA) };
        if next < 0 {
            let e = std::io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::ENXIO) => Ok(true),
                Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) => {
                    self.seek_data = false;
                    Ok(false)
                }
                _ => Err(e),
            };
        }
        Ok(next as u64 >= offset + len)
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}

/// A disk held in memory: small images, synthetic disks in benchmarks, tests.
pub struct MemorySource(pub Vec<u8>);

impl DiskSource for MemorySource {
    fn size(&self) -> u64 {
        self.0.len() as u64
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| std::io::ErrorKind::InvalidInput)?;
        let src = self.0.get(start..start + buf.len()).ok_or(std::io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(src);
        Ok(())
    }

    fn describe(&self) -> String {
        format!("{} bytes in memory", self.0.len())
    }
}

pub struct IngestDisk {
    pub key: String,
    pub source: Box<dyn DiskSource>,
    /// Byte ranges written since the parent point; None reads the whole disk.
    pub changed: Option<Vec<Range<u64>>>,
    pub change_id: Option<String>,
    /// Why the source offers no change list (recorded when the disk is read whole).
    pub full_reason: Option<String>,
}

pub struct IngestRequest {
    pub vm: VmDescription,
    pub backup_type: BackupType,
    pub parent: Option<String>,
    pub disks: Vec<IngestDisk>,
    pub labels: Labels,
    pub threads: usize,
    /// What the connector says of the captured state's consistency, kept in the point.
    pub consistency: Option<String>,
}

/// Where an ingest is: bytes of the disk being read, and of the whole backup (every disk).
#[derive(Clone, Debug)]
pub struct IngestProgress {
    pub disk: String,
    pub done_bytes: u64,
    pub total_bytes: u64,
    pub all_done_bytes: u64,
    pub all_total_bytes: u64,
    pub stage: IngestStage,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IngestStage {
    /// Reading disks (the byte counts move).
    Reading,
    /// Every disk read: the new disk maps are read back and the store flushed before the
    /// point is committed. Reported once.
    Checking,
}

/// A restore point held open: a shared lock on its manifest keeps it from being deleted
/// (retention keeps it, saying it is in use) until this is dropped. An ingest holds its parent
/// so; a restore holds the point it reads.
pub struct PointHold {
    pub point: RestorePoint,
    _lock: File,
}

type Parent = PointHold;

impl Store {
    pub fn ingest(&self, req: IngestRequest, progress: &mut dyn FnMut(&IngestProgress)) -> Result<RestorePoint> {
        self.require_key()?;
        validate_key("VM key", &req.vm.key)?;
        let mut keys = std::collections::HashSet::new();
        for d in &req.disks {
            validate_key("disk key", &d.key)?;
            if !keys.insert(d.key.clone()) {
                return Err(StoreError::Invalid(format!("disk {} is given twice", d.key)));
            }
        }
        if req.disks.is_empty() {
            return Err(StoreError::Invalid(format!("VM {}: no disks to back up", req.vm.key)));
        }
        if let Some(until) = req.labels.retain_until {
            crate::store::check_lock_until(until, self.now())?;
        }
        let writer = WriterRegistration::register(self.root())?;
        let chunks = self.chunks();
        let started = self.now();

        let (parent, parent_reason) = match (req.backup_type, &req.parent) {
            (BackupType::Full, _) => (None, None),
            (_, None) => (None, Some("no earlier restore point to compare against".to_string())),
            (_, Some(pid)) => match self.lock_parent(&req.vm.key, pid) {
                Ok(p) => (Some(p), None),
                Err(StoreError::PointNotFound { .. }) => (None, Some(format!("base point {pid} no longer exists"))),
                Err(e @ StoreError::ManifestDamaged { .. }) => (None, Some(format!("base point unreadable: {e}"))),
                Err(e) => return Err(e),
            },
        };

        let es = self.config().extent_size;
        let pipeline = Pipeline::new(chunks, self.config().chunker_params(), es as usize, req.threads);
        let mut disks = Vec::new();
        let mut stats = PointStats::default();
        let mut used_parent = false;
        // Plan every disk first (what to read, and why in full), so progress can speak of the
        // whole backup, not one disk at a time.
        let mut plans = Vec::new();
        for disk in req.disks {
            let size = disk.source.size();
            let count = extent_count(size, es);
            let parent_disk = parent.as_ref().and_then(|p| p.point.disks.iter().find(|d| d.key == disk.key));
            let (map, to_read, full_reason): (DiskMap, Vec<u64>, Option<String>) = match parent_disk {
                _ if req.backup_type == BackupType::Full => (DiskMap::empty(size, es), (0..count).collect(), None),
                None if parent.is_some() => {
                    (DiskMap::empty(size, es), (0..count).collect(), Some("new disk: not in the base point".into()))
                }
                // The connector knows best why it has no change list (e.g. a format without bitmaps).
                None => {
                    (DiskMap::empty(size, es), (0..count).collect(), disk.full_reason.clone().or(parent_reason.clone()))
                }
                Some(pd) if pd.size != size => (
                    DiskMap::empty(size, es),
                    (0..count).collect(),
                    Some(format!("disk resized from {} to {} bytes", pd.size, size)),
                ),
                Some(_) if disk.changed.is_none() => {
                    let why = disk.full_reason.clone().unwrap_or_else(|| "no changed-block list was given".into());
                    (DiskMap::empty(size, es), (0..count).collect(), Some(why))
                }
                Some(pd) => {
                    let map = self.read_disk_map(&req.vm.key, pd)?;
                    let ranges = disk.changed.as_deref().unwrap_or_default();
                    (map, changed_extents(&disk.key, ranges, size, es)?, None)
                }
            };
            let disk_type = if full_reason.is_none() && req.backup_type != BackupType::Full {
                used_parent = true;
                req.backup_type
            } else {
                BackupType::Full
            };
            plans.push((disk, size, count, map, to_read, full_reason, disk_type));
        }
        let all_total_bytes: u64 = plans
            .iter()
            .map(|(_, _, _, map, to_read, _, _)| to_read.iter().map(|&i| map.extent_len(i) as u64).sum::<u64>())
            .sum();
        let mut all_done_bytes = 0u64;
        for (mut disk, size, count, mut map, to_read, full_reason, disk_type) in plans {
            let total_bytes: u64 = to_read.iter().map(|&i| map.extent_len(i) as u64).sum();
            let mut done_bytes = 0u64;
            let key = disk.key.clone();
            let source = &mut disk.source;
            let described = source.describe();
            let map_size = map.size;
            let s = pipeline
                .run(
                    to_read,
                    |i, buf| {
                        let offset = i * es as u64;
                        let len = (map_size - offset).min(es as u64) as usize;
                        let io = |e| DedupeError::io(format!("reading disk {key} ({described}) at offset {offset}"), e);
                        if source.is_unallocated(offset, len as u64).map_err(io)? {
                            return Ok(ExtentData::Hole);
                        }
                        source.read_at(offset, &mut buf[..len]).map_err(io)?;
                        Ok(ExtentData::Data(len))
                    },
                    |i, outcome| {
                        map.extents[i as usize] = match outcome {
                            ExtentOutcome::Hole => BlobId::HOLE,
                            ExtentOutcome::Record(id) => id,
                        };
                        done_bytes += map.extent_len(i) as u64;
                        all_done_bytes += map.extent_len(i) as u64;
                        progress(&IngestProgress {
                            disk: disk.key.clone(),
                            done_bytes,
                            total_bytes,
                            all_done_bytes,
                            all_total_bytes,
                            stage: IngestStage::Reading,
                        });
                        Ok(())
                    },
                )
                .map_err(|e| {
                    StoreError::Invalid(format!("VM {} ({}) disk {}: {e}", req.vm.name, req.vm.key, disk.key))
                })?;
            let (map_id, ins) = chunks.insert(BlobKind::DiskMap, &map.encode())?;
            let allocated_bytes =
                (0..count).filter(|&i| !map.extents[i as usize].is_hole()).map(|i| map.extent_len(i) as u64).sum();
            stats.read_bytes += s.bytes_read;
            stats.zero_bytes += s.zero_bytes;
            stats.new_chunks += s.chunks_new;
            stats.reused_chunks += s.chunks_reused;
            stats.new_plain_bytes += s.plain_bytes_new;
            stats.new_stored_bytes += s.stored_bytes_new + ins.stored_bytes;
            disks.push(PointDisk {
                key: disk.key,
                size,
                extent_size: es,
                map: map_id.to_hex(),
                backup_type: disk_type,
                full_reason,
                change_id: disk.change_id,
                allocated_bytes,
                read_bytes: s.bytes_read,
            });
        }

        progress(&IngestProgress {
            disk: String::new(),
            done_bytes: 0,
            total_bytes: 0,
            all_done_bytes,
            all_total_bytes,
            stage: IngestStage::Checking,
        });
        let point_id = format!("{}-{}", started.format("%Y%m%dT%H%M%S%.6fZ"), crate::fslock::random_hex(4));
        // Each new disk map read back and proven against its id before anything refers to it.
        for d in &disks {
            self.read_disk_map(&point_id, d)?;
        }
        let point = RestorePoint {
            point_id: point_id.clone(),
            store_id: self.config().store_id.clone(),
            vm: req.vm,
            backup_type: if used_parent { req.backup_type } else { BackupType::Full },
            parent: if used_parent { parent.as_ref().map(|p| p.point.point_id.clone()) } else { None },
            started,
            finished: self.now(),
            disks,
            stats,
            consistency: req.consistency,
        };
        self.commit(&point, &req.labels, &writer)?;
        drop(parent);
        Ok(point)
    }

    /// Blobs first (one syncfs), then the labels, then the manifest. A lock is committed with
    /// the point: its intent is recorded before the labels and the point protected before the
    /// intent goes, so a kill anywhere leaves a point shown locked only when it is (protect.rs).
    fn commit(&self, point: &RestorePoint, labels: &Labels, writer: &WriterRegistration) -> Result<()> {
        let vm = &point.vm.key;
        let locked = labels.locked_at(self.now()).is_some();
        let intent = if locked { Some(self.begin_lock_intent(writer, vm, &point.point_id)?) } else { None };
        dedupe::chunk_store::sync_filesystem(self.root())?;
        let dir = self.vm_dir(vm);
        let tmp = &writer.tmp_dir;
        let labels_path = self.labels_path(vm, &point.point_id);
        let manifest = self.manifest_path(vm, &point.point_id);
        // Into the VM's directory, made again should a delete of the VM's last point have
        // removed it meanwhile (it removes the directory when it empties it).
        let put = |path: &Path, bytes: &[u8]| {
            for _ in 0..3 {
                std::fs::create_dir_all(&dir).map_err(|e| StoreError::io(format!("creating {}", dir.display()), e))?;
                match write_atomic(tmp, path, bytes) {
                    Err(StoreError::Io { cause, .. })
                        if cause.kind() == std::io::ErrorKind::NotFound && !dir.exists() => {}
                    other => return other,
                }
            }
            write_atomic(tmp, path, bytes)
        };
        if *labels != Labels::default() {
            put(&labels_path, &serde_json::to_vec_pretty(labels).expect("labels serialise"))?;
        }
        put(&manifest, &point.encode())?;
        if let Some(intent) = intent {
            self.protect_point(vm, point, &mut std::collections::HashSet::new())?;
            intent.done();
        }
        Ok(())
    }

    /// Holds a point (see [`PointHold`]).
    pub fn hold_point(&self, vm: &str, point: &str) -> Result<PointHold> {
        self.lock_parent(vm, point)
    }

    fn lock_parent(&self, vm: &str, point: &str) -> Result<Parent> {
        validate_key("point id", point)?;
        let path = self.manifest_path(vm, point);
        let file = File::open(&path).map_err(|e| StoreError::manifest_io(point, &path, e))?;
        flock(&file, false, false).map_err(|e| StoreError::io(format!("locking {}", path.display()), e))?;
        // A delete may have unlinked the file between our open and our lock.
        let held = file.metadata().map_err(|e| StoreError::io(format!("reading {}", path.display()), e))?;
        match std::fs::metadata(&path) {
            Ok(now) if now.ino() == held.ino() && now.dev() == held.dev() => {}
            _ => return Err(StoreError::PointNotFound { point: point.into() }),
        }
        let mut bytes = Vec::new();
        use std::io::Read;
        (&file).read_to_end(&mut bytes).map_err(|e| StoreError::io(format!("reading {}", path.display()), e))?;
        let p = self.decode_point(point, &path, &bytes)?;
        Ok(Parent { point: p, _lock: file })
    }

    pub fn read_disk_map(&self, point: &str, disk: &PointDisk) -> Result<DiskMap> {
        let id = BlobId::from_hex(&disk.map)
            .ok_or_else(|| StoreError::Invalid(format!("point {point} disk {}: map id is not hex", disk.key)))?;
        let bytes = self
            .chunks()
            .read(&id, BlobKind::DiskMap)
            .map_err(|cause| StoreError::PointBlob { point: point.into(), cause })?;
        let map = DiskMap::decode(&id, &bytes).map_err(|cause| StoreError::PointBlob { point: point.into(), cause })?;
        if map.size != disk.size || map.extent_size != disk.extent_size {
            return Err(StoreError::Invalid(format!(
                "point {point} disk {}: map does not match the manifest's size",
                disk.key
            )));
        }
        Ok(map)
    }
}

/// The extents a list of changed byte ranges touches, sorted and unique.
fn changed_extents(disk: &str, ranges: &[Range<u64>], size: u64, es: u32) -> Result<Vec<u64>> {
    let mut out = Vec::new();
    for r in ranges {
        if r.start > r.end || r.end > size {
            return Err(StoreError::Invalid(format!(
                "disk {disk}: changed range {}..{} lies outside the disk ({size} bytes)",
                r.start, r.end
            )));
        }
        if r.start == r.end {
            continue;
        }
        out.extend(r.start / es as u64..=(r.end - 1) / es as u64);
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changed_ranges_map_to_extents() {
        let es = 1 << 20;
        let got = changed_extents("d", &[0..1, (1 << 20) - 1..(1 << 20) + 1, 5 << 20..5 << 20], 8 << 20, es).unwrap();
        assert_eq!(got, vec![0, 1]);
        let past_the_end = 0..(9 << 20);
        assert!(changed_extents("d", std::slice::from_ref(&past_the_end), 8 << 20, es).is_err());
    }
}
