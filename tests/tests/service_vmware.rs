//! VMware through the service and its API, on the vSphere simulator test bed (tests/vcsim): the
//! platform registered (refused with the reason for a wrong password or thumbprint), browsed, a
//! rule with two VMs of two disks run full then incremental over the HTTPS transport, a point
//! restored as a new VM byte for byte, a restore refused up front, and the appliance killed
//! mid-backup: its snapshot is removed at the restart.

use holdfast_tests::service::Server;
use holdfast_tests::vmware::{install_vddk_shim, Vcsim, PASSWORD, USER};
use serde_json::{json, Value};

const MIB: usize = 1 << 20;

fn platform(sim: &Vcsim, password: &str) -> Value {
    let mut body = sim.settings();
    body["name"] = json!("vcenter");
    body["kind"] = json!("vmware");
    body["username"] = json!(USER);
    body["password"] = json!(password);
    body
}

fn flats(sim: &Vcsim, vm: &str) -> Vec<Vec<u8>> {
    (0..2).map(|i| std::fs::read(sim.flat(vm, i)).unwrap()).collect()
}

#[test]
fn vmware_vms_are_backed_up_and_restored_through_the_api() {
    let sim = Vcsim::start(2, &[8, 4]);
    let dir = tempfile::tempdir().unwrap();
    // The VixDiskLib stand-in reads its configuration from the service's environment.
    std::env::set_var("VDDK_SHIM_DATASTORES", sim.shim_datastores());
    let mut server = Server::start(&dir.path().join("data"));
    let mut c = server.admin("correct horse battery");

    // Registration is refused with the reason, nothing saved.
    let v = c.post("/api/platforms", platform(&sim, "wrong"), 400);
    assert!(v["error"].as_str().unwrap().contains("InvalidLogin"), "{v}");
    let mut bad = platform(&sim, PASSWORD);
    bad["thumbprint"] = json!("12:34");
    let v = c.post("/api/platforms", bad, 400);
    assert!(v["error"].as_str().unwrap().starts_with("thumbprint"), "{v}");
    assert_eq!(c.get("/api/platforms").as_array().unwrap().len(), 0);
    let p = c.post("/api/platforms", platform(&sim, PASSWORD), 201);
    let pid = p["id"].as_i64().unwrap();

    // Browsed: VMs, datastores, networks; a VM's disks with their keys.
    let inv = c.get(&format!("/api/platforms/{pid}/inventory"));
    let names: Vec<&str> = inv["vms"].as_array().unwrap().iter().map(|v| v["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["DC0_H0_VM0", "DC0_H0_VM1"], "{inv}");
    assert!(inv["storage"].as_array().unwrap().iter().any(|s| s["name"] == "LocalDS_0"), "{inv}");
    assert!(inv["networks"].as_array().unwrap().iter().any(|s| s["name"] == "VM Network"), "{inv}");
    let vm0 = c.get(&format!("/api/platforms/{pid}/vms/DC0_H0_VM0"));
    let keys: Vec<&str> = vm0["disks"].as_array().unwrap().iter().map(|d| d["key"].as_str().unwrap()).collect();
    assert_eq!(keys, ["scsi0-0", "scsi0-1"], "{vm0}");

    for (n, vm) in ["DC0_H0_VM0", "DC0_H0_VM1"].iter().enumerate() {
        sim.write(vm, 2000, 0, &vec![0x30 + n as u8; 2 * MIB]);
        sim.write(vm, 2001, MIB as u64, &vec![0x50 + n as u8; MIB]);
    }
    let rule = json!({ "name": "vsphere", "platform": pid, "vms": ["DC0_H0_VM0", "DC0_H0_VM1"],
                       "full": { "kind": "weekly", "days": ["sun"], "times": ["03:00"] } });
    let rid = c.post("/api/rules", rule, 201)["id"].as_i64().unwrap();
    let run = |c: &holdfast_tests::service::Client, kind: &str| -> Vec<Value> {
        let jobs = c.post(&format!("/api/rules/{rid}/run"), json!({ "type": kind }), 202);
        jobs.as_array().unwrap().iter().map(|j| c.wait_job(j["id"].as_i64().unwrap())).collect()
    };
    let fulls = run(&c, "full");
    let at_full = [flats(&sim, "DC0_H0_VM0"), flats(&sim, "DC0_H0_VM1")];
    for j in &fulls {
        assert_eq!(j["state"], "completed", "{j}");
    }
    sim.write("DC0_H0_VM0", 2000, 6 * MIB as u64, &[0x77; 4096]);
    let incs = run(&c, "incremental");
    for j in &incs {
        assert_eq!(j["state"], "completed", "{j}");
    }
    let point = |vm: &str, jobs: &[Value]| -> String {
        let j = jobs.iter().find(|j| j["vm"] == vm).unwrap();
        j["point_id"].as_str().unwrap().to_string()
    };
    let inc0 = point("DC0_H0_VM0", &incs);
    let p = c.get(&format!("/api/points/{inc0}"));
    assert_eq!(p["type"], "incremental", "{p}");
    assert!(p["transport"].as_str().unwrap().contains("https"), "{p}");

    // Restore checks: a taken name (409), a datastore or network vSphere lacks (400).
    let full1 = point("DC0_H0_VM1", &fulls);
    let new_vm = |point: &str, name: &str| {
        json!({ "point": point, "platform": pid, "mode": "new_vm", "name": name, "storage": "LocalDS_0",
                "network": "VM Network", "cpus": 2, "memory_mib": 512 })
    };
    let v = c.post("/api/restores", new_vm(&full1, "DC0_H0_VM0"), 409);
    assert!(v["error"].as_str().unwrap().starts_with("name:"), "{v}");
    let mut body = new_vm(&full1, "x");
    body["storage"] = json!("nosuch");
    let v = c.post("/api/restores", body, 400);
    assert!(v["error"].as_str().unwrap().starts_with("storage: there is no datastore"), "{v}");
    let mut body = new_vm(&full1, "x");
    body["network"] = json!("nosuch");
    let v = c.post("/api/restores", body, 400);
    assert!(v["error"].as_str().unwrap().starts_with("network: there is no network"), "{v}");

    // The full of VM1 as a new VM: its flat files are the disks at backup time.
    let job = c.post("/api/restores", new_vm(&full1, "vm1-copy"), 202);
    let done = c.wait_job(job["id"].as_i64().unwrap());
    assert_eq!(done["state"], "completed", "{done}");
    assert!(flats(&sim, "vm1-copy") == at_full[1], "the restored VM's disks differ from the full");
    let copy = c.get(&format!("/api/platforms/{pid}/vms/vm1-copy"));
    assert_eq!((copy["cpus"].as_i64(), copy["memory_mib"].as_i64()), (Some(2), Some(512)), "{copy}");

    // The same vCenter through VDDK (the VixDiskLib stand-in, configured through the service's
    // environment): a platform whose VDDK directory holds no library is refused, naming it; one
    // that does is saved, and its backups and restores go through VDDK.
    let mut vddk = platform(&sim, PASSWORD);
    vddk["name"] = json!("vcenter-vddk");
    vddk["vddk_dir"] = json!(dir.path().join("no-vddk"));
    let v = c.post("/api/platforms", vddk.clone(), 400);
    assert!(v["error"].as_str().unwrap().contains("no VDDK library"), "{v}");
    vddk["vddk_dir"] = json!(install_vddk_shim(&dir.path().join("vddk")));
    let p2 = c.post("/api/platforms", vddk, 201);
    assert!(p2["reached"].as_str().unwrap().contains("data through VDDK"), "{p2}");
    let job = c.post("/api/jobs", json!({ "platform": p2["id"], "vm": "DC0_H0_VM1", "type": "incremental" }), 202);
    let done = c.wait_job(job["id"].as_i64().unwrap());
    assert_eq!(done["state"], "completed", "{done}");
    let through = c.get(&format!("/api/points/{}", done["point_id"].as_str().unwrap()));
    assert_eq!(through["transport"], "vddk nbdssl", "{through}");
    let job = c.post(
        "/api/restores",
        json!({ "point": done["point_id"], "platform": p2["id"], "mode": "new_vm",
        "name": "vm1-vddk", "storage": "LocalDS_0", "network": "VM Network" }),
        202,
    );
    let done = c.wait_job(job["id"].as_i64().unwrap());
    assert_eq!(done["state"], "completed", "{done}");
    assert!(flats(&sim, "vm1-vddk") == flats(&sim, "DC0_H0_VM1"), "restored through VDDK byte for byte");

    // Killed mid-backup (held at 0 MB/s): the snapshot stays until the restart removes it.
    let paused = json!([{ "days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"], "from": "00:00",
                          "to": "23:59", "mb_per_second": 0 }]);
    assert_eq!(c.request("PUT", "/api/bandwidth", Some(&paused)).0, 204);
    let jobs = c.post(&format!("/api/rules/{rid}/run"), json!({ "type": "full" }), 202);
    let id = jobs[0]["id"].as_i64().unwrap();
    let vm = jobs[0]["vm"].as_str().unwrap().to_string();
    c.wait_state(id, "running");
    let t = std::time::Instant::now();
    while sim.snapshots(&vm).is_empty() {
        assert!(t.elapsed().as_secs() < 30, "no snapshot of {vm} while its backup runs");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    server.kill();
    assert_eq!(sim.snapshots(&vm).len(), 1, "the killed backup's snapshot is still there");
    server = Server::start(&dir.path().join("data"));
    c = server.client();
    assert_eq!(c.login("admin", "correct horse battery").0, 200);
    let t = std::time::Instant::now();
    while !sim.snapshots(&vm).is_empty() {
        assert!(t.elapsed().as_secs() < 60, "the restart left {:?} on {vm}", sim.snapshots(&vm));
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let killed = c.get(&format!("/api/jobs/{id}"));
    assert_eq!(killed["state"], "failed", "{killed}");
    let log = c.get(&format!("/api/jobs/{id}/log")).to_string();
    assert!(log.contains("holdfast-backup-"), "the job's log names the removed snapshot: {log}");
}

#[test]
fn a_restored_vm_goes_on_the_host_chosen() {
    let sim = Vcsim::start_hosts(2, 1, &[2]);
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    let c = server.admin("correct horse battery");
    let pid = c.post("/api/platforms", platform(&sim, PASSWORD), 201)["id"].as_i64().unwrap();
    let inv = c.get(&format!("/api/platforms/{pid}/inventory"));
    let hosts: Vec<&str> = inv["hosts"].as_array().unwrap().iter().map(|h| h["name"].as_str().unwrap()).collect();
    assert_eq!(hosts, ["DC0_H0", "DC0_H1"], "{inv}");
    sim.write("DC0_H0_VM0", 2000, 0, &[0x77; 65536]);
    let job = c.post("/api/jobs", json!({ "platform": pid, "vm": "DC0_H0_VM0", "type": "full" }), 202);
    let point = c.wait_job(job["id"].as_i64().unwrap())["point_id"].clone();
    let restore = |name: &str, host: Option<&str>| {
        let mut body = json!({ "point": point, "platform": pid, "mode": "new_vm", "name": name,
                               "storage": "LocalDS_0", "network": "VM Network" });
        if let Some(h) = host {
            body["host"] = json!(h);
        }
        body
    };

    // A host that does not exist is refused, naming the field and the hosts there are; nothing
    // is queued or made.
    let jobs = c.get("/api/jobs").as_array().unwrap().len();
    let v = c.post("/api/restores", restore("on-nosuch", Some("nosuch")), 400);
    assert_eq!(v["error"], "host: there is no host \"nosuch\" (there are: DC0_H0, DC0_H1)", "{v}");
    assert_eq!(c.get("/api/jobs").as_array().unwrap().len(), jobs);
    assert!(sim.vm("on-nosuch").is_none());

    // Each host in turn: the new VM is registered on the one chosen (the point came from DC0_H0).
    for host in ["DC0_H1", "DC0_H0"] {
        let name = format!("on-{host}");
        let job = c.post("/api/restores", restore(&name, Some(host)), 202);
        let done = c.wait_job(job["id"].as_i64().unwrap());
        assert_eq!(done["state"], "completed", "{done}");
        let made = sim.vm(&name).expect("the VM was made");
        assert_eq!(made["host"], host, "{made}");
        assert_eq!(std::fs::read(sim.flat(&name, 0)).unwrap(), std::fs::read(sim.flat("DC0_H0_VM0", 0)).unwrap());
    }

    // A platform that is one host (here the simulated one) takes its own name or none.
    let simhost = connectors::sim::SimHost::create(&dir.path().join("simhost"));
    simhost.add_vm("app", &[("vda", 1 << 20)]);
    let simp = c.add_sim_platform("lab", &simhost);
    let job = c.post("/api/jobs", json!({ "platform": simp, "vm": "app", "type": "full" }), 202);
    let spoint = c.wait_job(job["id"].as_i64().unwrap())["point_id"].clone();
    let v = c.post(
        "/api/restores",
        json!({ "point": spoint, "platform": simp, "mode": "new_vm", "name": "app2", "host": "DC0_H1" }),
        400,
    );
    assert_eq!(v["error"], "host: this platform is the one host \"sim-host\", not \"DC0_H1\"", "{v}");
    let job = c.post(
        "/api/restores",
        json!({ "point": spoint, "platform": simp, "mode": "new_vm", "name": "app2", "host": "sim-host" }),
        202,
    );
    assert_eq!(c.wait_job(job["id"].as_i64().unwrap())["state"], "completed");
}
