//! Restores through the service's API against the KVM test bed: as a new VM (disks compared
//! byte for byte with the point), held at 0 MB/s while the rule that made the point refuses to
//! be deleted, stopped (the new VM's volumes removed), and in place (refused while the VM runs).

use holdfast_tests::kvm::{virsh, TestVm, DISK, MIB};
use holdfast_tests::service::Server;
use serde_json::json;
use std::process::Command;

/// Disk `i` of a VM restored raw into the pool directory.
fn restored_disk(pool_dir: &std::path::Path, vm: &str, dev: &str) -> Vec<u8> {
    std::fs::read(pool_dir.join(format!("{vm}-{dev}.raw"))).unwrap()
}

#[test]
fn restores_run_as_jobs_hold_their_rule_and_stop_cleanly() {
    let mut vm = TestVm::start("restore");
    let clock = vm.dir.join("clock");
    std::fs::write(&clock, "2026-11-23T12:00:00Z").unwrap(); // far from the rule's Sunday run
    let mut server = Server::start_with_clock(&vm.dir.join("data"), Some(&clock));
    let mut c = server.admin("correct horse battery");
    let p = c.post("/api/platforms", json!({ "name": "lab", "kind": "kvm", "uri": "qemu:///system" }), 201);
    let pid = p["id"].as_i64().unwrap();
    let pool = format!("{}-pool", vm.name);
    let pool_dir = vm.dir.join("pool");
    std::fs::create_dir_all(&pool_dir).unwrap();
    virsh(&["pool-create-as", &pool, "dir", "--target", pool_dir.to_str().unwrap()]);

    let rule = json!({ "name": "weekly", "platform": pid, "vms": [vm.name],
                       "full": { "kind": "weekly", "days": ["sun"], "times": ["03:00"] } });
    let rid = c.post("/api/rules", rule, 201)["id"].as_i64().unwrap();
    vm.write(0, 0x41, 0, 2 * MIB);
    vm.write(1, 0x42, 5 * MIB, MIB);
    let jobs = c.post(&format!("/api/rules/{rid}/run"), json!({ "type": "full" }), 202);
    let backup = c.wait_job(jobs[0]["id"].as_i64().unwrap());
    assert_eq!(backup["state"], "completed", "{backup}");
    let point = backup["point_id"].as_str().unwrap().to_string();
    let model = vm.model.clone();
    vm.write(0, 0x43, 0, MIB);

    // Bad input names the field; nothing is queued.
    let new_vm = |name: &str| {
        json!({ "point": point, "platform": pid, "mode": "new_vm", "name": name, "pool": pool,
                "memory_mib": 96, "disk_format": "raw" })
    };
    let mut cases = vec![];
    for (field, key, value) in [
        ("mode", "mode", json!("sideways")),
        ("name", "name", json!(" ")),
        ("point", "point", json!("no-such-point")),
        ("disk_format", "disk_format", json!("vmdk")),
        ("platform", "platform", json!(99)),
        ("cpus", "cpus", json!(0)),
        ("disk_sizes", "disk_sizes", json!({ "vdb": DISK - 512 })),
        ("disk_sizes", "disk_sizes", json!({ "sdz": 2 * DISK })),
    ] {
        let mut body = new_vm("x");
        body[key] = value;
        cases.push((body, field));
    }
    cases.push((json!({ "point": point, "platform": pid, "mode": "in_place", "name": "x" }), "name"));
    cases.push((
        json!({ "point": point, "platform": pid, "mode": "in_place", "disk_sizes": { "vdb": 2 * DISK } }),
        "disk_sizes",
    ));
    let before = c.get("/api/jobs").as_array().unwrap().len();
    for (body, field) in cases {
        let v = c.post("/api/restores", body, 400);
        assert!(v["error"].as_str().unwrap().starts_with(field), "{field}: {v}");
    }
    // What the platform knows is checked before queueing too: a name taken (409), a pool or a
    // network the host lacks (400, naming what it has).
    let v = c.post("/api/restores", new_vm(&vm.name), 409);
    assert!(v["error"].as_str().unwrap().starts_with("name: a VM named"), "{v}");
    let mut body = new_vm("x");
    body["pool"] = json!("no-such-pool");
    let v = c.post("/api/restores", body, 400);
    assert!(v["error"].as_str().unwrap().starts_with("storage: no storage pool \"no-such-pool\""), "{v}");
    let mut body = new_vm("x");
    body["network"] = json!("no-such-net");
    let v = c.post("/api/restores", body, 400);
    assert!(v["error"].as_str().unwrap().starts_with("network: no network \"no-such-net\""), "{v}");
    assert_eq!(c.get("/api/jobs").as_array().unwrap().len(), before);

    // As a new VM: a job of kind restore whose disks match the point, not the later write; vdb
    // grown to twice its size, the added space empty.
    let copy = format!("{}-copy", vm.name);
    let mut body = new_vm(&copy);
    body["disk_sizes"] = json!({ "vdb": 2 * DISK });
    let job = c.post("/api/restores", body, 202);
    assert_eq!((job["kind"].as_str(), job["type"].as_str()), (Some("restore"), Some("new_vm")), "{job}");
    assert_eq!((job["vm"].as_str(), job["point_id"].as_str()), (Some(copy.as_str()), Some(point.as_str())));
    let done = c.wait_job(job["id"].as_i64().unwrap());
    assert_eq!(done["state"], "completed", "{done}");
    assert_eq!(
        (done["done_bytes"].as_i64(), done["total_bytes"].as_i64()),
        (Some(2 * DISK as i64), Some(2 * DISK as i64))
    );
    let vdb = restored_disk(&pool_dir, &copy, "vdb");
    let grown = vdb.len() == 2 * DISK && vdb[DISK..].iter().all(|&b| b == 0);
    let same = restored_disk(&pool_dir, &copy, "vda") == model[0] && vdb[..DISK.min(vdb.len())] == model[1][..];
    let log = c.get(&format!("/api/jobs/{}/log", done["id"])).to_string();
    virsh(&["undefine", &copy]);
    assert!(same, "the restored disks differ from the point");
    assert!(grown, "vdb was not grown to {} bytes with empty space: {} bytes", 2 * DISK, vdb.len());
    assert!(log.contains(&format!("restored as new VM {copy}")), "{log}");

    // Held at 0 MB/s, a restore runs and holds what it reads: the rule that made the point
    // cannot be deleted. A stop removes the new VM's volumes and defines nothing.
    let paused = json!([{ "days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"], "from": "00:00",
                          "to": "23:59", "mb_per_second": 0 }]);
    assert_eq!(c.request("PUT", "/api/bandwidth", Some(&paused)).0, 204);
    let held = format!("{}-held", vm.name);
    let job = c.post("/api/restores", new_vm(&held), 202);
    let id = job["id"].as_i64().unwrap();
    c.wait_state(id, "running");
    let (code, v) = c.request("DELETE", &format!("/api/rules/{rid}"), None);
    assert_eq!(code, 409, "{v}");
    assert!(v["error"].as_str().unwrap().contains(&format!("restore job {id} reads point {point}")), "{v}");
    let in_place = json!({ "point": point, "platform": pid, "mode": "in_place" });
    c.post(&format!("/api/jobs/{id}/stop"), json!({}), 200);
    let stopped = c.wait_job(id);
    assert_eq!(stopped["state"], "stopped", "{stopped}");
    assert_eq!(stopped["point_id"], point.as_str(), "a restore that ended keeps the point it read");
    let left: Vec<_> = std::fs::read_dir(&pool_dir).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(left.iter().all(|f| !f.to_string_lossy().starts_with(&held)), "volumes left behind: {left:?}");
    let defined = Command::new("virsh").args(["-c", "qemu:///system", "dominfo", &held]).output().unwrap();
    assert!(!defined.status.success(), "a stopped restore defined VM {held}");

    // The service killed during a restore: on restart the job is failed, it still names its
    // point, and the volume the restore had made is removed (the job's log says so).
    let killed_vm = format!("{}-killed", vm.name);
    let job = c.post("/api/restores", new_vm(&killed_vm), 202);
    let id = job["id"].as_i64().unwrap();
    c.wait_state(id, "running");
    let made = |dir: &std::path::Path| -> Vec<String> {
        let files = std::fs::read_dir(dir).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned());
        files.filter(|f| f.starts_with(&killed_vm)).collect()
    };
    assert_eq!(made(&pool_dir), [format!("{killed_vm}-vda.raw")], "held at 0 MB/s in its first disk");
    server.kill();
    server = Server::start_with_clock(&vm.dir.join("data"), Some(&clock));
    c = server.client();
    assert_eq!(c.login("admin", "correct horse battery").0, 200);
    let killed = c.get(&format!("/api/jobs/{id}"));
    assert_eq!((killed["state"].as_str(), killed["point_id"].as_str()), (Some("failed"), Some(point.as_str())));
    assert!(killed["error"].as_str().unwrap().contains("stopped while this restore ran"), "{killed}");
    let t = std::time::Instant::now();
    let log = loop {
        let log = c.get(&format!("/api/jobs/{id}/log")).to_string();
        if log.contains("after the restart") || t.elapsed() > std::time::Duration::from_secs(30) {
            break log;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert!(log.contains(&format!("removed the volumes the restore had made: {killed_vm}-vda.raw")), "{log}");
    virsh(&["pool-refresh", &pool]);
    assert!(made(&pool_dir).is_empty(), "left in the pool: {:?}", made(&pool_dir));
    assert_eq!(c.request("PUT", "/api/bandwidth", Some(&json!([]))).0, 204);

    // In place: refused before queueing while the VM runs (409, saying so), then done once it
    // is shut off.
    let jobs = c.get("/api/jobs").as_array().unwrap().len();
    let refused = c.post("/api/restores", in_place.clone(), 409);
    assert!(
        refused["error"].as_str().unwrap().starts_with("mode: VM ")
            && refused["error"].as_str().unwrap().contains("is running"),
        "{refused}"
    );
    assert_eq!(c.get("/api/jobs").as_array().unwrap().len(), jobs, "nothing queued");
    virsh(&["destroy", &vm.name]);
    let job = c.post("/api/restores", in_place, 202);
    assert_eq!((job["vm"].as_str(), job["type"].as_str()), (Some(vm.name.as_str()), Some("in_place")));
    let done = c.wait_job(job["id"].as_i64().unwrap());
    assert_eq!(done["state"], "completed", "{done}");
    let raw = vm.dir.join("vda-inplace.raw");
    let st = Command::new("qemu-img")
        .args(["convert", "-f", "qcow2", "-O", "raw"])
        .arg(vm.dir.join("disk0.qcow2"))
        .arg(&raw)
        .status()
        .unwrap();
    assert!(st.success());
    assert!(std::fs::read(&raw).unwrap() == model[0], "vda is not back to the point");

    // Restores are not backups: the failed one counts in no statistics and mails nothing.
    let stats = c.get("/api/stats");
    let row = stats["vms"].as_array().unwrap().iter().find(|r| r["vm"] == vm.name.as_str()).cloned();
    assert_eq!(row.as_ref().map(|r| r["failed"]["week"].clone()), Some(json!(0)), "{stats}");
    assert_eq!(c.request("DELETE", &format!("/api/rules/{rid}"), None).0, 204);
    virsh(&["pool-destroy", &pool]);
}
