//! `holdfast platform --kind kvm` through the real binary against libvirtd: connection test, VM list, and a
//! full then incremental backup that `holdfast store` lists and exports byte for byte.

use holdfast_tests::kvm::{TestVm, MIB, URI};
use holdfast_tests::{holdfast, holdfast_bin, json, ok};
use std::process::Command;

fn kvm() -> Command {
    let mut c = Command::new(holdfast_bin());
    c.args(["platform", "--kind", "kvm", "--set", &format!("uri={URI}")]);
    c
}

#[test]
fn backs_up_a_vm_from_the_command_line() {
    let mut vm = TestVm::start("cli");
    let store = vm.dir.join("store");
    let work = vm.dir.join("work");
    ok(holdfast(&store).arg("init"));
    assert!(ok(kvm().arg("test")).contains("libvirt"));
    let vms = json(kvm().arg("vms"));
    assert!(vms.as_array().unwrap().iter().any(|v| v["name"] == vm.name.as_str() && v["running"] == true));

    vm.write(0, 0x21, 3 * MIB, 2 * MIB);
    let full = json(
        kvm().arg("--work-dir").arg(&work).args(["backup", "--vm", &vm.name, "--type", "full", "--store"]).arg(&store),
    );
    assert_eq!(full["point"]["backup_type"], "full");
    vm.write(1, 0x22, 7 * MIB, MIB);
    let inc = json(kvm().arg("--work-dir").arg(&work).args(["backup", "--vm", &vm.name, "--store"]).arg(&store));
    assert_eq!(inc["point"]["backup_type"], "incremental");
    assert_eq!(inc["point"]["parent"], full["point"]["point_id"]);
    let id = inc["point"]["point_id"].as_str().unwrap();
    for (i, dev) in ["vda", "vdb"].iter().enumerate() {
        let out = vm.dir.join(format!("{dev}.raw"));
        ok(holdfast(&store).args(["export", id, "--disk", dev, "--out"]).arg(&out));
        assert!(std::fs::read(&out).unwrap() == vm.model[i], "{dev} differs");
    }
    // Restore the incremental as a new VM in a pool, and read its disks back.
    let pool = format!("{}-pool", vm.name);
    let pool_dir = vm.dir.join("pool");
    std::fs::create_dir_all(&pool_dir).unwrap();
    holdfast_tests::kvm::virsh(&["pool-create-as", &pool, "dir", "--target", pool_dir.to_str().unwrap()]);
    let new_name = format!("{}-copy", vm.name);
    // A host the platform is not is refused before anything is made.
    let elsewhere = kvm()
        .args(["restore", "--point", id, "--name", &new_name, "--pool", &pool, "--host", "no-such-host", "--store"])
        .arg(&store)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&elsewhere.stderr);
    assert!(!elsewhere.status.success() && err.contains("host: this platform is the one host"), "{err}");
    let r = json(
        kvm()
            .args(["restore", "--point", id, "--name", &new_name, "--pool", &pool, "--memory-mib", "96"])
            .args(["--disk-format", "raw", "--store"])
            .arg(&store),
    );
    assert_eq!(r["vm"], new_name.as_str());
    let restored_ok = (0..2).all(|i| {
        let dev = ["vda", "vdb"][i];
        std::fs::read(pool_dir.join(format!("{new_name}-{dev}.raw"))).unwrap() == vm.model[i]
    });
    for args in [vec!["undefine", new_name.as_str()], vec!["pool-destroy", pool.as_str()]] {
        holdfast_tests::kvm::virsh(&args);
    }
    assert!(restored_ok, "restored disks differ from the point");

    // In place: the full point back onto the (stopped) original VM.
    let full_id = full["point"]["point_id"].as_str().unwrap();
    holdfast_tests::kvm::virsh(&["destroy", &vm.name]);
    ok(kvm().args(["restore", "--point", full_id, "--in-place", "--store"]).arg(&store));
    let raw = vm.dir.join("vdb-inplace.raw");
    let st = Command::new("qemu-img")
        .args(["convert", "-f", "qcow2", "-O", "raw"])
        .arg(vm.dir.join("disk1.qcow2"))
        .arg(&raw)
        .status()
        .unwrap();
    assert!(st.success());
    assert!(std::fs::read(&raw).unwrap().iter().all(|&b| b == 0), "vdb should be back to its state at the full: empty");

    let bad = kvm().args(["backup", "--vm", "no-such-vm", "--store"]).arg(&store).output().unwrap();
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success() && err.contains("no-such-vm"), "{err}");
}
