//! What the simulated site measures: plausible values as closed-form
//! functions of (seed, device, second), so a test can recompute exactly what
//! the simulator served for any second without having watched it.
//!
//! The site cycles charge/discharge once an hour: rack current follows a
//! sine, SOC is its integral (a cosine), cell voltage follows SOC and current,
//! temperatures drift over the day and rise with current, cell spread varies,
//! and the PCS power follows the racks.

use std::f64::consts::TAU;

use crate::config::Site;
use crate::schema::Table;

const CYCLE_SECS: f64 = 3600.0;
const CELLS_PER_RACK: f64 = 240.0;
const RACK_PEAK_AMPS: f64 = 150.0;

/// splitmix64: a fast, well-mixed hash for deterministic noise.
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Uniform in [0, 1) for (seed, key, t).
pub fn noise(seed: u64, key: u64, t: i64) -> f64 {
    (mix(seed ^ mix(key ^ mix(t as u64))) >> 11) as f64 / (1u64 << 53) as f64
}

fn device_key(table: &str, device: &[i16]) -> u64 {
    let mut k = table
        .bytes()
        .fold(0u64, |a, b| a.wrapping_mul(31).wrapping_add(b.into()));
    for id in device {
        k = mix(k ^ (*id as u64));
    }
    k
}

fn column_key(column: &str) -> u64 {
    column
        .bytes()
        .fold(7u64, |a, b| a.wrapping_mul(131).wrapping_add(b.into()))
}

/// The simulated values of one site.
#[derive(Debug, Clone)]
pub struct Model {
    pub seed: u64,
    /// Racks per bank id.
    /// Per bank: its rack ids.
    racks: Vec<(i16, Vec<i16>)>,
}

/// One rack's state at one second.
struct Rack {
    soc: f64,
    current: f64,
    cell_avg: f64,
    spread: f64,
    temp_avg: f64,
}

impl Model {
    pub fn new(site: &Site, seed: u64) -> Model {
        Model {
            seed,
            racks: site
                .banks
                .iter()
                .map(|b| (b.id as i16, b.racks.iter().map(|&r| r as i16).collect()))
                .collect(),
        }
    }

    fn rack(&self, device: &[i16], t: i64) -> Rack {
        let k = device_key("rack", device);
        let dev = |salt: u64| noise(self.seed, k ^ salt, 0) - 0.5; // fixed per device
        let u = TAU * t as f64 / CYCLE_SECS;
        let current = RACK_PEAK_AMPS * u.sin() * (1.0 + 0.04 * dev(1));
        let soc = 55.0 + 30.0 * u.cos() + 4.0 * dev(2);
        let cell_avg = 3.0 + 0.004 * soc + 0.0004 * current;
        let spread = 0.008 + 0.012 * noise(self.seed, k ^ 3, t / 10);
        let day = TAU * t as f64 / 86_400.0;
        let temp_avg =
            26.0 + 3.0 * (day + 6.0 * dev(4)).sin() + 0.02 * current.abs() + 2.0 * dev(5);
        Rack {
            soc,
            current,
            cell_avg,
            spread,
            temp_avg,
        }
    }

    /// The racks of a bank, summed by `f`.
    fn bank_sum(&self, bank: i16, t: i64, f: impl Fn(&Rack) -> f64) -> (f64, f64) {
        let racks = self
            .racks
            .iter()
            .find(|(b, _)| *b == bank)
            .map_or(&[1][..], |r| &r.1[..]);
        let sum = racks.iter().map(|&r| f(&self.rack(&[bank, r], t))).sum();
        (sum, racks.len() as f64)
    }

    fn site_power_kw(&self, t: i64) -> f64 {
        self.racks
            .iter()
            .map(|(b, _)| {
                self.bank_sum(*b, t, |r| r.cell_avg * CELLS_PER_RACK * r.current / 1000.0)
                    .0
            })
            .sum()
    }

    /// The physical value of `column` of `table` for `device` at second `t`.
    pub fn value(&self, table: Table, column: &str, device: &[i16], t: i64) -> f64 {
        match table {
            Table::Rack => self.rack_value(column, device, t),
            Table::Bank => self.bank_value(column, device, t),
            Table::Pcs => self.pcs_value(column, device, t),
            Table::Etc => self.etc_value(column, t),
        }
    }

    fn other(&self, table: &str, column: &str, device: &[i16], t: i64) -> f64 {
        (100.0 * noise(self.seed, device_key(table, device) ^ column_key(column), t)).floor()
    }

    fn status(current: f64) -> f64 {
        match current {
            c if c.abs() < 5.0 => 1.0,
            c if c < 0.0 => 2.0,
            _ => 3.0,
        }
    }

    fn rack_value(&self, column: &str, device: &[i16], t: i64) -> f64 {
        let r = self.rack(device, t);
        let k = device_key("rack", device);
        let pos = |salt: u64| {
            1.0 + (mix(self.seed ^ k ^ salt ^ (t / 60) as u64) % CELLS_PER_RACK as u64) as f64
        };
        match column {
            "SOC" => r.soc,
            "SOH" => 96.0 + 4.0 * (noise(self.seed, k ^ 6, 0) - 0.5),
            "DC_VOLTAGE" => r.cell_avg * CELLS_PER_RACK,
            "DC_CURRENT" => r.current,
            "DC_POWER" => r.cell_avg * CELLS_PER_RACK * r.current / 1000.0,
            "MAX_CELL_VOLTAGE" => r.cell_avg + 0.6 * r.spread,
            "MIN_CELL_VOLTAGE" => r.cell_avg - 0.4 * r.spread,
            "AVG_CELL_VOLTAGE" => r.cell_avg,
            "MAX_CELL_VOLTAGE_POS" => pos(11),
            "MIN_CELL_VOLTAGE_POS" => pos(12),
            "MAX_CELL_TEMP" => r.temp_avg + 2.0 + noise(self.seed, k ^ 7, t / 10),
            "MIN_CELL_TEMP" => r.temp_avg - 1.5 - 0.5 * noise(self.seed, k ^ 8, t / 10),
            "AVG_CELL_TEMP" => r.temp_avg,
            "MAX_CELL_TEMP_POS" => pos(13),
            "MIN_CELL_TEMP_POS" => pos(14),
            "STATUS" => Self::status(r.current),
            "ALARM" => f64::from(u8::from(r.temp_avg > 33.0) | (u8::from(r.spread > 0.018) << 1)),
            "FAULT" => 0.0,
            _ => self.other("rack", column, device, t),
        }
    }

    fn bank_value(&self, column: &str, device: &[i16], t: i64) -> f64 {
        let bank = device.first().copied().unwrap_or(1);
        let mean = |f: &dyn Fn(&Rack) -> f64| {
            let (s, n) = self.bank_sum(bank, t, f);
            s / n
        };
        let current = self.bank_sum(bank, t, |r| r.current).0;
        let cell_avg = mean(&|r| r.cell_avg);
        match column {
            "SOC" => mean(&|r| r.soc),
            "SOH" => 96.0 + 2.0 * (noise(self.seed, device_key("bank", device), 0) - 0.5),
            "DC_VOLTAGE" => cell_avg * CELLS_PER_RACK,
            "DC_CURRENT" => current,
            "DC_POWER" => cell_avg * CELLS_PER_RACK * current / 1000.0,
            "CHARGE_CURRENT_LIMIT" | "DISCHARGE_CURRENT_LIMIT" => {
                self.bank_sum(bank, t, |_| 200.0).0
            }
            "MAX_CELL_VOLTAGE" => mean(&|r| r.cell_avg + 0.6 * r.spread) + 0.002,
            "MIN_CELL_VOLTAGE" => cell_avg - 0.006,
            "AVG_CELL_VOLTAGE" => cell_avg,
            "MAX_CELL_TEMP" => mean(&|r| r.temp_avg) + 3.0,
            "MIN_CELL_TEMP" => mean(&|r| r.temp_avg) - 2.0,
            "AVG_CELL_TEMP" => mean(&|r| r.temp_avg),
            "INSULATION_RESISTANCE" => {
                2000.0 + (500.0 * noise(self.seed, device_key("bank", device), t / 60)).floor()
            }
            "STATUS" => Self::status(current),
            "ALARM" | "FAULT" => 0.0,
            _ => self.other("bank", column, device, t),
        }
    }

    fn pcs_value(&self, column: &str, device: &[i16], t: i64) -> f64 {
        let p = 0.97 * self.site_power_kw(t);
        let u = TAU * t as f64 / CYCLE_SECS;
        let lifetime = (t - 1_700_000_000).max(0) as f64 / 3600.0;
        let vdc = self.value(Table::Bank, "DC_VOLTAGE", &[self.racks[0].0], t);
        match column {
            "AC_ACTIVE_POWER" => p,
            "AC_REACTIVE_POWER" => 0.05 * p.abs() * (u * 3.0).sin(),
            "AC_POWER_FACTOR" => 0.99 - 0.01 * noise(self.seed, 21, t / 10),
            "AC_FREQUENCY" => 60.0 + 0.03 * (t as f64 / 7.0).sin(),
            "AC_VOLTAGE_RS" | "AC_VOLTAGE_ST" | "AC_VOLTAGE_TR" => {
                690.0 + 4.0 * (noise(self.seed, column_key(column), t) - 0.5)
            }
            "AC_CURRENT_R" | "AC_CURRENT_S" | "AC_CURRENT_T" => {
                p.abs() * 1000.0 / (3f64.sqrt() * 690.0)
            }
            "DC_VOLTAGE" => vdc,
            "DC_CURRENT" => p * 1000.0 / 0.97 / vdc,
            "DC_POWER" => p / 0.97,
            "INTERNAL_TEMP" => 35.0 + 0.004 * p.abs() + 2.0 * (TAU * t as f64 / 86_400.0).sin(),
            "CHARGED_ENERGY" => (10.0 * (150_000.0 + 700.0 * lifetime)).floor() / 10.0,
            "DISCHARGED_ENERGY" => 140_000.0 + 650.0 * lifetime,
            "OPERATION_MODE" => Self::status(p),
            "STATUS" => 1.0,
            "ALARM" | "FAULT" => 0.0,
            _ => self.other("pcs", column, device, t),
        }
    }

    fn etc_value(&self, column: &str, t: i64) -> f64 {
        let day = TAU * t as f64 / 86_400.0;
        let lifetime = (t - 1_700_000_000).max(0) as f64 / 3600.0;
        match column {
            "AMBIENT_TEMP" => 18.0 + 8.0 * day.sin(),
            "AMBIENT_HUMIDITY" => 55.0 + 15.0 * day.cos(),
            "HVAC_STATUS" => 1.0 + f64::from(u8::from(day.sin() > 0.3)),
            "FIRE_ALARM" => 0.0,
            "METER_ACTIVE_POWER" => 0.97 * self.site_power_kw(t) - 12.0,
            "METER_IMPORT_ENERGY" => 200_000.0 + 710.0 * lifetime,
            "METER_EXPORT_ENERGY" => 180_000.0 + 640.0 * lifetime,
            _ => self.other("etc", column, &[], t),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn simulate_model_is_deterministic_and_plausible() {
        let c = Config::load(None).unwrap();
        let m = Model::new(c.site("ESS_Operating_Site2").unwrap(), 7);
        let t = 1_763_000_000;
        assert_eq!(
            m.value(Table::Rack, "SOC", &[2, 3], t),
            m.value(Table::Rack, "SOC", &[2, 3], t)
        );
        assert_ne!(
            m.value(Table::Rack, "SOC", &[2, 3], t),
            Model::new(c.site("ESS_Operating_Site2").unwrap(), 8).value(
                Table::Rack,
                "SOC",
                &[2, 3],
                t
            )
        );
        for s in 0..3600 {
            let soc = m.value(Table::Rack, "SOC", &[1, 1], t + s);
            let v = m.value(Table::Rack, "AVG_CELL_VOLTAGE", &[1, 1], t + s);
            assert!(
                (20.0..=90.0).contains(&soc) && (3.0..=3.5).contains(&v),
                "{soc} {v}"
            );
            assert!(
                m.value(Table::Rack, "MAX_CELL_VOLTAGE", &[1, 1], t + s)
                    > m.value(Table::Rack, "MIN_CELL_VOLTAGE", &[1, 1], t + s)
            );
        }
        // SOC falls while the rack discharges (positive current).
        let (i, d) = (
            m.value(Table::Rack, "DC_CURRENT", &[1, 1], t),
            m.value(Table::Rack, "SOC", &[1, 1], t + 10) - m.value(Table::Rack, "SOC", &[1, 1], t),
        );
        assert!(i * d < 0.0, "current {i}, SOC change {d}");
    }
}
