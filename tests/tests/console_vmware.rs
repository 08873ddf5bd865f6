//! The console's VMware platform form in a real browser, against the vSphere simulator test bed:
//! a vCenter whose certificate is not trusted yet is refused with the certificate's thumbprint
//! shown, pinned with that thumbprint and saved (the table shows what the connection test
//! reached), then browsed: its VMs with their disks, datastores and networks.

use holdfast_tests::browser::{shots, Browser};
use holdfast_tests::service::Server;
use holdfast_tests::vmware::{Vcsim, PASSWORD, USER};

const ADMIN_PASSWORD: &str = "correct horse battery";

#[test]
fn a_vcenter_is_registered_by_its_thumbprint_and_browsed_from_the_console() {
    let sim = Vcsim::start(2, &[2, 1]);
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    let admin = server.admin(ADMIN_PASSWORD);
    let b = Browser::start(&shots("vmware"));
    let base = format!("https://127.0.0.1:{}", server.port);
    b.go(&format!("{base}/#/platforms"));
    b.log_in("admin", ADMIN_PASSWORD);

    b.click(".page-head button.primary");
    b.select("select[name=kind]", "vmware");
    b.wait_for("the VMware fields", "return document.querySelector('input[name=thumbprint]')");
    b.type_into("input[name=name]", "vcenter");
    b.type_into("input[name=host]", &sim.host());
    b.type_into("input[name=username]", USER);
    b.type_into("input[name=password]", PASSWORD);
    b.look("01-vmware-form");
    b.click("form[aria-label='Add a platform'] button[type=submit]");
    b.wait_for("the refusal", "return document.querySelector('form').innerText.includes('thumbprint is')");
    let refusal = b.text("form");
    assert!(refusal.contains("not trusted") && refusal.contains("SHA-256 thumbprint is "), "{refusal}");
    b.look("02-vmware-untrusted");
    let print: String = refusal
        .split("thumbprint is ")
        .nth(1)
        .unwrap()
        .chars()
        .take_while(|c| c.is_ascii_hexdigit() || *c == ':')
        .collect();
    let print = print.trim_end_matches(':').to_string();
    assert_eq!(print.len(), 95, "{refusal}");
    assert!(admin.get("/api/platforms").as_array().unwrap().is_empty(), "nothing saved");

    // Pinned: saved, and the table says what was reached, thumbprint included.
    b.type_into("input[name=thumbprint]", &print);
    b.type_into("input[name=password]", PASSWORD);
    b.click("form[aria-label='Add a platform'] button[type=submit]");
    b.wait_for("the saved platform", "return document.querySelector('table a[href^=\"#/platforms/\"]')");
    let table = b.text("table");
    assert!(table.contains("VMware vSphere") && table.contains(&print) && table.contains("2 VMs"), "{table}");
    b.look("03-vmware-saved");

    b.click("table a[href^='#/platforms/']");
    b.wait_for("the VM list", "return document.querySelector('main').innerText.includes('DC0_H0_VM1')");
    let main = b.text("main");
    assert!(main.contains("LocalDS_0") && main.contains("VM Network"), "{main}");
    b.click("button[aria-label='Disks of DC0_H0_VM0']");
    b.wait_for("the VM's disks", "return document.querySelector('main').innerText.includes('scsi0-1')");
    b.look("04-vmware-inventory");
}

/// A point of another kind of platform (the simulated one) restored onto vSphere through the
/// wizard: the platform is the first choice, in place is not offered, the hardware step shows
/// the converted disks and the decisions, a chosen bus changes them, and the VM made has it.
#[test]
fn the_restore_wizard_converts_a_point_for_vsphere() {
    let sim = Vcsim::start(1, &[1]);
    let dir = tempfile::tempdir().unwrap();
    let host = connectors::sim::SimHost::create(&dir.path().join("simhost"));
    host.add_vm("app1", &[("vda", 4 << 20), ("vdb", 2 << 20)]);
    host.write("app1", "vda", 0, &[0x5a; 65536]);
    host.write("app1", "vdb", 1 << 20, &[0x5b; 4096]);
    let server = Server::start(&dir.path().join("data"));
    let admin = server.admin(ADMIN_PASSWORD);
    let simp = admin.add_sim_platform("lab", &host);
    let mut body = sim.settings();
    for (k, v) in [("name", "vcenter"), ("kind", "vmware"), ("username", USER), ("password", PASSWORD)] {
        body[k] = serde_json::json!(v);
    }
    admin.post("/api/platforms", body, 201);
    let job = admin.post("/api/jobs", serde_json::json!({ "platform": simp, "vm": "app1", "type": "full" }), 202);
    let done = admin.wait_job(job["id"].as_i64().unwrap());
    let point = done["point_id"].as_str().unwrap().to_string();

    let b = Browser::start(&shots("vmware-convert"));
    let base = format!("https://127.0.0.1:{}", server.port);
    b.go(&format!("{base}/#/restore/{point}"));
    b.log_in("admin", ADMIN_PASSWORD);
    b.find("form[aria-label='Restore a point']");
    let vc =
        admin.get("/api/platforms").as_array().unwrap().iter().find(|p| p["kind"] == "vmware").unwrap()["id"].clone();
    b.select("select[name=platform]", &vc.to_string());
    b.look("01-convert-onto");
    let next = |b: &Browser, step: u32| {
        b.click(".wizard button.primary:not([hidden])");
        b.wait_for(
            &format!("step {step}"),
            &format!("return !document.querySelector('[data-step=\"{step}\"]').hidden"),
        );
    };
    next(&b, 1);
    next(&b, 2);
    assert!(
        b.run("return document.querySelector('#mode-in-place').disabled", serde_json::json!([]))
            == serde_json::json!(true)
    );
    assert!(b.text("[data-step='2']").contains("needs a sim platform"), "{}", b.text("[data-step='2']"));
    next(&b, 3);
    b.wait_for(
        "the datastores",
        "return [...document.querySelectorAll('select[name=storage] option')].some((o) => o.value === 'LocalDS_0')",
    );
    b.type_into("input[name=name]", "app1-vsphere");
    b.select("select[name=network]", "VM Network");
    b.select("select[name=host]", "DC0_H0");
    b.look("01b-convert-new-vm");
    next(&b, 4);
    let hw = b.text("[data-step='4']");
    assert!(
        hw.contains("sata0-0") && hw.contains("becomes sata0-0 on sata"),
        "the defaults for an unknown guest: {hw}"
    );
    b.select("select[name=disk_bus]", "pvscsi");
    b.wait_for("the new decisions", "return document.querySelector('[data-step=\"4\"]').innerText.includes('becomes scsi0-0 on pvscsi (as chosen)')");
    b.look("02-convert-hardware");
    next(&b, 5);
    let summary = b.text("[data-step='5']");
    assert!(summary.contains("from sim to vmware") && summary.contains("pvscsi"), "{summary}");
    assert!(summary.contains("Host\nDC0_H0"), "{summary}");
    b.look("03-convert-summary");
    b.click(".wizard button[type=submit]");
    b.wait_for("the job page", "return location.hash.startsWith('#/jobs/')");
    b.wait_for(
        "completed",
        "const e = document.querySelector('dl.facts .badge'); return e && e.innerText === 'completed'",
    );
    b.look("04-convert-completed");
    let facts = b.text("dl.facts");
    assert!(
        facts.contains("From\nlab (Simulated platform)") && facts.contains("Onto\nvcenter (VMware vSphere)"),
        "the job names both platforms: {facts}"
    );
    b.go(&format!("{base}/#/jobs"));
    b.wait_for("the jobs", "return document.querySelectorAll('tr[data-job]').length === 2");
    let restore_row = b.text(&format!("tr[data-job='{}']", job["id"].as_i64().unwrap() + 1));
    assert!(restore_row.contains("lab (Simulated platform) → vcenter (VMware vSphere)"), "{restore_row}");
    let backup_row = b.text(&format!("tr[data-job='{}']", job["id"]));
    assert!(backup_row.contains("lab (Simulated platform)") && !backup_row.contains('→'), "{backup_row}");
    b.look("05-jobs-source-and-target");
    let made = sim.vm("app1-vsphere").expect("the VM was made in vSphere");
    assert_eq!(made["host"], "DC0_H0", "{made}");
    let keys: Vec<i64> = made["disks"].as_array().unwrap().iter().map(|d| d["capacity"].as_i64().unwrap()).collect();
    assert_eq!(keys.len(), 2, "{made}");
    assert_eq!(std::fs::read(sim.flat("app1-vsphere", 0)).unwrap(), host.disk("app1", "vda"));
}
