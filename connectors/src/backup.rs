//! One VM backup, platform-neutral: pick the base point from the store, ask the connector for a
//! session, ingest its disks, and finish the session on every path (success, ingest failure),
//! so the platform never keeps a job, snapshot or checkpoint the store does not know of.

use crate::connector::{BackupBase, BackupPlan, BaseDisk, ChangeTracking, Connector, ConnectorError, Quiesce};
use crate::control::{Governed, JobControl, Phase};
use std::sync::Arc;
use vds_store::{
    BackupType, IngestDisk, IngestProgress, IngestRequest, IngestStage, Labels, RestorePoint, Store, StoreError,
};

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(transparent)]
    Connector(#[from] ConnectorError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{store}; cleaning up on the hypervisor also failed: {cleanup}")]
    StoreAndCleanup { store: Box<StoreError>, cleanup: Box<ConnectorError> },
    #[error("stopped before {0}")]
    Stopped(&'static str),
}

pub struct BackupOutcome {
    pub point: RestorePoint,
    pub transport: String,
    pub consistency: String,
    /// Problems after the point was committed (e.g. a cleanup step that failed).
    pub warnings: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct BackupOptions {
    pub requested: BackupType,
    pub include: Vec<String>,
    pub labels: Labels,
    pub threads: usize,
    pub quiesce: Quiesce,
    pub change_tracking: ChangeTracking,
    /// Move the data over the storage network (SAN) where the platform offers it; where it
    /// does not, the backup goes over the usual transport and says so in a warning.
    pub lan_free: bool,
    /// Stop, transfer limit and phases, shared with whoever runs the job.
    pub control: Arc<JobControl>,
}

impl BackupOptions {
    /// A backup of every disk with the defaults: no labels, one thread per core, quiesce if the
    /// guest agent answers, change tracking where the disks support it, its own controls.
    pub fn new(requested: BackupType) -> BackupOptions {
        BackupOptions {
            requested,
            include: Vec::new(),
            labels: Labels::default(),
            threads: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2),
            quiesce: Quiesce::IfPossible,
            change_tracking: ChangeTracking::Auto,
            lan_free: false,
            control: JobControl::new(),
        }
    }
}

/// The point an incremental or differential counts from: the newest point for incremental,
/// the newest full for differential; only points that recorded a change id qualify.
fn base_point(store: &Store, vm_key: &str, requested: BackupType) -> Result<Option<RestorePoint>, StoreError> {
    if requested == BackupType::Full {
        return Ok(None);
    }
    let (points, _) = store.scan(Some(vm_key))?;
    Ok(points
        .into_iter()
        .map(|p| p.manifest)
        .filter(|m| requested == BackupType::Incremental || m.backup_type == BackupType::Full)
        .filter(|m| m.disks.iter().any(|d| d.change_id.is_some()))
        .max_by(|a, b| a.started.cmp(&b.started).then(a.point_id.cmp(&b.point_id))))
}

/// A backup whose platform session is open (snapshot, checkpoint and job made), not yet read.
struct Started {
    description: vds_store::VmDescription,
    parent: Option<String>,
    session: Box<dyn crate::connector::BackupSession>,
}

fn start(connector: &dyn Connector, store: &Store, vm: &str, opts: &BackupOptions) -> Result<Started, BackupError> {
    let control = &opts.control;
    if control.stopped() {
        return Err(BackupError::Stopped("it began"));
    }
    control.enter(Phase::SavingConfiguration);
    let description = connector.describe(vm)?;
    let base = base_point(store, &description.key, opts.requested)?;
    let newest_full = base_point(store, &description.key, BackupType::Differential)?;
    // A backup without change tracking makes no change id, so the next incremental still counts
    // from the newest point that has one: its ids must stay on the platform too.
    let newest_tracked = match opts.change_tracking {
        ChangeTracking::Off => base_point(store, &description.key, BackupType::Incremental)?,
        _ => None,
    };
    let plan = BackupPlan {
        requested: opts.requested,
        base: base.as_ref().map(|p| BackupBase {
            disks: p
                .disks
                .iter()
                .map(|d| BaseDisk { key: d.key.clone(), size: d.size, change_id: d.change_id.clone() })
                .collect(),
        }),
        include: opts.include.clone(),
        keep_change_ids: newest_full
            .iter()
            .chain(&newest_tracked)
            .flat_map(|p| p.disks.iter().filter_map(|d| d.change_id.clone()))
            .collect(),
        quiesce: opts.quiesce,
        change_tracking: opts.change_tracking,
        lan_free: opts.lan_free,
        control: control.clone(),
    };
    if control.stopped() {
        return Err(BackupError::Stopped("the snapshot was taken"));
    }
    control.enter(Phase::Snapshotting);
    let session = connector.begin_backup(vm, &plan)?;
    Ok(Started { description, parent: base.map(|p| p.point_id), session })
}

/// Reads a started backup into the store and finishes its session on every path.
fn complete(
    store: &Store,
    started: Started,
    opts: &BackupOptions,
    progress: &mut dyn FnMut(&IngestProgress),
) -> Result<BackupOutcome, BackupError> {
    let Started { description, parent, mut session } = started;
    let transport = session.transport();
    let consistency = session.consistency();
    let mut warnings = session.warnings();
    if opts.lan_free && !session.lan_free() {
        warnings.push(format!("LAN-free transport was asked for but is not available for this VM; used {transport}"));
    }
    let disks = session
        .take_disks()
        .into_iter()
        .map(|d| IngestDisk {
            change_id: session.change_id(&d.key),
            key: d.key,
            source: Box::new(Governed::new(d.source, opts.control.clone())),
            changed: d.changed,
            full_reason: d.full_reason,
        })
        .collect();
    opts.control.enter(Phase::Transferring);
    let control = opts.control.clone();
    let result = store.ingest(
        IngestRequest {
            vm: description,
            backup_type: opts.requested,
            parent,
            disks,
            labels: opts.labels.clone(),
            threads: opts.threads,
            consistency: Some(consistency.clone()),
        },
        &mut |p| {
            if p.stage == IngestStage::Checking {
                control.enter(Phase::CheckingData);
            }
            progress(p)
        },
    );
    let finished = session.finish(result.is_ok());
    match (result, finished) {
        (Ok(point), Ok(())) => Ok(BackupOutcome { point, transport, consistency, warnings }),
        (Ok(point), Err(e)) => {
            warnings.push(format!("the backup is committed, but ending it on the hypervisor failed: {e}"));
            Ok(BackupOutcome { point, transport, consistency, warnings })
        }
        (Err(store), Ok(())) => Err(BackupError::Store(store)),
        (Err(store), Err(cleanup)) => {
            Err(BackupError::StoreAndCleanup { store: Box::new(store), cleanup: Box::new(cleanup) })
        }
    }
}

pub fn backup_vm(
    connector: &dyn Connector,
    store: &Store,
    vm: &str,
    opts: BackupOptions,
    progress: &mut dyn FnMut(&IngestProgress),
) -> Result<BackupOutcome, BackupError> {
    backup_vm_when(connector, store, vm, opts, &mut || true, progress)
}

/// [`backup_vm`], reading the data only once `ready` says so: it is asked after the snapshot is
/// taken and may wait (a job of a parallel run waits there for the other VMs' snapshots and for
/// its turn). When it answers false (the job was stopped meanwhile) the backup ends as stopped,
/// its platform session finished, nothing committed.
pub fn backup_vm_when(
    connector: &dyn Connector,
    store: &Store,
    vm: &str,
    opts: BackupOptions,
    ready: &mut dyn FnMut() -> bool,
    progress: &mut dyn FnMut(&IngestProgress),
) -> Result<BackupOutcome, BackupError> {
    let started = start(connector, store, vm, &opts)?;
    if !ready() {
        started.session.finish(false)?;
        return Err(BackupError::Stopped("its data was read"));
    }
    complete(store, started, &opts, progress)
}

/// How a job with several VMs takes their snapshots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapshotMode {
    /// One VM after another: each VM's snapshot lives only while its own data is read.
    Serial,
    /// Every VM's snapshot first, then the data: the points capture (nearly) one instant, for
    /// applications spread over several VMs. Snapshots live until their VM's turn comes.
    Parallel,
}

/// Backs up several VMs of one job, in order. One VM failing does not stop the others; each
/// gets its own result. `progress` is told which VM it is about.
pub fn backup_vms(
    connector: &dyn Connector,
    store: &Store,
    vms: &[String],
    opts: &BackupOptions,
    mode: SnapshotMode,
    progress: &mut dyn FnMut(&str, &IngestProgress),
) -> Vec<(String, Result<BackupOutcome, BackupError>)> {
    match mode {
        SnapshotMode::Serial => vms
            .iter()
            .map(|vm| {
                let r =
                    start(connector, store, vm, opts).and_then(|s| complete(store, s, opts, &mut |p| progress(vm, p)));
                (vm.clone(), r)
            })
            .collect(),
        SnapshotMode::Parallel => {
            let started: Vec<(String, Result<Started, BackupError>)> =
                vms.iter().map(|vm| (vm.clone(), start(connector, store, vm, opts))).collect();
            started
                .into_iter()
                .map(|(vm, s)| {
                    let r = s.and_then(|s| complete(store, s, opts, &mut |p| progress(&vm, p)));
                    (vm, r)
                })
                .collect()
        }
    }
}
