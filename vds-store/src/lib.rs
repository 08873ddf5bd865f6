//! The self-describing VDS store: restore points (manifests naming each disk's map of extent
//! records of chunks), retention, garbage collection, verification and re-import from the files
//! alone. The on-disk format is specified in FORMAT.md beside this crate; change both together.
//! It knows nothing of hypervisors: connectors hand it a VM description and disk sources.

pub mod config;
pub mod disk_map;
pub mod error;
pub mod export;
pub mod fslock;
pub mod gc;
pub mod ingest;
pub mod manifest;
pub mod protect;
pub mod reader;
pub mod retention;
pub mod store;
pub mod verify;
pub mod vm;

pub use disk_map::DiskMap;
pub use error::{Result, StoreError};
pub use export::{zero_range, ExportOptions, ExportReport, ExportTarget};
pub use gc::GcReport;
pub use ingest::{
    DiskSource, FileSource, IngestDisk, IngestProgress, IngestRequest, IngestStage, MemorySource, PointHold,
};
pub use manifest::{BackupType, Labels, PointDisk, PointStats, RestorePoint};
pub use protect::Protection;
pub use reader::{DiskReader, ExportStats};
pub use retention::{PruneDecision, RetentionPolicy};
pub use store::{check_lock_until, lock_until_days, Clock, InitOptions, PointEntry, Store, MAX_LOCK_DAYS};
pub use verify::VerifyReport;
pub use vm::{NativeConfig, VmDescription, VmDisk, VmNic};

/// A byte count as people read it: "512 B", "1.5 GiB".
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
