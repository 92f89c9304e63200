//! The KPI report's rows, made from what the server measured, and graded
//! with `[kpi]`.

use std::collections::BTreeMap;

use chrono::NaiveDate;
use serde::Serialize;

use super::measure::{DailyFigures, PcsEnergy, RawInterval, SocSpread};
use super::trend::{self, SohTrend, round2};
use crate::config::KpiSettings;
use crate::history::kpi::{IntervalRecord, KpiRecord};
use crate::loss::gaps::Grade;

/// A rack, bank or PCS on one local day.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceKpi {
    pub server: String,
    pub site: String,
    pub day: NaiveDate,
    pub device: String,
    pub device_ids: Vec<i16>,
    pub samples: i64,
    /// Seconds with data and FAULT 0 or NULL, over the seconds of the day.
    pub availability_pct: f64,
    pub alarm_secs: i64,
    pub fault_secs: i64,
    pub alarm_intervals: usize,
    pub fault_intervals: usize,
    pub longest_alarm_secs: i64,
    pub longest_fault_secs: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cell_spread_p50_mv: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cell_spread_p95_mv: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cell_spread_max_mv: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temp_spread_p95_c: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temp_spread_max_c: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub soh_median: Option<f64>,
    /// Per `[cache.limits]` column the table has: seconds outside its limits.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub outside_limits_secs: BTreeMap<String, i64>,
    #[serde(flatten)]
    pub bank: Option<BankFigures>,
    #[serde(flatten)]
    pub energy: Option<Energy>,
    #[serde(flatten)]
    pub trend: Option<SohTrend>,
    pub level: Grade,
    /// Why the level is not info: each threshold crossed.
    pub reasons: Vec<String>,
}

/// A bank's racks compared with each other.
#[derive(Debug, Clone, Serialize)]
pub struct BankFigures {
    /// SOC spread across the bank's racks at each second (percentage points).
    pub soc_spread_p95_pct: Option<f64>,
    pub soc_spread_max_pct: Option<f64>,
    /// The rack with the largest cell-voltage spread, and that spread.
    pub worst_rack: Option<String>,
    pub worst_rack_spread_mv: Option<f64>,
}

/// A PCS's (or a site's) energy.
#[derive(Debug, Clone, Serialize)]
pub struct Energy {
    pub charged_kwh: Option<f64>,
    pub discharged_kwh: Option<f64>,
    /// counter (the lifetime counter), power (AC_ACTIVE_POWER's integral) or none.
    pub charged_method: &'static str,
    pub discharged_method: &'static str,
    /// This day alone: skewed by the state of charge at midnight.
    pub rte_day_pct: Option<f64>,
    /// The last 30 days (graded).
    pub rte_30d_pct: Option<f64>,
    pub rte_30d_days: usize,
    /// The energy of the day's largest continuous discharge.
    pub demonstrated_kwh: Option<f64>,
}

/// A site on one local day: its PCS summed, against `rated_kwh`.
#[derive(Debug, Clone, Serialize)]
pub struct SiteKpi {
    pub server: String,
    pub site: String,
    pub day: NaiveDate,
    pub pcs: usize,
    #[serde(flatten)]
    pub energy: Energy,
    pub rated_kwh: Option<f64>,
    /// Demonstrated (the sum of each PCS's largest discharge) / rated.
    pub capacity_ratio: Option<f64>,
    /// Discharged / rated.
    pub equivalent_full_cycles: Option<f64>,
    pub level: Grade,
    pub reasons: Vec<String>,
}

/// One alarm or fault interval, times in the site's zone.
#[derive(Debug, Clone, Serialize)]
pub struct IntervalRow {
    pub server: String,
    pub site: String,
    pub day: NaiveDate,
    pub table: &'static str,
    pub device: String,
    pub device_ids: Vec<i16>,
    pub word: &'static str,
    /// None: the whole word.
    pub bit: Option<i16>,
    /// The bit's SunSpec name, for SunSpec sites.
    pub bit_name: Option<String>,
    pub start: String,
    pub end: String,
    #[serde(skip)]
    pub raw: RawInterval,
    pub duration_secs: i64,
    pub samples: i64,
    /// It lasts to the end of the measured day (or window).
    pub open: bool,
}

/// One line of the report; `kind` tells them apart in JSON.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum KpiRow {
    Rack(DeviceKpi),
    Bank(DeviceKpi),
    Pcs(DeviceKpi),
    Site(SiteKpi),
    AlarmInterval(IntervalRow),
    Failure(crate::output::Failure),
}

impl KpiRow {
    /// The history's `table_name` of a device or site row.
    pub fn table_name(&self) -> &'static str {
        match self {
            KpiRow::Rack(_) => "rack",
            KpiRow::Bank(_) => "bank",
            KpiRow::Pcs(_) => "pcs",
            KpiRow::Site(_) => "site",
            KpiRow::AlarmInterval(i) => i.table,
            KpiRow::Failure(_) => "",
        }
    }

    /// The row as the history gives it back (device and site rows).
    pub fn as_record(&self) -> Option<KpiRecord> {
        let figures = serde_json::to_value(self).unwrap_or_default();
        let (device, ids, day, grade, spread, soh, energy) = match self {
            KpiRow::Rack(d) | KpiRow::Bank(d) | KpiRow::Pcs(d) => (
                d.device.clone(),
                d.device_ids.clone(),
                d.day,
                d.level,
                d.cell_spread_max_mv,
                d.soh_median,
                d.energy.as_ref(),
            ),
            KpiRow::Site(s) => (
                "site".into(),
                Vec::new(),
                s.day,
                s.level,
                None,
                None,
                Some(&s.energy),
            ),
            KpiRow::AlarmInterval(_) | KpiRow::Failure(_) => return None,
        };
        Some(KpiRecord {
            table_name: self.table_name().to_string(),
            device,
            device_ids: ids,
            day,
            grade: grade.as_str().to_string(),
            cell_spread_max_mv: spread,
            soh_median: soh,
            charged_kwh: energy.and_then(|e| e.charged_kwh),
            discharged_kwh: energy.and_then(|e| e.discharged_kwh),
            figures,
        })
    }
}

impl IntervalRow {
    /// The interval as the history gives it back.
    pub fn as_record(&self) -> IntervalRecord {
        IntervalRecord {
            table_name: self.table.to_string(),
            device: self.device.clone(),
            device_ids: self.device_ids.clone(),
            day: self.day,
            word: self.word.to_string(),
            bit: self.bit,
            bit_name: self.bit_name.clone(),
            started_at: self.raw.start,
            ended_at: self.raw.end,
            duration_s: self.duration_secs,
            samples: self.samples,
            open: self.open,
        }
    }
}

impl KpiRow {
    pub fn level(&self) -> Option<Grade> {
        match self {
            KpiRow::Rack(d) | KpiRow::Bank(d) | KpiRow::Pcs(d) => Some(d.level),
            KpiRow::Site(s) => Some(s.level),
            KpiRow::AlarmInterval(_) | KpiRow::Failure(_) => None,
        }
    }
}

/// The figures of one device and day that are not the server's: its label
/// and how long the day (or the part measured) is.
pub struct DeviceDay<'a> {
    pub server: &'a str,
    pub site: &'a str,
    pub device: String,
    pub day: NaiveDate,
    pub day_secs: i64,
    pub interval_secs: u32,
}

impl DeviceDay<'_> {
    /// The row of a device from its figures (None: no sample that day) and
    /// its intervals.
    pub fn row(
        &self,
        ids: &[i16],
        f: Option<&DailyFigures>,
        intervals: &[&RawInterval],
    ) -> DeviceKpi {
        let secs = |samples: i64| samples * i64::from(self.interval_secs);
        let empty = DailyFigures::default();
        let f = f.unwrap_or(&empty);
        let words = |word: &str| {
            let of: Vec<i64> = intervals
                .iter()
                .filter(|i| i.word == word && i.bit.is_none())
                .map(|i| (i.end - i.start).num_seconds())
                .collect();
            (of.len(), of.iter().copied().max().unwrap_or(0))
        };
        let (alarm_n, alarm_longest) = words("alarm");
        let (fault_n, fault_longest) = words("fault");
        let availability = match self.day_secs {
            0 => 0.0,
            s => round2((100.0 * secs(f.fault_free) as f64 / s as f64).min(100.0)),
        };
        let round1 = |v: f64| (v * 10.0).round() / 10.0;
        DeviceKpi {
            server: self.server.to_string(),
            site: self.site.to_string(),
            day: self.day,
            device: self.device.clone(),
            device_ids: ids.to_vec(),
            samples: f.samples,
            availability_pct: availability,
            alarm_secs: secs(f.alarm_samples),
            fault_secs: secs(f.fault_samples),
            alarm_intervals: alarm_n,
            fault_intervals: fault_n,
            longest_alarm_secs: alarm_longest,
            longest_fault_secs: fault_longest,
            cell_spread_p50_mv: f.cell_spread_mv.map(|s| round1(s.0)),
            cell_spread_p95_mv: f.cell_spread_mv.map(|s| round1(s.1)),
            cell_spread_max_mv: f.cell_spread_mv.map(|s| round1(s.2)),
            temp_spread_p95_c: f.temp_spread_c.map(|s| round2(s.0)),
            temp_spread_max_c: f.temp_spread_c.map(|s| round2(s.1)),
            soh_median: f.soh_median.map(round2),
            outside_limits_secs: f
                .outside
                .iter()
                .map(|(c, n)| (c.clone(), secs(*n)))
                .collect(),
            bank: None,
            energy: None,
            trend: None,
            level: Grade::Info,
            reasons: Vec::new(),
        }
    }
}

/// A bank's comparison of its racks on one day.
pub fn bank_figures(bank: i16, spread: Option<&SocSpread>, racks: &[&DeviceKpi]) -> BankFigures {
    let worst = racks
        .iter()
        .filter(|r| r.device_ids.first() == Some(&bank))
        .filter_map(|r| r.cell_spread_max_mv.map(|s| (s, r)))
        .max_by(|a, b| a.0.total_cmp(&b.0));
    BankFigures {
        soc_spread_p95_pct: spread.map(|s| round2(s.p95)),
        soc_spread_max_pct: spread.map(|s| round2(s.max)),
        worst_rack: worst.map(|(_, r)| r.device.clone()),
        worst_rack_spread_mv: worst.map(|(s, _)| s),
    }
}

/// A PCS's energy on one day, each direction from its counter where it
/// has one that day, else from the power.
pub fn energy(e: Option<&PcsEnergy>) -> Energy {
    let pick = |counter: Option<f64>, power: Option<f64>| match (counter, power) {
        (Some(c), _) => (Some(round2(c)), "counter"),
        (None, Some(p)) => (Some(round2(p)), "power"),
        (None, None) => (None, "none"),
    };
    let (charged, charged_method) = pick(
        e.and_then(|e| e.charged_counter_kwh),
        e.and_then(|e| e.charged_power_kwh),
    );
    let (discharged, discharged_method) = pick(
        e.and_then(|e| e.discharged_counter_kwh),
        e.and_then(|e| e.discharged_power_kwh),
    );
    Energy {
        charged_kwh: charged,
        discharged_kwh: discharged,
        charged_method,
        discharged_method,
        rte_day_pct: charged.zip(discharged).and_then(|(c, d)| trend::rte(c, d)),
        rte_30d_pct: None,
        rte_30d_days: 0,
        demonstrated_kwh: e.and_then(|e| e.largest_discharge_kwh).map(round2),
    }
}

/// The site's day: its PCS's energies summed.
pub fn site_energy(pcs: &[&Energy]) -> Energy {
    let sum = |f: fn(&Energy) -> Option<f64>| {
        let values: Vec<f64> = pcs.iter().filter_map(|e| f(e)).collect();
        (!values.is_empty()).then(|| round2(values.iter().sum()))
    };
    let method = |f: fn(&Energy) -> &'static str| {
        let mut methods: Vec<&str> = pcs.iter().map(|e| f(e)).collect();
        methods.dedup();
        match methods.as_slice() {
            [one] => *one,
            [] => "none",
            _ => "mixed",
        }
    };
    let (charged, discharged) = (sum(|e| e.charged_kwh), sum(|e| e.discharged_kwh));
    Energy {
        charged_kwh: charged,
        discharged_kwh: discharged,
        charged_method: method(|e| e.charged_method),
        discharged_method: method(|e| e.discharged_method),
        rte_day_pct: charged.zip(discharged).and_then(|(c, d)| trend::rte(c, d)),
        rte_30d_pct: None,
        rte_30d_days: 0,
        demonstrated_kwh: sum(|e| e.demonstrated_kwh),
    }
}

// ------------------------------------------------------------------ grading

/// Grades a device's row with `[kpi]`, noting each threshold crossed.
pub fn grade_device(row: &mut DeviceKpi, kpi: &KpiSettings) {
    let mut g = Grader::default();
    if let Some(v) = row.cell_spread_p95_mv {
        g.above("cell spread p95", v, kpi.cell_spread_mv, "mV");
    }
    if let Some(v) = row.temp_spread_p95_c {
        g.above("temperature spread p95", v, kpi.temp_spread_c, "°C");
    }
    g.below(
        "availability",
        row.availability_pct,
        kpi.availability_pct,
        "%",
    );
    if let Some(e) = &row.energy
        && let Some(v) = e.rte_30d_pct
    {
        g.below("30-day round-trip efficiency", v, kpi.rte_pct, "%");
    }
    if let Some(soh) = row.soh_median
        && soh <= kpi.soh_end_of_life
    {
        g.note(
            Grade::Critical,
            format!(
                "SoH {soh} % is at or below the end of life ({} %)",
                kpi.soh_end_of_life
            ),
        );
    } else if let Some(eol) = row.trend.as_ref().and_then(|t| t.soh_eol_date) {
        let left = (eol - row.day).num_days() as f64;
        g.below(
            "days to the SoH end of life",
            left,
            kpi.soh_eol_days,
            "days",
        );
    }
    (row.level, row.reasons) = g.done();
}

pub fn grade_site(row: &mut SiteKpi, kpi: &KpiSettings) {
    let mut g = Grader::default();
    if let Some(v) = row.energy.rte_30d_pct {
        g.below("30-day round-trip efficiency", v, kpi.rte_pct, "%");
    }
    (row.level, row.reasons) = g.done();
}

#[derive(Default)]
struct Grader {
    level: Option<Grade>,
    reasons: Vec<String>,
}

impl Grader {
    fn note(&mut self, grade: Grade, reason: String) {
        self.level = Some(self.level.map_or(grade, |l| l.max(grade)));
        self.reasons.push(format!("{reason} ({})", grade.as_str()));
    }

    /// Higher is worse: at or past a threshold.
    fn above(&mut self, what: &str, v: f64, (warning, critical): (f64, f64), unit: &str) {
        if v >= critical {
            self.note(Grade::Critical, format!("{what} {v} {unit} ≥ {critical}"));
        } else if v >= warning {
            self.note(Grade::Warning, format!("{what} {v} {unit} ≥ {warning}"));
        }
    }

    /// Lower is worse: below a threshold.
    fn below(&mut self, what: &str, v: f64, (warning, critical): (f64, f64), unit: &str) {
        if v < critical {
            self.note(Grade::Critical, format!("{what} {v} {unit} < {critical}"));
        } else if v < warning {
            self.note(Grade::Warning, format!("{what} {v} {unit} < {warning}"));
        }
    }

    fn done(self) -> (Grade, Vec<String>) {
        (self.level.unwrap_or(Grade::Info), self.reasons)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rack(p95: f64, availability: f64) -> DeviceKpi {
        let day = DeviceDay {
            server: "local",
            site: "S",
            device: "bank 1 / rack 1".into(),
            day: "2026-03-10".parse().unwrap(),
            day_secs: 86_400,
            interval_secs: 1,
        };
        let mut r = day.row(&[1, 1], None, &[]);
        r.cell_spread_p95_mv = Some(p95);
        r.availability_pct = availability;
        r
    }

    #[test]
    fn grades_take_the_worst_threshold_and_say_why() {
        let kpi = KpiSettings::default();
        let mut ok = rack(30.0, 100.0);
        grade_device(&mut ok, &kpi);
        assert_eq!((ok.level, ok.reasons.len()), (Grade::Info, 0));
        let mut warm = rack(50.0, 100.0);
        grade_device(&mut warm, &kpi);
        assert_eq!(
            warm.level,
            Grade::Warning,
            "50 mV is at the warning threshold"
        );
        let mut bad = rack(60.0, 94.0);
        grade_device(&mut bad, &kpi);
        assert_eq!(bad.level, Grade::Critical);
        assert_eq!(bad.reasons.len(), 2, "{:?}", bad.reasons);
        assert!(
            bad.reasons[1].contains("availability 94 % < 95"),
            "{:?}",
            bad.reasons
        );
    }

    #[test]
    fn a_day_without_samples_is_unavailable_and_has_no_figures() {
        let r = rack(0.0, 0.0);
        assert_eq!((r.samples, r.fault_secs, r.alarm_intervals), (0, 0, 0));
        let e = energy(None);
        assert_eq!(
            (e.charged_kwh, e.charged_method, e.rte_day_pct),
            (None, "none", None)
        );
    }
}
