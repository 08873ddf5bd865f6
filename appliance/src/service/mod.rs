//! `holdfast serve`: the catalog, the job engine and the HTTPS API in one process.
//!
//! First start on an empty data directory creates the store, the catalog, a self-signed TLS
//! certificate, a secret key for credentials at rest and the initial admin, whose random password
//! is written to `initial-admin-password` and must be changed at first login. Every start
//! rebuilds the catalog's index of points from the storage targets' stores and marks jobs a
//! stopped service left unfinished as failed, then ends what those backups left on their
//! hypervisors (backup jobs, checkpoints) while their VMs take no new backup.
//!
//! Platforms are reached only through the registry in `connectors` (platforms.rs); every job
//! runs through the runner (runner.rs), backup (engine.rs) and restore (restore.rs) being its
//! kinds of work.

mod alerts;
mod auth;
mod bandwidth;
pub mod catalog;
mod config;
mod engine;
mod health;
mod jobs;
mod limits;
mod overlay;
mod platforms;
mod points;
mod recovery;
mod restore;
mod rules;
mod runner;
mod runs;
mod schedule;
mod session_files;
mod stats;
mod storage;
mod system;

use anyhow::{Context, Result};
use catalog::{now, random_hex, Db};
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use web::*;

pub struct ServeOptions {
    pub data_dir: PathBuf,
    /// sqlite://PATH or postgres://…; None: SQLite in the data directory.
    pub catalog: Option<String>,
    pub listen: String,
    pub max_jobs: usize,
    /// Jobs running at once against one platform (one hypervisor host).
    pub max_jobs_per_host: usize,
    /// Address and port of the NFS server (instant recovery).
    pub nfs_listen: String,
    /// Address and port of its portmapper (111 for clients that ask it); None: none.
    pub portmap_listen: Option<String>,
}

pub struct Service {
    db: Db,
    /// The open stores of the storage targets, by target id (storage.rs).
    stores: std::sync::RwLock<std::collections::HashMap<i64, Arc<vds_store::Store>>>,
    /// The test clock given to every store opened (points stamped, retention counted on it).
    store_clock: Option<vds_store::Clock>,
    work_dir: PathBuf,
    secret: [u8; 32],
    /// The storage health checks running now, by target and kind (health.rs).
    checks: std::sync::Mutex<std::collections::HashMap<(i64, StorageCheckKind), StorageCheck>>,
    /// How many jobs run at once, in all and per platform (limits.rs).
    limits: Arc<limits::Limits>,
    /// The controls (stop, transfer limit, phases) of jobs queued or running.
    controls: std::sync::Mutex<std::collections::HashMap<i64, Arc<connectors::JobControl>>>,
    bandwidth: std::sync::RwLock<Vec<BandwidthWindow>>,

    /// Whether each platform's host answered its last probe (while it has jobs running).
    nodes: std::sync::Mutex<std::collections::HashMap<i64, Arc<tokio::sync::Mutex<engine::NodeProbe>>>>,
    /// Job changes for the API's live events.
    events: tokio::sync::broadcast::Sender<Job>,
    /// The appliance's load, sampled every two seconds (system.rs).
    system: tokio::sync::broadcast::Sender<SystemSample>,
    /// One alert decided and sent at a time, so two quick failures cannot both pass the cap.
    alert_lock: tokio::sync::Mutex<()>,
    /// Wakes the storage watch (the alert settings changed).
    storage_check: tokio::sync::Notify,
    /// VMs whose killed backup is being cleaned up on the hypervisor after a restart, with that
    /// job's id: no new backup of them starts meanwhile.
    cleaning: std::sync::Mutex<std::collections::HashMap<(i64, String), i64>>,
    /// Where the first start wrote admin's initial password; removed once it is changed.
    initial_password: PathBuf,
    /// The instant-recovery sessions the NFS server exports (recovery.rs).
    sessions: Arc<recovery::Sessions>,
    /// The refusals the NFS server reports, until its audit task takes them.
    refusals: std::sync::Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<String>>>,
    /// The NFS server's port, or why it does not listen.
    nfs_port: std::sync::Mutex<Result<u16, String>>,
    /// The instant-recovery sessions as they change, for the API's live events.
    recovery_events: tokio::sync::broadcast::Sender<Vec<Recovery>>,
}

/// A job the service was killed during: (job id, platform id, VM, whether it was a restore as a
/// new VM rather than a backup).
type Killed = (i64, i64, String, bool);

/// Creates what a first start needs, returns the service and the backups a stopped service
/// left unfinished (failed now; their hypervisor state is cleaned up once the service runs).
async fn setup(opts: &ServeOptions) -> Result<(Service, Vec<Killed>)> {
    let data = &opts.data_dir;
    std::fs::create_dir_all(data).with_context(|| format!("creating the data directory {}", data.display()))?;
    let store_clock: Option<vds_store::Clock> = std::env::var_os("HOLDFAST_TEST_CLOCK").map(|_| {
        // Points are stamped, and retention counts days, on the same clock as the schedules.
        let clock = schedule::Clock::from_env();
        Arc::new(move || clock.now().with_timezone(&chrono::Utc)) as vds_store::Clock
    });
    let url = opts.catalog.clone().unwrap_or_else(|| format!("sqlite://{}", data.join("catalog.db").display()));
    let db = catalog::open(&url).await.context("opening the catalog")?;
    let secret = secret_key(&data.join("secret.key"))?;
    let (sessions, refusals) = Service::new_sessions(data);
    let service = Service {
        db,
        stores: Default::default(),
        store_clock,
        work_dir: data.join("work"),
        secret,
        limits: Arc::new(limits::Limits::new(opts.max_jobs, opts.max_jobs_per_host)),
        checks: Default::default(),
        controls: Default::default(),
        bandwidth: Default::default(),
        nodes: Default::default(),
        events: tokio::sync::broadcast::channel(1024).0,
        system: tokio::sync::broadcast::channel(4).0,
        alert_lock: tokio::sync::Mutex::new(()),
        storage_check: tokio::sync::Notify::new(),
        cleaning: Default::default(),
        initial_password: data.join("initial-admin-password"),
        sessions,
        refusals: std::sync::Mutex::new(Some(refusals)),
        nfs_port: std::sync::Mutex::new(Err("the NFS server has not started yet".into())),
        recovery_events: tokio::sync::broadcast::channel(16).0,
    };
    service.open_targets(&data.join("store")).await?;
    service.ensure_admin().await?;
    let killed = service.recover_jobs().await?;
    *service.bandwidth.write().expect("bandwidth lock") = service.load_bandwidth().await?;
    service.load_limits().await?;
    service.reindex_points().await?;
    service.reopen_recoveries().await?;
    Ok((service, killed))
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(bytes).with_context(|| format!("writing {}", path.display()))
}

/// The key that encrypts platform credentials in the catalog (made on first start, 0600).
fn secret_key(path: &Path) -> Result<[u8; 32]> {
    if !path.exists() {
        let mut k = [0u8; 32];
        getrandom::getrandom(&mut k).expect("OS randomness");
        write_private(path, &k)?;
    }
    let k = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    k.try_into().map_err(|_| anyhow::anyhow!("{} is not a 32-byte key", path.display()))
}

/// A self-signed certificate for this host, made on first start.
fn tls_files(dir: &Path) -> Result<(Vec<u8>, Vec<u8>)> {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    if !cert.exists() {
        std::fs::create_dir_all(dir)?;
        let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        if let Ok(h) = std::fs::read_to_string("/etc/hostname") {
            names.push(h.trim().to_string());
        }
        let made = rcgen::generate_simple_self_signed(names).context("making the TLS certificate")?;
        write_private(&key, made.key_pair.serialize_pem().as_bytes())?;
        std::fs::write(&cert, made.cert.pem())?;
    }
    Ok((std::fs::read(&cert)?, std::fs::read(&key)?))
}

/// Seals a secret under `key` (XChaCha20-Poly1305, random nonce): hex of nonce and ciphertext.
fn seal_with(key: &[u8; 32], plain: &str) -> String {
    let cipher = XChaCha20Poly1305::new(key.into());
    let mut nonce = [0u8; 24];
    getrandom::getrandom(&mut nonce).expect("OS randomness");
    let ct = cipher.encrypt(XNonce::from_slice(&nonce), plain.as_bytes()).expect("encryption cannot fail");
    hex::encode([&nonce[..], &ct].concat())
}

/// Opens what `seal_with` sealed; None when it is damaged or `key` is not the one.
fn open_with(key: &[u8; 32], sealed: &str) -> Option<String> {
    let bytes = hex::decode(sealed).ok().filter(|b| b.len() >= 24)?;
    let plain = XChaCha20Poly1305::new(key.into()).decrypt(XNonce::from_slice(&bytes[..24]), &bytes[24..]).ok()?;
    String::from_utf8(plain).ok()
}

impl Service {
    fn seal(&self, plain: &str) -> String {
        seal_with(&self.secret, plain)
    }

    fn open_sealed(&self, sealed: &str) -> Result<String, ApiError> {
        open_with(&self.secret, sealed).ok_or_else(|| {
            ApiError::server("a stored credential cannot be decrypted: damaged, or the wrong secret.key")
        })
    }

    async fn audit_log(&self, user: &str, action: &str, detail: &str) -> Result<(), ApiError> {
        sqlx::query("INSERT INTO audit (time, user_name, action, detail) VALUES ($1, $2, $3, $4)")
            .bind(now())
            .bind(user)
            .bind(action)
            .bind(detail)
            .execute(&self.db)
            .await
            .map_err(ApiError::internal)?;
        Ok(())
    }

    /// Jobs a stopped service left unfinished are failed, with that reason; returns the backups
    /// and new-VM restores, whose leftovers clean_up_killed removes.
    async fn recover_jobs(&self) -> Result<Vec<Killed>> {
        let stale: Vec<(i64, String, i64, String, Option<String>)> = sqlx::query_as(&format!(
            "SELECT id, kind, platform_id, vm, backup_type FROM jobs WHERE state IN {}",
            jobs::active_states()
        ))
        .fetch_all(&self.db)
        .await?;
        let mut killed = Vec::new();
        for (id, kind, platform, vm, mode) in stale {
            let why = if kind == "restore" && mode.as_deref() == Some("new_vm") {
                killed.push((id, platform, vm, true));
                "the service stopped while this restore ran; the volumes it had made are removed now that the \
                 service runs again, unless it had defined the new VM (the job's log says what)"
            } else if kind == "restore" {
                "the service stopped while this restore ran; it left the VM's disks part-written: restore again"
            } else {
                killed.push((id, platform, vm, false));
                "the service stopped while this job ran; what it left on the hypervisor is removed now that the \
                 service runs again (the job's log says what), and nothing of it was committed"
            };
            sqlx::query("UPDATE jobs SET state = 'failed', error = $1, finished = $2 WHERE id = $3")
                .bind(why)
                .bind(now())
                .bind(id)
                .execute(&self.db)
                .await?;
            jobs::log(&self.db, id, "error", why).await;
        }
        Ok(killed)
    }

    /// Removes what each killed backup left on its hypervisor (its backup job and checkpoint),
    /// and each killed restore as a new VM (its volumes), one task per VM beside the running
    /// service; the VM takes no new backup until its cleanup
    /// has ended, so a cleanup can never end a new backup's job. A host that does not answer
    /// holds only its own VMs; the next backup of such a VM cleans up before it starts.
    fn clean_up_killed(self: &Arc<Self>, killed: Vec<Killed>) {
        for (id, platform, vm, restore) in killed {
            self.cleaning.lock().expect("cleaning lock").insert((platform, vm.clone()), id);
            let me = self.clone();
            tokio::spawn(async move {
                let outcome = match me.target(platform).await {
                    Ok((_, target)) => {
                        let (work, name) = (me.work_dir.clone(), vm.clone());
                        Self::blocking(move || {
                            let conn = target.connect(&work)?;
                            if restore {
                                conn.clean_up_killed_restore(&name)
                            } else {
                                conn.clean_up_killed_backup(&name)
                            }
                        })
                        .await
                    }
                    Err(e) => Err(e),
                };
                let (level, words) = match outcome {
                    Ok(Some(done)) => ("info", format!("after the restart, on the hypervisor: {done}")),
                    Ok(None) => ("info", "after the restart: this job had left nothing on the hypervisor".to_string()),
                    Err(e) => (
                        "warning",
                        format!(
                            "after the restart, cleaning up on the hypervisor failed: {}{}",
                            e.message,
                            if restore {
                                "; remove the new VM's volumes by hand"
                            } else {
                                "; the next backup of this VM cleans up before it starts"
                            }
                        ),
                    ),
                };
                jobs::log(&me.db, id, level, &words).await;
                me.cleaning.lock().expect("cleaning lock").remove(&(platform, vm));
            });
        }
    }

    /// The catalog's index of points, rebuilt from every open target's store (the stores are
    /// the truth); a target that is unavailable keeps what the catalog said of it.
    async fn reindex_points(&self) -> Result<()> {
        for (id, name, store) in self.open_stores().await {
            self.index_target(id, store).await.with_context(|| format!("indexing storage target {name}"))?;
        }
        Ok(())
    }
}

pub fn run(opts: ServeOptions) -> Result<i32> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async {
        let (service, killed) = setup(&opts).await?;
        let service = Arc::new(service);
        service.clean_up_killed(killed);
        service.start_scheduler();
        system::start(&opts.data_dir.join("store"), service.system.clone());
        service.start_storage_watch(std::time::Duration::from_secs(300));
        let refusals = service.refusals.lock().expect("refusals lock").take().expect("taken once");
        service.start_nfs(&opts.nfs_listen, opts.portmap_listen.as_deref(), refusals).await;
        let (cert, key) = tls_files(&opts.data_dir.join("tls"))?;
        let listener = tokio::net::TcpListener::bind(&opts.listen)
            .await
            .with_context(|| format!("listening on {}", opts.listen))?;
        let addr = listener.local_addr()?;
        eprintln!(
            "holdfast: serving the console on https://{addr}/ and the API under /api (data in {})",
            opts.data_dir.display()
        );
        let shutdown = async {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        };
        web::serve(listener, &cert, &key, web::router(Arc::new(Api(service))), shutdown).await?;
        Ok(0)
    })
}

/// `holdfast reset-password`: on the appliance's own shell, for the last admin who is locked
/// out or forgot the password. Prints a new password that must be changed at the next login.
pub fn reset_password_on_shell(data_dir: &std::path::Path, catalog: Option<String>, user: &str) -> Result<i32> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let own = data_dir.join("catalog.db");
        if catalog.is_none() && !own.exists() {
            anyhow::bail!("no catalog at {}: is --data-dir the service's?", own.display());
        }
        let url = catalog.unwrap_or_else(|| format!("sqlite://{}", own.display()));
        let db = catalog::open(&url).await.context("opening the catalog")?;
        let password = random_hex(10);
        auth::reset(&db, user, &password).await.map_err(|e| anyhow::anyhow!("{}", e.message))?;
        sqlx::query("INSERT INTO audit (time, user_name, action, detail) VALUES ($1, $2, $3, $4)")
            .bind(now())
            .bind("(appliance shell)")
            .bind("password reset")
            .bind(user)
            .execute(&db)
            .await?;
        println!("{password}");
        eprintln!("holdfast: user {user} is unlocked; log in with the password above and change it");
        Ok(0)
    })
}

/// The service as the API's backend.
pub struct Api(Arc<Service>);

impl Accounts for Api {
    async fn login(&self, login: Login) -> ApiResult<(String, Session)> {
        self.0.login_user(login).await
    }
    async fn session(&self, token: &str) -> ApiResult<Option<Session>> {
        self.0.session_of(token).await
    }
    async fn token_session(&self, token: &str) -> ApiResult<Option<Session>> {
        self.0.session_of_token(token).await
    }
    async fn users(&self) -> ApiResult<Vec<User>> {
        self.0.list_users().await
    }
    async fn create_user(&self, s: &Session, u: NewUser) -> ApiResult<User> {
        self.0.add_user(s, u).await
    }
    async fn delete_user(&self, s: &Session, name: &str) -> ApiResult<()> {
        self.0.remove_user(s, name).await
    }
    async fn unlock_user(&self, s: &Session, name: &str) -> ApiResult<()> {
        self.0.unlock_user(s, name).await
    }
    async fn reset_password(&self, s: &Session, name: &str, r: PasswordReset) -> ApiResult<()> {
        self.0.reset_password(s, name, r).await
    }
    async fn tokens(&self, s: &Session) -> ApiResult<Vec<Token>> {
        self.0.list_tokens(s).await
    }
    async fn create_token(&self, s: &Session, t: NewToken) -> ApiResult<Token> {
        self.0.add_token(s, t).await
    }
    async fn delete_token(&self, s: &Session, id: i64) -> ApiResult<()> {
        self.0.remove_token(s, id).await
    }
    async fn logout(&self, token: &str) -> ApiResult<()> {
        self.0.end_session(token).await
    }
    async fn change_password(&self, s: &Session, change: PasswordChange) -> ApiResult<()> {
        self.0.set_password(s, change).await
    }
    async fn audit(&self, q: AuditQuery) -> ApiResult<Vec<AuditRow>> {
        self.0.list_audit(q).await
    }
}

impl Platforms for Api {
    async fn platforms(&self) -> ApiResult<Vec<Platform>> {
        self.0.list_platforms().await
    }
    async fn create_platform(&self, s: &Session, p: NewPlatform) -> ApiResult<Platform> {
        self.0.add_platform(s, p).await
    }
    async fn platform_kinds(&self) -> ApiResult<Vec<PlatformKindInfo>> {
        Ok(platforms::kinds())
    }
    async fn update_platform(&self, s: &Session, id: i64, p: NewPlatform) -> ApiResult<Platform> {
        self.0.edit_platform(s, id, p).await
    }
    async fn delete_platform(&self, s: &Session, id: i64) -> ApiResult<()> {
        self.0.remove_platform(s, id).await
    }
    async fn platform_vms(&self, id: i64) -> ApiResult<Vec<Vm>> {
        self.0.vms_of(id).await
    }
    async fn platform_inventory(&self, id: i64) -> ApiResult<PlatformInventory> {
        self.0.inventory_of(id).await
    }
    async fn platform_vm(&self, id: i64, vm: &str) -> ApiResult<VmDetails> {
        self.0.vm_details(id, vm).await
    }
}

impl Jobs for Api {
    async fn start_job(&self, s: &Session, j: NewJob) -> ApiResult<Job> {
        self.0.queue_job(s, j).await
    }
    async fn jobs(&self, f: JobFilter) -> ApiResult<Vec<Job>> {
        self.0.list_jobs(f).await
    }
    async fn job(&self, id: i64) -> ApiResult<Job> {
        self.0.job_by_id(id).await
    }
    async fn job_log(&self, id: i64) -> ApiResult<Vec<LogLine>> {
        self.0.log_of(id).await
    }
    async fn points(&self) -> ApiResult<Vec<PointRow>> {
        self.0.list_points().await
    }
    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Job> {
        self.0.events.subscribe()
    }
    fn subscribe_system(&self) -> tokio::sync::broadcast::Receiver<SystemSample> {
        self.0.system.subscribe()
    }
    async fn stats(&self) -> ApiResult<Stats> {
        self.0.stats().await
    }
    async fn stop_job(&self, s: &Session, id: i64) -> ApiResult<Job> {
        self.0.stop(s, id).await
    }
    async fn start_restore(&self, s: &Session, r: NewRestore) -> ApiResult<Job> {
        self.0.queue_restore(s, r).await
    }
    async fn convert_restore(&self, r: ConversionRequest) -> ApiResult<Conversion> {
        self.0.conversion(r).await
    }
    async fn point(&self, id: &str) -> ApiResult<PointDetails> {
        self.0.point_details(id).await
    }
    async fn star_point(&self, s: &Session, id: &str, star: bool) -> ApiResult<PointDetails> {
        self.0.star(s, id, star).await
    }
    async fn lock_point(&self, s: &Session, id: &str, l: PointLock) -> ApiResult<PointDetails> {
        self.0.lock(s, id, l).await
    }
    async fn delete_point(&self, s: &Session, id: &str) -> ApiResult<()> {
        self.0.remove_point(s, id).await
    }
}

impl Rules for Api {
    async fn rules(&self) -> ApiResult<Vec<Rule>> {
        self.0.list_rules().await
    }
    async fn create_rule(&self, s: &Session, r: NewRule) -> ApiResult<Rule> {
        self.0.add_rule(s, r).await
    }
    async fn delete_rule(&self, s: &Session, id: i64, delete_data: Option<bool>) -> ApiResult<()> {
        self.0.remove_rule(s, id, delete_data).await
    }
    async fn check_rule(&self, _: &Session, r: NewRule, own: Option<i64>) -> ApiResult<()> {
        self.0.validate_rule(&r, own).await
    }
    async fn run_rule(&self, s: &Session, id: i64, r: RunRule) -> ApiResult<Vec<Job>> {
        self.0.run_rule_now(s, id, r).await
    }
    async fn update_rule(&self, s: &Session, id: i64, r: NewRule) -> ApiResult<Rule> {
        self.0.edit_rule(s, id, r).await
    }
    async fn set_rules_enabled(&self, s: &Session, r: RulesState) -> ApiResult<Vec<Rule>> {
        self.0.enable_rules(s, r).await
    }
}

impl Recoveries for Api {
    async fn recoveries(&self) -> ApiResult<Vec<Recovery>> {
        self.0.list_recoveries().await
    }
    async fn start_recovery(&self, s: &Session, r: NewRecovery) -> ApiResult<Recovery> {
        self.0.start_recovery(s, r).await
    }
    async fn stop_recovery(&self, s: &Session, id: i64) -> ApiResult<()> {
        self.0.stop_recovery(s, id).await
    }
    async fn migrate_recovery(&self, s: &Session, id: i64, m: MigrateRecovery) -> ApiResult<Recovery> {
        self.0.migrate_recovery(s, id, m).await
    }
    async fn keep_recovery(&self, s: &Session, id: i64) -> ApiResult<RecoveryKept> {
        self.0.keep_recovery(s, id).await
    }
    fn subscribe_recoveries(&self) -> tokio::sync::broadcast::Receiver<Vec<Recovery>> {
        self.0.recovery_events.subscribe()
    }
}

impl Configuration for Api {
    async fn alert_settings(&self) -> ApiResult<Option<AlertSettings>> {
        self.0.get_alerts().await
    }
    async fn set_alert_settings(&self, s: &Session, a: AlertSettings) -> ApiResult<()> {
        self.0.put_alerts(s, a).await
    }
    async fn test_alert(&self, s: &Session) -> ApiResult<()> {
        self.0.send_test_alert(s).await
    }
    async fn export_config(&self, s: &Session, e: ConfigExport) -> ApiResult<serde_json::Value> {
        self.0.export_config(s, e).await
    }
    async fn import_config(&self, s: &Session, i: ConfigImport) -> ApiResult<ImportReport> {
        self.0.import_config(s, i).await
    }
    async fn check_storage(
        &self,
        s: &Session,
        id: i64,
        kind: StorageCheckKind,
        sample_percent: Option<f64>,
    ) -> ApiResult<StorageTarget> {
        self.0.start_check(s, id, kind, sample_percent).await
    }
    async fn limits(&self) -> ApiResult<JobLimits> {
        Ok(self.0.limits.get())
    }
    async fn set_limits(&self, s: &Session, l: JobLimits) -> ApiResult<()> {
        self.0.put_limits(s, l).await
    }
    async fn bandwidth(&self) -> ApiResult<Vec<BandwidthWindow>> {
        Ok(self.0.bandwidth.read().expect("bandwidth lock").clone())
    }
    async fn set_bandwidth(&self, s: &Session, w: Vec<BandwidthWindow>) -> ApiResult<()> {
        self.0.put_bandwidth(s, w).await
    }
    async fn storage(&self) -> ApiResult<Vec<StorageTarget>> {
        self.0.list_storage().await
    }
    async fn create_storage(&self, s: &Session, t: NewStorage) -> ApiResult<StorageTarget> {
        self.0.add_storage(s, t).await
    }
    async fn delete_storage(&self, s: &Session, id: i64) -> ApiResult<()> {
        self.0.remove_storage(s, id).await
    }
}
