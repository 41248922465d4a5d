//! Scheduled reruns: a notebook's schedule (`every 1h`, or five-field cron
//! `0 6 * * 1-5`) lives in its metadata (`salespulse.schedule`);
//! `salespulse run` and the app run a notebook when it is due, and keep
//! each run — its HTML report and a JSON record (when, how long, the
//! failing cell) — in `.runs/NAME/` beside the notebook, the history the
//! app and `notebook history` show. The notebook file itself is not
//! rewritten by a scheduled run.

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Datelike, Duration as TimeDelta, Timelike, Utc};
use serde::{Deserialize, Serialize};

use super::format::Notebook;

/// When a notebook runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Every {
    /// At a fixed interval after the last run (at least a minute).
    Interval(Duration),
    /// At the minutes a cron expression names (UTC).
    Cron(Cron),
}

/// A five-field cron expression: minute, hour, day of month, month, day
/// of week (0 or 7 = Sunday); `*`, numbers, lists, ranges and steps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cron {
    text: String,
    minutes: Vec<bool>,
    hours: Vec<bool>,
    days: Vec<bool>,
    months: Vec<bool>,
    weekdays: Vec<bool>,
    any_day: bool,
    any_weekday: bool,
}

fn field(text: &str, lo: u32, hi: u32, name: &str) -> Result<(Vec<bool>, bool), String> {
    let mut set = vec![false; hi as usize + 1];
    let bad = |why: &str| format!("cron {name} field {text:?}: {why} ({lo}–{hi})");
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => (
                r,
                s.parse::<u32>()
                    .ok()
                    .filter(|s| *s >= 1)
                    .ok_or_else(|| bad("a step is a whole number from 1"))?,
            ),
            None => (part, 1),
        };
        let (a, b) = if range == "*" {
            (lo, hi)
        } else if let Some((a, b)) = range.split_once('-') {
            let a = a.parse::<u32>().map_err(|_| bad("not a number"))?;
            let b = b.parse::<u32>().map_err(|_| bad("not a number"))?;
            (a, b)
        } else {
            let a = range.parse::<u32>().map_err(|_| bad("not a number"))?;
            (a, if part.contains('/') { hi } else { a })
        };
        if a < lo || b > hi || a > b {
            return Err(bad("out of range"));
        }
        let mut v = a;
        while v <= b {
            if let Some(x) = set.get_mut(v as usize) {
                *x = true;
            }
            match v.checked_add(step) {
                Some(n) => v = n,
                None => break,
            }
        }
    }
    Ok((set, text == "*"))
}

impl Cron {
    /// Parses `m h dom mon dow`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let parts: Vec<&str> = text.split_whitespace().collect();
        let [m, h, dom, mon, dow] = parts.as_slice() else {
            return Err(format!(
                "cron {text:?}: five fields (minute hour day-of-month month day-of-week)"
            ));
        };
        let (minutes, _) = field(m, 0, 59, "minute")?;
        let (hours, _) = field(h, 0, 23, "hour")?;
        let (days, any_day) = field(dom, 1, 31, "day-of-month")?;
        let (months, _) = field(mon, 1, 12, "month")?;
        let (mut weekdays, any_weekday) = field(dow, 0, 7, "day-of-week")?;
        if weekdays.get(7).copied().unwrap_or(false) {
            if let Some(sun) = weekdays.get_mut(0) {
                *sun = true;
            }
        }
        Ok(Self {
            text: parts.join(" "),
            minutes,
            hours,
            days,
            months,
            weekdays,
            any_day,
            any_weekday,
        })
    }

    fn matches(&self, t: DateTime<Utc>) -> bool {
        let on = |v: &[bool], i: u32| v.get(i as usize).copied().unwrap_or(false);
        let dom = on(&self.days, t.day());
        let dow = on(&self.weekdays, t.weekday().num_days_from_sunday());
        // Cron's rule: with both day fields restricted, either one will do.
        let day = match (self.any_day, self.any_weekday) {
            (true, true) => true,
            (false, true) => dom,
            (true, false) => dow,
            (false, false) => dom || dow,
        };
        on(&self.minutes, t.minute())
            && on(&self.hours, t.hour())
            && on(&self.months, t.month())
            && day
    }

    /// The first minute after `t` the expression names (within 5 years).
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let minute = TimeDelta::minutes(1);
        let mut m = t
            .with_second(0)?
            .with_nanosecond(0)?
            .checked_add_signed(minute)?;
        let end = t.checked_add_signed(TimeDelta::days(366 * 5))?;
        while m <= end {
            if !on_month(&self.months, m.month()) {
                // Skip to the first minute of the next month.
                let (y, mo) = if m.month() == 12 {
                    (m.year() + 1, 1)
                } else {
                    (m.year(), m.month() + 1)
                };
                m = chrono::NaiveDate::from_ymd_opt(y, mo, 1)?
                    .and_hms_opt(0, 0, 0)?
                    .and_utc();
                continue;
            }
            if self.matches(m) {
                return Some(m);
            }
            m = m.checked_add_signed(minute)?;
        }
        None
    }
}

fn on_month(months: &[bool], m: u32) -> bool {
    months.get(m as usize).copied().unwrap_or(false)
}

impl Every {
    /// `15m`, `1h`, `6h`, `1d`, `1w` (an interval), else a cron expression.
    pub fn parse(text: &str) -> Result<Self, String> {
        let t = text.trim();
        if t.split_whitespace().count() == 5 {
            return Cron::parse(t).map(Every::Cron);
        }
        let (num, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
        let n: u64 = num
            .parse()
            .map_err(|_| format!("{text:?}: an interval (15m, 1h, 1d, 1w) or a cron expression"))?;
        let secs = match unit.trim() {
            "m" | "min" => 60,
            "h" => 3_600,
            "d" => 86_400,
            "w" => 604_800,
            _ => {
                return Err(format!(
                    "{text:?}: an interval (15m, 1h, 1d, 1w) or a cron expression"
                ))
            }
        };
        let d = Duration::from_secs(n.saturating_mul(secs));
        if d < Duration::from_secs(60) || d > Duration::from_secs(366 * 86_400) {
            return Err(format!("{text:?}: between one minute and a year"));
        }
        Ok(Every::Interval(d))
    }

    /// When to run next, the last run having started at `last` (`None`:
    /// never run, so an interval is due now and a cron at its next minute
    /// after `now`).
    pub fn next(&self, last: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match (self, last) {
            (Every::Interval(_), None) => Some(now),
            (Every::Interval(d), Some(l)) => l.checked_add_signed(TimeDelta::from_std(*d).ok()?),
            (Every::Cron(c), Some(l)) => c.next_after(l),
            (Every::Cron(c), None) => c.next_after(now - TimeDelta::minutes(1)),
        }
    }
}

impl std::fmt::Display for Every {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Every::Cron(c) => f.write_str(&c.text),
            Every::Interval(d) => {
                let s = d.as_secs();
                match s {
                    s if s % 604_800 == 0 => write!(f, "{}w", s / 604_800),
                    s if s % 86_400 == 0 => write!(f, "{}d", s / 86_400),
                    s if s % 3_600 == 0 => write!(f, "{}h", s / 3_600),
                    s => write!(f, "{}m", s / 60),
                }
            }
        }
    }
}

/// The schedule a notebook's metadata holds (`salespulse.schedule`).
pub fn schedule_of(nb: &Notebook) -> Option<Result<Every, String>> {
    let text = nb.metadata.get("salespulse")?.get("schedule")?.as_str()?;
    Some(Every::parse(text))
}

/// Sets (or, with `None`, removes) a notebook's schedule.
pub fn set_schedule(nb: &mut Notebook, every: Option<&Every>) {
    if let Some(m) = nb.salespulse_meta() {
        match every {
            Some(e) => {
                m.insert("schedule".into(), serde_json::Value::String(e.to_string()));
            }
            None => {
                m.remove("schedule");
            }
        }
    }
}

/// One kept run of a notebook.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// When it started.
    pub started: DateTime<Utc>,
    /// How long it took, in seconds.
    pub seconds: f64,
    /// Code cells run.
    pub executed: usize,
    /// The cell that failed (from 1), if one did.
    pub failed_cell: Option<usize>,
    /// Its error.
    pub error: Option<String>,
    /// The report of the run, beside this record.
    pub report: String,
}

/// The folder a notebook's runs are kept in: `.runs/NAME/` beside it.
pub fn runs_dir(notebook: &Path) -> PathBuf {
    let stem = notebook.file_stem().map_or_else(
        || "notebook".to_owned(),
        |s| s.to_string_lossy().into_owned(),
    );
    notebook
        .parent()
        .unwrap_or_else(|| Path::new("."))
        .join(".runs")
        .join(stem)
}

/// A notebook's kept runs, newest first (unreadable records skipped).
pub fn history(notebook: &Path) -> Vec<RunRecord> {
    let Ok(rd) = std::fs::read_dir(runs_dir(notebook)) else {
        return Vec::new();
    };
    let mut v: Vec<RunRecord> = rd
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .filter_map(|t| serde_json::from_str::<RunRecord>(&t).ok())
        // A record names its report by a plain file name beside it; one
        // that points elsewhere is not ours (and is never deleted through).
        .filter(|r| {
            r.report.ends_with(".html")
                && Path::new(&r.report).file_name() == Some(std::ffi::OsStr::new(&r.report))
        })
        .collect();
    v.sort_by_key(|r| std::cmp::Reverse(r.started));
    v
}

/// Runs kept per notebook; older ones are deleted.
pub const KEEP_RUNS: usize = 100;

/// Keeps one run: its report and record in [`runs_dir`]; drops the
/// oldest beyond [`KEEP_RUNS`].
pub fn keep_run(
    notebook: &Path,
    started: DateTime<Utc>,
    report_html: &str,
    run: &super::RunReport,
) -> std::io::Result<RunRecord> {
    let dir = runs_dir(notebook);
    std::fs::create_dir_all(&dir)?;
    let stamp = started.format("%Y-%m-%dT%H-%M-%SZ").to_string();
    let report = format!("{stamp}.html");
    std::fs::write(dir.join(&report), report_html)?;
    let record = RunRecord {
        started,
        seconds: run.elapsed.as_secs_f64(),
        executed: run.executed,
        failed_cell: run.failed.as_ref().map(|f| f.cell),
        error: run.failed.as_ref().map(|f| f.error.to_string()),
        report,
    };
    let json = serde_json::to_string_pretty(&record).map_err(std::io::Error::other)?;
    std::fs::write(dir.join(format!("{stamp}.json")), json)?;
    for old in history(notebook).iter().skip(KEEP_RUNS) {
        let _ = std::fs::remove_file(dir.join(&old.report));
        let _ = std::fs::remove_file(dir.join(old.report.replace(".html", ".json")));
    }
    Ok(record)
}

/// The scheduled notebooks of `dir` that are due at `now`, with when they
/// were due (a notebook with a bad schedule is logged and skipped).
pub fn due(dir: &Path, now: DateTime<Utc>) -> Vec<PathBuf> {
    let Ok(list) = super::list(dir) else {
        return Vec::new();
    };
    list.into_iter()
        .filter_map(|l| {
            let nb = Notebook::load(&l.path).ok()?;
            let every = match schedule_of(&nb)? {
                Ok(e) => e,
                Err(why) => {
                    tracing::warn!("{}: schedule not understood: {why}", l.path.display());
                    return None;
                }
            };
            let last = history(&l.path).first().map(|r| r.started);
            let next = every.next(last, now)?;
            (next <= now).then_some(l.path)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap()
    }

    #[test]
    fn intervals_and_cron_expressions_parse_and_say_what_is_wrong() {
        assert_eq!(
            Every::parse("1h").unwrap(),
            Every::Interval(Duration::from_secs(3600))
        );
        assert_eq!(Every::parse("15m").unwrap().to_string(), "15m");
        assert_eq!(Every::parse("2d").unwrap().to_string(), "2d");
        assert!(Every::parse("0m").unwrap_err().contains("one minute"));
        assert!(Every::parse("5x").unwrap_err().contains("interval"));
        assert_eq!(
            Every::parse("0  6 * * 1-5").unwrap().to_string(),
            "0 6 * * 1-5"
        );
        assert!(Every::parse("61 * * * *").unwrap_err().contains("minute"));
        assert!(Every::parse("* * * *").unwrap_err().contains("interval"));
        assert!(Cron::parse("* * * *").unwrap_err().contains("five fields"));
        assert!(Every::parse("*/0 * * * *").unwrap_err().contains("step"));
        // A huge step does not overflow: the first value only.
        assert!(Every::parse("1/4294967295 * * * *").is_ok());
    }

    #[test]
    fn cron_finds_the_next_minute_it_names() {
        let c = Cron::parse("0 6 * * 1-5").unwrap();
        // Monday 2026-12-07 05:59 → 06:00 the same day; after it → Tuesday.
        assert_eq!(
            c.next_after(at(2026, 12, 7, 5, 59)),
            Some(at(2026, 12, 7, 6, 0))
        );
        assert_eq!(
            c.next_after(at(2026, 12, 7, 6, 0)),
            Some(at(2026, 12, 8, 6, 0))
        );
        // Friday evening → Monday.
        assert_eq!(
            c.next_after(at(2026, 12, 11, 7, 0)),
            Some(at(2026, 12, 14, 6, 0))
        );
        let c = Cron::parse("*/15 * * * *").unwrap();
        assert_eq!(
            c.next_after(at(2026, 12, 7, 10, 7)),
            Some(at(2026, 12, 7, 10, 15))
        );
        // Both day fields restricted: either one (the 1st, or a Sunday).
        let c = Cron::parse("0 0 1 * 0").unwrap();
        assert_eq!(
            c.next_after(at(2026, 12, 7, 0, 0)),
            Some(at(2026, 12, 13, 0, 0))
        );
        let c = Cron::parse("30 2 29 2 *").unwrap();
        assert_eq!(
            c.next_after(at(2026, 3, 1, 0, 0)),
            Some(at(2028, 2, 29, 2, 30))
        );
        let c = Cron::parse("0 0 * * 7").unwrap();
        assert_eq!(
            c.next_after(at(2026, 12, 7, 0, 0)),
            Some(at(2026, 12, 13, 0, 0))
        );
    }

    #[test]
    fn a_schedule_is_due_after_its_interval_or_at_its_minute() {
        let now = at(2026, 12, 7, 12, 0);
        let e = Every::parse("1h").unwrap();
        assert_eq!(e.next(None, now), Some(now));
        assert_eq!(
            e.next(Some(at(2026, 12, 7, 11, 30)), now),
            Some(at(2026, 12, 7, 12, 30))
        );
        let c = Every::parse("0 * * * *").unwrap();
        assert_eq!(c.next(None, now), Some(now));
        assert_eq!(c.next(Some(now), now), Some(at(2026, 12, 7, 13, 0)));
        let mut nb = Notebook::new();
        assert_eq!(schedule_of(&nb), None);
        set_schedule(&mut nb, Some(&e));
        assert_eq!(schedule_of(&nb), Some(Ok(e)));
        set_schedule(&mut nb, None);
        assert_eq!(schedule_of(&nb), None);
    }
}
