//! `holdfast serve` end to end: first start, login and the forced password change, sessions and
//! CSRF, a KVM platform and a backup job through the API against the real test bed, the job's
//! states, log and point, the catalog rebuilt from the store, bad input, lockout, and a service
//! killed mid-job recovering on restart.

use holdfast_tests::kvm::{TestVm, MIB};
use holdfast_tests::service::Server;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn wait_job(c: &holdfast_tests::service::Client, id: i64) -> Value {
    let t = Instant::now();
    loop {
        let j = c.get(&format!("/api/jobs/{id}"));
        if j["state"] == "completed" || j["state"] == "failed" {
            return j;
        }
        assert!(t.elapsed() < Duration::from_secs(120), "job {id} did not finish: {j}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn the_service_runs_a_kvm_backup_through_its_api_and_recovers_from_a_kill() {
    let mut vm = TestVm::start("service");
    let data = vm.dir.join("data");
    let mut server = Server::start(&data);

    // Nothing without a session; the initial password must be changed before anything else.
    let anon = server.client();
    for path in ["/api/points", "/api/platforms", "/api/jobs", "/api/audit", "/api/jobs/1/log"] {
        assert_eq!(anon.get_status(path).0, 401, "{path} answered without a session");
    }
    assert_eq!(anon.request("POST", "/api/jobs", Some(&json!({}))).0, 401);
    let mut c = server.client();
    assert_eq!(c.login("admin", "not-the-password").0, 401);
    let initial = server.initial_password();
    let (code, reply) = c.login("admin", &initial);
    assert_eq!(code, 200, "{reply}");
    assert_eq!(reply["must_change_password"], true);
    assert_eq!(c.get_status("/api/platforms").0, 403);
    let csrf = c.csrf.take();
    let v = c.post("/api/password", json!({ "old": initial, "new": "correct horse battery" }), 403);
    assert!(v["error"].as_str().unwrap().contains("CSRF"), "{v}");
    c.csrf = csrf;
    let v = c.post("/api/password", json!({ "old": initial, "new": "short" }), 400);
    assert!(v["error"].as_str().unwrap().starts_with("new:"), "{v}");
    c.post("/api/password", json!({ "old": initial, "new": "correct horse battery" }), 204);

    // A platform is saved only when its connection test passes; bad input names the field.
    let v =
        c.post("/api/platforms", json!({ "name": "lab", "kind": "kvm", "uri": "qemu+tcp://127.0.0.1:1/system" }), 400);
    assert!(v["error"].as_str().unwrap().starts_with("uri: the connection test failed"), "{v}");
    let v = c.post("/api/platforms", json!({ "name": "lab", "kind": "vmware", "uri": "https://vc" }), 400);
    assert!(v["error"].as_str().unwrap().starts_with("kind:"), "{v}");
    let v = c.post("/api/platforms", json!({ "name": "lab", "uri": "qemu:///system" }), 400);
    assert!(v["error"].as_str().unwrap().contains("kind"), "{v}");
    assert_eq!(c.get("/api/platforms"), json!([]), "nothing half-saved");
    let p = c.post("/api/platforms", json!({ "name": "lab", "kind": "kvm", "uri": "qemu:///system" }), 201);
    assert!(p["reached"].as_str().unwrap().contains("libvirt"), "{p}");
    c.post("/api/platforms", json!({ "name": "lab", "kind": "kvm", "uri": "qemu:///system" }), 409);
    let pid = p["id"].as_i64().unwrap();
    let vms = c.get(&format!("/api/platforms/{pid}/vms"));
    assert!(vms.as_array().unwrap().iter().any(|v| v["name"] == vm.name.as_str()), "{vms}");

    // A full backup job: queued, then done, with its log and its point in the catalog.
    vm.write(0, 0x5a, 0, 2 * MIB);
    let v = c.post("/api/jobs", json!({ "platform": pid, "vm": vm.name, "type": "weekly" }), 400);
    assert!(v["error"].as_str().unwrap().starts_with("type:"), "{v}");
    let job = c.post("/api/jobs", json!({ "platform": pid, "vm": vm.name, "type": "full" }), 202);
    let done = wait_job(&c, job["id"].as_i64().unwrap());
    assert_eq!(done["state"], "completed", "{done}");
    assert_eq!(done["percent"], 100.0);
    let point = done["point_id"].as_str().unwrap().to_string();
    let log = c.get(&format!("/api/jobs/{}/log", job["id"]));
    let lines: Vec<&str> = log.as_array().unwrap().iter().map(|l| l["message"].as_str().unwrap()).collect();
    assert!(lines.iter().any(|l| l.contains("crash-consistent")), "{lines:?}");
    assert!(lines.last().unwrap().contains(&point), "{lines:?}");
    let points = c.get("/api/points");
    assert_eq!(points[0]["point_id"], point.as_str());
    assert_eq!(points[0]["type"], "full");

    // A job for a VM that is not there fails with the connector's words.
    let bad = c.post("/api/jobs", json!({ "platform": pid, "vm": "no-such-vm", "type": "full" }), 202);
    let bad = wait_job(&c, bad["id"].as_i64().unwrap());
    assert!(bad["error"].as_str().unwrap().contains("no-such-vm"), "{bad}");

    // Killed while a job is queued or running: on restart the job is failed with that reason,
    // the catalog comes back from the store, and the next backup runs (cleaning up after the
    // killed one on the hypervisor).
    vm.write(1, 0x6b, 8 * MIB, MIB);
    let killed = c.post("/api/jobs", json!({ "platform": pid, "vm": vm.name, "type": "incremental" }), 202);
    server.kill();
    let server = Server::start(&data);
    let mut c = server.client();
    assert_eq!(c.login("admin", "correct horse battery").0, 200);
    let k = c.get(&format!("/api/jobs/{}", killed["id"]));
    if k["state"] != "completed" {
        assert_eq!(k["state"], "failed", "{k}");
        assert!(k["error"].as_str().unwrap().contains("service stopped"), "{k}");
    }
    let next = c.post("/api/jobs", json!({ "platform": pid, "vm": vm.name, "type": "incremental" }), 202);
    let next = wait_job(&c, next["id"].as_i64().unwrap());
    assert_eq!(next["state"], "completed", "{next}");
    assert!(!vm.has_job());
    let ids: Vec<String> =
        c.get("/api/points").as_array().unwrap().iter().map(|p| p["point_id"].as_str().unwrap().to_string()).collect();
    assert!(ids.contains(&point) && ids.contains(&next["point_id"].as_str().unwrap().to_string()), "{ids:?}");

    // The audit log has who did what; five wrong passwords lock the account.
    let audit = c.get("/api/audit");
    let actions: Vec<&str> = audit.as_array().unwrap().iter().map(|a| a["action"].as_str().unwrap()).collect();
    for want in ["password changed", "platform added", "backup started", "login"] {
        assert!(actions.contains(&want), "{want} missing from {actions:?}");
    }
    let mut other = server.client();
    for _ in 0..5 {
        assert_eq!(other.login("admin", "wrong").0, 401);
    }
    let (code, v) = other.login("admin", "correct horse battery");
    assert_eq!(code, 403, "{v}");
    assert!(v["error"].as_str().unwrap().contains("locked"), "{v}");
    assert_eq!(c.request("POST", "/api/logout", None).0, 204);
    assert_eq!(c.get_status("/api/jobs").0, 401);
}
