//! The console in a real browser against the real stack: a KVM host through libvirt, registered
//! through the platform form, its inventory browsed, a rule made in the wizard and run now with
//! its progress followed live to the end, the point on the VM's timeline, and that point restored
//! through the restore wizard as a new VM that the inventory then lists (its disks compared with
//! the point's byte for byte). What only the simulated platform can show quickly is in console.rs.

use holdfast_tests::browser::{shots, Browser};
use holdfast_tests::kvm::{virsh, TestVm, MIB};
use holdfast_tests::service::Server;
use serde_json::json;

const PASSWORD: &str = "correct horse battery";

#[test]
fn a_kvm_vm_is_protected_and_restored_as_a_new_vm_entirely_from_the_console() {
    let mut vm = TestVm::start("console");
    vm.write(0, 0x41, 0, 2 * MIB);
    vm.write(1, 0x42, 3 * MIB, MIB);
    let server = Server::start(&vm.dir.join("data"));
    let admin = server.admin(PASSWORD);
    let pool = format!("{}-pool", vm.name);
    let pool_dir = vm.dir.join("pool");
    std::fs::create_dir_all(&pool_dir).unwrap();
    virsh(&["pool-create-as", &pool, "dir", "--target", pool_dir.to_str().unwrap()]);
    let copy = format!("{}-copy", vm.name);
    let b = Browser::start(&shots("kvm"));
    let base = format!("https://127.0.0.1:{}", server.port);
    b.go(&format!("{base}/#/platforms"));
    b.log_in("admin", PASSWORD);

    // Register the host through its kind's form, and browse what it has.
    b.click(".page-head button.primary");
    b.select("select[name=kind]", "kvm");
    b.type_into("input[name=name]", "kvm-lab");
    b.type_into("input[name=uri]", "qemu:///system");
    b.click("form[aria-label='Add a platform'] button[type=submit]");
    b.wait_for("the saved platform", "return document.querySelector('table a[href^=\"#/platforms/\"]')");
    b.click("table a[href^='#/platforms/']");
    b.wait_for("the VM list", &format!("return document.querySelector(\"tr[data-vm] td\") && document.querySelector('main').innerText.includes('{}')", vm.name));
    assert!(b.text("main").contains(&pool), "the inventory lists the storage pools");
    b.click(&format!("button[aria-label='Disks of {}']", vm.name));
    b.wait_for("the VM's disks", "return document.querySelector('main').innerText.includes('vdb')");
    b.look("01-kvm-inventory");

    // A rule through the wizard, run now, followed live to the end.
    b.go(&format!("{base}/#/rules/new"));
    b.find("form[aria-label='New backup rule']");
    b.type_into("input[name=name]", "kvm-nightly");
    b.wait_for("the VM choices", "return document.querySelector('.vm-choices input')");
    b.run(
        "const c = [...document.querySelectorAll('.vm-choices input')].find((c) => c.value === arguments[0]); c.click(); return true;",
        json!([vm.name]),
    );
    for _ in 0..5 {
        b.click(".wizard button.primary:not([hidden])");
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    b.wait_for("the summary", "return document.querySelector('[data-step=\"5\"]:not([hidden]) dl.facts')");
    b.click(".wizard button[type=submit]");
    b.wait_for("the rule list", "return document.querySelector('tr[data-rule]')");
    b.select("select[aria-label='Backup type to run kvm-nightly now']", "full");
    b.click("button[aria-label='Run now: kvm-nightly']");
    b.wait_for(
        "the completed run",
        &format!(
            "const v = document.querySelector(\"[data-rule-vm='{}'] .badge\"); return v && v.innerText === 'completed'",
            vm.name
        ),
    );
    b.look("02-kvm-rule-completed");
    let points = admin.get("/api/points");
    let point = points[0]["point_id"].as_str().unwrap().to_string();

    // The point on the timeline, restored as a new VM into the test pool.
    b.go(&format!("{base}/#/points"));
    b.click("main a[href^='#/points/']");
    b.wait_for("the timeline", "return document.querySelectorAll('li.point').length === 1");
    assert!(b.text("main").to_lowercase().contains("nbd"), "the transport is NBD: {}", b.text("main"));
    b.look("03-kvm-timeline");
    b.click(&format!("li.point[data-point='{point}'] a[href^='#/restore/']"));
    b.find("form[aria-label='Restore a point']");
    b.click(".wizard button.primary:not([hidden])");
    b.wait_for("the point step", "return !document.querySelector('[data-step=\"1\"]').hidden");
    b.click(".wizard button.primary:not([hidden])");
    b.wait_for("the how step", "return !document.querySelector('[data-step=\"2\"]').hidden");
    b.click(".wizard button.primary:not([hidden])");
    b.wait_for(
        "the pool choice",
        &format!(
            "return [...document.querySelectorAll('select[name=storage] option')].some((o) => o.value === '{pool}')"
        ),
    );
    b.select("select[name=storage]", &pool);
    b.select("select[name=disk_format]", "raw");
    b.type_into("input[name=name]", &copy);
    b.type_into("input[name=memory_mib]", "96");
    b.click(".wizard button.primary:not([hidden])");
    b.wait_for("the summary", "return document.querySelector('[data-step=\"5\"]:not([hidden]) dl.facts')");
    b.look("04-kvm-restore-summary");
    b.click(".wizard button[type=submit]");
    b.wait_for("the job page", "return location.hash.startsWith('#/jobs/')");
    b.wait_for(
        "completed",
        "const e = document.querySelector('dl.facts .badge'); return e && e.innerText === 'completed'",
    );
    b.look("05-kvm-restore-completed");
    for (i, dev) in ["vda", "vdb"].iter().enumerate() {
        let restored = std::fs::read(pool_dir.join(format!("{copy}-{dev}.raw"))).unwrap();
        assert!(restored == vm.model[i], "{dev} of the new VM equals the point");
    }
    b.go(&format!("{base}/#/platforms"));
    b.click("table a[href^='#/platforms/']");
    b.wait_for(
        "the new VM in the inventory",
        &format!("return document.querySelector('main').innerText.includes('{copy}')"),
    );
    let _ = virsh(&["undefine", &copy]);
    let _ = virsh(&["pool-destroy", &pool]);
}
