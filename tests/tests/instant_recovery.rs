//! Instant recovery's export through real NFS clients (the kernel here has none): libnfs's
//! tools list and read every exported disk, QEMU's nfs:// driver (found through our
//! portmapper on 111) compares one with the source and writes into it (the writes go to the
//! session's overlay, never the point); a client not named is refused and audited; the point
//! cannot be deleted while exported; a session and its writes outlive a restart of the service,
//! and ending it discards them. The VM comes from the simulated platform: what is tested is the export.

use connectors::sim::SimHost;
use holdfast_tests::service::{Client, Server};
use serde_json::{json, Value};
use std::process::Command;

const MIB: u64 = 1 << 20;
const PASSWORD: &str = "correct horse battery";

fn nfs_url(port: u64, path: &str) -> String {
    format!("nfs://127.0.0.1{path}?nfsport={port}&mountport={port}")
}

/// A libnfs tool's stdout; panics with its stderr when it fails.
fn nfs_tool(tool: &str, url: &str) -> Vec<u8> {
    let out = Command::new(tool).arg(url).output().unwrap_or_else(|e| panic!("{tool}: {e}"));
    assert!(out.status.success(), "{tool} {url}: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

fn refused(tool: &str, url: &str) -> String {
    let out = Command::new(tool).arg(url).output().unwrap();
    assert!(!out.status.success(), "{tool} {url} was served: {}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn start(c: &Client, point: &Value, clients: &[&str], name: Option<&str>) -> Value {
    let mut body = json!({ "point": point, "clients": clients });
    if let Some(n) = name {
        body["name"] = json!(n);
    }
    c.post("/api/recoveries", body, 201)
}

#[test]
fn a_point_is_exported_over_nfs_at_once_to_the_clients_named_and_no_other() {
    let tmp = tempfile::tempdir().unwrap();
    let host = SimHost::create(&tmp.path().join("sim"));
    host.add_vm("db<1>", &[("vda", 24 * MIB), ("vdb", 3 * MIB + 4096)]);
    // Data at the front and at the end, a hole between (read as zeros).
    host.write("db<1>", "vda", 0, &holdfast_tests::noise(5 * MIB as usize, 1));
    host.write("db<1>", "vda", 22 * MIB, &holdfast_tests::noise(MIB as usize, 2));
    host.write("db<1>", "vdb", 0, &holdfast_tests::noise(3 * MIB as usize, 3));
    let data = tmp.path().join("data");
    let portmap = ["--portmap-listen", "127.0.0.1:111"];
    let server = Server::start_with(&data, None, &portmap);
    let c = server.admin(PASSWORD);
    let platform = c.add_sim_platform("lab", &host);
    let job = c.post("/api/jobs", json!({ "platform": platform, "vm": "db<1>", "type": "full" }), 202);
    let job = c.wait_job(job["id"].as_i64().unwrap());
    assert_eq!(job["state"], "completed", "{job}");
    let point = job["point_id"].clone();

    // Bad input is refused before anything is exported.
    for (body, field) in [
        (json!({ "point": point, "clients": [] }), "clients:"),
        (json!({ "point": point, "clients": ["10.0.0.0/40"] }), "clients[0]:"),
        (json!({ "point": "20200101T000000.000000Z-00000000", "clients": ["127.0.0.1"] }), "point:"),
        (json!({ "point": point, "clients": ["127.0.0.1"], "name": "../x" }), "name:"),
    ] {
        let (code, e) = c.request("POST", "/api/recoveries", Some(&body));
        assert_eq!(code, 400, "{e}");
        assert!(e["error"].as_str().unwrap().starts_with(field), "{e}");
    }
    assert_eq!(c.get("/api/recoveries"), json!([]));

    // Exported at once: the VM's name made safe as the directory, one raw image per disk.
    let mine = start(&c, &point, &["127.0.0.0/8"], None);
    let name = mine["name"].as_str().unwrap().to_string();
    assert!(name.starts_with("db-1--"), "{mine}");
    assert_eq!(mine["export"], format!("/holdfast/{name}"));
    assert_eq!(
        mine["files"],
        json!([{ "name": "vda.raw", "size": 24 * MIB }, { "name": "vdb.raw", "size": 3 * MIB + 4096 }])
    );
    let port = mine["nfs_port"].as_u64().unwrap();
    assert!(port > 0, "{mine}");
    let export = mine["export"].as_str().unwrap();

    // libnfs lists and reads every disk; the bytes are the VM's. Four readers at once.
    let listing = String::from_utf8(nfs_tool("nfs-ls", &nfs_url(port, export))).unwrap();
    assert!(listing.contains("vda.raw") && listing.contains("vdb.raw"), "{listing}");
    let readers: Vec<_> = (0..4)
        .map(|i| {
            let url = nfs_url(port, &format!("{export}/{}", if i % 2 == 0 { "vda.raw" } else { "vdb.raw" }));
            std::thread::spawn(move || nfs_tool("nfs-cat", &url))
        })
        .collect();
    for (i, r) in readers.into_iter().enumerate() {
        let want = host.disk("db<1>", if i % 2 == 0 { "vda" } else { "vdb" });
        assert!(r.join().unwrap() == want, "reader {i} read other bytes than the disk's");
    }
    let read = c.get("/api/recoveries")[0]["bytes_read"].as_u64().unwrap();
    assert!(read >= 2 * (24 + 3) * MIB, "{read} bytes counted");

    // QEMU's nfs:// driver asks the portmapper on 111 for the ports, then compares the export
    // with the source disk.
    let source = tmp.path().join("vda.img");
    std::fs::write(&source, host.disk("db<1>", "vda")).unwrap();
    let cmp = Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "raw"])
        .arg(&source)
        .arg(format!("nfs://127.0.0.1{export}/vda.raw"))
        .output()
        .unwrap();
    assert!(
        cmp.status.success(),
        "qemu-img compare: {}{}",
        String::from_utf8_lossy(&cmp.stdout),
        String::from_utf8_lossy(&cmp.stderr)
    );

    // A guest's writes (QEMU's qemu-io through nfs://) go to the session's overlay: read back
    // over NFS, counted, and never in the point.
    let qemu_io = |cmd: &str| {
        let out = Command::new("qemu-io")
            .args(["-f", "raw", "-c", cmd])
            .arg(format!("nfs://127.0.0.1{export}/vda.raw"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "qemu-io {cmd}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    qemu_io("write -P 0xab 1048576 65536");
    qemu_io("write -P 0xcd 12345 100");
    let mut written = host.disk("db<1>", "vda");
    written[1 << 20..(1 << 20) + 65536].fill(0xab);
    written[12345..12445].fill(0xcd);
    assert!(nfs_tool("nfs-cat", &nfs_url(port, &format!("{export}/vda.raw"))) == written, "the writes read back");
    assert!(qemu_io("read -P 0xab 1048576 65536").contains("read 65536/65536"));
    let now = &c.get("/api/recoveries")[0];
    assert_eq!(now["bytes_written"], 65536 + 100, "{now}");
    assert_eq!(now["overlay_bytes"], 65536 + 4096, "{now}");

    // For ESXi: each disk is also the flat extent of a VMDK with its descriptor, and a client
    // makes files of its own there (lock files), kept across a restart.
    let listing = String::from_utf8(nfs_tool("nfs-ls", &nfs_url(port, export))).unwrap();
    for f in ["vda.raw", "vda-flat.vmdk", "vda.vmdk", "vdb-flat.vmdk", "vdb.vmdk"] {
        assert!(listing.contains(f), "{f} missing: {listing}");
    }
    let descriptor = String::from_utf8(nfs_tool("nfs-cat", &nfs_url(port, &format!("{export}/vda.vmdk")))).unwrap();
    assert!(descriptor.contains("RW 49152 VMFS \"vda-flat.vmdk\""), "{descriptor}");
    assert!(nfs_tool("nfs-cat", &nfs_url(port, &format!("{export}/vda-flat.vmdk"))) == written, "one disk, two names");
    let lock = tmp.path().join("lock");
    std::fs::write(&lock, b"esxi host lock").unwrap();
    let cp = Command::new("nfs-cp").arg(&lock).arg(nfs_url(port, &format!("{export}/.lck-0001"))).output().unwrap();
    assert!(cp.status.success(), "nfs-cp: {}", String::from_utf8_lossy(&cp.stderr));
    assert_eq!(nfs_tool("nfs-cat", &nfs_url(port, &format!("{export}/.lck-0001"))), b"esxi host lock");

    // A session for another client: invisible and refused here, and the refusal is audited.
    let theirs = start(&c, &point, &["192.0.2.7"], Some("theirs"));
    assert_eq!(theirs["export"], "/holdfast/theirs");
    let root = String::from_utf8(nfs_tool("nfs-ls", &nfs_url(port, "/holdfast"))).unwrap();
    assert!(root.contains(&name) && !root.contains("theirs"), "{root}");
    refused("nfs-ls", &nfs_url(port, "/holdfast/theirs"));
    refused("nfs-cat", &nfs_url(port, "/holdfast/theirs/vda.raw"));
    let audit = c.get("/api/audit").to_string();
    assert!(audit.contains("instant recovery access refused") && audit.contains("192.0.2.7"), "{audit}");
    // Two sessions cannot share a name.
    let (code, e) = c.request(
        "POST",
        "/api/recoveries",
        Some(&json!({ "point": point, "clients": ["127.0.0.1"], "name": "theirs" })),
    );
    assert_eq!(code, 409, "{e}");

    // Garbage collection while the session lives leaves every chunk it reads.
    let gc = Command::new(holdfast_tests::holdfast_bin())
        .args(["store", "gc", "--store"])
        .arg(data.join("store"))
        .output()
        .unwrap();
    assert!(gc.status.success(), "{}", String::from_utf8_lossy(&gc.stderr));
    assert!(nfs_tool("nfs-cat", &nfs_url(port, &format!("{export}/vdb.raw"))) == host.disk("db<1>", "vdb"));

    // The point cannot go while it is exported.
    let (code, e) = c.request("DELETE", &format!("/api/points/{}", point.as_str().unwrap()), None);
    assert_eq!(code, 409, "{e}");
    assert!(e["error"].as_str().unwrap().contains("instant-recovery session"), "{e}");

    // A restart keeps both sessions: same names, same files, readable again.
    drop(c);
    drop(server);
    let server = Server::start_with(&data, None, &portmap);
    let mut c = server.client();
    assert_eq!(c.login("admin", PASSWORD).0, 200);
    let again = c.get("/api/recoveries");
    assert_eq!(again.as_array().unwrap().len(), 2, "{again}");
    let port = again[0]["nfs_port"].as_u64().unwrap();
    assert!(nfs_tool("nfs-cat", &nfs_url(port, &format!("{export}/vdb.raw"))) == host.disk("db<1>", "vdb"));
    assert!(
        nfs_tool("nfs-cat", &nfs_url(port, &format!("{export}/vda.raw"))) == written,
        "the overlay outlives a restart"
    );
    assert_eq!(again[0]["overlay_bytes"], 65536 + 4096, "{again}");

    // Ending a session discards its writes, or keeps them as a new point when asked.
    let theirs_id = again.as_array().unwrap().iter().find(|s| s["name"] == "theirs").unwrap()["id"].clone();
    assert_eq!(c.request("DELETE", &format!("/api/recoveries/{theirs_id}"), None).0, 204);
    let (code, kept) = c.request("POST", &format!("/api/recoveries/{}/keep", mine["id"]), None);
    assert_eq!(code, 201, "{kept}");
    assert_eq!(kept["changed_bytes"], 65536 + 4096, "{kept}");
    refused("nfs-cat", &nfs_url(port, &format!("{export}/vdb.raw")));
    assert_eq!(c.request("DELETE", &format!("/api/recoveries/{}", mine["id"]), None).0, 404);
    let left: Vec<String> = std::fs::read_dir(data.join("recoveries"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&format!("{}-", mine["id"])))
        .collect();
    assert!(left.is_empty(), "the overlay is discarded: {left:?}");
    // The kept point is an incremental of the exported one with the session's writes in it.
    let new_point = kept["point_id"].clone();
    let row = c.get("/api/points").as_array().unwrap().iter().find(|p| p["point_id"] == new_point).cloned().unwrap();
    assert_eq!((row["parent"].clone(), row["type"].clone()), (point.clone(), json!("incremental")), "{row}");
    let k = start(&c, &new_point, &["127.0.0.1"], Some("kept"));
    assert!(
        nfs_tool("nfs-cat", &nfs_url(port, "/holdfast/kept/vda.raw")) == written,
        "the writes are in the new point"
    );
    assert!(nfs_tool("nfs-cat", &nfs_url(port, "/holdfast/kept/vdb.raw")) == host.disk("db<1>", "vdb"));
    assert_eq!(c.request("DELETE", &format!("/api/recoveries/{}", k["id"]), None).0, 204);
    // The point is as it was: a new session reads the VM's bytes, and the store verifies clean.
    let fresh = start(&c, &point, &["127.0.0.1"], Some("fresh"));
    assert!(nfs_tool("nfs-cat", &nfs_url(port, "/holdfast/fresh/vda.raw")) == host.disk("db<1>", "vda"));
    // A reader still reading when its session ends gets an error (not a hang, not other bytes),
    // and the server goes on serving.
    let url = nfs_url(port, "/holdfast/fresh/vda.raw");
    let want = host.disk("db<1>", "vda");
    let reader = std::thread::spawn(move || loop {
        let out = Command::new("nfs-cat").arg(&url).output().unwrap();
        if !out.status.success() {
            return;
        }
        assert!(out.stdout == want, "a read that succeeds reads the disk");
    });
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(c.request("DELETE", &format!("/api/recoveries/{}", fresh["id"]), None).0, 204);
    let t = std::time::Instant::now();
    while !reader.is_finished() {
        assert!(t.elapsed() < std::time::Duration::from_secs(20), "the reader hangs after its session ended");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    reader.join().unwrap();
    let verify = Command::new(holdfast_tests::holdfast_bin())
        .args(["store", "verify", "--store"])
        .arg(data.join("store"))
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    assert_eq!(c.request("DELETE", &format!("/api/points/{}", point.as_str().unwrap()), None).0, 204);
    let audit = c.get("/api/audit").to_string();
    assert!(audit.contains("instant recovery started") && audit.contains("instant recovery ended"), "{audit}");
    assert!(audit.contains("instant recovery kept as a point"), "{audit}");
}

#[test]
fn a_session_starts_its_vm_on_a_platform_from_the_export_and_removes_it_when_it_ends() {
    let tmp = tempfile::tempdir().unwrap();
    let host = SimHost::create(&tmp.path().join("sim"));
    host.add_vm("app", &[("vda", 4 * MIB), ("vdb", MIB)]);
    host.write("app", "vda", 0, &holdfast_tests::noise(MIB as usize, 4));
    let data = tmp.path().join("data");
    let server = Server::start(&data);
    let c = server.admin(PASSWORD);
    let platform = c.add_sim_platform("lab", &host);
    let job = c.post("/api/jobs", json!({ "platform": platform, "vm": "app", "type": "full" }), 202);
    let point = c.wait_job(job["id"].as_i64().unwrap())["point_id"].clone();

    // A VM that cannot be made (its name is taken, the platform unknown, the host not an
    // address) leaves no session, no overlay, no VM.
    let vm = |extra: Value| {
        let mut v = json!({ "platform": platform, "nfs_host": "127.0.0.1", "name": "app-ir" });
        v.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        json!({ "point": point, "clients": ["127.0.0.1"], "name": "app-ir", "vm": v })
    };
    for (body, code, says) in [
        (vm(json!({ "name": "app" })), 502, "exists already"),
        (vm(json!({ "platform": 99 })), 400, "vm.platform:"),
        (vm(json!({ "nfs_host": "a b" })), 400, "vm.nfs_host:"),
    ] {
        let (got, e) = c.request("POST", "/api/recoveries", Some(&body));
        assert_eq!(got, code, "{e}");
        assert!(e["error"].as_str().unwrap().contains(says), "{e}");
        assert_eq!(c.get("/api/recoveries"), json!([]));
        assert!(std::fs::read_dir(data.join("recoveries")).map_or(true, |d| d.count() == 0));
    }
    assert_eq!(host.vm_names(), ["app"]);

    // Started: a new VM (new MAC) on the platform whose disks are the export's images.
    let s = c.post("/api/recoveries", vm(json!({ "network": "dmz" })), 201);
    // The original VM is still there: new MAC addresses by default.
    assert_eq!(s["vm_started"], json!({ "platform": platform, "name": "app-ir", "macs_kept": false }), "{s}");
    let made = host.vm("app-ir").expect("the VM is defined");
    assert!(made.running);
    assert_eq!(made.exported, ["nfs://127.0.0.1/holdfast/app-ir/vda.raw", "nfs://127.0.0.1/holdfast/app-ir/vdb.raw"]);
    assert_eq!(made.nics[0].network.as_deref(), Some("dmz"));
    assert_ne!(made.nics[0].mac, host.vm("app").unwrap().nics[0].mac, "a new MAC address");
    // Moving the VM to the platform's storage: a format the platform lacks is refused; a move
    // that fails (the simulated platform cannot read NFS) leaves the VM running from the export,
    // the session as it was, and says why.
    let migrate = format!("/api/recoveries/{}/migrate", s["id"]);
    let (code, e) = c.request("POST", &migrate, Some(&json!({ "storage": "default", "disk_format": "vhdx" })));
    assert_eq!(code, 400, "{e}");
    assert!(e["error"].as_str().unwrap().starts_with("disk_format:"), "{e}");
    let m = c.post(&migrate, json!({ "storage": "default" }), 202);
    assert_eq!(m["migration"]["storage"], "default", "{m}");
    let failed = loop {
        let now = c.get("/api/recoveries")[0].clone();
        if now["migration"]["running"] == false {
            break now;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert!(failed["migration"]["error"].as_str().unwrap().contains("cannot read an NFS export"), "{failed}");
    assert!(host.vm("app-ir").unwrap().running, "the VM runs on from the export");
    assert!(c.get("/api/audit").to_string().contains("instant recovery migration failed"));

    // Ending the session removes the VM first, then the export.
    assert_eq!(c.request("DELETE", &format!("/api/recoveries/{}", s["id"]), None).0, 204);
    assert!(host.vm("app-ir").is_none(), "the VM is removed");
    assert_eq!(c.get("/api/recoveries"), json!([]));
    let audit = c.get("/api/audit").to_string();
    assert!(audit.contains("VM app-ir started from it"), "{audit}");
    // A session without a VM has nothing to move.
    let bare = c.post("/api/recoveries", json!({ "point": point, "clients": ["127.0.0.1"] }), 201);
    let (code, e) = c.request("POST", &format!("/api/recoveries/{}/migrate", bare["id"]), Some(&json!({})));
    assert_eq!(code, 409, "{e}");
}
