//! The job runner every kind of job shares (backups, restores, and the long-lived
//! instant-recovery sessions to come): the turn under the global and per-platform limits, the
//! platform connection on a blocking thread, the watch that shows phases, progress, rate and a
//! lost host, and the end (completed, stopped by a user, failed) with its log line and alerts.
//! A kind of job says only what it does on the platform and what it records when it succeeds.

use super::engine::End;
use super::jobs::log;
use super::platforms::Target;
use super::runs::{until_stopped, Place};
use super::Service;
use connectors::{Connector, JobControl, Phase};
use std::future::Future;
use std::sync::Arc;
use web::SnapshotMode;

/// What one kind of job does.
pub(super) trait Work: Send + Sized + 'static {
    /// What the platform work hands back when it succeeds.
    type Done: Send + 'static;

    /// Checks that need the service, once the job's turn has come and before anything is made
    /// on the platform; an error fails the job with these words.
    fn prepare(&mut self, _service: &Arc<Service>) -> impl Future<Output = Result<(), String>> + Send {
        async { Ok(()) }
    }

    /// The work on the platform, on a blocking thread, under the job's controls (its stop, its
    /// bandwidth limit, its progress). A backup asks `ready` once its snapshot is taken and
    /// reads only if it answers true (it waits there in a parallel run); false: stopped.
    fn run(
        &mut self,
        conn: &dyn Connector,
        control: &Arc<JobControl>,
        ready: &mut dyn FnMut() -> bool,
    ) -> Result<Self::Done, String>;

    /// Records what a successful run made (points, retention, log lines); returns the point the
    /// job made or read, for its record.
    fn completed(
        self,
        service: &Arc<Service>,
        id: i64,
        done: Self::Done,
        control: &Arc<JobControl>,
    ) -> impl Future<Output = String> + Send;

    /// Why the job ended, when a user stopped it, in the words of its record.
    fn stopped(&self) -> &'static str;
}

/// A queued job: which job, on which platform, for which VM (by the name its record shows),
/// and its place in a rule's run, if a rule started it.
pub(super) struct Job {
    pub id: i64,
    pub platform: i64,
    pub target: Target,
    pub vm: String,
    pub place: Option<Place>,
}

impl Service {
    /// Runs `work` as job `job` when its turn comes, and ends the job's record.
    ///
    /// A job of a serial run first waits for the run's earlier jobs to end. A job of a parallel
    /// run takes its snapshot without a turn and waits for its turn (and the run's other
    /// snapshots) before it reads; the turn is held until the platform work ends.
    pub(super) async fn run_work<W: Work>(self: Arc<Self>, job: Job, mut work: W, control: Arc<JobControl>) {
        let Job { id, platform, target, vm, place } = job;
        let rule = place.as_ref().map(|p| p.run.rule);
        let rule_limit = place.as_ref().and_then(|p| Some((p.run.rule, p.run.bandwidth?)));
        let (serial, parallel) = match place {
            Some(p) if p.run.mode == SnapshotMode::Parallel => (None, Some(p)),
            p => (p, None),
        };
        // A job stopped while it waits (recorded as stopped by the stop) just goes.
        if let Some(p) = &serial {
            if !p.wait_for_earlier(&control).await {
                return;
            }
        }
        let _turn = match parallel {
            Some(_) if control.stopped() => return,
            Some(_) => {
                self.begin(id, &target).await;
                None
            }
            None => match self.take_turn(id, platform, rule, &target, &control).await {
                Some(turn) => Some(turn),
                None => return,
            },
        };
        if let Err(e) = work.prepare(&self).await {
            log(&self.db, id, "error", &format!("failed: {e}")).await;
            self.finish_job(id, platform, &vm, End::Failed(&e), (0, 0)).await;
            return;
        }
        let stopped = work.stopped();
        let (dir, task_target, task_control) = (self.work_dir.clone(), target.clone(), control.clone());
        let (me, runtime) = (self.clone(), tokio::runtime::Handle::current());
        let task = tokio::task::spawn_blocking(move || {
            let conn = task_target.connect(&dir).map_err(|e| e.to_string())?;
            // Parallel: the snapshot is taken; wait for the others, then for a turn to read.
            let mut turn = None;
            let mut ready = || match &parallel {
                None => true,
                Some(p) => {
                    task_control.enter(Phase::Waiting);
                    if !p.wait_for_all(&task_control) {
                        return false;
                    }
                    turn = runtime.block_on(async {
                        tokio::select! {
                            t = me.limits.turn(platform, rule) => Some(t),
                            () = until_stopped(&task_control) => None,
                        }
                    });
                    turn.is_some()
                }
            };
            let done = work.run(&*conn, &task_control, &mut ready)?;
            Ok((work, done))
        });
        let (outcome, bytes) = self.watch(id, platform, &target, &control, rule_limit, task).await;
        match outcome {
            Ok((work, done)) => {
                let point = work.completed(&self, id, done, &control).await;
                self.finish_job(id, platform, &vm, End::Completed(&point), bytes).await;
            }
            Err(e) if control.stopped() => {
                log(&self.db, id, "warning", &format!("stopped: {e}")).await;
                self.finish_job(id, platform, &vm, End::Stopped(stopped), bytes).await;
            }
            Err(e) => {
                log(&self.db, id, "error", &format!("failed: {e}")).await;
                self.finish_job(id, platform, &vm, End::Failed(&e), bytes).await;
            }
        }
    }
}
