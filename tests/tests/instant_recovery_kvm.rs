//! Instant recovery on the real stack: the test bed's Debian guest is backed up through the
//! service, then booted as a new VM by libvirt straight from the appliance's NFS export (QEMU's
//! nfs:// driver, ports from our portmapper on 111) to multi-user, where its agent answers; the
//! guest writes through the export into the session's overlay; the running VM moves to a
//! storage pool (block copy with its writes, pivot) and the session ends with the VM running on
//! there; the point exports byte-identical to what the backup stored.

use holdfast_tests::kvm::{virsh, TestGuest, URI};
use holdfast_tests::service::Server;
use serde_json::{json, Value};
use std::process::Command;
use std::time::{Duration, Instant};

const PASSWORD: &str = "correct horse battery";

/// Removes the migrated VM and its pool, whatever the test's outcome.
struct Cleanup {
    domain: String,
    pool: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = Command::new("virsh").args(["-c", URI, "destroy", &self.domain]).output();
        let _ = Command::new("virsh").args(["-c", URI, "undefine", &self.domain]).output();
        let _ = Command::new("virsh").args(["-c", URI, "pool-destroy", &self.pool]).output();
    }
}

/// A guest agent command's reply on `domain`, None while it does not answer.
fn agent(domain: &str, command: &str) -> Option<String> {
    let out = Command::new("virsh")
        .args(["-c", URI, "qemu-agent-command", domain, command, "--timeout", "5"])
        .output()
        .ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a shell command in the guest through its agent; its exit code.
fn guest_sh(domain: &str, script: &str) -> i64 {
    let exec = json!({ "execute": "guest-exec", "arguments": { "path": "/bin/sh", "arg": ["-c", script], "capture-output": true } });
    let reply: Value = serde_json::from_str(&agent(domain, &exec.to_string()).expect("guest-exec answers")).unwrap();
    let pid = reply["return"]["pid"].as_i64().unwrap();
    let t = Instant::now();
    loop {
        let status = json!({ "execute": "guest-exec-status", "arguments": { "pid": pid } });
        let s: Value =
            serde_json::from_str(&agent(domain, &status.to_string()).unwrap_or_default()).unwrap_or_default();
        if s["return"]["exited"] == true {
            return s["return"]["exitcode"].as_i64().unwrap_or(-1);
        }
        assert!(t.elapsed() < Duration::from_secs(60), "{script}: {s}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn a_backed_up_guest_boots_from_the_export_writes_through_it_and_leaves_the_point_untouched() {
    let guest = TestGuest::boot("ir");
    let data = guest.dir.join("appliance");
    // Fixed ports: the running guest's QEMU finds the same server after the restart below.
    let args = ["--portmap-listen", "127.0.0.1:111", "--nfs-listen", "127.0.0.1:2049"];
    let server = Server::start_with(&data, None, &args);
    let c = server.admin(PASSWORD);
    let p = c.post("/api/platforms", json!({ "name": "lab", "kind": "kvm", "uri": URI }), 201)["id"].clone();
    let job = c.post("/api/jobs", json!({ "platform": p, "vm": guest.name, "type": "full" }), 202);
    let job = c.wait_job(job["id"].as_i64().unwrap());
    assert_eq!(job["state"], "completed", "{job}");
    let point = job["point_id"].as_str().unwrap().to_string();
    // The original is gone (as in a real recovery), which also leaves the cores to the copy.
    virsh(&["destroy", &guest.name]);

    let name = format!("{}-ir", guest.name);
    let t = Instant::now();
    let s = c.post(
        "/api/recoveries",
        json!({ "point": point, "clients": ["127.0.0.1"], "name": name,
                "vm": { "platform": p, "nfs_host": "127.0.0.1" } }),
        201,
    );
    let ready = t.elapsed();
    assert_eq!(s["vm_started"]["name"], name.as_str(), "{s}");
    let xml = virsh(&["dumpxml", &name]);
    assert!(xml.contains("protocol='nfs'") && xml.contains(&format!("/holdfast/{name}/vda.raw")), "{xml}");
    // Boots to multi-user from the export: its agent answers.
    while agent(&name, r#"{"execute":"guest-ping"}"#).is_none() {
        let console = std::fs::read_to_string(guest.dir.join("console.log")).unwrap_or_default();
        let tail: String = console.lines().rev().take(15).collect::<Vec<_>>().join("\n");
        assert!(
            t.elapsed() < Duration::from_secs(300),
            "the VM did not boot from the export; console:\n{tail}\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_secs(2));
    }
    eprintln!("export ready in {ready:?}, agent answered after {:?}", t.elapsed());
    let booted = c.get("/api/recoveries")[0].clone();
    assert!(booted["bytes_read"].as_u64().unwrap() > 1 << 20, "{booted}");

    // The guest writes a file and syncs: the write lands in the overlay and reads back.
    let before = booted["overlay_bytes"].as_u64().unwrap();
    assert_eq!(guest_sh(&name, "dd if=/dev/urandom of=/root/ir-proof bs=1M count=4 && sync"), 0);
    assert_eq!(guest_sh(&name, "test $(stat -c %s /root/ir-proof) = 4194304"), 0);
    let after = c.get("/api/recoveries")[0]["overlay_bytes"].as_u64().unwrap();
    assert!(after >= before + (4 << 20), "overlay {before} -> {after}");

    // The appliance restarts under the running guest: its I/O resumes through the same handles.
    drop(c);
    drop(server);
    let server = Server::start_with(&data, None, &args);
    let mut c = server.client();
    assert_eq!(c.login("admin", PASSWORD).0, 200);
    assert_eq!(c.get("/api/recoveries")[0]["name"], name.as_str());
    assert_eq!(guest_sh(&name, "dd if=/dev/urandom of=/root/after-restart bs=1M count=2 && sync"), 0);
    let resumed = c.get("/api/recoveries")[0]["bytes_written"].as_u64().unwrap();
    assert!(resumed >= 2 << 20, "{resumed} bytes written since the restart");

    // Moved to production storage while it runs: the guest's file (written into the overlay)
    // is on the new volume, the guest never stopped, and the session ends.
    assert_eq!(guest_sh(&name, "sha256sum /root/ir-proof > /root/ir-proof.sum && sync"), 0);
    let pool = format!("{name}-pool");
    let pool_dir = guest.dir.join("pool");
    std::fs::create_dir_all(&pool_dir).unwrap();
    virsh(&["pool-create-as", &pool, "dir", "--target", pool_dir.to_str().unwrap()]);
    let _cleanup = Cleanup { domain: name.clone(), pool: pool.clone() };
    let m = c.post(
        &format!("/api/recoveries/{}/migrate", s["id"]),
        json!({ "storage": pool, "disk_format": "qcow2" }),
        202,
    );
    assert_eq!(m["migration"]["running"], true, "{m}");
    let t = Instant::now();
    while !c.get("/api/recoveries").as_array().unwrap().is_empty() {
        let now = c.get("/api/recoveries")[0].clone();
        assert!(now["migration"]["error"].is_null(), "{now}");
        assert!(t.elapsed() < Duration::from_secs(300), "the move did not end: {now}");
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!("moved to the pool in {:?}", t.elapsed());
    let xml = virsh(&["dumpxml", &name]);
    assert!(!xml.contains("protocol='nfs'") && xml.contains(pool_dir.to_str().unwrap()), "{xml}");
    let inactive = virsh(&["dumpxml", "--inactive", &name]);
    assert!(!inactive.contains("protocol='nfs'"), "the definition names the volumes: {inactive}");
    assert!(agent(&name, r#"{"execute":"guest-ping"}"#).is_some(), "the guest ran throughout");
    assert_eq!(guest_sh(&name, "sha256sum -c /root/ir-proof.sum"), 0, "the overlay's writes moved with it");
    let audit = c.get("/api/audit").to_string();
    assert!(audit.contains("instant recovery migrated"), "{audit}");

    // The point is what the backup stored: exported again it equals the store's own export.
    c.post("/api/recoveries", json!({ "point": point, "clients": ["127.0.0.1"], "name": "check" }), 201);
    let out = guest.dir.join("vda.raw");
    let export = Command::new(holdfast_tests::holdfast_bin())
        .args(["store", "export", "--disk", "vda", "--store"])
        .arg(data.join("store"))
        .arg("--out")
        .arg(&out)
        .arg(&point)
        .output()
        .unwrap();
    assert!(export.status.success(), "{}", String::from_utf8_lossy(&export.stderr));
    let cmp = Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "raw"])
        .arg(&out)
        .arg("nfs://127.0.0.1/holdfast/check/vda.raw")
        .output()
        .unwrap();
    assert!(cmp.status.success(), "{}{}", String::from_utf8_lossy(&cmp.stdout), String::from_utf8_lossy(&cmp.stderr));
    let _ = std::fs::remove_file(&out);
}
