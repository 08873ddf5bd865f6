//! The VDDK transport against the VixDiskLib stand-in (tests/vddk-shim) over the vSphere
//! simulator's flat files: the loader's refusals (no library, not a library), the conformance
//! suite with every disk read and restored through VDDK, the mode VDDK picks reported per disk
//! (nbdssl, hotadd, SAN for a LAN-free backup), QueryAllocatedBlocks for a full without CBT,
//! and the fallbacks to HTTPS that say why (no common mode, a thumbprint VDDK refuses).
//! The shim reads its configuration from this process's environment, so everything is one test.

use connectors::conformance::run;
use connectors::vmware::soap::TlsTrust;
use connectors::vmware::VmwareConnector;
use connectors::{backup_vm, BackupOptions, BackupPlan, ChangeTracking, Connector, Credentials, JobControl, Quiesce};
use holdfast_tests::vmware::{install_vddk_shim, Vcsim, VcsimBed, BED_VM as VM, PASSWORD, USER};
use std::path::Path;
use vds_store::{BackupType, InitOptions, Store};

fn vm_ref(soap: &connectors::vmware::soap::Soap, name: &str) -> connectors::vmware::xml::MoRef {
    let vms = soap.retrieve_all("VirtualMachine", &["name"]).unwrap();
    vms.into_iter().find(|v| v.text("name") == Some(name)).unwrap().obj
}

fn shim_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[test]
fn the_vddk_transport_through_the_vixdisklib_stand_in() {
    let sim = Vcsim::start(2, &[16, 8]);
    let scratch = tempfile::tempdir().unwrap();
    let log = scratch.path().join("shim.log");
    std::env::set_var("VDDK_SHIM_DATASTORES", sim.shim_datastores());
    std::env::set_var("VDDK_SHIM_USER", USER);
    std::env::set_var("VDDK_SHIM_PASSWORD", PASSWORD);
    std::env::set_var("VDDK_SHIM_LOG", &log);

    // The loader: a directory without VDDK, and a file that is not a library, refused at the
    // connection test with what was looked for.
    let empty = scratch.path().join("no-vddk");
    std::fs::create_dir_all(&empty).unwrap();
    let e = sim.connector(Some((&empty, "nbd"))).test_connection().unwrap_err().to_string();
    assert!(e.contains("no VDDK library") && e.contains("libvixDiskLib.so.8") && e.contains("no-vddk"), "{e}");
    let fake = scratch.path().join("fake-vddk");
    std::fs::create_dir_all(fake.join("lib64")).unwrap();
    std::fs::write(fake.join("lib64/libvixDiskLib.so.9"), b"\x7fELF but not really").unwrap();
    let e = sim.connector(Some((&fake, "nbd"))).test_connection().unwrap_err().to_string();
    assert!(e.contains("cannot load") && e.contains("libvixDiskLib.so.9"), "{e}");

    let vddk = install_vddk_shim(&scratch.path().join("vddk"));
    let said = sim.connector(Some((&vddk, "nbdssl:nbd"))).test_connection().expect("VDDK loads");
    assert!(said.contains("data through VDDK") && said.contains("lib64/libvixDiskLib.so.8"), "{said}");
    assert!(said.contains("the library offers nbdssl:nbd"), "{said}");

    // The conformance suite with every read and the restore through VDDK.
    let mut bed = VcsimBed::new(sim, Some(vddk.clone()));
    run(&mut bed);
    let sim = &bed.sim;
    let calls = shim_log(&log);
    assert!(calls.contains("InitEx 6.5"), "{calls}");
    assert!(calls.contains("readonly=true snapshot=snapshot-"), "backups read the snapshot: {calls}");
    assert!(calls.contains("readonly=false snapshot= "), "the restore wrote through VDDK: {calls}");
    assert!(
        calls.contains("picked=nbdssl") && calls.contains("Open [LocalDS_0] DC0_H0_VM0/disk1.vmdk flags=4"),
        "{calls}"
    );
    assert_eq!(calls.matches("InitEx").count(), 1, "VDDK is initialised once per process");
    assert_eq!(calls.matches("ConnectEx").count(), calls.matches("Disconnect").count(), "every connection ends");
    assert_eq!(calls.matches("Open ").count(), calls.matches("Close").count(), "every disk is closed");
    // vCenter is asked to hold each VM in place for every connection, and let go after it.
    assert_eq!(calls.matches("PrepareForAccess vmx=moref=vm-").count(), calls.matches("ConnectEx").count(), "{calls}");
    assert_eq!(calls.matches("EndAccess vmx=moref=vm-").count(), calls.matches("Disconnect").count(), "{calls}");
    let order: Vec<&str> = calls
        .lines()
        .filter_map(|l| {
            ["PrepareForAccess", "ConnectEx", "Disconnect", "EndAccess"].into_iter().find(|c| l.starts_with(c))
        })
        .collect();
    assert!(order.chunks(4).all(|c| c == ["PrepareForAccess", "ConnectEx", "Disconnect", "EndAccess"]), "{order:?}");
    assert!(calls.contains("identity=Holdfast"), "{calls}");

    let dir = tempfile::tempdir().unwrap();
    let store = Store::init(&dir.path().join("store"), InitOptions::default()).unwrap();
    let backup = |conn: &VmwareConnector, vm: &str, tracking: ChangeTracking, lan_free: bool| {
        let opts = BackupOptions {
            change_tracking: tracking,
            lan_free,
            quiesce: Quiesce::Off,
            ..BackupOptions::new(BackupType::Full)
        };
        backup_vm(conn, &store, vm, opts, &mut |_| ()).unwrap_or_else(|e| panic!("backup of {vm}: {e}"))
    };

    // A VM without CBT and change tracking off: a full reads what QueryAllocatedBlocks says.
    sim.write("DC0_H0_VM1", 2000, 3 << 20, &[0x33; 4096]);
    let o = backup(&sim.connector(Some((&vddk, "nbdssl:nbd"))), "DC0_H0_VM1", ChangeTracking::Off, false);
    assert_eq!(o.transport, "vddk nbdssl");
    assert!(o.warnings.is_empty(), "{:?}", o.warnings);

    // A host that will not hold the VM in place (no vCenter): the backup reads on and says so.
    std::env::set_var("VDDK_SHIM_REFUSE_ACCESS", "1");
    let o = backup(&sim.connector(Some((&vddk, "nbdssl:nbd"))), "DC0_H0_VM1", ChangeTracking::Off, false);
    std::env::remove_var("VDDK_SHIM_REFUSE_ACCESS");
    assert_eq!(o.transport, "vddk nbdssl");
    assert!(
        o.warnings.len() == 1
            && o.warnings[0].contains("not asked to keep the VM in place")
            && o.warnings[0].contains("VixDiskLib_PrepareForAccess"),
        "{:?}",
        o.warnings
    );
    assert!(!sim.vm("DC0_H0_VM1").unwrap()["cbt"].as_bool().unwrap(), "CBT left off");
    assert_eq!(o.point.stats.read_bytes, 4 << 20, "one allocated extent read of 24 MiB");
    assert!(shim_log(&log).contains("QueryAllocatedBlocks"), "the library was asked");

    // The modes: hot-add where the host offers it, SAN first for a LAN-free backup.
    std::env::set_var("VDDK_SHIM_MODES", "hotadd:san:nbdssl:nbd");
    let o = backup(&sim.connector(Some((&vddk, "hotadd:nbdssl"))), VM, ChangeTracking::Auto, false);
    assert_eq!(o.transport, "vddk hotadd");
    let o = backup(&sim.connector(Some((&vddk, "nbdssl:san"))), VM, ChangeTracking::Auto, true);
    assert_eq!(o.transport, "vddk san");
    assert!(o.warnings.iter().all(|w| !w.to_lowercase().contains("lan")), "a SAN read is LAN-free: {:?}", o.warnings);

    // No mode in common: the backup goes over HTTPS and says why.
    std::env::set_var("VDDK_SHIM_MODES", "nbd");
    let o = backup(&sim.connector(Some((&vddk, "san:hotadd"))), VM, ChangeTracking::Auto, false);
    assert!(o.transport.starts_with("https (datastore /folder); VDDK not used:"), "{}", o.transport);
    assert!(o.transport.contains("none of the transport modes san:hotadd"), "{}", o.transport);

    // VDDK checks the thumbprint when it opens a disk: the SHA-1 of the certificate the SOAP
    // session verified is what it gets.
    std::env::set_var("VDDK_SHIM_THUMBPRINT", ["00"; 20].join(":"));
    let o = backup(&sim.connector(Some((&vddk, "nbd"))), VM, ChangeTracking::Auto, false);
    assert!(o.transport.contains("VDDK not used") && o.transport.contains("thumbprint mismatch"), "{}", o.transport);
    let soap = connectors::vmware::soap::Soap::connect(
        &sim.host(),
        &TlsTrust { ca_pem: Some(std::fs::read(sim.ca_file()).unwrap()), thumbprint: None },
        &Credentials { username: USER.into(), password: PASSWORD.into() },
    )
    .unwrap();
    std::env::set_var("VDDK_SHIM_THUMBPRINT", soap.seen_thumbprints().unwrap().sha1);
    let o = backup(&sim.connector(Some((&vddk, "nbd"))), VM, ChangeTracking::Auto, false);
    assert_eq!(o.transport, "vddk nbd");

    // In place onto the powered-off VM: CBT still knows the point's change ids, so only what the
    // guest wrote since is written back.
    let point = o.point;
    let want: Vec<Vec<u8>> = (0..2).map(|i| std::fs::read(sim.flat(VM, i)).unwrap()).collect();
    sim.write(VM, 2000, 7 << 20, &[0xab; 8192]);
    sim.write(VM, 2001, 512, &[0xcd; 512]);
    soap.run_task(
        &format!("<PowerOffVM_Task xmlns=\"urn:vim25\">{}</PowerOffVM_Task>", vm_ref(&soap, VM).arg("_this")),
        std::time::Duration::from_secs(60),
    )
    .unwrap();
    let readers = store.open_disks(&point.point_id).unwrap();
    let disks = connectors::restore_disks(&point, &readers);
    assert!(disks.iter().all(|d| d.change_id.is_some()), "the point has change ids");
    let before = shim_log(&log).matches("Write").count();
    let control = JobControl::new();
    sim.connector(Some((&vddk, "nbd"))).restore_in_place(VM, &disks, &control).expect("restored in place");
    let now: Vec<Vec<u8>> = (0..2).map(|i| std::fs::read(sim.flat(VM, i)).unwrap()).collect();
    assert!(now == want, "the VM's disks are the point's again");
    let writes = shim_log(&log).matches("Write").count() - before;
    assert_eq!(writes, 2, "one write per changed area, not the disks");
    assert_eq!(control.progress().0, (16 + 8) << 20, "the unchanged rest counts as done");
    assert!(control.take_warnings().is_empty(), "nothing to warn of");

    // No mode in common for the restore: it writes over HTTPS and the job is told why.
    std::env::set_var("VDDK_SHIM_MODES", "nbd");
    sim.write(VM, 2000, 1 << 20, &[0xef; 4096]);
    let control = JobControl::new();
    sim.connector(Some((&vddk, "hotadd"))).restore_in_place(VM, &disks, &control).expect("restored over HTTPS");
    let now: Vec<Vec<u8>> = (0..2).map(|i| std::fs::read(sim.flat(VM, i)).unwrap()).collect();
    assert!(now == want, "the VM's disks are the point's again");
    let warnings = control.take_warnings();
    assert!(
        warnings.len() == 1
            && warnings[0].starts_with("VDDK not used, writing over HTTPS instead:")
            && warnings[0].contains("none of the transport modes hotadd"),
        "{warnings:?}"
    );

    // A session that does not commit closes what it opened and removes its snapshot.
    let conn = sim.connector(Some((&vddk, "nbd")));
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
    let mut session = conn.begin_backup(VM, &plan).unwrap();
    drop(session.take_disks());
    session.finish(false).unwrap();
    assert!(sim.snapshots(VM).is_empty());
    let calls = shim_log(&log);
    assert_eq!(calls.matches("ConnectEx").count(), calls.matches("Disconnect").count(), "every connection ends");
}
