//! Schedules in the admin's vocabulary (once, hourly with an interval, daily, weekly, monthly;
//! each with one or more run times), their validation, and the runs falling in a time window.
//! Times are the appliance's local time. The clock is injectable: with HOLDFAST_TEST_CLOCK
//! naming a file, "now" is the RFC 3339 time in that file (tests drive time with it).

use chrono::{DateTime, Datelike, Duration, Local, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Weekday};
use std::path::PathBuf;

pub use web::Schedule;

pub struct Clock {
    file: Option<PathBuf>,
    /// The last time read from the file: a file caught mid-write keeps the clock where it was
    /// rather than jumping to the real time.
    last: std::sync::Mutex<Option<DateTime<Local>>>,
}

impl Clock {
    pub fn from_env() -> Clock {
        Clock { file: std::env::var_os("HOLDFAST_TEST_CLOCK").map(PathBuf::from), last: Default::default() }
    }

    pub fn now(&self) -> DateTime<Local> {
        let Some(file) = &self.file else { return Local::now() };
        let read = std::fs::read_to_string(file)
            .ok()
            .and_then(|s| DateTime::parse_from_rfc3339(s.trim()).ok())
            .map(|t| t.with_timezone(&Local));
        let mut last = self.last.lock().expect("clock lock");
        if let Some(t) = read {
            *last = Some(t);
        }
        last.unwrap_or_else(Local::now)
    }
}

pub(super) fn time_of(field: &str, s: &str) -> Result<NaiveTime, String> {
    NaiveTime::parse_from_str(s, "%H:%M").map_err(|_| format!("{field}: {s:?} is not a time of day (HH:MM)"))
}

pub(super) fn weekday(field: &str, s: &str) -> Result<Weekday, String> {
    match s {
        "mon" => Ok(Weekday::Mon),
        "tue" => Ok(Weekday::Tue),
        "wed" => Ok(Weekday::Wed),
        "thu" => Ok(Weekday::Thu),
        "fri" => Ok(Weekday::Fri),
        "sat" => Ok(Weekday::Sat),
        "sun" => Ok(Weekday::Sun),
        _ => Err(format!("{field}: {s:?} is not a day (mon, tue, wed, thu, fri, sat, sun)")),
    }
}

fn times(field: &str, ts: &[String]) -> Result<Vec<NaiveTime>, String> {
    if ts.is_empty() {
        return Err(format!("{field}: at least one run time is needed"));
    }
    ts.iter().enumerate().map(|(i, t)| time_of(&format!("{field}[{i}]"), t)).collect()
}

fn local(dt: NaiveDateTime) -> Option<DateTime<Local>> {
    // A time skipped by a daylight-saving change does not run; a repeated one runs once.
    Local.from_local_datetime(&dt).earliest()
}

/// What a schedule means: its checks, and when it runs. (The type is the API's, in `web`.)
pub trait Runs {
    fn validate(&self, field: &str, now: DateTime<Local>) -> Result<(), String>;
    fn due(&self, from: DateTime<Local>, to: DateTime<Local>) -> bool;
    fn first_check(&self, now: DateTime<Local>) -> DateTime<Local>;
    /// The first run after `now` (looking at most 400 days ahead).
    fn next_after(&self, now: DateTime<Local>) -> Option<DateTime<Local>>;
}

impl Runs for Schedule {
    /// Checks every field; `field` names the schedule in messages ("full", "partial.schedule").
    fn validate(&self, field: &str, now: DateTime<Local>) -> Result<(), String> {
        match self {
            Schedule::Once { at } => {
                let t = NaiveDateTime::parse_from_str(at, "%Y-%m-%d %H:%M")
                    .map_err(|_| format!("{field}.at: {at:?} is not a date and time (YYYY-MM-DD HH:MM)"))?;
                if t.date() < now.date_naive() {
                    return Err(format!("{field}.at: {at} is on an earlier day"));
                }
            }
            Schedule::Hourly { every_hours, start } => {
                if !(1..=23).contains(every_hours) {
                    return Err(format!("{field}.every_hours: {every_hours} is outside 1-23"));
                }
                time_of(&format!("{field}.start"), start)?;
            }
            Schedule::Daily { times: ts } => {
                times(&format!("{field}.times"), ts)?;
            }
            Schedule::Weekly { days, times: ts } => {
                if days.is_empty() {
                    return Err(format!("{field}.days: at least one day is needed"));
                }
                for (i, d) in days.iter().enumerate() {
                    weekday(&format!("{field}.days[{i}]"), d)?;
                }
                times(&format!("{field}.times"), ts)?;
            }
            Schedule::Monthly { days, times: ts } => {
                if days.is_empty() {
                    return Err(format!("{field}.days: at least one day is needed"));
                }
                if let Some((i, d)) = days.iter().enumerate().find(|(_, d)| !(1..=31).contains(*d)) {
                    return Err(format!("{field}.days[{i}]: {d} is not a day of the month (1-31)"));
                }
                times(&format!("{field}.times"), ts)?;
            }
        }
        Ok(())
    }

    /// Whether a run falls in (from, to].
    fn due(&self, from: DateTime<Local>, to: DateTime<Local>) -> bool {
        if to <= from {
            return false;
        }
        // A service that was down for longer catches up with one run, not one per missed time.
        let from = from.max(to - Duration::days(400));
        let mut day = from.date_naive();
        while day <= to.date_naive() {
            if runs_on(self, day).into_iter().filter_map(local).any(|t| t > from && t <= to) {
                return true;
            }
            day = day.succ_opt().expect("dates go on");
        }
        false
    }

    fn next_after(&self, now: DateTime<Local>) -> Option<DateTime<Local>> {
        let mut day = now.date_naive();
        for _ in 0..=400 {
            if let Some(t) = runs_on(self, day).into_iter().filter_map(local).filter(|t| *t > now).min() {
                return Some(t);
            }
            day = day.succ_opt()?;
        }
        None
    }

    /// Where the scheduler starts looking for a new rule's runs: now, or just before a
    /// once-time earlier today, so that it runs at once.
    fn first_check(&self, now: DateTime<Local>) -> DateTime<Local> {
        match self {
            Schedule::Once { .. } => runs_on(self, now.date_naive())
                .into_iter()
                .filter_map(local)
                .map(|t| t - Duration::seconds(1))
                .fold(now, |a, b| a.min(b)),
            _ => now,
        }
    }
}

/// The run times of one day.
fn runs_on(schedule: &Schedule, day: NaiveDate) -> Vec<NaiveDateTime> {
    let at = |ts: &[String]| -> Vec<NaiveDateTime> {
        ts.iter().filter_map(|t| NaiveTime::parse_from_str(t, "%H:%M").ok()).map(|t| day.and_time(t)).collect()
    };
    match schedule {
        Schedule::Once { at: when } => {
            NaiveDateTime::parse_from_str(when, "%Y-%m-%d %H:%M").ok().filter(|t| t.date() == day).into_iter().collect()
        }
        Schedule::Hourly { every_hours, start } => {
            let Ok(first) = NaiveTime::parse_from_str(start, "%H:%M") else { return vec![] };
            let mut out = Vec::new();
            let mut t = day.and_time(first);
            while t.date() == day {
                out.push(t);
                t += Duration::hours(i64::from((*every_hours).max(1)));
            }
            out
        }
        Schedule::Daily { times: ts } => at(ts),
        Schedule::Weekly { days, times: ts } => {
            if days.iter().any(|d| weekday("", d).ok() == Some(day.weekday())) {
                at(ts)
            } else {
                vec![]
            }
        }
        Schedule::Monthly { days, times: ts } => {
            if days.contains(&day.day()) {
                at(ts)
            } else {
                vec![]
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Local> {
        local(NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M").unwrap()).unwrap()
    }

    #[test]
    fn runs_fall_where_the_admin_expects() {
        let daily = Schedule::Daily { times: vec!["02:00".into(), "14:30".into()] };
        assert!(daily.due(t("2026-11-23 01:00"), t("2026-11-23 02:00")));
        assert!(!daily.due(t("2026-11-23 02:00"), t("2026-11-23 14:29")));
        assert!(daily.due(t("2026-11-22 23:00"), t("2026-11-23 14:30")));
        // 2026-11-22 is a Sunday.
        let weekly = Schedule::Weekly { days: vec!["sun".into()], times: vec!["01:00".into()] };
        assert!(weekly.due(t("2026-11-21 12:00"), t("2026-11-22 01:00")));
        assert!(!weekly.due(t("2026-11-22 01:00"), t("2026-11-28 23:59")));
        let hourly = Schedule::Hourly { every_hours: 6, start: "03:00".into() };
        assert!(hourly.due(t("2026-11-23 08:59"), t("2026-11-23 09:00")));
        assert!(!hourly.due(t("2026-11-23 09:00"), t("2026-11-23 14:59")));
        let monthly = Schedule::Monthly { days: vec![31], times: vec!["00:30".into()] };
        assert!(!monthly.due(t("2026-11-01 00:00"), t("2026-11-30 23:59")), "November has no 31st");
        assert!(monthly.due(t("2026-12-30 00:00"), t("2026-12-31 00:30")));
        assert_eq!(daily.next_after(t("2026-11-23 02:00")), Some(t("2026-11-23 14:30")));
        assert_eq!(daily.next_after(t("2026-11-23 14:30")), Some(t("2026-11-24 02:00")));
        assert_eq!(monthly.next_after(t("2026-11-01 00:00")), Some(t("2026-12-31 00:30")));
        assert_eq!(weekly.next_after(t("2026-11-21 12:00")), Some(t("2026-11-22 01:00")));
    }

    #[test]
    fn once_runs_now_for_a_past_time_today_and_refuses_earlier_days() {
        let now = t("2026-11-23 10:00");
        let once = Schedule::Once { at: "2026-11-23 09:00".into() };
        assert!(once.validate("full", now).is_ok());
        assert!(once.due(once.first_check(now), now));
        let later = Schedule::Once { at: "2026-11-23 11:00".into() };
        assert!(!later.due(later.first_check(now), now));
        let e = Schedule::Once { at: "2026-11-22 23:00".into() }.validate("full", now).unwrap_err();
        assert!(e.starts_with("full.at:") && e.contains("earlier day"), "{e}");
    }

    #[test]
    fn bad_schedules_name_the_field() {
        let now = t("2026-11-23 10:00");
        let e = Schedule::Daily { times: vec!["25:00".into()] }.validate("full", now).unwrap_err();
        assert!(e.starts_with("full.times[0]:"), "{e}");
        let e = Schedule::Weekly { days: vec!["funday".into()], times: vec!["01:00".into()] }
            .validate("p", now)
            .unwrap_err();
        assert!(e.starts_with("p.days[0]:"), "{e}");
        let e = Schedule::Hourly { every_hours: 0, start: "00:00".into() }.validate("p", now).unwrap_err();
        assert!(e.starts_with("p.every_hours:"), "{e}");
        let e = Schedule::Monthly { days: vec![32], times: vec!["01:00".into()] }.validate("p", now).unwrap_err();
        assert!(e.starts_with("p.days[0]:"), "{e}");
    }
}
