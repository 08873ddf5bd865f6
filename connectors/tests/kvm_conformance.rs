//! The KVM connector against the conformance suite every connector passes
//! (connectors/src/conformance.rs), on the real test bed: a running two-disk VM written through
//! QEMU's block layer, backed up over libvirt's backup API and NBD, restored into a pool.

use connectors::conformance::{run, Bed};
use connectors::{Connector, KvmConnector};
use holdfast_tests::kvm::{virsh, TestVm, URI};
use std::path::{Path, PathBuf};

struct KvmBed {
    vm: TestVm,
    pool: String,
    pool_dir: PathBuf,
    pattern: u8,
}

impl KvmBed {
    fn index(key: &str) -> usize {
        ["vda", "vdb"].iter().position(|k| *k == key).expect("vda or vdb")
    }
}

impl Bed for KvmBed {
    fn connect(&self) -> Box<dyn Connector> {
        Box::new(KvmConnector::open(URI, &self.vm.dir.join("work"), None).expect("libvirt answers"))
    }
    fn vm(&self) -> String {
        self.vm.name.clone()
    }
    fn write(&mut self, key: &str, offset: u64, len: u64) {
        self.pattern = self.pattern.wrapping_add(0x11).max(1);
        self.vm.write(Self::index(key), self.pattern, offset as usize, len as usize);
    }
    fn disk(&self, vm: &str, key: &str) -> Vec<u8> {
        if vm == self.vm.name {
            return self.vm.model[Self::index(key)].clone();
        }
        std::fs::read(self.pool_dir.join(format!("{vm}-{key}.raw"))).expect("the restored volume")
    }
    fn storage(&self) -> String {
        self.pool.clone()
    }
    fn leftovers(&self, _vm: &str) -> Vec<String> {
        let mut left = Vec::new();
        if self.vm.has_job() {
            left.push("a libvirt backup job".to_string());
        }
        if let Ok(active) = std::fs::read_dir(self.vm.dir.join("work/active")) {
            left.extend(active.flatten().map(|e| format!("work/active/{}", e.file_name().to_string_lossy())));
        }
        left
    }
    fn remove(&self, vm: &str) {
        let _ = std::process::Command::new("virsh").args(["-c", URI, "undefine", vm]).output();
        for key in ["vda", "vdb"] {
            let _ = std::fs::remove_file(self.pool_dir.join(format!("{vm}-{key}.raw")));
        }
        virsh(&["pool-refresh", &self.pool]);
    }
    fn dir(&self) -> &Path {
        &self.vm.dir
    }
}

impl Drop for KvmBed {
    fn drop(&mut self) {
        let _ = std::process::Command::new("virsh").args(["-c", URI, "pool-destroy", &self.pool]).output();
    }
}

#[test]
fn the_kvm_connector_passes_the_conformance_suite() {
    let vm = TestVm::start("conformance");
    let pool = format!("{}-pool", vm.name);
    let pool_dir = vm.dir.join("pool");
    std::fs::create_dir_all(&pool_dir).unwrap();
    virsh(&["pool-create-as", &pool, "dir", "--target", pool_dir.to_str().unwrap()]);
    let mut bed = KvmBed { vm, pool, pool_dir, pattern: 0 };
    run(&mut bed);
}
