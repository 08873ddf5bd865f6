//! Restores through the service: a point restored as a new VM or in place, run as a job like a
//! backup (queued under the same limits, states, progress, log, stop, bandwidth windows). The
//! point is held for the whole restore, so retention cannot delete it meanwhile, and a rule
//! whose point a restore reads cannot be deleted until the restore ends.

use super::catalog::now;
use super::jobs::log;
use super::runner::{self, Work};
use super::Service;
use connectors::{Capabilities, CheckError, Connector, JobControl, NewVmSpec, Phase, RestoreCheck};
use std::sync::Arc;
use vds_store::RestorePoint;
use web::*;

/// What a restore writes, checked before it is queued.
enum Mode {
    NewVm(NewVmSpec),
    InPlace,
}

/// A restore: the runner's work of writing one point onto a platform.
struct Restore {
    point: RestorePoint,
    /// The store of the storage target that holds the point.
    store: Arc<vds_store::Store>,
    mode: Mode,
    /// Onto a platform of another kind: the VM converted for it.
    converted: Option<connectors::convert::Converted>,
}

/// Checks a restore request's own fields against what the target platform offers; the error
/// names the field.
fn check(r: &NewRestore, caps: &Capabilities) -> ApiResult<Mode> {
    match r.mode {
        RestoreMode::InPlace => {
            for (field, given) in [
                ("disk_bus", r.disk_bus.is_some()),
                ("nic_model", r.nic_model.is_some()),
                ("name", r.name.is_some()),
                ("storage", r.storage.is_some()),
                ("cpus", r.cpus.is_some()),
                ("memory_mib", r.memory_mib.is_some()),
                ("network", r.network.is_some()),
                ("disk_format", r.disk_format.is_some()),
                ("disk_sizes", !r.disk_sizes.is_empty()),
                ("start", r.start),
                ("keep_macs", r.keep_macs),
            ] {
                if given {
                    return Err(ApiError::field(field, "applies to a restore as a new VM only"));
                }
            }
            Ok(Mode::InPlace)
        }
        RestoreMode::NewVm => {
            let name = r.name.clone().unwrap_or_default();
            if name.trim().is_empty() {
                return Err(ApiError::field("name", "the new VM needs a name"));
            }
            let formats: Vec<&str> = caps.disk_formats.iter().map(|f| f.name).collect();
            let format = match &r.disk_format {
                Some(f) if !formats.contains(&f.as_str()) => {
                    return Err(ApiError::field("disk_format", format!("{f:?}: use {}", formats.join(" or "))));
                }
                Some(f) => Some(f.clone()),
                None => formats.first().map(|f| f.to_string()),
            };
            let storage = match (&r.storage, caps.default_storage) {
                (Some(s), _) if s.trim().is_empty() => return Err(ApiError::field("storage", "must not be empty")),
                (Some(s), _) => s.clone(),
                (None, Some(d)) => d.to_string(),
                (None, None) => {
                    return Err(ApiError::field("storage", format!("name the {} for the new disks", caps.storage_word)))
                }
            };
            if r.cpus.is_some_and(|c| !(1..=1024).contains(&c)) {
                return Err(ApiError::field("cpus", "must be 1-1024"));
            }
            if r.memory_mib.is_some_and(|m| m < 16) {
                return Err(ApiError::field("memory_mib", "must be at least 16"));
            }
            Ok(Mode::NewVm(NewVmSpec {
                name,
                cpus: r.cpus,
                memory_mib: r.memory_mib,
                storage,
                network: r.network.clone(),
                host: r.host.clone().filter(|h| !h.trim().is_empty()),
                disk_format: format,
                disk_sizes: r.disk_sizes.clone(),
                start: r.start,
                keep_macs: r.keep_macs,
            }))
        }
    }
}

/// The point's VM converted for a platform of kind `kind` with the user's choices; a choice it
/// cannot take refused on its field.
fn convert(
    vm: &vds_store::VmDescription,
    kind: &str,
    disk_bus: &Option<String>,
    nic_model: &Option<String>,
) -> ApiResult<connectors::convert::Converted> {
    let choices = connectors::convert::Choices { disk_bus: disk_bus.clone(), nic_model: nic_model.clone() };
    connectors::convert::convert(vm, kind, &choices).map_err(|e| ApiError::field(&e.field, e.message))
}

/// New disk sizes against the point's disks, before anything is queued (the connector checks
/// again when it writes).
fn check_sizes(point: &RestorePoint, sizes: &std::collections::BTreeMap<String, u64>) -> ApiResult<()> {
    let disks: Vec<(&str, u64)> = point.disks.iter().map(|d| (d.key.as_str(), d.size)).collect();
    connectors::restore_sizes(&disks, sizes).map(|_| ()).map_err(|e| ApiError::field("disk_sizes", e))
}

impl Service {
    /// The VM a restore of `r.point` onto `r.platform` would make.
    pub(super) async fn conversion(self: &Arc<Self>, r: ConversionRequest) -> ApiResult<Conversion> {
        let (_, target) = self.job_target(r.platform).await?;
        let kind = target.kind().name();
        let (_, store) = self.point_store(&r.point).await.map_err(|e| ApiError::field("point", e.message))?;
        let point_id = r.point.clone();
        let point = tokio::task::spawn_blocking(move || store.find(&point_id))
            .await
            .map_err(ApiError::internal)?
            .map_err(|e| ApiError::field("point", e.to_string()))?
            .manifest;
        let choice =
            |c: connectors::convert::Offer| DeviceChoice { name: c.name.into(), description: c.description.into() };
        let source = &point.vm;
        if !connectors::convert::needed(source, kind) {
            return Ok(Conversion {
                needed: false,
                source_kind: source.platform.clone(),
                target_kind: kind.into(),
                guest_os: source.guest_os.clone(),
                firmware: source.firmware.clone(),
                cpus: source.cpus,
                memory_mib: source.memory_mib,
                disks: point
                    .disks
                    .iter()
                    .map(|d| ConvertedDisk {
                        point_key: d.key.clone(),
                        key: d.key.clone(),
                        size: d.size,
                        bus: source.disks.iter().find(|v| v.key == d.key).and_then(|v| v.bus.clone()),
                    })
                    .collect(),
                nics: source.nics.clone(),
                disk_buses: vec![],
                nic_models: vec![],
                disk_bus: None,
                nic_model: None,
                decisions: vec![],
            });
        }
        let c = convert(source, kind, &r.disk_bus, &r.nic_model)?;
        let (buses, nics, bus_default, nic_default) = connectors::convert::offers(kind, source)
            .ok_or_else(|| ApiError::field("platform", format!("cannot convert for {kind}")))?;
        let d = &c.description;
        Ok(Conversion {
            needed: true,
            source_kind: source.platform.clone(),
            target_kind: kind.into(),
            guest_os: d.guest_os.clone(),
            firmware: d.firmware.clone(),
            cpus: d.cpus,
            memory_mib: d.memory_mib,
            disks: c
                .disk_keys
                .iter()
                .zip(&d.disks)
                .map(|((p, _), t)| ConvertedDisk {
                    point_key: p.clone(),
                    key: t.key.clone(),
                    size: t.size,
                    bus: t.bus.clone(),
                })
                .collect(),
            nics: d.nics.clone(),
            disk_buses: buses.into_iter().map(choice).collect(),
            nic_models: nics.into_iter().map(choice).collect(),
            disk_bus: Some(r.disk_bus.unwrap_or_else(|| bus_default.into())),
            nic_model: Some(r.nic_model.unwrap_or_else(|| nic_default.into())),
            decisions: c.decisions,
        })
    }

    /// Queues a restore; it runs when the concurrency limits allow.
    pub(super) async fn queue_restore(self: &Arc<Self>, s: &Session, r: NewRestore) -> ApiResult<Job> {
        let (platform_name, target) = self.job_target(r.platform).await?;
        let caps = target.kind().capabilities();
        let mode = check(&r, &caps)?;
        let offered = match mode {
            Mode::InPlace => caps.restore_in_place,
            Mode::NewVm(_) => caps.restore_as_new_vm,
        };
        if !offered {
            return Err(ApiError::field(
                "mode",
                format!("{} platforms do not restore {}", target.kind().title(), r.mode),
            ));
        }
        let (_, store) = self.point_store(&r.point).await.map_err(|e| ApiError::field("point", e.message))?;
        let (finder, point_id) = (store.clone(), r.point.clone());
        let point = tokio::task::spawn_blocking(move || finder.find(&point_id))
            .await
            .map_err(ApiError::internal)?
            .map_err(|e| ApiError::field("point", e.to_string()))?
            .manifest;
        if let Mode::NewVm(spec) = &mode {
            check_sizes(&point, &spec.disk_sizes)?;
        }
        // Onto a platform of another kind: converted first (a choice it cannot take is refused by
        // field); in place needs the point's own kind.
        let kind = target.kind().name();
        let converted = match (&mode, connectors::convert::needed(&point.vm, kind)) {
            (Mode::InPlace, true) => {
                return Err(ApiError::field(
                    "mode",
                    format!(
                        "a {} point restores in place only onto a {} platform",
                        point.vm.platform, point.vm.platform
                    ),
                ))
            }
            (Mode::NewVm(spec), true) => {
                if spec.network.is_none() && !point.vm.nics.is_empty() {
                    return Err(ApiError::field(
                        "network",
                        format!(
                            "choose the network on {platform_name} for the VM's NICs (the point's are {}'s)",
                            point.vm.platform
                        ),
                    ));
                }
                Some(convert(&point.vm, kind, &r.disk_bus, &r.nic_model)?)
            }
            (_, false) => {
                for (field, given) in [("disk_bus", r.disk_bus.is_some()), ("nic_model", r.nic_model.is_some())] {
                    if given {
                        return Err(ApiError::field(
                            field,
                            "applies to a restore onto another kind of platform (onto its own, a VM keeps its devices)",
                        ));
                    }
                }
                None
            }
        };
        // The connector sees the converted VM's disk names, sizes keyed by them.
        let mode = match (mode, &converted) {
            (Mode::NewVm(mut spec), Some(c)) => {
                spec.disk_sizes = spec
                    .disk_sizes
                    .into_iter()
                    .map(|(k, v)| (c.disk_keys.iter().find(|(p, _)| *p == k).map_or(k, |(_, t)| t.clone()), v))
                    .collect();
                Mode::NewVm(spec)
            }
            (mode, _) => mode,
        };
        // What the platform can say now is said now, not as a failed job later.
        let check_target = target.clone();
        let (work, point_vm) = (self.work_dir.clone(), point.vm.key.clone());
        let spec = match &mode {
            Mode::NewVm(spec) => Some(spec.clone()),
            Mode::InPlace => None,
        };
        let checked = tokio::task::spawn_blocking(move || -> Result<(), CheckError> {
            let conn = check_target.connect(&work)?;
            match &spec {
                Some(spec) => conn.check_restore(RestoreCheck::NewVm(spec)),
                None => conn.check_restore(RestoreCheck::InPlace { vm: &point_vm }),
            }
        })
        .await
        .map_err(ApiError::internal)?;
        match checked {
            Ok(()) => {}
            Err(CheckError::Invalid(r)) => return Err(ApiError::field(&r.field, r.message)),
            Err(CheckError::Conflict(r)) => return Err(ApiError::conflict(r.to_string())),
            Err(CheckError::Platform(e)) => return Err(ApiError::upstream(e.to_string())),
        }
        let vm = match &mode {
            Mode::NewVm(spec) => spec.name.clone(),
            Mode::InPlace => point.vm.name.clone(),
        };
        if let Some(busy) = self.active_job(r.platform, &vm).await? {
            return Err(ApiError::conflict(format!(
                "VM {vm} has job {busy} queued or running: wait for it or stop it"
            )));
        }
        let source_platform: Option<(String,)> = sqlx::query_as(
            "SELECT p.name FROM jobs j JOIN platforms p ON p.id = j.platform_id \
             WHERE j.point_id = $1 AND j.kind = 'backup' ORDER BY j.id LIMIT 1",
        )
        .bind(&point.point_id)
        .fetch_optional(&self.db)
        .await
        .map_err(ApiError::internal)?;
        let id = sqlx::query_as::<_, (i64,)>(
            "INSERT INTO jobs (kind, platform_id, vm, backup_type, state, point_id, created, source_kind, \
             source_platform) VALUES ('restore', $1, $2, $3, 'queued', $4, $5, $6, $7) RETURNING id",
        )
        .bind(r.platform)
        .bind(&vm)
        .bind(r.mode.as_str())
        .bind(&point.point_id)
        .bind(now())
        .bind(&point.vm.platform)
        .bind(source_platform.map(|p| p.0))
        .fetch_one(&self.db)
        .await
        .map_err(ApiError::internal)?
        .0;
        let what = match &mode {
            Mode::NewVm(_) => format!("as new VM {vm}"),
            Mode::InPlace => format!("in place onto VM {vm}"),
        };
        let words = format!(
            "restore of point {} ({} backup of {} VM {}, {}) {what} on {platform_name} ({})",
            point.point_id,
            point.backup_type.as_str(),
            point.vm.platform,
            point.vm.name,
            point.started.to_rfc3339(),
            kind
        );
        log(&self.db, id, "info", &format!("queued by {}: {words}", s.user)).await;
        if let Some(c) = &converted {
            for d in &c.decisions {
                log(&self.db, id, "info", d).await;
            }
        }
        self.audit_log(&s.user, "restore started", &format!("job {id}: {words}")).await?;
        let job = runner::Job { id, platform: r.platform, target, vm, place: None };
        let work = Restore { point, store, mode, converted };
        self.launch(id, move |me, control| async move { me.run_work(job, work, control).await });
        self.job_by_id(id).await
    }
}

impl Work for Restore {
    type Done = String;

    fn run(
        &mut self,
        conn: &dyn Connector,
        control: &Arc<JobControl>,
        _ready: &mut dyn FnMut() -> bool,
    ) -> Result<String, String> {
        let point = &self.point;
        // Held until the restore ends: retention keeps the point meanwhile.
        let _hold = self.store.hold_point(&point.vm.key, &point.point_id).map_err(|e| e.to_string())?;
        let readers = self.store.open_disks(&point.point_id).map_err(|e| e.to_string())?;
        let mut disks = connectors::restore_disks(point, &readers);
        let description = match &self.converted {
            Some(c) => {
                // Each disk under the name the target gives it.
                for d in &mut disks {
                    if let Some((_, t)) = c.disk_keys.iter().find(|(p, _)| *p == d.key) {
                        d.key = t.clone();
                    }
                }
                &c.description
            }
            None => &point.vm,
        };
        control.enter(Phase::Transferring);
        match &self.mode {
            Mode::NewVm(spec) => conn
                .restore_as_new_vm(description, &disks, spec, control)
                .map(|vm| format!("restored as new VM {vm}{}", if spec.start { " (started)" } else { "" })),
            Mode::InPlace => conn
                .restore_in_place(&point.vm.key, &disks, control)
                .map(|()| format!("restored in place onto VM {} ({})", point.vm.name, point.vm.key)),
        }
        .map_err(|e| e.to_string())
    }

    async fn completed(self, service: &Arc<Service>, id: i64, done: String, _: &Arc<JobControl>) -> String {
        log(&service.db, id, "info", &format!("completed: {done}")).await;
        self.point.point_id
    }

    fn stopped(&self) -> &'static str {
        match self.mode {
            Mode::InPlace => {
                "stopped by a user: the VM's disks are part-written; it stays shut off until restored again"
            }
            Mode::NewVm(_) => "stopped by a user: the new VM's volumes were removed",
        }
    }
}
