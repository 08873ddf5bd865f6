//! Platforms: the records of the hypervisors the service reaches, checked, connection-tested,
//! edited and removed through the platform registry. Nothing here knows a platform: a record
//! holds its kind, that kind's settings (one JSON column) and sealed credentials; the kind
//! validates the settings and opens the connection.

use super::catalog::{now, texts};
use super::engine::VmRef;
use super::Service;
use connectors::registry::{self, PlatformKind, Settings};
use connectors::{Connector, ConnectorError, Credentials};
use web::*;

/// What a job needs to reach its platform, on a blocking thread.
#[derive(Clone)]
pub(super) struct Target {
    kind: &'static dyn PlatformKind,
    settings: Settings,
    credentials: Option<Credentials>,
}

impl Target {
    pub(super) fn connect(&self, work_dir: &std::path::Path) -> Result<Box<dyn Connector>, ConnectorError> {
        self.kind.open(&self.settings, self.credentials.as_ref(), work_dir)
    }

    pub(super) fn kind(&self) -> &'static dyn PlatformKind {
        self.kind
    }

    /// Where it points, for logs.
    pub(super) fn summary(&self) -> String {
        self.kind.summary(&self.settings)
    }
}

type PlatformRow = (i64, String, String, String, Option<String>, Option<String>, String);

const PLATFORM_COLUMNS: &str = "id, name, kind, settings, username, secret, reached";

fn parse_settings(text: &str) -> ApiResult<Settings> {
    serde_json::from_str(text).map_err(|e| ApiError::internal(format!("a platform's settings do not parse: {e}")))
}

fn platform(r: PlatformRow) -> ApiResult<Platform> {
    Ok(Platform {
        id: r.0,
        name: r.1,
        kind: r.2,
        settings: parse_settings(&r.3)?,
        username: r.4,
        has_password: r.5.is_some(),
        reached: r.6,
    })
}

/// Saves a platform (its password already sealed); a taken name is a 409.
pub(super) async fn insert_platform<'c, E: sqlx::Executor<'c, Database = sqlx::Any>>(
    db: E,
    p: &NewPlatform,
    secret: Option<&str>,
    reached: &str,
) -> ApiResult<i64> {
    sqlx::query_as::<_, (i64,)>(
        "INSERT INTO platforms (name, kind, settings, username, secret, reached, created) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
    )
    .bind(&p.name)
    .bind(&p.kind)
    .bind(serde_json::Value::Object(p.settings.clone()).to_string())
    .bind(&p.username)
    .bind(secret)
    .bind(reached)
    .bind(now())
    .fetch_one(db)
    .await
    .map(|(id,)| id)
    .map_err(|e| taken_or_internal(e, &p.name))
}

fn taken_or_internal(e: sqlx::Error, name: &str) -> ApiError {
    match e {
        sqlx::Error::Database(d) if d.is_unique_violation() => {
            ApiError::conflict(format!("a platform named {name:?} exists already"))
        }
        e => ApiError::internal(e),
    }
}

/// What a platform must say to be saved (before its connection test): the kind is one this
/// appliance has and its settings are that kind's.
pub(super) fn check_platform(p: &NewPlatform) -> ApiResult<&'static dyn PlatformKind> {
    if p.name.trim().is_empty() {
        return Err(ApiError::field("name", "must not be empty"));
    }
    let kind = registry::kind(&p.kind).map_err(|e| ApiError::field(&e.field, e.message))?;
    kind.check(&p.settings).map_err(|e| ApiError::field(&e.field, e.message))?;
    if p.password.is_some() && p.username.is_none() {
        return Err(ApiError::field("username", "is needed with a password"));
    }
    Ok(kind)
}

fn credentials(username: Option<String>, password: Option<String>) -> Option<Credentials> {
    username.map(|username| Credentials { username, password: password.unwrap_or_default() })
}

/// Every kind this appliance has, with its settings form and capabilities.
pub(super) fn kinds() -> Vec<PlatformKindInfo> {
    registry::kinds()
        .into_iter()
        .map(|k| PlatformKindInfo {
            kind: k.name().to_string(),
            title: k.title().to_string(),
            fields: serde_json::to_value(k.fields()).unwrap_or_default(),
            capabilities: serde_json::to_value(k.capabilities()).unwrap_or_default(),
        })
        .collect()
}

impl Service {
    /// The platform a job names: an unknown one is a 400 on the job's `platform` field.
    pub(super) async fn job_target(&self, id: i64) -> ApiResult<(String, Target)> {
        self.target(id).await.map_err(|e| {
            if e.problem == Problem::NotFound {
                ApiError::field("platform", e.message)
            } else {
                e
            }
        })
    }

    pub(super) async fn target(&self, id: i64) -> ApiResult<(String, Target)> {
        let (_, name, kind, settings, username, secret, _) = self.platform_row(id).await?;
        let kind = registry::kind(&kind).map_err(|e| ApiError::conflict(format!("platform {name}: {}", e.message)))?;
        let password = secret.map(|s| self.open_sealed(&s)).transpose()?;
        Ok((name, Target { kind, settings: parse_settings(&settings)?, credentials: credentials(username, password) }))
    }

    /// Runs blocking connector work off the async threads.
    pub(super) async fn blocking<T: Send + 'static>(
        f: impl FnOnce() -> Result<T, connectors::ConnectorError> + Send + 'static,
    ) -> ApiResult<T> {
        tokio::task::spawn_blocking(f).await.map_err(ApiError::internal)?.map_err(|e| ApiError::upstream(e.to_string()))
    }

    pub(super) async fn list_platforms(&self) -> ApiResult<Vec<Platform>> {
        let rows: Vec<PlatformRow> = sqlx::query_as(&format!("SELECT {PLATFORM_COLUMNS} FROM platforms ORDER BY name"))
            .fetch_all(&self.db)
            .await
            .map_err(ApiError::internal)?;
        rows.into_iter().map(platform).collect()
    }

    async fn platform_row(&self, id: i64) -> ApiResult<PlatformRow> {
        let row: Option<PlatformRow> =
            sqlx::query_as(&format!("SELECT {PLATFORM_COLUMNS} FROM platforms WHERE id = $1"))
                .bind(id)
                .fetch_optional(&self.db)
                .await
                .map_err(ApiError::internal)?;
        row.ok_or_else(|| ApiError::not_found(format!("platform {id}")))
    }

    async fn platform_by_id(&self, id: i64) -> ApiResult<Platform> {
        platform(self.platform_row(id).await?)
    }

    /// The connection test a platform must pass to be saved; its words say what failed, on the
    /// kind's first settings field.
    async fn connection_test(&self, kind: &'static dyn PlatformKind, p: &NewPlatform) -> ApiResult<String> {
        let target = Target {
            kind,
            settings: p.settings.clone(),
            credentials: credentials(p.username.clone(), p.password.clone()),
        };
        let work = self.work_dir.clone();
        let field = kind.fields().first().map_or("settings", |f| f.name);
        Self::blocking(move || target.connect(&work)?.test_connection())
            .await
            .map_err(|e| ApiError::field(field, format!("the connection test failed: {}", e.message)))
    }

    /// Saves a platform after its connection test passes.
    pub(super) async fn add_platform(&self, s: &Session, p: NewPlatform) -> ApiResult<Platform> {
        let kind = check_platform(&p)?;
        let reached = self.connection_test(kind, &p).await?;
        let secret = p.password.as_deref().map(|pw| self.seal(pw));
        let id = insert_platform(&self.db, &p, secret.as_deref(), &reached).await?;
        self.audit_log(&s.user, "platform added", &format!("{} ({})", p.name, kind.summary(&p.settings))).await?;
        self.platform_by_id(id).await
    }

    /// Replaces a platform's name, settings and credentials after a connection test with the new
    /// ones. A password left out keeps the stored one (for the same user name); the kind stays.
    pub(super) async fn edit_platform(&self, s: &Session, id: i64, mut p: NewPlatform) -> ApiResult<Platform> {
        let old = self.platform_by_id(id).await?;
        if p.kind != old.kind {
            return Err(ApiError::field(
                "kind",
                format!("stays {:?}: a platform of another kind is a new platform", old.kind),
            ));
        }
        let kind = check_platform(&p)?;
        let kept = p.password.is_none() && p.username.is_some() && p.username == old.username && old.has_password;
        if kept {
            let (_, target) = self.target(id).await?;
            p.password = target.credentials.map(|c| c.password);
        }
        let reached = self.connection_test(kind, &p).await?;
        let secret = p.password.as_deref().map(|pw| self.seal(pw));
        sqlx::query(
            "UPDATE platforms SET name = $1, settings = $2, username = $3, secret = $4, reached = $5 WHERE id = $6",
        )
        .bind(&p.name)
        .bind(serde_json::Value::Object(p.settings.clone()).to_string())
        .bind(&p.username)
        .bind(secret)
        .bind(&reached)
        .bind(id)
        .execute(&self.db)
        .await
        .map_err(|e| taken_or_internal(e, &p.name))?;
        let detail = format!("{} ({}), was {}", p.name, kind.summary(&p.settings), old.name);
        self.audit_log(&s.user, "platform changed", &detail).await?;
        self.platform_by_id(id).await
    }

    /// Removes a platform no rule and no restore point in the catalog needs, with the history
    /// of its jobs (the audit log keeps that it was removed). Refused, naming what needs it,
    /// while a rule names it, a job of it is queued or running, or a point it made is indexed.
    pub(super) async fn remove_platform(&self, s: &Session, id: i64) -> ApiResult<()> {
        let p = self.platform_by_id(id).await?;
        let rules = texts(&self.db, "SELECT name FROM rules WHERE platform_id = $1 ORDER BY name", id).await?;
        if !rules.is_empty() {
            return Err(ApiError::conflict(format!(
                "platform {} is used by rule {}: delete or move those first",
                p.name,
                rules.join(", ")
            )));
        }
        if let Some((job,)) = sqlx::query_as::<_, (i64,)>(&format!(
            "SELECT id FROM jobs WHERE platform_id = $1 AND state IN {} LIMIT 1",
            super::jobs::active_states()
        ))
        .bind(id)
        .fetch_optional(&self.db)
        .await
        .map_err(ApiError::internal)?
        {
            return Err(ApiError::conflict(format!("platform {} has job {job} queued or running", p.name)));
        }
        let vms = texts(
            &self.db,
            "SELECT DISTINCT p.vm_name FROM points p JOIN jobs j ON j.point_id = p.point_id \
             WHERE j.platform_id = $1 AND j.kind = 'backup' ORDER BY p.vm_name",
            id,
        )
        .await?;
        if !vms.is_empty() {
            return Err(ApiError::conflict(format!(
                "platform {} made the restore points of VM {}: delete those points first (their chains \
                     continue from this platform)",
                p.name,
                vms.join(", ")
            )));
        }
        let mut tx = super::catalog::begin_write(&self.db).await?;
        for sql in [
            "DELETE FROM job_logs WHERE job_id IN (SELECT id FROM jobs WHERE platform_id = $1)",
            "DELETE FROM jobs WHERE platform_id = $1",
            "DELETE FROM platforms WHERE id = $1",
        ] {
            sqlx::query(sql).bind(id).execute(&mut *tx).await.map_err(ApiError::internal)?;
        }
        tx.commit().await.map_err(ApiError::internal)?;
        self.audit_log(&s.user, "platform removed", &p.name).await
    }

    /// Checks that `vm` has every disk in `disks`; the error names the VM and its disks.
    pub(super) async fn check_disks(&self, platform: i64, vm: &str, disks: &[String]) -> ApiResult<()> {
        let (_, target) = self.target(platform).await?;
        let work = self.work_dir.clone();
        let name = vm.to_string();
        let d = Self::blocking(move || target.connect(&work)?.describe(&name)).await?;
        let has: Vec<&str> = d.disks.iter().map(|x| x.key.as_str()).collect();
        match disks.iter().find(|k| !has.contains(&k.as_str())) {
            Some(k) => Err(ApiError::bad(format!("VM {vm} has no disk {k:?} (it has {})", has.join(", ")))),
            None => Ok(()),
        }
    }

    /// The VM a job names (by name or id) as the platform knows it; refuses a VM the platform
    /// does not have (400 on `vm`). A platform that does not answer now is no reason to refuse:
    /// the job waits for it like a scheduled one, and learns the VM's id when it runs.
    pub(super) async fn check_vm(&self, platform: i64, vm: &str) -> ApiResult<VmRef> {
        let (name, target) = self.job_target(platform).await?;
        let (work, wanted) = (self.work_dir.clone(), vm.to_string());
        match tokio::task::spawn_blocking(move || target.connect(&work)?.find_vm(&wanted))
            .await
            .map_err(ApiError::internal)?
        {
            Err(ConnectorError::NoSuchVm { .. }) => {
                Err(ApiError::field("vm", format!("platform {name} has no VM {vm:?} (by name or id)")))
            }
            Ok(found) => Ok(VmRef { name: found.name, id: Some(found.uuid) }),
            Err(_) => Ok(VmRef { name: vm.to_string(), id: None }),
        }
    }

    pub(super) async fn vms_of(&self, id: i64) -> ApiResult<Vec<Vm>> {
        let (_, target) = self.target(id).await?;
        let work = self.work_dir.clone();
        let vms = Self::blocking(move || target.connect(&work)?.list_vms()).await?;
        Ok(vms.into_iter().map(vm_of).collect())
    }

    pub(super) async fn inventory_of(&self, id: i64) -> ApiResult<PlatformInventory> {
        let (_, target) = self.target(id).await?;
        let work = self.work_dir.clone();
        let inv = Self::blocking(move || target.connect(&work)?.inventory()).await?;
        Ok(PlatformInventory {
            hosts: inv
                .hosts
                .into_iter()
                .map(|h| InventoryHost { name: h.name, software: h.software, cpus: h.cpus, memory_mib: h.memory_mib })
                .collect(),
            vms: inv.vms.into_iter().map(vm_of).collect(),
            networks: inv.networks.into_iter().map(|n| InventoryNetwork { name: n.name, active: n.active }).collect(),
            storage: inv
                .storage
                .into_iter()
                .map(|s| InventoryStorage {
                    name: s.name,
                    active: s.active,
                    capacity: s.capacity,
                    available: s.available,
                })
                .collect(),
        })
    }

    /// One VM described by its platform now; a VM the platform lacks is a 404 naming it.
    pub(super) async fn vm_details(&self, id: i64, vm: &str) -> ApiResult<VmDetails> {
        let (name, target) = self.target(id).await?;
        let work = self.work_dir.clone();
        let wanted = vm.to_string();
        let found = tokio::task::spawn_blocking(move || {
            let conn = target.connect(&work)?;
            let summary = conn.find_vm(&wanted)?;
            conn.describe(&summary.name)
        })
        .await
        .map_err(ApiError::internal)?;
        let d = match found {
            Ok(d) => d,
            Err(connectors::ConnectorError::NoSuchVm { .. }) => {
                return Err(ApiError::not_found(format!("VM {vm:?} on platform {name}")))
            }
            Err(e) => return Err(ApiError::upstream(e.to_string())),
        };
        Ok(VmDetails {
            name: d.name,
            uuid: d.uuid,
            cpus: d.cpus,
            memory_mib: d.memory_mib,
            firmware: d.firmware,
            disks: d.disks,
            nics: d.nics,
        })
    }
}

fn vm_of(v: connectors::VmSummary) -> Vm {
    Vm { name: v.name, uuid: v.uuid, running: v.running }
}
