//! Backup rules and the scheduler that runs them. A rule names VMs of one platform (each VM in
//! at most one rule), a full schedule and optionally an incremental or a differential one (not
//! both), a retention policy applied after each successful backup, and quiesce. The scheduler
//! looks every second at what fell due since it last looked: a full wins when both fall due; a
//! VM whose previous run is still queued or running is skipped, and the skip is recorded.

use super::catalog::now;
use super::engine::{backup_type, JobPlan, RuleRun, VmRef};
use super::schedule::{Clock, Runs, Schedule};
use super::Service;
use connectors::{ChangeTracking, Quiesce};
use std::sync::Arc;
use vds_store::{BackupType, RetentionPolicy};
use web::*;

/// A rule's row as the catalog keeps it.
struct RuleRow {
    id: i64,
    name: String,
    platform: i64,
    enabled: i64,
    full: String,
    partial_kind: Option<String>,
    partial_schedule: Option<String>,
    retention: String,
    quiesce: String,
    created: String,
    checked_until: String,
    disks: String,
    delete_data: i64,
    change_tracking: String,
    lan_free: i64,
    storage: i64,
    snapshot_mode: String,
    bandwidth: Option<f64>,
}

impl RuleRow {
    fn read(row: &sqlx::any::AnyRow) -> Result<RuleRow, sqlx::Error> {
        use sqlx::Row;
        Ok(RuleRow {
            id: row.try_get("id")?,
            name: row.try_get("name")?,
            platform: row.try_get("platform_id")?,
            enabled: row.try_get("enabled")?,
            full: row.try_get("full_schedule")?,
            partial_kind: row.try_get("partial_kind")?,
            partial_schedule: row.try_get("partial_schedule")?,
            retention: row.try_get("retention")?,
            quiesce: row.try_get("quiesce")?,
            created: row.try_get("created")?,
            checked_until: row.try_get("checked_until")?,
            disks: row.try_get("disks")?,
            delete_data: row.try_get("delete_data")?,
            change_tracking: row.try_get("change_tracking")?,
            lan_free: row.try_get("lan_free")?,
            storage: row.try_get("storage_id")?,
            snapshot_mode: row.try_get("snapshot_mode")?,
            bandwidth: row.try_get("bandwidth_mb_per_second")?,
        })
    }
}

struct Stored {
    id: i64,
    platform: i64,
    enabled: bool,
    full: Schedule,
    partial: Option<(BackupType, Schedule)>,
    retention: RetentionPolicy,
    quiesce: Quiesce,
    checked_until: String,
    disks: Vec<String>,
    change_tracking: ChangeTracking,
    lan_free: bool,
    storage: i64,
    snapshot_mode: SnapshotMode,
    /// Bytes per second the rule's running jobs share; None: no limit of its own.
    bandwidth: Option<u64>,
}

/// A rule's settings, checked (everything but the name's uniqueness, which the insert checks).
pub(super) struct Checked {
    full: Schedule,
    partial: Option<(BackupType, Schedule)>,
    retention: RetentionPolicy,
    quiesce: String,
    change_tracking: String,
    storage: i64,
    /// When the scheduler starts looking (now, or earlier for a `once` earlier today).
    first_check: String,
    /// The platform's stable id of each of the rule's VMs (in the order of `vms`), where the
    /// platform was asked (an imported rule learns them at each VM's next backup).
    vm_ids: Vec<Option<String>>,
}

fn quiesce_of(s: &str) -> Option<Quiesce> {
    match s {
        "auto" => Some(Quiesce::IfPossible),
        "off" => Some(Quiesce::Off),
        "required" => Some(Quiesce::Required),
        _ => None,
    }
}

fn name_taken(e: sqlx::Error, name: &str) -> ApiError {
    match e {
        sqlx::Error::Database(d) if d.is_unique_violation() => {
            ApiError::conflict(format!("name: a rule named {name:?} exists already"))
        }
        e => ApiError::internal(e),
    }
}

fn check_schedule(field: &str, s: &Schedule, clock: &Clock) -> ApiResult<Schedule> {
    s.validate(field, clock.now()).map_err(ApiError::bad)?;
    Ok(s.clone())
}

impl Service {
    async fn rule_rows(&self) -> ApiResult<Vec<RuleRow>> {
        let rows = sqlx::query(
            "SELECT id, name, platform_id, enabled, full_schedule, partial_kind, partial_schedule, retention, quiesce, \
             created, checked_until, disks, delete_data, change_tracking, lan_free, storage_id, snapshot_mode, \
             bandwidth_mb_per_second FROM rules ORDER BY name",
        )
        .fetch_all(&self.db)
        .await
        .map_err(ApiError::internal)?;
        rows.iter().map(RuleRow::read).collect::<Result<_, _>>().map_err(ApiError::internal)
    }

    async fn rule_vms(&self, id: i64) -> ApiResult<Vec<String>> {
        let rows: Vec<(String,)> = sqlx::query_as("SELECT vm FROM rule_vms WHERE rule_id = $1 ORDER BY vm")
            .bind(id)
            .fetch_all(&self.db)
            .await
            .map_err(ApiError::internal)?;
        Ok(rows.into_iter().map(|(v,)| v).collect())
    }

    fn stored(r: &RuleRow) -> Result<Stored, String> {
        let full = serde_json::from_str(&r.full).map_err(|e| e.to_string())?;
        let partial = match (&r.partial_kind, &r.partial_schedule) {
            (Some(k), Some(s)) => Some((
                BackupType::parse(k).ok_or("bad partial kind")?,
                serde_json::from_str(s).map_err(|e| e.to_string())?,
            )),
            _ => None,
        };
        Ok(Stored {
            id: r.id,
            platform: r.platform,
            enabled: r.enabled != 0,
            full,
            partial,
            retention: serde_json::from_str(&r.retention).map_err(|e| e.to_string())?,
            quiesce: quiesce_of(&r.quiesce).ok_or("bad quiesce")?,
            checked_until: r.checked_until.clone(),
            disks: serde_json::from_str(&r.disks).map_err(|e| e.to_string())?,
            change_tracking: ChangeTracking::parse(&r.change_tracking).ok_or("bad change tracking")?,
            lan_free: r.lan_free != 0,
            storage: r.storage,
            snapshot_mode: SnapshotMode::parse(&r.snapshot_mode).ok_or("bad snapshot mode")?,
            bandwidth: r.bandwidth.map(super::bandwidth::bytes_per_second),
        })
    }

    pub(super) async fn list_rules(&self) -> ApiResult<Vec<Rule>> {
        let mut out = Vec::new();
        let now_t = Clock::from_env().now();
        for r in self.rule_rows().await? {
            let st = Self::stored(&r).map_err(|e| ApiError::server(format!("rule {}: {e}", r.name)))?;
            let next_run = st
                .enabled
                .then(|| {
                    st.full
                        .next_after(now_t)
                        .into_iter()
                        .chain(st.partial.as_ref().and_then(|(_, p)| p.next_after(now_t)))
                        .min()
                })
                .flatten()
                .map(|t| t.to_rfc3339());
            out.push(Rule {
                id: st.id,
                name: r.name,
                platform: st.platform,
                vms: self.rule_vms(st.id).await?,
                enabled: st.enabled,
                partial: st.partial.map(|(kind, schedule)| PartialSchedule {
                    kind: match kind {
                        BackupType::Differential => BackupKind::Differential,
                        _ => BackupKind::Incremental,
                    },
                    schedule,
                }),
                full: st.full,
                retention: st.retention,
                quiesce: r.quiesce,
                disks: st.disks,
                delete_data_with_rule: r.delete_data != 0,
                change_tracking: r.change_tracking,
                lan_free: st.lan_free,
                storage: st.storage,
                snapshot_mode: st.snapshot_mode,
                bandwidth_mb_per_second: r.bandwidth,
                created: r.created,
                next_run,
            });
        }
        Ok(out)
    }

    /// Checks a rule's settings; `own` is the rule being edited (its VMs are not "taken").
    async fn check_rule(&self, r: &NewRule, own: Option<i64>) -> ApiResult<Checked> {
        let mut checked = check_settings(r)?;
        self.check_target("storage", checked.storage).await?;
        let known = self.vms_of(r.platform).await.map_err(|e| {
            if e.problem == Problem::NotFound {
                ApiError::field("platform", e.message)
            } else {
                e
            }
        })?;
        for (i, vm) in r.vms.iter().enumerate() {
            let Some(found) = known.iter().find(|k| &k.name == vm || &k.uuid == vm) else {
                return Err(ApiError::field(&format!("vms[{i}]"), format!("no VM {vm:?} on platform {}", r.platform)));
            };
            checked.vm_ids[i] = Some(found.uuid.clone());
            if let Some((id, rule)) = rule_of_vm(&self.db, r.platform, vm).await?.filter(|(id, _)| Some(*id) != own) {
                return Err(ApiError::conflict(format!("vms[{i}]: VM {vm} is already in rule {rule} (id {id})")));
            }
            if !r.disks.is_empty() {
                self.check_disks(r.platform, vm, &r.disks).await.map_err(|e| {
                    if e.problem == Problem::BadRequest {
                        ApiError::field("disks", e.message)
                    } else {
                        e
                    }
                })?;
            }
        }
        Ok(checked)
    }
}

/// The rule (id, name) that has `vm` of `platform`, if any.
pub(super) async fn rule_of_vm<'c, E: sqlx::Executor<'c, Database = sqlx::Any>>(
    db: E,
    platform: i64,
    vm: &str,
) -> ApiResult<Option<(i64, String)>> {
    sqlx::query_as(
        "SELECT r.id, r.name FROM rule_vms v JOIN rules r ON r.id = v.rule_id WHERE v.platform_id = $1 AND v.vm = $2",
    )
    .bind(platform)
    .bind(vm)
    .fetch_optional(db)
    .await
    .map_err(ApiError::internal)
}

/// Checks what a rule says without asking the hypervisor (schedules, retention, options, lists).
pub(super) fn check_settings(r: &NewRule) -> ApiResult<Checked> {
    let clock = Clock::from_env();
    if r.name.trim().is_empty() {
        return Err(ApiError::field("name", "must not be empty"));
    }
    let full = check_schedule("full", &r.full, &clock)?;
    let partial = match &r.partial {
        None => None,
        Some(p) => {
            if p.kind == BackupKind::Full {
                return Err(ApiError::field("partial.kind", "\"full\": use incremental or differential"));
            }
            Some((backup_type(p.kind), check_schedule("partial.schedule", &p.schedule, &clock)?))
        }
    };
    let retention = r.retention.clone();
    retention.validate().map_err(|e| ApiError::field("retention", e))?;
    let quiesce = r.quiesce.clone().unwrap_or_else(|| "auto".into());
    quiesce_of(&quiesce)
        .ok_or_else(|| ApiError::field("quiesce", format!("{quiesce:?}: use auto, off or required")))?;
    let change_tracking = r.change_tracking.clone().unwrap_or_else(|| "auto".into());
    ChangeTracking::parse(&change_tracking)
        .ok_or_else(|| ApiError::field("change_tracking", format!("{change_tracking:?}: use auto, on or off")))?;
    super::bandwidth::check_rule_limit(r.bandwidth_mb_per_second)?;
    if r.vms.is_empty() {
        return Err(ApiError::field("vms", "at least one VM is needed"));
    }
    for (i, d) in r.disks.iter().enumerate() {
        if d.trim().is_empty() || r.disks[..i].contains(d) {
            return Err(ApiError::field(&format!("disks[{i}]"), format!("{d:?} is empty or given twice")));
        }
    }
    for (i, vm) in r.vms.iter().enumerate() {
        if vm.trim().is_empty() || r.vms[..i].contains(vm) {
            return Err(ApiError::field(&format!("vms[{i}]"), format!("{vm:?} is empty or given twice")));
        }
    }
    let now_t = clock.now();
    let first = partial.as_ref().map(|(_, p)| p.first_check(now_t)).unwrap_or(now_t).min(full.first_check(now_t));
    let storage = r.storage.unwrap_or(super::storage::OWN_TARGET);
    let vm_ids = vec![None; r.vms.len()];
    Ok(Checked { full, partial, retention, quiesce, change_tracking, storage, first_check: first.to_rfc3339(), vm_ids })
}

/// Inserts a checked rule and its VMs (in the caller's transaction); returns its id.
pub(super) async fn insert_rule(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    r: &NewRule,
    c: &Checked,
    platform: i64,
) -> ApiResult<i64> {
    let id = sqlx::query_as::<_, (i64,)>(
        "INSERT INTO rules (name, platform_id, full_schedule, partial_kind, partial_schedule, retention, quiesce, created, \
         checked_until, enabled, disks, delete_data, change_tracking, lan_free, storage_id, snapshot_mode, \
         bandwidth_mb_per_second) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17) \
         RETURNING id",
    )
    .bind(&r.name)
    .bind(platform)
    .bind(serde_json::to_string(&c.full).map_err(ApiError::internal)?)
    .bind(c.partial.as_ref().map(|(k, _)| k.as_str()))
    .bind(c.partial.as_ref().map(|(_, s)| serde_json::to_string(s).unwrap_or_default()))
    .bind(serde_json::to_string(&c.retention).map_err(ApiError::internal)?)
    .bind(&c.quiesce)
    .bind(now())
    .bind(&c.first_check)
    .bind(r.enabled.unwrap_or(true) as i64)
    .bind(serde_json::to_string(&r.disks).map_err(ApiError::internal)?)
    .bind(r.delete_data_with_rule as i64)
    .bind(&c.change_tracking)
    .bind(r.lan_free as i64)
    .bind(c.storage)
    .bind(r.snapshot_mode.as_str())
    .bind(r.bandwidth_mb_per_second)
    .fetch_one(&mut **tx)
    .await
    .map_err(|e| name_taken(e, &r.name))?
    .0;
    Service::save_rule_vms(tx, id, platform, &r.vms, &c.vm_ids).await?;
    Ok(id)
}

impl Service {
    /// Saves a rule's VMs (replacing any), inside the rule's transaction.
    async fn save_rule_vms(
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        id: i64,
        platform: i64,
        vms: &[String],
        ids: &[Option<String>],
    ) -> ApiResult<()> {
        sqlx::query("DELETE FROM rule_vms WHERE rule_id = $1")
            .bind(id)
            .execute(&mut **tx)
            .await
            .map_err(ApiError::internal)?;
        for (vm, vm_id) in vms.iter().zip(ids) {
            sqlx::query("INSERT INTO rule_vms (rule_id, platform_id, vm, vm_id) VALUES ($1, $2, $3, $4)")
                .bind(id)
                .bind(platform)
                .bind(vm)
                .bind(vm_id)
                .execute(&mut **tx)
                .await
                .map_err(ApiError::internal)?;
        }
        Ok(())
    }

    async fn rule_by_id(&self, id: i64) -> ApiResult<Rule> {
        self.list_rules()
            .await?
            .into_iter()
            .find(|x| x.id == id)
            .ok_or_else(|| ApiError::not_found(format!("rule {id}")))
    }

    /// Checks everything before saving anything; the rule and its VMs are saved in one transaction.
    pub(super) async fn add_rule(&self, s: &Session, r: NewRule) -> ApiResult<Rule> {
        let c = self.check_rule(&r, None).await?;
        let mut tx = super::catalog::begin_write(&self.db).await?;
        let id = insert_rule(&mut tx, &r, &c, r.platform).await?;
        tx.commit().await.map_err(ApiError::internal)?;
        self.audit_log(&s.user, "rule added", &format!("{} ({} VMs)", r.name, r.vms.len())).await?;
        self.rule_by_id(id).await
    }

    /// Replaces a rule's settings and VMs in one transaction; the schedule counts from now.
    pub(super) async fn edit_rule(&self, s: &Session, id: i64, r: NewRule) -> ApiResult<Rule> {
        let old = self.rule_by_id(id).await?;
        if r.platform != old.platform {
            return Err(ApiError::field("platform", "a rule's platform cannot change: make a new rule"));
        }
        let c = self.check_rule(&r, Some(id)).await?;
        let mut tx = super::catalog::begin_write(&self.db).await?;
        sqlx::query(
            "UPDATE rules SET name = $1, full_schedule = $2, partial_kind = $3, partial_schedule = $4, retention = $5, \
             quiesce = $6, checked_until = $7, enabled = $8, disks = $9, delete_data = $10, change_tracking = $11, \
             lan_free = $12, storage_id = $13, snapshot_mode = $14, bandwidth_mb_per_second = $15 WHERE id = $16",
        )
        .bind(&r.name)
        .bind(serde_json::to_string(&c.full).map_err(ApiError::internal)?)
        .bind(c.partial.as_ref().map(|(k, _)| k.as_str()))
        .bind(c.partial.as_ref().map(|(_, s)| serde_json::to_string(s).unwrap_or_default()))
        .bind(serde_json::to_string(&c.retention).map_err(ApiError::internal)?)
        .bind(&c.quiesce)
        .bind(&c.first_check)
        .bind(r.enabled.unwrap_or(old.enabled) as i64)
        .bind(serde_json::to_string(&r.disks).map_err(ApiError::internal)?)
        .bind(r.delete_data_with_rule as i64)
        .bind(&c.change_tracking)
        .bind(r.lan_free as i64)
        .bind(c.storage)
        .bind(r.snapshot_mode.as_str())
        .bind(r.bandwidth_mb_per_second)
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(|e| name_taken(e, &r.name))?;
        Self::save_rule_vms(&mut tx, id, r.platform, &r.vms, &c.vm_ids).await?;
        tx.commit().await.map_err(ApiError::internal)?;
        let added: Vec<&String> = r.vms.iter().filter(|v| !old.vms.contains(v)).collect();
        let removed: Vec<&String> = old.vms.iter().filter(|v| !r.vms.contains(v)).collect();
        let detail = format!("{} (VMs added: {added:?}, removed: {removed:?})", r.name);
        self.audit_log(&s.user, "rule changed", &detail).await?;
        self.rule_by_id(id).await
    }

    /// Group start/stop: enables or disables every rule named, or none if one is unknown.
    pub(super) async fn enable_rules(&self, s: &Session, r: RulesState) -> ApiResult<Vec<Rule>> {
        if r.ids.is_empty() {
            return Err(ApiError::field("ids", "name at least one rule"));
        }
        let all = self.list_rules().await?;
        for (i, id) in r.ids.iter().enumerate() {
            if !all.iter().any(|x| x.id == *id) {
                return Err(ApiError::field(&format!("ids[{i}]"), format!("no rule {id}")));
            }
        }
        let clock = Clock::from_env();
        let mut tx = super::catalog::begin_write(&self.db).await?;
        for id in &r.ids {
            // Enabling counts from now: runs missed while disabled are not caught up.
            sqlx::query("UPDATE rules SET enabled = $1, checked_until = $2 WHERE id = $3")
                .bind(r.enabled as i64)
                .bind(clock.now().to_rfc3339())
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(ApiError::internal)?;
        }
        tx.commit().await.map_err(ApiError::internal)?;
        let names: Vec<String> = all.iter().filter(|x| r.ids.contains(&x.id)).map(|x| x.name.clone()).collect();
        let action = if r.enabled { "rules enabled" } else { "rules disabled" };
        self.audit_log(&s.user, action, &names.join(", ")).await?;
        Ok(self.list_rules().await?.into_iter().filter(|x| r.ids.contains(&x.id)).collect())
    }

    /// Everything saving `r` (new, or as rule `own`) would check, saving nothing.
    pub(super) async fn validate_rule(&self, r: &NewRule, own: Option<i64>) -> ApiResult<()> {
        if let Some(own) = own {
            if r.platform != self.rule_by_id(own).await?.platform {
                return Err(ApiError::field("platform", "a rule's platform cannot change: make a new rule"));
            }
        }
        self.check_rule(r, own).await?;
        let taken: Option<(i64,)> = sqlx::query_as("SELECT id FROM rules WHERE name = $1")
            .bind(&r.name)
            .fetch_optional(&self.db)
            .await
            .map_err(ApiError::internal)?;
        match taken {
            Some((id,)) if Some(id) != own => {
                Err(ApiError::conflict(format!("name: a rule named {:?} exists already", r.name)))
            }
            _ => Ok(()),
        }
    }

    pub(super) async fn remove_rule(&self, s: &Session, id: i64, delete_data: Option<bool>) -> ApiResult<()> {
        let row: Option<(String, i64)> = sqlx::query_as("SELECT name, delete_data FROM rules WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.db)
            .await
            .map_err(ApiError::internal)?;
        let (name, stored_choice) = row.ok_or_else(|| ApiError::not_found(format!("rule {id}")))?;
        let delete_data = delete_data.unwrap_or(stored_choice != 0);
        if let Some((job,)) = sqlx::query_as::<_, (i64,)>(&format!(
            "SELECT id FROM jobs WHERE rule_id = $1 AND state IN {}",
            super::jobs::active_states()
        ))
        .bind(id)
        .fetch_optional(&self.db)
        .await
        .map_err(ApiError::internal)?
        {
            return Err(ApiError::conflict(format!("rule {name} has job {job} running: stop it or wait")));
        }
        // A restore reading a point this rule made depends on the rule.
        if let Some((job, point)) = sqlx::query_as::<_, (i64, String)>(&format!(
            "SELECT id, point_id FROM jobs WHERE kind = 'restore' AND state IN {} AND point_id IN \
             (SELECT point_id FROM jobs WHERE rule_id = $1 AND point_id IS NOT NULL)",
            super::jobs::active_states()
        ))
        .bind(id)
        .fetch_optional(&self.db)
        .await
        .map_err(ApiError::internal)?
        {
            return Err(ApiError::conflict(format!(
                "rule {name}: restore job {job} reads point {point}, which this rule made: wait for it or stop it"
            )));
        }
        // The points this rule's jobs made, read before the jobs forget their rule.
        let made: Vec<String> = if delete_data {
            sqlx::query_as::<_, (String,)>("SELECT point_id FROM jobs WHERE rule_id = $1 AND point_id IS NOT NULL")
                .bind(id)
                .fetch_all(&self.db)
                .await
                .map_err(ApiError::internal)?
                .into_iter()
                .map(|(p,)| p)
                .collect()
        } else {
            Vec::new()
        };
        let mut tx = super::catalog::begin_write(&self.db).await?;
        // Jobs keep their history; they just no longer point at a rule.
        sqlx::query("UPDATE jobs SET rule_id = NULL WHERE rule_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(ApiError::internal)?;
        sqlx::query("DELETE FROM rule_vms WHERE rule_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(ApiError::internal)?;
        sqlx::query("DELETE FROM rules WHERE id = $1").bind(id).execute(&mut *tx).await.map_err(ApiError::internal)?;
        tx.commit().await.map_err(ApiError::internal)?;
        if !delete_data {
            return self.audit_log(&s.user, "rule deleted", &name).await;
        }
        let (deleted, kept) = self.delete_points(&made).await;
        let detail = format!("{name}, with its data: {deleted} points deleted; kept: {}", kept.join("; "));
        self.audit_log(&s.user, "rule deleted", &detail).await
    }

    /// Deletes points (their blobs go at the next garbage collection); locked and starred ones
    /// stay. Returns how many went and why the others stayed.
    async fn delete_points(&self, points: &[String]) -> (usize, Vec<String>) {
        let (mut deleted, mut kept) = (0, Vec::new());
        for point in points {
            let store = match self.point_store(point).await {
                Ok((_, store)) => store,
                // Already gone (retention) is what was asked.
                Err(e) if e.problem == Problem::NotFound => continue,
                Err(e) => {
                    kept.push(format!("{point} ({})", e.message));
                    continue;
                }
            };
            let p = point.clone();
            let r = tokio::task::spawn_blocking(move || {
                let entry = store.find(&p)?;
                if entry.labels.star {
                    return Ok(false);
                }
                store.delete_point(&entry.vm, &p).map(|()| true)
            })
            .await;
            match r {
                Ok(Ok(true)) => {
                    deleted += 1;
                    let _ = sqlx::query("DELETE FROM points WHERE point_id = $1").bind(point).execute(&self.db).await;
                }
                Ok(Ok(false)) => kept.push(format!("{point} (starred)")),
                // Already gone (retention) is what was asked.
                Ok(Err(vds_store::StoreError::PointNotFound { .. })) => {}
                Ok(Err(e)) => kept.push(format!("{point} ({e})")),
                Err(e) => kept.push(format!("{point} ({e})")),
            }
        }
        (deleted, kept)
    }

    /// Starts a rule's VMs now (each skipped if its previous run is still going).
    pub(super) async fn run_rule_now(self: &Arc<Self>, s: &Session, id: i64, r: RunRule) -> ApiResult<Vec<Job>> {
        let requested = super::engine::backup_type(r.backup_type);
        let row = self
            .rule_rows()
            .await?
            .into_iter()
            .find(|x| x.id == id)
            .ok_or_else(|| ApiError::not_found(format!("rule {id}")))?;
        let rule = Self::stored(&row).map_err(ApiError::internal)?;
        self.start_rule(&s.user, &rule, requested).await
    }

    async fn start_rule(self: &Arc<Self>, user: &str, rule: &Stored, requested: BackupType) -> ApiResult<Vec<Job>> {
        let mut jobs = Vec::new();
        let run = super::runs::Run::new(rule.id, rule.snapshot_mode, rule.bandwidth);
        let vms: Vec<(String, Option<String>)> =
            sqlx::query_as("SELECT vm, vm_id FROM rule_vms WHERE rule_id = $1 ORDER BY vm")
                .bind(rule.id)
                .fetch_all(&self.db)
                .await
                .map_err(ApiError::internal)?;
        for (name, id) in vms {
            let vm = VmRef { name, id };
            if let Some(busy) = self.active_job(rule.platform, vm.key()).await? {
                self.record_skipped(rule.platform, &vm.name, requested, rule.id, busy).await;
                continue;
            }
            let rule_run = RuleRun {
                rule_id: rule.id,
                retention: rule.retention.clone(),
                disks: rule.disks.clone(),
                change_tracking: rule.change_tracking,
                lan_free: rule.lan_free,
                run: run.clone(),
            };
            let plan = JobPlan { quiesce: rule.quiesce, rule: Some(rule_run), storage: rule.storage };
            let queued = self.enqueue(user, rule.platform, vm, requested, plan).await;
            // Sealed on every path: a run cut short by an error still lets its jobs go.
            if queued.is_err() {
                run.seal();
            }
            jobs.push(queued?);
        }
        run.seal();
        Ok(jobs)
    }

    /// One look at every enabled rule: what fell due since the last look runs now.
    async fn tick(self: &Arc<Self>, clock: &Clock) -> ApiResult<()> {
        let now_t = clock.now();
        for row in self.rule_rows().await? {
            let rule = match Self::stored(&row) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("holdfast: rule {} cannot be read: {e}", row.name);
                    continue;
                }
            };
            let Ok(since) = chrono::DateTime::parse_from_rfc3339(&rule.checked_until) else { continue };
            let since = since.with_timezone(&chrono::Local);
            if now_t <= since {
                continue;
            }
            let due = if !rule.enabled {
                None
            } else if rule.full.due(since, now_t) {
                Some(BackupType::Full)
            } else {
                rule.partial.as_ref().filter(|(_, s)| s.due(since, now_t)).map(|(k, _)| *k)
            };
            sqlx::query("UPDATE rules SET checked_until = $1 WHERE id = $2")
                .bind(now_t.to_rfc3339())
                .bind(rule.id)
                .execute(&self.db)
                .await
                .map_err(ApiError::internal)?;
            if let Some(kind) = due {
                self.start_rule("scheduler", &rule, kind).await?;
            }
        }
        Ok(())
    }

    /// The scheduler: a look every second for the life of the service.
    pub(super) fn start_scheduler(self: &Arc<Self>) {
        let me = self.clone();
        tokio::spawn(async move {
            let clock = Clock::from_env();
            loop {
                if let Err(e) = me.tick(&clock).await {
                    eprintln!("holdfast: scheduler: {e}");
                }
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        });
    }
}
