//! Locks on disk: a locked point's blobs are immutable as long as the lock holds, backups keep
//! deduplicating against them, gc re-applies what was cleared and releases what no lock needs,
//! and lock dates that protect nothing (or overflow) are refused. Needs a filesystem with the
//! immutable attribute and root (the test suite runs as root on ext4).

mod common;
use chrono::{DateTime, Duration, Utc};
use common::*;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use vds_store::*;

fn blobs_of(store: &Store, point: &RestorePoint) -> HashSet<dedupe::BlobId> {
    let mut out = HashSet::new();
    store
        .for_each_point_blob(point, &mut |id| {
            out.insert(*id);
            Ok(())
        })
        .unwrap();
    out
}

fn locked_request(vm: &str, data: Vec<u8>, until: DateTime<Utc>) -> IngestRequest {
    let mut req = request(vm, BackupType::Full, None, vec![("d", data, None)]);
    req.labels = Labels { star: false, retain_until: Some(until) };
    req
}

#[test]
fn a_locked_points_blobs_stay_immutable_until_its_lock_ends_then_gc_releases_them() {
    let dir = tempfile::tempdir().unwrap();
    let _unprotect = Unprotect(dir.path().to_path_buf());
    let mut store = small_store(dir.path(), None);
    let now = Arc::new(Mutex::new(Utc::now()));
    let clock = now.clone();
    store.set_clock(Arc::new(move || *clock.lock().unwrap()));

    // Point a is locked for 30 days; b shares a's first half and has data of its own.
    let shared = noise(200_000, 1);
    let mut a_data = shared.clone();
    a_data.extend(noise(200_000, 2));
    let mut b_data = shared.clone();
    b_data.extend(noise(200_000, 3));
    let until = Utc::now() + Duration::days(30);
    let a = store.ingest(locked_request("vm", a_data.clone(), until), &mut |_| {}).unwrap();
    let b = ingest(&store, "vm", BackupType::Full, None, vec![("d", b_data.clone(), None)]).unwrap();
    let a_blobs = blobs_of(&store, &a);
    let b_only: Vec<_> = blobs_of(&store, &b).into_iter().filter(|id| !a_blobs.contains(id)).collect();
    assert!(a_blobs.len() > 10 && !b_only.is_empty());
    for id in &a_blobs {
        assert!(store.chunks().is_immutable(id), "blob {id} of the locked point is not immutable");
    }
    assert!(b_only.iter().all(|id| !store.chunks().is_immutable(id)), "an unlocked point's own blobs are locked");
    // Not even root removes a locked point's chunk by hand.
    let victim = *a_blobs.iter().next().unwrap();
    let err = std::fs::remove_file(store.chunks().path(&victim)).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied);

    // A backup of the same data deduplicates against the immutable blobs.
    let again = ingest(&store, "vm2", BackupType::Full, None, vec![("d", a_data.clone(), None)]).unwrap();
    assert_eq!(again.stats.new_chunks, 0, "{:?}", again.stats);
    assert_eq!(read_disk(&store, &again.point_id, "d"), a_data);

    // Someone clears the attribute on one chunk: gc puts it back and frees nothing a needs.
    assert!(store.chunks().set_immutable(&victim, false));
    let report = store.gc(false).unwrap();
    assert_eq!(report.locked_points, 1);
    assert_eq!(report.protected_blobs, a_blobs.len() as u64);
    assert_eq!(report.released_blobs, 0);
    assert!(store.chunks().is_immutable(&victim), "gc did not re-apply the lost attribute");

    // The lock ends: gc releases every blob and the point can go; its own blobs then go too.
    *now.lock().unwrap() = until + Duration::days(1);
    let report = store.gc(false).unwrap();
    assert_eq!((report.locked_points, report.protected_blobs), (0, 0));
    assert_eq!(report.released_blobs, a_blobs.len() as u64, "{report:?}");
    assert!(a_blobs.iter().all(|id| !store.chunks().is_immutable(id)));
    store.delete_point("vm", &a.point_id).unwrap();
    store.delete_point("vm2", &again.point_id).unwrap();
    // Released blobs were touched when released: kept by a gc within the clock margin.
    std::thread::sleep(std::time::Duration::from_millis(2200));
    let report = store.gc(false).unwrap();
    assert!(report.removed_blobs > 0, "{report:?}");
    let left = blobs_of(&store, &b);
    for id in &a_blobs {
        assert_eq!(store.chunks().exists(id), left.contains(id), "blob {id}: kept only if b needs it");
    }
    assert_eq!(read_disk(&store, &b.point_id, "d"), b_data);
}

#[test]
fn locking_an_existing_point_protects_its_blobs_and_dates_that_protect_nothing_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _unprotect = Unprotect(dir.path().to_path_buf());
    let store = small_store(dir.path(), None);
    let p = ingest(&store, "vm", BackupType::Full, None, vec![("d", noise(300_000, 9), None)]).unwrap();
    let blobs = blobs_of(&store, &p);
    assert!(blobs.iter().all(|id| !store.chunks().is_immutable(id)));

    let past = Utc::now() - Duration::days(1);
    let e = store.lock(&p.point_id, past).unwrap_err().to_string();
    assert!(e.contains("protects nothing") && e.contains("passed"), "{e}");
    let far = Utc::now() + Duration::days(MAX_LOCK_DAYS as i64 + 2);
    let e = store.lock(&p.point_id, far).unwrap_err().to_string();
    assert!(e.contains("36500 days"), "{e}");
    let e = lock_until_days(Utc::now(), 100_000_000).unwrap_err().to_string();
    assert!(e.contains("1 to 36500"), "{e}");
    assert!(lock_until_days(Utc::now(), 0).is_err());
    // An ingest asking for a lock in the past is refused before it writes anything.
    let e = store.ingest(locked_request("vm", noise(1000, 1), past), &mut |_| {}).unwrap_err().to_string();
    assert!(e.contains("protects nothing"), "{e}");
    assert_eq!(store.point_ids("vm").unwrap(), vec![p.point_id.clone()]);
    assert!(blobs.iter().all(|id| !store.chunks().is_immutable(id)), "a refused lock changed something");

    store.lock(&p.point_id, Utc::now() + Duration::days(3)).unwrap();
    assert!(blobs.iter().all(|id| store.chunks().is_immutable(id)), "lock left blobs mutable");
    // Starring a locked point keeps it whole.
    store.set_star(&p.point_id, true).unwrap();
    assert!(vds_store::fslock::is_immutable(&store.labels_path("vm", &p.point_id)));
    assert!(vds_store::fslock::is_immutable(&store.manifest_path("vm", &p.point_id)));
}

#[test]
fn a_point_whose_store_id_differs_is_named_never_read() {
    let dir = tempfile::tempdir().unwrap();
    let store = small_store(dir.path(), None);
    let p = ingest(&store, "vm", BackupType::Full, None, vec![("d", noise(50_000, 4), None)]).unwrap();
    let cfg = dir.path().join("store.json");
    let text = std::fs::read_to_string(&cfg).unwrap();
    let id = &store.config().store_id;
    std::fs::write(&cfg, text.replace(id.as_str(), "0123456789abcdef0123456789abcdef")).unwrap();
    let store = Store::open(dir.path(), None).unwrap();
    let e = store.open_disk(&p.point_id, "d").err().unwrap().to_string();
    assert!(e.contains(&p.point_id) && e.contains(id.as_str()) && e.contains("store.json was changed"), "{e}");
    let (ok, bad) = store.scan(None).unwrap();
    assert!(ok.is_empty() && bad.len() == 1);
    let report = store.verify(1.0, 2, false, &|_| ()).unwrap();
    assert!(!report.is_clean() && report.affected[0].point_id == p.point_id, "{report:?}");
}

#[test]
fn init_refuses_a_directory_holding_other_files() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("notes.txt"), b"mine").unwrap();
    let e = Store::init(dir.path(), InitOptions::default()).err().unwrap();
    assert!(matches!(e, StoreError::NotEmpty { .. }) && e.to_string().contains("notes.txt"), "{e}");
    assert!(!dir.path().join("store.json").exists() && !dir.path().join("blobs").exists());
    // A fresh filesystem's lost+found is no reason to refuse, nor the empty directories of an
    // init killed before its store.json; a skeleton with something in it is.
    let fresh = tempfile::tempdir().unwrap();
    std::fs::create_dir(fresh.path().join("lost+found")).unwrap();
    for d in ["blobs", "points", "locks", "tmp"] {
        std::fs::create_dir(fresh.path().join(d)).unwrap();
    }
    std::fs::write(fresh.path().join("points/x"), b"").unwrap();
    assert!(matches!(Store::init(fresh.path(), InitOptions::default()), Err(StoreError::NotEmpty { .. })));
    std::fs::remove_file(fresh.path().join("points/x")).unwrap();
    assert!(Store::init(fresh.path(), InitOptions { kdf_memory_kib: 64, ..Default::default() }).is_ok());
}

#[test]
fn a_lock_waits_while_gc_decides_what_to_release() {
    let dir = tempfile::tempdir().unwrap();
    let _unprotect = Unprotect(dir.path().to_path_buf());
    let store = small_store(dir.path(), None);
    let p = ingest(&store, "vm", BackupType::Full, None, vec![("d", noise(100_000, 5), None)]).unwrap();
    // Hold what gc holds from its last look at the locks to its last release.
    let gc_side = std::fs::OpenOptions::new().write(true).open(dir.path().join("locks/protect")).ok();
    let gc_side = gc_side.unwrap_or_else(|| std::fs::File::create(dir.path().join("locks/protect")).unwrap());
    assert!(vds_store::fslock::flock(&gc_side, true, false).unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::scope(|s| {
        s.spawn(|| tx.send(store.lock(&p.point_id, Utc::now() + Duration::days(2)).map(|_| ())).unwrap());
        assert!(rx.recv_timeout(std::time::Duration::from_millis(400)).is_err(), "the lock did not wait for gc");
        drop(gc_side);
        rx.recv_timeout(std::time::Duration::from_secs(20)).unwrap().unwrap();
    });
    assert!(blobs_of(&store, &p).iter().all(|id| store.chunks().is_immutable(id)));
}

#[test]
fn a_release_a_killed_gc_had_begun_is_finished_before_anything_is_swept() {
    let dir = tempfile::tempdir().unwrap();
    let store = small_store(dir.path(), None);
    let p = ingest(&store, "vm", BackupType::Full, None, vec![("d", noise(100_000, 6), None)]).unwrap();
    let blobs: Vec<_> = blobs_of(&store, &p).into_iter().collect();
    store.delete_point("vm", &p.point_id).unwrap();
    // Every blob old and unreferenced; the first was being released by a gc that was killed
    // after clearing its attribute, before touching it (a writer may have met it immutable).
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    for id in &blobs {
        std::fs::File::options().write(true).open(store.chunks().path(id)).unwrap().set_modified(old).unwrap();
    }
    std::fs::write(dir.path().join("locks/gc-release"), blobs[0].to_hex()).unwrap();
    let report = store.gc(false).unwrap();
    assert!(store.chunks().exists(&blobs[0]), "a blob being released was swept");
    assert_eq!(report.removed_blobs, blobs.len() as u64 - 1, "{report:?}");
    assert!(!dir.path().join("locks/gc-release").exists());
}
