//! Platform connectors and the transports that carry disk bytes from a hypervisor to the
//! pipeline: one `Connector` trait, the registry of platform kinds this build has (each behind
//! its cargo feature: `kvm` for libvirt, `vmware` for vSphere, `sim` for the simulated platform of the tests), the NBD
//! transport (our own client) and the platform-neutral backup flow. Nothing outside this crate
//! names a platform: the service, CLIs and API reach a platform through [`registry`].

pub mod backup;
pub mod conformance;
pub mod connector;
pub mod control;
pub mod convert;
#[cfg(feature = "kvm")]
pub mod kvm;
pub mod nbd;
pub mod nbd_source;
pub mod registry;
#[cfg(feature = "sim")]
pub mod sim;
#[cfg(feature = "vmware")]
pub mod vmware;

pub use backup::{backup_vm, backup_vm_when, backup_vms, BackupError, BackupOptions, BackupOutcome, SnapshotMode};
pub use connector::{restore_disks, restore_sizes};
pub use connector::{
    BackupBase, BackupPlan, BackupSession, BaseDisk, ChangeTracking, CheckError, Connector, ConnectorError,
    Credentials, ExportedDisk, HostInfo, Inventory, NetworkInfo, NewVmSpec, Quiesce, RestoreCheck, RestoreDisk,
    SessionDisk, StorageInfo, VmSummary,
};
pub use control::{JobControl, Phase};
#[cfg(feature = "kvm")]
pub use kvm::{KvmConnector, TlsFiles};
pub use nbd::{BlockExtent, NbdAddress, NbdClient, NbdError, NbdTls};
pub use nbd_source::{dirty_ranges, NbdSource};
pub use registry::{Capabilities, FieldError, PlatformKind, Settings};
