//! A running job's controls, shared between the job that runs it and whoever watches it: a
//! stop request, a transfer limit that may change while it runs (0 pauses), the phases it
//! passes through and its progress, for the user's view of the job. Platform-neutral:
//! connectors report their own phases; the limit and the stop act on every disk read of a
//! backup through [`Governed`], and on every write of a restore through [`Throttle`].

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vds_store::{DiskReader, DiskSource};

/// What a backup is doing, in the order a backup passes through them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Reading the VM's configuration, kept verbatim in the point.
    SavingConfiguration,
    /// Making the snapshot / checkpoint and the platform's backup job.
    Snapshotting,
    /// Asking the platform which blocks changed since the base (incremental, differential).
    QueryingChanges,
    /// Snapshot taken, waiting to read (for the other snapshots of a parallel run, for a turn
    /// under the job limits).
    Waiting,
    /// Reading disks into the store.
    Transferring,
    /// Reading the new disk maps back and flushing the store before the point is committed.
    CheckingData,
}

impl Phase {
    /// The job state a user sees for this phase.
    pub fn state(self) -> &'static str {
        match self {
            Phase::SavingConfiguration => "saving_configuration",
            Phase::Snapshotting => "snapshotting",
            Phase::QueryingChanges => "querying_changes",
            Phase::Waiting => "waiting",
            Phase::Transferring => "running",
            Phase::CheckingData => "checking_data",
        }
    }
}

/// The message of the read error a stop causes.
pub const STOPPED: &str = "the job was stopped";

#[derive(Debug, Default)]
pub struct JobControl {
    stop: AtomicBool,
    /// Bytes per second; None: unlimited; Some(0): paused.
    limit: Mutex<Option<u64>>,
    /// Phases entered and not yet taken by the watcher.
    phases: Mutex<Vec<Phase>>,
    /// Warnings for the job's log (a fallback and its reason), not yet taken by the watcher.
    warnings: Mutex<Vec<String>>,
    /// Bytes done and to do, of the whole job.
    done: AtomicU64,
    total: AtomicU64,
}

impl JobControl {
    pub fn new() -> Arc<JobControl> {
        Arc::new(JobControl::default())
    }

    /// Asks the backup to stop: the next disk read fails, and the backup ends as a failed one
    /// does (nothing committed, the platform's snapshot removed).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    pub fn set_limit(&self, bytes_per_second: Option<u64>) {
        *self.limit.lock().expect("limit lock") = bytes_per_second;
    }

    pub fn limit(&self) -> Option<u64> {
        *self.limit.lock().expect("limit lock")
    }

    pub fn enter(&self, phase: Phase) {
        self.phases.lock().expect("phases lock").push(phase);
    }

    /// The phases entered since the last call, in order.
    pub fn take_phases(&self) -> Vec<Phase> {
        std::mem::take(&mut *self.phases.lock().expect("phases lock"))
    }

    /// Tells whoever watches the job something it should know but that does not fail it (a
    /// transport not used, and why); the service writes it in the job's log as a warning.
    pub fn warn(&self, message: impl Into<String>) {
        self.warnings.lock().expect("warnings lock").push(message.into());
    }

    /// The warnings given since the last call, in order.
    pub fn take_warnings(&self) -> Vec<String> {
        std::mem::take(&mut *self.warnings.lock().expect("warnings lock"))
    }

    pub fn set_progress(&self, done: u64, total: u64) {
        self.total.store(total, Ordering::Relaxed);
        self.done.store(done, Ordering::Relaxed);
    }

    pub fn add_total(&self, n: u64) {
        self.total.fetch_add(n, Ordering::Relaxed);
    }

    pub fn add_done(&self, n: u64) {
        self.done.fetch_add(n, Ordering::Relaxed);
    }

    /// Bytes done and to do.
    pub fn progress(&self) -> (u64, u64) {
        (self.done.load(Ordering::Relaxed), self.total.load(Ordering::Relaxed))
    }
}

/// How long to wait before sending more, having sent `sent` bytes in `elapsed` under a limit of
/// `limit` bytes per second (never 0 here).
fn wait_needed(sent: u64, limit: u64, elapsed: Duration) -> Duration {
    Duration::from_secs_f64(sent as f64 / limit as f64).saturating_sub(elapsed)
}

/// Longest single sleep: a stop or a changed limit is noticed within this.
const TICK: Duration = Duration::from_millis(100);

/// Transfers that obey a [`JobControl`]: `admit` fails once the job is stopped, waits while it
/// is paused, and keeps the bytes admitted to its limit from the first byte: a request waits
/// until the bytes sent with it fit the limit, so not even the first goes early (a new limit
/// starts a new count).
pub struct Throttle {
    since: Instant,
    sent: u64,
    limit_seen: Option<u64>,
}

impl Default for Throttle {
    fn default() -> Throttle {
        Throttle { since: Instant::now(), sent: 0, limit_seen: None }
    }
}

impl Throttle {
    /// Waits until `n` more bytes may go; fails when the job is stopped.
    pub fn admit(&mut self, control: &JobControl, n: usize) -> std::io::Result<()> {
        loop {
            if control.stopped() {
                return Err(std::io::Error::other(STOPPED));
            }
            let limit = control.limit();
            if limit != self.limit_seen {
                (self.since, self.sent, self.limit_seen) = (Instant::now(), 0, limit);
            }
            let wait = match limit {
                None => break,
                Some(0) => TICK,
                Some(l) => wait_needed(self.sent + n as u64, l, self.since.elapsed()),
            };
            if wait.is_zero() {
                break;
            }
            std::thread::sleep(wait.min(TICK));
        }
        self.sent += n as u64;
        Ok(())
    }
}

/// Copies a restore point's disk out of the store on several threads under `control` (its
/// limit, its stop, its progress), handing each piece of data to `write` (holes and all-zero
/// chunks are not handed out). Shared by every writer of restored disks on this machine.
pub fn copy_governed(
    reader: &DiskReader,
    control: &JobControl,
    write: &(dyn Fn(u64, &[u8]) -> std::io::Result<()> + Sync),
) -> Result<(), String> {
    let throttle = Mutex::new(Throttle::default());
    let admit = |n: usize| throttle.lock().expect("throttle lock").admit(control, n);
    let extent_done = |len: u64| {
        admit(0)?;
        control.add_done(len);
        Ok(())
    };
    let governed = |offset: u64, data: &[u8]| {
        admit(data.len())?;
        write(offset, data)
    };
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()).min(4);
    reader.copy_out(threads, &governed, &extent_done).map(|_| ()).map_err(|e| e.to_string())
}

/// Writes a restore point's disk into `file`, a raw image on this machine, `size` bytes long,
/// then fsyncs. A new image keeps the point's holes sparse; an `existing` disk (a restore in
/// place) gets them zeroed first, so nothing of its earlier contents stays.
pub fn write_raw_file(
    file: &std::fs::File,
    reader: &DiskReader,
    size: u64,
    control: &JobControl,
    existing: bool,
) -> Result<(), String> {
    use std::os::unix::fs::FileExt;
    let io = |e: std::io::Error| e.to_string();
    if existing {
        for r in reader.hole_ranges().map_err(|e| e.to_string())? {
            if control.stopped() {
                return Err(STOPPED.into());
            }
            vds_store::zero_range(file, r.clone(), 512)
                .map_err(|e| format!("zeroing bytes {}..{}: {e}", r.start, r.end))?;
        }
    } else {
        file.set_len(0).map_err(io)?;
    }
    file.set_len(size).map_err(io)?;
    copy_governed(reader, control, &|offset, data| file.write_all_at(data, offset))?;
    file.sync_all().map_err(io)
}

/// A disk source whose reads obey a [`JobControl`] through a [`Throttle`].
pub struct Governed {
    inner: Box<dyn DiskSource>,
    control: Arc<JobControl>,
    throttle: Throttle,
}

impl Governed {
    pub fn new(inner: Box<dyn DiskSource>, control: Arc<JobControl>) -> Governed {
        Governed { inner, control, throttle: Throttle::default() }
    }
}

impl DiskSource for Governed {
    fn size(&self) -> u64 {
        self.inner.size()
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.throttle.admit(&self.control, buf.len())?;
        self.inner.read_at(offset, buf)
    }

    fn is_unallocated(&mut self, offset: u64, len: u64) -> std::io::Result<bool> {
        if self.control.stopped() {
            return Err(std::io::Error::other(STOPPED));
        }
        self.inner.is_unallocated(offset, len)
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Zeros(u64);

    impl DiskSource for Zeros {
        fn size(&self) -> u64 {
            self.0
        }
        fn read_at(&mut self, _offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
            buf.fill(0);
            Ok(())
        }
        fn describe(&self) -> String {
            "zeros".into()
        }
    }

    #[test]
    fn the_wait_keeps_the_average_at_the_limit() {
        let mb = 1_000_000;
        assert_eq!(wait_needed(0, mb, Duration::ZERO), Duration::ZERO);
        assert_eq!(wait_needed(2 * mb, mb, Duration::from_millis(500)), Duration::from_millis(1500));
        assert_eq!(wait_needed(2 * mb, mb, Duration::from_secs(3)), Duration::ZERO);
    }

    /// A 1 MB/s window once let a 4 MiB incremental through in 150 ms: the first request went
    /// at once and only the next one waited.
    #[test]
    fn the_limit_holds_from_the_first_byte() {
        let control = JobControl::new();
        control.set_limit(Some(1_000_000));
        let mut t = Throttle::default();
        let start = Instant::now();
        t.admit(&control, 400_000).unwrap();
        let first = start.elapsed();
        assert!(first >= Duration::from_millis(390), "400 kB at 1 MB/s went in {first:?}");
        t.admit(&control, 200_000).unwrap();
        let both = start.elapsed();
        assert!(both >= Duration::from_millis(590) && both < Duration::from_secs(3), "{both:?}");
    }

    #[test]
    fn a_stop_fails_the_next_read_even_while_paused() {
        let control = JobControl::new();
        let mut g = Governed::new(Box::new(Zeros(1 << 20)), control.clone());
        let mut buf = vec![1u8; 4096];
        g.read_at(0, &mut buf).unwrap();
        assert!(buf.iter().all(|&b| b == 0));
        control.set_limit(Some(0));
        let stopper = {
            let c = control.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(300));
                c.stop();
            })
        };
        let started = Instant::now();
        let err = g.read_at(4096, &mut buf).unwrap_err();
        stopper.join().unwrap();
        assert_eq!(err.to_string(), STOPPED);
        // It waited (paused) until the stop came, not a moment less.
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert!(g.is_unallocated(0, 4096).is_err());
    }

    #[test]
    fn phases_are_taken_in_order_once() {
        let c = JobControl::new();
        c.enter(Phase::SavingConfiguration);
        c.enter(Phase::Snapshotting);
        assert_eq!(c.take_phases(), vec![Phase::SavingConfiguration, Phase::Snapshotting]);
        assert!(c.take_phases().is_empty());
    }
}
