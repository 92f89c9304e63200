//! Outliers for dashboards to highlight: racks whose temperature or cell
//! voltage spread departs from their bank's other racks by more than the
//! configured factor, and values outside configured limits; each with when
//! and by how much.

use std::collections::BTreeMap;

use serde::Serialize;

use super::series::Devices;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Outlier {
    pub table: String,
    pub device: String,
    /// A column, or `CELL_VOLTAGE_SPREAD` (max − min cell voltage).
    pub measure: String,
    /// `bank` (departs from its bank's other racks) or `limit`.
    pub kind: &'static str,
    /// Start of the bucket where it was worst (Unix seconds).
    pub at: i64,
    pub value: f64,
    /// The other racks' median, or the limit crossed.
    pub reference: f64,
    /// value / reference for `bank`; distance beyond the limit for `limit`.
    pub by: f64,
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    })
}

/// Per-bucket rack values of one measure: `value(bucket) → Option<f64>`.
fn rack_metric(
    racks: &Devices,
    columns: &[String],
    metric: &str,
) -> BTreeMap<String, BTreeMap<i64, f64>> {
    let idx = |c: &str| columns.iter().position(|x| x == c);
    let mut out = BTreeMap::new();
    for (device, buckets) in racks {
        let values: BTreeMap<i64, f64> = buckets
            .iter()
            .filter_map(|b| {
                let v = match metric {
                    "CELL_VOLTAGE_SPREAD" => {
                        b.avg[idx("MAX_CELL_VOLTAGE")?] - b.avg[idx("MIN_CELL_VOLTAGE")?]
                    }
                    col => b.avg[idx(col)?],
                };
                v.is_finite().then_some((b.start, v))
            })
            .collect();
        out.insert(device.clone(), values);
    }
    out
}

/// Racks that depart from the median of their bank's other racks by more than `factor`.
pub fn bank_outliers(racks: &Devices, columns: &[String], factor: f64) -> Vec<Outlier> {
    let mut found = Vec::new();
    for metric in ["MAX_CELL_TEMP", "CELL_VOLTAGE_SPREAD"] {
        let values = rack_metric(racks, columns, metric);
        for (device, series) in &values {
            let bank = device.split('/').next().unwrap_or("");
            let mut worst: Option<Outlier> = None;
            for (&at, &v) in series {
                let others: Vec<f64> = values
                    .iter()
                    .filter(|(d, _)| *d != device && d.split('/').next() == Some(bank))
                    .filter_map(|(_, s)| s.get(&at).copied())
                    .collect();
                if others.len() < 2 {
                    continue;
                }
                let Some(m) = median(others) else { continue };
                if m <= 0.0 {
                    continue;
                }
                let ratio = v / m;
                if ratio > factor && worst.as_ref().is_none_or(|w| ratio > w.by) {
                    worst = Some(Outlier {
                        table: "rack".into(),
                        device: device.clone(),
                        measure: metric.into(),
                        kind: "bank",
                        at,
                        value: v,
                        reference: m,
                        by: ratio,
                    });
                }
            }
            found.extend(worst);
        }
    }
    found
}

/// Devices whose min or max in a bucket crossed a configured limit.
pub fn limit_outliers(
    table: &str,
    devices: &Devices,
    columns: &[String],
    limits: &BTreeMap<String, (f64, f64)>,
) -> Vec<Outlier> {
    let mut found = Vec::new();
    for (i, col) in columns.iter().enumerate() {
        let Some(&(lo, hi)) = limits.get(col) else {
            continue;
        };
        for (device, buckets) in devices {
            let mut worst: Option<Outlier> = None;
            for b in buckets {
                for (v, limit) in [(b.min[i], lo), (b.max[i], hi)] {
                    let beyond = if limit == lo { lo - v } else { v - hi };
                    if beyond > 0.0 && worst.as_ref().is_none_or(|w| beyond > w.by) {
                        worst = Some(Outlier {
                            table: table.into(),
                            device: device.clone(),
                            measure: col.clone(),
                            kind: "limit",
                            at: b.start,
                            value: v,
                            reference: limit,
                            by: beyond,
                        });
                    }
                }
            }
            found.extend(worst);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::series::Bucket;

    #[test]
    fn cache_outliers_find_the_hot_rack_only() {
        let cols = vec!["MAX_CELL_TEMP".to_string()];
        let b = |start, t: f64| Bucket::new(start, 60, vec![t], vec![t], vec![t]);
        let racks: Devices = [
            ("1/1".to_string(), vec![b(0, 30.0), b(60, 30.0)]),
            ("1/2".to_string(), vec![b(0, 31.0), b(60, 52.0)]),
            ("1/3".to_string(), vec![b(0, 29.0), b(60, 30.0)]),
            ("2/1".to_string(), vec![b(0, 90.0), b(60, 90.0)]), // other bank: not compared
        ]
        .into();
        let found = bank_outliers(&racks, &cols, 1.5);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(
            (found[0].device.as_str(), found[0].at, found[0].reference),
            ("1/2", 60, 30.0)
        );
        let limits = [("MAX_CELL_TEMP".to_string(), (-20.0, 45.0))].into();
        let over = limit_outliers("rack", &racks, &cols, &limits);
        let devices: Vec<_> = over
            .iter()
            .map(|o| (o.device.as_str(), o.at, o.by))
            .collect();
        assert_eq!(devices, [("1/2", 60, 7.0), ("2/1", 0, 45.0)]);
    }
}
