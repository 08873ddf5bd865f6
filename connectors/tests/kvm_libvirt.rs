//! The KVM connector against the real stack: libvirtd, QEMU, checkpoints, the backup API and
//! NBD. A two-disk VM is written to through QEMU's block layer (qemu-io on the monitor), backed
//! up as full, incremental, differential and incremental points, and every point is compared
//! byte for byte with what the disks held when it was taken. Failure paths: a checkpoint deleted
//! behind our back, a run killed mid-backup, an ingest that fails, the VM powered off and the NBD
//! connection cut mid-read.

use connectors::{
    backup_vm, backup_vms, BackupOptions, BackupPlan, Connector, Credentials, JobControl, KvmConnector, NewVmSpec,
    Quiesce, RestoreDisk, SnapshotMode, TlsFiles,
};
use holdfast_tests::kvm::{
    assert_point_matches, virsh, TestVm, DISK, MIB, SSH_URI, TCP_PASSWORD, TCP_URI, TCP_USER, TLS_CLIENT_DIR, TLS_URI,
    URI,
};
use vds_store::*;

/// A restored VM and its pool, removed when the test ends.
struct Restored(String, String);

impl Drop for Restored {
    fn drop(&mut self) {
        for args in [
            vec!["destroy", &self.0],
            vec!["undefine", "--checkpoints-metadata", &self.0],
            vec!["pool-destroy", &self.1],
        ] {
            let _ = std::process::Command::new("virsh").args(["-c", URI]).args(args).output();
        }
    }
}

/// Restores `disks` as two more VMs (raw and qcow2) with vdb grown from 64 to 96 MiB, checks each
/// volume's size and contents against `model` (vdb's added space empty), then removes them; and
/// checks that a smaller size and a disk the point lacks are refused, leaving no volume behind.
fn check_grown_restores(
    conn: &KvmConnector,
    source: &VmDescription,
    disks: &[RestoreDisk<'_>],
    spec: &NewVmSpec,
    pool_dir: &std::path::Path,
    model: &[Vec<u8>],
    dir: &std::path::Path,
) {
    let grown = 96 * MIB;
    for format in ["raw", "qcow2"] {
        let name = format!("{}-grown-{format}", spec.name);
        let sizes = [("vdb".to_string(), grown as u64)].into();
        let want = NewVmSpec {
            name: name.clone(),
            disk_format: Some(format.into()),
            disk_sizes: sizes,
            start: false,
            ..spec.clone()
        };
        conn.restore_as_new_vm(source, disks, &want, &JobControl::default()).unwrap();
        for (i, dev) in ["vda", "vdb"].iter().enumerate() {
            let image = pool_dir.join(format!("{name}-{dev}.{format}"));
            let raw = dir.join(format!("grown-{dev}.raw"));
            let out = std::process::Command::new("qemu-img")
                .args(["convert", "-U", "-f", format, "-O", "raw"])
                .arg(&image)
                .arg(&raw)
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            let got = std::fs::read(&raw).unwrap();
            let size = if *dev == "vdb" { grown } else { DISK };
            assert_eq!(got.len(), size, "{format} {dev}: the volume's size");
            assert!(got[..DISK] == model[i][..], "{format} {dev}: the point's data");
            assert!(got[DISK..].iter().all(|&b| b == 0), "{format} {dev}: the added space is not empty");
            std::fs::remove_file(&raw).unwrap();
            std::fs::remove_file(&image).unwrap();
        }
        virsh(&["undefine", &name]);
    }
    let before = std::fs::read_dir(pool_dir).unwrap().count();
    for (sizes, want) in [
        (vec![("vdb", DISK as u64 - 512)], "never shrink"),
        (vec![("vdb", DISK as u64 + 100)], "512-byte sectors"),
        (vec![("vdz", DISK as u64 * 2)], "disk vdz: not in the restore point"),
    ] {
        let bad = NewVmSpec {
            name: format!("{}-refused", spec.name),
            disk_sizes: sizes.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
            ..spec.clone()
        };
        let err = conn.restore_as_new_vm(source, disks, &bad, &JobControl::default()).unwrap_err().to_string();
        assert!(err.contains(want) && err.contains(&bad.name), "{err}");
    }
    assert_eq!(std::fs::read_dir(pool_dir).unwrap().count(), before, "a refused restore made a volume");
    // A libvirt platform is one host: a restore may name it, and no other.
    let elsewhere =
        NewVmSpec { name: format!("{}-elsewhere", spec.name), host: Some("no-such-host".into()), ..spec.clone() };
    let err = conn.check_restore(connectors::RestoreCheck::NewVm(&elsewhere)).unwrap_err().to_string();
    assert!(err.contains("\"no-such-host\"") && err.contains("the one host"), "{err}");
    let here = NewVmSpec { host: Some(conn.inventory().unwrap().hosts[0].name.clone()), ..elsewhere };
    conn.check_restore(connectors::RestoreCheck::NewVm(&here)).expect("its own host is taken");
}

/// A running test VM, an empty store beside it, and a connector to its libvirt.
fn bed(tag: &str) -> (TestVm, Store, KvmConnector) {
    let vm = TestVm::start(tag);
    let store = Store::init(&vm.dir.join("store"), InitOptions::default()).unwrap();
    let conn = KvmConnector::open(URI, &vm.dir.join("work"), None).unwrap();
    (vm, store, conn)
}

fn opts(requested: BackupType, quiesce: Quiesce) -> BackupOptions {
    BackupOptions { threads: 2, quiesce, ..BackupOptions::new(requested) }
}

fn backup(conn: &KvmConnector, store: &Store, vm: &TestVm, kind: BackupType) -> RestorePoint {
    let outcome = backup_vm(conn, store, &vm.name, opts(kind, Quiesce::IfPossible), &mut |_| {}).unwrap();
    assert!(outcome.warnings.is_empty(), "{:?}", outcome.warnings);
    assert!(outcome.transport.contains("nbd"));
    // These OS-less guests have no agent: crash-consistent, and the point says why.
    assert!(
        outcome.consistency.contains("crash-consistent") && outcome.consistency.contains("agent"),
        "{}",
        outcome.consistency
    );
    assert_eq!(outcome.point.consistency.as_deref(), Some(outcome.consistency.as_str()));
    assert!(!vm.has_job(), "the backup job was left running after {}", outcome.point.point_id);
    outcome.point
}

#[test]
fn full_incremental_differential_chain_restores_every_state() {
    let (mut vm, store, conn) = bed("chain");
    let hello = conn.test_connection().unwrap();
    assert!(hello.contains("libvirt") && hello.contains("QEMU"), "{hello}");
    assert!(conn.list_vms().unwrap().iter().any(|v| v.name == vm.name && v.running));
    let d = conn.describe(&vm.name).unwrap();
    assert_eq!(
        d.disks.iter().map(|d| (d.key.as_str(), d.size)).collect::<Vec<_>>(),
        [("vda", DISK as u64), ("vdb", DISK as u64)]
    );
    assert_eq!(d.nics[0].mac.as_deref(), Some("52:54:00:12:34:56"));
    assert!(d.native.as_ref().unwrap().text.contains(&vm.name));

    vm.write(0, 0xab, MIB, 4 * MIB);
    vm.write(1, 0xcd, 10 * MIB, MIB);
    let p1 = backup(&conn, &store, &vm, BackupType::Full);
    assert_eq!(p1.backup_type, BackupType::Full);
    assert_point_matches(&store, &p1, &vm.model, &vm.dir);

    vm.write(0, 0x11, 2 * MIB, 64 * 1024);
    vm.write(1, 0x22, 40 * MIB, 8 * MIB);
    let p2 = backup(&conn, &store, &vm, BackupType::Incremental);
    assert_eq!((p2.backup_type, p2.parent.as_deref()), (BackupType::Incremental, Some(p1.point_id.as_str())));
    assert_eq!(p2.disks[0].read_bytes, 4 * MIB as u64, "vda: one dirty extent");
    assert_eq!(p2.disks[1].read_bytes, 8 * MIB as u64, "vdb: two dirty extents");
    assert_point_matches(&store, &p2, &vm.model, &vm.dir);

    vm.write(0, 0x33, 30 * MIB, MIB);
    let p3 = backup(&conn, &store, &vm, BackupType::Differential);
    assert_eq!((p3.backup_type, p3.parent.as_deref()), (BackupType::Differential, Some(p1.point_id.as_str())));
    // Everything since the full: vda's extents 0 and 7, vdb's extents 10 and 11.
    assert_eq!(p3.disks[0].read_bytes, 8 * MIB as u64);
    assert_eq!(p3.disks[1].read_bytes, 8 * MIB as u64);
    assert_point_matches(&store, &p3, &vm.model, &vm.dir);

    vm.write(1, 0x44, 63 * MIB, MIB);
    let p4 = backup(&conn, &store, &vm, BackupType::Incremental);
    assert_eq!((p4.backup_type, p4.parent.as_deref()), (BackupType::Incremental, Some(p3.point_id.as_str())));
    assert_eq!(p4.disks[0].read_bytes, 0);
    assert_eq!(p4.disks[1].read_bytes, 4 * MIB as u64);
    assert_point_matches(&store, &p4, &vm.model, &vm.dir);
    // Old checkpoints do not pile up: only the newest (for incrementals) and the newest full's
    // (for differentials) remain.
    let cp = |p: &RestorePoint| p.disks[0].change_id.clone().unwrap();
    let mut want = vec![cp(&p1), cp(&p4)];
    want.sort();
    let mut have = vm.checkpoints();
    have.sort();
    assert_eq!(have, want);
    // Earlier points are untouched by later ones.
    let mut m1 = vec![vec![0u8; DISK]; 2];
    m1[0][MIB..5 * MIB].fill(0xab);
    m1[1][10 * MIB..11 * MIB].fill(0xcd);
    assert_point_matches(&store, &p1, &m1, &vm.dir);

    // Restore p2 as a new VM: new name, UUID and MAC, other CPU and memory, disks in a pool.
    let model_p2 = {
        let mut m = vec![vec![0u8; DISK]; 2];
        m[0][MIB..5 * MIB].fill(0xab);
        m[0][2 * MIB..2 * MIB + 64 * 1024].fill(0x11);
        m[1][10 * MIB..11 * MIB].fill(0xcd);
        m[1][40 * MIB..48 * MIB].fill(0x22);
        m
    };
    let pool = format!("{}-pool", vm.name);
    let pool_dir = vm.dir.join("pool");
    std::fs::create_dir_all(&pool_dir).unwrap();
    virsh(&["pool-create-as", &pool, "dir", "--target", pool_dir.to_str().unwrap()]);
    let restored = Restored(format!("{}-restored", vm.name), pool.clone());
    // The network the user picks: an isolated libvirt network (a bridge, no addresses) of this test.
    let net = holdfast_tests::kvm::TestNetwork::create(&vm.name);
    let readers: Vec<DiskReader> = ["vda", "vdb"].iter().map(|k| store.open_disk(&p2.point_id, k).unwrap()).collect();
    let disks: Vec<RestoreDisk<'_>> = ["vda", "vdb"]
        .iter()
        .zip(&readers)
        .map(|(k, r)| RestoreDisk { key: k.to_string(), reader: r, change_id: None })
        .collect();
    let spec = NewVmSpec {
        name: restored.0.clone(),
        cpus: Some(2),
        memory_mib: Some(256),
        storage: pool.clone(),
        network: Some(net.0.clone()),
        host: None,
        disk_format: None,
        disk_sizes: Default::default(),
        start: true,
        keep_macs: false,
    };
    assert_eq!(conn.restore_as_new_vm(&p2.vm, &disks, &spec, &JobControl::default()).unwrap(), restored.0);
    let new = conn.describe(&restored.0).unwrap();
    assert_ne!(new.uuid, p2.vm.uuid);
    assert_eq!((new.cpus, new.memory_mib), (2, 256));
    assert_eq!(p2.vm.nics[0].network, None, "the original NIC is user-mode");
    assert_eq!(new.nics[0].network.as_deref(), Some(net.0.as_str()), "the NIC joins the chosen network");
    assert!(virsh(&["domiflist", &restored.0]).contains(&net.0), "the running VM's NIC is on {}", net.0);
    assert!(new.nics[0].mac.is_some() && new.nics[0].mac != p2.vm.nics[0].mac, "a new MAC address");
    assert!(conn.list_vms().unwrap().iter().any(|v| v.name == restored.0 && v.running));
    // The domain comes back as it was defined (a fresh one would boot from hd), of its type.
    let xml = virsh(&["dumpxml", "--inactive", &restored.0]);
    let native = &p2.vm.native.as_ref().unwrap().text;
    let kind = if native.contains("<domain type='qemu'") { "qemu" } else { "kvm" };
    let kept = xml.contains(&format!("<domain type='{kind}'")) && xml.contains("<boot dev='fd'/>");
    assert!(kept, "the definition is not kept: {xml}");
    for (i, dev) in ["vda", "vdb"].iter().enumerate() {
        let path = pool_dir.join(format!("{}-{dev}.raw", restored.0));
        assert!(std::fs::read(&path).unwrap() == model_p2[i], "restored {dev} differs from point {}", p2.point_id);
        use std::os::unix::fs::MetadataExt;
        let allocated = std::fs::metadata(&path).unwrap().blocks() * 512;
        assert!(allocated < 16 * MIB as u64, "restored {dev} is not sparse: {allocated} bytes allocated");
    }
    let again = conn.restore_as_new_vm(&p2.vm, &disks, &spec, &JobControl::default()).unwrap_err().to_string();
    assert!(again.contains("exists already"), "{again}");
    // As qcow2 on this host: the volumes are written in place, as compact qcow2 v3 images that
    // QEMU checks clean and reads as the point (the remote test below covers the stream path).
    let as_qcow2 = NewVmSpec { name: format!("{}-q", restored.0), disk_format: Some("qcow2".into()), ..spec.clone() };
    conn.restore_as_new_vm(&p2.vm, &disks, &as_qcow2, &JobControl::default()).unwrap();
    virsh(&["destroy", &as_qcow2.name]);
    virsh(&["undefine", &as_qcow2.name]);
    for (i, dev) in ["vda", "vdb"].iter().enumerate() {
        let image = pool_dir.join(format!("{}-{dev}.qcow2", as_qcow2.name));
        let want = vm.dir.join(format!("p2-{dev}.raw"));
        std::fs::write(&want, &model_p2[i]).unwrap();
        let check = std::process::Command::new("qemu-img").args(["check", "-U"]).arg(&image).output().unwrap();
        assert!(check.status.success(), "{dev}: {}", String::from_utf8_lossy(&check.stdout));
        let cmp = std::process::Command::new("qemu-img")
            .args(["compare", "-U", "-f", "qcow2", "-F", "raw"])
            .arg(&image)
            .arg(&want)
            .output()
            .unwrap();
        assert!(
            cmp.status.success(),
            "{dev} differs from point {}: {}",
            p2.point_id,
            String::from_utf8_lossy(&cmp.stdout)
        );
        let size = std::fs::metadata(&image).unwrap().len();
        assert!(size < 16 * MIB as u64, "restored {dev} as qcow2 holds only its data: {size} bytes");
    }
    // Restored with vdb grown from 64 to 96 MiB, as raw and as qcow2: the point's data, then empty
    // space. A smaller size or a disk the point lacks is refused before any volume is made.
    check_grown_restores(&conn, &p2.vm, &disks, &spec, &pool_dir, &model_p2, &vm.dir);

    // The restored VM has raw disks: it backs up (full every time, saying why), no checkpoint.
    for kind in [BackupType::Full, BackupType::Incremental] {
        let opts = opts(kind, Quiesce::IfPossible);
        let r = backup_vm(&conn, &store, &restored.0, opts, &mut |_| {}).unwrap().point;
        assert_eq!(r.backup_type, BackupType::Full);
        assert!(r.disks.iter().all(|d| d.change_id.is_none()));
        if kind == BackupType::Incremental {
            assert!(
                r.disks.iter().all(|d| d.full_reason.as_deref().is_some_and(|x| x.contains("raw"))),
                "{:?}",
                r.disks
            );
        }
        assert_point_matches(&store, &r, &model_p2, &vm.dir);
    }
    drop(restored);

    // A checkpoint deleted behind our back: the next incremental is a full, and says why.
    let cp = p4.disks[0].change_id.clone().unwrap();
    virsh(&["checkpoint-delete", &vm.name, &cp]);
    vm.write(0, 0x55, 50 * MIB, MIB);
    let p5 = backup(&conn, &store, &vm, BackupType::Incremental);
    assert_eq!(p5.backup_type, BackupType::Full);
    assert!(p5
        .disks
        .iter()
        .all(|d| d.full_reason.as_deref().is_some_and(|r| r.contains(&cp) && r.contains("no longer exists"))));
    assert_point_matches(&store, &p5, &vm.model, &vm.dir);
}

#[test]
fn a_killed_run_is_cleaned_up_and_a_failed_ingest_leaves_nothing_behind() {
    let (mut vm, store, conn) = bed("faults");
    vm.write(0, 0x61, 0, 2 * MIB);
    let p1 = backup(&conn, &store, &vm, BackupType::Full);
    let before = vm.checkpoints();
    assert_eq!(before.len(), 1);

    // Quiesce required but no guest agent: a clear error, and nothing left on the hypervisor.
    let err = backup_vm(&conn, &store, &vm.name, opts(BackupType::Incremental, Quiesce::Required), &mut |_| {})
        .err()
        .expect("quiesce required without an agent fails")
        .to_string();
    assert!(err.contains("quiescing") && err.contains("agent"), "{err}");
    assert!(!vm.has_job());
    assert_eq!(vm.checkpoints(), before);

    // As if Holdfast were killed mid-backup: the session is never finished.
    let plan = BackupPlan {
        requested: BackupType::Full,
        base: None,
        include: vec![],
        keep_change_ids: vec![],
        quiesce: Quiesce::Off,
        change_tracking: Default::default(),
        lan_free: false,
        control: JobControl::new(),
    };
    let session = conn.begin_backup(&vm.name, &plan).unwrap();
    std::mem::forget(session);
    assert!(vm.has_job());
    assert_eq!(vm.checkpoints().len(), 2);
    // The next run ends the stale job, drops its checkpoint and succeeds.
    vm.write(1, 0x62, 5 * MIB, MIB);
    let p2 = backup(&conn, &store, &vm, BackupType::Incremental);
    assert_eq!(p2.backup_type, BackupType::Incremental);
    assert_eq!(p2.parent.as_deref(), Some(p1.point_id.as_str()));
    assert_point_matches(&store, &p2, &vm.model, &vm.dir);
    assert_eq!(vm.checkpoints().len(), 2, "the stale checkpoint is gone; p2's remains");

    // An ingest that fails (a store whose point directory cannot be written) ends the job and
    // removes the checkpoint this run made, so the next incremental still counts from p2.
    let points = vm.dir.join("store/points");
    std::fs::rename(&points, vm.dir.join("points-aside")).unwrap();
    std::fs::write(&points, b"not a directory").unwrap();
    let checkpoints = vm.checkpoints();
    vm.write(0, 0x63, 20 * MIB, MIB);
    let err = backup_vm(&conn, &store, &vm.name, opts(BackupType::Incremental, Quiesce::IfPossible), &mut |_| {})
        .err()
        .expect("ingest into a broken store fails");
    assert!(err.to_string().contains("points"), "{err}");
    assert!(!vm.has_job(), "the failed run left its backup job");
    assert_eq!(vm.checkpoints(), checkpoints, "the failed run left its checkpoint");
    std::fs::remove_file(&points).unwrap();
    std::fs::rename(vm.dir.join("points-aside"), &points).unwrap();
    let p3 = backup(&conn, &store, &vm, BackupType::Incremental);
    assert_eq!(p3.parent.as_deref(), Some(p2.point_id.as_str()));
    assert_eq!(p3.disks[0].read_bytes, 4 * MIB as u64);
    assert_point_matches(&store, &p3, &vm.model, &vm.dir);
}

#[test]
fn a_disk_added_since_the_last_backup_gets_a_full_while_the_others_stay_incremental() {
    let (mut vm, store, conn) = bed("newdisk");
    vm.write(0, 0x71, 0, MIB);
    backup(&conn, &store, &vm, BackupType::Full);

    vm.hotplug_qcow2("disk2.qcow2", "vdc", &DISK.to_string());
    vm.qemu_io(2, "write -P 0x73 4M 1M");
    vm.write(1, 0x72, 8 * MIB, MIB);

    let p = backup(&conn, &store, &vm, BackupType::Incremental);
    assert_eq!(p.backup_type, BackupType::Incremental);
    let by_key = |k: &str| p.disks.iter().find(|d| d.key == k).unwrap();
    assert_eq!(by_key("vda").backup_type, BackupType::Incremental);
    assert_eq!(by_key("vda").read_bytes, 0);
    assert_eq!(by_key("vdb").backup_type, BackupType::Incremental);
    assert_eq!(by_key("vdb").read_bytes, 4 * MIB as u64);
    let vdc = by_key("vdc");
    assert_eq!(vdc.backup_type, BackupType::Full);
    assert!(vdc.full_reason.as_deref().unwrap().contains("new disk"), "{:?}", vdc.full_reason);
    let mut want = vec![0u8; DISK];
    want[4 * MIB..5 * MIB].fill(0x73);
    let out = vm.dir.join("vdc.raw");
    let f = std::fs::File::options().write(true).create_new(true).open(&out).unwrap();
    store.open_disk(&p.point_id, "vdc").unwrap().export(&f, 2, &|_, _| ()).unwrap();
    assert!(std::fs::read(&out).unwrap() == want, "the new disk's backup differs");
    assert_point_matches(&store, &p, &vm.model, &vm.dir);

    // A qcow2 v2 image cannot keep a bitmap: QEMU would refuse the whole checkpoint. That disk is
    // read whole, and says why; the others stay incremental.
    let v2 = vm.dir.join("disk3-v2.qcow2");
    let st = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-o", "compat=0.10"])
        .arg(&v2)
        .arg("16M")
        .status()
        .unwrap();
    assert!(st.success());
    virsh(&[
        "attach-disk",
        &vm.name,
        v2.to_str().unwrap(),
        "vdd",
        "--driver",
        "qemu",
        "--subdriver",
        "qcow2",
        "--live",
    ]);
    for round in 0..2 {
        let p = backup(&conn, &store, &vm, BackupType::Incremental);
        let by_key = |k: &str| p.disks.iter().find(|d| d.key == k).unwrap();
        assert_eq!(p.backup_type, BackupType::Incremental);
        assert_eq!(by_key("vdb").backup_type, BackupType::Incremental);
        let vdd = by_key("vdd");
        assert_eq!(vdd.backup_type, BackupType::Full);
        // New in the first round (the store says so); a v2 image in the next.
        let want = if round == 0 { "new disk" } else { "qcow2 v2" };
        assert!(vdd.full_reason.as_deref().unwrap().contains(want), "{:?}", vdd.full_reason);
    }
}

#[test]
fn a_restore_killed_midway_is_cleaned_up_from_its_volume_list_and_a_defined_vm_is_kept() {
    let (mut vm, store, conn) = bed("killedrestore");
    vm.write(0, 0x21, 0, 2 * MIB);
    let p = backup(&conn, &store, &vm, BackupType::Full);
    let pool = format!("{}-pool", vm.name);
    let pool_dir = vm.dir.join("pool");
    std::fs::create_dir_all(&pool_dir).unwrap();
    virsh(&["pool-create-as", &pool, "dir", "--target", pool_dir.to_str().unwrap()]);
    let _cleanup = Restored(format!("{}-held", vm.name), pool.clone());
    let readers: Vec<DiskReader> = ["vda", "vdb"].iter().map(|k| store.open_disk(&p.point_id, k).unwrap()).collect();
    let disks: Vec<RestoreDisk<'_>> = ["vda", "vdb"]
        .iter()
        .zip(&readers)
        .map(|(k, r)| RestoreDisk { key: k.to_string(), reader: r, change_id: None })
        .collect();
    let spec = |name: &str| NewVmSpec {
        name: name.into(),
        cpus: None,
        memory_mib: None,
        storage: pool.clone(),
        network: None,
        host: None,
        disk_format: Some("raw".into()),
        disk_sizes: Default::default(),
        start: false,
        keep_macs: false,
    };
    // A restore held at 0 MB/s in its first disk stands for one whose process was killed there:
    // a second connector on the same work directory, as after a restart, cleans up after it.
    let held = |name: String, then: &dyn Fn(&str)| {
        let control = JobControl::new();
        control.set_limit(Some(0));
        std::thread::scope(|s| {
            let running = s.spawn(|| {
                let other = KvmConnector::open(URI, &vm.dir.join("work"), None).unwrap();
                other.restore_as_new_vm(&p.vm, &disks, &spec(&name), &control)
            });
            let volume = pool_dir.join(format!("{name}-vda.raw"));
            let t = std::time::Instant::now();
            while !volume.exists() {
                assert!(t.elapsed().as_secs() < 30, "the restore made no volume");
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            // Stopped even when a check in `then` fails, so a failure ends the test, not hangs it.
            struct StopOnDrop<'a>(&'a JobControl);
            impl Drop for StopOnDrop<'_> {
                fn drop(&mut self) {
                    self.0.stop();
                }
            }
            let stop = StopOnDrop(&control);
            then(&name);
            drop(stop);
            let err = running.join().unwrap().unwrap_err().to_string();
            assert!(err.contains("stopped"), "{err}");
        });
    };
    // The VM defined by the time of the cleanup (the restore had got that far): kept as it is.
    held(format!("{}-held", vm.name), &|name| {
        let xml = vm.dir.join("held.xml");
        std::fs::write(&xml, format!("<domain type='kvm'><name>{name}</name><memory unit='MiB'>64</memory><os><type arch='x86_64'>hvm</type></os></domain>")).unwrap();
        virsh(&["define", xml.to_str().unwrap()]);
        let said = conn.clean_up_killed_restore(name).unwrap().unwrap_or_default();
        assert!(said.contains("had been defined") && said.contains("kept"), "{said}");
        assert!(pool_dir.join(format!("{name}-vda.raw")).exists(), "a defined VM's volume was removed");
        virsh(&["undefine", name]);
    });
    // Not defined: the volumes on its list go, and only those; a second cleanup finds nothing.
    let bystander = pool_dir.join(format!("{}-killed-vdb.raw", vm.name));
    std::fs::write(&bystander, b"not the restore's").unwrap();
    held(format!("{}-killed", vm.name), &|name| {
        virsh(&["pool-refresh", &pool]);
        let said = conn.clean_up_killed_restore(name).unwrap().unwrap_or_default();
        assert_eq!(said, format!("removed the volumes the restore had made: {name}-vda.raw (pool {pool})"));
        assert!(!pool_dir.join(format!("{name}-vda.raw")).exists(), "the restore's volume is still there");
        assert!(bystander.exists(), "a volume the restore had not made was removed");
        assert_eq!(conn.clean_up_killed_restore(name).unwrap(), None);
    });
    assert!(std::fs::read_dir(vm.dir.join("work/restoring")).unwrap().next().is_none(), "a volume list was left");
}

#[test]
fn a_disk_grown_since_the_last_backup_is_read_whole_and_says_so_then_goes_incremental_again() {
    let (mut vm, store, conn) = bed("resize");
    vm.write(0, 0x31, 0, MIB);
    vm.write(1, 0x32, 10 * MIB, MIB);
    let p1 = backup(&conn, &store, &vm, BackupType::Full);

    // vdb grows from 64 MiB to 96 MiB while the VM runs; the guest writes into the new part.
    virsh(&["blockresize", &vm.name, "vdb", &format!("{}B", 96 * MIB)]);
    vm.model[1].resize(96 * MIB, 0);
    vm.write(1, 0x33, 80 * MIB, MIB);
    vm.write(0, 0x34, 20 * MIB, MIB);
    let p2 = backup(&conn, &store, &vm, BackupType::Incremental);
    assert_eq!(p2.backup_type, BackupType::Incremental);
    assert_eq!(p2.parent.as_deref(), Some(p1.point_id.as_str()));
    let by_key = |p: &RestorePoint, k: &str| p.disks.iter().find(|d| d.key == k).unwrap().clone();
    assert_eq!(by_key(&p2, "vda").backup_type, BackupType::Incremental);
    let vdb = by_key(&p2, "vdb");
    assert_eq!(vdb.backup_type, BackupType::Full, "a grown disk is read whole");
    let reason = vdb.full_reason.unwrap_or_default();
    assert!(reason.contains("resized") && reason.contains(&(96 * MIB).to_string()), "{reason}");
    assert_eq!(vdb.size, 96 * MIB as u64);
    assert_point_matches(&store, &p2, &vm.model, &vm.dir);

    // The next run counts from p2 on the new size.
    vm.write(1, 0x35, 90 * MIB, 64 * 1024);
    let p3 = backup(&conn, &store, &vm, BackupType::Incremental);
    let vdb = by_key(&p3, "vdb");
    assert_eq!(vdb.backup_type, BackupType::Incremental, "{:?}", vdb.full_reason);
    assert!(vdb.read_bytes <= 4 * MIB as u64, "{} bytes read", vdb.read_bytes);
    assert_point_matches(&store, &p3, &vm.model, &vm.dir);
}

#[test]
fn restore_in_place_rewrites_a_stopped_vms_disks_and_backups_continue() {
    let (mut vm, store, conn) = bed("inplace");
    vm.write(0, 0x81, MIB, 3 * MIB);
    vm.write(1, 0x82, 20 * MIB, MIB);
    let p1 = backup(&conn, &store, &vm, BackupType::Full);
    let model_p1 = vm.model.clone();
    vm.write(0, 0x83, 2 * MIB, 8 * MIB);
    vm.write(1, 0x84, 40 * MIB, 2 * MIB);
    let p2 = backup(&conn, &store, &vm, BackupType::Incremental);

    let readers: Vec<DiskReader> = ["vda", "vdb"].iter().map(|k| store.open_disk(&p1.point_id, k).unwrap()).collect();
    let disks: Vec<RestoreDisk<'_>> = ["vda", "vdb"]
        .iter()
        .zip(&readers)
        .map(|(k, r)| RestoreDisk { key: k.to_string(), reader: r, change_id: None })
        .collect();
    let running = conn.restore_in_place(&vm.name, &disks, &JobControl::default()).unwrap_err().to_string();
    assert!(running.contains("running"), "{running}");

    virsh(&["destroy", &vm.name]);
    // A chunk only the second point has, damaged: restoring that point says how far it got.
    let mut p1_blobs = std::collections::HashSet::new();
    store
        .for_each_point_blob(&p1, &mut |id| {
            p1_blobs.insert(*id);
            Ok(())
        })
        .unwrap();
    let mut vda_only = p2.clone();
    vda_only.disks.retain(|d| d.key == "vda");
    let map = vda_only.disks[0].map.clone();
    let mut own = None;
    store
        .for_each_point_blob(&vda_only, &mut |id| {
            if !p1_blobs.contains(id) && id.to_hex() != map {
                own = Some(*id);
            }
            Ok(())
        })
        .unwrap();
    let blob = store.chunks().path(&own.expect("the second point has chunks of its own"));
    let good = std::fs::read(&blob).unwrap();
    let mut bad = good.clone();
    // The payload's last byte (the header's checksum field is not what a keyed read checks).
    bad[good.len() - 1] ^= 1;
    std::fs::write(&blob, bad).unwrap();
    let damaged: Vec<DiskReader> = ["vda"].iter().map(|k| store.open_disk(&p2.point_id, k).unwrap()).collect();
    let one = [RestoreDisk { key: "vda".into(), reader: &damaged[0], change_id: None }];
    let err = conn.restore_in_place(&vm.name, &one, &JobControl::default()).unwrap_err().to_string();
    assert!(err.contains("partly overwritten") && err.contains("reading bytes"), "{err}");
    std::fs::write(&blob, good).unwrap();

    conn.restore_in_place(&vm.name, &disks, &JobControl::default()).unwrap();
    for (i, dev) in ["vda", "vdb"].iter().enumerate() {
        let raw = vm.dir.join(format!("inplace-{dev}.raw"));
        let st = std::process::Command::new("qemu-img")
            .args(["convert", "-f", "qcow2", "-O", "raw"])
            .arg(vm.dir.join(format!("disk{i}.qcow2")))
            .arg(&raw)
            .status()
            .unwrap();
        assert!(st.success());
        assert!(std::fs::read(&raw).unwrap() == model_p1[i], "{dev} was not restored to point {}", p1.point_id);
    }

    // The VM runs on the restored disks, and the next incremental captures that state.
    virsh(&["start", &vm.name]);
    vm.model = model_p1;
    let p3 = backup(&conn, &store, &vm, BackupType::Incremental);
    assert_point_matches(&store, &p3, &vm.model, &vm.dir);
}

#[test]
fn a_vm_powered_off_mid_read_fails_the_backup_cleanly_and_the_next_run_succeeds() {
    let (mut vm, store, conn) = bed("nbddrop");
    // A third disk with 256 MiB of incompressible data, so the reads outlast `virsh destroy`.
    vm.hotplug_noise("big.qcow2", "vdc", 2, 9);
    vm.write(0, 0x91, 0, 4 * MIB);

    // At the first progress report the VM is powered off: QEMU, and with it the NBD server, is
    // gone in the middle of the reads. (Aborting the job alone does not cut an open connection.)
    let mut aborted = false;
    let err = backup_vm(&conn, &store, &vm.name, opts(BackupType::Full, Quiesce::Off), &mut |_| {
        if !aborted {
            aborted = true;
            virsh(&["destroy", &vm.name]);
        }
    })
    .err()
    .expect("a backup whose NBD server vanished fails");
    let text = err.to_string();
    assert!(aborted);
    assert!(text.contains("disk vd"), "{text}");
    assert!(vm.checkpoints().is_empty(), "the failed run's checkpoint is gone");
    assert!(store.scan(None).unwrap().0.is_empty(), "no half point");

    // The VM comes back (without the hot-plugged disk) and the next backup is whole and exact.
    virsh(&["start", &vm.name]);
    let p = backup(&conn, &store, &vm, BackupType::Full);
    assert_point_matches(&store, &p, &vm.model, &vm.dir);
}

#[test]
fn an_nbd_connection_cut_while_the_vm_runs_ends_the_job_and_the_next_run_counts_from_the_last_point() {
    let (mut vm, store, conn) = bed("nbdcut");
    vm.write(0, 0x71, 0, 2 * MIB);
    let p1 = backup(&conn, &store, &vm, BackupType::Full);
    let after_p1 = vm.checkpoints();

    // A new disk with 256 MiB of incompressible data: the incremental reads it whole, long
    // enough to cut the connection in the middle.
    let noise = vm.hotplug_noise("big.qcow2", "vdc", 2, 11);
    vm.write(1, 0x72, 3 * MIB, MIB);

    // At the first progress report QEMU's NBD server is stopped under the backup job: every
    // client is disconnected while the VM, its backup job and the new checkpoint live on, as
    // when the network between the appliance and the host fails.
    let mut cut = false;
    let err = backup_vm(&conn, &store, &vm.name, opts(BackupType::Incremental, Quiesce::Off), &mut |_| {
        if !cut {
            cut = true;
            virsh(&["qemu-monitor-command", &vm.name, r#"{"execute":"nbd-server-stop"}"#]);
        }
    })
    .err()
    .expect("a backup whose NBD connection was cut fails");
    let text = err.to_string();
    assert!(cut);
    assert!(text.contains(&vm.name) && text.contains("disk vdc") && text.contains("NBD"), "{text}");
    assert_eq!(virsh(&["domstate", &vm.name]).trim(), "running", "the VM kept running");
    assert!(!vm.has_job(), "the failed run left its backup job");
    assert_eq!(vm.checkpoints(), after_p1, "the failed run's checkpoint is gone, p1's kept");
    assert_eq!(store.scan(None).unwrap().0.len(), 1, "no half point");

    // The next run is an incremental from p1 (the new disk a full), whole and exact.
    let p2 = backup(&conn, &store, &vm, BackupType::Incremental);
    assert_eq!(p2.backup_type, BackupType::Incremental);
    assert_eq!(p2.parent.as_deref(), Some(p1.point_id.as_str()));
    assert_eq!(p2.disks.iter().find(|d| d.key == "vdc").unwrap().backup_type, BackupType::Full);
    assert_point_matches(&store, &p2, &vm.model, &vm.dir);
    let out = vm.dir.join("vdc.raw");
    let f = std::fs::File::options().write(true).create_new(true).open(&out).unwrap();
    store.open_disk(&p2.point_id, "vdc").unwrap().export(&f, 2, &|_, _| ()).unwrap();
    let got = std::fs::read(&out).unwrap();
    assert_eq!(got.len(), 1 << 30);
    assert!(got[..256 * MIB] == std::fs::read(&noise).unwrap()[..], "the new disk's data differs");
    assert!(got[256 * MIB..].iter().all(|&b| b == 0), "the new disk's unwritten part is not zero");
}

#[test]
fn a_remote_uri_authenticates_backs_up_over_nbd_tcp_and_restores_through_the_storage_api() {
    let (mut vm, store, _) = bed("remote");
    let work = vm.dir.join("work-remote");
    let wrong = Credentials { username: TCP_USER.into(), password: "not-the-password".into() };
    let err = KvmConnector::open(TCP_URI, &work, Some(&wrong)).err().expect("a wrong password is refused").to_string();
    assert!(err.contains(TCP_URI) && err.contains("authentication failed"), "{err}");
    let creds = Credentials { username: TCP_USER.into(), password: TCP_PASSWORD.into() };
    let conn = KvmConnector::open(TCP_URI, &work, Some(&creds)).unwrap();
    assert!(conn.test_connection().unwrap().contains("libvirt"));

    vm.write(0, 0x5a, 3 * MIB, 2 * MIB);
    vm.write(1, 0xa5, 20 * MIB, MIB);
    let name = vm.name.clone();
    let run = |kind| backup_vm(&conn, &store, &name, opts(kind, Quiesce::Off), &mut |_| {}).unwrap();
    let full = run(BackupType::Full);
    assert!(full.transport.contains("TCP to 127.0.0.1:"), "{}", full.transport);
    assert_point_matches(&store, &full.point, &vm.model, &vm.dir);
    vm.write(1, 0x3c, 33 * MIB, 64 * 1024);
    let inc = run(BackupType::Incremental).point;
    assert_eq!(inc.backup_type, BackupType::Incremental);
    assert_eq!((inc.disks[0].read_bytes, inc.disks[1].read_bytes), (0, 4 * MIB as u64));
    assert_point_matches(&store, &inc, &vm.model, &vm.dir);
    assert!(!vm.has_job());
    assert!(std::fs::read_dir(work.join("active")).unwrap().next().is_none(), "no backup left marked running");
    let leftovers: Vec<_> = std::fs::read_dir(&vm.dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".scratch"))
        .collect();
    assert!(leftovers.is_empty(), "scratch files left beside the disks: {leftovers:?}");

    // Restore through the remote connection: volumes created and uploaded with libvirt's storage API.
    let pool = format!("{}-pool", vm.name);
    let pool_dir = vm.dir.join("pool");
    std::fs::create_dir_all(&pool_dir).unwrap();
    virsh(&["pool-create-as", &pool, "dir", "--target", pool_dir.to_str().unwrap()]);
    let restored = Restored(format!("{}-restored", vm.name), pool.clone());
    // The inventory a restore wizard offers: the host, this VM, the new pool, libvirt's networks.
    let inv = conn.inventory().unwrap();
    assert!(inv.hosts.len() == 1 && inv.hosts[0].cpus > 0 && inv.hosts[0].memory_mib > 0, "{:?}", inv.hosts);
    assert!(inv.vms.iter().any(|v| v.name == vm.name && v.running));
    assert!(inv.storage.iter().any(|p| p.name == pool && p.active && p.capacity > 0), "{:?}", inv.storage);
    let nets = virsh(&["net-list", "--all", "--name"]);
    let want: Vec<&str> = nets.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    assert_eq!(inv.networks.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(), want);
    let readers: Vec<DiskReader> = ["vda", "vdb"].iter().map(|k| store.open_disk(&inc.point_id, k).unwrap()).collect();
    let disks: Vec<RestoreDisk<'_>> = ["vda", "vdb"]
        .iter()
        .zip(&readers)
        .map(|(k, r)| RestoreDisk { key: k.to_string(), reader: r, change_id: None })
        .collect();
    let spec = NewVmSpec {
        name: restored.0.clone(),
        cpus: None,
        memory_mib: None,
        storage: pool.clone(),
        network: None,
        host: None,
        disk_format: Some("qcow2".into()),
        disk_sizes: Default::default(),
        start: true,
        keep_macs: false,
    };
    conn.restore_as_new_vm(&inc.vm, &disks, &spec, &JobControl::default()).unwrap();
    // qcow2 volumes (written in one pass and uploaded as they are, nothing else left in the
    // pool) that QEMU checks clean, holding the point's data; the new VM's backups are
    // incremental, like any qcow2 VM's.
    let mut files: Vec<String> =
        std::fs::read_dir(&pool_dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    files.sort();
    assert_eq!(files, [format!("{}-vda.qcow2", restored.0), format!("{}-vdb.qcow2", restored.0)]);
    for (i, dev) in ["vda", "vdb"].iter().enumerate() {
        let want = vm.dir.join(format!("want-{dev}.raw"));
        std::fs::write(&want, &vm.model[i]).unwrap();
        let cmp = std::process::Command::new("qemu-img")
            .args(["compare", "-U", "-f", "qcow2", "-F", "raw"])
            .arg(pool_dir.join(format!("{}-{dev}.qcow2", restored.0)))
            .arg(&want)
            .output()
            .unwrap();
        assert!(cmp.status.success(), "restored {dev}: {}", String::from_utf8_lossy(&cmp.stdout));
        let check = std::process::Command::new("qemu-img")
            .args(["check", "-U"])
            .arg(pool_dir.join(format!("{}-{dev}.qcow2", restored.0)))
            .output()
            .unwrap();
        assert!(check.status.success(), "restored {dev}: {}", String::from_utf8_lossy(&check.stdout));
    }
    // Grown, through the upload stream (raw: a sparse stream ending in one hole; qcow2: the
    // image planned at the new size).
    check_grown_restores(&conn, &inc.vm, &disks, &spec, &pool_dir, &vm.model, &vm.dir);
    assert!(std::fs::read_dir(work.join("restoring")).unwrap().next().is_none(), "a restore left its volume list");
    let restored_full = backup_vm(&conn, &store, &restored.0, opts(BackupType::Full, Quiesce::Off), &mut |_| {});
    assert_point_matches(&store, &restored_full.unwrap().point, &vm.model, &vm.dir);
    let again = backup_vm(&conn, &store, &restored.0, opts(BackupType::Incremental, Quiesce::Off), &mut |_| {});
    let again = again.unwrap().point;
    assert_eq!(again.backup_type, BackupType::Incremental, "{:?}", again.disks[0].full_reason);
    assert!(again.disks.iter().all(|d| d.read_bytes == 0));
}

#[test]
fn a_multi_vm_job_takes_snapshots_serially_or_all_first_and_one_failure_spares_the_others() {
    let (mut a, store, conn) = bed("group-a");
    let mut b = TestVm::start("group-b");
    a.write(0, 0x71, 0, 2 * MIB);
    b.write(1, 0x72, 5 * MIB, 2 * MIB);
    let vms = vec![a.name.clone(), "no-such-vm-in-this-job".to_string(), b.name.clone()];
    let opts = opts(BackupType::Full, Quiesce::Off);
    for mode in [SnapshotMode::Serial, SnapshotMode::Parallel] {
        // While a's data is read, does b already have its backup job (its snapshot)?
        let mut b_had_job_during_a = None;
        let results = backup_vms(&conn, &store, &vms, &opts, mode, &mut |vm, _| {
            if vm == a.name && b_had_job_during_a.is_none() {
                b_had_job_during_a = Some(b.has_job());
            }
        });
        assert_eq!(b_had_job_during_a, Some(mode == SnapshotMode::Parallel), "{mode:?}");
        assert_eq!(results.iter().map(|(vm, _)| vm.as_str()).collect::<Vec<_>>(), vms);
        let err = results[1].1.as_ref().err().expect("the missing VM fails").to_string();
        assert!(err.contains("no-such-vm-in-this-job"), "{err}");
        for (i, vm) in [(0, &a), (2, &b)] {
            let out = results[i].1.as_ref().unwrap_or_else(|e| panic!("{mode:?} {}: {e}", vm.name));
            assert_point_matches(&store, &out.point, &vm.model, &vm.dir);
            assert!(!vm.has_job());
        }
    }
}

#[test]
fn remote_backups_can_require_nbd_over_tls_with_a_client_certificate() {
    let (mut vm, store, _) = bed("tls");
    let work = vm.dir.join("work-tls");
    let creds = Credentials { username: TCP_USER.into(), password: TCP_PASSWORD.into() };
    let pem = |f: &str| std::fs::read(std::path::Path::new(TLS_CLIENT_DIR).join(f)).unwrap();
    let files = TlsFiles { ca_pem: pem("ca-cert.pem"), client: Some((pem("client-cert.pem"), pem("client-key.pem"))) };
    let name = vm.name.clone();
    let connect = |tls: TlsFiles| {
        let mut c = KvmConnector::open(TCP_URI, &work, Some(&creds)).unwrap();
        c.set_nbd_tls(tls).unwrap();
        c
    };
    vm.write(0, 0x44, 7 * MIB, 3 * MIB);
    let conn = connect(files.clone());
    let full = backup_vm(&conn, &store, &name, opts(BackupType::Full, Quiesce::Off), &mut |_| {}).unwrap();
    assert!(full.transport.contains("TLS to 127.0.0.1:"), "{}", full.transport);
    assert_point_matches(&store, &full.point, &vm.model, &vm.dir);
    vm.write(1, 0x45, 50 * MIB, MIB);
    let inc = backup_vm(&conn, &store, &name, opts(BackupType::Incremental, Quiesce::Off), &mut |_| {}).unwrap();
    assert_eq!(inc.point.backup_type, BackupType::Incremental);
    assert_point_matches(&store, &inc.point, &vm.model, &vm.dir);

    // A server certificate from a CA we were not told to trust, and a missing client
    // certificate: each a clear error, and nothing left on the hypervisor.
    let checkpoints = vm.checkpoints();
    let untrusted = TlsFiles { ca_pem: pem("client-cert.pem"), client: files.client.clone() };
    let no_client_cert = TlsFiles { ca_pem: files.ca_pem.clone(), client: None };
    for (tls, want) in [(untrusted, "certificate"), (no_client_cert, "TLS")] {
        let err = backup_vm(&connect(tls), &store, &name, opts(BackupType::Incremental, Quiesce::Off), &mut |_| {})
            .err()
            .expect("the backup fails")
            .to_string();
        assert!(err.contains(want), "{err}");
        assert!(!vm.has_job(), "{err}: the backup job was left running");
        assert_eq!(vm.checkpoints(), checkpoints, "{err}: checkpoints changed");
    }
    let local = KvmConnector::open(URI, &work, None).unwrap().set_nbd_tls(files).unwrap_err().to_string();
    assert!(local.contains("local URI"), "{local}");
}

#[test]
fn ssh_and_tls_uris_reach_libvirt_back_up_over_nbd_tcp_and_name_what_failed() {
    holdfast_tests::kvm::ensure_sshd();
    let (mut vm, store, _) = bed("ssh-tls");
    let name = vm.name.clone();
    for (i, uri) in [SSH_URI, TLS_URI].into_iter().enumerate() {
        let conn = KvmConnector::open(uri, &vm.dir.join(format!("work-{i}")), None).unwrap();
        assert!(conn.test_connection().unwrap().contains("libvirt"), "{uri}");
        assert!(conn.list_vms().unwrap().iter().any(|v| v.name == name), "{uri}: the VM is listed");
        vm.write(i, 0x50 + i as u8, (8 + i) * MIB, 2 * MIB);
        let full = backup_vm(&conn, &store, &name, opts(BackupType::Full, Quiesce::Off), &mut |_| {}).unwrap();
        assert!(full.transport.contains("TCP to 127.0.0.1:"), "{uri}: {}", full.transport);
        assert_point_matches(&store, &full.point, &vm.model, &vm.dir);
        vm.write(1 - i, 0x60 + i as u8, 30 * MIB, MIB);
        let inc = backup_vm(&conn, &store, &name, opts(BackupType::Incremental, Quiesce::Off), &mut |_| {}).unwrap();
        assert_eq!(inc.point.backup_type, BackupType::Incremental, "{uri}");
        assert_eq!(inc.point.disks.iter().map(|d| d.read_bytes).sum::<u64>(), 4 * MIB as u64, "{uri}");
        assert_point_matches(&store, &inc.point, &vm.model, &vm.dir);
        assert!(!vm.has_job(), "{uri}: the backup job was left running");
    }

    // A key the host does not accept, and a host certificate from a CA we were not told to trust:
    // each refused at connect time, with the URI and libvirt's reason.
    let stranger = vm.dir.join("stranger_ed25519");
    let st = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&stranger)
        .status()
        .unwrap();
    assert!(st.success());
    let bad_ssh = SSH_URI.replace("/var/tmp/holdfast-testbed/ssh/id_ed25519", stranger.to_str().unwrap());
    // Another CA, and a client certificate it signed: libvirt's own checks of the client's files
    // pass, and the handshake meets a host certificate that CA did not sign.
    let untrusted = vm.dir.join("untrusted-pki");
    std::fs::create_dir_all(&untrusted).unwrap();
    let sh = |script: &str| {
        let out = std::process::Command::new("bash").arg("-ec").arg(script).current_dir(&untrusted).output().unwrap();
        assert!(out.status.success(), "{script}: {}", String::from_utf8_lossy(&out.stderr));
    };
    sh("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca-key.pem -subj /CN=stranger \
        -days 2 -addext basicConstraints=critical,CA:true -addext keyUsage=critical,keyCertSign -out cacert.pem
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout clientkey.pem -subj /CN=holdfast -out c.csr
        openssl x509 -req -in c.csr -CA cacert.pem -CAkey ca-key.pem -CAcreateserial -days 2 -out clientcert.pem \
          -extfile <(printf 'extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature,keyEncipherment\n')");
    let bad_tls = format!("qemu+tls://127.0.0.1/system?pkipath={}", untrusted.display());
    for (uri, want) in [(bad_ssh.as_str(), "Permission denied"), (bad_tls.as_str(), "verify peer's certificate")] {
        let err = KvmConnector::open(uri, &vm.dir.join("work-bad"), None).err().expect("refused").to_string();
        assert!(err.contains(uri) && err.contains(want), "{err}");
        assert!(!err.contains("user name and password"), "a key or certificate problem, not a password: {err}");
    }
}

#[test]
fn a_shut_off_vm_is_backed_up_from_its_images_incrementally_through_its_bitmaps() {
    let (mut vm, store, conn) = bed("offline");
    let run = |vm: &TestVm, kind| {
        let out = backup_vm(&conn, &store, &vm.name, opts(kind, Quiesce::IfPossible), &mut |_| {}).unwrap();
        assert!(out.warnings.is_empty(), "{:?}", out.warnings);
        out
    };
    vm.write(0, 0x81, 0, 2 * MIB);
    let p1 = run(&vm, BackupType::Full).point;
    let c1 = p1.disks[0].change_id.clone().unwrap();
    vm.write(1, 0x82, 20 * MIB, MIB);
    virsh(&["destroy", &vm.name]);

    // Off: the images are read through qemu-nbd; the base checkpoint's bitmap gives the changes.
    let p2 = run(&vm, BackupType::Incremental);
    assert!(p2.transport.contains("shut off") && p2.consistency.contains("shut off"), "{}", p2.transport);
    assert_eq!(p2.point.backup_type, BackupType::Incremental, "{:?}", p2.point.disks[1].full_reason);
    assert_eq!((p2.point.disks[0].read_bytes, p2.point.disks[1].read_bytes), (0, 4 * MIB as u64));
    assert_eq!(p2.point.disks[0].change_id.as_deref(), Some(c1.as_str()), "no checkpoint can be made while off");
    assert_point_matches(&store, &p2.point, &vm.model, &vm.dir);

    // Written while off (qemu-io on the image: its bitmaps record the write), and a VM start
    // during the backup is refused by QEMU's image lock instead of changing data under it.
    let img = vm.dir.join("disk0.qcow2");
    let w = std::process::Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", &format!("write -P 0x83 {} {}", 40 * MIB, MIB)])
        .arg(&img)
        .output()
        .unwrap();
    assert!(w.status.success(), "{}", String::from_utf8_lossy(&w.stderr));
    vm.model[0][40 * MIB..41 * MIB].fill(0x83);
    let mut start_refused = None;
    let p3 = backup_vm(&conn, &store, &vm.name, opts(BackupType::Incremental, Quiesce::Off), &mut |_| {
        if start_refused.is_none() {
            let st = std::process::Command::new("virsh").args(["-c", URI, "start", &vm.name]).output().unwrap();
            start_refused = Some(!st.status.success());
        }
    })
    .unwrap_or_else(|e| {
        panic!("the backup of the shut-off VM failed (a start tried meanwhile refused: {start_refused:?}): {e}")
    })
    .point;
    assert_eq!(start_refused, Some(true), "the VM started while its disks were being read");
    assert_eq!(p3.backup_type, BackupType::Incremental);
    assert_eq!((p3.disks[0].read_bytes, p3.disks[1].read_bytes), (4 * MIB as u64, 4 * MIB as u64));
    assert_point_matches(&store, &p3, &vm.model, &vm.dir);

    // Running again: the next incremental counts from the same checkpoint, online.
    virsh(&["start", &vm.name]);
    vm.write(1, 0x84, 60 * MIB, 64 * 1024);
    let p4 = run(&vm, BackupType::Incremental).point;
    assert_eq!(p4.backup_type, BackupType::Incremental);
    assert_point_matches(&store, &p4, &vm.model, &vm.dir);
}
