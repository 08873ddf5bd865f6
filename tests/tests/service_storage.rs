//! Storage targets through the service's API against the KVM test bed: a new store and an
//! adopted (encrypted) one, a rule writing into a target with retention there, a restore read
//! from it, a target that goes missing and comes back, refusals that name the field, and a
//! fresh appliance adopting the targets again from an exported configuration.

use holdfast_tests::kvm::{virsh, TestVm, DISK, MIB};
use holdfast_tests::service::{Client, Server};
use holdfast_tests::{holdfast, ok, point_ids};
use serde_json::{json, Value};

fn target(c: &Client, name: &str) -> Value {
    let all = c.get("/api/storage");
    all.as_array().unwrap().iter().find(|t| t["name"] == name).cloned().unwrap_or_else(|| panic!("no {name}: {all}"))
}

fn points_in(c: &Client, storage: i64) -> Vec<String> {
    let all = c.get("/api/points");
    let mut ids: Vec<String> = all
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["storage"] == storage)
        .map(|p| p["point_id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

#[test]
fn storage_targets_hold_rules_points_retention_and_restores_and_survive_restarts_and_moves() {
    let mut vm = TestVm::start("storage");
    let clock = vm.dir.join("clock");
    std::fs::write(&clock, "2026-11-23T12:00:00Z").unwrap();

    // A store made beside the service (encrypted, one point of another VM): adopted below.
    let old = vm.dir.join("old-store");
    let pass_file = vm.dir.join("pass");
    std::fs::write(&pass_file, "old store passphrase").unwrap();
    let image = vm.dir.join("image.raw");
    std::fs::write(&image, holdfast_tests::noise(3 * MIB, 7)).unwrap();
    ok(holdfast(&old).arg("--passphrase-file").arg(&pass_file).args(["init", "--encrypt"]));
    ok(holdfast(&old)
        .arg("--passphrase-file")
        .arg(&pass_file)
        .args(["ingest", "--vm", "elsewhere", "--disk"])
        .arg(format!("vda={}", image.display())));
    let old_points = {
        let mut cmd = holdfast(&old);
        cmd.arg("--passphrase-file").arg(&pass_file);
        let v = holdfast_tests::json(cmd.arg("ls"));
        v["points"].as_array().unwrap().iter().map(|p| p["point_id"].as_str().unwrap().to_string()).collect::<Vec<_>>()
    };

    let data = vm.dir.join("data");
    let mut server = Server::start_with_clock(&data, Some(&clock));
    let c = server.admin("correct horse battery");
    let p = c.post("/api/platforms", json!({ "name": "lab", "kind": "kvm", "uri": "qemu:///system" }), 201);
    let pid = p["id"].as_i64().unwrap();

    // The appliance's own store is target 1.
    let own = target(&c, "local");
    assert_eq!(own["id"], 1, "{own}");
    assert_eq!(own["path"].as_str(), Some(data.join("store").to_str().unwrap()), "{own}");
    assert_eq!((own["available"].as_bool(), own["encrypted"].as_bool()), (Some(true), Some(false)), "{own}");
    assert!(own["total_bytes"].as_u64().unwrap() >= own["free_bytes"].as_u64().unwrap(), "{own}");

    // Bad input names the field and adds nothing.
    let a_file = vm.dir.join("a-file");
    std::fs::write(&a_file, b"x").unwrap();
    let full_dir = vm.dir.join("not-empty");
    std::fs::create_dir_all(&full_dir).unwrap();
    std::fs::write(full_dir.join("something"), b"x").unwrap();
    let offsite = vm.dir.join("offsite");
    for (body, field, status) in [
        (json!({ "name": " ", "path": offsite }), "name", 400),
        (json!({ "name": "t", "path": "relative/dir" }), "path", 400),
        (json!({ "name": "t", "path": format!("{}/../x", vm.dir.display()) }), "path", 400),
        (json!({ "name": "t", "path": a_file }), "path", 400),
        (json!({ "name": "t", "path": full_dir }), "path", 400),
        (json!({ "name": "t", "path": offsite, "zstd_level": 40 }), "zstd_level", 400),
        (json!({ "name": "t", "path": offsite, "passphrase": "short" }), "passphrase", 400),
        (json!({ "name": "local", "path": offsite }), "name", 409),
        (json!({ "name": "t", "path": data.join("store/inside") }), "path", 409),
        (json!({ "name": "t", "path": old }), "passphrase", 400),
        (json!({ "name": "t", "path": old, "passphrase": "not the passphrase" }), "passphrase", 400),
        (json!({ "name": "t", "path": old, "passphrase": "old store passphrase", "zstd_level": 5 }), "zstd_level", 400),
        (json!({ "name": "t", "path": offsite, "size": 5 }), "size: unknown field", 400),
    ] {
        let v = c.post("/api/storage", body.clone(), status);
        assert!(v["error"].as_str().unwrap().starts_with(field), "{body}: {v}");
    }
    assert_eq!(c.get("/api/storage").as_array().unwrap().len(), 1, "nothing half-saved");
    assert!(!offsite.exists(), "a refused target makes no directory");

    // A new store, and the encrypted one adopted with its point.
    let off = c.post("/api/storage", json!({ "name": "offsite", "path": offsite, "zstd_level": 5 }), 201);
    assert!(offsite.join("store.json").exists());
    assert_eq!((off["points"].as_i64(), off["available"].as_bool()), (Some(0), Some(true)), "{off}");
    let oid = off["id"].as_i64().unwrap();
    let adopted =
        c.post("/api/storage", json!({ "name": "archive", "path": old, "passphrase": "old store passphrase" }), 201);
    let aid = adopted["id"].as_i64().unwrap();
    assert_eq!((adopted["points"].as_i64(), adopted["encrypted"].as_bool()), (Some(1), Some(true)), "{adopted}");
    assert_eq!(points_in(&c, aid), old_points);
    let dup = c.post("/api/storage", json!({ "name": "offsite", "path": vm.dir.join("other") }), 409);
    assert!(dup["error"].as_str().unwrap().starts_with("name"), "{dup}");

    // A rule names its target; an unknown one is refused.
    let rule = |storage: Value| {
        json!({ "name": "weekly", "platform": pid, "vms": [vm.name], "storage": storage,
                "full": { "kind": "weekly", "days": ["sun"], "times": ["03:00"] }, "retention": { "keep_last": 1 } })
    };
    let v = c.post("/api/rules", rule(json!(99)), 400);
    assert!(v["error"].as_str().unwrap().starts_with("storage"), "{v}");
    let r = c.post("/api/rules", rule(json!(oid)), 201);
    assert_eq!(r["storage"], oid, "{r}");
    let rid = r["id"].as_i64().unwrap();

    // Its backups go into that store only, and its retention (keep 1) prunes there.
    vm.write(0, 0x51, 0, 2 * MIB);
    let run = |c: &Client| {
        let jobs = c.post(&format!("/api/rules/{rid}/run"), json!({ "type": "full" }), 202);
        assert_eq!(jobs[0]["storage"], oid, "{jobs}");
        c.wait_job(jobs[0]["id"].as_i64().unwrap())
    };
    let first = run(&c);
    assert_eq!(first["state"], "completed", "{first}");
    let first_point = first["point_id"].as_str().unwrap().to_string();
    assert_eq!(point_ids(&offsite), vec![first_point.clone()]);
    assert!(point_ids(&data.join("store")).is_empty(), "nothing went to the own store");
    vm.write(1, 0x52, 3 * MIB, MIB);
    let model = vm.model.clone();
    let second = run(&c);
    assert_eq!(second["state"], "completed", "{second}");
    let second_point = second["point_id"].as_str().unwrap().to_string();
    assert_eq!(point_ids(&offsite), vec![second_point.clone()], "retention ran in the rule's target");
    let log = c.get(&format!("/api/jobs/{}/log", second["id"])).to_string();
    assert!(log.contains(&format!("retention removed point {first_point}")), "{log}");
    assert_eq!(points_in(&c, oid), vec![second_point.clone()]);
    assert_eq!(target(&c, "offsite")["points"], 1);

    // A job by hand into a target; an unknown target is refused.
    let v = c.post("/api/jobs", json!({ "platform": pid, "vm": vm.name, "type": "full", "storage": 42 }), 400);
    assert!(v["error"].as_str().unwrap().starts_with("storage"), "{v}");

    // A restore reads the point from its target.
    let pool = format!("{}-pool", vm.name);
    let pool_dir = vm.dir.join("pool");
    std::fs::create_dir_all(&pool_dir).unwrap();
    virsh(&["pool-create-as", &pool, "dir", "--target", pool_dir.to_str().unwrap()]);
    let copy = format!("{}-copy", vm.name);
    let restore = json!({ "point": second_point, "platform": pid, "mode": "new_vm", "name": copy, "pool": pool,
                          "disk_format": "raw" });
    let job = c.post("/api/restores", restore, 202);
    let done = c.wait_job(job["id"].as_i64().unwrap());
    assert_eq!(done["state"], "completed", "{done}");
    virsh(&["undefine", &copy]);
    let disk = |dev: &str| std::fs::read(pool_dir.join(format!("{copy}-{dev}.raw"))).unwrap();
    assert!(disk("vda") == model[0] && disk("vdb") == model[1], "restored disks differ from the point");
    assert_eq!(disk("vda").len(), DISK);
    virsh(&["pool-destroy", &pool]);

    // A target in use stays; the own store always stays.
    let v = c.request("DELETE", &format!("/api/storage/{oid}"), None);
    assert_eq!(v.0, 409, "{v:?}");
    assert!(v.1["error"].as_str().unwrap().contains("weekly"), "{v:?}");
    assert_eq!(c.request("DELETE", "/api/storage/1", None).0, 409);

    // The target's disk goes away while the service is down: it starts anyway, shows the target
    // unavailable with the cause, fails the rule's backup naming it (nothing made on the VM),
    // and keeps its points in the catalog; when the disk is back, the next use opens it again.
    server.kill();
    let moved = vm.dir.join("offsite-unmounted");
    std::fs::rename(&offsite, &moved).unwrap();
    let mut server = Server::start_with_clock(&data, Some(&clock));
    let mut c = server.client();
    assert_eq!(c.login("admin", "correct horse battery").0, 200);
    let gone = target(&c, "offsite");
    assert_eq!(gone["available"], false, "{gone}");
    assert!(gone["error"].as_str().unwrap().contains(offsite.to_str().unwrap()), "{gone}");
    assert_eq!(points_in(&c, oid), vec![second_point.clone()], "the catalog keeps an unavailable target's points");
    assert_eq!(points_in(&c, aid), old_points, "adopted points come back from their store at start");
    let checkpoints = vm.checkpoints();
    let jobs = c.post(&format!("/api/rules/{rid}/run"), json!({ "type": "incremental" }), 202);
    let failed = c.wait_job(jobs[0]["id"].as_i64().unwrap());
    assert_eq!(failed["state"], "failed", "{failed}");
    assert!(failed["error"].as_str().unwrap().contains("storage target offsite"), "{failed}");
    assert_eq!(vm.checkpoints(), checkpoints, "nothing was made on the VM");
    assert!(!vm.has_job());
    std::fs::rename(&moved, &offsite).unwrap();
    assert_eq!(target(&c, "offsite")["available"], true);
    vm.write(0, 0x53, MIB, MIB);
    let jobs = c.post(&format!("/api/rules/{rid}/run"), json!({ "type": "incremental" }), 202);
    let back = c.wait_job(jobs[0]["id"].as_i64().unwrap());
    assert_eq!((back["state"].as_str(), back["type"].as_str()), (Some("completed"), Some("incremental")), "{back}");

    // The configuration carries the targets (the adopted one's passphrase sealed); a fresh
    // appliance adopts them again with their points, and the rule writes where it did.
    let file = c.post("/api/config/export", json!({ "passphrase": "keep this in the safe" }), 200);
    assert_eq!(file["storage"].as_array().unwrap().len(), 2, "{file}");
    assert!(!file.to_string().contains("old store passphrase"), "sealed, not plain");
    assert_eq!(file["rules"][0]["storage"], "offsite");
    let bare = c.post("/api/config/export", json!({}), 200);
    assert!(bare["notes"].to_string().contains("storage target archive"), "{bare}");
    // Only one appliance writes into a store at a time: this one stops first.
    server.kill();
    let fresh = Server::start(&vm.dir.join("data2"));
    let d = fresh.admin("correct horse battery");
    let mut broken = file.clone();
    broken["rules"][0]["storage"] = json!("nowhere");
    // A target in a new directory gets a store made before the rules are checked; the failed
    // import removes it again.
    let made = vm.dir.join("made-by-import");
    broken["storage"].as_array_mut().unwrap().push(json!({ "name": "fresh", "path": made }));
    let v = d.post("/api/config/import", json!({ "config": broken, "passphrase": "keep this in the safe" }), 400);
    assert!(v["error"].as_str().unwrap().starts_with("config.rules[0].storage"), "{v}");
    assert_eq!(d.get("/api/storage").as_array().unwrap().len(), 1, "nothing half-saved");
    assert!(!made.exists(), "the store the failed import made is removed");
    let report = d.post("/api/config/import", json!({ "config": file, "passphrase": "keep this in the safe" }), 200);
    assert_eq!(report["storage_added"], json!(["offsite", "archive"]), "{report}");
    let oid2 = target(&d, "offsite")["id"].as_i64().unwrap();
    let mut on_disk = point_ids(&offsite);
    on_disk.sort();
    assert_eq!(points_in(&d, oid2), on_disk, "the offsite points are in the new catalog");
    assert_eq!(points_in(&d, target(&d, "archive")["id"].as_i64().unwrap()), old_points);
    assert_eq!(d.get("/api/rules")[0]["storage"], oid2);

    // A target no rule uses is forgotten; its files stay.
    let rule2 = d.get("/api/rules")[0]["id"].as_i64().unwrap();
    assert_eq!(d.request("DELETE", &format!("/api/rules/{rule2}"), None).0, 204);
    assert_eq!(d.request("DELETE", &format!("/api/storage/{oid2}"), None).0, 204);
    assert!(points_in(&d, oid2).is_empty());
    assert!(offsite.join("store.json").exists() && !point_ids(&offsite).is_empty(), "the files stay");
    let audit = d.get("/api/audit").to_string();
    assert!(audit.contains("storage target removed") && audit.contains("files are kept"), "{audit}");

    // Storage targets are the admin's.
    d.post("/api/users", json!({ "name": "op", "role": "operator", "password": "operator password 1" }), 201);
    let mut op = fresh.client();
    op.login("op", "operator password 1");
    op.post("/api/password", json!({ "old": "operator password 1", "new": "operator password 2" }), 204);
    assert_eq!(op.get_status("/api/storage").0, 200);
    assert_eq!(op.request("POST", "/api/storage", Some(&json!({ "name": "x", "path": "/var/tmp/x" }))).0, 403);
}
