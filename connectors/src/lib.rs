//! Platform connectors and the transports that carry disk bytes from a hypervisor to the
//! pipeline: one `Connector` trait, the KVM connector (libvirt), the NBD transport (our own
//! client) and the platform-neutral backup flow. Nothing outside this crate names a platform.

pub mod backup;
pub mod connector;
pub mod control;
pub mod kvm;
pub mod nbd;
pub mod nbd_source;

pub use backup::{backup_vm, backup_vms, BackupError, BackupOptions, BackupOutcome, SnapshotMode};
pub use connector::restore_sizes;
pub use connector::{
    BackupBase, BackupPlan, BackupSession, ChangeTracking, Connector, ConnectorError, Credentials, HostInfo, Inventory,
    NetworkInfo, NewVmSpec, Quiesce, RestoreDisk, SessionDisk, StorageInfo, VmSummary,
};
pub use control::{JobControl, Phase};
pub use kvm::{KvmConnector, TlsFiles};
pub use nbd::{BlockExtent, NbdAddress, NbdClient, NbdError, NbdTls};
pub use nbd_source::{dirty_ranges, NbdSource};
