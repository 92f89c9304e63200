//! Loss arithmetic for one device: expected samples, holes in the grid, and
//! the grade of a loss rate. Pure functions over what `measure` read.

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;

use crate::config::LossThresholds;
use crate::window::Window;

/// What the server holds for one device in the window.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceSamples {
    /// Distinct grid timestamps present.
    pub observed: i64,
    pub first: Option<DateTime<Utc>>,
    pub last: Option<DateTime<Utc>>,
    /// Present samples with a hole between them: (before the hole, after it).
    pub holes: Vec<(DateTime<Utc>, DateTime<Utc>)>,
}

/// A run of missing samples: `[start, end)`, where `start` is the first
/// missing sample and `end` the next present one (or the window's end).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Gap {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub missing_samples: i64,
    pub length_secs: i64,
}

/// Every gap of one device in `window` (already cut at "now"), in time order.
pub fn gaps(window: Window, interval_secs: u32, s: &DeviceSamples) -> Vec<Gap> {
    let step = Duration::seconds(i64::from(interval_secs));
    let gap = |start: DateTime<Utc>, end: DateTime<Utc>| {
        let missing = Window { start, end }.grid_points(interval_secs);
        (missing > 0).then(|| Gap {
            start,
            end,
            missing_samples: missing,
            length_secs: (end - start).num_seconds(),
        })
    };
    let first_grid = window.first_grid_point(interval_secs);
    let (Some(first), Some(last)) = (s.first, s.last) else {
        return gap(first_grid, window.end).into_iter().collect();
    };
    let leading = gap(first_grid, first);
    let inner = s
        .holes
        .iter()
        .filter_map(|(before, after)| gap(*before + step, *after));
    let trailing = gap(last + step, window.end);
    leading.into_iter().chain(inner).chain(trailing).collect()
}

/// A device's loss within one piece of the window (a local day).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PieceLoss {
    pub expected: i64,
    pub missing: i64,
    /// Gaps that reach into the piece, and the longest part of one inside it.
    pub gaps: usize,
    pub longest_secs: i64,
}

impl PieceLoss {
    /// The device sent something in the piece.
    pub fn has_samples(&self) -> bool {
        self.missing < self.expected
    }
}

/// The part of `gaps` (of the whole window) that falls in `piece`.
pub fn piece_loss(piece: Window, interval_secs: u32, gaps: &[Gap]) -> PieceLoss {
    let mut out = PieceLoss {
        expected: piece.grid_points(interval_secs),
        missing: 0,
        gaps: 0,
        longest_secs: 0,
    };
    for g in gaps {
        let inside = Window {
            start: g.start.max(piece.start),
            end: g.end.min(piece.end),
        };
        if inside.start >= inside.end {
            continue;
        }
        let missing = inside.grid_points(interval_secs);
        if missing > 0 {
            out.missing += missing;
            out.gaps += 1;
            out.longest_secs = out.longest_secs.max(inside.seconds());
        }
    }
    out
}

/// The `n` longest gaps, longest first (earlier first among equals).
pub fn longest(mut gaps: Vec<Gap>, n: usize) -> Vec<Gap> {
    gaps.sort_by(|a, b| {
        b.missing_samples
            .cmp(&a.missing_samples)
            .then(a.start.cmp(&b.start))
    });
    gaps.truncate(n);
    gaps
}

/// Loss in percent, two decimals. An empty expectation (a window wholly in
/// the future) has lost nothing.
pub fn loss_pct(expected: i64, observed: i64) -> f64 {
    if expected <= 0 {
        return 0.0;
    }
    let missing = (expected - observed).max(0) as f64;
    (missing * 100.0 / expected as f64 * 100.0).round() / 100.0
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Grade {
    Info,
    Warning,
    Critical,
}

impl Grade {
    pub fn of(loss_pct: f64, t: LossThresholds) -> Grade {
        if loss_pct > t.critical_pct {
            Grade::Critical
        } else if loss_pct > t.warning_pct {
            Grade::Warning
        } else {
            Grade::Info
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Grade::Info => "info",
            Grade::Warning => "warning",
            Grade::Critical => "critical",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_767_225_600 + secs, 0).unwrap() // 2026-01-01T00:00:00Z
    }

    fn hour() -> Window {
        Window {
            start: t(0),
            end: t(3600),
        }
    }

    /// Present: 10..=99 and 200..=3499 (missing 0..9, 100..199, 3500..3599).
    fn three_holes() -> DeviceSamples {
        DeviceSamples {
            observed: 90 + 3300,
            first: Some(t(10)),
            last: Some(t(3499)),
            holes: vec![(t(99), t(200))],
        }
    }

    #[test]
    fn loss_piece_takes_the_part_of_each_gap_inside_it() {
        let s = three_holes();
        let g = gaps(hour(), 1, &s);
        let first_half = Window {
            start: t(0),
            end: t(150),
        };
        let p = piece_loss(first_half, 1, &g);
        assert_eq!(
            (p.expected, p.missing, p.gaps, p.longest_secs),
            (150, 60, 2, 50)
        );
        let second_half = Window {
            start: t(150),
            end: t(3600),
        };
        let q = piece_loss(second_half, 1, &g);
        assert_eq!(p.missing + q.missing, hour().grid_points(1) - s.observed);
        let quiet = piece_loss(
            Window {
                start: t(3500),
                end: t(3600),
            },
            1,
            &g,
        );
        assert!(!quiet.has_samples() && quiet.missing == 100);
    }

    #[test]
    fn loss_gaps_leading_inner_trailing() {
        let s = three_holes();
        let g = gaps(hour(), 1, &s);
        let summary: Vec<(i64, i64)> = g
            .iter()
            .map(|g| ((g.start - t(0)).num_seconds(), g.missing_samples))
            .collect();
        assert_eq!(summary, [(0, 10), (100, 100), (3500, 100)]);
        assert_eq!(
            g.iter().map(|g| g.missing_samples).sum::<i64>(),
            hour().grid_points(1) - s.observed
        );
        let top = longest(g, 2);
        assert_eq!((top[0].start, top[1].start), (t(100), t(3500)));
    }

    #[test]
    fn loss_device_that_sent_nothing_is_one_whole_gap() {
        let g = gaps(hour(), 1, &DeviceSamples::default());
        assert_eq!(
            g,
            [Gap {
                start: t(0),
                end: t(3600),
                missing_samples: 3600,
                length_secs: 3600
            }]
        );
        assert_eq!(loss_pct(3600, 0), 100.0);
    }

    #[test]
    fn loss_complete_device_has_no_gaps() {
        let s = DeviceSamples {
            observed: 3600,
            first: Some(t(0)),
            last: Some(t(3599)),
            holes: vec![],
        };
        assert!(gaps(hour(), 1, &s).is_empty());
        assert_eq!(loss_pct(3600, 3600), 0.0);
    }

    #[test]
    fn loss_rate_rounds_to_two_decimals_and_never_divides_by_zero() {
        assert_eq!(loss_pct(86_400, 86_400 - 1_000), 1.16);
        assert_eq!(loss_pct(3, 2), 33.33);
        assert_eq!(loss_pct(0, 0), 0.0);
    }

    #[test]
    fn loss_grades_use_strictly_above() {
        let th = LossThresholds {
            warning_pct: 2.0,
            critical_pct: 5.0,
        };
        assert_eq!(
            [
                Grade::of(2.0, th),
                Grade::of(2.01, th),
                Grade::of(5.0, th),
                Grade::of(5.01, th)
            ],
            [Grade::Info, Grade::Warning, Grade::Warning, Grade::Critical]
        );
    }
}
