//! The one interface every platform fills: inventory, the neutral VM description, and backup
//! sessions that hand the pipeline disk sources with their changed ranges. The pipeline and the
//! store see only this; a capability a platform lacks is `ConnectorError::Unsupported`, never a
//! silent no-op.

use crate::control::JobControl;
use crate::registry::FieldError;
use std::ops::Range;
use vds_store::{BackupType, DiskReader, DiskSource, VmDescription};

#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    #[error("{platform}: cannot reach {target}: {cause}")]
    Unreachable { platform: &'static str, target: String, cause: String },
    #[error("{platform}: no VM {vm:?}")]
    NoSuchVm { platform: &'static str, vm: String },
    #[error("{platform} VM {vm}: {action} failed: {cause}")]
    Failed { platform: &'static str, vm: String, action: String, cause: String },
    #[error("{platform} does not support {what}")]
    Unsupported { platform: &'static str, what: String },
    /// The data path failed: which transport (NBD, VDDK, HTTPS datastore, …) and why. The
    /// cause is kept as words, so a chain says it once and no transport's type leaks here.
    #[error("{transport} transport: {cause}")]
    Transport { transport: &'static str, cause: String },
}

impl From<crate::nbd::NbdError> for ConnectorError {
    fn from(e: crate::nbd::NbdError) -> Self {
        ConnectorError::Transport { transport: "NBD", cause: e.to_string() }
    }
}

/// Credentials from a platform record. Debug never shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials {{ username: {:?}, password: <hidden> }}", self.username)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct VmSummary {
    pub name: String,
    pub uuid: String,
    pub running: bool,
}

/// A hypervisor host a platform connection reaches.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct HostInfo {
    pub name: String,
    /// Hypervisor and management software with versions, in words.
    pub software: String,
    pub cpus: u32,
    pub memory_mib: u64,
}

/// A network VMs can attach to (restore targets).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct NetworkInfo {
    pub name: String,
    pub active: bool,
}

/// Where new disks can go (restore targets): a libvirt storage pool, a datastore, a share.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct StorageInfo {
    pub name: String,
    pub active: bool,
    pub capacity: u64,
    pub available: u64,
}

/// Everything an operator picks from when adding VMs to a rule or choosing restore targets.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Inventory {
    pub hosts: Vec<HostInfo>,
    pub vms: Vec<VmSummary>,
    pub networks: Vec<NetworkInfo>,
    pub storage: Vec<StorageInfo>,
}

/// What the base restore point says about each disk, so the connector can ask the platform for
/// the right changes.
#[derive(Clone, Debug, Default)]
pub struct BackupBase {
    pub disks: Vec<BaseDisk>,
}

/// One disk of the base point.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BaseDisk {
    pub key: String,
    /// Its size in bytes at the base.
    pub size: u64,
    /// The platform change id the disk's changes are counted from (a checkpoint name, a CBT
    /// changeId, an RCT id); None when the base did not track this disk.
    pub change_id: Option<String>,
}

impl BackupBase {
    /// The base's change id where a platform keeps one per VM (a libvirt checkpoint): the first
    /// disk's that has one.
    pub fn vm_change_id(&self) -> Option<String> {
        self.disks.iter().find_map(|d| d.change_id.clone())
    }

    pub fn disk(&self, key: &str) -> Option<&BaseDisk> {
        self.disks.iter().find(|d| d.key == key)
    }
}

/// Whether to freeze the guest's filesystems (through its agent) while the snapshot is taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Quiesce {
    Off,
    /// Freeze when the guest agent answers; otherwise go on crash-consistent and say why.
    IfPossible,
    /// Fail the backup when the guest cannot be frozen.
    Required,
}

#[derive(Clone, Debug)]
pub struct BackupPlan {
    pub requested: BackupType,
    /// For incremental and differential: where the changes are counted from.
    pub base: Option<BackupBase>,
    /// Disk keys to back up; empty means all.
    pub include: Vec<String>,
    /// Change ids later backups may still count from (the newest full's, for differentials):
    /// after a committed backup the connector keeps these and the new one, and may drop the rest.
    pub keep_change_ids: Vec<String>,
    pub quiesce: Quiesce,
    pub change_tracking: ChangeTracking,
    /// Use a LAN-free (SAN) transport where the platform offers one for this VM.
    pub lan_free: bool,
    /// Where the connector reports its phases (e.g. querying changed blocks).
    pub control: std::sync::Arc<crate::control::JobControl>,
}

/// Whether a backup uses the platform's change tracking (QEMU dirty bitmaps, VMware CBT,
/// Hyper-V RCT) to read only what changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ChangeTracking {
    /// Where the VM's disks support it; the others are read whole (and the point says why).
    #[default]
    Auto,
    /// Required: a disk that cannot track changes fails the backup before anything is made.
    On,
    /// Never: every disk is read whole each time (the store still keeps only new chunks) and no
    /// checkpoint is made on the platform.
    Off,
}

impl ChangeTracking {
    pub fn parse(s: &str) -> Option<ChangeTracking> {
        match s {
            "auto" => Some(ChangeTracking::Auto),
            "on" => Some(ChangeTracking::On),
            "off" => Some(ChangeTracking::Off),
            _ => None,
        }
    }
}

/// One disk of a running backup session.
pub struct SessionDisk {
    pub key: String,
    pub source: Box<dyn DiskSource>,
    /// Ranges changed since the base; None reads the whole disk.
    pub changed: Option<Vec<Range<u64>>>,
    /// Why this disk is read whole when an incremental was asked for.
    pub full_reason: Option<String>,
}

/// A backup in progress on the platform (a snapshot, checkpoint, backup job). `finish` must be
/// called on every path: it ends the job and, when the backup did not commit, removes what
/// the session created so the next run starts clean.
pub trait BackupSession {
    /// The platform change id this backup creates for `disk` (the next incremental's base).
    fn change_id(&self, disk: &str) -> Option<String>;
    /// The transport in use, for the job log and UI ("nbd+unix", "hot-add", …).
    fn transport(&self) -> String;
    /// Whether the data moves over the storage network (SAN) rather than the LAN.
    fn lan_free(&self) -> bool {
        false
    }
    /// How consistent the captured state is, in words for the job log and the restore point.
    fn consistency(&self) -> String;
    /// What the job's log should warn of that does not fail the backup.
    fn warnings(&self) -> Vec<String> {
        Vec::new()
    }
    fn take_disks(&mut self) -> Vec<SessionDisk>;
    fn finish(self: Box<Self>, committed: bool) -> Result<(), ConnectorError>;
}

/// A restore as a new VM: its name, the settings that may differ from the original's, and where
/// its disks go.
#[derive(Clone, Debug)]
pub struct NewVmSpec {
    pub name: String,
    pub cpus: Option<u32>,
    pub memory_mib: Option<u64>,
    /// Where the new disks go: a storage pool, a datastore (the platform's word is in its
    /// capabilities).
    pub storage: String,
    /// Network for every NIC; None keeps each NIC's original network.
    pub network: Option<String>,
    /// The host the new VM runs on, by its inventory name; None: the platform's choice (on
    /// vSphere the first host that mounts the datastore; a KVM platform is one host).
    pub host: Option<String>,
    /// Disk image format where the platform offers a choice (KVM: "raw" or "qcow2"; qcow2
    /// keeps change tracking, so the new VM's backups can be incremental). None: the
    /// platform's default (raw on KVM).
    pub disk_format: Option<String>,
    /// New sizes in bytes by disk key, each a multiple of 512 and at least the point's size:
    /// the data is restored as it was and the added space is empty. Disks not named keep the
    /// point's size.
    pub disk_sizes: std::collections::BTreeMap<String, u64>,
    pub start: bool,
    /// Give the NICs the point's MAC addresses instead of new ones: for a VM that replaces one
    /// that is gone (two VMs with one MAC conflict on a network).
    pub keep_macs: bool,
}

/// The size a restore gives each of the point's disks (key, size): its own, or a larger one from
/// `sizes`. The error names the disk and why (not in the point, smaller than the point's disk,
/// not whole sectors).
pub fn restore_sizes(
    disks: &[(&str, u64)],
    sizes: &std::collections::BTreeMap<String, u64>,
) -> Result<Vec<u64>, String> {
    if let Some(key) = sizes.keys().find(|k| !disks.iter().any(|(d, _)| d == k)) {
        let have: Vec<&str> = disks.iter().map(|(d, _)| *d).collect();
        return Err(format!("disk {key}: not in the restore point (it has {})", have.join(", ")));
    }
    disks
        .iter()
        .map(|&(key, had)| {
            match sizes.get(key) {
                None => Ok(had),
                Some(&want) if want < had => Err(format!(
                    "disk {key}: {want} bytes is smaller than the point's {had}: a restore can grow a disk, never shrink it"
                )),
                Some(&want) if want % 512 != 0 => {
                    Err(format!("disk {key}: {want} bytes is not a whole number of 512-byte sectors"))
                }
                Some(&want) => Ok(want),
            }
        })
        .collect()
}

/// `ranges` sorted and merged where they overlap or touch.
pub fn union(mut ranges: Vec<Range<u64>>) -> Vec<Range<u64>> {
    ranges.sort_by_key(|r| r.start);
    let mut out: Vec<Range<u64>> = Vec::new();
    for r in ranges {
        match out.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => out.push(r),
        }
    }
    out
}

#[cfg(test)]
#[test]
fn union_merges_overlapping_and_touching_ranges() {
    assert_eq!(union(vec![10..20, 0..5, 15..30, 30..31, 40..50]), vec![0..5, 10..31, 40..50]);
}

/// What a restore will do, for the connector to check before it is queued.
#[derive(Clone, Copy, Debug)]
pub enum RestoreCheck<'a> {
    NewVm(&'a NewVmSpec),
    /// Onto the VM with this key (the point's VM).
    InPlace {
        vm: &'a str,
    },
}

/// Why a check refused a request before anything was queued (naming the request's field), or
/// could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// A value the platform does not have or take (a pool, a network).
    #[error(transparent)]
    Invalid(FieldError),
    /// The request clashes with the platform's state (a name taken, a VM running).
    #[error(transparent)]
    Conflict(FieldError),
    #[error(transparent)]
    Platform(ConnectorError),
}

/// For a platform that is one host (a libvirt connection): a restore that names a `host` must
/// name that one.
pub fn check_single_host(
    want: Option<&str>,
    host: impl FnOnce() -> Result<String, ConnectorError>,
) -> Result<(), CheckError> {
    let Some(want) = want else { return Ok(()) };
    let host = host()?;
    if want != host {
        return Err(CheckError::invalid("host", format!("this platform is the one host {host:?}, not {want:?}")));
    }
    Ok(())
}

impl CheckError {
    pub fn invalid(field: &str, message: impl Into<String>) -> CheckError {
        CheckError::Invalid(FieldError::new(field, message))
    }
    pub fn conflict(field: &str, message: impl Into<String>) -> CheckError {
        CheckError::Conflict(FieldError::new(field, message))
    }
}

impl From<ConnectorError> for CheckError {
    fn from(e: ConnectorError) -> Self {
        CheckError::Platform(e)
    }
}

/// One disk to restore, read from a restore point.
pub struct RestoreDisk<'a> {
    pub key: String,
    pub reader: &'a DiskReader,
    /// The platform change id the point recorded for this disk (a CBT changeId): a restore in
    /// place may then write only what the platform says changed since.
    pub change_id: Option<String>,
}

/// A point's disks to restore (from `Store::open_disks`), each with the change id the point
/// recorded for it.
pub fn restore_disks<'a>(point: &vds_store::RestorePoint, readers: &'a [(String, DiskReader)]) -> Vec<RestoreDisk<'a>> {
    readers
        .iter()
        .map(|(key, reader)| RestoreDisk {
            key: key.clone(),
            reader,
            change_id: point.disks.iter().find(|d| &d.key == key).and_then(|d| d.change_id.clone()),
        })
        .collect()
}

pub trait Connector {
    fn platform(&self) -> &'static str;
    /// Checks the connection and says what it reached (versions), or exactly what failed.
    fn test_connection(&self) -> Result<String, ConnectorError>;
    fn list_vms(&self) -> Result<Vec<VmSummary>, ConnectorError>;
    /// The VM with this name or platform id.
    fn find_vm(&self, vm: &str) -> Result<VmSummary, ConnectorError> {
        self.list_vms()?
            .into_iter()
            .find(|v| v.name == vm || v.uuid == vm)
            .ok_or_else(|| ConnectorError::NoSuchVm { platform: self.platform(), vm: vm.into() })
    }
    /// Checks a restore against the platform before it is queued: the new VM's name is free,
    /// its storage and network exist; the VM restored in place exists and is shut off.
    fn check_restore(&self, restore: RestoreCheck<'_>) -> Result<(), CheckError>;
    /// Hosts, VMs, networks and storage the connection reaches.
    fn inventory(&self) -> Result<Inventory, ConnectorError>;
    fn describe(&self, vm: &str) -> Result<VmDescription, ConnectorError>;
    fn begin_backup(&self, vm: &str, plan: &BackupPlan) -> Result<Box<dyn BackupSession>, ConnectorError>;
    /// Ends what a backup of `vm` left on the platform when Holdfast was killed during it (its
    /// backup job, the snapshot or checkpoint it made), as an appliance does at its restart.
    /// Says what it removed; None when nothing was left. What is not Holdfast's stays.
    fn clean_up_killed_backup(&self, vm: &str) -> Result<Option<String>, ConnectorError>;
    /// Removes what a restore as the new VM `vm` had made when Holdfast was killed during it
    /// (its volumes), unless the VM was defined by then. Says what it removed; None when
    /// nothing was left.
    fn clean_up_killed_restore(&self, vm: &str) -> Result<Option<String>, ConnectorError>;
    /// Creates a new VM (new identity: name, UUID, MAC addresses) from a restore point's
    /// description and disks. Returns the new VM's name. Nothing is left behind on failure,
    /// nor when `control` stops it; its writes keep to `control`'s limit and count as its
    /// progress.
    fn restore_as_new_vm(
        &self,
        source: &VmDescription,
        disks: &[RestoreDisk<'_>],
        spec: &NewVmSpec,
        control: &JobControl,
    ) -> Result<String, ConnectorError>;
    /// Overwrites the disks of an existing, stopped VM with a restore point's contents (holes
    /// stay holes). Each disk must have the size it has in the point. `control` as above (a
    /// stop leaves the disks part-written: the VM stays stopped and the restore can be rerun).
    fn restore_in_place(&self, vm: &str, disks: &[RestoreDisk<'_>], control: &JobControl)
        -> Result<(), ConnectorError>;
    /// Instant recovery: defines a new VM (identity as for `restore_as_new_vm`: new name, UUID,
    /// and MAC addresses unless `spec.keep_macs`; CPUs, memory and network as `spec` says) whose
    /// disks are the raw images of the appliance's NFS export, nothing copied; starts it if
    /// `spec.start`. Nothing is left defined when it fails.
    fn start_exported_vm(
        &self,
        source: &VmDescription,
        disks: &[ExportedDisk],
        spec: &NewVmSpec,
    ) -> Result<String, ConnectorError>;
    /// Stops (at once: its disks are an export whose writes are not the VM's to keep) and
    /// removes a VM `start_exported_vm` made; its disks are the export's and stay. A VM that is
    /// gone already is not an error.
    fn remove_exported_vm(&self, name: &str) -> Result<(), ConnectorError>;
    /// Moves a running VM that `start_exported_vm` made onto the platform's own storage while
    /// it runs: each of `disks` copied, with the guest's writes meanwhile, into a new volume in
    /// `storage` (a pool, a datastore) in `format`, then all switched over together; the VM's
    /// definition then names the new volumes. Progress and stop through `control`. When it
    /// fails or is stopped before the switch, the VM keeps running from the export and the new
    /// volumes are removed. Returns the volumes' paths.
    fn migrate_exported_vm(
        &self,
        name: &str,
        disks: &[ExportedDisk],
        storage: &str,
        format: &str,
        control: &JobControl,
    ) -> Result<Vec<String>, ConnectorError>;
}

/// A disk of a VM that runs from the appliance's instant-recovery export: a raw image on an
/// NFS server.
#[derive(Clone, Debug)]
pub struct ExportedDisk {
    /// The disk's key in the point (vda…), which the new VM keeps.
    pub key: String,
    /// The NFS server as the hypervisor reaches it (an address or a name).
    pub host: String,
    /// The image's path on the server: /holdfast/<session>/<disk>.raw.
    pub path: String,
    pub size: u64,
}
