//! What the VMware connector does beyond the conformance suite, on the vSphere simulator test
//! bed (tests/vcsim): the connection's refusals (password, certificate, thumbprint, host), two
//! VMs of two disks through full, incremental and differential with each point restored as a
//! new VM byte for byte, CBT turned on where it was off, a CBT reset, a refused snapshot and a
//! guest that cannot be quiesced,
//! and the snapshot a killed backup left removed at the next start.

use connectors::vmware::soap::TlsTrust;
use connectors::vmware::VmwareConnector;
use connectors::{backup_vm, BackupOptions, BackupPlan, ChangeTracking, Connector, ConnectorError, Credentials};
use connectors::{JobControl, NewVmSpec, Quiesce};
use holdfast_tests::vmware::{Vcsim, PASSWORD, USER};
use vds_store::{BackupType, InitOptions, RestorePoint, Store};

fn creds(password: &str) -> Credentials {
    Credentials { username: USER.into(), password: password.into() }
}

fn ca(sim: &Vcsim) -> TlsTrust {
    TlsTrust { ca_pem: Some(std::fs::read(sim.ca_file()).unwrap()), thumbprint: None }
}

fn refused(r: Result<VmwareConnector, ConnectorError>) -> String {
    match r {
        Ok(_) => panic!("the connection was not refused"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_connection_is_refused_with_the_reason_and_a_pinned_thumbprint_is_shown_and_honoured() {
    let sim = Vcsim::start(1, &[1]);
    let host = sim.host();

    let e = refused(VmwareConnector::open(&host, &ca(&sim), &creds("wrong")));
    assert!(e.contains("InvalidLogin") && e.contains("user name or password") && e.contains(&host), "{e}");

    // Without the CA the certificate is refused, naming its thumbprint so the admin can pin it.
    let e = refused(VmwareConnector::open(&host, &TlsTrust::default(), &creds(PASSWORD)));
    assert!(e.contains("not trusted") && e.contains("SHA-256 thumbprint"), "{e}");
    let print =
        e.split("thumbprint is ").nth(1).and_then(|r| r.split(':').take(32).collect::<Vec<_>>().into()).unwrap();
    let print = print.join(":");
    let print = print.split(|c: char| !(c.is_ascii_hexdigit() || c == ':')).next().unwrap().to_string();
    assert_eq!(print.len(), 32 * 3 - 1, "a SHA-256 thumbprint in {e}");

    let pinned = TlsTrust { ca_pem: None, thumbprint: Some(print.clone()) };
    let conn = VmwareConnector::open(&host, &pinned, &creds(PASSWORD)).expect("the pinned certificate is accepted");
    let said = conn.test_connection().expect("the connection test passes");
    assert!(said.contains(&print) && said.contains("vCenter") && said.contains("1 VMs"), "{said}");

    let other = TlsTrust { ca_pem: None, thumbprint: Some(["AB"; 32].join(":")) };
    let e = refused(VmwareConnector::open(&host, &other, &creds(PASSWORD)));
    assert!(e.contains(&print) && e.contains("not the pinned"), "{e}");

    // A host that does not answer.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let e = refused(VmwareConnector::open(&closed.to_string(), &ca(&sim), &creds(PASSWORD)));
    assert!(e.contains(&closed.to_string()) && e.to_lowercase().contains("connect"), "{e}");
}

fn backup(conn: &dyn Connector, store: &Store, vm: &str, kind: BackupType) -> RestorePoint {
    let opts = BackupOptions { quiesce: Quiesce::IfPossible, ..BackupOptions::new(kind) };
    match backup_vm(conn, store, vm, opts, &mut |_| ()) {
        Ok(o) => o.point,
        Err(e) => panic!("{} backup of {vm}: {e}", kind.as_str()),
    }
}

/// Each disk of the point equals the flat files as they were (`disks`, by unit).
fn point_is(store: &Store, point: &RestorePoint, disks: &[Vec<u8>]) {
    for (i, d) in point.disks.iter().enumerate() {
        assert_eq!(d.key, format!("scsi0-{i}"));
        let r = store.open_disk(&point.point_id, &d.key).unwrap();
        let mut got = vec![0u8; r.size() as usize];
        r.read_at(&mut got, 0).unwrap();
        assert!(got == disks[i], "point {} disk {} differs from the flat file at backup time", point.point_id, d.key);
    }
}

fn flats(sim: &Vcsim, vm: &str) -> Vec<Vec<u8>> {
    (0..2).map(|i| std::fs::read(sim.flat(vm, i)).unwrap()).collect()
}

/// A new VM named `name` on the bed's datastore and network, otherwise as in the point.
fn new_vm(name: &str) -> NewVmSpec {
    NewVmSpec {
        name: name.into(),
        cpus: None,
        memory_mib: None,
        storage: "LocalDS_0".into(),
        network: Some("VM Network".into()),
        host: None,
        disk_format: None,
        disk_sizes: Default::default(),
        start: false,
        keep_macs: false,
    }
}

fn restore(conn: &dyn Connector, sim: &Vcsim, store: &Store, point: &RestorePoint, name: &str) -> Vec<Vec<u8>> {
    let readers = store.open_disks(&point.point_id).unwrap();
    let disks = connectors::restore_disks(point, &readers);
    let spec = NewVmSpec { cpus: Some(3), memory_mib: Some(768), ..new_vm(name) };
    let made = conn.restore_as_new_vm(&point.vm, &disks, &spec, &JobControl::default()).expect("restore as a new VM");
    assert_eq!(made, name);
    flats(sim, name)
}

#[test]
fn two_vms_of_two_disks_through_full_incremental_and_differential_each_point_restored() {
    let sim = Vcsim::start(2, &[12, 6]);
    let conn = sim.connector(None);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::init(&dir.path().join("store"), InitOptions::default()).unwrap();
    let vms = ["DC0_H0_VM0", "DC0_H0_VM1"];
    for (n, vm) in vms.iter().enumerate() {
        assert!(!sim.vm(vm).unwrap()["cbt"].as_bool().unwrap(), "the bed starts with CBT off");
        sim.write(vm, 2000, 0, &vec![0x41 + n as u8; 3 << 20]);
        sim.write(vm, 2001, 1 << 20, &vec![0x61 + n as u8; 1 << 20]);
    }
    let mut points = Vec::new();
    for vm in vms {
        let full = backup(&conn, &store, vm, BackupType::Full);
        assert!(sim.vm(vm).unwrap()["cbt"].as_bool().unwrap(), "the first backup turned CBT on");
        assert!(full.disks.iter().all(|d| d.change_id.is_some()), "change ids recorded: {:?}", full.disks);
        // The store reads whole 4 MiB extents: one per disk holds all that was written.
        assert_eq!(full.stats.read_bytes, 8 << 20, "a full reads only allocated areas of the 18 MiB");
        assert!(sim.snapshots(vm).is_empty(), "the snapshot is removed");
        point_is(&store, &full, &flats(&sim, vm));
        points.push((vm, full.clone(), flats(&sim, vm)));

        sim.write(vm, 2000, 5 << 20, &[0x5a; 8192]);
        sim.write(vm, 2001, 0, &[0x5b; 4096]);
        let inc = backup(&conn, &store, vm, BackupType::Incremental);
        assert_eq!((inc.backup_type, inc.parent.as_deref()), (BackupType::Incremental, Some(full.point_id.as_str())));
        assert!(inc.disks.iter().all(|d| d.full_reason.is_none()), "{:?}", inc.disks);
        assert_eq!(inc.stats.read_bytes, 8 << 20, "the incremental reads the two extents written");
        point_is(&store, &inc, &flats(&sim, vm));
        points.push((vm, inc, flats(&sim, vm)));

        sim.write(vm, 2000, 9 << 20, &[0x5c; 4096]);
        let diff = backup(&conn, &store, vm, BackupType::Differential);
        assert_eq!(
            (diff.backup_type, diff.parent.as_deref()),
            (BackupType::Differential, Some(full.point_id.as_str()))
        );
        assert_eq!(diff.stats.read_bytes, 12 << 20, "the differential reads the three extents written since the full");
        point_is(&store, &diff, &flats(&sim, vm));
        points.push((vm, diff, flats(&sim, vm)));
    }
    // Later writes do not reach the points; every point restores to the disks as they were.
    sim.write("DC0_H0_VM0", 2000, 0, &[0xee; 65536]);
    for (i, (vm, point, want)) in points.iter().enumerate() {
        let name = format!("{vm}-restored-{i}");
        let got = restore(&conn, &sim, &store, point, &name);
        assert!(got == *want, "{name}: the restored flat files differ from point {}", point.point_id);
        let made = conn.describe(&name).unwrap();
        assert_eq!((made.cpus, made.memory_mib, made.disks.len()), (3, 768, 2));
        assert_eq!(made.nics[0].network.as_deref(), Some("VM Network"));
        assert_ne!(made.nics[0].mac, point.vm.nics[0].mac, "a new VM gets new MACs");
        assert!(conn.clean_up_killed_restore(&name).unwrap().is_none(), "a finished restore is not a killed one");
    }
    // A restore refused up front leaves nothing: the name is taken.
    let readers = store.open_disks(&points[0].1.point_id).unwrap();
    let disks = connectors::restore_disks(&points[0].1, &readers);
    let spec = new_vm("DC0_H0_VM1");
    let e = conn.restore_as_new_vm(&points[0].1.vm, &disks, &spec, &JobControl::default()).unwrap_err().to_string();
    assert!(e.contains("exists already"), "{e}");
    let e = conn
        .restore_as_new_vm(
            &points[0].1.vm,
            &disks,
            &NewVmSpec { name: "x".into(), storage: "nosuch".into(), ..spec.clone() },
            &JobControl::default(),
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("no datastore \"nosuch\"") && e.contains("LocalDS_0"), "{e}");
    assert!(sim.vm("x").is_none());
}

#[test]
fn cbt_reset_refused_snapshots_and_killed_backups() {
    let sim = Vcsim::start(1, &[4, 2]);
    let vm = "DC0_H0_VM0";
    let conn = sim.connector(None);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::init(&dir.path().join("store"), InitOptions::default()).unwrap();
    sim.write(vm, 2000, 0, &[1; 8192]);
    backup(&conn, &store, vm, BackupType::Full);

    // A CBT reset: the incremental reads whole disks and says why.
    sim.cbt_reset(vm);
    sim.write(vm, 2000, 1 << 20, &[2; 4096]);
    let inc = backup(&conn, &store, vm, BackupType::Incremental);
    for d in &inc.disks {
        let why = d.full_reason.as_deref().unwrap_or_default();
        assert!(why.contains("CBT cannot give the changes") && why.contains("FileFault"), "{why}");
    }
    point_is(&store, &inc, &flats(&sim, vm));
    // The next one counts from the new change ids again.
    sim.write(vm, 2001, 4096, &[3; 4096]);
    let next = backup(&conn, &store, vm, BackupType::Incremental);
    assert!(next.disks.iter().all(|d| d.full_reason.is_none()), "{:?}", next.disks);

    // A refused snapshot: the error names the VM and the fault; nothing is left or stored.
    sim.refuse_snapshots(vm, true);
    let before = store.scan(None).unwrap().0.len();
    let opts = BackupOptions::new(BackupType::Incremental);
    let e = backup_vm(&conn, &store, vm, opts, &mut |_| ()).err().expect("the backup fails").to_string();
    assert!(e.contains(vm) && e.contains("snapshot") && e.contains("SnapshotFault"), "{e}");
    assert_eq!(store.scan(None).unwrap().0.len(), before);
    assert!(sim.snapshots(vm).is_empty());
    sim.refuse_snapshots(vm, false);

    // VMware Tools not running: a rule that prefers quiescing gets a crash-consistent point that
    // says why; one that requires it fails, naming the VM and the fault, and leaves nothing.
    sim.no_tools(vm, true);
    let opts = BackupOptions { quiesce: Quiesce::IfPossible, ..BackupOptions::new(BackupType::Incremental) };
    let o = backup_vm(&conn, &store, vm, opts, &mut |_| ()).expect("a crash-consistent backup");
    assert!(
        o.consistency.starts_with("crash-consistent: the guest could not be quiesced")
            && o.consistency.contains("ToolsUnavailable"),
        "{}",
        o.consistency
    );
    assert!(sim.snapshots(vm).is_empty());
    let before = store.scan(None).unwrap().0.len();
    let opts = BackupOptions { quiesce: Quiesce::Required, ..BackupOptions::new(BackupType::Incremental) };
    let e = backup_vm(&conn, &store, vm, opts, &mut |_| ()).err().expect("the backup fails").to_string();
    assert!(
        e.contains(vm) && e.contains("quiesced snapshot (the rule requires one)") && e.contains("ToolsUnavailable"),
        "{e}"
    );
    assert_eq!(store.scan(None).unwrap().0.len(), before);
    assert!(sim.snapshots(vm).is_empty());
    sim.no_tools(vm, false);

    // Disk selection: a disk the VM lacks is refused by name.
    let plan = |include: Vec<String>| BackupPlan {
        requested: BackupType::Full,
        base: None,
        include,
        keep_change_ids: vec![],
        quiesce: Quiesce::Off,
        change_tracking: ChangeTracking::Auto,
        lan_free: false,
        control: JobControl::new(),
    };
    let e = conn.begin_backup(vm, &plan(vec!["scsi0-9".into()])).err().expect("refused").to_string();
    assert!(e.contains("scsi0-9") && e.contains("scsi0-0, scsi0-1"), "{e}");

    // The appliance killed mid-backup: its snapshot stays until the restart's cleanup.
    let mut session = conn.begin_backup(vm, &plan(vec!["scsi0-1".into()])).expect("a session");
    assert_eq!(session.take_disks().len(), 1, "only the chosen disk");
    std::mem::forget(session);
    assert_eq!(sim.snapshots(vm).len(), 1);
    let restarted = sim.connector(None);
    let said = restarted.clean_up_killed_backup(vm).unwrap().expect("something was removed");
    assert!(said.contains("holdfast-backup-"), "{said}");
    assert!(sim.snapshots(vm).is_empty());
    assert!(restarted.clean_up_killed_backup(vm).unwrap().is_none());
}

#[test]
fn a_session_ended_by_the_server_is_logged_in_again() {
    use connectors::vmware::soap::Soap;
    let sim = Vcsim::start(1, &[1]);
    let a = std::sync::Arc::new(Soap::connect(&sim.host(), &ca(&sim), &creds(PASSWORD)).unwrap());
    let sm = a.content.session_manager.clone();
    let current = a.retrieve_one(&sm, &["currentSession"], &[]).unwrap();
    let key = current.props["currentSession"].text_of("key").expect("a session key").to_string();
    // Another session ends this one, as an admin or a timeout does on vCenter.
    let b = Soap::connect(&sim.host(), &ca(&sim), &creds(PASSWORD)).unwrap();
    b.call(&format!(
        "<TerminateSession xmlns=\"urn:vim25\">{}<sessionId>{key}</sessionId></TerminateSession>",
        sm.arg("_this")
    ))
    .expect("the session is terminated");
    let vms = a.retrieve_all("VirtualMachine", &["name"]).expect("the call logs in again and succeeds");
    assert_eq!(vms.len(), 1);
    let again = a.retrieve_one(&sm, &["currentSession"], &[]).unwrap();
    assert_ne!(again.props["currentSession"].text_of("key"), Some(key.as_str()), "a new session");
    let key = again.props["currentSession"].text_of("key").expect("a session key").to_string();

    // A transfer that outlives its session (no SOAP call in between, as in a long backup): the
    // host refuses the cookie (401), the transfer logs in again and reads on.
    sim.write("DC0_H0_VM0", 2000, 4096, &[0x5c; 4096]);
    let file = sim.vm("DC0_H0_VM0").unwrap()["disks"][0]["file"].as_str().unwrap().to_string();
    let path = file.trim_start_matches("[LocalDS_0] ").replace(".vmdk", "-flat.vmdk");
    let url = a.folder_url("DC0", "LocalDS_0", &path);
    let transfer = a.transfer();
    let mut buf = vec![0u8; 8192];
    transfer.read_at(&url, 0, &mut buf).expect("read with the session");
    b.call(&format!(
        "<TerminateSession xmlns=\"urn:vim25\">{}<sessionId>{key}</sessionId></TerminateSession>",
        sm.arg("_this")
    ))
    .expect("the session is terminated");
    let mut after = vec![0u8; 8192];
    transfer.read_at(&url, 0, &mut after).expect("the transfer logs in again");
    assert!(after == buf && after[4096..] == [0x5c; 4096], "the bytes of the flat file");
    let newest = a.retrieve_one(&sm, &["currentSession"], &[]).unwrap();
    assert_ne!(newest.props["currentSession"].text_of("key"), Some(key.as_str()), "a new session");
}

#[test]
fn a_point_is_restored_in_place_onto_the_powered_off_vm() {
    use connectors::vmware::soap::Soap;
    use connectors::{CheckError, RestoreCheck};
    let sim = Vcsim::start(1, &[4, 2]);
    let vm = "DC0_H0_VM0";
    let conn = sim.connector(None);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::init(&dir.path().join("store"), InitOptions::default()).unwrap();
    sim.write(vm, 2000, 0, &[7; 65536]);
    sim.write(vm, 2001, 1 << 20, &[8; 65536]);
    let point = backup(&conn, &store, vm, BackupType::Full);
    let want = flats(&sim, vm);
    sim.write(vm, 2000, 4096, &[9; 8192]);
    sim.write(vm, 2001, 0, &[9; 8192]);

    match conn.check_restore(RestoreCheck::InPlace { vm }) {
        Err(CheckError::Conflict(f)) => assert!(f.field == "vm" && f.message.contains("powered on"), "{f:?}"),
        other => panic!("a running VM was not refused: {other:?}"),
    }
    let readers = store.open_disks(&point.point_id).unwrap();
    let disks = connectors::restore_disks(&point, &readers);
    assert!(conn.restore_in_place(vm, &disks, &JobControl::default()).is_err(), "refused while powered on");

    let admin = Soap::connect(&sim.host(), &ca(&sim), &creds(PASSWORD)).unwrap();
    let obj = admin.retrieve_all("VirtualMachine", &["name"]).unwrap().remove(0).obj;
    admin
        .run_task(
            &format!("<PowerOffVM_Task xmlns=\"urn:vim25\">{}</PowerOffVM_Task>", obj.arg("_this")),
            std::time::Duration::from_secs(60),
        )
        .unwrap();
    conn.check_restore(RestoreCheck::InPlace { vm }).expect("a powered-off VM may be restored in place");
    conn.restore_in_place(vm, &disks, &JobControl::default()).expect("restored in place");
    assert!(flats(&sim, vm) == want, "the VM's disks are the point's again");
    // CBT was restarted: the next incremental does not trust the change ids from before the
    // restore (the disks hold older data than they say) and reads whole disks.
    let next = backup(&conn, &store, vm, BackupType::Incremental);
    for d in &next.disks {
        let why = d.full_reason.as_deref().unwrap_or_default();
        assert!(why.contains("CBT cannot give the changes"), "{why}");
    }
    point_is(&store, &next, &want);
}

#[test]
fn a_restore_stopped_while_it_uploads_ends_at_once_and_leaves_no_vm() {
    let sim = Vcsim::start(1, &[8]);
    let vm = "DC0_H0_VM0";
    let conn = sim.connector(None);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::init(&dir.path().join("store"), InitOptions::default()).unwrap();
    sim.write(vm, 2000, 0, &[4; 65536]);
    let point = backup(&conn, &store, vm, BackupType::Full);
    let readers = store.open_disks(&point.point_id).unwrap();
    let disks = connectors::restore_disks(&point, &readers);
    let spec = new_vm("stopped");
    // Paused (0 MB/s) once the upload has begun, then stopped: the body ends short, which must
    // fail the upload rather than leave the host waiting for the rest.
    let control = JobControl::new();
    control.set_limit(Some(0));
    let stopper = {
        let control = control.clone();
        std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_secs(1));
            control.stop();
        })
    };
    let t = std::time::Instant::now();
    let e = conn.restore_as_new_vm(&point.vm, &disks, &spec, &control).unwrap_err().to_string();
    stopper.join().unwrap();
    assert!(t.elapsed() < std::time::Duration::from_secs(30), "the stop took {:?}", t.elapsed());
    assert!(e.contains("stopped"), "{e}");
    assert!(sim.vm("stopped").is_none(), "the half-made VM is removed");
}
