//! One run of a rule: its jobs, in the rule's order, and how they take their snapshots.
//!
//! Serial: a job starts (waits for its turn, takes its snapshot) only once every job before it
//! in the run has ended, so the host carries one of the rule's snapshots at a time. Parallel:
//! every job takes its snapshot as the run starts, without waiting for a turn (a snapshot moves
//! no data), then waits until every job of the run has its snapshot (or has failed or been
//! stopped), then for its turn to read under the job limits. Either way a job "passes" its
//! place once: at its end (serial) or once its snapshot is taken (parallel); a job that ends
//! early passes it as it goes, so nobody waits for it.
//!
//! Waiting polls every tenth of a second and gives up as soon as the job is stopped.

use connectors::JobControl;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use web::SnapshotMode;

const POLL: Duration = Duration::from_millis(100);

pub(super) struct Run {
    pub rule: i64,
    pub mode: SnapshotMode,
    /// Bytes per second the rule's jobs share; None: no limit of the rule's own.
    pub bandwidth: Option<u64>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Whether each job (by place) has passed.
    passed: Vec<bool>,
    /// Every job of the run is known.
    sealed: bool,
}

/// A job's place in its run; passed when dropped, if not before.
pub(super) struct Place {
    pub run: Arc<Run>,
    index: usize,
}

impl Run {
    pub fn new(rule: i64, mode: SnapshotMode, bandwidth: Option<u64>) -> Arc<Run> {
        Arc::new(Run { rule, mode, bandwidth, state: Mutex::default() })
    }

    /// The next place, for a job about to be queued.
    pub fn join(self: &Arc<Self>) -> Place {
        let mut s = self.state.lock().expect("run lock");
        s.passed.push(false);
        Place { run: self.clone(), index: s.passed.len() - 1 }
    }

    /// Every job of the run has its place.
    pub fn seal(&self) {
        self.state.lock().expect("run lock").sealed = true;
    }
}

impl Place {
    pub fn pass(&self) {
        self.run.state.lock().expect("run lock").passed[self.index] = true;
    }

    /// Serial: every job before this one has ended.
    fn its_turn(&self) -> bool {
        self.run.state.lock().expect("run lock").passed[..self.index].iter().all(|p| *p)
    }

    /// Parallel: every job of the run has its snapshot (or has ended).
    fn all_passed(&self) -> bool {
        let s = self.run.state.lock().expect("run lock");
        s.sealed && s.passed.iter().all(|p| *p)
    }

    /// Serial: waits until the jobs before this one have ended; false if this job was stopped
    /// meanwhile.
    pub async fn wait_for_earlier(&self, control: &JobControl) -> bool {
        while !self.its_turn() {
            if control.stopped() {
                return false;
            }
            tokio::time::sleep(POLL).await;
        }
        true
    }

    /// Parallel, on the job's blocking thread: passes (this job's snapshot is taken) and waits
    /// until every job of the run has passed; false if this job was stopped meanwhile.
    pub fn wait_for_all(&self, control: &JobControl) -> bool {
        self.pass();
        while !self.all_passed() {
            if control.stopped() {
                return false;
            }
            std::thread::sleep(POLL);
        }
        true
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        self.pass();
    }
}

/// Resolves once the job is stopped.
pub(super) async fn until_stopped(control: &JobControl) {
    while !control.stopped() {
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_places_open_in_order_and_parallel_ones_when_every_snapshot_is_taken() {
        let run = Run::new(1, SnapshotMode::Serial, None);
        let (a, b, c) = (run.join(), run.join(), run.join());
        assert!(a.its_turn() && !b.its_turn() && !c.its_turn());
        // A later job ending first (stopped while it waited) does not open an earlier one's way.
        drop(c);
        assert!(!b.its_turn());
        drop(a);
        assert!(b.its_turn());

        let run = Run::new(1, SnapshotMode::Parallel, None);
        let (a, b) = (run.join(), run.join());
        a.pass();
        b.pass();
        assert!(!a.all_passed(), "not sealed: more jobs may join");
        run.seal();
        assert!(a.all_passed());
        let stopped = JobControl::new();
        stopped.stop();
        let run = Run::new(1, SnapshotMode::Parallel, None);
        let (a, _b) = (run.join(), run.join());
        run.seal();
        assert!(!a.wait_for_all(&stopped), "a stopped job stops waiting");
    }
}
