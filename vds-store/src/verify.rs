//! Verify: re-reads blobs and proves them against their ids, then walks every restore point and
//! names each one that a damaged or missing blob affects. Full or sampled (a random share of the
//! blobs is re-read; the walk for missing blobs is always complete). Opened without the key of
//! an encrypted store, it checks each blob's payload checksum only.

use crate::disk_map::DiskMap;
use crate::error::Result;
use crate::store::Store;
use dedupe::{BlobHeader, BlobId, BlobKind, DedupeError, ExtentRecord};

use serde::Serialize;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Mutex};

#[derive(Clone, Debug, Default, Serialize)]
pub struct VerifyReport {
    /// Share of blobs re-read, 1.0 for a full verify.
    pub sample: f64,
    pub blobs_checked: u64,
    pub bytes_checked: u64,
    /// Blobs whose bytes are wrong: (id, cause).
    pub damaged: Vec<(String, String)>,
    pub points_checked: u64,
    pub affected: Vec<AffectedPoint>,
    /// True when the store is encrypted and no key was given: only payload checksums were checked.
    pub keyless: bool,
    /// Damaged blobs moved aside, so the next backups store them again.
    pub quarantined: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct AffectedPoint {
    pub vm: String,
    pub point_id: String,
    pub problems: Vec<String>,
}

impl VerifyReport {
    pub fn is_clean(&self) -> bool {
        self.damaged.is_empty() && self.affected.is_empty()
    }
}

const MAX_PROBLEMS_LISTED: usize = 20;

impl Store {
    pub fn verify(
        &self,
        sample: f64,
        threads: usize,
        quarantine: bool,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<VerifyReport> {
        let sample = sample.clamp(0.0, 1.0);
        let keyless = !self.chunks().codec().has_key();
        let threshold = (sample * u64::MAX as f64) as u64;
        let salt = u64::from_le_bytes(crate::fslock::random_hex(8).as_bytes()[..8].try_into().unwrap());
        let chunks = self.chunks();
        let checked = AtomicU64::new(0);
        let bytes = AtomicU64::new(0);
        let damaged: Mutex<HashMap<BlobId, String>> = Mutex::new(HashMap::new());

        // Phase 1: re-read blobs in parallel, streaming ids from the directory walk.
        let (tx, rx) = mpsc::sync_channel::<BlobId>(1024);
        let rx = Mutex::new(rx);
        let walk = std::thread::scope(|s| {
            for _ in 0..threads.max(1) {
                s.spawn(|| loop {
                    let Ok(id) = rx.lock().expect("queue lock").recv() else {
                        return;
                    };
                    let result = chunks.read_raw(&id).and_then(|raw| {
                        bytes.fetch_add(raw.len() as u64, Ordering::Relaxed);
                        let h = BlobHeader::check(&id, &raw)?;
                        if !keyless {
                            chunks.codec().decode(&id, h.kind, &raw)?;
                        }
                        Ok(())
                    });
                    match result {
                        Ok(()) | Err(DedupeError::Missing { .. }) => {}
                        Err(e) => {
                            damaged.lock().expect("damaged lock").insert(id, e.to_string());
                        }
                    }
                    progress(checked.fetch_add(1, Ordering::Relaxed) + 1);
                });
            }
            let r = chunks.for_each(|id, _, _| {
                let pick = u64::from_le_bytes(id.0[..8].try_into().unwrap()) ^ salt;
                if sample >= 1.0 || pick <= threshold {
                    tx.send(id).map_err(|_| DedupeError::Invalid("verify workers stopped".into()))?;
                }
                Ok(())
            });
            drop(tx);
            r
        });
        walk?;
        let damaged = damaged.into_inner().expect("damaged lock");

        // Phase 2: walk every point; each unique extent record is examined once.
        let mut report = VerifyReport {
            sample,
            blobs_checked: checked.into_inner(),
            bytes_checked: bytes.into_inner(),
            keyless,
            ..Default::default()
        };
        let (points, broken) = self.scan(None)?;
        for (vm, point_id, e) in broken {
            report.affected.push(AffectedPoint { vm, point_id, problems: vec![e.to_string()] });
        }
        let mut record_problems: HashMap<BlobId, Vec<String>> = HashMap::new();
        let check = |id: &BlobId, what: &str| -> Option<String> {
            if let Some(cause) = damaged.get(id) {
                Some(format!("{what} {id} is damaged: {cause}"))
            } else if !chunks.exists(id) {
                Some(format!("{what} {id} is missing"))
            } else {
                None
            }
        };
        for p in points {
            report.points_checked += 1;
            let mut problems = Vec::new();
            for disk in &p.manifest.disks {
                let Some(map_id) = BlobId::from_hex(&disk.map) else {
                    problems.push(format!("disk {}: map id is not hex", disk.key));
                    continue;
                };
                if let Some(pr) = check(&map_id, "disk map") {
                    problems.push(format!("disk {}: {pr}", disk.key));
                    continue;
                }
                if keyless {
                    continue;
                }
                let map = match chunks.read(&map_id, BlobKind::DiskMap).and_then(|b| DiskMap::decode(&map_id, &b)) {
                    Ok(m) => m,
                    Err(e) => {
                        problems.push(format!("disk {}: {e}", disk.key));
                        continue;
                    }
                };
                for rid in map.extents.iter().filter(|r| !r.is_hole()) {
                    let found = record_problems.entry(*rid).or_insert_with(|| record_check(self, rid, &check));
                    for pr in found.iter() {
                        problems.push(format!("disk {}: {pr}", disk.key));
                    }
                }
            }
            if !problems.is_empty() {
                problems.sort();
                problems.dedup();
                let total = problems.len();
                problems.truncate(MAX_PROBLEMS_LISTED);
                if total > MAX_PROBLEMS_LISTED {
                    problems.push(format!("… and {} more", total - MAX_PROBLEMS_LISTED));
                }
                report.affected.push(AffectedPoint { vm: p.vm, point_id: p.point_id, problems });
            }
        }
        let mut listed: Vec<(String, String)> = damaged.iter().map(|(k, v)| (k.to_hex(), v.clone())).collect();
        listed.sort();
        report.damaged = listed;
        if quarantine {
            for id in damaged.keys() {
                chunks.quarantine(id)?;
                report.quarantined += 1;
            }
        }
        Ok(report)
    }
}

fn record_check(store: &Store, rid: &BlobId, check: &dyn Fn(&BlobId, &str) -> Option<String>) -> Vec<String> {
    if let Some(pr) = check(rid, "extent record") {
        return vec![pr];
    }
    let record = match store.chunks().read(rid, BlobKind::ExtentRecord).and_then(|b| ExtentRecord::decode(rid, &b)) {
        Ok(r) => r,
        Err(e) => return vec![e.to_string()],
    };
    record.chunks.iter().filter(|c| !c.id.is_hole()).filter_map(|c| check(&c.id, "chunk")).collect()
}
