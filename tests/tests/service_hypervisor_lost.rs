//! The hypervisor lost while the service works: libvirtd down when a job starts, and libvirtd
//! restarted while a job transfers. Alone in its test binary: restarting libvirtd breaks every
//! other libvirt connection, and cargo runs test binaries one at a time.

use holdfast_tests::kvm::{restart_libvirtd, start_libvirtd, stop_libvirtd, TestVm, MIB};
use holdfast_tests::service::Server;
use serde_json::json;
use std::process::Command;

#[test]
fn a_lost_hypervisor_fails_a_starting_job_clearly_and_a_restart_mid_transfer_is_reported() {
    let mut vm = TestVm::start("lost");
    let server = Server::start(&vm.dir.join("data"));
    let c = server.admin("correct horse battery");
    let p = c.post("/api/platforms", json!({ "name": "lab", "kind": "kvm", "uri": "qemu:///system" }), 201);
    let pid = p["id"].as_i64().unwrap();
    let log_of = |id: i64| c.get(&format!("/api/jobs/{id}/log")).to_string();

    // libvirtd down: the job fails with the URI and the cause, and the VM is untouched.
    let stopped = Command::new("pkill").args(["-x", "libvirtd"]).status();
    assert!(stopped.is_ok_and(|s| s.success()), "libvirtd was not running");
    std::thread::sleep(std::time::Duration::from_millis(500));
    let job = c.post("/api/jobs", json!({ "platform": pid, "vm": vm.name, "type": "full" }), 202);
    let failed = c.wait_job(job["id"].as_i64().unwrap());
    restart_libvirtd();
    assert_eq!(failed["state"], "failed", "{failed}");
    let why = failed["error"].as_str().unwrap();
    assert!(why.contains("qemu:///system"), "the error names the hypervisor: {why}");
    assert!(vm.checkpoints().is_empty() && !vm.has_job());

    // libvirtd restarted while the job transfers (held at 0 MB/s so the restart surely falls
    // mid-transfer): while the host does not answer the job shows unknown with the cause, then
    // its phase again; QEMU keeps serving, the point commits, and the log says ending the
    // hypervisor's backup job failed; the next incremental ends that job and runs clean.
    let window = json!([{ "days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"], "from": "00:00",
                          "to": "23:59", "mb_per_second": 0 }]);
    assert_eq!(c.request("PUT", "/api/bandwidth", Some(&window)).0, 204);
    vm.write(0, 0x71, 0, 4 * MIB);
    let job = c.post("/api/jobs", json!({ "platform": pid, "vm": vm.name, "type": "full" }), 202);
    let id = job["id"].as_i64().unwrap();
    c.wait_state(id, "running");
    stop_libvirtd();
    let lost = c.wait_state(id, "unknown");
    let why = lost["error"].as_str().unwrap_or_default();
    assert!(why.starts_with("node unreachable") && why.contains("qemu:///system"), "{lost}");
    start_libvirtd();
    let back = c.wait_state(id, "running");
    assert!(back["error"].is_null(), "{back}");
    assert_eq!(c.request("PUT", "/api/bandwidth", Some(&json!([]))).0, 204);
    let done = c.wait_job(id);
    assert_eq!(done["state"], "completed", "{done}");
    let log = log_of(id);
    assert!(log.contains("ending it on the hypervisor failed") && log.contains("the host answers again"), "{log}");
    assert!(vm.has_job(), "libvirt could not be told to end the job");

    vm.write(1, 0x72, 2 * MIB, MIB);
    let next = c.post("/api/jobs", json!({ "platform": pid, "vm": vm.name, "type": "incremental" }), 202);
    let next = c.wait_job(next["id"].as_i64().unwrap());
    assert_eq!(next["state"], "completed", "{next}");
    assert!(!log_of(next["id"].as_i64().unwrap()).contains("warning"), "{}", log_of(next["id"].as_i64().unwrap()));
    assert_eq!(c.get("/api/points")[0]["type"], "incremental");
    assert!(!vm.has_job());
}
