//! The store on disk:
//!   store.json                     configuration (config.rs)
//!   blobs/<3 hex>/<64 hex>         chunks, extent records and disk maps (dedupe's chunk store)
//!   points/<vm key>/<point>.point  restore point manifests (manifest.rs)
//!   points/<vm key>/<point>.labels star and retain-until
//!   locks/                         gc lock, running writers' registrations
//!   tmp/                           staging; anything here may be deleted when no writer runs
//! Opening a store needs nothing but this directory: no catalog, no database.

use crate::config::*;
use crate::error::{Result, StoreError};
use crate::fslock::{self, flock, set_immutable, write_atomic, WriterRegistration};
use crate::manifest::{Labels, RestorePoint};
use chrono::{DateTime, Utc};
use dedupe::{BlobCodec, ChunkStore, ChunkerParams, Compression, KdfParams, MasterKey, WrappedKey};
use std::fs::{self, File};
use std::path::{Path, PathBuf};

pub struct Store {
    root: PathBuf,
    config: StoreConfig,
    chunks: ChunkStore,
    clock: Option<Clock>,
    /// The last time `now` gave from `clock`: a clock held still (a test's) still gives each
    /// point its own, later time, so "the newest point" stays well defined.
    last: std::sync::Mutex<Option<DateTime<Utc>>>,
}

/// Where a store's "now" comes from when it is not the system clock (a service's test clock).
pub type Clock = std::sync::Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

/// Choices made once, when a store is created.
#[derive(Clone, Debug)]
pub struct InitOptions {
    pub extent_size: u32,
    pub chunker: ChunkerParams,
    pub zstd_level: i32,
    pub passphrase: Option<Vec<u8>>,
    /// Argon2id cost; lowered only by tests.
    pub kdf_memory_kib: u32,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            extent_size: DEFAULT_EXTENT_SIZE,
            chunker: ChunkerParams::DEFAULT,
            zstd_level: DEFAULT_ZSTD_LEVEL,
            passphrase: None,
            kdf_memory_kib: 64 * 1024,
        }
    }
}

/// A point as found on disk, with its labels.
#[derive(Clone, Debug)]
pub struct PointEntry {
    pub vm: String,
    pub point_id: String,
    pub manifest: RestorePoint,
    pub labels: Labels,
}

pub fn validate_key(what: &'static str, value: &str) -> Result<()> {
    let ok = !value.is_empty()
        && value.len() <= 128
        && !value.starts_with('.')
        && value.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(StoreError::InvalidName {
            what,
            value: value.into(),
            why: "use 1-128 of A-Z a-z 0-9 . _ -, not starting with .",
        })
    }
}

/// The longest lock a point can be given.
pub const MAX_LOCK_DAYS: u32 = 36_500;

/// `now` plus `days`, refused past [`MAX_LOCK_DAYS`] (and never overflowing).
pub fn lock_until_days(now: DateTime<Utc>, days: u32) -> Result<DateTime<Utc>> {
    if days == 0 || days > MAX_LOCK_DAYS {
        return Err(StoreError::Invalid(format!("a lock of {days} days: give 1 to {MAX_LOCK_DAYS} days (100 years)")));
    }
    Ok(now + chrono::Duration::days(days as i64))
}

/// A lock must end after `now` and at most [`MAX_LOCK_DAYS`] later: one in the past protects
/// nothing, and one beyond that is a typing error, not a retention policy.
pub fn check_lock_until(until: DateTime<Utc>, now: DateTime<Utc>) -> Result<()> {
    if until <= now {
        return Err(StoreError::Invalid(format!(
            "a lock until {} protects nothing: that time has passed (now {})",
            until.to_rfc3339(),
            now.to_rfc3339()
        )));
    }
    if until > now + chrono::Duration::days(MAX_LOCK_DAYS as i64) {
        return Err(StoreError::Invalid(format!(
            "a lock until {} is more than {MAX_LOCK_DAYS} days (100 years) away",
            until.to_rfc3339()
        )));
    }
    Ok(())
}

/// A new store goes into a missing or empty directory (a filesystem's own lost+found, and the
/// empty directories of an interrupted `init`, aside), so `init` never mixes a store into
/// someone's files.
fn check_empty(root: &Path) -> Result<()> {
    let entries = match fs::read_dir(root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(StoreError::io(format!("looking into {}", root.display()), e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| StoreError::io(format!("looking into {}", root.display()), e))?;
        let name = entry.file_name();
        // The empty skeleton of an `init` killed before it wrote store.json may be reused.
        let skeleton = ["blobs", "points", "locks", "tmp"].iter().any(|d| name == *d)
            && fs::read_dir(entry.path()).is_ok_and(|mut d| d.next().is_none());
        if name != "lost+found" && !skeleton {
            return Err(StoreError::NotEmpty {
                path: root.to_path_buf(),
                example: entry.file_name().to_string_lossy().into_owned(),
            });
        }
    }
    Ok(())
}

impl Store {
    pub fn init(root: &Path, opts: InitOptions) -> Result<Store> {
        if root.join(CONFIG_FILE).exists() {
            return Err(StoreError::AlreadyAStore { path: root.to_path_buf() });
        }
        check_empty(root)?;
        let (hash, encryption) = match &opts.passphrase {
            None => ("blake3", None),
            Some(pass) => {
                let master = MasterKey::generate()?;
                let mut kdf = KdfParams::new_random()?;
                kdf.m_cost_kib = opts.kdf_memory_kib;
                let wrapped = WrappedKey::wrap(&master, pass, kdf)?;
                ("blake3-keyed", Some(EncryptionConfig::from_wrapped(&wrapped)))
            }
        };
        let config = StoreConfig {
            format: STORE_FORMAT.into(),
            version: STORE_VERSION,
            store_id: fslock::random_hex(16),
            created: Utc::now(),
            extent_size: opts.extent_size,
            chunker: ChunkerConfig {
                algorithm: "fastcdc-2020".into(),
                min: opts.chunker.min,
                avg: opts.chunker.avg,
                max: opts.chunker.max,
            },
            hash: hash.into(),
            compression: CompressionConfig { algorithm: "zstd".into(), level: opts.zstd_level },
            encryption,
        };
        // Refuse bad geometry before anything is created.
        config.check().map_err(StoreError::Invalid)?;
        for d in ["blobs", "points", "locks", "tmp"] {
            fs::create_dir_all(root.join(d))
                .map_err(|e| StoreError::io(format!("creating {}", root.join(d).display()), e))?;
        }
        let text = serde_json::to_vec_pretty(&config).expect("config serialises");
        write_atomic(&root.join("tmp"), &root.join(CONFIG_FILE), &text)?;
        let cfg = StoreConfig::load(root)?;
        Store::open_with(root, cfg, opts.passphrase.as_deref())
    }

    /// Opens a store, first finishing what killed writers left unfinished (a lock half
    /// committed: protect.rs). An encrypted store opened without its passphrase can be listed,
    /// pruned and checked for bit rot, but not read, written, locked or garbage-collected (its
    /// disk maps and extent records, which name the chunks, are encrypted too).
    pub fn open(root: &Path, passphrase: Option<&[u8]>) -> Result<Store> {
        let cfg = StoreConfig::load(root)?;
        let store = Store::open_with(root, cfg, passphrase)?;
        store.reap_dead_writers()?;
        Ok(store)
    }

    fn open_with(root: &Path, config: StoreConfig, passphrase: Option<&[u8]>) -> Result<Store> {
        let compression = match config.compression.algorithm.as_str() {
            "none" => Compression::None,
            _ => Compression::Zstd { level: config.compression.level },
        };
        let codec = match (&config.encryption, passphrase) {
            (None, _) => BlobCodec::plain(compression),
            (Some(_), None) => BlobCodec::keyless(compression),
            (Some(enc), Some(pass)) => {
                let wrapped =
                    enc.wrapped().map_err(|cause| StoreError::ConfigDamaged { path: root.join(CONFIG_FILE), cause })?;
                BlobCodec::encrypted(&wrapped.unwrap(pass)?, compression)
            }
        };
        let chunks = ChunkStore::new(root.join("blobs"), root.join("tmp"), codec);
        Ok(Store { root: root.to_path_buf(), config, chunks, clock: None, last: Default::default() })
    }

    /// Takes "now" from `clock`: the times points are stamped with, the day retention counts
    /// from and the end of retention locks all follow it.
    pub fn set_clock(&mut self, clock: Clock) {
        self.clock = Some(clock);
    }

    pub fn now(&self) -> DateTime<Utc> {
        let Some(clock) = &self.clock else { return Utc::now() };
        let mut last = self.last.lock().expect("clock lock");
        let t = match (clock(), *last) {
            (t, Some(l)) if t <= l => l + chrono::Duration::microseconds(1),
            (t, _) => t,
        };
        *last = Some(t);
        t
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    pub fn chunks(&self) -> &ChunkStore {
        &self.chunks
    }

    /// Fails with a clear error when the store is encrypted and was opened without its key.
    pub fn require_key(&self) -> Result<()> {
        if self.chunks.codec().has_key() {
            Ok(())
        } else {
            Err(StoreError::KeyNeeded { path: self.root.clone() })
        }
    }

    /// Changes the zstd level this handle uses for new blobs (existing blobs keep theirs).
    pub fn set_zstd_level(&mut self, level: i32) -> Result<()> {
        if !(-7..=22).contains(&level) {
            return Err(StoreError::Invalid(format!("zstd level {level} is outside -7..=22")));
        }
        self.config.compression.level = level;
        let codec = self.chunks.codec().with_compression(Compression::Zstd { level });
        self.chunks = ChunkStore::new(self.root.join("blobs"), self.root.join("tmp"), codec);
        Ok(())
    }

    pub fn vm_dir(&self, vm: &str) -> PathBuf {
        self.root.join("points").join(vm)
    }

    pub fn manifest_path(&self, vm: &str, point: &str) -> PathBuf {
        self.vm_dir(vm).join(format!("{point}.point"))
    }

    pub fn labels_path(&self, vm: &str, point: &str) -> PathBuf {
        self.vm_dir(vm).join(format!("{point}.labels"))
    }

    /// VM keys that have points, sorted.
    pub fn vms(&self) -> Result<Vec<String>> {
        let dir = self.root.join("points");
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).map_err(|e| StoreError::io(format!("listing {}", dir.display()), e))? {
            let entry = entry.map_err(|e| StoreError::io(format!("listing {}", dir.display()), e))?;
            if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                out.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        out.sort();
        Ok(out)
    }

    /// Point ids of a VM, oldest first (ids sort by time).
    pub fn point_ids(&self, vm: &str) -> Result<Vec<String>> {
        let dir = self.vm_dir(vm);
        let mut out = Vec::new();
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(StoreError::io(format!("listing {}", dir.display()), e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| StoreError::io(format!("listing {}", dir.display()), e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(id) = name.strip_suffix(".point") {
                out.push(id.to_string());
            }
        }
        out.sort();
        Ok(out)
    }

    /// Every point of the store (or of one VM), oldest first per VM. A damaged manifest is an
    /// error naming it; use `scan` to list around damage.
    pub fn points(&self, vm: Option<&str>) -> Result<Vec<PointEntry>> {
        let (ok, bad) = self.scan(vm)?;
        if let Some((_, _, e)) = bad.into_iter().next() {
            return Err(e);
        }
        Ok(ok)
    }

    /// Reads every manifest; returns the readable points and, separately, the damaged ones.
    /// This is how a fresh appliance rebuilds its catalog from the store alone.
    #[allow(clippy::type_complexity)]
    pub fn scan(&self, vm: Option<&str>) -> Result<(Vec<PointEntry>, Vec<(String, String, StoreError)>)> {
        let vms = match vm {
            Some(v) => vec![v.to_string()],
            None => self.vms()?,
        };
        let mut ok = Vec::new();
        let mut bad = Vec::new();
        for vm in vms {
            for id in self.point_ids(&vm)? {
                match self.load_entry(&vm, &id) {
                    Ok(p) => ok.push(p),
                    Err(e) => bad.push((vm.clone(), id, e)),
                }
            }
        }
        Ok((ok, bad))
    }

    pub fn load_entry(&self, vm: &str, point: &str) -> Result<PointEntry> {
        Ok(PointEntry {
            vm: vm.to_string(),
            point_id: point.to_string(),
            manifest: self.load_point(vm, point)?,
            labels: self.labels(vm, point)?,
        })
    }

    pub fn load_point(&self, vm: &str, point: &str) -> Result<RestorePoint> {
        let path = self.manifest_path(vm, point);
        let bytes = fs::read(&path).map_err(|e| StoreError::manifest_io(point, &path, e))?;
        self.decode_point(point, &path, &bytes)
    }

    /// A manifest's point, once it is proven to belong to this store: a point records the
    /// store it was written into, so a changed `store_id` in store.json (or a manifest copied
    /// in from another store) is named, never read as this store's.
    pub(crate) fn decode_point(&self, point: &str, path: &Path, bytes: &[u8]) -> Result<RestorePoint> {
        let p = RestorePoint::decode(point, path, bytes)?;
        if p.store_id != self.config.store_id {
            return Err(StoreError::ForeignPoint {
                point: point.into(),
                recorded: p.store_id,
                store: self.config.store_id.clone(),
            });
        }
        Ok(p)
    }

    /// Finds a point by id alone (ids are unique across VMs).
    pub fn find(&self, point: &str) -> Result<PointEntry> {
        validate_key("point id", point)?;
        for vm in self.vms()? {
            if self.manifest_path(&vm, point).exists() {
                return self.load_entry(&vm, point);
            }
        }
        Err(StoreError::PointNotFound { point: point.to_string() })
    }

    pub fn labels(&self, vm: &str, point: &str) -> Result<Labels> {
        let path = self.labels_path(vm, point);
        match fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| StoreError::ManifestDamaged {
                point: point.into(),
                path: path.clone(),
                cause: format!("labels: {e}"),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Labels::default()),
            Err(e) => Err(StoreError::io(format!("reading {}", path.display()), e)),
        }
    }

    /// Writes a point's labels. A point locked by them is protected (protect.rs) before this
    /// returns; `blobs` false protects only its manifest and labels, for a change that leaves an
    /// existing lock as it was (its blobs are protected already).
    pub(crate) fn write_labels(&self, vm: &str, point: &str, labels: &Labels, blobs: bool) -> Result<()> {
        let writer = WriterRegistration::register(self.root())?;
        let locked = labels.locked_at(self.now()).is_some();
        let intent = if locked { Some(self.begin_lock_intent(&writer, vm, point)?) } else { None };
        let path = self.labels_path(vm, point);
        if path.exists() {
            set_immutable(&path, false);
        }
        let bytes = serde_json::to_vec_pretty(labels).expect("labels serialise");
        write_atomic(&writer.tmp_dir, &path, &bytes)?;
        if let Some(intent) = intent {
            if blobs {
                let manifest = self.load_point(vm, point)?;
                self.protect_point(vm, &manifest, &mut std::collections::HashSet::new())?;
            } else {
                self.protect_files(vm, point);
            }
            intent.done();
        }
        Ok(())
    }

    pub fn set_star(&self, point: &str, star: bool) -> Result<Labels> {
        let entry = self.find(point)?;
        if let Some(until) = entry.labels.locked_at(self.now()) {
            if !star {
                return Err(StoreError::Locked { point: point.into(), until: until.to_rfc3339() });
            }
        }
        let labels = Labels { star, ..entry.labels };
        self.write_labels(&entry.vm, point, &labels, false)?;
        Ok(labels)
    }

    /// Makes a point immutable until `until`. A lock can be extended, never shortened.
    pub fn lock(&self, point: &str, until: DateTime<Utc>) -> Result<Labels> {
        check_lock_until(until, self.now())?;
        self.require_key()?;
        let entry = self.find(point)?;
        if let Some(current) = entry.labels.locked_at(self.now()) {
            if until < current {
                return Err(StoreError::Locked { point: point.into(), until: current.to_rfc3339() });
            }
        }
        let labels = Labels { retain_until: Some(until), ..entry.labels };
        self.write_labels(&entry.vm, point, &labels, true)?;
        Ok(labels)
    }

    /// Deletes a point's manifest and labels (its blobs go at the next garbage collection).
    /// Refused while it is locked or while a running backup uses it as its base.
    pub fn delete_point(&self, vm: &str, point: &str) -> Result<()> {
        let labels = self.labels(vm, point)?;
        if let Some(until) = labels.locked_at(self.now()) {
            return Err(StoreError::Locked { point: point.into(), until: until.to_rfc3339() });
        }
        let path = self.manifest_path(vm, point);
        let file = fs::File::open(&path).map_err(|e| StoreError::manifest_io(point, &path, e))?;
        if !flock(&file, true, true).map_err(|e| StoreError::io(format!("locking {}", path.display()), e))? {
            return Err(StoreError::InUse { point: point.into() });
        }
        let labels_path = self.labels_path(vm, point);
        for p in [&path, &labels_path] {
            if p.exists() {
                set_immutable(p, false);
            }
        }
        fs::remove_file(&path).map_err(|e| StoreError::io(format!("deleting {}", path.display()), e))?;
        let _ = fs::remove_file(&labels_path);
        let dir = self.vm_dir(vm);
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| StoreError::io(format!("syncing {}", dir.display()), e))?;
        // Drop the VM's directory when its last point goes (fails harmlessly when not empty).
        let _ = fs::remove_dir(&dir);
        Ok(())
    }
}
