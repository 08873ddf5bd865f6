//! Retention: which restore points a policy keeps, and why. A point is kept when any rule keeps it
//! (rules add up, they never remove each other's points); starred points and points locked until a
//! future time are always kept; a policy with no rule keeps everything.
//!
//! Semantics admins know from the i2 manual: keep-days N keeps points from today and the N previous
//! calendar days (0 = today only); keep-weeks N keeps this calendar week (weeks start on Monday)
//! and the N previous ones. Both range 0-64. GFS rules (daily/weekly/monthly/yearly N) keep the
//! newest point of each of the N most recent periods that have points. Days are local time.

use crate::error::{Result, StoreError};
use crate::manifest::Labels;
use crate::store::Store;
use chrono::{DateTime, Datelike, Days, Local, NaiveDate, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;

/// Maps a day to the GFS period it belongs to.
type PeriodOf = dyn Fn(NaiveDate) -> (i32, u32);

/// Which points a rule keeps: each `keep_*` that is set keeps points on its own (see above);
/// none set keeps everything. `keep_days` and `keep_weeks` range 0-64.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct RetentionPolicy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_last: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_days: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_weeks: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_daily: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_weekly: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_monthly: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_yearly: Option<u32>,
}

/// What retention needs to know of a point.
#[derive(Clone, Debug)]
pub struct PointInfo {
    pub vm: String,
    pub point_id: String,
    pub time: DateTime<Utc>,
    pub labels: Labels,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PruneDecision {
    pub vm: String,
    pub point_id: String,
    pub time: DateTime<Utc>,
    pub keep: bool,
    /// Why it is kept (every rule that keeps it), or why it goes.
    pub reasons: Vec<String>,
}

impl RetentionPolicy {
    pub fn validate(&self) -> Result<()> {
        for (name, v) in [("keep-days", self.keep_days), ("keep-weeks", self.keep_weeks)] {
            if let Some(n) = v {
                if n > 64 {
                    return Err(StoreError::Invalid(format!("{name} is {n}; it must be between 0 and 64")));
                }
            }
        }
        for (name, v) in [
            ("keep-last", self.keep_last),
            ("keep-daily", self.keep_daily),
            ("keep-weekly", self.keep_weekly),
            ("keep-monthly", self.keep_monthly),
            ("keep-yearly", self.keep_yearly),
        ] {
            if let Some(n) = v {
                if !(1..=100_000).contains(&n) {
                    return Err(StoreError::Invalid(format!("{name} is {n}; it must be between 1 and 100000")));
                }
            }
        }
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        *self == RetentionPolicy::default()
    }

    /// Decides for the points of one VM, as of `now`, in `now`'s time zone.
    pub fn plan<Tz: TimeZone>(&self, points: &[PointInfo], now: DateTime<Tz>) -> Vec<PruneDecision> {
        let tz = now.timezone();
        let mut order: Vec<&PointInfo> = points.iter().collect();
        order.sort_by(|a, b| b.time.cmp(&a.time).then(b.point_id.cmp(&a.point_id)));
        let today = now.date_naive();
        let local = |p: &PointInfo| p.time.with_timezone(&tz).date_naive();
        let monday = |d: NaiveDate| d - Days::new(d.weekday().num_days_from_monday() as u64);

        let mut reasons: Vec<Vec<String>> = vec![Vec::new(); order.len()];
        for (i, p) in order.iter().enumerate() {
            if p.labels.star {
                reasons[i].push("starred".into());
            }
            if let Some(until) = p.labels.locked_at(now.with_timezone(&Utc)) {
                reasons[i].push(format!("locked until {}", until.to_rfc3339()));
            }
            if let Some(n) = self.keep_last {
                if i < n as usize {
                    reasons[i].push(format!("keep-last {n}"));
                }
            }
            if let Some(n) = self.keep_days {
                if local(p) >= today - Days::new(n as u64) {
                    reasons[i].push(format!("keep-days {n}"));
                }
            }
            if let Some(n) = self.keep_weeks {
                if monday(local(p)) >= monday(today) - Days::new(7 * n as u64) {
                    reasons[i].push(format!("keep-weeks {n}"));
                }
            }
        }
        let gfs: [(&str, Option<u32>, &PeriodOf); 4] = [
            ("keep-daily", self.keep_daily, &|d| (d.year(), d.ordinal())),
            ("keep-weekly", self.keep_weekly, &|d| (d.iso_week().year(), d.iso_week().week())),
            ("keep-monthly", self.keep_monthly, &|d| (d.year(), d.month())),
            ("keep-yearly", self.keep_yearly, &|d| (d.year(), 0)),
        ];
        for (name, n, period) in gfs {
            let Some(n) = n else { continue };
            let mut seen = HashSet::new();
            for (i, p) in order.iter().enumerate() {
                if seen.len() >= n as usize {
                    break;
                }
                let key = period(local(p));
                if seen.insert(key) {
                    reasons[i].push(format!("{name} {n}"));
                }
            }
        }
        let everything = self.is_empty();
        order
            .iter()
            .zip(reasons)
            .map(|(p, mut why)| {
                if everything {
                    why.push("policy has no keep rule".into());
                }
                let keep = !why.is_empty();
                if !keep {
                    why.push("outside every keep rule".into());
                }
                PruneDecision { vm: p.vm.clone(), point_id: p.point_id.clone(), time: p.time, keep, reasons: why }
            })
            .collect()
    }
}

impl Store {
    /// Applies a policy to every VM (or one). Dry run: decides and deletes nothing. A point that
    /// cannot be deleted (locked, or the base of a running backup) is kept with that reason.
    pub fn prune(&self, policy: &RetentionPolicy, vm: Option<&str>, dry_run: bool) -> Result<Vec<PruneDecision>> {
        policy.validate()?;
        let vms = match vm {
            Some(v) => vec![v.to_string()],
            None => self.vms()?,
        };
        let mut out = Vec::new();
        for vm in vms {
            let (points, _damaged) = self.scan(Some(&vm))?;
            let infos: Vec<PointInfo> = points
                .into_iter()
                .map(|p| PointInfo { vm: p.vm, point_id: p.point_id, time: p.manifest.started, labels: p.labels })
                .collect();
            for mut d in policy.plan(&infos, self.now().with_timezone(&Local)) {
                if !d.keep && !dry_run {
                    match self.delete_point(&d.vm, &d.point_id) {
                        Ok(()) => {}
                        Err(e @ (StoreError::InUse { .. } | StoreError::Locked { .. })) => {
                            d.keep = true;
                            d.reasons = vec![e.to_string()];
                        }
                        Err(e) => return Err(e),
                    }
                }
                out.push(d);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::FixedOffset;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn points(times: &[&str]) -> Vec<PointInfo> {
        times
            .iter()
            .enumerate()
            .map(|(i, t)| PointInfo {
                vm: "vm".into(),
                point_id: format!("p{i}"),
                time: at(t),
                labels: Labels::default(),
            })
            .collect()
    }

    fn kept(policy: &RetentionPolicy, pts: &[PointInfo], now: &str) -> Vec<String> {
        let now = DateTime::parse_from_rfc3339(now).unwrap();
        let mut k: Vec<String> = policy.plan(pts, now).into_iter().filter(|d| d.keep).map(|d| d.point_id).collect();
        k.sort();
        k
    }

    #[test]
    fn keep_days_zero_keeps_today_and_one_keeps_yesterday_too() {
        // 2026-11-22 is a Sunday.
        let pts = points(&["2026-11-22T01:00:00Z", "2026-11-21T23:00:00Z", "2026-11-20T12:00:00Z"]);
        let p0 = RetentionPolicy { keep_days: Some(0), ..Default::default() };
        assert_eq!(kept(&p0, &pts, "2026-11-22T10:00:00Z"), ["p0"]);
        let p1 = RetentionPolicy { keep_days: Some(1), ..Default::default() };
        assert_eq!(kept(&p1, &pts, "2026-11-22T10:00:00Z"), ["p0", "p1"]);
    }

    #[test]
    fn days_are_calendar_days_in_local_time() {
        // 23:30 UTC on the 21st is already the 22nd at UTC+1.
        let pts = points(&["2026-11-21T23:30:00Z"]);
        let p0 = RetentionPolicy { keep_days: Some(0), ..Default::default() };
        let now = DateTime::parse_from_rfc3339("2026-11-22T10:00:00+01:00").unwrap();
        assert!(p0.plan(&pts, now).iter().all(|d| d.keep));
        let utc_now = now.with_timezone(&FixedOffset::east_opt(0).unwrap());
        assert!(p0.plan(&pts, utc_now).iter().all(|d| !d.keep));
    }

    #[test]
    fn weeks_start_on_monday() {
        // Now: Wednesday 2026-11-25. This week began Monday 11-23; the previous on 11-16.
        let pts =
            points(&["2026-11-23T08:00:00Z", "2026-11-22T08:00:00Z", "2026-11-16T08:00:00Z", "2026-11-15T08:00:00Z"]);
        let w0 = RetentionPolicy { keep_weeks: Some(0), ..Default::default() };
        assert_eq!(kept(&w0, &pts, "2026-11-25T12:00:00Z"), ["p0"]);
        let w1 = RetentionPolicy { keep_weeks: Some(1), ..Default::default() };
        assert_eq!(kept(&w1, &pts, "2026-11-25T12:00:00Z"), ["p0", "p1", "p2"]);
    }

    #[test]
    fn keep_last_gfs_star_lock_and_empty_policy() {
        let mut pts = points(&[
            "2026-11-22T12:00:00Z",
            "2026-11-22T06:00:00Z",
            "2026-11-21T06:00:00Z",
            "2026-10-30T06:00:00Z",
            "2025-12-30T06:00:00Z",
        ]);
        let last2 = RetentionPolicy { keep_last: Some(2), ..Default::default() };
        assert_eq!(kept(&last2, &pts, "2026-11-22T13:00:00Z"), ["p0", "p1"]);
        let daily = RetentionPolicy { keep_daily: Some(2), ..Default::default() };
        assert_eq!(kept(&daily, &pts, "2026-11-22T13:00:00Z"), ["p0", "p2"]);
        let monthly = RetentionPolicy { keep_monthly: Some(2), keep_yearly: Some(2), ..Default::default() };
        assert_eq!(kept(&monthly, &pts, "2026-11-22T13:00:00Z"), ["p0", "p3", "p4"]);
        pts[4].labels.star = true;
        pts[3].labels.retain_until = Some(at("2027-01-01T00:00:00Z"));
        assert_eq!(kept(&last2, &pts, "2026-11-22T13:00:00Z"), ["p0", "p1", "p3", "p4"]);
        assert_eq!(kept(&RetentionPolicy::default(), &pts, "2026-11-22T13:00:00Z").len(), 5);
    }

    #[test]
    fn ranges_are_validated() {
        assert!(RetentionPolicy { keep_days: Some(65), ..Default::default() }.validate().is_err());
        assert!(RetentionPolicy { keep_weeks: Some(64), ..Default::default() }.validate().is_ok());
        assert!(RetentionPolicy { keep_last: Some(0), ..Default::default() }.validate().is_err());
    }
}
