//! The VMware connector against the conformance suite every connector passes
//! (connectors/src/conformance.rs), on the vSphere simulator test bed (tests/vcsim): a VM with two
//! disks whose flat files the bed writes and whose CBT reports exactly those writes, backed up
//! from snapshots over the HTTPS datastore transport and restored as a new VM into a datastore.

use connectors::conformance::{run, Bed};
use connectors::vmware::soap::TlsTrust;
use connectors::vmware::VmwareConnector;
use connectors::{Connector, Credentials};
use holdfast_tests::vmware::{Vcsim, PASSWORD, USER};
use std::path::Path;

const VM: &str = "DC0_H0_VM0";

pub struct VcsimBed {
    pub sim: Vcsim,
    pattern: u8,
}

/// The disk's unit on its controller: "scsi0-1" → 1 (the bed numbers device keys 2000 + unit).
fn unit(key: &str) -> usize {
    key.rsplit('-').next().and_then(|u| u.parse().ok()).unwrap_or_else(|| panic!("{key} is not bus:unit"))
}

pub fn connect(sim: &Vcsim) -> VmwareConnector {
    let trust = TlsTrust { ca_pem: Some(std::fs::read(sim.ca_file()).unwrap()), thumbprint: None };
    let creds = Credentials { username: USER.into(), password: PASSWORD.into() };
    VmwareConnector::open(&sim.host(), &trust, &creds).expect("the simulator answers")
}

impl Bed for VcsimBed {
    fn connect(&self) -> Box<dyn Connector> {
        Box::new(connect(&self.sim))
    }
    fn vm(&self) -> String {
        VM.into()
    }
    fn write(&mut self, key: &str, offset: u64, len: u64) {
        self.pattern = self.pattern.wrapping_add(0x13).max(1);
        let data: Vec<u8> = (0..len).map(|i| self.pattern ^ (i % 251) as u8).collect();
        self.sim.write(VM, 2000 + unit(key) as i64, offset, &data);
    }
    fn disk(&self, vm: &str, key: &str) -> Vec<u8> {
        std::fs::read(self.sim.flat(vm, unit(key))).expect("the flat file")
    }
    fn storage(&self) -> String {
        "LocalDS_0".into()
    }
    fn leftovers(&self, vm: &str) -> Vec<String> {
        self.sim.snapshots(vm).into_iter().map(|s| format!("snapshot {s}")).collect()
    }
    fn remove(&self, _vm: &str) {
        // The simulator and its datastore go when the bed is dropped.
    }
    fn dir(&self) -> &Path {
        self.sim.dir.path()
    }
}

#[test]
fn the_vmware_connector_passes_the_conformance_suite() {
    let mut bed = VcsimBed { sim: Vcsim::start(1, &[16, 8]), pattern: 0 };
    run(&mut bed);
}
