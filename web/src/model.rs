//! The JSON shapes of the API and the backend interface behind it.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::future::Future;
pub use vds_store::retention::RetentionPolicy;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    Operator,
    /// Reads everything, changes nothing.
    Auditor,
}

impl Role {
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "admin" => Some(Role::Admin),
            "operator" => Some(Role::Operator),
            "auditor" => Some(Role::Auditor),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Auditor => "auditor",
        }
    }
}

/// A logged-in user's session; also the reply to a login.
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct Session {
    pub user: String,
    pub role: Role,
    /// Send back in X-CSRF-Token with every request that changes something.
    pub csrf: String,
    pub must_change_password: bool,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Login {
    pub user: String,
    pub password: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordChange {
    pub old: String,
    pub new: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    pub name: String,
    /// admin, operator or auditor
    pub role: String,
    /// An initial password the user must change at first login.
    pub password: String,
}

/// A new password an admin gives another user, who must change it at the next login.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordReset {
    pub password: String,
}

#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct User {
    pub name: String,
    pub role: Role,
    pub must_change_password: bool,
    pub locked_until: Option<String>,
}

/// A transfer limit for a time window: on the given days (mon … sun), from `from` to `to`
/// (HH:MM, the appliance's local time; a `to` before `from` runs past midnight), backups read at
/// most `mb_per_second` MB/s together (shared evenly by the jobs running; 0 pauses them, and
/// their progress holds). Where windows overlap, the lowest limit applies.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BandwidthWindow {
    pub days: Vec<String>,
    pub from: String,
    pub to: String,
    pub mb_per_second: f64,
}

/// How many jobs run at once: in all, and against one platform. Others wait their turn.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JobLimits {
    /// 1-256.
    pub max_jobs: usize,
    /// 1-256.
    pub max_jobs_per_host: usize,
}

/// Alert mail settings. `password` is write-only; `has_password` says whether one is stored.
/// Left out, the stored password stays; `""` removes it.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AlertSettings {
    pub enabled: bool,
    pub smtp_host: String,
    pub smtp_port: u16,
    /// starttls, tls or none
    pub security: String,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default, skip_serializing)]
    pub password: Option<String>,
    #[serde(default)]
    pub has_password: bool,
    pub from: String,
    pub to: Vec<String>,
    /// A CA (PEM) to trust besides the public ones, for an internal mail server.
    #[serde(default)]
    pub ca_pem: Option<String>,
    /// Mail when the store's filesystem is at least this full (percent).
    #[serde(default = "default_full")]
    pub storage_full_percent: u8,
    /// The same alert (same VM and kind) is mailed at most once in this many minutes.
    #[serde(default = "default_repeat")]
    pub repeat_minutes: u32,
}

fn default_full() -> u8 {
    90
}

fn default_repeat() -> u32 {
    60
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    pub name: String,
}

#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct Token {
    pub id: i64,
    pub name: String,
    pub created: String,
    /// Only in the reply that creates it; never stored in clear.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// A platform record as given: its kind (one of `GET /api/platform-kinds`), and beside the
/// fields below that kind's settings (for example a libvirt URI), which the kind checks: an
/// unknown or malformed one is refused by name.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct NewPlatform {
    pub name: String,
    pub kind: String,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    #[serde(flatten)]
    pub settings: serde_json::Map<String, serde_json::Value>,
}

#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct Platform {
    pub id: i64,
    pub name: String,
    pub kind: String,
    /// The kind's settings, beside the fields here.
    #[serde(flatten)]
    pub settings: serde_json::Map<String, serde_json::Value>,
    pub username: Option<String>,
    /// Whether a password is stored (it is never sent back).
    pub has_password: bool,
    /// What the connection test reached when the platform was saved.
    pub reached: String,
}

/// A kind of platform this appliance can reach: its settings form (fields with name, label,
/// help, required, example) and what it can do.
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct PlatformKindInfo {
    pub kind: String,
    pub title: String,
    pub fields: serde_json::Value,
    pub capabilities: serde_json::Value,
}

#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct Vm {
    pub name: String,
    pub uuid: String,
    pub running: bool,
}

/// Successes or failures over the last 7, 30 and 365 days.
#[derive(Clone, Debug, Default, Serialize, JsonSchema)]
pub struct PeriodCounts {
    pub week: i64,
    pub month: i64,
    pub year: i64,
}

/// One VM's backups: successes and failures, failed jobs whose log nobody has read, the bytes
/// its newest point protects and what all its points stored.
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct VmStats {
    pub platform: i64,
    pub vm: String,
    pub succeeded: PeriodCounts,
    pub failed: PeriodCounts,
    pub unread_errors: i64,
    pub protected_bytes: i64,
    pub stored_bytes: i64,
}

#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct RuleStats {
    pub rule: i64,
    pub name: String,
    pub succeeded: PeriodCounts,
    pub failed: PeriodCounts,
}

#[derive(Clone, Debug, Default, Serialize, JsonSchema)]
pub struct Stats {
    pub vms: Vec<VmStats>,
    pub rules: Vec<RuleStats>,
}

/// The appliance's own load over the last two seconds, for the dashboard's live panel (the
/// event stream's `system` events).
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct SystemSample {
    pub time: String,
    pub cpu_percent: f64,
    pub memory_used: u64,
    pub memory_total: u64,
    /// Bytes per second over every network interface but loopback.
    pub net_rx_per_second: u64,
    pub net_tx_per_second: u64,
    /// Bytes per second read from and written to the disk that holds the appliance's store.
    pub disk_read_per_second: u64,
    pub disk_write_per_second: u64,
}

/// What a platform offers: its hosts, VMs, networks and the storage new disks can go to.
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct PlatformInventory {
    pub hosts: Vec<InventoryHost>,
    pub vms: Vec<Vm>,
    pub networks: Vec<InventoryNetwork>,
    /// Storage pools, datastores or shares, in the platform's own word (its kind's
    /// `capabilities.storage_word`).
    pub storage: Vec<InventoryStorage>,
}

#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct InventoryHost {
    pub name: String,
    /// Hypervisor and management software with versions, in words.
    pub software: String,
    pub cpus: u32,
    pub memory_mib: u64,
}

#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct InventoryNetwork {
    pub name: String,
    pub active: bool,
}

#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct InventoryStorage {
    pub name: String,
    pub active: bool,
    pub capacity: u64,
    pub available: u64,
}

/// One VM as its platform describes it now: what a rule's disk choice and a restore's sizes
/// start from.
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct VmDetails {
    pub name: String,
    pub uuid: Option<String>,
    pub cpus: u32,
    pub memory_mib: u64,
    pub firmware: Option<String>,
    pub disks: Vec<vds_store::vm::VmDisk>,
    pub nics: Vec<vds_store::vm::VmNic>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewJob {
    /// Platform id.
    pub platform: i64,
    /// VM name or UUID on that platform.
    pub vm: String,
    #[serde(rename = "type")]
    pub backup_type: BackupKind,
    /// Storage target id to write into; default 1, the appliance's own store.
    #[serde(default)]
    pub storage: Option<i64>,
}

/// A restore of a point onto a platform: as a new VM (new name, UUID and MAC addresses, with
/// the settings given) or in place, onto the VM it was taken from (which must be shut off).
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewRestore {
    pub point: String,
    /// Platform id to restore onto.
    pub platform: i64,
    pub mode: RestoreMode,
    /// The new VM's name (new_vm).
    #[serde(default)]
    pub name: Option<String>,
    /// Where the new disks go (new_vm): a storage pool, a datastore (the platform kind's
    /// `storage_word`); default: the kind's `default_storage`. Also accepted as `pool`.
    #[serde(default, alias = "pool")]
    pub storage: Option<String>,
    #[serde(default)]
    pub cpus: Option<u32>,
    #[serde(default)]
    pub memory_mib: Option<u64>,
    /// Network for every NIC; None keeps each NIC's original network.
    #[serde(default)]
    pub network: Option<String>,
    /// The host the new VM runs on (new_vm), one of the platform inventory's `hosts`; default:
    /// the platform's choice (on vSphere the first host that mounts the datastore).
    #[serde(default)]
    pub host: Option<String>,
    /// One of the platform kind's `disk_formats` (default: the first).
    #[serde(default)]
    pub disk_format: Option<String>,
    /// New disk sizes in bytes by disk key (new_vm): each at least the point's size and a
    /// multiple of 512; the data is restored as it was and the added space is empty.
    #[serde(default)]
    pub disk_sizes: std::collections::BTreeMap<String, u64>,
    #[serde(default)]
    pub start: bool,
    /// Give the new VM's NICs the point's MAC addresses (default: new ones, so the copy can run
    /// beside the original); for a VM that replaces one that is gone.
    #[serde(default)]
    pub keep_macs: bool,
    /// Onto a platform of another kind (new_vm): the bus of every disk, one of what
    /// `POST /api/restores/convert` offers (KVM: virtio, virtio-scsi, sata; vSphere: pvscsi,
    /// lsilogic, sata, nvme); default: what the guest OS boots with.
    #[serde(default)]
    pub disk_bus: Option<String>,
    /// Onto a platform of another kind (new_vm): every NIC's model (KVM: virtio, e1000e, e1000;
    /// vSphere: vmxnet3, e1000e, e1000); default: what the guest OS has a driver for.
    #[serde(default)]
    pub nic_model: Option<String>,
}

/// What `POST /api/restores/convert` takes: a point and the platform it would go onto, with the
/// user's choices so far.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConversionRequest {
    pub point: String,
    /// Platform id to restore onto.
    pub platform: i64,
    #[serde(default)]
    pub disk_bus: Option<String>,
    #[serde(default)]
    pub nic_model: Option<String>,
}

/// One device a target platform offers a converted VM.
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct DeviceChoice {
    pub name: String,
    pub description: String,
}

/// A disk of the converted VM: the point's disk and what the target makes of it.
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct ConvertedDisk {
    pub point_key: String,
    pub key: String,
    pub size: u64,
    pub bus: Option<String>,
}

/// The VM a restore onto that platform would make: converted when the platform is of another
/// kind than the point's, else the point's own.
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct Conversion {
    /// Whether the point goes onto another kind of platform.
    pub needed: bool,
    /// The point's platform kind and the target's.
    pub source_kind: String,
    pub target_kind: String,
    pub guest_os: Option<String>,
    pub firmware: Option<String>,
    pub cpus: u32,
    pub memory_mib: u64,
    pub disks: Vec<ConvertedDisk>,
    pub nics: Vec<vds_store::vm::VmNic>,
    /// What the user may choose (empty when no conversion is needed), and the choice in effect
    /// (given, or the default for the guest).
    pub disk_buses: Vec<DeviceChoice>,
    pub nic_models: Vec<DeviceChoice>,
    pub disk_bus: Option<String>,
    pub nic_model: Option<String>,
    /// One line per decision, as the restore job's log will say them.
    pub decisions: Vec<String>,
}

/// Declares a closed set of words the API sends and takes: a serde enum (snake_case), its words,
/// and parsing from the catalog's text.
macro_rules! words {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $word:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($(#[$vdoc])* $variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $word),+ }
            }
            pub fn parse(s: &str) -> Option<$name> {
                $name::ALL.iter().copied().find(|v| v.as_str() == s)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

words!(
    /// A storage target's health check: verify (re-read and check the chunks) or gc (remove
    /// what no point needs).
    StorageCheckKind { Verify = "verify", Gc = "gc" }
);

/// A storage target's last (or running) health check of a kind.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct StorageCheck {
    pub kind: StorageCheckKind,
    pub started: String,
    pub finished: Option<String>,
    pub running: bool,
    /// Whether it found the store sound (verify) or every needed blob present (gc); none while
    /// it runs.
    pub ok: Option<bool>,
    /// What it found, in words: blobs and bytes checked or removed, damaged blobs and the points
    /// they affect.
    pub summary: String,
}

/// What a verify re-reads: `sample_percent` of the chunks (default 100: all of them).
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyRequest {
    #[serde(default)]
    pub sample_percent: Option<f64>,
}

words!(
    /// What a job is.
    JobKind { Backup = "backup", Restore = "restore" }
);

words!(
    /// A backup's type, or a restore's mode.
    JobType {
        Full = "full",
        Incremental = "incremental",
        Differential = "differential",
        NewVm = "new_vm",
        InPlace = "in_place",
    }
);

words!(
    /// The backup types a run can ask for.
    BackupKind { Full = "full", Incremental = "incremental", Differential = "differential" }
);

words!(
    /// How the VMs of one run of a rule take their snapshots.
    SnapshotMode {
        /// One VM after another, in the rule's order: the next VM's snapshot is taken when the
        /// previous VM's backup has ended, so the host carries one of the rule's snapshots at a
        /// time (the default).
        Serial = "serial",
        /// Every VM's snapshot together as the run starts, then the data as the job limits
        /// allow: the points of VMs that work together capture the same moment. Each snapshot
        /// lives until its VM's data has been read.
        Parallel = "parallel",
    }
);

// Written out: the enum comes from `words!`, which cannot mark a default variant.
#[allow(clippy::derivable_impls)]
impl Default for SnapshotMode {
    fn default() -> SnapshotMode {
        SnapshotMode::Serial
    }
}

words!(
    /// Where a restore writes.
    RestoreMode {
        /// A new VM: new name, UUID and MAC addresses.
        NewVm = "new_vm",
        /// Onto the VM the point was taken from, which must be shut off.
        InPlace = "in_place",
    }
);

words!(
    /// A job's state: the active ones in the order a backup passes through them, then the ends.
    JobState {
        Queued = "queued",
        Preparing = "preparing",
        SavingConfiguration = "saving_configuration",
        Snapshotting = "snapshotting",
        QueryingChanges = "querying_changes",
        /// Its snapshot is taken; it waits for its turn to read the data (a rule's parallel
        /// snapshots are taken together, the reads follow the job limits).
        Waiting = "waiting",
        Running = "running",
        CheckingData = "checking_data",
        Stopping = "stopping",
        /// The host does not answer; `error` says why.
        Unknown = "unknown",
        Completed = "completed",
        Failed = "failed",
        /// By a user.
        Stopped = "stopped",
        /// The VM's previous run was still queued or running.
        Skipped = "skipped",
    }
);

impl JobState {
    /// Whether the job has ended.
    pub fn ended(self) -> bool {
        matches!(self, JobState::Completed | JobState::Failed | JobState::Stopped | JobState::Skipped)
    }
}

#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct Job {
    pub id: i64,
    pub kind: JobKind,
    pub platform: i64,
    /// The VM backed up, or the VM restored onto (the new VM's name for new_vm).
    pub vm: String,
    /// full, incremental or differential; for a restore: new_vm or in_place.
    #[serde(rename = "type")]
    pub backup_type: JobType,
    pub state: JobState,
    /// Of the whole backup (every disk).
    pub percent: f64,
    pub done_bytes: i64,
    pub total_bytes: i64,
    /// Bytes per second read so far while running.
    pub rate: i64,
    /// Seconds left at that rate.
    pub eta_seconds: Option<i64>,
    pub error: Option<String>,
    /// The point a backup made, or the point a restore reads.
    pub point_id: Option<String>,
    /// The rule that started it; None for a job run by hand.
    pub rule: Option<i64>,
    /// The storage target a backup writes into (None for a restore).
    pub storage: Option<i64>,
    pub created: String,
    pub started: Option<String>,
    pub finished: Option<String>,
    /// For a restore: the kind of platform that made the point (`platform` is the target's id).
    pub source_kind: Option<String>,
    /// For a restore: the name of the platform that made the point, when the catalog knows it.
    pub source_platform: Option<String>,
}

/// When a rule runs, in the admin's vocabulary; times are "HH:MM" in the appliance's local time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Schedule {
    /// One run at `at` ("YYYY-MM-DD HH:MM"). A time earlier today runs now; earlier days are refused.
    Once { at: String },
    /// Every `every_hours` hours (1-23) from `start` ("HH:MM") until the end of each day.
    Hourly { every_hours: u32, start: String },
    /// Every day at each of `times`.
    Daily { times: Vec<String> },
    /// On each of `days` (mon, tue, wed, thu, fri, sat, sun) at each of `times`.
    Weekly { days: Vec<String>, times: Vec<String> },
    /// On each of `days` of the month (1-31; a month without that day skips it) at each of `times`.
    Monthly { days: Vec<u32>, times: Vec<String> },
}

/// A rule's incremental or differential runs between its fulls.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PartialSchedule {
    /// incremental or differential
    pub kind: BackupKind,
    pub schedule: Schedule,
}

/// A backup rule: VMs of one platform, a full schedule and an optional incremental or
/// differential one, a retention policy. Schedules and retention are checked by the backend,
/// which names the offending field.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewRule {
    pub name: String,
    pub platform: i64,
    pub vms: Vec<String>,
    /// When the full backups run.
    pub full: Schedule,
    /// When the incremental or differential backups between the fulls run.
    #[serde(default)]
    pub partial: Option<PartialSchedule>,
    /// Which points the rule keeps after each successful run; none set keeps everything.
    #[serde(default)]
    pub retention: RetentionPolicy,
    /// auto (default), off, required
    #[serde(default)]
    pub quiesce: Option<String>,
    /// Whether the scheduler runs it (default true); a disabled rule still runs on demand.
    #[serde(default)]
    pub enabled: Option<bool>,
    /// Disk keys to back up (vda, …); empty: every disk. Each VM of the rule must have them.
    #[serde(default)]
    pub disks: Vec<String>,
    /// Deleting the rule also deletes the points its jobs made (locked and starred ones stay).
    #[serde(default)]
    pub delete_data_with_rule: bool,
    /// auto (default: where the VM's disks support it), on (required), off (read whole disks).
    #[serde(default)]
    pub change_tracking: Option<String>,
    /// Move the data over the storage network (SAN) where the platform offers it; elsewhere
    /// the usual transport is used and the job log says so.
    #[serde(default)]
    pub lan_free: bool,
    /// Storage target id the rule's backups go into; default 1, the appliance's own store.
    /// Moving a rule to another target makes each VM's next backup a full there.
    #[serde(default)]
    pub storage: Option<i64>,
    /// serial (default) or parallel.
    #[serde(default)]
    pub snapshot_mode: SnapshotMode,
    /// Most MB/s (10^6 bytes) the rule's backups read, shared by its jobs that run at once;
    /// none: only the appliance's bandwidth windows apply (the lower limit wins).
    #[serde(default)]
    pub bandwidth_mb_per_second: Option<f64>,
}

#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct Rule {
    pub id: i64,
    pub name: String,
    pub platform: i64,
    pub vms: Vec<String>,
    pub enabled: bool,
    pub full: Schedule,
    pub partial: Option<PartialSchedule>,
    pub retention: RetentionPolicy,
    pub quiesce: String,
    pub disks: Vec<String>,
    pub delete_data_with_rule: bool,
    pub change_tracking: String,
    pub lan_free: bool,
    pub storage: i64,
    pub snapshot_mode: SnapshotMode,
    pub bandwidth_mb_per_second: Option<f64>,
    pub created: String,
    /// When the scheduler runs the rule next (full or partial, whichever comes first); none
    /// while the rule is disabled or its schedules have no run ahead.
    pub next_run: Option<String>,
}

/// An instant-recovery session to start: a restore point exported over NFS to the clients named.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewRecovery {
    /// The restore point's id.
    pub point: String,
    /// The addresses that may mount the export: IPv4 or IPv6 addresses, or networks in CIDR
    /// form (10.0.0.0/24). Every other client is refused (and the attempt is in the audit log).
    pub clients: Vec<String>,
    /// The export's directory name (letters, digits, `-`, `_`, `.`); default: the VM's name and
    /// the point's time.
    #[serde(default)]
    pub name: Option<String>,
    /// Also define (and start) a VM on a platform that runs from the export.
    #[serde(default)]
    pub vm: Option<NewRecoveryVm>,
}

/// The VM an instant-recovery session runs: a new VM (its own name, new MAC addresses unless
/// kept) whose disks are the export's images. Its host must be among the session's clients.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewRecoveryVm {
    /// Platform id.
    pub platform: i64,
    /// The appliance's address as that platform's hosts reach it: the NFS server in the VM's
    /// disk sources.
    pub nfs_host: String,
    /// The VM's name; default: the session's name.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub cpus: Option<u32>,
    #[serde(default)]
    pub memory_mib: Option<u64>,
    /// Network for every NIC; default: each NIC's own.
    #[serde(default)]
    pub network: Option<String>,
    /// Give the NICs the point's MAC addresses. Default: only when the original VM is no longer
    /// on that platform (two VMs with one MAC conflict on a network).
    #[serde(default)]
    pub keep_macs: Option<bool>,
    /// Start it (default true).
    #[serde(default)]
    pub start: Option<bool>,
}

/// Where a session's VM moves to while it runs: the platform's own storage.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MigrateRecovery {
    /// The storage pool (datastore…) for its disks; default: the platform's default.
    #[serde(default)]
    pub storage: Option<String>,
    /// One of the platform's disk formats (KVM: qcow2, raw); default: its first.
    #[serde(default)]
    pub disk_format: Option<String>,
}

/// A session's move to production storage, as it runs or as it failed (a move that succeeds
/// ends the session: the VM is then the platform's own).
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct RecoveryMigration {
    pub running: bool,
    pub storage: String,
    pub disk_format: String,
    pub percent: f64,
    pub done_bytes: u64,
    pub total_bytes: u64,
    pub started: String,
    /// Why it failed; the VM kept running from the export.
    pub error: Option<String>,
}

/// The restore point a session's writes became.
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct RecoveryKept {
    /// The new point: an incremental of the exported one, holding what the session wrote.
    pub point_id: String,
    /// Bytes of disk it holds anew (the session's written blocks).
    pub changed_bytes: u64,
}

/// The VM a session runs.
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct RecoveryVm {
    pub platform: i64,
    pub name: String,
    /// Whether its NICs have the point's MAC addresses (else new ones).
    pub macs_kept: bool,
}

/// A file of an instant-recovery export.
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct RecoveryFile {
    pub name: String,
    pub size: u64,
}

/// An instant-recovery session: the point's disks exported over NFSv3 at `export` (mount it,
/// or open `nfs://<appliance>/<export>/<file>`); writes go to the session's overlay.
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct Recovery {
    pub id: i64,
    pub name: String,
    pub point: String,
    pub vm: String,
    pub clients: Vec<String>,
    /// The directory to mount: /holdfast/<name>.
    pub export: String,
    /// The TCP port of NFS and MOUNT (the portmapper on 111 names it too).
    pub nfs_port: u16,
    pub files: Vec<RecoveryFile>,
    /// Bytes clients have read from the export since it started (or since the service started).
    pub bytes_read: u64,
    /// Bytes clients have written (into the session's overlay, never the point), counted as
    /// `bytes_read`.
    pub bytes_written: u64,
    /// Disk space the overlay holds: the 4 KiB blocks written so far.
    pub overlay_bytes: u64,
    /// The VM running from the export, if the session started one.
    pub vm_started: Option<RecoveryVm>,
    /// Its move to production storage, running or failed.
    pub migration: Option<RecoveryMigration>,
    pub created: String,
    pub created_by: String,
}

/// What `POST /api/config/export` takes: a passphrase seals platform and mail passwords into
/// the file; without one they are left out (and must be entered again after an import).
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfigExport {
    #[serde(default)]
    pub passphrase: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfigImport {
    /// The exported file's JSON.
    pub config: serde_json::Value,
    #[serde(default)]
    pub passphrase: Option<String>,
}

/// What an import did. Platforms, storage targets and rules whose names exist already are kept
/// as they are.
#[derive(Clone, Debug, Default, Serialize, JsonSchema)]
pub struct ImportReport {
    pub platforms_added: Vec<String>,
    pub platforms_kept: Vec<String>,
    pub rules_added: Vec<String>,
    pub rules_kept: Vec<String>,
    /// Storage targets added (their stores adopted with their points, or made new).
    pub storage_added: Vec<String>,
    pub storage_kept: Vec<String>,
    pub notes: Vec<String>,
}

/// Enables or disables several rules at once (the scheduler's group start and stop).
/// Which jobs to list: newest first, at most `limit` (default 500, at most 5,000), created at or
/// after `since` (RFC 3339) when given.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JobFilter {
    #[serde(default)]
    pub since: Option<String>,
    #[serde(default)]
    pub limit: Option<u32>,
}

/// A page of the audit log, newest first: at most `limit` entries (default 1,000, at most
/// 10,000) older than entry `before` (default: from the newest).
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    #[serde(default)]
    pub before: Option<i64>,
    #[serde(default)]
    pub limit: Option<u32>,
}

/// How a rule is deleted.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleDeletion {
    /// Also delete the points the rule's jobs made (locked and starred ones stay); default: the
    /// rule's own `delete_data_with_rule`.
    #[serde(default)]
    pub delete_data: Option<bool>,
}

/// Which rule a check is for.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleCheck {
    /// The rule being edited (its own VMs and name are not "taken"); none for a new rule.
    #[serde(default)]
    pub rule: Option<i64>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RulesState {
    pub ids: Vec<i64>,
    pub enabled: bool,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunRule {
    #[serde(rename = "type")]
    pub backup_type: BackupKind,
}

#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct LogLine {
    pub time: String,
    pub level: String,
    pub message: String,
}

#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct PointRow {
    pub point_id: String,
    pub vm_key: String,
    pub vm_name: String,
    #[serde(rename = "type")]
    pub backup_type: String,
    pub started: String,
    pub finished: String,
    pub parent: Option<String>,
    pub stored_bytes: i64,
    /// The sum of its disks' sizes: the data it protects.
    pub protected_bytes: i64,
    /// The storage target that holds it.
    pub storage: i64,
    /// Kept whatever retention says, until unstarred.
    pub star: bool,
    /// Immutable until then: not deleted, not unstarred, by anyone.
    pub locked_until: Option<String>,
}

/// One restore point as its store describes it, with the job that made it.
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct PointDetails {
    #[serde(flatten)]
    pub point: PointRow,
    /// How consistent the captured state is (crash-consistent, or after a guest freeze).
    pub consistency: Option<String>,
    pub disks: Vec<PointDiskInfo>,
    /// Bytes the backup read from the platform.
    pub read_bytes: u64,
    /// The job that made it, when this appliance ran it.
    pub job: Option<i64>,
    /// What that job read through (NBD, a local file, …).
    pub transport: Option<String>,
    /// Why it cannot be deleted now (locked, starred), if it cannot.
    pub undeletable: Option<String>,
}

#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct PointDiskInfo {
    pub key: String,
    pub size: u64,
    /// full, incremental or differential: what this disk's backup achieved.
    #[serde(rename = "type")]
    pub backup_type: String,
    /// Why the disk was read in full when less was asked.
    pub full_reason: Option<String>,
    pub allocated_bytes: u64,
    pub read_bytes: u64,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PointStar {
    pub star: bool,
}

/// Makes a point immutable until `until`: "YYYY-MM-DD" (the end of that day, the appliance's
/// local time) or an RFC 3339 time. A lock is extended, never shortened.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PointLock {
    pub until: String,
}

/// A storage target to add: a directory for a Holdfast store, on another disk or a mount. A
/// missing or empty directory gets a new store; a directory that holds a store already (another
/// appliance's, or one moved here) is adopted, and its points join the catalog.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewStorage {
    pub name: String,
    /// An absolute path.
    pub path: String,
    /// Encrypts a new store (XChaCha20-Poly1305 under an Argon2id-wrapped key); an adopted
    /// encrypted store needs its own. Kept sealed with the appliance's key.
    #[serde(default)]
    pub passphrase: Option<String>,
    /// zstd level of a new store (1 to 19; default 3). An adopted store keeps its own.
    #[serde(default)]
    pub zstd_level: Option<i32>,
}

#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct StorageTarget {
    pub id: i64,
    pub name: String,
    pub path: String,
    pub encrypted: bool,
    /// Whether the store opens now; `error` says why not (a disk not mounted, a damaged
    /// store.json). An unavailable target is tried again at its next use.
    pub available: bool,
    pub error: Option<String>,
    /// Of the filesystem that holds the store (what non-root users may use).
    pub total_bytes: Option<u64>,
    pub free_bytes: Option<u64>,
    pub used_percent: Option<f64>,
    /// Its points in the catalog, and the bytes they added to it.
    pub points: i64,
    pub stored_bytes: i64,
    /// What its points protect (the sum of their disks' sizes): against `stored_bytes`, the
    /// saving of deduplication and compression.
    pub protected_bytes: i64,
    /// Its last verify and garbage collection, running ones included.
    pub health: Vec<StorageCheck>,
    pub created: String,
}

#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct AuditRow {
    /// Entries are numbered as they are written; `before` pages back by it.
    pub id: i64,
    pub time: String,
    pub user: String,
    pub action: String,
    pub detail: String,
}

/// What kind of failure an error is, in the service's terms; `web` alone maps each to an HTTP
/// status (see `Problem::status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Problem {
    /// The request is wrong: a field, a value, a shape.
    BadRequest,
    /// No session, or one that ended.
    NotLoggedIn,
    /// The caller may not do this (role, CSRF, a password change pending).
    Forbidden,
    /// The object named does not exist.
    NotFound,
    /// The request clashes with the state of things (a name taken, a VM running, a job going).
    Conflict,
    /// The body is not JSON.
    NotJson,
    /// A hypervisor, mail server or other system the service depends on failed.
    Upstream,
    /// Something the service needs is unavailable for now.
    Unavailable,
    /// A failure inside the service.
    Internal,
}

impl Problem {
    /// The HTTP status the API answers with.
    pub fn status(self) -> u16 {
        match self {
            Problem::BadRequest => 400,
            Problem::NotLoggedIn => 401,
            Problem::Forbidden => 403,
            Problem::NotFound => 404,
            Problem::Conflict => 409,
            Problem::NotJson => 415,
            Problem::Internal => 500,
            Problem::Upstream => 502,
            Problem::Unavailable => 503,
        }
    }
}

/// An error: its kind and a message naming the object and the cause.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub problem: Problem,
    pub message: String,
}

impl ApiError {
    pub fn new(problem: Problem, message: impl Into<String>) -> ApiError {
        ApiError { problem, message: message.into() }
    }
    /// A field of the request is wrong.
    pub fn field(field: &str, problem: impl std::fmt::Display) -> ApiError {
        ApiError::new(Problem::BadRequest, format!("{field}: {problem}"))
    }
    pub fn bad(message: impl Into<String>) -> ApiError {
        ApiError::new(Problem::BadRequest, message)
    }
    pub fn conflict(message: impl Into<String>) -> ApiError {
        ApiError::new(Problem::Conflict, message)
    }
    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(Problem::Forbidden, message)
    }
    pub fn upstream(message: impl Into<String>) -> ApiError {
        ApiError::new(Problem::Upstream, message)
    }
    pub fn not_found(what: impl std::fmt::Display) -> ApiError {
        ApiError::new(Problem::NotFound, format!("no {what}"))
    }
    /// A failure inside the service whose words are not for the client (a database or runtime
    /// error): the client gets a reference, the service log the cause under that reference.
    pub fn internal(e: impl std::fmt::Display) -> ApiError {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let reference = format!("E{secs:x}-{}", NEXT.fetch_add(1, Ordering::Relaxed));
        eprintln!("holdfast: internal error {reference}: {e}");
        ApiError::new(Problem::Internal, format!("internal error {reference}: the service log has its cause"))
    }
    /// A failure inside the service told in Holdfast's own words (no foreign error text).
    pub fn server(message: impl Into<String>) -> ApiError {
        ApiError::new(Problem::Internal, message)
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// What the appliance provides behind the API. Sessions come back from `login` as an opaque
/// token (the cookie) plus the session; the API layer checks CSRF and roles.
/// Users, sessions, API tokens and the audit log.
pub trait Accounts: Send + Sync + 'static {
    fn login(&self, login: Login) -> impl Future<Output = ApiResult<(String, Session)>> + Send;
    fn session(&self, token: &str) -> impl Future<Output = ApiResult<Option<Session>>> + Send;
    /// The session an API token (Authorization: Bearer) stands for.
    fn token_session(&self, token: &str) -> impl Future<Output = ApiResult<Option<Session>>> + Send;
    fn users(&self) -> impl Future<Output = ApiResult<Vec<User>>> + Send;
    fn create_user(&self, s: &Session, u: NewUser) -> impl Future<Output = ApiResult<User>> + Send;
    fn delete_user(&self, s: &Session, name: &str) -> impl Future<Output = ApiResult<()>> + Send;
    fn unlock_user(&self, s: &Session, name: &str) -> impl Future<Output = ApiResult<()>> + Send;
    fn reset_password(&self, s: &Session, name: &str, r: PasswordReset) -> impl Future<Output = ApiResult<()>> + Send;
    fn tokens(&self, s: &Session) -> impl Future<Output = ApiResult<Vec<Token>>> + Send;
    fn create_token(&self, s: &Session, t: NewToken) -> impl Future<Output = ApiResult<Token>> + Send;
    fn delete_token(&self, s: &Session, id: i64) -> impl Future<Output = ApiResult<()>> + Send;
    fn logout(&self, token: &str) -> impl Future<Output = ApiResult<()>> + Send;
    fn change_password(&self, s: &Session, change: PasswordChange) -> impl Future<Output = ApiResult<()>> + Send;
    fn audit(&self, q: AuditQuery) -> impl Future<Output = ApiResult<Vec<AuditRow>>> + Send;
}

/// The platforms the appliance reaches and the kinds it knows.
pub trait Platforms: Send + Sync + 'static {
    /// The kinds of platform this appliance can reach.
    fn platform_kinds(&self) -> impl Future<Output = ApiResult<Vec<PlatformKindInfo>>> + Send;
    fn update_platform(&self, s: &Session, id: i64, p: NewPlatform)
        -> impl Future<Output = ApiResult<Platform>> + Send;
    fn delete_platform(&self, s: &Session, id: i64) -> impl Future<Output = ApiResult<()>> + Send;
    fn platforms(&self) -> impl Future<Output = ApiResult<Vec<Platform>>> + Send;
    fn create_platform(&self, s: &Session, p: NewPlatform) -> impl Future<Output = ApiResult<Platform>> + Send;
    fn platform_vms(&self, id: i64) -> impl Future<Output = ApiResult<Vec<Vm>>> + Send;
    fn platform_inventory(&self, id: i64) -> impl Future<Output = ApiResult<PlatformInventory>> + Send;
    /// One VM, found by name or platform id.
    fn platform_vm(&self, id: i64, vm: &str) -> impl Future<Output = ApiResult<VmDetails>> + Send;
}

/// Backup and restore jobs, their logs and live events, the points they made, statistics.
pub trait Jobs: Send + Sync + 'static {
    fn start_job(&self, s: &Session, j: NewJob) -> impl Future<Output = ApiResult<Job>> + Send;
    fn jobs(&self, f: JobFilter) -> impl Future<Output = ApiResult<Vec<Job>>> + Send;
    fn job(&self, id: i64) -> impl Future<Output = ApiResult<Job>> + Send;
    fn job_log(&self, id: i64) -> impl Future<Output = ApiResult<Vec<LogLine>>> + Send;
    fn points(&self) -> impl Future<Output = ApiResult<Vec<PointRow>>> + Send;
    /// Per VM and per rule: successes and failures (week, month, year), bytes protected and
    /// stored, unread errors.
    fn stats(&self) -> impl Future<Output = ApiResult<Stats>> + Send;
    /// Every job change (state, progress) as it happens, for server-sent events.
    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Job>;
    /// The appliance's load every two seconds, for the same stream.
    fn subscribe_system(&self) -> tokio::sync::broadcast::Receiver<SystemSample>;
    fn stop_job(&self, s: &Session, id: i64) -> impl Future<Output = ApiResult<Job>> + Send;
    fn start_restore(&self, s: &Session, r: NewRestore) -> impl Future<Output = ApiResult<Job>> + Send;
    /// The VM a restore of a point onto a platform would make (converted across kinds).
    fn convert_restore(&self, r: ConversionRequest) -> impl Future<Output = ApiResult<Conversion>> + Send;
    fn point(&self, id: &str) -> impl Future<Output = ApiResult<PointDetails>> + Send;
    fn star_point(&self, s: &Session, id: &str, star: bool) -> impl Future<Output = ApiResult<PointDetails>> + Send;
    fn lock_point(&self, s: &Session, id: &str, l: PointLock) -> impl Future<Output = ApiResult<PointDetails>> + Send;
    fn delete_point(&self, s: &Session, id: &str) -> impl Future<Output = ApiResult<()>> + Send;
}

/// Backup rules.
pub trait Rules: Send + Sync + 'static {
    fn rules(&self) -> impl Future<Output = ApiResult<Vec<Rule>>> + Send;
    fn create_rule(&self, s: &Session, r: NewRule) -> impl Future<Output = ApiResult<Rule>> + Send;
    /// Deletes a rule; `delete_data` overrides the rule's own `delete_data_with_rule`.
    fn delete_rule(
        &self,
        s: &Session,
        id: i64,
        delete_data: Option<bool>,
    ) -> impl Future<Output = ApiResult<()>> + Send;
    /// Checks a rule as creating it (or editing rule `own`) would, saving nothing.
    fn check_rule(&self, s: &Session, r: NewRule, own: Option<i64>) -> impl Future<Output = ApiResult<()>> + Send;
    fn run_rule(&self, s: &Session, id: i64, r: RunRule) -> impl Future<Output = ApiResult<Vec<Job>>> + Send;
    /// Stops a job: a queued one at once, a running one as soon as its current read ends
    /// (nothing is committed and the platform's snapshot is removed).
    /// Replaces a rule's settings (its platform stays); checked like a new rule.
    fn update_rule(&self, s: &Session, id: i64, r: NewRule) -> impl Future<Output = ApiResult<Rule>> + Send;
    fn set_rules_enabled(&self, s: &Session, r: RulesState) -> impl Future<Output = ApiResult<Vec<Rule>>> + Send;
}

/// Alerts, bandwidth windows, storage targets and the configuration file.
pub trait Configuration: Send + Sync + 'static {
    fn alert_settings(&self) -> impl Future<Output = ApiResult<Option<AlertSettings>>> + Send;
    fn set_alert_settings(&self, s: &Session, a: AlertSettings) -> impl Future<Output = ApiResult<()>> + Send;
    /// Sends a test mail now with the saved settings.
    fn test_alert(&self, s: &Session) -> impl Future<Output = ApiResult<()>> + Send;
    /// The configuration (platforms, rules, bandwidth windows, alert settings) as one file.
    fn export_config(&self, s: &Session, e: ConfigExport) -> impl Future<Output = ApiResult<serde_json::Value>> + Send;
    /// Adds what an exported file holds, all or nothing.
    fn import_config(&self, s: &Session, i: ConfigImport) -> impl Future<Output = ApiResult<ImportReport>> + Send;
    /// Starts a verify or a garbage collection of a storage target.
    fn check_storage(
        &self,
        s: &Session,
        id: i64,
        kind: StorageCheckKind,
        sample_percent: Option<f64>,
    ) -> impl Future<Output = ApiResult<StorageTarget>> + Send;
    fn limits(&self) -> impl Future<Output = ApiResult<JobLimits>> + Send;
    fn set_limits(&self, s: &Session, l: JobLimits) -> impl Future<Output = ApiResult<()>> + Send;
    fn bandwidth(&self) -> impl Future<Output = ApiResult<Vec<BandwidthWindow>>> + Send;
    fn set_bandwidth(&self, s: &Session, w: Vec<BandwidthWindow>) -> impl Future<Output = ApiResult<()>> + Send;
    fn storage(&self) -> impl Future<Output = ApiResult<Vec<StorageTarget>>> + Send;
    /// Adds a storage target: a new store, or an existing one adopted with its points.
    fn create_storage(&self, s: &Session, t: NewStorage) -> impl Future<Output = ApiResult<StorageTarget>> + Send;
    /// Forgets a target no rule uses (its files stay where they are).
    fn delete_storage(&self, s: &Session, id: i64) -> impl Future<Output = ApiResult<()>> + Send;
}

/// Everything the API needs from the appliance, one trait per resource.
/// Instant recovery: restore points exported over NFS.
pub trait Recoveries: Send + Sync + 'static {
    fn recoveries(&self) -> impl Future<Output = ApiResult<Vec<Recovery>>> + Send;
    fn start_recovery(&self, s: &Session, r: NewRecovery) -> impl Future<Output = ApiResult<Recovery>> + Send;
    fn stop_recovery(&self, s: &Session, id: i64) -> impl Future<Output = ApiResult<()>> + Send;
    fn migrate_recovery(
        &self,
        s: &Session,
        id: i64,
        m: MigrateRecovery,
    ) -> impl Future<Output = ApiResult<Recovery>> + Send;
    /// Ends a session keeping what was written to it as a new restore point of the VM.
    fn keep_recovery(&self, s: &Session, id: i64) -> impl Future<Output = ApiResult<RecoveryKept>> + Send;
    /// The sessions as they change (every two seconds while any exists, and at each start,
    /// end and move), for server-sent events.
    fn subscribe_recoveries(&self) -> tokio::sync::broadcast::Receiver<Vec<Recovery>>;
}

pub trait Backend: Accounts + Platforms + Jobs + Rules + Configuration + Recoveries {}

impl<T: Accounts + Platforms + Jobs + Rules + Configuration + Recoveries> Backend for T {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_internal_error_gives_the_client_a_reference_never_its_text() {
        let a = ApiError::internal("error returned from database: no such table: jobs");
        let b = ApiError::internal("error returned from database: no such table: jobs");
        assert_eq!(a.problem.status(), 500);
        assert!(!a.message.contains("table") && !a.message.contains("database"), "{}", a.message);
        assert!(a.message.starts_with("internal error E") && a.message.contains("service log"), "{}", a.message);
        assert_ne!(a.message, b.message, "each failure has its own reference");
    }
}
