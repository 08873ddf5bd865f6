//! The vSphere test bed: govmomi's simulator (vcsim) with disks that are real flat files, CBT
//! that reports what was written, and faults on demand (tests/vcsim/main.go, built by
//! tests/testbed/build-vcsim.sh from Debian's Go packages). One bed per test, on its own port,
//! over HTTPS with its own CA; killed when dropped.

use connectors::conformance::Bed;
use connectors::vmware::soap::TlsTrust;
use connectors::vmware::{VddkSettings, VmwareConnector};
use connectors::{Connector, Credentials};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

pub const USER: &str = "holdfast@vsphere.local";
pub const PASSWORD: &str = "bed-Pass&<word>";

/// Builds the bed once per test process (the script rebuilds only when main.go changed).
fn bed_binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("testbed/build-vcsim.sh");
        let out = Command::new("bash")
            .arg(&script)
            .arg("/var/tmp/holdfast-testbed/vcsim")
            .stdin(Stdio::null())
            .output()
            .expect("bash runs");
        assert!(
            out.status.success(),
            "building the vSphere simulator failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        PathBuf::from(text.lines().last().expect("the script prints the binary's path").trim())
    })
    .clone()
}

/// A running simulator.
pub struct Vcsim {
    child: Child,
    pub dir: tempfile::TempDir,
    /// As printed at start: url, ca_pem, datacenter, datastore, datastore_dir, vms.
    pub started: Value,
}

impl Vcsim {
    /// A vCenter with `vms` VMs (DC0_H0_VM0, …), each with disks of these sizes in MiB.
    pub fn start(vms: usize, disks_mib: &[u64]) -> Vcsim {
        Vcsim::start_hosts(1, vms, disks_mib)
    }

    /// A bed of `hosts` standalone hosts (DC0_H0, DC0_H1, …), each with `vms` VMs and mounting
    /// the one datastore.
    pub fn start_hosts(hosts: usize, vms: usize, disks_mib: &[u64]) -> Vcsim {
        let sizes: Vec<String> = disks_mib.iter().map(u64::to_string).collect();
        let mut child = Command::new(bed_binary())
            .args(["-listen", "127.0.0.1:0", "-user", USER, "-password", PASSWORD, "-tls"])
            .args(["-hosts", &hosts.to_string(), "-vms", &vms.to_string(), "-disks", &sizes.join(",")])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("the simulator starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("the simulator's first line");
        let started: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("simulator said {line:?}: {e}"));
        let dir = tempfile::tempdir().expect("a scratch directory");
        std::fs::write(dir.path().join("ca.pem"), started["ca_pem"].as_str().expect("a CA")).expect("CA file");
        Vcsim { child, dir, started }
    }

    /// host:port, as a platform record's `host`.
    pub fn host(&self) -> String {
        let url = self.started["url"].as_str().expect("url");
        url.trim_start_matches("https://").trim_end_matches("/sdk").to_string()
    }

    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// A platform record's settings for this bed, trusting its CA.
    pub fn settings(&self) -> Value {
        serde_json::json!({ "host": self.host(), "ca_file": self.ca_file() })
    }

    fn curl(&self, method: &str, path: &str, body: Option<&Path>) -> Vec<u8> {
        let url = format!("https://{}{path}", self.host());
        let mut c = Command::new("curl");
        c.args(["-sS", "--fail-with-body", "--cacert"]).arg(self.ca_file()).args(["-X", method, &url]);
        if let Some(b) = body {
            c.arg("--data-binary").arg(format!("@{}", b.display()));
        } else if method == "POST" {
            c.args(["-d", ""]);
        }
        let out = c.output().expect("curl runs");
        assert!(
            out.status.success(),
            "{method} {path}: {}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        out.stdout
    }

    /// The bed's state now: every VM with its disks (key, flat file, capacity, change id), CBT
    /// flag and snapshot names.
    pub fn info(&self) -> Value {
        serde_json::from_slice(&self.curl("GET", "/testbed/info", None)).expect("info is JSON")
    }

    pub fn vm(&self, name: &str) -> Option<Value> {
        self.info()["vms"].as_array().expect("vms").iter().find(|v| v["name"] == name).cloned()
    }

    /// The flat file of disk `index` (in device-key order) of `vm`.
    pub fn flat(&self, vm: &str, index: usize) -> PathBuf {
        let v = self.vm(vm).unwrap_or_else(|| panic!("no VM {vm} in the simulator"));
        let mut disks: Vec<Value> = v["disks"].as_array().expect("disks").clone();
        disks.sort_by_key(|d| d["key"].as_i64());
        PathBuf::from(disks[index]["flat"].as_str().expect("flat path"))
    }

    /// A guest write: `data` at `offset` of the disk with device key `key`, recorded for CBT.
    pub fn write(&self, vm: &str, key: i64, offset: u64, data: &[u8]) {
        let f = self.dir.path().join("write.bin");
        std::fs::write(&f, data).expect("payload");
        self.curl("POST", &format!("/testbed/write?vm={vm}&disk={key}&offset={offset}"), Some(&f));
    }

    /// Forgets every change id of `vm`'s disks, as a CBT reset does.
    pub fn cbt_reset(&self, vm: &str) {
        self.curl("POST", &format!("/testbed/cbt-reset?vm={vm}"), None);
    }

    pub fn refuse_snapshots(&self, vm: &str, on: bool) {
        self.curl("POST", &format!("/testbed/refuse-snapshots?vm={vm}&on={on}"), None);
    }

    /// VMware Tools not running in `vm` (on): a quiesced snapshot of it faults with
    /// ToolsUnavailable, as vSphere's does.
    pub fn no_tools(&self, vm: &str, on: bool) {
        self.curl("POST", &format!("/testbed/no-tools?vm={vm}&on={on}"), None);
    }

    pub fn snapshots(&self, vm: &str) -> Vec<String> {
        let v = self.vm(vm).unwrap_or_else(|| panic!("no VM {vm}"));
        v["snapshots"].as_array().expect("snapshots").iter().map(|s| s.as_str().unwrap_or_default().into()).collect()
    }
}

impl Drop for Vcsim {
    fn drop(&mut self) {
        // SIGTERM lets the simulator remove its datastore directories.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// Installs the VDDK stand-in (tests/vddk-shim, built by `cargo build -p vddk-shim`, which the
/// test script does) as `<dir>/lib64/libvixDiskLib.so.8`, as VMware's tarball lays VDDK out;
/// returns `dir`, what a platform's `vddk_dir` names.
pub fn install_vddk_shim(dir: &Path) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let deps = exe.parent().expect("the executable's directory");
    let target = if deps.ends_with("deps") { deps.parent().expect("target dir") } else { deps };
    let shim = target.join("libvddk_shim.so");
    assert!(
        shim.exists(),
        "{} is missing: run `cargo build -p vddk-shim` first (the test script does)",
        shim.display()
    );
    std::fs::create_dir_all(dir.join("lib64")).expect("lib64");
    std::fs::copy(&shim, dir.join("lib64/libvixDiskLib.so.8")).expect("the shim copied");
    dir.to_path_buf()
}

impl Vcsim {
    /// The shim's `VDDK_SHIM_DATASTORES` for this bed: its datastore's name and directory.
    pub fn shim_datastores(&self) -> String {
        format!(
            "{}={}",
            self.started["datastore"].as_str().expect("datastore"),
            self.started["datastore_dir"].as_str().expect("datastore_dir")
        )
    }
}

impl Vcsim {
    /// A connector to this bed, trusting its CA, with the disks' data through VDDK (its
    /// directory and modes) when given, else over HTTPS.
    pub fn connector(&self, vddk: Option<(&Path, &str)>) -> VmwareConnector {
        let trust = TlsTrust { ca_pem: Some(std::fs::read(self.ca_file()).expect("the CA")), thumbprint: None };
        let creds = Credentials { username: USER.into(), password: PASSWORD.into() };
        let mut c = VmwareConnector::open(&self.host(), &trust, &creds).expect("the simulator answers");
        c.vddk = vddk.map(|(dir, modes)| VddkSettings { dir: dir.to_path_buf(), modes: modes.into() });
        c
    }
}

/// The VM the conformance suite runs on.
pub const BED_VM: &str = "DC0_H0_VM0";

/// The conformance suite's bed (connectors/src/conformance.rs) on the simulator: VM
/// [`BED_VM`], the guest's writes into its flat files through the bed (so CBT reports them),
/// read over HTTPS, or through VDDK from the stand-in installed in `vddk`.
pub struct VcsimBed {
    pub sim: Vcsim,
    pub vddk: Option<PathBuf>,
    pattern: u8,
}

impl VcsimBed {
    pub fn new(sim: Vcsim, vddk: Option<PathBuf>) -> VcsimBed {
        VcsimBed { sim, vddk, pattern: 0 }
    }
}

/// The disk's unit on its controller: "scsi0-1" → 1 (the bed numbers device keys 2000 + unit).
pub fn unit(key: &str) -> usize {
    key.rsplit('-').next().and_then(|u| u.parse().ok()).unwrap_or_else(|| panic!("{key} is not bus-unit"))
}

impl Bed for VcsimBed {
    fn connect(&self) -> Box<dyn Connector> {
        Box::new(self.sim.connector(self.vddk.as_deref().map(|d| (d, "nbdssl:nbd"))))
    }
    fn vm(&self) -> String {
        BED_VM.into()
    }
    fn write(&mut self, key: &str, offset: u64, len: u64) {
        self.pattern = self.pattern.wrapping_add(0x13).max(1);
        let data: Vec<u8> = (0..len).map(|i| self.pattern ^ (i % 251) as u8).collect();
        self.sim.write(BED_VM, 2000 + unit(key) as i64, offset, &data);
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
