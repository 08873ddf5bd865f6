//! The VMware connector against the conformance suite every connector passes
//! (connectors/src/conformance.rs), on the vSphere simulator test bed (tests/vcsim): a VM with two
//! disks whose flat files the bed writes and whose CBT reports exactly those writes, backed up
//! from snapshots over the HTTPS datastore transport and restored as a new VM into a datastore.

use connectors::conformance::run;
use holdfast_tests::vmware::{Vcsim, VcsimBed};

#[test]
fn the_vmware_connector_passes_the_conformance_suite() {
    let mut bed = VcsimBed::new(Vcsim::start(1, &[16, 8]), None);
    run(&mut bed);
}
