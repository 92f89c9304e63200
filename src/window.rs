//! Time windows: local days in a site's time zone, explicit ranges, and the
//! sample grid inside them.
//!
//! Windows are half-open `[start, end)` in UTC. A local day is midnight to
//! midnight in the site's zone, so a DST-change day is 23 or 25 hours long.
//! The sample grid is every `interval` seconds since the Unix epoch, which is
//! how ingest timestamps samples, so the same second is the same key anywhere.

use chrono::{DateTime, Duration, LocalResult, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

/// The window flags shared by every command that reads a period.
#[derive(Debug, Clone, clap::Args)]
pub struct WindowArgs {
    /// One local day in each site's time zone (loss and reconcile
    /// default to yesterday; see each command for its own default).
    #[arg(long, value_name = "YYYY-MM-DD", conflicts_with_all = ["from", "to", "days"])]
    pub date: Option<NaiveDate>,
    /// The last N whole local days (today excluded).
    #[arg(long, value_name = "N", conflicts_with_all = ["from", "to"], value_parser = clap::value_parser!(u32).range(1..=3660))]
    pub days: Option<u32>,
    /// Window start: an RFC 3339 time, or a site-local `YYYY-MM-DD[ HH:MM[:SS]]`.
    #[arg(long, value_name = "TIME", requires = "to")]
    pub from: Option<String>,
    /// Window end (exclusive); the part after now is not counted.
    #[arg(long, value_name = "TIME", requires = "from")]
    pub to: Option<String>,
}

impl WindowArgs {
    /// What the flags ask for, or None when no window flag was given (for
    /// commands whose default is not "yesterday").
    pub fn given(&self) -> Option<WindowSpec> {
        (self.date.is_some() || self.days.is_some() || self.from.is_some()).then(|| self.spec())
    }

    pub fn spec(&self) -> WindowSpec {
        if let Some(n) = self.days {
            return WindowSpec::Days(n);
        }
        match (&self.date, &self.from, &self.to) {
            (Some(d), _, _) => WindowSpec::Date(*d),
            (None, Some(from), Some(to)) => WindowSpec::Range {
                from: from.clone(),
                to: to.clone(),
            },
            _ => WindowSpec::Yesterday,
        }
    }
}

/// What the command line asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WindowSpec {
    /// The local day before today (what cron runs just after midnight).
    Yesterday,
    /// One local day.
    Date(NaiveDate),
    /// The last N whole local days, up to today's local midnight.
    Days(u32),
    /// From one instant to another; local times are in the site's zone.
    Range { from: String, to: String },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WindowError {
    #[error(
        "cannot read `{0}` as a time: use 2026-03-01T00:00:00+09:00, `2026-03-01 00:00:00` (site-local) or 2026-03-01"
    )]
    BadTime(String),
    #[error("the window is empty: --from {from} is not before --to {to}")]
    Empty { from: String, to: String },
}

impl WindowError {
    pub fn exit_code(&self) -> u8 {
        crate::exit::code::USAGE
    }
}

crate::into_error!(WindowError);

impl Window {
    pub fn seconds(&self) -> i64 {
        (self.end - self.start).num_seconds()
    }

    /// The part of the window that is not in the future.
    pub fn until(&self, now: DateTime<Utc>) -> Window {
        Window {
            start: self.start,
            end: self.end.min(now).max(self.start),
        }
    }

    /// Sample timestamps on the `interval_secs` grid inside the window.
    pub fn grid_points(&self, interval_secs: u32) -> i64 {
        let i = i64::from(interval_secs);
        // A fractional start (10:00:00.5) has its first grid point after it.
        let first = ceil_to_grid(
            self.start.timestamp() + i64::from(self.start.timestamp_subsec_nanos() > 0),
            i,
        );
        let end = self.end.timestamp() + i64::from(self.end.timestamp_subsec_nanos() > 0);
        if first >= end {
            0
        } else {
            (end - 1 - first) / i + 1
        }
    }

    /// The window cut at local midnights of `tz`: each piece with its local
    /// date and whether it is that whole day.
    pub fn local_days(&self, tz: Tz) -> Vec<(NaiveDate, Window, bool)> {
        let mut out = Vec::new();
        let mut date = self.start.with_timezone(&tz).date_naive();
        while local_day(date, tz).start < self.end {
            let day = local_day(date, tz);
            let piece = Window {
                start: day.start.max(self.start),
                end: day.end.min(self.end),
            };
            if piece.start < piece.end {
                out.push((date, piece, piece == day));
            }
            match date.succ_opt() {
                Some(next) => date = next,
                None => break,
            }
        }
        out
    }

    /// The first grid point at or after the window's start.
    pub fn first_grid_point(&self, interval_secs: u32) -> DateTime<Utc> {
        let secs = ceil_to_grid(
            self.start.timestamp() + i64::from(self.start.timestamp_subsec_nanos() > 0),
            i64::from(interval_secs),
        );
        DateTime::from_timestamp(secs, 0).unwrap_or(self.start)
    }
}

fn ceil_to_grid(secs: i64, interval: i64) -> i64 {
    secs.div_euclid(interval) * interval
        + if secs.rem_euclid(interval) == 0 {
            0
        } else {
            interval
        }
}

impl WindowSpec {
    pub fn resolve(&self, tz: Tz, now: DateTime<Utc>) -> Result<Window, WindowError> {
        match self {
            WindowSpec::Yesterday => Ok(local_day(
                now.with_timezone(&tz).date_naive() - Duration::days(1),
                tz,
            )),
            WindowSpec::Date(d) => Ok(local_day(*d, tz)),
            WindowSpec::Days(n) => {
                let today = now.with_timezone(&tz).date_naive();
                let first = today - Duration::days(i64::from(*n));
                Ok(Window {
                    start: local_day(first, tz).start,
                    end: local_day(today, tz).start,
                })
            }
            WindowSpec::Range { from, to } => {
                let (start, end) = (parse_time(from, tz)?, parse_time(to, tz)?);
                if start >= end {
                    return Err(WindowError::Empty {
                        from: from.clone(),
                        to: to.clone(),
                    });
                }
                Ok(Window { start, end })
            }
        }
    }
}

/// Local midnight to the next local midnight.
pub fn local_day(date: NaiveDate, tz: Tz) -> Window {
    let next = date.succ_opt().unwrap_or(date);
    Window {
        start: local_midnight(date, tz),
        end: local_midnight(next, tz),
    }
}

/// The first instant of `date` in `tz`. Where a DST jump skips midnight
/// (some zones change at 00:00), the day starts at the first minute that exists.
fn local_midnight(date: NaiveDate, tz: Tz) -> DateTime<Utc> {
    let mut t = date.and_time(NaiveTime::MIN);
    for _ in 0..=180 {
        match tz.from_local_datetime(&t) {
            LocalResult::Single(x) => return x.with_timezone(&Utc),
            LocalResult::Ambiguous(earliest, _) => return earliest.with_timezone(&Utc),
            LocalResult::None => t += Duration::minutes(1),
        }
    }
    Utc.from_utc_datetime(&date.and_time(NaiveTime::MIN))
}

/// An instant with an offset, or a site-local date/time.
pub fn parse_time(s: &str, tz: Tz) -> Result<DateTime<Utc>, WindowError> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    let local = [
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%d %H:%M",
        "%Y-%m-%dT%H:%M",
    ]
    .iter()
    .find_map(|f| NaiveDateTime::parse_from_str(s, f).ok())
    .or_else(|| {
        NaiveDate::parse_from_str(s, "%Y-%m-%d")
            .ok()
            .map(|d| d.and_time(NaiveTime::MIN))
    });
    let local = local.ok_or_else(|| WindowError::BadTime(s.to_string()))?;
    match tz.from_local_datetime(&local) {
        LocalResult::Single(t) | LocalResult::Ambiguous(t, _) => Ok(t.with_timezone(&Utc)),
        LocalResult::None => Err(WindowError::BadTime(format!(
            "{s} (does not exist in {tz}: DST gap)"
        ))),
    }
}

/// A duration that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("`{0}` is not a duration; use e.g. 500ms, 90s, 5m, 2h or 1d")]
    NotADuration(String),
    #[error("`{text}` has an unknown unit `{unit}`; use us, ms, s, m, h or d")]
    UnknownUnit { text: String, unit: String },
    #[error("`{0}` is too long (at most 36500d, about a century)")]
    TooLong(String),
    #[error("`{0}` is negative")]
    Negative(String),
}

/// A duration as operators write it: `300`, `90s`, `5m`, `2h`, `1d`.
pub fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    let s = s.trim();
    let (digits, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: i64 = digits
        .parse()
        .map_err(|_| DurationError::NotADuration(s.to_string()))?;
    let micros = match unit {
        "us" => 1,
        "ms" => 1000,
        "" | "s" => 1_000_000,
        "m" => 60_000_000,
        "h" => 3_600_000_000,
        "d" => 86_400_000_000,
        _ => {
            return Err(DurationError::UnknownUnit {
                text: s.to_string(),
                unit: unit.to_string(),
            });
        }
    };
    // A century bounds every duration essops takes, so arithmetic on dates
    // (now minus a duration) can never leave the calendar.
    const MAX_MICROS: i64 = 36_500 * 86_400_000_000;
    n.checked_mul(micros)
        .filter(|m| *m <= MAX_MICROS)
        .map(Duration::microseconds)
        .ok_or_else(|| DurationError::TooLong(s.to_string()))
}

pub fn parse_std_duration(s: &str) -> Result<std::time::Duration, DurationError> {
    parse_duration(s)?
        .to_std()
        .map_err(|_| DurationError::Negative(s.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_fractional_start_adds_no_phantom_sample() {
        let t = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        let w = Window {
            start: t("2026-03-05T10:00:00.5Z"),
            end: t("2026-03-05T10:00:10Z"),
        };
        // 10:00:01 .. 10:00:09: 10:00:00 is before the start.
        assert_eq!(w.grid_points(1), 9);
        assert_eq!(w.first_grid_point(1), t("2026-03-05T10:00:01Z"));
    }

    #[test]
    fn window_local_days_cut_at_local_midnight_and_mark_whole_days() {
        let tz: Tz = "Asia/Kolkata".parse().unwrap();
        let day = |d: u32| local_day(NaiveDate::from_ymd_opt(2026, 3, d).unwrap(), tz);
        let w = Window {
            start: day(4).start + Duration::hours(12),
            end: day(6).end,
        };
        let pieces = w.local_days(tz);
        let whole: Vec<bool> = pieces.iter().map(|p| p.2).collect();
        assert_eq!(whole, [false, true, true]);
        assert_eq!(pieces[1].1, day(5));
        let covered: i64 = pieces.iter().map(|p| p.1.seconds()).sum();
        assert_eq!(covered, w.seconds());
    }

    #[test]
    fn window_durations_are_bounded_so_date_arithmetic_cannot_overflow() {
        assert!(parse_duration("36500d").is_ok());
        for long in [
            "36501d",
            "99999999d",
            "1000000000d",
            "9223372036854775807us",
        ] {
            let e = parse_duration(long).unwrap_err().to_string();
            assert!(e.contains("too long"), "{long}: {e}");
        }
        let now = chrono::Utc::now();
        let _ = now - parse_duration("36500d").unwrap();
    }

    #[test]
    fn window_days_are_whole_local_days_before_today() {
        let tz: Tz = "Europe/Berlin".parse().unwrap();
        // 2026-03-30 10:00 local: the last 2 days span the DST change (23 h + 24 h).
        let now = utc("2026-03-30T08:00:00Z");
        let w = WindowSpec::Days(2).resolve(tz, now).unwrap();
        assert_eq!(w.start, utc("2026-03-27T23:00:00Z"));
        assert_eq!(w.end, utc("2026-03-29T22:00:00Z"));
        assert_eq!(w.seconds(), 47 * 3600);
    }

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn window_seoul_day_is_86400_seconds() {
        let w = local_day(
            NaiveDate::from_ymd_opt(2026, 3, 8).unwrap(),
            chrono_tz::Asia::Seoul,
        );
        assert_eq!(w.start, utc("2026-03-07T15:00:00Z"));
        assert_eq!(
            (w.seconds(), w.grid_points(1), w.grid_points(10)),
            (86_400, 86_400, 8_640)
        );
    }

    #[test]
    fn window_dst_days_have_23_and_25_hours() {
        let ny = chrono_tz::America::New_York;
        let spring = local_day(NaiveDate::from_ymd_opt(2026, 3, 8).unwrap(), ny);
        let autumn = local_day(NaiveDate::from_ymd_opt(2026, 11, 1).unwrap(), ny);
        assert_eq!(
            (spring.seconds(), spring.grid_points(1)),
            (23 * 3600, 23 * 3600)
        );
        assert_eq!(
            (autumn.seconds(), autumn.grid_points(1)),
            (25 * 3600, 25 * 3600)
        );
    }

    #[test]
    fn window_midnight_skipped_by_dst_starts_at_first_real_minute() {
        // Chile moves clocks from 00:00 to 01:00 in September.
        let w = local_day(
            NaiveDate::from_ymd_opt(2026, 9, 6).unwrap(),
            chrono_tz::America::Santiago,
        );
        assert_eq!(w.seconds(), 23 * 3600);
    }

    #[test]
    fn window_yesterday_is_the_previous_local_day() {
        // 2026-05-02 00:30 in Seoul is still 05-01 in UTC.
        let now = utc("2026-05-01T15:30:00Z");
        let w = WindowSpec::Yesterday
            .resolve(chrono_tz::Asia::Seoul, now)
            .unwrap();
        assert_eq!(
            (w.start, w.end),
            (utc("2026-04-30T15:00:00Z"), utc("2026-05-01T15:00:00Z"))
        );
    }

    #[test]
    fn window_future_part_is_not_counted() {
        let w = local_day(NaiveDate::from_ymd_opt(2026, 5, 1).unwrap(), chrono_tz::UTC);
        let now = utc("2026-05-01T06:00:00.400Z");
        assert_eq!(w.until(now).grid_points(1), 6 * 3600 + 1);
        assert_eq!(w.until(utc("2026-04-01T00:00:00Z")).grid_points(1), 0);
    }

    #[test]
    fn window_grid_points_on_unaligned_edges() {
        let w = Window {
            start: utc("2026-01-01T00:00:05Z"),
            end: utc("2026-01-01T00:01:05Z"),
        };
        assert_eq!(w.grid_points(10), 6); // :10 :20 ... :60
        assert_eq!(w.first_grid_point(10), utc("2026-01-01T00:00:10Z"));
        assert_eq!(w.grid_points(1), 60);
    }

    #[test]
    fn window_parses_durations() {
        assert_eq!(parse_duration("5m"), Ok(Duration::minutes(5)));
        assert_eq!(parse_duration("0"), Ok(Duration::zero()));
        assert_eq!(parse_duration("2h"), Ok(Duration::hours(2)));
        assert!(parse_duration("5 minutes").is_err());
        assert!(parse_duration("m").is_err());
        assert_eq!(
            parse_std_duration("250ms"),
            Ok(std::time::Duration::from_millis(250))
        );
    }

    #[test]
    fn window_parses_times() {
        let tz = chrono_tz::Asia::Seoul;
        assert_eq!(
            parse_time("2026-01-01 09:00:00", tz).unwrap(),
            utc("2026-01-01T00:00:00Z")
        );
        assert_eq!(
            parse_time("2026-01-01T00:00:00Z", tz).unwrap(),
            utc("2026-01-01T00:00:00Z")
        );
        assert_eq!(
            parse_time("2026-01-02", tz).unwrap(),
            utc("2026-01-01T15:00:00Z")
        );
        assert!(matches!(
            parse_time("yesterday", tz),
            Err(WindowError::BadTime(_))
        ));
        let spec = WindowSpec::Range {
            from: "2026-01-02".into(),
            to: "2026-01-01".into(),
        };
        assert!(matches!(
            spec.resolve(tz, Utc::now()),
            Err(WindowError::Empty { .. })
        ));
    }

    proptest::proptest! {
        /// Local days tile time exactly, through DST changes and half-hour
        /// offsets: each day ends where the next begins and lasts 23, 24 or
        /// 25 hours, so a window of N days covers every second once.
        #[test]
        fn window_days_tile_time_across_dst(days in 0i64..36_500, zone in 0usize..3) {
            let tz = [chrono_tz::Europe::Berlin, chrono_tz::America::New_York, chrono_tz::Asia::Kolkata][zone];
            let day = NaiveDate::from_ymd_opt(2000, 1, 1).unwrap() + chrono::Days::new(days as u64);
            let (this, next) = (local_day(day, tz), local_day(day.succ_opt().unwrap(), tz));
            proptest::prop_assert_eq!(this.end, next.start);
            proptest::prop_assert!([82_800, 86_400, 90_000].contains(&this.seconds()), "{day} in {tz}: {} s", this.seconds());
        }
    }
}
