//! Fixtures shared by the store's integration tests: a small-extent store and an in-memory disk.

#![allow(dead_code)]

use dedupe::ChunkerParams;
use std::ops::Range;
use std::path::Path;
use vds_store::*;

pub const EXTENT: u32 = 64 * 1024;

pub fn small_store(dir: &Path, passphrase: Option<&[u8]>) -> Store {
    Store::init(
        dir,
        InitOptions {
            extent_size: EXTENT,
            chunker: ChunkerParams { min: 2048, avg: 8192, max: 32768 },
            zstd_level: 1,
            passphrase: passphrase.map(|p| p.to_vec()),
            kdf_memory_kib: 64,
        },
    )
    .unwrap()
}

pub fn vm(key: &str) -> VmDescription {
    VmDescription { key: key.into(), name: key.into(), platform: "raw".into(), ..Default::default() }
}

/// A disk to ingest: key, contents, changed ranges since the parent.
pub type TestDisk<'a> = (&'a str, Vec<u8>, Option<Vec<Range<u64>>>);

/// A request to back up in-memory disks, two threads, no labels.
pub fn request(vm_key: &str, kind: BackupType, parent: Option<&str>, disks: Vec<TestDisk>) -> IngestRequest {
    IngestRequest {
        vm: vm(vm_key),
        backup_type: kind,
        parent: parent.map(str::to_string),
        disks: disks
            .into_iter()
            .map(|(k, data, changed)| IngestDisk {
                key: k.into(),
                source: Box::new(MemorySource(data)),
                changed,
                change_id: None,
                full_reason: None,
            })
            .collect(),
        labels: Labels::default(),
        threads: 2,
        consistency: None,
    }
}

pub fn ingest(
    store: &Store,
    vm_key: &str,
    kind: BackupType,
    parent: Option<&str>,
    disks: Vec<TestDisk>,
) -> Result<RestorePoint> {
    store.ingest(request(vm_key, kind, parent, disks), &mut |_| {})
}

pub fn read_disk(store: &Store, point: &str, disk: &str) -> Vec<u8> {
    let r = store.open_disk(point, disk).unwrap();
    let mut buf = vec![0u8; r.size() as usize];
    r.read_at(&mut buf, 0).unwrap();
    buf
}

/// Deterministic noise that compresses a little, like real data.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if i % 7 == 0 {
                0x20
            } else {
                x as u8
            }
        })
        .collect()
}

/// Clears the immutable attribute under a directory when dropped, so a test's temporary
/// directory holding locked points can be removed after it (even when the test failed).
pub struct Unprotect(pub std::path::PathBuf);

impl Drop for Unprotect {
    fn drop(&mut self) {
        fn walk(p: &Path) {
            vds_store::fslock::set_immutable(p, false);
            if let Ok(entries) = std::fs::read_dir(p) {
                for e in entries.flatten() {
                    walk(&e.path());
                }
            }
        }
        walk(&self.0);
    }
}
