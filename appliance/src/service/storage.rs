//! Storage targets: the stores backups go into. Target 1 is the data directory's own store,
//! made at first start and never removed; an admin adds others (a directory on another disk or
//! a mount), each a new store or an existing one adopted with its points, since a store
//! describes itself. A target that does not open (a disk not mounted) stays listed as
//! unavailable with the cause, is tried again at its next use, and keeps its points in the
//! catalog meanwhile. This module never reads or writes blobs: that is the store's work.

use super::catalog::now;
use super::jobs::{active_states, insert_point};
use super::Service;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use vds_store::{InitOptions, Store, StoreError};
use web::*;

/// The data directory's own store.
pub(super) const OWN_TARGET: i64 = 1;
/// What the own store is called (a name an admin may not take for another target).
const OWN_NAME: &str = "local";

/// (id, name, path, sealed passphrase, created)
type TargetRow = (i64, String, String, Option<String>, String);

/// What a target's directory turned out to hold when it was added.
pub(super) enum Opened {
    /// A store that was there already, with its points.
    Adopted(Store),
    /// A store made just now (removed again if the target is not saved after all).
    Made(Store),
}

impl Opened {
    pub(super) fn into_store(self) -> Store {
        match self {
            Opened::Adopted(s) | Opened::Made(s) => s,
        }
    }
}

/// Removes the stores an add or import made if it does not finish: nothing half-saved.
#[derive(Default)]
pub(super) struct MadeStores(Vec<PathBuf>);

impl MadeStores {
    pub(super) fn add(&mut self, path: &Path) {
        self.0.push(path.to_path_buf());
    }
    /// The target was saved: its store stays.
    pub(super) fn keep(mut self) {
        self.0.clear();
    }
}

impl Drop for MadeStores {
    fn drop(&mut self) {
        for p in &self.0 {
            // Only just made and holding no point: nothing of value is lost.
            let _ = std::fs::remove_dir_all(p);
        }
    }
}

/// Size and free space of the filesystem holding `path` (what non-root users may use).
pub(super) fn fs_space(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs fills the struct we pass; `c` is a valid NUL-terminated path.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    let block = st.f_frsize as u64;
    (st.f_blocks > 0).then(|| (st.f_blocks as u64 * block, st.f_bavail as u64 * block))
}

/// How full a filesystem of `total` bytes with `free` left is, in percent.
fn percent_used((total, free): (u64, u64)) -> f64 {
    100.0 * (total - free) as f64 / total as f64
}

/// How full the filesystem holding `path` is, in percent.
pub(super) fn used_percent(path: &Path) -> Option<f64> {
    fs_space(path).map(percent_used)
}

/// What a new target must say, checked before anything is made (`at` prefixes the fields).
pub(super) fn check_new(t: &NewStorage, at: &str) -> ApiResult<PathBuf> {
    let field = |f: &str| format!("{at}{f}");
    if t.name.trim().is_empty() {
        return Err(ApiError::field(&field("name"), "must not be empty"));
    }
    let path = PathBuf::from(&t.path);
    if !path.is_absolute() || path.components().any(|c| matches!(c, Component::ParentDir | Component::CurDir)) {
        return Err(ApiError::field(&field("path"), format!("{:?} is not an absolute path without . or ..", t.path)));
    }
    if t.passphrase.as_ref().is_some_and(|p| p.len() < 10) {
        return Err(ApiError::field(&field("passphrase"), "use at least 10 characters"));
    }
    if let Some(level) = t.zstd_level {
        if !(1..=19).contains(&level) {
            return Err(ApiError::field(&field("zstd_level"), format!("{level} is not from 1 to 19")));
        }
    }
    Ok(path)
}

/// Adopts the store at `path` or makes one there (an empty or missing directory). Errors name
/// the field at fault (`at` prefixes it) and the path.
fn open_or_make(t: &NewStorage, path: &Path, at: &str) -> ApiResult<Opened> {
    let field = |f: &str| format!("{at}{f}");
    let shown = path.display();
    if path.join("store.json").exists() {
        if let Some(level) = t.zstd_level {
            return Err(ApiError::field(
                &field("zstd_level"),
                format!("{level}: {shown} holds a store already, which keeps its own settings"),
            ));
        }
        let store = Store::open(path, t.passphrase.as_deref().map(str::as_bytes)).map_err(|e| match e {
            StoreError::Dedupe(dedupe::DedupeError::WrongPassphrase) => {
                ApiError::field(&field("passphrase"), format!("is not the passphrase of the store at {shown}"))
            }
            e => ApiError::field(&field("path"), format!("the store at {shown} cannot be opened: {e}")),
        })?;
        match (store.config().encryption.is_some(), t.passphrase.is_some()) {
            (true, false) => {
                return Err(ApiError::field(
                    &field("passphrase"),
                    format!("the store at {shown} is encrypted: give it"),
                ))
            }
            (false, true) => {
                return Err(ApiError::field(
                    &field("passphrase"),
                    format!("the store at {shown} is not encrypted (a store is encrypted when it is made)"),
                ))
            }
            _ => {}
        }
        return Ok(Opened::Adopted(store));
    }
    match std::fs::read_dir(path) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(ApiError::field(
                    &field("path"),
                    format!(
                        "{shown} holds files but no Holdfast store (no store.json): give an empty or new directory"
                    ),
                ));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(ApiError::field(&field("path"), format!("{shown} cannot be used: {e}"))),
    }
    let opts = InitOptions {
        zstd_level: t.zstd_level.unwrap_or(InitOptions::default().zstd_level),
        passphrase: t.passphrase.as_ref().map(|p| p.as_bytes().to_vec()),
        ..InitOptions::default()
    };
    Store::init(path, opts)
        .map(Opened::Made)
        .map_err(|e| ApiError::field(&field("path"), format!("no store can be made at {shown}: {e}")))
}

/// `open_or_make` on a blocking thread; gives the request back with the outcome.
pub(super) async fn open_blocking(t: NewStorage, path: &Path, at: &str) -> ApiResult<(NewStorage, Opened)> {
    let (path, at) = (path.to_path_buf(), at.to_string());
    let (t, opened) = tokio::task::spawn_blocking(move || {
        let r = open_or_make(&t, &path, &at);
        (t, r)
    })
    .await
    .map_err(ApiError::internal)?;
    Ok((t, opened?))
}

impl Service {
    fn ready(&self, mut store: Store) -> Arc<Store> {
        if let Some(clock) = &self.store_clock {
            store.set_clock(clock.clone());
        }
        Arc::new(store)
    }

    /// Records the data directory's own store as target 1 (its path follows the data
    /// directory), makes it on first start, and opens every other target; one that does not
    /// open is left for its next use, and the log says why.
    pub(super) async fn open_targets(&self, own: &Path) -> anyhow::Result<()> {
        let own_path = own.display().to_string();
        let has: Option<(i64,)> = sqlx::query_as("SELECT id FROM storage_targets WHERE id = $1")
            .bind(OWN_TARGET)
            .fetch_optional(&self.db)
            .await?;
        if has.is_none() {
            // The table's first row: id 1 on SQLite and PostgreSQL alike, without touching
            // PostgreSQL's sequence by hand.
            let (id,): (i64,) = sqlx::query_as(
                "INSERT INTO storage_targets (name, path, secret, created) VALUES ($1, $2, NULL, $3) RETURNING id",
            )
            .bind(OWN_NAME)
            .bind(&own_path)
            .bind(now())
            .fetch_one(&self.db)
            .await?;
            anyhow::ensure!(id == OWN_TARGET, "the catalog's storage targets start at id {id}, not {OWN_TARGET}");
        } else {
            sqlx::query("UPDATE storage_targets SET path = $1 WHERE id = $2")
                .bind(&own_path)
                .bind(OWN_TARGET)
                .execute(&self.db)
                .await?;
        }
        let store = if own.join("store.json").exists() {
            Store::open(own, None)
        } else {
            Store::init(own, InitOptions::default())
        };
        let store = store.map_err(|e| anyhow::anyhow!("opening the store {own_path}: {e}"))?;
        let ready = self.ready(store);
        self.stores.write().expect("stores lock").insert(OWN_TARGET, ready);
        for (id, name, path, _, _) in self.target_rows().await? {
            if id != OWN_TARGET {
                if let Err(e) = self.store(id).await {
                    eprintln!("holdfast: storage target {name} ({path}) is unavailable for now: {}", e.message);
                }
            }
        }
        Ok(())
    }

    pub(super) async fn target_rows(&self) -> ApiResult<Vec<TargetRow>> {
        sqlx::query_as("SELECT id, name, path, secret, created FROM storage_targets ORDER BY id")
            .fetch_all(&self.db)
            .await
            .map_err(ApiError::internal)
    }

    pub(super) async fn target_row(&self, id: i64) -> ApiResult<TargetRow> {
        sqlx::query_as("SELECT id, name, path, secret, created FROM storage_targets WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.db)
            .await
            .map_err(ApiError::internal)?
            .ok_or_else(|| ApiError::not_found(format!("storage target {id}")))
    }

    /// Checks that target `id` exists (a 400 on `field` otherwise).
    pub(super) async fn check_target(&self, field: &str, id: i64) -> ApiResult<()> {
        self.target_row(id).await.map(|_| ()).map_err(|e| ApiError::field(field, e.message))
    }

    /// The store of target `id`, opened now if it was not open.
    pub(super) async fn store(&self, id: i64) -> ApiResult<Arc<Store>> {
        if let Some(s) = self.stores.read().expect("stores lock").get(&id) {
            return Ok(s.clone());
        }
        let (_, name, path, secret, _) = self.target_row(id).await?;
        let passphrase = secret.as_deref().map(|s| self.open_sealed(s)).transpose()?;
        let at = path.clone();
        let opened =
            tokio::task::spawn_blocking(move || Store::open(Path::new(&at), passphrase.as_deref().map(str::as_bytes)))
                .await
                .map_err(ApiError::internal)?
                .map_err(|e| {
                    ApiError::new(Problem::Unavailable, format!("storage target {name} ({path}) is unavailable: {e}"))
                })?;
        let ready = self.ready(opened);
        Ok(self.stores.write().expect("stores lock").entry(id).or_insert(ready).clone())
    }

    /// Every target that is open now, with its name.
    pub(super) async fn open_stores(&self) -> Vec<(i64, String, Arc<Store>)> {
        let rows = self.target_rows().await.unwrap_or_default();
        let stores = self.stores.read().expect("stores lock");
        rows.into_iter().filter_map(|(id, name, ..)| stores.get(&id).map(|s| (id, name, s.clone()))).collect()
    }

    /// Targets whose store does not open now, with why. An open store whose directory has gone
    /// (a disk unmounted under it) is closed first, so its next use opens it again.
    pub(super) async fn unavailable_targets(&self) -> Vec<(i64, String, String)> {
        let mut out = Vec::new();
        for (id, name, ..) in self.target_rows().await.unwrap_or_default() {
            let open = self.stores.read().expect("stores lock").get(&id).cloned();
            if let Some(store) = open {
                if store.root().join("store.json").exists() {
                    continue;
                }
                self.stores.write().expect("stores lock").remove(&id);
            }
            if let Err(e) = self.store(id).await {
                out.push((id, name, e.message));
            }
        }
        out
    }

    /// The target holding `point` and its store: the catalog says which, and a point the
    /// catalog does not know yet (made beside the service) is looked for in every open store.
    pub(super) async fn point_store(&self, point: &str) -> ApiResult<(i64, Arc<Store>)> {
        let known: Option<(i64,)> = sqlx::query_as("SELECT storage_id FROM points WHERE point_id = $1")
            .bind(point)
            .fetch_optional(&self.db)
            .await
            .map_err(ApiError::internal)?;
        if let Some((id,)) = known {
            return Ok((id, self.store(id).await?));
        }
        for (id, _, store) in self.open_stores().await {
            let (s, p) = (store.clone(), point.to_string());
            let found = tokio::task::spawn_blocking(move || s.find(&p).is_ok()).await.map_err(ApiError::internal)?;
            if found {
                return Ok((id, store));
            }
        }
        Err(ApiError::not_found(format!("restore point {point} in any storage target")))
    }

    /// Indexes every point of target `id`'s store in the catalog, replacing what it said of that
    /// target; damaged points are left out and named in the service log. Returns the count.
    pub(super) async fn index_target(&self, id: i64, store: Arc<Store>) -> anyhow::Result<usize> {
        let (points, damaged) = tokio::task::spawn_blocking(move || store.scan(None)).await??;
        for (vm, point, e) in damaged {
            eprintln!("holdfast: point {point} of VM {vm} cannot be read and is not in the catalog: {e}");
        }
        let mut tx = self.db.begin().await?;
        sqlx::query("DELETE FROM points WHERE storage_id = $1").bind(id).execute(&mut *tx).await?;
        for p in &points {
            insert_point(&mut *tx, &p.manifest, &p.labels, id).await?;
        }
        tx.commit().await?;
        Ok(points.len())
    }

    pub(super) async fn list_storage(&self) -> ApiResult<Vec<StorageTarget>> {
        let mut out = Vec::new();
        for row in self.target_rows().await? {
            out.push(self.describe_target(row).await?);
        }
        Ok(out)
    }

    pub(super) async fn describe_target(
        &self,
        (id, name, path, secret, created): TargetRow,
    ) -> ApiResult<StorageTarget> {
        let error = self.store(id).await.err().map(|e| e.message);
        let space = fs_space(Path::new(&path));
        let (points, stored_bytes, protected_bytes): (i64, i64, i64) = sqlx::query_as(
            "SELECT COUNT(*), CAST(COALESCE(SUM(stored_bytes), 0) AS BIGINT), \
             CAST(COALESCE(SUM(protected_bytes), 0) AS BIGINT) FROM points WHERE storage_id = $1",
        )
        .bind(id)
        .fetch_one(&self.db)
        .await
        .map_err(ApiError::internal)?;
        Ok(StorageTarget {
            id,
            name,
            path: path.clone(),
            encrypted: secret.is_some(),
            available: error.is_none(),
            error,
            total_bytes: space.map(|s| s.0),
            free_bytes: space.map(|s| s.1),
            used_percent: space.map(percent_used),
            points,
            stored_bytes,
            protected_bytes,
            health: self.health(id).await?,
            created,
        })
    }

    /// Refuses a name or path another target has, or a path inside another target's (or
    /// around it): two stores must not share files.
    pub(super) async fn check_free(&self, t: &NewStorage, path: &Path, at: &str) -> ApiResult<()> {
        if t.name == OWN_NAME {
            return Err(ApiError::conflict(format!("{at}name: {OWN_NAME:?} is the appliance's own store")));
        }
        for (_, name, other, ..) in self.target_rows().await? {
            if name == t.name {
                return Err(ApiError::conflict(format!("{at}name: a storage target named {name:?} exists already")));
            }
            let other = Path::new(&other);
            if path.starts_with(other) || other.starts_with(path) {
                return Err(ApiError::conflict(format!(
                    "{at}path: {} overlaps storage target {name} ({})",
                    path.display(),
                    other.display()
                )));
            }
        }
        Ok(())
    }

    /// Saves a target's row (its passphrase sealed) in the caller's transaction.
    pub(super) async fn insert_target(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        t: &NewStorage,
        path: &Path,
    ) -> ApiResult<i64> {
        let secret = t.passphrase.as_deref().map(|p| self.seal(p));
        sqlx::query_as::<_, (i64,)>(
            "INSERT INTO storage_targets (name, path, secret, created) VALUES ($1, $2, $3, $4) RETURNING id",
        )
        .bind(&t.name)
        .bind(path.display().to_string())
        .bind(secret)
        .bind(now())
        .fetch_one(&mut **tx)
        .await
        .map(|(id,)| id)
        .map_err(|e| match e {
            sqlx::Error::Database(d) if d.is_unique_violation() => {
                ApiError::conflict(format!("name: a storage target named {:?} or at {} exists", t.name, path.display()))
            }
            e => ApiError::internal(e),
        })
    }

    /// Puts a saved target's store in service and indexes its points.
    pub(super) async fn attach_target(&self, id: i64, store: Store) -> ApiResult<usize> {
        let ready = self.ready(store);
        self.stores.write().expect("stores lock").insert(id, ready.clone());
        self.index_target(id, ready).await.map_err(ApiError::internal)
    }

    pub(super) async fn add_storage(&self, s: &Session, t: NewStorage) -> ApiResult<StorageTarget> {
        let path = check_new(&t, "")?;
        self.check_free(&t, &path, "").await?;
        let (t, opened) = open_blocking(t, &path, "").await?;
        let mut made = MadeStores::default();
        if matches!(opened, Opened::Made(_)) {
            made.add(&path);
        }
        let adopted = matches!(opened, Opened::Adopted(_));
        let mut tx = super::catalog::begin_write(&self.db).await?;
        let id = self.insert_target(&mut tx, &t, &path).await?;
        tx.commit().await.map_err(ApiError::internal)?;
        made.keep();
        let points = self.attach_target(id, opened.into_store()).await?;
        let what = if adopted { format!("adopted a store with {points} points") } else { "a new store".to_string() };
        self.audit_log(&s.user, "storage target added", &format!("{} ({}): {what}", t.name, path.display())).await?;
        self.describe_target(self.target_row(id).await?).await
    }

    /// Forgets a target: refused for the own store, for a target a rule writes into, and while
    /// a job writes into it or a restore reads from it. Its files stay where they are, so it
    /// can be adopted again.
    pub(super) async fn remove_storage(&self, s: &Session, id: i64) -> ApiResult<()> {
        let (_, name, path, ..) = self.target_row(id).await?;
        if id == OWN_TARGET {
            return Err(ApiError::conflict(format!("storage target {name} is the appliance's own store: it stays")));
        }
        let names =
            super::catalog::texts(&self.db, "SELECT name FROM rules WHERE storage_id = $1 ORDER BY name", id).await?;
        if !names.is_empty() {
            return Err(ApiError::conflict(format!(
                "storage target {name} is used by rules {}: move them to another target first",
                names.join(", ")
            )));
        }
        let busy: Option<(i64,)> = sqlx::query_as(&format!(
            "SELECT id FROM jobs WHERE state IN {} AND (storage_id = $1 OR (kind = 'restore' AND \
             point_id IN (SELECT point_id FROM points WHERE storage_id = $1)))",
            active_states()
        ))
        .bind(id)
        .fetch_optional(&self.db)
        .await
        .map_err(ApiError::internal)?;
        if let Some((job,)) = busy {
            return Err(ApiError::conflict(format!(
                "storage target {name} is in use by job {job}: wait for it or stop it"
            )));
        }
        if let Some(kind) = self.checks.lock().expect("checks lock").keys().find(|(t, _)| *t == id).map(|(_, k)| *k) {
            return Err(ApiError::conflict(format!(
                "storage target {name}: its {} runs: wait for it to end",
                kind.as_str()
            )));
        }
        let mut tx = super::catalog::begin_write(&self.db).await?;
        // Its health results go with it: a target added later may get the same id.
        for kind in StorageCheckKind::ALL {
            sqlx::query("DELETE FROM settings WHERE name = $1")
                .bind(super::health::key(id, kind.as_str()))
                .execute(&mut *tx)
                .await
                .map_err(ApiError::internal)?;
        }
        let points = sqlx::query("DELETE FROM points WHERE storage_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(ApiError::internal)?
            .rows_affected();
        sqlx::query("DELETE FROM storage_targets WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(ApiError::internal)?;
        tx.commit().await.map_err(ApiError::internal)?;
        self.stores.write().expect("stores lock").remove(&id);
        let detail = format!("{name} ({path}): its {points} points left the catalog; the store's files are kept");
        self.audit_log(&s.user, "storage target removed", &detail).await
    }
}
