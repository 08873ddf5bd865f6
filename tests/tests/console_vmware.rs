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
    b.wait_for("the refusal", "return document.querySelector('form .form-error')");
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
