//! Locked points on disk. While a point's lock holds, its manifest, its labels and every blob it
//! needs (disk maps, extent records, chunks) carry the immutable attribute (chattr +i) where the
//! filesystem has it, and the manifest and labels are read-only: no program, and no slip of `rm`
//! even by root, removes them until someone clears the attribute on purpose. Garbage collection
//! re-applies the attribute to the blobs of locked points and releases it from blobs that no
//! locked point needs any more (gc.rs).
//!
//! A lock is committed through an intent: the writer (an ingest that locks its new point, or
//! `lock` / `star` on a point) records the point in `tmp/<writer>/lock-intent` before it writes
//! the labels, and removes the intent once every file is protected. A writer killed in between
//! leaves the intent beside its dead registration; the next open of the store (or gc) finishes
//! the work before anything else: it protects a point that exists and removes the labels of one
//! that was never committed. So a point is shown locked only when it is protected.

use crate::disk_map::DiskMap;
use crate::error::{Result, StoreError};
use crate::fslock::{active_writers, flock, set_immutable, set_read_only, write_atomic, WriterRegistration};
use crate::manifest::RestorePoint;
use crate::store::Store;
use dedupe::{BlobId, BlobKind, ExtentRecord};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::path::Path;
use std::time::SystemTime;

/// The intent file in a writer's staging directory.
const INTENT: &str = "lock-intent";

#[derive(Serialize, Deserialize)]
struct Intent {
    vm: String,
    point: String,
}

/// A lock being committed (see `Store::begin_lock_intent`).
pub(crate) struct LockIntent<'a> {
    store: &'a Store,
    tmp: std::path::PathBuf,
    done: bool,
    _shared: std::fs::File,
}

impl LockIntent<'_> {
    /// The point is protected: the intent goes.
    pub(crate) fn done(mut self) {
        let _ = std::fs::remove_file(self.tmp.join(INTENT));
        self.done = true;
    }
}

impl Drop for LockIntent<'_> {
    fn drop(&mut self) {
        if !self.done {
            // Best effort; what fails here is finished by the next open or gc.
            let _ = self.store.finish_lock_intent(&self.tmp);
        }
    }
}

/// What protecting a point did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Protection {
    /// False where the filesystem (or the lack of root) gives no immutable attribute: then the
    /// lock is kept by Holdfast alone, and the files are only read-only.
    pub immutable: bool,
    /// Blobs given the attribute (or found with it).
    pub blobs: u64,
}

impl Store {
    /// Calls `f` with every blob a point needs: each disk map, each extent record once, each
    /// chunk of each record (a chunk shared by records comes more than once). A blob that cannot
    /// be read is skipped (verify names it); its references are unknown.
    pub fn for_each_point_blob(&self, point: &RestorePoint, f: &mut dyn FnMut(&BlobId) -> Result<()>) -> Result<()> {
        self.require_key()?;
        let chunks = self.chunks();
        let mut records: HashSet<BlobId> = HashSet::new();
        for disk in &point.disks {
            let Some(map_id) = BlobId::from_hex(&disk.map) else { continue };
            f(&map_id)?;
            let Ok(map) = chunks.read(&map_id, BlobKind::DiskMap).and_then(|b| DiskMap::decode(&map_id, &b)) else {
                continue;
            };
            for rid in map.extents.iter().filter(|r| !r.is_hole()) {
                if !records.insert(*rid) {
                    continue;
                }
                f(rid)?;
                let Ok(record) = chunks.read(rid, BlobKind::ExtentRecord).and_then(|b| ExtentRecord::decode(rid, &b))
                else {
                    continue;
                };
                for c in record.chunks.iter().filter(|c| !c.id.is_hole()) {
                    f(&c.id)?;
                }
            }
        }
        Ok(())
    }

    /// Makes a locked point's blobs immutable, then its labels and manifest read-only and
    /// immutable: last, so an immutable manifest says the whole point is protected. Blobs
    /// already in `done` are skipped (they were protected for another point); every blob
    /// protected is added to it.
    pub(crate) fn protect_point(
        &self,
        vm: &str,
        point: &RestorePoint,
        done: &mut HashSet<BlobId>,
    ) -> Result<Protection> {
        let mut immutable = true;
        let chunks = self.chunks();
        let mut blobs = 0;
        self.for_each_point_blob(point, &mut |id| {
            // Recorded whatever happens below: gc must never release a blob a locked point needs.
            if !done.insert(*id) || !immutable {
                return Ok(());
            }
            if chunks.set_immutable(id, true) {
                blobs += 1;
            } else if chunks.exists(id) {
                // The filesystem has no such attribute: say so once, stop trying.
                immutable = false;
            }
            Ok(())
        })?;
        immutable &= self.protect_files(vm, &point.point_id);
        Ok(Protection { immutable, blobs })
    }

    /// Makes a locked point's labels, then its manifest, read-only and immutable; false where
    /// the attribute could not be set.
    pub(crate) fn protect_files(&self, vm: &str, point: &str) -> bool {
        let mut immutable = true;
        for p in [self.labels_path(vm, point), self.manifest_path(vm, point)] {
            if p.exists() {
                let _ = set_read_only(&p, true);
                immutable &= set_immutable(&p, true);
            }
        }
        immutable
    }

    /// Records that `writer` is about to lock `point` (see the module's text). Until the
    /// returned intent is `done`, gc does not release blobs (it waits for the shared lock on
    /// `locks/protect`); dropped on an error path, it finishes the lock at once, as a later
    /// open would: protects the point if its manifest was committed, else removes its labels.
    pub(crate) fn begin_lock_intent(
        &self,
        writer: &WriterRegistration,
        vm: &str,
        point: &str,
    ) -> Result<LockIntent<'_>> {
        let shared = self.protect_lock(false)?;
        let intent = Intent { vm: vm.into(), point: point.into() };
        let bytes = serde_json::to_vec(&intent).expect("an intent serialises");
        write_atomic(&writer.tmp_dir, &writer.tmp_dir.join(INTENT), &bytes)?;
        Ok(LockIntent { store: self, tmp: writer.tmp_dir.clone(), done: false, _shared: shared })
    }

    /// `locks/protect`: shared while a lock is committed, exclusive while gc decides and
    /// releases, so a blob a new lock needs is never released under it.
    pub(crate) fn protect_lock(&self, exclusive: bool) -> Result<std::fs::File> {
        let path = self.root().join("locks").join("protect");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| StoreError::io(format!("opening {}", path.display()), e))?;
        flock(&file, exclusive, false).map_err(|e| StoreError::io(format!("locking {}", path.display()), e))?;
        Ok(file)
    }

    /// Start times of the writers running now. Writers that were killed are cleared away, each
    /// after its unfinished lock, if any, is finished (protected, or its orphan labels removed).
    /// An unfinished lock whose blobs cannot be read (an encrypted store opened without its key)
    /// keeps its writer's files for a later open that has the key.
    pub(crate) fn reap_dead_writers(&self) -> Result<Vec<SystemTime>> {
        active_writers(self.root(), &mut |tmp| self.finish_lock_intent(tmp))
    }

    /// Ok(true) when nothing is left to do in the dead writer's staging directory `tmp`.
    fn finish_lock_intent(&self, tmp: &Path) -> Result<bool> {
        let path = tmp.join(INTENT);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(true),
            Err(e) => return Err(StoreError::io(format!("reading {}", path.display()), e)),
        };
        // A torn intent cannot be: it is written whole and renamed in.
        let Ok(intent) = serde_json::from_slice::<Intent>(&bytes) else { return Ok(true) };
        match self.load_entry(&intent.vm, &intent.point) {
            Ok(entry) if entry.labels.locked_at(self.now()).is_some() => {
                if self.require_key().is_err() {
                    // Manifest and labels now; the blobs when the key is given.
                    self.protect_files(&intent.vm, &intent.point);
                    return Ok(false);
                }
                self.protect_point(&intent.vm, &entry.manifest, &mut HashSet::new())?;
            }
            Ok(_) => {}
            Err(StoreError::PointNotFound { .. }) => {
                // Killed after the labels, before the manifest: there is no point to lock.
                let labels = self.labels_path(&intent.vm, &intent.point);
                set_immutable(&labels, false);
                let _ = std::fs::remove_file(&labels);
            }
            // A damaged manifest: verify names it; nothing here can lock it.
            Err(_) => {}
        }
        let _ = std::fs::remove_file(&path);
        Ok(true)
    }
}
