//! Garbage collection, mark and sweep, safe while backups write.
//!
//! Mark: every blob reachable from a committed manifest is touched (mtime = now). Sweep: blobs
//! older than the cutoff go. The cutoff is the earlier of the GC's start and the start of the
//! oldest writer running then, less a margin for the filesystem's coarse clock, so a chunk that a
//! running backup wrote or deduplicated against (writers touch what they reuse) is never swept.
//! Points committed while the mark runs are picked up by listing again until nothing is new; a
//! backup's base point cannot be deleted while the backup runs (it holds a shared lock on it).

use crate::disk_map::DiskMap;
use crate::error::{Result, StoreError};
use crate::fslock::{active_writers, flock};
use crate::store::Store;
use dedupe::{BlobId, BlobKind, DedupeError, ExtentRecord};
use serde::Serialize;
use std::collections::HashSet;
use std::fs::{self, OpenOptions};
use std::time::{Duration, SystemTime};

/// Filesystem timestamps come from a coarse clock that may lag the system clock slightly.
pub const CLOCK_MARGIN: Duration = Duration::from_secs(2);

#[derive(Clone, Debug, Default, Serialize)]
pub struct GcReport {
    pub dry_run: bool,
    pub points: u64,
    pub marked_blobs: u64,
    /// Referenced blobs that were not found: (point, blob).
    pub missing: Vec<(String, String)>,
    pub removed_blobs: u64,
    pub removed_bytes: u64,
    pub kept_blobs: u64,
    pub kept_bytes: u64,
}

impl Store {
    /// Dry run: reports what would be removed and touches nothing.
    pub fn gc(&self, dry_run: bool) -> Result<GcReport> {
        let lock_path = self.root().join("locks").join("gc");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| StoreError::io(format!("opening {}", lock_path.display()), e))?;
        if !flock(&lock, true, true).map_err(|e| StoreError::io(format!("locking {}", lock_path.display()), e))? {
            return Err(StoreError::GcRunning);
        }
        let start = SystemTime::now();
        let oldest_writer = active_writers(self.root())?.into_iter().min().unwrap_or(start);
        let cutoff = start.min(oldest_writer) - CLOCK_MARGIN;

        let mut report = GcReport { dry_run, ..Default::default() };
        let mut reachable: HashSet<BlobId> = HashSet::new();
        let mut records_seen: HashSet<BlobId> = HashSet::new();
        let mut points_seen: HashSet<(String, String)> = HashSet::new();
        loop {
            let (points, damaged) = self.scan(None)?;
            if let Some((vm, point, e)) = damaged.into_iter().next() {
                return Err(StoreError::Invalid(format!(
                    "garbage collection stopped before removing anything: VM {vm} point {point} cannot be read ({e}), \
                     so what it references is unknown; delete that point or restore its manifest first"
                )));
            }
            let mut new = 0;
            for p in points {
                if !points_seen.insert((p.vm.clone(), p.point_id.clone())) {
                    continue;
                }
                new += 1;
                for disk in &p.manifest.disks {
                    self.mark_disk(&p.point_id, disk, dry_run, &mut reachable, &mut records_seen, &mut report)?;
                }
            }
            if new == 0 {
                break;
            }
        }
        report.points = points_seen.len() as u64;

        let chunks = self.chunks();
        if dry_run {
            chunks.for_each(|id, size, mtime| {
                if mtime < cutoff && !reachable.contains(&id) {
                    report.removed_blobs += 1;
                    report.removed_bytes += size;
                } else {
                    report.kept_blobs += 1;
                    report.kept_bytes += size;
                }
                Ok(())
            })?;
        } else {
            let s = chunks.sweep(cutoff, false)?;
            report.removed_blobs = s.removed;
            report.removed_bytes = s.removed_bytes;
            report.kept_blobs = s.kept;
            report.kept_bytes = s.kept_bytes;
            self.clear_stale_tmp(cutoff);
        }
        Ok(report)
    }

    fn mark_disk(
        &self,
        point: &str,
        disk: &crate::manifest::PointDisk,
        dry_run: bool,
        reachable: &mut HashSet<BlobId>,
        records_seen: &mut HashSet<BlobId>,
        report: &mut GcReport,
    ) -> Result<()> {
        let chunks = self.chunks();
        let mut mark = |id: &BlobId, report: &mut GcReport| -> Result<bool> {
            let present = if dry_run {
                reachable.insert(*id);
                chunks.exists(id)
            } else {
                chunks.touch(id)?
            };
            if present {
                report.marked_blobs += 1;
            } else {
                report.missing.push((point.to_string(), id.to_hex()));
            }
            Ok(present)
        };
        let map_id =
            BlobId::from_hex(&disk.map).ok_or_else(|| StoreError::Invalid(format!("point {point}: bad map id")))?;
        if !mark(&map_id, report)? {
            return Ok(());
        }
        // The walk needs the maps and records decoded; an encrypted store opened without its key
        // cannot collect garbage.
        self.require_key()?;
        let map = match chunks.read(&map_id, BlobKind::DiskMap).and_then(|b| DiskMap::decode(&map_id, &b)) {
            Ok(m) => m,
            Err(e) => return Err(unreadable(point, e)),
        };
        for rid in map.extents.iter().filter(|r| !r.is_hole()) {
            if !records_seen.insert(*rid) {
                continue;
            }
            if !mark(rid, report)? {
                continue;
            }
            let record = match chunks.read(rid, BlobKind::ExtentRecord).and_then(|b| ExtentRecord::decode(rid, &b)) {
                Ok(r) => r,
                Err(e) => return Err(unreadable(point, e)),
            };
            for c in record.chunks.iter().filter(|c| !c.id.is_hole()) {
                mark(&c.id, report)?;
            }
        }
        Ok(())
    }

    /// Staging files left by killed label or config writes.
    fn clear_stale_tmp(&self, cutoff: SystemTime) {
        let Ok(entries) = fs::read_dir(self.root().join("tmp")) else {
            return;
        };
        for e in entries.flatten() {
            let Ok(meta) = e.metadata() else { continue };
            if meta.is_file() && meta.modified().map(|m| m < cutoff).unwrap_or(false) {
                let _ = fs::remove_file(e.path());
            }
        }
    }
}

fn unreadable(point: &str, e: DedupeError) -> StoreError {
    StoreError::Invalid(format!(
        "garbage collection stopped before removing anything: point {point} references a blob that cannot be read ({e}); \
         run verify, then delete the damaged points"
    ))
}
