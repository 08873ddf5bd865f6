//! The self-describing VDS store: restore points (manifests naming each disk's map of extent
//! records of chunks), retention, garbage collection, verification and re-import from the files
//! alone. The on-disk format is specified in FORMAT.md beside this crate; change both together.
//! It knows nothing of hypervisors: connectors hand it a VM description and disk sources.

pub mod config;
pub mod disk_map;
pub mod error;
pub mod fslock;
pub mod gc;
pub mod ingest;
pub mod manifest;
pub mod reader;
pub mod retention;
pub mod store;
pub mod verify;
pub mod vm;

pub use disk_map::DiskMap;
pub use error::{Result, StoreError};
pub use gc::GcReport;
pub use ingest::{
    DiskSource, FileSource, IngestDisk, IngestProgress, IngestRequest, IngestStage, MemorySource, PointHold,
};
pub use manifest::{BackupType, Labels, PointDisk, PointStats, RestorePoint};
pub use reader::{DiskReader, ExportStats};
pub use retention::{PruneDecision, RetentionPolicy};
pub use store::{Clock, InitOptions, PointEntry, Store};
pub use verify::VerifyReport;
pub use vm::{NativeConfig, VmDescription, VmDisk, VmNic};
