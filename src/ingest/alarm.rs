//! Battery safety at a glance: a device is in alarm when its last answer had
//! a non-zero alarm or fault word, or a value outside `cache.limits` (the
//! `essops_devices_alarm` gauge counts them).

use std::collections::BTreeMap;

use crate::modbus::value::Value;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Rule {
    /// An alarm or fault word: any bit set.
    NonZero,
    /// Allowed [min, max].
    Range(f64, f64),
}

/// Per table (plan order): the value positions to watch and how.
#[derive(Debug, Clone, Default)]
pub struct AlarmRules {
    per_table: Vec<Vec<(usize, Rule)>>,
}

impl AlarmRules {
    /// `columns`: each table's value columns, in row order.
    pub fn new(columns: &[&[String]], limits: &BTreeMap<String, (f64, f64)>) -> AlarmRules {
        let rules = |cols: &[String]| {
            cols.iter()
                .enumerate()
                .filter_map(|(i, c)| {
                    if c.contains("ALARM") || c.contains("FAULT") {
                        Some((i, Rule::NonZero))
                    } else {
                        limits.get(c).map(|(lo, hi)| (i, Rule::Range(*lo, *hi)))
                    }
                })
                .collect()
        };
        AlarmRules {
            per_table: columns.iter().map(|c| rules(c)).collect(),
        }
    }

    pub fn in_alarm(&self, table: usize, values: &[Option<Value>]) -> bool {
        let Some(rules) = self.per_table.get(table) else {
            return false;
        };
        rules.iter().any(|(i, rule)| {
            let Some(v) = values.get(*i).copied().flatten() else {
                return false;
            };
            let v = v.as_f64();
            match rule {
                Rule::NonZero => v != 0.0,
                Rule::Range(lo, hi) => v < *lo || v > *hi,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alarm_words_and_limits_raise_it() {
        let cols = vec![
            "SOC".to_string(),
            "ALARM".to_string(),
            "MAX_CELL_TEMP".to_string(),
        ];
        let limits = BTreeMap::from([("MAX_CELL_TEMP".to_string(), (-20.0, 60.0))]);
        let rules = AlarmRules::new(&[&cols], &limits);
        let row = |alarm: i64, temp: f64| {
            vec![
                Some(Value::Float(50.0)),
                Some(Value::Int(alarm)),
                Some(Value::Float(temp)),
            ]
        };
        assert!(!rules.in_alarm(0, &row(0, 30.0)));
        assert!(rules.in_alarm(0, &row(4, 30.0)));
        assert!(rules.in_alarm(0, &row(0, 61.0)));
        assert!(!rules.in_alarm(0, &[None, None, None]));
        assert!(
            !rules.in_alarm(1, &row(4, 30.0)),
            "an unknown table has no rules"
        );
    }
}
