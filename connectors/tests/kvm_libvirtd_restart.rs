//! libvirtd restarted while a backup runs. Alone in its test binary: the restart breaks every
//! other libvirt connection, and cargo runs test binaries one at a time.

use connectors::{backup_vm, BackupOptions, KvmConnector, Quiesce};
use holdfast_tests::kvm::{assert_point_matches, restart_libvirtd, TestVm, MIB, URI};
use vds_store::*;

fn opts(requested: BackupType) -> BackupOptions {
    BackupOptions { threads: 2, quiesce: Quiesce::Off, ..BackupOptions::new(requested) }
}

#[test]
fn libvirtd_restarted_mid_backup_is_reported_and_the_next_run_ends_the_left_job() {
    let mut vm = TestVm::start("restart");
    let store = Store::init(&vm.dir.join("store"), InitOptions::default()).unwrap();
    let work = vm.dir.join("work");
    vm.write(0, 0x61, 0, 8 * MIB);
    vm.write(1, 0x62, 16 * MIB, 8 * MIB);
    let conn = KvmConnector::open(URI, &work, None).unwrap();
    let mut restarted = false;
    let result = backup_vm(&conn, &store, &vm.name, opts(BackupType::Full), &mut |_| {
        if !restarted {
            restarted = true;
            restart_libvirtd();
        }
    });
    assert!(restarted, "the backup made no progress");
    // QEMU keeps serving NBD across the restart, so the data arrives and the point commits; only
    // ending the job through the lost connection fails, and the outcome says so.
    let outcome = result.expect("the point commits: QEMU kept serving its disks");
    assert_point_matches(&store, &outcome.point, &vm.model, &vm.dir);
    assert!(
        outcome.warnings.len() == 1
            && outcome.warnings[0].contains("ending the backup job")
            && outcome.warnings[0].contains("the next backup of this VM will end the job"),
        "{:?}",
        outcome.warnings
    );
    assert!(vm.has_job(), "libvirt could not be told to end the job");
    drop(conn);

    // The next run (a new connection, as after an appliance restart) ends the left job, keeps the
    // committed point's checkpoint and runs incrementally from it.
    let conn = KvmConnector::open(URI, &work, None).unwrap();
    vm.write(0, 0x63, 4 * MIB, MIB);
    let next = backup_vm(&conn, &store, &vm.name, opts(BackupType::Incremental), &mut |_| {}).unwrap();
    assert!(next.warnings.is_empty(), "{:?}", next.warnings);
    assert_eq!(next.point.backup_type, BackupType::Incremental, "{:?}", next.point.disks[0].full_reason);
    assert_eq!(next.point.disks[0].read_bytes, 4 * MIB as u64);
    assert_point_matches(&store, &next.point, &vm.model, &vm.dir);
    assert!(!vm.has_job());
    // The full's checkpoint (differentials count from it) and the new one; nothing stale.
    let mut want = [&outcome.point, &next.point].map(|p| p.disks[0].change_id.clone().unwrap()).to_vec();
    want.sort();
    let mut have = vm.checkpoints();
    have.sort();
    assert_eq!(have, want);
    assert!(std::fs::read_dir(work.join("active")).unwrap().next().is_none());
}
