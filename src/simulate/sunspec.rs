//! A SunSpec site as the simulator serves it: per unit a register image of
//! "SunS", the common model, and a battery (802, 803 with its string
//! groups, an 804 per string) or an inverter (103), then the chain's end.
//! Values come from the same [`Model`] as a mapped site, written through
//! the SunSpec mapping's sources, so what ingest stores is the model's
//! value at the scale factor's precision.
//!
//! Fixed "not implemented" points, so tests can expect NULL: 804's SoH
//! (rack SOH from an 804), 803's ModTmpAvg (bank AVG_CELL_TEMP) and 103's
//! DCW (PCS DC_POWER).

use std::collections::BTreeMap;

use super::model::Model;
use crate::config::Site;
use crate::modbus::sunspec::mapping::{self, Source, Transform};
use crate::modbus::sunspec::model::{self, ModelDef, PointType};
pub use crate::modbus::sunspec::scan::ChainEnd;
use crate::modbus::sunspec::scan::MARKER;
use crate::schema::{DeviceRange, Table};

/// How the simulated devices lay out their chains (`essops simulate --sunspec-*`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SunSpecOptions {
    /// Where the marker is, per device range (default 40000).
    pub base: Vec<(DeviceRange, u16)>,
    /// How the chain ends, per device range (default 0xFFFF).
    pub end: Vec<(DeviceRange, ChainEnd)>,
    /// Batteries that give their strings only in 803's group (no 804).
    pub strings_in_803: Vec<DeviceRange>,
    /// Every this many seconds the `-1` scale factors switch to `-2` and back (0: never).
    pub sf_period_secs: i64,
}

impl SunSpecOptions {
    fn base_of(&self, table: Table, device: &[i16]) -> u16 {
        let spec = table.spec();
        self.base
            .iter()
            .rev()
            .find(|(r, _)| r.contains(&spec, device))
            .map_or(40000, |(_, b)| *b)
    }

    fn end_of(&self, table: Table, device: &[i16]) -> ChainEnd {
        let spec = table.spec();
        self.end
            .iter()
            .rev()
            .find(|(r, _)| r.contains(&spec, device))
            .map_or(ChainEnd::EndMarker, |(_, e)| *e)
    }
}

/// One simulated SunSpec device.
#[derive(Debug, Clone)]
enum Device {
    Battery {
        bank: i16,
        strings: Vec<i16>,
        in_803_only: bool,
    },
    Inverter {
        pcs: i16,
    },
}

/// The SunSpec devices one listener serves, by unit.
#[derive(Debug, Clone, Default)]
pub struct SunSpace {
    units: BTreeMap<u8, (Device, u16, ChainEnd)>,
    sf_period_secs: i64,
}

impl SunSpace {
    /// The batteries and inverters of `site` on one of `endpoints`.
    pub fn new(site: &Site, endpoints: &[&str], opts: &SunSpecOptions) -> SunSpace {
        let mut space = SunSpace {
            units: BTreeMap::new(),
            sf_period_secs: opts.sf_period_secs,
        };
        let map = &site.register_map;
        let mut add = |table: Table, device: Vec<i16>, what: Device| {
            let Some(t) = map.table(table.spec().name) else {
                return;
            };
            let Ok(at) = site.address(t, &device) else {
                return;
            };
            if endpoints.contains(&at.endpoint.as_str()) {
                let base = opts.base_of(table, &device);
                let end = opts.end_of(table, &device);
                space.units.insert(at.unit, (what, base, end));
            }
        };
        for b in &site.banks {
            let id = b.id as i16;
            let in_803_only = opts
                .strings_in_803
                .iter()
                .any(|r| r.contains(&Table::Bank.spec(), &[id]));
            let strings = b.racks.iter().map(|&r| r as i16).collect();
            add(
                Table::Bank,
                vec![id],
                Device::Battery {
                    bank: id,
                    strings,
                    in_803_only,
                },
            );
        }
        for p in &site.pcs {
            add(
                Table::Pcs,
                vec![p.id as i16],
                Device::Inverter { pcs: p.id as i16 },
            );
        }
        space
    }

    pub fn device_count(&self) -> usize {
        self.units.len()
    }

    /// `count` registers from `addr` of `unit` at second `t`; None: no such
    /// register (answered with an exception, as a device does).
    pub fn read(&self, model: &Model, unit: u8, addr: u16, count: u16, t: i64) -> Option<Vec<u16>> {
        let (device, base, end) = self.units.get(&unit)?;
        let image = self.image(model, device, *end, t);
        let from = usize::from(addr.checked_sub(*base)?);
        image
            .get(from..from + usize::from(count))
            .map(<[u16]>::to_vec)
    }

    fn image(&self, model: &Model, device: &Device, end: ChainEnd, t: i64) -> Vec<u16> {
        let sf = self.sf_shift(t);
        let mut out = MARKER.to_vec();
        out.extend(common());
        match device {
            Device::Battery {
                bank,
                strings,
                in_803_only,
            } => {
                out.extend(battery_802(model, *bank, t, sf));
                out.extend(bank_803(model, *bank, strings, t, sf));
                if !in_803_only {
                    for &r in strings {
                        out.extend(string_804(model, *bank, r, t, sf));
                    }
                }
            }
            Device::Inverter { pcs } => out.extend(inverter_103(model, *pcs, t, sf)),
        }
        match end {
            ChainEnd::EndMarker => out.extend([0xFFFF, 0]),
            ChainEnd::Zero => out.extend([0, 0]),
            ChainEnd::Exception | ChainEnd::RegisterSpace => {}
        }
        out
    }

    /// 0 or −1: added to the `-1` scale factors in odd periods.
    fn sf_shift(&self, t: i64) -> i16 {
        match self.sf_period_secs {
            p if p > 0 && (t / p) % 2 == 1 => -1,
            _ => 0,
        }
    }
}

/// The scale factors the simulator writes (exponents), by model and SF
/// point name. Those that `--sunspec-sf-period` switches (`shift` −1) are
/// the ones whose values still fit their registers at one more digit.
fn scale_factor(model: u16, name: &str, shift: i16) -> i16 {
    match name {
        "CellV_SF" => -3,
        "Hz_SF" | "PF_SF" => -2,
        "W_SF" | "WChaDisChaMax_SF" | "VAr_SF" | "VA_SF" | "Var_SF" | "DCW_SF" => 2,
        "WH_SF" | "TotWh_SF" | "TotVarh_SF" | "WHRtg_SF" | "AHRtg_SF" => 3,
        "V_SF" if model == 103 || model == 701 => 0,
        "SoC_SF" | "SoH_SF" | "ModTmp_SF" | "Tmp_SF" => -1 + shift,
        _ => -1,
    }
}

/// A model's registers (ID and L first), all "not implemented" until written.
struct Buffer<'a> {
    def: &'a ModelDef,
    words: Vec<u16>,
}

impl<'a> Buffer<'a> {
    fn new(id: u16, groups: u16) -> Buffer<'a> {
        let def = model::model(id).expect("a vendored model");
        let len = def.fixed_len + groups * def.group.as_ref().map_or(0, |g| g.len);
        let mut words = vec![0u16; usize::from(len)];
        let mut fill = |offset: u16, p: &model::PointDef| {
            let ni = not_implemented(p.ty, p.size);
            words[usize::from(offset)..usize::from(offset + p.size)].copy_from_slice(&ni);
        };
        for p in &def.fixed {
            fill(p.offset, p);
        }
        if let Some(g) = &def.group {
            for k in 0..groups {
                for p in &g.points {
                    fill(def.fixed_len + k * g.len + p.offset, p);
                }
            }
        }
        words[0] = id;
        words[1] = len - 2;
        Buffer { def, words }
    }

    fn put(&mut self, offset: u16, ty: PointType, size: u16, raw: f64) {
        let at = usize::from(offset);
        self.words[at..at + usize::from(size)].copy_from_slice(&encode(ty, size, raw));
    }

    /// Leaves a point at its "not implemented" value.
    fn absent(&mut self, name: &str) {
        if let Some(p) = self.def.point(name).cloned() {
            let at = usize::from(p.offset);
            self.words[at..at + usize::from(p.size)]
                .copy_from_slice(&not_implemented(p.ty, p.size));
        }
    }

    fn fixed(&mut self, name: &str, raw: f64) {
        if let Some(p) = self.def.point(name).cloned() {
            self.put(p.offset, p.ty, p.size, raw);
        }
    }

    /// Writes the scale factors and every source of `sources` from this model.
    fn sources(
        &mut self,
        sources: &[Source],
        group: Option<u16>,
        value: impl Fn(&str) -> f64,
        shift: i16,
    ) {
        for p in self.def.fixed.clone() {
            if p.ty == PointType::Sunssf {
                self.put(
                    p.offset,
                    p.ty,
                    1,
                    f64::from(scale_factor(self.def.id, &p.name, shift)),
                );
            }
        }
        for &(column, id, name, transform) in sources {
            let same = id == self.def.id || (id == 103 && (101..=103).contains(&self.def.id));
            if !same || transform == Transform::FaultState {
                continue;
            }
            let (p, offset) = match group {
                None => match self.def.point(name) {
                    Some(p) => (p.clone(), p.offset),
                    None => continue,
                },
                Some(k) => match (self.def.group_point(name), &self.def.group) {
                    (Some(p), Some(g)) => (p.clone(), self.def.fixed_len + k * g.len + p.offset),
                    _ => continue,
                },
            };
            let exp =
                p.sf.as_deref()
                    .map_or(0, |sf| scale_factor(self.def.id, sf, shift));
            let physical = match transform {
                Transform::Kilo => value(column) * 1000.0,
                Transform::Percent => value(column) * 100.0,
                _ => value(column),
            };
            let raw = (physical / 10f64.powi(i32::from(exp))).round();
            self.put(offset, p.ty, p.size, raw);
        }
    }
}

fn not_implemented(ty: PointType, size: u16) -> Vec<u16> {
    match (ty, size) {
        (PointType::Int16 | PointType::Sunssf, _) => vec![0x8000],
        (PointType::Int32, _) => vec![0x8000, 0],
        (PointType::Int64, _) => vec![0x8000, 0, 0, 0],
        (
            PointType::Acc16
            | PointType::Acc32
            | PointType::Acc64
            | PointType::String
            | PointType::Pad,
            n,
        ) => {
            vec![0; usize::from(n)]
        }
        (PointType::Float32, _) => vec![0x7FC0, 0],
        (_, n) => vec![0xFFFF; usize::from(n)],
    }
}

/// A raw value in a point's words (clamped to the type's range).
fn encode(ty: PointType, size: u16, raw: f64) -> Vec<u16> {
    let bits: u64 = match ty {
        PointType::Int16 | PointType::Sunssf => raw.clamp(-32768.0, 32767.0) as i16 as u16 as u64,
        PointType::Int32 | PointType::Bitfield32 => {
            raw.clamp(-2147483648.0, 2147483647.0) as i32 as u32 as u64
        }
        PointType::Int64 => raw as i64 as u64,
        PointType::Float32 => u64::from((raw as f32).to_bits()),
        // One below the type's "not implemented" all-ones.
        _ => raw.clamp(
            0.0,
            ((u64::MAX >> (64 - 16 * u32::from(size.min(4)))) - 1) as f64,
        ) as u64,
    };
    let n = usize::from(size);
    (0..n)
        .map(|i| (bits >> (16 * (n - 1 - i))) as u16)
        .collect()
}

fn common() -> Vec<u16> {
    let mut b = Buffer::new(1, 0);
    let text = |s: &str, words: usize| -> Vec<u16> {
        let mut bytes = s.as_bytes().to_vec();
        bytes.resize(words * 2, 0);
        bytes
            .chunks(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]))
            .collect()
    };
    for (name, value) in [("Mn", "essops"), ("Md", "simulate"), ("SN", "SIM-0001")] {
        if let Some(p) = b.def.point(name).cloned() {
            let at = usize::from(p.offset);
            b.words[at..at + usize::from(p.size)].copy_from_slice(&text(value, p.size.into()));
        }
    }
    b.words
}

fn battery_802(model: &Model, bank: i16, t: i64, shift: i16) -> Vec<u16> {
    let mut b = Buffer::new(802, 0);
    b.sources(
        mapping::BANK,
        None,
        |c| model.value(Table::Bank, c, &[bank], t),
        shift,
    );
    b.words
}

fn bank_803(model: &Model, bank: i16, strings: &[i16], t: i64, shift: i16) -> Vec<u16> {
    let mut b = Buffer::new(803, strings.len() as u16);
    b.sources(
        mapping::BANK,
        None,
        |c| model.value(Table::Bank, c, &[bank], t),
        shift,
    );
    b.absent("ModTmpAvg");
    b.fixed("NStr", strings.len() as f64);
    for (k, &r) in strings.iter().enumerate() {
        let value = |c: &str| model.value(Table::Rack, c, &[bank, r], t);
        b.sources(mapping::RACK_803, Some(k as u16), value, shift);
    }
    b.words
}

fn string_804(model: &Model, bank: i16, rack: i16, t: i64, shift: i16) -> Vec<u16> {
    let mut b = Buffer::new(804, 0);
    b.sources(
        mapping::RACK_804,
        None,
        |c| model.value(Table::Rack, c, &[bank, rack], t),
        shift,
    );
    b.fixed("Idx", f64::from(rack));
    b.absent("SoH");
    b.words
}

fn inverter_103(model: &Model, pcs: i16, t: i64, shift: i16) -> Vec<u16> {
    let mut b = Buffer::new(103, 0);
    b.sources(
        mapping::PCS_10X,
        None,
        |c| model.value(Table::Pcs, c, &[pcs], t),
        shift,
    );
    b.absent("DCW");
    b.words
}

/// A `--sunspec-base` or `--sunspec-end` value that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum SunSpecFlagError {
    #[error("`{0}` is not DEVICES={1} (e.g. {2})")]
    Shape(String, &'static str, &'static str),
    #[error(transparent)]
    Devices(#[from] crate::schema::DeviceRangeError),
    #[error("`{0}`: a SunSpec base is 40000, 0 or 50000")]
    Base(String),
    #[error("`{0}`: a chain ends with end, zero or exception")]
    End(String),
}

/// `bank:2=0`: a device range and where its marker is.
pub fn parse_base(s: &str) -> Result<(DeviceRange, u16), SunSpecFlagError> {
    let (range, addr) = s
        .split_once('=')
        .ok_or_else(|| SunSpecFlagError::Shape(s.into(), "ADDR", "bank:2=0"))?;
    let range = DeviceRange::parse(range)?;
    match addr.parse::<u16>() {
        Ok(a) if crate::modbus::sunspec::scan::BASES.contains(&a) => Ok((range, a)),
        _ => Err(SunSpecFlagError::Base(addr.into())),
    }
}

/// `pcs:1=exception`: a device range and how its chain ends.
pub fn parse_end(s: &str) -> Result<(DeviceRange, ChainEnd), SunSpecFlagError> {
    let (range, end) = s
        .split_once('=')
        .ok_or_else(|| SunSpecFlagError::Shape(s.into(), "END", "pcs:1=exception"))?;
    let range = DeviceRange::parse(range)?;
    let end = match end {
        "end" => ChainEnd::EndMarker,
        "zero" => ChainEnd::Zero,
        "exception" => ChainEnd::Exception,
        other => return Err(SunSpecFlagError::End(other.into())),
    };
    Ok((range, end))
}
