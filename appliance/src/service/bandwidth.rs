//! Bandwidth limits by time window. The windows are kept as JSON in the catalog's settings and
//! in memory; every running job asks, about twice a second, what the limit is now (on the
//! service's clock) and takes an even share of it, so a window that opens or closes, or a
//! change saved by an admin, reaches jobs already running.

use super::schedule::{time_of, weekday, Clock};
use super::Service;
use chrono::{Datelike, Timelike};
use web::*;

pub(super) const SETTING: &str = "bandwidth";
/// Minutes after midnight of an HH:MM time.
fn minutes(field: &str, hhmm: &str) -> Result<u32, String> {
    time_of(field, hhmm).map(|t| t.hour() * 60 + t.minute())
}

pub(super) fn check(windows: &[BandwidthWindow]) -> ApiResult<()> {
    for (i, w) in windows.iter().enumerate() {
        let field = |f: &str| format!("[{i}].{f}");
        if w.days.is_empty() {
            return Err(ApiError::field(&field("days"), "name at least one day (mon … sun)"));
        }
        for d in &w.days {
            weekday(&field("days"), d).map_err(ApiError::bad)?;
        }
        let from = minutes(&field("from"), &w.from).map_err(ApiError::bad)?;
        let to = minutes(&field("to"), &w.to).map_err(ApiError::bad)?;
        if from == to {
            return Err(ApiError::field(&field("to"), "equals from: the window would be empty"));
        }
        if !w.mb_per_second.is_finite() || w.mb_per_second < 0.0 {
            return Err(ApiError::field(
                &field("mb_per_second"),
                format!("{} is not a limit (MB/s, 0 pauses)", w.mb_per_second),
            ));
        }
    }
    Ok(())
}

/// The limit in bytes per second at `now` (the lowest of the windows open then), if any.
pub(super) fn limit_at(windows: &[BandwidthWindow], now: chrono::DateTime<chrono::Local>) -> Option<u64> {
    let (day, yesterday) = (now.weekday(), now.weekday().pred());
    let t = now.hour() * 60 + now.minute();
    let on = |w: &BandwidthWindow, d: chrono::Weekday| w.days.iter().any(|x| weekday("", x) == Ok(d));
    windows
        .iter()
        .filter(|w| {
            // Checked when saved; a window that cannot be read is not open.
            let (Ok(from), Ok(to)) = (minutes("from", &w.from), minutes("to", &w.to)) else { return false };
            if from < to {
                on(w, day) && from <= t && t < to
            } else {
                (on(w, day) && t >= from) || (on(w, yesterday) && t < to)
            }
        })
        .map(|w| bytes_per_second(w.mb_per_second))
        .min()
}

/// Bytes per second of a limit in MB/s.
pub(super) fn bytes_per_second(mb: f64) -> u64 {
    (mb * 1e6) as u64
}

/// Checks a rule's own limit: more than 0 (a rule that never moves data is a disabled rule)
/// and at most 100 GB/s.
pub(super) fn check_rule_limit(mb: Option<f64>) -> ApiResult<()> {
    match mb {
        Some(mb) if !mb.is_finite() || mb <= 0.0 || mb > 100_000.0 => Err(ApiError::field(
            "bandwidth_mb_per_second",
            format!("{mb} is not a limit: give MB/s above 0, or none for no limit of the rule's own"),
        )),
        _ => Ok(()),
    }
}

impl Service {
    pub(super) async fn load_bandwidth(&self) -> ApiResult<Vec<BandwidthWindow>> {
        match super::catalog::setting(&self.db, SETTING).await? {
            None => Ok(Vec::new()),
            Some(json) => serde_json::from_str(&json).map_err(ApiError::internal),
        }
    }

    pub(super) async fn put_bandwidth(&self, s: &Session, windows: Vec<BandwidthWindow>) -> ApiResult<()> {
        check(&windows)?;
        let json = serde_json::to_string(&windows).map_err(ApiError::internal)?;
        let mut tx = super::catalog::begin_write(&self.db).await?;
        super::catalog::put_setting(&mut tx, SETTING, &json).await.map_err(ApiError::internal)?;
        tx.commit().await.map_err(ApiError::internal)?;
        let described = windows
            .iter()
            .map(|w| format!("{} {}-{} {} MB/s", w.days.join(","), w.from, w.to, w.mb_per_second))
            .collect::<Vec<_>>()
            .join("; ");
        *self.bandwidth.write().expect("bandwidth lock") = windows;
        self.audit_log(&s.user, "bandwidth limits changed", if described.is_empty() { "none" } else { &described })
            .await
    }

    /// Bytes per second one running job may read now: the open window's limit shared evenly
    /// by the jobs holding a turn, and the job's rule's own limit (rule id, bytes per second)
    /// shared by the rule's jobs holding one; the lower wins. None: unlimited.
    pub(super) fn job_limit(&self, clock: &Clock, rule: Option<(i64, u64)>) -> Option<u64> {
        let window = limit_at(&self.bandwidth.read().expect("bandwidth lock"), clock.now())
            .map(|total| total / self.limits.running().max(1) as u64);
        let own = rule.map(|(id, total)| total / self.limits.running_of_rule(id).max(1) as u64);
        window.into_iter().chain(own).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn w(days: &[&str], from: &str, to: &str, mb: f64) -> BandwidthWindow {
        BandwidthWindow {
            days: days.iter().map(|d| d.to_string()).collect(),
            from: from.into(),
            to: to.into(),
            mb_per_second: mb,
        }
    }

    fn at(s: &str) -> chrono::DateTime<chrono::Local> {
        let n = chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M").unwrap();
        chrono::Local.from_local_datetime(&n).unwrap()
    }

    #[test]
    fn windows_open_on_their_days_and_hours_and_the_lowest_wins() {
        // 2026-11-23 is a Monday.
        let ws = vec![w(&["mon", "tue"], "08:00", "18:00", 50.0), w(&["mon"], "12:00", "13:00", 0.0)];
        assert_eq!(limit_at(&ws, at("2026-11-23 07:59")), None);
        assert_eq!(limit_at(&ws, at("2026-11-23 08:00")), Some(50_000_000));
        assert_eq!(limit_at(&ws, at("2026-11-23 12:30")), Some(0));
        assert_eq!(limit_at(&ws, at("2026-11-23 18:00")), None);
        assert_eq!(limit_at(&ws, at("2026-11-24 12:30")), Some(50_000_000));
        assert_eq!(limit_at(&ws, at("2026-11-25 12:30")), None);
    }

    #[test]
    fn a_window_past_midnight_belongs_to_the_day_it_starts() {
        let ws = vec![w(&["fri"], "22:00", "06:00", 10.0)];
        assert_eq!(limit_at(&ws, at("2026-11-27 23:00")), Some(10_000_000)); // Friday night
        assert_eq!(limit_at(&ws, at("2026-11-28 05:59")), Some(10_000_000)); // Saturday morning
        assert_eq!(limit_at(&ws, at("2026-11-28 06:00")), None);
        assert_eq!(limit_at(&ws, at("2026-11-27 05:00")), None); // Friday morning: Thursday is not listed
    }

    #[test]
    fn bad_windows_name_the_field() {
        let e = check(&[w(&["mon"], "08:00", "18:00", 1.0), w(&["funday"], "08:00", "09:00", 1.0)]).unwrap_err();
        assert!(e.message.contains("[1].days") && e.message.contains("funday"), "{}", e.message);
        let e = check(&[w(&["mon"], "8:0x", "18:00", 1.0)]).unwrap_err();
        assert!(e.message.contains("[0].from"), "{}", e.message);
        let e = check(&[w(&["mon"], "08:00", "24:00", 1.0)]).unwrap_err();
        assert!(e.message.contains("[0].to"), "{}", e.message);
        let e = check(&[w(&["mon"], "08:00", "08:00", 1.0)]).unwrap_err();
        assert!(e.message.contains("empty"), "{}", e.message);
        let e = check(&[w(&["mon"], "08:00", "09:00", -1.0)]).unwrap_err();
        assert!(e.message.contains("mb_per_second"), "{}", e.message);
        let e = check(&[w(&[], "08:00", "09:00", 1.0)]).unwrap_err();
        assert!(e.message.contains("[0].days"), "{}", e.message);
    }
}
