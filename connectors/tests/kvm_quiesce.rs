//! Quiesce through the QEMU guest agent, against a booted Debian guest (its own test binary, so
//! its half-minute boot overlaps the other KVM tests). Whether the guest's filesystem was really
//! frozen shows in the backup itself: ext4 clears its needs_recovery flag when frozen, and sets
//! it while mounted read-write otherwise.

use connectors::{backup_vm, BackupOptions, KvmConnector, Quiesce};
use holdfast_tests::kvm::{TestGuest, URI};
use std::process::Command;
use vds_store::*;

/// The ext4 feature list of the root disk as `point` captured it.
fn features(store: &Store, point: &RestorePoint, dir: &std::path::Path) -> String {
    let out = dir.join(format!("{}.raw", point.point_id));
    let f = std::fs::File::options().write(true).create_new(true).open(&out).unwrap();
    store.open_disk(&point.point_id, "vda").unwrap().export(&f, 2, &|_, _| ()).unwrap();
    let dump = Command::new("dumpe2fs").arg("-h").arg(&out).output().expect("dumpe2fs runs (e2fsprogs)");
    assert!(dump.status.success(), "dumpe2fs: {}", String::from_utf8_lossy(&dump.stderr));
    let text = String::from_utf8_lossy(&dump.stdout).into_owned();
    std::fs::remove_file(&out).unwrap();
    text.lines().find(|l| l.starts_with("Filesystem features:")).expect("a feature line").to_string()
}

#[test]
fn a_quiesced_backup_captures_a_frozen_filesystem_and_the_guest_is_thawed_after() {
    let guest = TestGuest::boot("quiesce");
    let store = Store::init(&guest.dir.join("store"), InitOptions::default()).unwrap();
    let conn = KvmConnector::open(URI, &guest.dir.join("work"), None).unwrap();
    let run = |requested, quiesce| {
        let opts = BackupOptions { threads: 2, quiesce, ..BackupOptions::new(requested) };
        backup_vm(&conn, &store, &guest.name, opts, &mut |_| {}).unwrap()
    };

    let crash = run(BackupType::Full, Quiesce::Off);
    assert!(crash.consistency.starts_with("crash-consistent"), "{}", crash.consistency);
    let f = features(&store, &crash.point, &guest.dir);
    assert!(f.contains("needs_recovery"), "a live ext4 taken without freezing needs journal recovery: {f}");

    let quiesced = run(BackupType::Incremental, Quiesce::Required);
    assert!(quiesced.consistency.starts_with("application-consistent"), "{}", quiesced.consistency);
    assert_eq!(quiesced.point.consistency.as_deref(), Some(quiesced.consistency.as_str()));
    assert_eq!(quiesced.point.backup_type, BackupType::Incremental);
    let f = features(&store, &quiesced.point, &guest.dir);
    assert!(!f.contains("needs_recovery"), "the frozen filesystem was captured clean: {f}");

    let status = guest.agent(r#"{"execute":"guest-fsfreeze-status"}"#).expect("the agent answers");
    assert!(status.contains("thawed"), "the guest must be thawed after the backup: {status}");
    // And it keeps running normally: the agent still answers a write through the filesystem.
    let exec = guest.agent(r#"{"execute":"guest-exec","arguments":{"path":"/bin/sync"}}"#);
    assert!(exec.is_some_and(|r| r.contains("pid")));
}
