//! The instant-recovery page in Chromium, against a real `holdfast serve` and the simulated
//! platform: started from a point's timeline with a VM, a wrong field refused under itself,
//! the session's counters moving live as a real NFS client (libnfs) reads the export, the VM's
//! name from the hypervisor shown as text, and the session ended through its dialog (the VM
//! removed). Screenshots under /var/tmp/holdfast-screenshots/recovery/.

use connectors::sim::SimHost;
use holdfast_tests::browser::{shots, Browser};
use holdfast_tests::service::Server;
use serde_json::json;
use std::process::Command;

const MIB: u64 = 1 << 20;
const PASSWORD: &str = "correct horse battery";
const HOSTILE: &str = "<img src=x onerror=alert(1)>";

#[test]
fn an_operator_exports_a_point_runs_its_vm_watches_it_live_and_ends_it() {
    let tmp = tempfile::tempdir().unwrap();
    let host = SimHost::create(&tmp.path().join("sim"));
    host.add_vm(HOSTILE, &[("vda", 8 * MIB)]);
    host.write(HOSTILE, "vda", 0, &holdfast_tests::noise(4 * MIB as usize, 9));
    let server = Server::start(&tmp.path().join("data"));
    let admin = server.admin(PASSWORD);
    let platform = admin.add_sim_platform("lab", &host);
    let job = admin.post("/api/jobs", json!({ "platform": platform, "vm": HOSTILE, "type": "full" }), 202);
    let point = admin.wait_job(job["id"].as_i64().unwrap())["point_id"].as_str().unwrap().to_string();
    let vm_key = admin.get("/api/points")[0]["vm_key"].as_str().unwrap().to_string();

    let b = Browser::start(&shots("recovery"));
    b.go(&format!("https://127.0.0.1:{}/#/recoveries", server.port));
    b.log_in("admin", PASSWORD);
    b.wait_for("the empty list", "return document.querySelector('main .empty')");
    b.look("01-no-sessions");

    // From the point's timeline.
    b.go(&format!("https://127.0.0.1:{}/#/points/{vm_key}", server.port));
    b.click(&format!("[data-point='{point}'] a[href^='#/recoveries/new/']"));
    b.find("form[aria-label='Start instant recovery']");
    assert!(b.text("main dl.facts").contains(HOSTILE), "the VM's name shows as text");
    assert_eq!(b.count("main img"), 0, "nothing from the hypervisor became markup");
    b.type_into("input[name=clients]", "127.0.0.1");
    b.type_into("input[name=name]", "ir-web");
    b.type_into("input[name='vm.nfs_host']", "a b");
    b.type_into("input[name='vm.name']", "web-ir");
    b.click("form[aria-label='Start instant recovery'] button[type=submit]");
    let e = b.wait_for(
        "the host's refusal",
        "return document.querySelector(\"[data-field='vm.nfs_host'] .error\").innerText",
    );
    assert!(e.as_str().unwrap().starts_with("vm.nfs_host:"), "{e}");
    assert_eq!(admin.get("/api/recoveries"), json!([]), "nothing started");
    b.look("02-start-refused");
    b.type_into("input[name='vm.nfs_host']", "127.0.0.1");
    b.look("03-start");
    b.click("form[aria-label='Start instant recovery'] button[type=submit]");
    b.wait_for("the session in the list", "return document.querySelector('tr[data-recovery=ir-web]')");
    assert!(host.vm("web-ir").unwrap().running, "the VM runs from the export");
    assert!(b.text("tr[data-recovery=ir-web]").contains("VM running from the export"));

    // A real NFS client reads the export: the Read cell follows live.
    let port = admin.get("/api/recoveries")[0]["nfs_port"].as_u64().unwrap();
    let url = format!("nfs://127.0.0.1/holdfast/ir-web/vda.raw?nfsport={port}&mountport={port}");
    let read = Command::new("nfs-cat").arg(&url).output().unwrap();
    assert!(read.status.success(), "{}", String::from_utf8_lossy(&read.stderr));
    assert!(read.stdout == host.disk(HOSTILE, "vda"));
    b.wait_for(
        "the live counter",
        "const t = document.querySelector('tr[data-recovery=ir-web] td[data-label=Read]'); return t && t.innerText === '8.0 MiB'",
    );
    b.look("04-session-live");

    // A move to production that fails (the simulated platform cannot read NFS) says why on the
    // row, and the VM runs on from the export.
    b.click("button[aria-label='Move to production: web-ir']");
    b.find("dialog[open] form[aria-label='Move to production storage']");
    b.look("05-move-dialog");
    b.click("dialog[open] button[type=submit]");
    let e = b.wait_for(
        "the failed move",
        "const r = document.querySelector('tr[data-recovery=ir-web]'); return r && r.innerText.includes('move failed') && r.innerText",
    );
    assert!(e.as_str().unwrap().contains("cannot read an NFS export"), "{e}");
    assert!(host.vm("web-ir").unwrap().running);
    b.look("06-move-failed");

    // Ended through its dialog: the VM goes, then the export.
    b.click("button[aria-label='End session ir-web']");
    b.find("dialog[open]");
    b.look("07-end-dialog");
    b.click("dialog button.danger");
    b.wait_for("the empty list", "return document.querySelector('main .empty')");
    assert!(host.vm("web-ir").is_none());
    assert_eq!(admin.get("/api/recoveries"), json!([]));
}
