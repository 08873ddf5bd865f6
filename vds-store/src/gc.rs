//! Garbage collection, mark and sweep, safe while backups write.
//!
//! Mark: every blob reachable from a committed manifest is touched (mtime = now). Sweep: blobs
//! older than the cutoff go. The cutoff is the earlier of the GC's start and the start of the
//! oldest writer running then, less a margin for the filesystem's coarse clock, so a chunk that a
//! running backup wrote or deduplicated against (writers touch what they reuse) is never swept.
//! Points committed while the mark runs are picked up by listing again until nothing is new; a
//! backup's base point cannot be deleted while the backup runs (it holds a shared lock on it).
//!
//! Locked points (protect.rs): before the mark, every blob a locked point needs is given the
//! immutable attribute again (someone may have cleared it) and remembered. Immutable blobs keep
//! their time (it cannot change) and the sweep cannot move them; those that no locked point
//! needs any more are released at the end, the attribute cleared and the blob touched in that
//! order, so a writer that met the blob while it was immutable (and could not touch it) is
//! covered by the new time: the blob is swept at the earliest by a later run, once unreferenced.
//! Points locked while this runs are looked for again before anything is released. The blobs of
//! locked points are held in memory (about 40 bytes each) for the run.
//!
//! Labels whose point does not exist (an ingest killed between the two) are removed once older
//! than the cutoff, so a running ingest's labels are never taken.

use crate::disk_map::DiskMap;
use crate::error::{Result, StoreError};
use crate::fslock::flock;
use crate::store::{PointEntry, Store};
use dedupe::{BlobId, BlobKind, DedupeError, ExtentRecord, Presence};
use serde::Serialize;
use std::collections::HashSet;
use std::fs::{self, OpenOptions};
use std::time::{Duration, SystemTime};

/// `locks/<this>`: the blobs a collection is releasing, one hex id a line, while it does.
const RELEASE_JOURNAL: &str = "gc-release";

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
    /// Points locked now, whose blobs were (re)protected.
    pub locked_points: u64,
    /// Blobs those points need, immutable where the filesystem allows it.
    pub protected_blobs: u64,
    /// Immutable blobs no locked point needs any more, released (not counted by a dry run).
    pub released_blobs: u64,
    /// Labels files of points that do not exist, removed.
    pub orphan_labels: u64,
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
        self.finish_killed_release(dry_run)?;
        let start = SystemTime::now();
        let oldest_writer = self.reap_dead_writers()?.into_iter().min().unwrap_or(start);
        let cutoff = start.min(oldest_writer) - CLOCK_MARGIN;

        let mut report = GcReport { dry_run, ..Default::default() };
        // Locked points first: their blobs protected again, and known, so the mark can tell
        // the immutable blobs to keep from those to release.
        let locked_at_start = self.locked_points()?;
        let mut protected: HashSet<BlobId> = HashSet::new();
        for p in &locked_at_start {
            if dry_run {
                self.collect_blobs(&p.manifest, &mut protected)?;
            } else {
                self.protect_point(&p.vm, &p.manifest, &mut protected)?;
            }
        }
        report.locked_points = locked_at_start.len() as u64;
        let mut release: HashSet<BlobId> = HashSet::new();

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
                let mut marks = Marks {
                    dry_run,
                    reachable: &mut reachable,
                    records_seen: &mut records_seen,
                    protected: &protected,
                    release: &mut release,
                };
                for disk in &p.manifest.disks {
                    self.mark_disk(&p.point_id, disk, &mut marks, &mut report)?;
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
                if mtime < cutoff && !reachable.contains(&id) && !chunks.is_immutable(&id) {
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
            release.extend(s.immutable.into_iter().filter(|id| !protected.contains(id)));
            self.clear_stale_tmp(cutoff);
        }
        // A point locked while this ran protected its own blobs: never release those. Lockers
        // wait from here until the releases are done (`locks/protect`).
        let _no_lockers = self.protect_lock(true)?;
        let before: HashSet<(&str, Option<chrono::DateTime<chrono::Utc>>)> =
            locked_at_start.iter().map(|p| (p.point_id.as_str(), p.labels.retain_until)).collect();
        for p in self.locked_points()? {
            if !before.contains(&(p.point_id.as_str(), p.labels.retain_until)) {
                self.collect_blobs(&p.manifest, &mut protected)?;
            }
        }
        release.retain(|id| !protected.contains(id));
        report.protected_blobs = protected.len() as u64;
        if !dry_run && !release.is_empty() {
            // Journaled first: a run killed between clearing a blob's attribute and touching it
            // would leave a blob a writer met immutable (untouched) to the next sweep.
            let ids: Vec<String> = release.iter().map(|id| id.to_hex()).collect();
            let journal = self.root().join("locks").join(RELEASE_JOURNAL);
            crate::fslock::write_atomic(&self.root().join("tmp"), &journal, ids.join("\n").as_bytes())?;
            report.released_blobs = release.iter().filter(|id| chunks.release(id).is_ok()).count() as u64;
            let _ = fs::remove_file(&journal);
        }
        report.orphan_labels = self.remove_orphan_labels(cutoff, dry_run)?;
        Ok(report)
    }

    /// Releases what a killed collection had journaled to release (clearing the attribute
    /// again where it was not yet, touching every blob), before anything is swept.
    fn finish_killed_release(&self, dry_run: bool) -> Result<()> {
        let journal = self.root().join("locks").join(RELEASE_JOURNAL);
        let Ok(text) = fs::read_to_string(&journal) else { return Ok(()) };
        if dry_run {
            return Ok(());
        }
        for id in text.lines().filter_map(BlobId::from_hex) {
            let _ = self.chunks().release(&id);
        }
        fs::remove_file(&journal).map_err(|e| StoreError::io(format!("removing {}", journal.display()), e))
    }

    fn collect_blobs(&self, point: &crate::manifest::RestorePoint, into: &mut HashSet<BlobId>) -> Result<()> {
        self.for_each_point_blob(point, &mut |id| {
            into.insert(*id);
            Ok(())
        })
    }

    /// The points whose lock holds now.
    fn locked_points(&self) -> Result<Vec<PointEntry>> {
        let now = self.now();
        let (points, _) = self.scan(None)?;
        Ok(points.into_iter().filter(|p| p.labels.locked_at(now).is_some()).collect())
    }

    /// Removes `<point>.labels` files older than `cutoff` that have no manifest beside them.
    fn remove_orphan_labels(&self, cutoff: SystemTime, dry_run: bool) -> Result<u64> {
        let mut removed = 0;
        for vm in self.vms()? {
            let dir = self.vm_dir(&vm);
            let Ok(entries) = fs::read_dir(&dir) else { continue };
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let Some(point) = name.strip_suffix(".labels") else { continue };
                if self.manifest_path(&vm, point).exists() {
                    continue;
                }
                let old = e.metadata().and_then(|m| m.modified()).is_ok_and(|m| m < cutoff);
                if !old {
                    continue;
                }
                removed += 1;
                if !dry_run {
                    crate::fslock::set_immutable(&e.path(), false);
                    fs::remove_file(e.path())
                        .map_err(|err| StoreError::io(format!("removing orphan labels {}", e.path().display()), err))?;
                }
            }
        }
        Ok(removed)
    }

    fn mark_disk(
        &self,
        point: &str,
        disk: &crate::manifest::PointDisk,
        marks: &mut Marks,
        report: &mut GcReport,
    ) -> Result<()> {
        let chunks = self.chunks();
        let mut mark = |id: &BlobId, report: &mut GcReport| -> Result<bool> {
            let present = if marks.dry_run {
                marks.reachable.insert(*id);
                chunks.exists(id)
            } else {
                match chunks.presence(id)? {
                    Presence::Touched => true,
                    Presence::Immutable => {
                        if !marks.protected.contains(id) {
                            marks.release.insert(*id);
                        }
                        true
                    }
                    Presence::Missing => false,
                }
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
            if !marks.records_seen.insert(*rid) {
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

/// What the mark walks with.
struct Marks<'a> {
    dry_run: bool,
    /// Every blob reached (dry runs only: a real run marks by touching).
    reachable: &'a mut HashSet<BlobId>,
    records_seen: &'a mut HashSet<BlobId>,
    /// Blobs locked points need.
    protected: &'a HashSet<BlobId>,
    /// Immutable blobs met that no locked point needs.
    release: &'a mut HashSet<BlobId>,
}

fn unreadable(point: &str, e: DedupeError) -> StoreError {
    StoreError::Invalid(format!(
        "garbage collection stopped before removing anything: point {point} references a blob that cannot be read ({e}); \
         run verify, then delete the damaged points"
    ))
}
