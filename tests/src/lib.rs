//! Fixtures shared by the end-to-end tests: the `holdfast` binary under test, a way to run it,
//! and reproducible disk images.

pub mod browser;
pub mod kvm;
pub mod service;
pub mod vmware;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The binary under test: $HOLDFAST_BIN, or `holdfast` in the same target directory as this
/// test (the test script builds it first with `cargo build -p appliance --features sim`).
pub fn holdfast_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("HOLDFAST_BIN") {
        return PathBuf::from(p);
    }
    // A test runs from target/<profile>/deps, a benchmark binary from target/<profile>.
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().expect("the executable's directory");
    let bin =
        if dir.ends_with("deps") { dir.parent().expect("target dir").join("holdfast") } else { dir.join("holdfast") };
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p appliance --features sim` first (the test script does)",
        bin.display()
    );
    bin
}

pub fn holdfast(store: &Path) -> Command {
    let mut c = Command::new(holdfast_bin());
    c.arg("store").arg("--store").arg(store);
    c
}

/// Runs and insists on success, returning stdout.
pub fn ok(cmd: &mut Command) -> String {
    let out = cmd.output().expect("holdfast runs");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

pub fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("holdfast runs")
}

pub fn json(cmd: &mut Command) -> serde_json::Value {
    serde_json::from_str(&ok(cmd.arg("--json"))).expect("JSON output")
}

/// Point ids in the store, oldest first.
pub fn point_ids(store: &Path) -> Vec<String> {
    let v = json(holdfast(store).arg("ls"));
    v["points"].as_array().expect("points").iter().map(|p| p["point_id"].as_str().expect("id").to_string()).collect()
}

/// Deterministic pseudo-random bytes (xorshift), so runs are reproducible.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len);
    for _ in 0..len.div_ceil(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Writes `data` at `offset` of the image file.
pub fn write_at(image: &Path, offset: u64, data: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(image).expect("open image");
    f.write_all_at(data, offset).expect("write image");
}

pub fn export(store: &Path, point: &str, disk: &str, out: &Path) -> Vec<u8> {
    ok(holdfast(store).args(["export", point, "--disk", disk, "--out"]).arg(out));
    std::fs::read(out).expect("read export")
}

/// Clears the immutable attribute under a directory when dropped (`chattr -R -i`), so a test's
/// temporary directory holding locked points can be removed after it, even when the test failed.
pub struct Unprotect(pub PathBuf);

impl Drop for Unprotect {
    fn drop(&mut self) {
        let _ = Command::new("chattr").args(["-R", "-f", "-i"]).arg(&self.0).status();
    }
}

/// A loop device over a file, detached when dropped.
pub struct LoopDevice(pub PathBuf);

impl LoopDevice {
    pub fn attach(file: &Path) -> LoopDevice {
        let out = Command::new("losetup").args(["-f", "--show"]).arg(file).output().expect("losetup runs");
        assert!(out.status.success(), "losetup (needs root): {}", String::from_utf8_lossy(&out.stderr));
        LoopDevice(PathBuf::from(String::from_utf8(out.stdout).expect("device name").trim()))
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
    }
}
