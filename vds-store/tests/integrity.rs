//! What keeps people's data safe: GC never takes what a point or a running backup needs;
//! damage is found, attributed to exactly the points it hurts, and never read back as data;
//! locked points cannot be removed; bad input gets a clear error.

#![allow(clippy::single_range_in_vec_init)] // one changed range per disk is the common case here

mod common;
use common::*;
use std::path::Path;
use std::time::{Duration, SystemTime};
use vds_store::*;

/// Makes every blob look an hour old, as if written long before the GC under test.
fn age_blobs(root: &Path) {
    let old = SystemTime::now() - Duration::from_secs(3600);
    for dir in std::fs::read_dir(root.join("blobs")).unwrap() {
        for f in std::fs::read_dir(dir.unwrap().path()).unwrap() {
            let f = std::fs::File::options().write(true).open(f.unwrap().path()).unwrap();
            f.set_modified(old).unwrap();
        }
    }
}

fn blob_count(root: &Path) -> usize {
    std::fs::read_dir(root.join("blobs")).unwrap().map(|d| std::fs::read_dir(d.unwrap().path()).unwrap().count()).sum()
}

#[test]
fn gc_frees_what_deleted_points_alone_used_and_dry_run_predicts_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = small_store(dir.path(), None);
    let keep = ingest(&store, "vm", BackupType::Full, None, vec![("d", noise(300_000, 1), None)]).unwrap();
    let gone = ingest(&store, "vm", BackupType::Full, None, vec![("d", noise(300_000, 2), None)]).unwrap();
    age_blobs(dir.path());
    store.delete_point("vm", &gone.point_id).unwrap();
    let before = blob_count(dir.path());
    let dry = store.gc(true).unwrap();
    assert!(dry.removed_blobs > 0 && dry.removed_bytes > 0);
    assert_eq!(blob_count(dir.path()), before, "a dry run removes nothing");
    let real = store.gc(false).unwrap();
    assert_eq!((real.removed_blobs, real.removed_bytes), (dry.removed_blobs, dry.removed_bytes));
    assert_eq!(blob_count(dir.path()), before - real.removed_blobs as usize);
    assert_eq!(read_disk(&store, &keep.point_id, "d"), noise(300_000, 1));
    assert!(store.verify(1.0, 2, false, &|_| ()).unwrap().is_clean());
    assert_eq!(store.gc(false).unwrap().removed_blobs, 0, "a second pass finds nothing more");
}

/// A backup that deduplicates against an unreferenced old chunk, then runs for longer than the
/// GC's clock margin while a GC starts: the chunk must survive.
struct SlowDisk(MemorySource);

impl DiskSource for SlowDisk {
    fn size(&self) -> u64 {
        self.0.size()
    }
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        if offset > 0 {
            std::thread::sleep(Duration::from_millis(1100));
        }
        self.0.read_at(offset, buf)
    }
    fn describe(&self) -> String {
        "slow".into()
    }
}

/// One disk read slowly (see SlowDisk) into `store`, one worker.
fn slow_ingest(
    store: &Store,
    kind: BackupType,
    parent: Option<String>,
    data: &[u8],
    changed: Option<Vec<std::ops::Range<u64>>>,
) -> Result<RestorePoint> {
    let disk = IngestDisk {
        key: "d".into(),
        source: Box::new(SlowDisk(MemorySource(data.to_vec()))),
        changed,
        change_id: None,
        full_reason: None,
    };
    let request = IngestRequest {
        vm: vm("vm"),
        backup_type: kind,
        parent,
        disks: vec![disk],
        labels: Labels::default(),
        threads: 1,
        consistency: None,
    };
    store.ingest(request, &mut |_| {})
}

#[test]
fn gc_racing_a_backup_never_removes_a_chunk_the_new_point_needs() {
    let dir = tempfile::tempdir().unwrap();
    let store = small_store(dir.path(), None);
    let data = noise(5 * EXTENT as usize, 9);
    let old = ingest(&store, "vm", BackupType::Full, None, vec![("d", data.clone(), None)]).unwrap();
    age_blobs(dir.path());
    store.delete_point("vm", &old.point_id).unwrap();
    std::thread::scope(|s| {
        let backup = s.spawn(|| slow_ingest(&store, BackupType::Full, None, &data, None));
        std::thread::sleep(Duration::from_millis(3300));
        let report = store.gc(false).unwrap();
        assert_eq!(report.points, 0, "the backup has not committed yet");
        let new = backup.join().unwrap().unwrap();
        assert_eq!(read_disk(&store, &new.point_id, "d"), data);
    });
    assert!(store.verify(1.0, 2, false, &|_| ()).unwrap().is_clean());
}

#[test]
fn a_running_backups_base_point_cannot_be_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let store = small_store(dir.path(), None);
    let data = noise(4 * EXTENT as usize, 4);
    let base = ingest(&store, "vm", BackupType::Full, None, vec![("d", data.clone(), None)]).unwrap();
    std::thread::scope(|s| {
        let backup = s.spawn(|| {
            slow_ingest(
                &store,
                BackupType::Incremental,
                Some(base.point_id.clone()),
                &data,
                Some(vec![0..(3 * EXTENT as u64)]),
            )
        });
        std::thread::sleep(Duration::from_millis(500));
        assert!(matches!(store.delete_point("vm", &base.point_id), Err(StoreError::InUse { .. })));
        let pruned = store
            .prune(&RetentionPolicy { keep_days: Some(0), keep_last: Some(1), ..Default::default() }, None, true)
            .unwrap();
        assert!(pruned.iter().all(|d| d.keep));
        let inc = backup.join().unwrap().unwrap();
        assert_eq!(inc.backup_type, BackupType::Incremental);
    });
    store.delete_point("vm", &base.point_id).unwrap();
}

#[test]
fn a_held_point_survives_retention_until_released() {
    let dir = tempfile::tempdir().unwrap();
    let store = small_store(dir.path(), None);
    let data = noise(2 * EXTENT as usize, 5);
    let old = ingest(&store, "vm", BackupType::Full, None, vec![("d", data.clone(), None)]).unwrap();
    ingest(&store, "vm", BackupType::Full, None, vec![("d", data, None)]).unwrap();
    let last_only = RetentionPolicy { keep_last: Some(1), ..Default::default() };
    let hold = store.hold_point("vm", &old.point_id).unwrap();
    let decided = store.prune(&last_only, None, false).unwrap();
    let d = decided.iter().find(|d| d.point_id == old.point_id).unwrap();
    assert!(d.keep && d.reasons[0].contains("in use"), "{d:?}");
    drop(hold);
    store.prune(&last_only, None, false).unwrap();
    assert!(store.find(&old.point_id).is_err(), "released, the point goes");
}

#[test]
fn damage_is_attributed_to_exactly_the_points_it_affects() {
    let dir = tempfile::tempdir().unwrap();
    let store = small_store(dir.path(), None);
    let a = ingest(&store, "a", BackupType::Full, None, vec![("d", noise(200_000, 11), None)]).unwrap();
    let mut a_next = noise(200_000, 11);
    a_next[150_000..160_000].fill(1);
    let a2 = ingest(
        &store,
        "a",
        BackupType::Incremental,
        Some(&a.point_id),
        vec![("d", a_next, Some(vec![150_000..160_000]))],
    )
    .unwrap();
    let b = ingest(&store, "b", BackupType::Full, None, vec![("d", noise(200_000, 12), None)]).unwrap();
    let c = ingest(&store, "c", BackupType::Full, None, vec![("d", noise(200_000, 13), None)]).unwrap();
    let d = ingest(&store, "d", BackupType::Full, None, vec![("d", noise(200_000, 14), None)]).unwrap();
    assert!(store.verify(1.0, 2, false, &|_| ()).unwrap().is_clean());

    let first_chunk = |p: &RestorePoint| {
        let map = store.read_disk_map(&p.point_id, &p.disks[0]).unwrap();
        let rec = store.chunks().read(&map.extents[0], dedupe::BlobKind::ExtentRecord).unwrap();
        dedupe::ExtentRecord::decode(&map.extents[0], &rec).unwrap().chunks[0].id
    };
    // Flip a byte in a chunk of a's first extent, which a2 shares (unchanged extent).
    let path = store.chunks().path(&first_chunk(&a));
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&path, bytes).unwrap();
    // Delete a chunk of b; truncate c's manifest.
    std::fs::remove_file(store.chunks().path(&first_chunk(&b))).unwrap();
    let cm = store.manifest_path("c", &c.point_id);
    let len = std::fs::metadata(&cm).unwrap().len();
    std::fs::File::options().write(true).open(&cm).unwrap().set_len(len / 2).unwrap();

    let report = store.verify(1.0, 2, false, &|_| ()).unwrap();
    let mut affected: Vec<&str> = report.affected.iter().map(|p| p.point_id.as_str()).collect();
    affected.sort();
    let mut want = vec![a.point_id.as_str(), a2.point_id.as_str(), b.point_id.as_str(), c.point_id.as_str()];
    want.sort();
    assert_eq!(affected, want);
    assert_eq!(report.damaged.len(), 1);
    let text = format!("{:?}", report.affected);
    assert!(text.contains("damaged") && text.contains("missing") && text.contains("checksum mismatch"), "{text}");

    // Reads of damaged ranges fail loudly; the healthy point is untouched.
    let r = store.open_disk(&a.point_id, "d").unwrap();
    let mut buf = vec![0u8; 1000];
    let err = r.read_at(&mut buf, 0).unwrap_err().to_string();
    assert!(err.contains(&a.point_id) && err.contains("blob"), "{err}");
    let out = dir.path().join("x.raw");
    assert!(r.export(&std::fs::File::create(&out).unwrap(), 2, &|_, _| ()).is_err());
    assert!(store.open_disk(&b.point_id, "d").unwrap().read_at(&mut buf, 0).is_err());
    assert!(matches!(store.find(&c.point_id), Err(StoreError::ManifestDamaged { .. })));
    assert_eq!(read_disk(&store, &d.point_id, "d"), noise(200_000, 14));

    // Sampled verify at 100% finds the same; quarantine moves the damaged blob aside and a new
    // backup of the same data stores it again, healthy.
    let q = store.verify(1.0, 2, true, &|_| ()).unwrap();
    assert_eq!(q.quarantined, 1);
    let healed = ingest(&store, "a", BackupType::Full, None, vec![("d", noise(200_000, 11), None)]).unwrap();
    assert_eq!(read_disk(&store, &healed.point_id, "d"), noise(200_000, 11));
}

#[test]
fn locked_points_survive_delete_and_prune() {
    let dir = tempfile::tempdir().unwrap();
    let _unprotect = Unprotect(dir.path().to_path_buf());
    let store = small_store(dir.path(), None);
    let old = ingest(&store, "vm", BackupType::Full, None, vec![("d", noise(70_000, 1), None)]).unwrap();
    let starred = ingest(&store, "vm", BackupType::Full, None, vec![("d", noise(70_000, 2), None)]).unwrap();
    let newest = ingest(&store, "vm", BackupType::Full, None, vec![("d", noise(70_000, 3), None)]).unwrap();
    let until = chrono::Utc::now() + chrono::Duration::days(30);
    store.lock(&old.point_id, until).unwrap();
    store.set_star(&starred.point_id, true).unwrap();
    assert!(matches!(store.delete_point("vm", &old.point_id), Err(StoreError::Locked { .. })));
    assert!(matches!(store.lock(&old.point_id, until - chrono::Duration::days(1)), Err(StoreError::Locked { .. })));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(store.manifest_path("vm", &old.point_id)).unwrap().permissions().mode();
    assert_eq!(mode & 0o222, 0, "a locked manifest is read-only");
    // Immutable too (chattr +i works on this ext4): not even root removes it by hand.
    let manifest = store.manifest_path("vm", &old.point_id);
    let err = std::fs::remove_file(&manifest).expect_err("a locked manifest cannot be removed");
    assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied, "{err}");
    let policy = RetentionPolicy { keep_last: Some(1), ..Default::default() };
    let decisions = store.prune(&policy, None, false).unwrap();
    let kept: Vec<(&str, bool)> = decisions.iter().map(|d| (d.point_id.as_str(), d.keep)).collect();
    assert!(kept.contains(&(old.point_id.as_str(), true)));
    assert!(kept.contains(&(starred.point_id.as_str(), true)));
    assert!(kept.contains(&(newest.point_id.as_str(), true)));
    assert_eq!(store.point_ids("vm").unwrap().len(), 3);
    // Unstar: now prune removes it, and only it.
    store.set_star(&starred.point_id, false).unwrap();
    let d2 = store.prune(&policy, None, false).unwrap();
    assert_eq!(
        d2.iter().filter(|d| !d.keep).map(|d| d.point_id.clone()).collect::<Vec<_>>(),
        vec![starred.point_id.clone()]
    );
    assert_eq!(store.point_ids("vm").unwrap().len(), 2);
}

#[test]
fn bad_input_gets_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(Store::open(dir.path(), None), Err(StoreError::NotAStore { .. })));
    let store = small_store(dir.path(), None);
    assert!(matches!(small_store_again(dir.path()), Err(StoreError::AlreadyAStore { .. })));
    let p = ingest(&store, "vm", BackupType::Full, None, vec![("d", noise(70_000, 1), None)]).unwrap();
    // Garbage manifest.
    let mpath = store.manifest_path("vm", &p.point_id);
    std::fs::write(&mpath, b"{not a manifest").unwrap();
    let e = store.load_point("vm", &p.point_id).unwrap_err();
    assert!(matches!(e, StoreError::ManifestDamaged { .. }) && e.to_string().contains(&p.point_id), "{e}");
    // Unknown store version.
    let cfg = dir.path().join("store.json");
    let text = std::fs::read_to_string(&cfg).unwrap().replace("\"version\": 1", "\"version\": 7");
    std::fs::write(&cfg, text).unwrap();
    let e = Store::open(dir.path(), None).err().unwrap();
    assert!(matches!(e, StoreError::UnsupportedVersion { found: 7, supported: 1, .. }), "{e}");
    // Bad names and ranges.
    let dir2 = tempfile::tempdir().unwrap();
    let s2 = small_store(dir2.path(), None);
    assert!(matches!(
        ingest(&s2, "../evil", BackupType::Full, None, vec![("d", vec![1; 10], None)]),
        Err(StoreError::InvalidName { .. })
    ));
    let base = ingest(&s2, "vm", BackupType::Full, None, vec![("d", vec![1; 100], None)]).unwrap();
    let e = ingest(
        &s2,
        "vm",
        BackupType::Incremental,
        Some(&base.point_id),
        vec![("d", vec![1; 100], Some(vec![50..500]))],
    )
    .unwrap_err();
    assert!(e.to_string().contains("outside the disk"), "{e}");
}

fn small_store_again(dir: &Path) -> Result<Store> {
    Store::init(dir, InitOptions::default())
}

#[test]
fn encrypted_store_needs_the_right_key_and_never_returns_garbage() {
    let dir = tempfile::tempdir().unwrap();
    let data = noise(150_000, 5);
    let point = {
        let store = small_store(dir.path(), Some(b"s3cret"));
        ingest(&store, "vm", BackupType::Full, None, vec![("d", data.clone(), None)]).unwrap().point_id
    };
    assert!(matches!(
        Store::open(dir.path(), Some(b"wrong")),
        Err(StoreError::Dedupe(dedupe::DedupeError::WrongPassphrase))
    ));
    let keyless = Store::open(dir.path(), None).unwrap();
    assert!(matches!(keyless.open_disk(&point, "d"), Err(StoreError::KeyNeeded { .. })));
    assert!(matches!(
        ingest(&keyless, "vm", BackupType::Full, None, vec![("d", data.clone(), None)]),
        Err(StoreError::KeyNeeded { .. })
    ));
    let report = keyless.verify(1.0, 2, false, &|_| ()).unwrap();
    assert!(report.keyless && report.is_clean() && report.blobs_checked > 0);
    let store = Store::open(dir.path(), Some(b"s3cret")).unwrap();
    assert_eq!(read_disk(&store, &point, "d"), data);
    // The same plaintext in another encrypted store gets other ids.
    let dir2 = tempfile::tempdir().unwrap();
    let other = small_store(dir2.path(), Some(b"s3cret"));
    assert_ne!(other.chunks().codec().id(&data[..4096]), store.chunks().codec().id(&data[..4096]));
    // Nothing in the blobs is the plaintext.
    let needle = &data[1000..1064];
    for d in std::fs::read_dir(dir.path().join("blobs")).unwrap() {
        for f in std::fs::read_dir(d.unwrap().path()).unwrap() {
            let b = std::fs::read(f.unwrap().path()).unwrap();
            assert!(!b.windows(needle.len()).any(|w| w == needle));
        }
    }
}
