//! Trends over the kept daily figures: a rack's SoH slope and the day it is
//! projected to reach its end of life, and the 30-day round-trip efficiency.

use chrono::NaiveDate;
use serde::Serialize;

/// Days of daily SoH medians a trend is fitted on.
pub const TREND_DAYS: i64 = 90;
/// Fewer daily medians than this give no trend.
pub const MIN_TREND_DAYS: usize = 14;
/// Days the graded round-trip efficiency sums.
pub const RTE_DAYS: i64 = 30;

/// A rack's SoH trend as of one day.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SohTrend {
    /// Daily medians the fit used (the last 90 days that have one).
    pub soh_trend_days: usize,
    /// Least-squares slope, % per day; None: fewer than 14 days.
    pub soh_slope_pct_per_day: Option<f64>,
    /// When the fitted line reaches `[kpi] soh_end_of_life`; None: no
    /// trend, or SoH not falling.
    pub soh_eol_date: Option<NaiveDate>,
}

/// Fits `points` (day, SoH %) up to and including `as_of` and projects the
/// day the line reaches `eol`.
pub fn soh(points: &[(NaiveDate, f64)], as_of: NaiveDate, eol: f64) -> SohTrend {
    let first = as_of - chrono::Duration::days(TREND_DAYS - 1);
    let used: Vec<(f64, f64)> = points
        .iter()
        .filter(|(d, _)| *d >= first && *d <= as_of)
        .map(|(d, v)| ((*d - first).num_days() as f64, *v))
        .collect();
    let none = SohTrend {
        soh_trend_days: used.len(),
        soh_slope_pct_per_day: None,
        soh_eol_date: None,
    };
    if used.len() < MIN_TREND_DAYS {
        return none;
    }
    let Some((slope, intercept)) = least_squares(&used) else {
        return none;
    };
    let eol_date = (slope < 0.0).then(|| {
        let x = (eol - intercept) / slope;
        first + chrono::Duration::days(x.round() as i64)
    });
    SohTrend {
        soh_trend_days: used.len(),
        soh_slope_pct_per_day: Some(slope),
        soh_eol_date: eol_date,
    }
}

/// (slope, intercept) of the least-squares line; None when every x is the same.
fn least_squares(points: &[(f64, f64)]) -> Option<(f64, f64)> {
    let n = points.len() as f64;
    let (sx, sy) = points
        .iter()
        .fold((0.0, 0.0), |(a, b), (x, y)| (a + x, b + y));
    let (mx, my) = (sx / n, sy / n);
    let (mut sxx, mut sxy) = (0.0, 0.0);
    for (x, y) in points {
        sxx += (x - mx) * (x - mx);
        sxy += (x - mx) * (y - my);
    }
    (sxx > 0.0).then(|| {
        let slope = sxy / sxx;
        (slope, my - slope * mx)
    })
}

/// Round-trip efficiency (%) of the energies (charged, discharged) of the
/// days in `[as_of - 29, as_of]`, and how many days had figures; None when
/// nothing was charged.
pub fn rte_30d(days: &[(NaiveDate, f64, f64)], as_of: NaiveDate) -> (Option<f64>, usize) {
    let first = as_of - chrono::Duration::days(RTE_DAYS - 1);
    let used: Vec<&(NaiveDate, f64, f64)> = days
        .iter()
        .filter(|(d, _, _)| *d >= first && *d <= as_of)
        .collect();
    let charged: f64 = used.iter().map(|(_, c, _)| c).sum();
    let discharged: f64 = used.iter().map(|(_, _, d)| d).sum();
    (rte(charged, discharged), used.len())
}

/// discharged / charged in percent, two decimals; None when nothing was charged.
pub fn rte(charged: f64, discharged: f64) -> Option<f64> {
    (charged > 0.0).then(|| round2(100.0 * discharged / charged))
}

pub fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }

    #[test]
    fn a_steady_fall_projects_the_exact_day() {
        // 30 days from 95 %, 0.1 % a day: 80 % is reached 150 days after the first.
        let first = d("2026-01-01");
        let points: Vec<(NaiveDate, f64)> = (0..30)
            .map(|i| (first + chrono::Duration::days(i), 95.0 - 0.1 * i as f64))
            .collect();
        let t = soh(&points, d("2026-01-30"), 80.0);
        assert_eq!(t.soh_trend_days, 30);
        assert!((t.soh_slope_pct_per_day.unwrap() + 0.1).abs() < 1e-9);
        assert_eq!(t.soh_eol_date, Some(first + chrono::Duration::days(150)));
    }

    #[test]
    fn thirteen_days_are_no_trend_and_a_rise_has_no_end_of_life() {
        let first = d("2026-01-01");
        let few: Vec<_> = (0..13)
            .map(|i| (first + chrono::Duration::days(i), 90.0))
            .collect();
        assert_eq!(soh(&few, d("2026-01-13"), 80.0).soh_slope_pct_per_day, None);
        let rising: Vec<_> = (0..20)
            .map(|i| (first + chrono::Duration::days(i), 90.0 + 0.01 * i as f64))
            .collect();
        let t = soh(&rising, d("2026-01-20"), 80.0);
        assert!(t.soh_slope_pct_per_day.unwrap() > 0.0);
        assert_eq!(t.soh_eol_date, None);
    }

    #[test]
    fn rte_sums_thirty_days_and_needs_a_charge() {
        let day = d("2026-02-01");
        let days = vec![
            (day, 100.0, 90.0),
            (day - chrono::Duration::days(29), 100.0, 80.0),
            (day - chrono::Duration::days(30), 1000.0, 0.0),
        ];
        assert_eq!(rte_30d(&days, day), (Some(85.0), 2));
        assert_eq!(rte(0.0, 5.0), None);
    }
}
