//! Cross-platform restore through the service's API, real guest: a Debian guest's bootable disk
//! placed as a VM's disk in the vSphere simulator, backed up through the VMware connector,
//! restored onto the KVM test bed (converted: virtio disk and NIC, the job's log saying each
//! decision) and booted by libvirt under TCG to multi-user (a marker on its serial console), its
//! disk equal to the point; and the reverse: a KVM VM's point restored into the simulator as a
//! new vSphere VM whose flat files equal the point and whose devices are what the conversion
//! chose, overrides included, and a choice vSphere cannot take refused with nothing made.

use connectors::vmware::soap::{Soap, TlsTrust};
use holdfast_tests::kvm::{virsh, TestNetwork, TestVm, MIB, URI};
use holdfast_tests::service::{Client, Server};
use holdfast_tests::vmware::{Vcsim, PASSWORD, USER};
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};

fn vsphere(c: &Client, sim: &Vcsim) -> i64 {
    let mut body = sim.settings();
    body["name"] = json!("vcenter");
    body["kind"] = json!("vmware");
    body["username"] = json!(USER);
    body["password"] = json!(PASSWORD);
    c.post("/api/platforms", body, 201)["id"].as_i64().unwrap()
}

fn soap(sim: &Vcsim) -> Soap {
    let trust = TlsTrust { ca_pem: Some(std::fs::read(sim.ca_file()).unwrap()), thumbprint: None };
    Soap::connect(&sim.host(), &trust, &connectors::Credentials { username: USER.into(), password: PASSWORD.into() })
        .unwrap()
}

/// Writes `image` into the simulated VM's disk 2000 through the bed (so CBT sees it), skipping
/// what is all zeros.
fn place_image(sim: &Vcsim, vm: &str, image: &Path) {
    use std::io::Read;
    let mut f = std::fs::File::open(image).unwrap();
    let (mut at, mut run_start, mut run): (u64, u64, Vec<u8>) = (0, 0, Vec::new());
    let mut block = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut block).unwrap();
        let zero = block[..n].iter().all(|&b| b == 0);
        if (zero || n == 0 || run.len() >= 32 << 20) && !run.is_empty() {
            sim.write(vm, 2000, run_start, &run);
            run.clear();
        }
        if n == 0 {
            break;
        }
        if !zero {
            if run.is_empty() {
                run_start = at;
            }
            run.extend_from_slice(&block[..n]);
        }
        at += n as u64;
    }
}

fn point_disk(data: &Path, point: &str, key: &str) -> Vec<u8> {
    let store = vds_store::Store::open(&data.join("store"), None).unwrap();
    let r = store.open_disk(point, key).unwrap();
    let mut out = vec![0u8; r.size() as usize];
    r.read_at(&mut out, 0).unwrap();
    out
}

/// `xml` without the first element that starts with `open` and ends with `close`.
fn without_element(xml: &str, open: &str, close: &str) -> String {
    let start = xml.find(open).unwrap_or_else(|| panic!("no {open} in {xml}"));
    let end = start + xml[start..].find(close).unwrap() + close.len();
    format!("{}{}", &xml[..start], &xml[end..])
}

fn log_of(c: &Client, job: &Value) -> String {
    c.get(&format!("/api/jobs/{}/log", job["id"])).to_string()
}

#[test]
fn a_vsphere_guest_boots_on_kvm_and_a_kvm_vm_lands_on_vsphere() {
    let image = std::process::Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("testbed/build-bootdisk.sh"))
        .output()
        .unwrap();
    assert!(image.status.success(), "{}", String::from_utf8_lossy(&image.stderr));
    let image = String::from_utf8(image.stdout).unwrap().lines().last().unwrap_or_default().to_string();
    let mib = std::fs::metadata(&image).unwrap().len() / MIB as u64;

    let sim = Vcsim::start(1, &[mib]);
    let src = "DC0_H0_VM0";
    place_image(&sim, src, Path::new(&image));
    // The guest OS as vSphere records it, which picks the converted devices.
    let s = soap(&sim);
    let vm_ref = s.retrieve_all("VirtualMachine", &["name"]).unwrap().remove(0).obj;
    s.run_task(
        &format!(
            "<ReconfigVM_Task xmlns=\"urn:vim25\">{}<spec><guestId>debian10_64Guest</guestId></spec></ReconfigVM_Task>",
            vm_ref.arg("_this")
        ),
        Duration::from_secs(60),
    )
    .unwrap();

    let kvm_vm = TestVm::start("xplat");
    let dir = kvm_vm.dir.clone();
    let data = dir.join("data");
    let server = Server::start(&data);
    let c = server.admin("correct horse battery");
    let vc = vsphere(&c, &sim);
    let kvm =
        c.post("/api/platforms", json!({ "name": "lab", "kind": "kvm", "uri": URI }), 201)["id"].as_i64().unwrap();
    let pool = format!("{}-pool", kvm_vm.name);
    let pool_dir = dir.join("pool");
    std::fs::create_dir_all(&pool_dir).unwrap();
    virsh(&["pool-create-as", &pool, "dir", "--target", pool_dir.to_str().unwrap()]);
    let net = TestNetwork::create(&kvm_vm.name);

    // vSphere → KVM.
    let job = c.post("/api/jobs", json!({ "platform": vc, "vm": src, "type": "full" }), 202);
    let backup = c.wait_job(job["id"].as_i64().unwrap());
    assert_eq!(backup["state"], "completed", "{backup}");
    let point = backup["point_id"].as_str().unwrap().to_string();
    let to_kvm = |name: &str| {
        json!({ "point": point, "platform": kvm, "mode": "new_vm", "name": name, "storage": pool,
                "network": net.0, "disk_format": "raw", "memory_mib": 512 })
    };
    // The network is the target's to choose; a bus KVM does not have is refused; nothing queued.
    let jobs = c.get("/api/jobs").as_array().unwrap().len();
    let mut body = to_kvm("x");
    body.as_object_mut().unwrap().remove("network");
    let v = c.post("/api/restores", body, 400);
    assert!(v["error"].as_str().unwrap().starts_with("network: choose the network"), "{v}");
    let mut body = to_kvm("x");
    body["disk_bus"] = json!("pvscsi");
    let v = c.post("/api/restores", body, 400);
    assert!(v["error"].as_str().unwrap().starts_with("disk_bus: \"pvscsi\" is not offered by kvm"), "{v}");
    assert_eq!(c.get("/api/jobs").as_array().unwrap().len(), jobs);

    let name = format!("{}-from-vsphere", kvm_vm.name);
    let job = c.post("/api/restores", to_kvm(&name), 202);
    let done = c.wait_job(job["id"].as_i64().unwrap());
    assert_eq!(done["state"], "completed", "{done}");
    // The job says where the point came from and where it went.
    assert_eq!(
        (&done["source_kind"], &done["source_platform"], &done["platform"]),
        (&json!("vmware"), &json!("vcenter"), &json!(kvm)),
        "{done}"
    );
    let log = log_of(&c, &done);
    assert!(log.contains("converting a vmware VM for kvm") && log.contains("becomes vda on virtio"), "{log}");
    assert!(log.contains("NIC 1 (e1000 on vmware) becomes virtio"), "{log}");
    let restored = std::fs::read(pool_dir.join(format!("{name}-vda.raw"))).unwrap();
    assert!(restored == point_disk(&data, &point, "scsi0-0"), "the KVM disk differs from the point");
    drop(restored);
    // Booted by libvirt under TCG, with its serial console in a file: multi-user is reached.
    let xml = virsh(&["dumpxml", &name]);
    assert!(xml.contains("bus='virtio'") && xml.contains("<model type='virtio'/>"), "{xml}");
    let console = dir.join("xplat-console.log");
    // The restore gave it a serial console (a pty) and a VNC display; the test reads the serial
    // line from a file instead.
    assert!(xml.contains("<serial type='pty'>") && xml.contains("<graphics type='vnc'"), "{xml}");
    let xml = without_element(&without_element(&xml, "<serial ", "</serial>"), "<console ", "</console>");
    let xml = xml.replacen("<domain type='kvm'", "<domain type='qemu'", 1).replacen(
        "</devices>",
        &format!("<serial type='file'><source path='{}'/><target port='0'/></serial></devices>", console.display()),
        1,
    );
    std::fs::write(dir.join("xplat.xml"), &xml).unwrap();
    virsh(&["define", dir.join("xplat.xml").to_str().unwrap()]);
    virsh(&["start", &name]);
    let t = Instant::now();
    let booted = loop {
        let text = std::fs::read_to_string(&console).unwrap_or_default();
        if text.contains("HOLDFAST-GUEST-MULTI-USER") {
            break true;
        }
        if t.elapsed() > Duration::from_secs(300) {
            eprintln!("console:\n{}", text.lines().rev().take(20).collect::<Vec<_>>().join("\n"));
            break false;
        }
        std::thread::sleep(Duration::from_secs(2));
    };
    let _ = std::process::Command::new("virsh").args(["-c", URI, "destroy", &name]).output();
    let _ = std::process::Command::new("virsh").args(["-c", URI, "undefine", &name]).output();
    assert!(booted, "the converted guest did not reach multi-user on KVM");

    // KVM → vSphere: the test bed's two-disk VM, restored with the defaults for a guest whose
    // OS it does not record (SATA, e1000e), then with chosen devices.
    let mut kvm_vm = kvm_vm;
    kvm_vm.write(0, 0x61, 0, 2 * MIB);
    kvm_vm.write(1, 0x62, 3 * MIB, MIB);
    let job = c.post("/api/jobs", json!({ "platform": kvm, "vm": kvm_vm.name, "type": "full" }), 202);
    let backup = c.wait_job(job["id"].as_i64().unwrap());
    assert_eq!(backup["state"], "completed", "{backup}");
    let kpoint = backup["point_id"].as_str().unwrap().to_string();
    let to_vsphere = |name: &str| {
        json!({ "point": kpoint, "platform": vc, "mode": "new_vm", "name": name, "storage": "LocalDS_0",
                "network": "VM Network" })
    };
    let mut body = to_vsphere("bad-bus");
    body["disk_bus"] = json!("virtio");
    let v = c.post("/api/restores", body, 400);
    assert!(v["error"].as_str().unwrap().starts_with("disk_bus:"), "{v}");
    assert!(sim.vm("bad-bus").is_none(), "nothing made");

    for (name, choice, keys, nic) in [
        ("from-kvm", json!({}), ["sata0-0", "sata0-1"], "e1000e"),
        ("from-kvm-pv", json!({ "disk_bus": "pvscsi", "nic_model": "vmxnet3" }), ["scsi0-0", "scsi0-1"], "vmxnet3"),
    ] {
        let mut body = to_vsphere(name);
        for (k, v) in choice.as_object().unwrap() {
            body[k] = v.clone();
        }
        let job = c.post("/api/restores", body, 202);
        let done = c.wait_job(job["id"].as_i64().unwrap());
        assert_eq!(done["state"], "completed", "{done}");
        assert_eq!((&done["source_kind"], &done["source_platform"]), (&json!("kvm"), &json!("lab")), "{done}");
        assert!(log_of(&c, &done).contains("converting a kvm VM for vmware"), "{}", log_of(&c, &done));
        for (i, key) in ["vda", "vdb"].iter().enumerate() {
            let flat = std::fs::read(sim.flat(name, i)).unwrap();
            assert!(flat == point_disk(&data, &kpoint, key), "{name}: flat file {i} differs from the point's {key}");
        }
        let made = c.get(&format!("/api/platforms/{vc}/vms/{name}"));
        let got: Vec<&str> = made["disks"].as_array().unwrap().iter().map(|d| d["key"].as_str().unwrap()).collect();
        assert_eq!(got, keys, "{made}");
        assert_eq!(made["nics"][0]["model"], nic, "{made}");
        assert_eq!(made["nics"][0]["network"], "VM Network", "{made}");
        assert_eq!(made["firmware"], "bios", "{made}");
    }
    virsh(&["pool-destroy", &pool]);
}
