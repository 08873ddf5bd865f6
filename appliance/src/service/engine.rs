//! The job engine: queueing under the global and per-platform limits, states, the watch that
//! shows phases, progress, rate and a lost host, stops and ends; and the backup, the runner's
//! work that runs the platform-neutral `backup_vm` and indexes its point when it commits. The
//! jobs' SQL is in jobs.rs.

use super::catalog::now;
use super::jobs::{insert_point, log};
use super::platforms::Target;
use super::runner::{self, Work};
use super::schedule::Clock;
use super::storage::OWN_TARGET;
use super::Service;
use connectors::{backup_vm_when, BackupOptions, BackupOutcome, Connector, JobControl, Phase, Quiesce};
use std::sync::Arc;
use vds_store::BackupType;
use web::*;

/// The backup type a run asks for, in the store's terms.
pub(super) fn backup_type(k: BackupKind) -> BackupType {
    match k {
        BackupKind::Full => BackupType::Full,
        BackupKind::Incremental => BackupType::Incremental,
        BackupKind::Differential => BackupType::Differential,
    }
}

/// How often a running job's host is asked whether it answers (one probe serves every job of
/// that platform), and how long an answer may take before the host counts as unreachable.
const PROBE_EVERY: std::time::Duration = std::time::Duration::from_secs(3);
const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The last look at one platform's host: when, and why it did not answer.
#[derive(Default)]
pub(super) struct NodeProbe {
    at: Option<std::time::Instant>,
    unreachable: Option<String>,
}

/// What the job log says when a job enters a phase.
fn phase_words(p: Phase) -> &'static str {
    match p {
        Phase::SavingConfiguration => "saving the VM configuration",
        Phase::Snapshotting => "taking the snapshot",
        Phase::QueryingChanges => "querying changed blocks since the base point",
        Phase::Waiting => "snapshot taken; waiting for the run's other snapshots and for a turn to read the data",
        Phase::Transferring => "transferring data",
        Phase::CheckingData => "checking data: reading the new disk maps back and flushing the store",
    }
}

/// How a job ended.
pub(super) enum End<'a> {
    Completed(&'a str),
    Failed(&'a str),
    Stopped(&'a str),
}

/// A job a rule started: its retention runs after a successful backup (never after a failed one).
pub(super) struct RuleRun {
    pub rule_id: i64,
    pub retention: vds_store::RetentionPolicy,
    /// Disk keys to back up; empty: all.
    pub disks: Vec<String>,
    pub change_tracking: connectors::ChangeTracking,
    pub lan_free: bool,
    /// The run the job belongs to (its order, its snapshots, its bandwidth).
    pub run: Arc<super::runs::Run>,
}

/// How a backup job runs beside its VM and type: quiesce, the rule that started it (None: by
/// hand) and the storage target its point goes into.
pub(super) struct JobPlan {
    pub quiesce: Quiesce,
    pub rule: Option<RuleRun>,
    pub storage: i64,
}

/// A VM as the catalog knows it: its name, and the platform's stable id where known (a VM
/// renamed on the platform keeps its id, so its rule and its chain go on).
#[derive(Clone, Debug)]
pub(super) struct VmRef {
    pub name: String,
    pub id: Option<String>,
}

impl VmRef {
    /// What the connector is asked for: the id where known, else the name.
    pub fn key(&self) -> &str {
        self.id.as_deref().unwrap_or(&self.name)
    }
}

/// A backup job: the runner's work for one VM into one storage target.
pub(super) struct Backup {
    platform: i64,
    vm: VmRef,
    requested: BackupType,
    quiesce: Quiesce,
    rule: Option<RuleRun>,
    /// The storage target the point goes into, and its store once the job's turn has come.
    storage: i64,
    store: Option<Arc<vds_store::Store>>,
}

impl Service {
    /// Queues a backup job run by hand; it runs when the concurrency limit allows.
    pub(super) async fn queue_job(self: &Arc<Self>, s: &Session, j: NewJob) -> ApiResult<Job> {
        let requested = backup_type(j.backup_type);
        if j.vm.trim().is_empty() {
            return Err(ApiError::field("vm", "must not be empty"));
        }
        let storage = j.storage.unwrap_or(OWN_TARGET);
        self.check_target("storage", storage).await?;
        let vm = self.check_vm(j.platform, &j.vm).await?;
        // Two backups of one VM at once would collide on the hypervisor (one backup job per VM).
        if let Some(busy) = self.active_job(j.platform, vm.key()).await? {
            return Err(ApiError::conflict(format!(
                "VM {} has job {busy} queued or running: wait for it or stop it",
                j.vm
            )));
        }
        let plan = JobPlan { quiesce: Quiesce::IfPossible, rule: None, storage };
        self.enqueue(&s.user, j.platform, vm, requested, plan).await
    }

    /// Records a run that did not start because the VM's previous run is still going.
    pub(super) async fn record_skipped(&self, platform: i64, vm: &str, requested: BackupType, rule: i64, busy: i64) {
        let why = format!("skipped: the previous run of this VM (job {busy}) is still queued or running");
        let id = sqlx::query_as::<_, (i64,)>(
            "INSERT INTO jobs (platform_id, vm, backup_type, state, error, rule_id, created, finished) \
             VALUES ($1, $2, $3, 'skipped', $4, $5, $6, $6) RETURNING id",
        )
        .bind(platform)
        .bind(vm)
        .bind(requested.as_str())
        .bind(&why)
        .bind(rule)
        .bind(now())
        .fetch_one(&self.db)
        .await
        .map(|(id,)| id);
        match id {
            Ok(id) => log(&self.db, id, "warning", &why).await,
            Err(e) => eprintln!("holdfast: rule {rule}: cannot record a skipped run of {vm}: {e}"),
        }
    }

    pub(super) async fn enqueue(
        self: &Arc<Self>,
        user: &str,
        platform: i64,
        vm: VmRef,
        requested: BackupType,
        plan: JobPlan,
    ) -> ApiResult<Job> {
        let JobPlan { quiesce, rule, storage } = plan;
        let (platform_name, target) = self.job_target(platform).await?;
        let id = sqlx::query_as::<_, (i64,)>(
            "INSERT INTO jobs (platform_id, vm, vm_id, backup_type, state, rule_id, storage_id, created) \
             VALUES ($1, $2, $3, $4, 'queued', $5, $6, $7) RETURNING id",
        )
        .bind(platform)
        .bind(&vm.name)
        .bind(&vm.id)
        .bind(requested.as_str())
        .bind(rule.as_ref().map(|r| r.rule_id))
        .bind(storage)
        .bind(now())
        .fetch_one(&self.db)
        .await
        .map_err(ApiError::internal)?
        .0;
        let by = match &rule {
            Some(r) => format!("rule {}", r.rule_id),
            None => user.to_string(),
        };
        let (name, kind) = (&vm.name, requested.as_str());
        log(&self.db, id, "info", &format!("queued by {by}: {kind} backup of {name} on {platform_name}")).await;
        self.audit_log(user, "backup started", &format!("job {id}: {kind} of {name} on {platform_name}")).await?;
        let place = rule.as_ref().map(|r| r.run.join());
        let job = runner::Job { id, platform, target, vm: vm.name.clone(), place };
        let work = Backup { platform, vm, requested, quiesce, rule, storage, store: None };
        self.launch(id, move |me, control| async move { me.run_work(job, work, control).await });
        self.job_by_id(id).await
    }

    /// Runs a job just queued in the background, with controls (stop, limit, progress) the API
    /// reaches while it is queued or running. It is published first, so listeners see "queued"
    /// before anything else.
    pub(super) fn launch<F>(self: &Arc<Self>, id: i64, run: impl FnOnce(Arc<Self>, Arc<JobControl>) -> F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let control = JobControl::new();
        self.controls.lock().expect("controls lock").insert(id, control.clone());
        let me = self.clone();
        let job = run(self.clone(), control);
        tokio::spawn(async move {
            me.publish(id).await;
            job.await;
            me.controls.lock().expect("controls lock").remove(&id);
        });
    }

    /// Applies a rule's retention to the VM of a point it just committed, in the point's store.
    async fn retain(&self, id: i64, store: Arc<vds_store::Store>, vm_key: &str, rule: &RuleRun) {
        let (policy, key) = (rule.retention.clone(), vm_key.to_string());
        let decided = tokio::task::spawn_blocking(move || store.prune(&policy, Some(&key), false)).await;
        match decided {
            Ok(Ok(decisions)) => {
                for d in decisions.iter().filter(|d| !d.keep) {
                    let why = d.reasons.join("; ");
                    log(&self.db, id, "info", &format!("retention removed point {} ({why})", d.point_id)).await;
                    let _ =
                        sqlx::query("DELETE FROM points WHERE point_id = $1").bind(&d.point_id).execute(&self.db).await;
                }
            }
            Ok(Err(e)) => log(&self.db, id, "warning", &format!("retention did not run: {e}")).await,
            Err(e) => log(&self.db, id, "warning", &format!("retention did not run: {e}")).await,
        }
    }

    async fn set_state(&self, id: i64, state: &str) {
        let started = (state == "preparing").then(now);
        // A job that has ended keeps its final state: a stop's "stopping" can arrive after the
        // job already ended as stopped.
        let r = sqlx::query(
            "UPDATE jobs SET state = $1, started = COALESCE($2, started) WHERE id = $3 AND finished IS NULL",
        )
        .bind(state)
        .bind(started)
        .bind(id)
        .execute(&self.db)
        .await;
        if let Err(e) = r {
            eprintln!("holdfast: job {id}: cannot record state {state}: {e}");
        }
        self.publish(id).await;
    }

    /// Stops a job: a queued one at once; a running one ends at its next read, as a failed
    /// backup does (nothing committed, the snapshot removed), then shows as stopped.
    pub(super) async fn stop(&self, s: &Session, id: i64) -> ApiResult<Job> {
        let job = self.job_by_id(id).await?;
        let control = self.controls.lock().expect("controls lock").get(&id).cloned();
        let Some(control) = control else {
            return Err(ApiError::conflict(format!("job {id} has ended already ({})", job.state)));
        };
        // The state first, then the signal: a job that sees the stop ends (as stopped) only after
        // it shows stopping, so the reply and the live events never go back from stopped. Still
        // queued: it never starts (its task sees the stop when its turn comes).
        let why = format!("stopped by {} before it started", s.user);
        let queued = sqlx::query(
            "UPDATE jobs SET state = 'stopped', error = $1, finished = $2 WHERE id = $3 AND state = 'queued'",
        )
        .bind(&why)
        .bind(now())
        .bind(id)
        .execute(&self.db)
        .await
        .map_err(ApiError::internal)?
        .rows_affected();
        if queued == 0 {
            self.set_state(id, "stopping").await;
        }
        log(&self.db, id, "warning", &format!("stop requested by {}", s.user)).await;
        control.stop();
        if queued != 0 {
            self.publish(id).await;
        }
        self.audit_log(&s.user, "job stopped", &format!("job {id}: {} of {}", job.backup_type, job.vm)).await?;
        self.job_by_id(id).await
    }

    /// Records a job's end (its point, or why it failed or stopped), tells listeners, sends
    /// alerts (not for a stop: a user asked for it).
    pub(super) async fn finish_job(&self, id: i64, platform: i64, vm: &str, end: End<'_>, bytes: (u64, u64)) {
        let (state, point, error) = match end {
            End::Completed(point) => ("completed", Some(point), None),
            End::Failed(e) => ("failed", None, Some(e)),
            End::Stopped(e) => ("stopped", None, Some(e)),
        };
        // The last progress seen: a job faster than one progress update still shows its bytes.
        let r = sqlx::query(
            "UPDATE jobs SET state = $1, percent = CASE WHEN $1 = 'completed' THEN 100 ELSE percent END, \
             point_id = COALESCE($2, point_id), error = $3, finished = $4, done_bytes = $5, total_bytes = $6, eta_seconds = NULL \
             WHERE id = $7",
        )
        .bind(state)
        .bind(point)
        .bind(error)
        .bind(now())
        .bind(bytes.0 as i64)
        .bind(bytes.1 as i64)
        .bind(id)
        .execute(&self.db)
        .await;
        if let Err(e) = r {
            eprintln!("holdfast: job {id}: cannot record that it {state}: {e}");
        }
        let backup = self.publish(id).await.is_some_and(|j| j.kind == JobKind::Backup);
        if state != "stopped" && backup {
            self.alerts_after_job(id, platform, vm, error).await;
        }
    }

    /// Tells live-event listeners the job's current state (nobody listening is fine); returns it.
    pub(super) async fn publish(&self, id: i64) -> Option<Job> {
        let job = self.job_by_id(id).await.ok()?;
        let _ = self.events.send(job.clone());
        Some(job)
    }

    /// Shows the phases the job entered since the last look, in order, each as the job's state
    /// and a log line (a stop requested meanwhile keeps the state at stopping, an unreachable
    /// host keeps it at unknown), then the warnings its connector gave; `current` follows the
    /// phase.
    async fn show_phases(&self, id: i64, control: &JobControl, current: &mut &'static str, unknown: bool) {
        for phase in control.take_phases() {
            log(&self.db, id, "info", phase_words(phase)).await;
            *current = phase.state();
            if !control.stopped() && !unknown {
                self.set_state(id, phase.state()).await;
            }
        }
        for warning in control.take_warnings() {
            log(&self.db, id, "warning", &warning).await;
        }
    }

    /// Why the platform's host does not answer, or None when it does: probed at most every
    /// PROBE_EVERY, one probe at a time per platform, shared by all its jobs.
    async fn node_unreachable(&self, platform: i64, target: &Target) -> Option<String> {
        let node = self.nodes.lock().expect("nodes lock").entry(platform).or_default().clone();
        let mut node = node.lock().await;
        if node.at.is_some_and(|t| t.elapsed() < PROBE_EVERY) {
            return node.unreachable.clone();
        }
        let (target, work) = (target.clone(), self.work_dir.clone());
        let probe = tokio::task::spawn_blocking(move || target.connect(&work)?.test_connection());
        node.unreachable = match tokio::time::timeout(PROBE_TIMEOUT, probe).await {
            Ok(Ok(Ok(_))) => None,
            Ok(Ok(Err(e))) => Some(e.to_string()),
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some(format!("no answer within {} s", PROBE_TIMEOUT.as_secs())),
        };
        node.at = Some(std::time::Instant::now());
        node.unreachable.clone()
    }

    /// A running job whose host stops answering shows `unknown` (the transfer goes on where it
    /// can: the data path need not be the management path) and the cause as its error; when the
    /// host answers again the job shows its phase again.
    async fn show_node(&self, id: i64, control: &JobControl, lost: Option<String>, unknown: &mut bool, current: &str) {
        match (lost, *unknown) {
            (Some(why), false) => {
                *unknown = true;
                let why = format!("node unreachable: {why}");
                log(&self.db, id, "warning", &format!("{why}; the job's state is unknown until the host answers"))
                    .await;
                if !control.stopped() {
                    let _ =
                        sqlx::query("UPDATE jobs SET state = 'unknown', error = $1 WHERE id = $2 AND finished IS NULL")
                            .bind(&why)
                            .bind(id)
                            .execute(&self.db)
                            .await;
                    self.publish(id).await;
                }
            }
            (None, true) => {
                *unknown = false;
                log(&self.db, id, "info", "the host answers again").await;
                let _ = sqlx::query("UPDATE jobs SET error = NULL WHERE id = $1").bind(id).execute(&self.db).await;
                if !control.stopped() {
                    self.set_state(id, current).await;
                }
            }
            _ => {}
        }
    }

    /// Waits for the job's turn under the host's and the global limits; None when the job was
    /// stopped meanwhile (already recorded as such). Then shows it preparing.
    pub(super) async fn take_turn(
        &self,
        id: i64,
        platform: i64,
        rule: Option<i64>,
        target: &Target,
        control: &JobControl,
    ) -> Option<super::limits::Turn> {
        // A job stopped while it waited (already recorded as stopped) gives its turn back at once.
        let turn = tokio::select! {
            t = self.limits.turn(platform, rule) => t,
            () = super::runs::until_stopped(control) => return None,
        };
        if control.stopped() {
            return None;
        }
        self.begin(id, target).await;
        Some(turn)
    }

    /// Shows a job that starts its work as preparing.
    pub(super) async fn begin(&self, id: i64, target: &Target) {
        self.set_state(id, "preparing").await;
        log(&self.db, id, "info", &format!("connecting to {}", target.summary())).await;
    }

    /// Watches a job's blocking task until it ends: its phases, progress (percent, bytes,
    /// rate, ETA, from `control`) and its host's answers go to the catalog and the live
    /// events; the bandwidth windows set its limit as they open and close. Returns the task's
    /// result and the last progress seen.
    pub(super) async fn watch<T: Send + 'static>(
        self: &Arc<Self>,
        id: i64,
        platform: i64,
        target: &Target,
        control: &JobControl,
        rule_limit: Option<(i64, u64)>,
        task: tokio::task::JoinHandle<Result<T, String>>,
    ) -> (Result<T, String>, (u64, u64)) {
        let clock = Clock::from_env();
        control.set_limit(self.job_limit(&clock, rule_limit));
        tokio::pin!(task);
        let watched_since = std::time::Instant::now();
        // The rate counts from the first byte the job had to move: snapshots and plans before
        // it are not transfer time.
        let mut running_since: Option<std::time::Instant> = None;
        let mut paused = false;
        let mut seen = (0, 0, 0, None);
        let (mut current, mut unknown) = ("preparing", false);
        let mut probe: Option<tokio::task::JoinHandle<Option<String>>> = None;
        let outcome = loop {
            tokio::select! {
                done = &mut task => break done.map_err(|e| e.to_string()).and_then(|r| r),
                () = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
            }
            // The host's probe runs beside the loop, so a host slow to answer never holds up
            // progress or the end of the job.
            match probe.take() {
                Some(p) if p.is_finished() => {
                    let lost = p.await.unwrap_or(None);
                    self.show_node(id, control, lost, &mut unknown, current).await;
                }
                Some(p) => probe = Some(p),
                None => {
                    let (me, t) = (self.clone(), target.clone());
                    probe = Some(tokio::spawn(async move { me.node_unreachable(platform, &t).await }));
                }
            }
            let limit = self.job_limit(&clock, rule_limit);
            control.set_limit(limit);
            if paused != (limit == Some(0)) {
                paused = !paused;
                let words =
                    if paused { "transfer paused: a bandwidth window allows 0 MB/s" } else { "transfer resumed" };
                log(&self.db, id, "info", words).await;
            }
            self.show_phases(id, control, &mut current, unknown).await;
            let (done, total) = control.progress();
            // From the transfer phase on (a paused transfer has not reported its total yet, and
            // its pause is transfer time), or from the first progress of jobs without phases.
            if total > 0 || current == Phase::Transferring.state() {
                running_since.get_or_insert_with(std::time::Instant::now);
            }
            // Looked at every tick, not only when bytes move: a held job's rate falls and its
            // ETA grows while it waits.
            let rate = running_since.map_or(0, |since| average_rate(done, since, false));
            let eta = (rate > 0).then(|| (total.saturating_sub(done) / rate as u64) as i64);
            if (done, total, rate, eta) != seen {
                seen = (done, total, rate, eta);
                let percent = if total > 0 { done as f64 * 100.0 / total as f64 } else { 0.0 };
                let _ = sqlx::query(
                    "UPDATE jobs SET percent = $1, done_bytes = $2, total_bytes = $3, rate = $4, eta_seconds = $5 \
                     WHERE id = $6",
                )
                .bind(percent)
                .bind(done as i64)
                .bind(total as i64)
                .bind(rate)
                .bind(eta)
                .bind(id)
                .execute(&self.db)
                .await;
                self.publish(id).await;
            }
        };
        if let Some(p) = probe {
            p.abort();
        }
        // The average rate stays on the ended job (a job faster than one look counts from its
        // start).
        let (done, _) = control.progress();
        let rate = average_rate(done, running_since.unwrap_or(watched_since), true);
        let _ = sqlx::query("UPDATE jobs SET rate = $1 WHERE id = $2").bind(rate).bind(id).execute(&self.db).await;
        // A job faster than one look still shows every phase it went through.
        self.show_phases(id, control, &mut current, false).await;
        (outcome, control.progress())
    }
}

impl Service {
    /// After a backup: the job and the rule's entry learn the VM's stable id (rows from before
    /// ids were kept) and its current name (a VM renamed on the platform).
    async fn learn_vm(&self, job: i64, platform: i64, queued: &VmRef, found: &vds_store::VmDescription) {
        if found.name != queued.name {
            log(&self.db, job, "info", &format!("VM {} is now called {} on the platform", queued.name, found.name))
                .await;
        }
        let jobs = sqlx::query("UPDATE jobs SET vm = $1, vm_id = $2 WHERE id = $3")
            .bind(&found.name)
            .bind(&found.key)
            .bind(job)
            .execute(&self.db)
            .await;
        let rules = sqlx::query(
            "UPDATE rule_vms SET vm = $1, vm_id = $2 WHERE platform_id = $3 AND (vm_id = $2 OR (vm_id IS NULL AND vm = $4))",
        )
        .bind(&found.name)
        .bind(&found.key)
        .bind(platform)
        .bind(&queued.name)
        .execute(&self.db)
        .await;
        if let Some(e) = jobs.err().or(rules.err()) {
            log(&self.db, job, "warning", &format!("the catalog could not record VM {}'s id or name: {e}", found.name))
                .await;
        }
    }
}

impl Work for Backup {
    type Done = BackupOutcome;

    /// An unavailable target fails the job before anything is made on the hypervisor.
    async fn prepare(&mut self, service: &Arc<Service>) -> Result<(), String> {
        self.store = Some(service.store(self.storage).await.map_err(|e| e.message)?);
        Ok(())
    }

    fn run(
        &mut self,
        conn: &dyn Connector,
        control: &Arc<JobControl>,
        ready: &mut dyn FnMut() -> bool,
    ) -> Result<BackupOutcome, String> {
        let store = self.store.as_ref().ok_or("the storage target was not opened")?;
        let rule = self.rule.as_ref();
        let opts = BackupOptions {
            include: rule.map(|r| r.disks.clone()).unwrap_or_default(),
            quiesce: self.quiesce,
            change_tracking: rule.map(|r| r.change_tracking).unwrap_or_default(),
            lan_free: rule.is_some_and(|r| r.lan_free),
            control: control.clone(),
            ..BackupOptions::new(self.requested)
        };
        let progress = control.clone();
        backup_vm_when(conn, store, self.vm.key(), opts, ready, &mut |p| {
            progress.set_progress(p.all_done_bytes, p.all_total_bytes)
        })
        .map_err(|e| e.to_string())
    }

    async fn completed(self, service: &Arc<Service>, id: i64, o: BackupOutcome, control: &Arc<JobControl>) -> String {
        let db = &service.db;
        let p = &o.point;
        log(db, id, "info", &format!("transport: {}", o.transport)).await;
        if let Err(e) =
            sqlx::query("UPDATE jobs SET transport = $1 WHERE id = $2").bind(&o.transport).bind(id).execute(db).await
        {
            eprintln!("holdfast: job {id}: cannot record its transport: {e}");
        }
        log(db, id, "info", &o.consistency).await;
        for d in p.disks.iter().filter(|d| d.full_reason.is_some()) {
            let why = d.full_reason.as_deref().unwrap_or_default();
            log(db, id, "warning", &format!("disk {} read in full: {why}", d.key)).await;
        }
        for w in &o.warnings {
            log(db, id, "warning", w).await;
        }
        service.learn_vm(id, self.platform, &self.vm, &p.vm).await;
        if let Err(e) = insert_point(db, p, &Default::default(), self.storage).await {
            log(db, id, "error", &format!("point {} is stored but not in the catalog: {e}", p.point_id)).await;
        }
        if let (Some(rule), Some(store)) = (&self.rule, &self.store) {
            service.retain(id, store.clone(), &p.vm.key, rule).await;
        }
        let words = format!(
            "completed: {} point {}, read {} bytes, stored {} new bytes",
            p.backup_type.as_str(),
            p.point_id,
            p.stats.read_bytes,
            p.stats.new_stored_bytes
        );
        log(db, id, "info", &words).await;
        if control.stopped() {
            log(db, id, "warning", "the stop came after the point was committed: it is kept").await;
        }
        p.point_id.clone()
    }

    fn stopped(&self) -> &'static str {
        "stopped by a user; nothing of this run was committed and its snapshot was removed"
    }
}

/// Bytes per second moved since `since`; 0 while under half a second has passed (too short to
/// say), unless `ended` (then the real time counts, however short).
fn average_rate(done: u64, since: std::time::Instant, ended: bool) -> i64 {
    let secs = since.elapsed().as_secs_f64();
    if ended || secs > 0.5 {
        (done as f64 / secs.max(0.001)) as i64
    } else {
        0
    }
}
