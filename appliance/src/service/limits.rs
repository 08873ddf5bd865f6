//! How many jobs run at once: at most `max_jobs` in all and `max_jobs_per_host` against one
//! platform, changeable while jobs run (an admin's setting, kept in the catalog; the command
//! line's `--max-jobs` and `--max-jobs-per-host` are the defaults until one is saved). A job
//! takes its turn only when both its platform and the whole appliance have room, so a job
//! waiting for its busy host never holds a place another host's job could use; waiting jobs
//! take their turns in the order they came.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;
use web::{ApiError, ApiResult, JobLimits};

/// The settings key the limits are kept under.
const SETTING: &str = "job_limits";

#[derive(Default)]
struct State {
    max: usize,
    per_host: usize,
    running: usize,
    by_host: HashMap<i64, usize>,
    /// Running jobs by the rule that started them (a rule's own bandwidth is shared by these).
    by_rule: HashMap<i64, usize>,
    /// The jobs waiting (ticket, platform), oldest first.
    queue: VecDeque<(u64, i64)>,
    next_ticket: u64,
}

pub(super) struct Limits {
    state: Mutex<State>,
    changed: Notify,
}

/// A job's place among the running ones, given back when dropped.
pub(super) struct Turn {
    limits: Arc<Limits>,
    platform: i64,
    rule: Option<i64>,
}

impl Drop for Turn {
    fn drop(&mut self) {
        let mut s = self.limits.state.lock().expect("limits lock");
        s.running -= 1;
        if let Some(n) = s.by_host.get_mut(&self.platform) {
            *n -= 1;
        }
        if let Some(n) = self.rule.and_then(|r| s.by_rule.get_mut(&r)) {
            *n -= 1;
        }
        drop(s);
        self.limits.changed.notify_waiters();
    }
}

/// Takes a waiting job out of the queue if it gives up (stopped while it waits).
struct Ticket<'a>(&'a Limits, u64);

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        let mut s = self.0.state.lock().expect("limits lock");
        s.queue.retain(|(t, _)| *t != self.1);
        drop(s);
        // Whoever waited behind this job looks again.
        self.0.changed.notify_waiters();
    }
}

fn check(l: &JobLimits) -> ApiResult<()> {
    if !(1..=256).contains(&l.max_jobs) {
        return Err(ApiError::field("max_jobs", format!("{} is outside 1-256", l.max_jobs)));
    }
    if !(1..=256).contains(&l.max_jobs_per_host) {
        return Err(ApiError::field("max_jobs_per_host", format!("{} is outside 1-256", l.max_jobs_per_host)));
    }
    Ok(())
}

impl Limits {
    pub(super) fn new(max: usize, per_host: usize) -> Limits {
        Limits {
            state: Mutex::new(State { max: max.max(1), per_host: per_host.max(1), ..Default::default() }),
            changed: Notify::new(),
        }
    }

    pub(super) fn get(&self) -> JobLimits {
        let s = self.state.lock().expect("limits lock");
        JobLimits { max_jobs: s.max, max_jobs_per_host: s.per_host }
    }

    fn set(&self, l: &JobLimits) {
        let mut s = self.state.lock().expect("limits lock");
        (s.max, s.per_host) = (l.max_jobs, l.max_jobs_per_host);
        drop(s);
        self.changed.notify_waiters();
    }

    /// Jobs holding a turn now.
    pub(super) fn running(&self) -> usize {
        self.state.lock().expect("limits lock").running
    }

    /// Jobs of rule `rule` holding a turn now.
    pub(super) fn running_of_rule(&self, rule: i64) -> usize {
        self.state.lock().expect("limits lock").by_rule.get(&rule).copied().unwrap_or(0)
    }

    /// Waits for a turn for a job against `platform` (started by `rule`, if one did): the
    /// oldest waiting job whose host has room goes first, once the appliance has room.
    pub(super) async fn turn(self: &Arc<Self>, platform: i64, rule: Option<i64>) -> Turn {
        let ticket = {
            let mut s = self.state.lock().expect("limits lock");
            s.next_ticket += 1;
            let t = s.next_ticket;
            s.queue.push_back((t, platform));
            Ticket(self, t)
        };
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let mut s = self.state.lock().expect("limits lock");
                let room = |s: &State, p: i64| s.by_host.get(&p).copied().unwrap_or(0) < s.per_host;
                let first_that_can_go = s.queue.iter().find(|(_, p)| room(&s, *p)).map(|(t, _)| *t);
                if s.running < s.max && first_that_can_go == Some(ticket.1) {
                    s.running += 1;
                    *s.by_host.entry(platform).or_default() += 1;
                    if let Some(r) = rule {
                        *s.by_rule.entry(r).or_default() += 1;
                    }
                    drop(s);
                    // Out of the queue, and whoever is behind looks again (there may be room).
                    drop(ticket);
                    return Turn { limits: self.clone(), platform, rule };
                }
            }
            changed.await;
        }
    }
}

impl super::Service {
    /// The saved limits, if an admin saved any (else the command line's stay).
    pub(super) async fn load_limits(&self) -> ApiResult<()> {
        if let Some(json) = super::catalog::setting(&self.db, SETTING).await? {
            let saved: JobLimits = serde_json::from_str(&json).map_err(ApiError::internal)?;
            self.limits.set(&saved);
        }
        Ok(())
    }

    pub(super) async fn put_limits(&self, s: &web::Session, l: JobLimits) -> ApiResult<()> {
        check(&l)?;
        let json = serde_json::to_string(&l).map_err(ApiError::internal)?;
        super::catalog::save_setting(&self.db, SETTING, &json).await?;
        self.limits.set(&l);
        let words = format!("at most {} jobs, {} per platform", l.max_jobs, l.max_jobs_per_host);
        self.audit_log(&s.user, "job limits changed", &words).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn started(l: &Arc<Limits>, platform: i64) -> Option<Turn> {
        tokio::time::timeout(Duration::from_millis(50), l.turn(platform, None)).await.ok()
    }

    #[tokio::test]
    async fn turns_keep_both_limits_follow_a_change_and_let_another_hosts_job_pass() {
        let l = Arc::new(Limits::new(3, 2));
        let a1 = started(&l, 1).await.unwrap();
        let _a2 = started(&l, 1).await.unwrap();
        assert!(started(&l, 1).await.is_none(), "a third job on host 1 waits for its host");
        // A job of host 1 waiting does not hold back host 2's.
        let waiting = tokio::spawn({
            let l = l.clone();
            async move { l.turn(1, None).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let _b1 = started(&l, 2).await.expect("host 2 has room and so does the appliance");
        assert!(started(&l, 2).await.is_none(), "the appliance is full: 3 running");
        assert_eq!(l.running(), 3);
        // A place freed on host 1 goes to its waiting job.
        drop(a1);
        let _a3 = tokio::time::timeout(Duration::from_secs(1), waiting).await.unwrap().unwrap();
        assert_eq!(l.running(), 3);
        // Raising the limits lets a waiting job start at once.
        let later = tokio::spawn({
            let l = l.clone();
            async move { l.turn(2, None).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        l.set(&JobLimits { max_jobs: 4, max_jobs_per_host: 2 });
        let _b2 = tokio::time::timeout(Duration::from_secs(1), later).await.unwrap().unwrap();
        assert_eq!(l.running(), 4);
        assert!(check(&JobLimits { max_jobs: 0, max_jobs_per_host: 1 }).unwrap_err().message.starts_with("max_jobs:"));
    }

    #[tokio::test]
    async fn a_rules_running_jobs_are_counted_for_its_own_bandwidth() {
        let l = Arc::new(Limits::new(4, 4));
        let a = l.turn(1, Some(7)).await;
        let _b = l.turn(1, Some(7)).await;
        let _other = l.turn(1, Some(8)).await;
        let _by_hand = l.turn(1, None).await;
        assert_eq!((l.running_of_rule(7), l.running_of_rule(8), l.running()), (2, 1, 4));
        drop(a);
        assert_eq!(l.running_of_rule(7), 1);
    }
}
