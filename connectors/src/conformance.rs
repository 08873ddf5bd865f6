//! The conformance suite every connector must pass, against its platform's test bed: inventory
//! and description, a full backup equal to the disks, an incremental that reads only around what
//! the guest wrote, fallbacks to a full read that say why, nothing left on the platform by a
//! backup that commits, one that does not, or one that was stopped, and a restore as a new VM
//! that is byte-identical and refused up front when its name is taken. The simulated platform
//! runs it in its unit tests and KVM in `tests/kvm_conformance.rs`; VMware and Hyper-V will too.
//! It panics, naming the check, on the first thing that does not hold.

use crate::backup::{backup_vm, BackupOptions};
use crate::connector::{
    BackupPlan, ChangeTracking, CheckError, Connector, NewVmSpec, Quiesce, RestoreCheck, RestoreDisk,
};
use crate::control::JobControl;
use std::path::Path;
use vds_store::{BackupType, InitOptions, RestorePoint, Store};

/// A platform's test bed as the suite drives it.
pub trait Bed {
    /// A new connection to the platform.
    fn connect(&self) -> Box<dyn Connector>;
    /// The VM under test: at least one disk of at least 8 MiB, as the platform backs it up
    /// (running where it needs to be).
    fn vm(&self) -> String;
    /// A guest write of `len` bytes at `offset` of disk `key` (contents of the bed's choosing,
    /// not all zeros).
    fn write(&mut self, key: &str, offset: u64, len: u64);
    /// Disk `key` of `vm` (the VM under test or one a restore made) as its guest reads it now.
    fn disk(&self, vm: &str, key: &str) -> Vec<u8>;
    /// Where a restore as a new VM puts its disks.
    fn storage(&self) -> String;
    /// What backups of `vm` left on the platform (snapshots, backup jobs), in words: empty
    /// when nothing is left.
    fn leftovers(&self, vm: &str) -> Vec<String>;
    /// Removes a VM a restore made, with its disks.
    fn remove(&self, vm: &str);
    /// A scratch directory for the suite's store.
    fn dir(&self) -> &Path;
}

fn backup(
    bed: &dyn Bed,
    store: &Store,
    kind: BackupType,
    tracking: ChangeTracking,
    control: JobControl,
) -> RestorePoint {
    let conn = bed.connect();
    let opts = BackupOptions {
        change_tracking: tracking,
        quiesce: Quiesce::Off,
        control: std::sync::Arc::new(control),
        ..BackupOptions::new(kind)
    };
    let vm = bed.vm();
    match backup_vm(&*conn, store, &vm, opts, &mut |_| ()) {
        Ok(o) => o.point,
        Err(e) => panic!("conformance: a {} backup of {vm} failed: {e}", kind.as_str()),
    }
}

fn point_equals_disks(bed: &dyn Bed, store: &Store, point: &RestorePoint, vm: &str, what: &str) {
    for d in &point.disks {
        let reader = store.open_disk(&point.point_id, &d.key).expect("the point's disk opens");
        let mut got = vec![0u8; reader.size() as usize];
        reader.read_at(&mut got, 0).expect("the point's disk reads");
        let want = bed.disk(vm, &d.key);
        assert!(got == want, "conformance: {what}: disk {} of {vm} differs from point {}", d.key, point.point_id);
    }
}

fn nothing_left(bed: &dyn Bed, what: &str) {
    let left = bed.leftovers(&bed.vm());
    assert!(left.is_empty(), "conformance: {what} left on the platform: {left:?}");
}

/// Runs every check against `bed`.
pub fn run(bed: &mut dyn Bed) {
    let vm = bed.vm();
    let conn = bed.connect();

    // Inventory and description.
    conn.test_connection().expect("conformance: the connection test passes");
    let listed = conn.list_vms().expect("conformance: VMs are listed");
    let me = listed.iter().find(|v| v.name == vm).unwrap_or_else(|| panic!("conformance: {vm} is not listed"));
    assert_eq!(conn.find_vm(&me.uuid).map(|v| v.name).ok(), Some(vm.clone()), "conformance: found by its id");
    let inventory = conn.inventory().expect("conformance: the inventory is read");
    assert!(inventory.vms.iter().any(|v| v.name == vm) && !inventory.storage.is_empty(), "conformance: inventory");
    let d = conn.describe(&vm).expect("conformance: the VM is described");
    assert!(!d.key.is_empty() && d.name == vm && !d.disks.is_empty(), "conformance: description {d:?}");
    assert!(d.native.is_some(), "conformance: the native configuration is kept");
    assert!(conn.describe("no-such-vm-anywhere").is_err(), "conformance: an unknown VM is an error");
    let key = d.disks[0].key.clone();

    // A full backup holds the disks as they are.
    let store = Store::init(&bed.dir().join("conformance-store"), InitOptions::default()).expect("a store");
    bed.write(&key, 0, 1 << 20);
    let full = backup(bed, &store, BackupType::Full, ChangeTracking::Auto, JobControl::default());
    assert!(full.disks.iter().all(|d| d.full_reason.is_none()), "conformance: a full has no fallback reason");
    point_equals_disks(bed, &store, &full, &vm, "full");
    nothing_left(bed, "a committed full");

    // An incremental reads the extent around a 64 KiB write, not the disks.
    bed.write(&key, 5 << 20, 64 << 10);
    let inc = backup(bed, &store, BackupType::Incremental, ChangeTracking::Auto, JobControl::default());
    assert_eq!(inc.parent.as_deref(), Some(full.point_id.as_str()), "conformance: the incremental's base");
    assert!(inc.disks.iter().all(|d| d.full_reason.is_none()), "conformance: incremental fell back: {:?}", inc.disks);
    let size: u64 = inc.disks.iter().map(|d| d.size).sum();
    assert!(
        inc.stats.read_bytes <= 8 << 20 && inc.stats.read_bytes < size,
        "conformance: the incremental read {} bytes for 64 KiB written",
        inc.stats.read_bytes
    );
    point_equals_disks(bed, &store, &inc, &vm, "incremental");
    nothing_left(bed, "a committed incremental");

    // Change tracking off: read whole, and the point says why.
    let off = backup(bed, &store, BackupType::Incremental, ChangeTracking::Off, JobControl::default());
    assert!(
        off.disks.iter().all(|d| d.full_reason.is_some()),
        "conformance: no reason for a full read {:?}",
        off.disks
    );
    point_equals_disks(bed, &store, &off, &vm, "change tracking off");

    // A session that does not commit, and a backup stopped before its first read, leave nothing;
    // the next incremental still counts from a committed point.
    let plan = BackupPlan {
        requested: BackupType::Full,
        base: None,
        include: vec![],
        keep_change_ids: vec![],
        quiesce: Quiesce::Off,
        change_tracking: ChangeTracking::Auto,
        lan_free: false,
        control: JobControl::new(),
    };
    let session = conn.begin_backup(&vm, &plan).expect("conformance: a session begins");
    assert!(!bed.leftovers(&vm).is_empty(), "conformance: a running session shows on the platform");
    session.finish(false).expect("conformance: an uncommitted session ends");
    nothing_left(bed, "an uncommitted session");
    let control = JobControl::new();
    let opts =
        BackupOptions { control: control.clone(), quiesce: Quiesce::Off, ..BackupOptions::new(BackupType::Full) };
    let stopped = backup_vm(&*bed.connect(), &store, &vm, opts, &mut |_| control.stop());
    assert!(stopped.is_err(), "conformance: a backup stopped at its first progress committed");
    nothing_left(bed, "a backup stopped mid-transfer");
    bed.write(&key, 2 << 20, 4096);
    let after = backup(bed, &store, BackupType::Incremental, ChangeTracking::Auto, JobControl::default());
    point_equals_disks(bed, &store, &after, &vm, "incremental after an uncommitted session");
    assert!(after.disks.iter().all(|d| d.full_reason.is_none()), "conformance: {:?}", after.disks);

    // Restore as a new VM: checked up front, then byte-identical.
    let name = format!("{vm}-conformance");
    let spec = NewVmSpec {
        name: name.clone(),
        cpus: None,
        memory_mib: None,
        storage: bed.storage(),
        network: None,
        host: None,
        disk_format: None,
        disk_sizes: Default::default(),
        start: false,
        keep_macs: false,
    };
    conn.check_restore(RestoreCheck::NewVm(&spec)).expect("conformance: a restore with a free name passes");
    let taken = NewVmSpec { name: vm.clone(), ..spec.clone() };
    match conn.check_restore(RestoreCheck::NewVm(&taken)) {
        Err(CheckError::Conflict(r)) => assert_eq!(r.field, "name", "conformance: {r:?}"),
        other => panic!("conformance: a restore onto an existing name was not refused: {other:?}"),
    }
    let readers = store.open_disks(&after.point_id).expect("the point's disks open");
    let disks: Vec<RestoreDisk<'_>> =
        readers.iter().map(|(k, r)| RestoreDisk { key: k.clone(), reader: r, change_id: None }).collect();
    let made = conn.restore_as_new_vm(&after.vm, &disks, &spec, &JobControl::default());
    let made = made.unwrap_or_else(|e| panic!("conformance: restore as a new VM: {e}"));
    let differ: Vec<&String> = readers
        .iter()
        .filter(|(k, r)| {
            let mut want = vec![0u8; r.size() as usize];
            r.read_at(&mut want, 0).unwrap();
            bed.disk(&made, k) != want
        })
        .map(|(k, _)| k)
        .collect();
    bed.remove(&made);
    assert!(differ.is_empty(), "conformance: restored disks {differ:?} differ from point {}", after.point_id);
}
