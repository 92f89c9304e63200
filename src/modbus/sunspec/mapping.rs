//! SunSpec models → essops columns (docs/REGISTER-MAPS.md prints this
//! table): a battery (802, with 803's temperatures) is a bank row, each of
//! its strings (an 804, else 803's string group) a rack row, an inverter
//! (701, else 103, 102 or 101) a PCS row.
//!
//! A device's [`SunPlan`] is built once its models are found: which
//! registers to read and where each column's point and scale factor lie.
//! Every value is raw × 10^SF. A scale factor is read in the same request
//! as its values where they fit in 125 registers; otherwise it is read
//! before and after them, and a value whose scale factor changed in
//! between is stored as NULL. "Not implemented" values are NULL.

use std::time::Duration;

use super::model::{self, ModelDef, PointType};
use super::scan::{self, Chain, Found, ScanError};
use crate::modbus::client::{Connection, ReadError};
use crate::modbus::map::{MAX_READ, ReadRequest, RegisterKind};
use crate::modbus::value::{DataType, Value};
use crate::schema::Table;

/// What one poll of a discovered device usually costs (reads, registers):
/// a string's 804, or 802 with 803's fixed block right after it, is one read
/// of well under 125 registers. For `ingest --plan` before discovery.
pub const USUAL_READ: (usize, u64) = (1, 80);

/// What a SunSpec device is to the site.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A battery: the bank row.
    Bank,
    /// String `string` (1-based) of a battery: a rack row.
    Rack { string: u16 },
    /// An inverter: the PCS row.
    Pcs,
}

/// How a point becomes the column's value after scaling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transform {
    Plain,
    /// W → kW, Wh → kWh.
    Kilo,
    /// 103's PF in percent → −1…1.
    Percent,
    /// 802's State: 1 when 99 (FAULT), else 0.
    FaultState,
    /// An integer column (status, alarm bits, positions): the raw value.
    Integer,
}

/// The columns a SunSpec site's tables are filled with, in order, with the
/// type preflight checks them as.
pub fn columns(table: Table) -> &'static [(&'static str, DataType)] {
    const F: DataType = DataType::F64;
    const I: DataType = DataType::I32;
    const S: DataType = DataType::I16;
    match table {
        Table::Bank => &[
            ("SOC", F),
            ("SOH", F),
            ("DC_VOLTAGE", F),
            ("DC_CURRENT", F),
            ("DC_POWER", F),
            ("CHARGE_CURRENT_LIMIT", F),
            ("DISCHARGE_CURRENT_LIMIT", F),
            ("MAX_CELL_VOLTAGE", F),
            ("MIN_CELL_VOLTAGE", F),
            ("AVG_CELL_VOLTAGE", F),
            ("MAX_CELL_TEMP", F),
            ("MIN_CELL_TEMP", F),
            ("AVG_CELL_TEMP", F),
            ("STATUS", I),
            ("ALARM", I),
            ("FAULT", S),
        ],
        Table::Rack => &[
            ("SOC", F),
            ("SOH", F),
            ("DC_VOLTAGE", F),
            ("DC_CURRENT", F),
            ("MAX_CELL_VOLTAGE", F),
            ("MIN_CELL_VOLTAGE", F),
            ("AVG_CELL_VOLTAGE", F),
            ("MAX_CELL_VOLTAGE_POS", S),
            ("MIN_CELL_VOLTAGE_POS", S),
            ("MAX_CELL_TEMP", F),
            ("MIN_CELL_TEMP", F),
            ("AVG_CELL_TEMP", F),
            ("MAX_CELL_TEMP_POS", S),
            ("MIN_CELL_TEMP_POS", S),
            ("STATUS", I),
            ("ALARM", I),
        ],
        Table::Pcs => &[
            ("AC_ACTIVE_POWER", F),
            ("AC_REACTIVE_POWER", F),
            ("AC_POWER_FACTOR", F),
            ("AC_FREQUENCY", F),
            ("AC_VOLTAGE_RS", F),
            ("AC_VOLTAGE_ST", F),
            ("AC_VOLTAGE_TR", F),
            ("AC_CURRENT_R", F),
            ("AC_CURRENT_S", F),
            ("AC_CURRENT_T", F),
            ("DC_VOLTAGE", F),
            ("DC_CURRENT", F),
            ("DC_POWER", F),
            ("INTERNAL_TEMP", F),
            ("DISCHARGED_ENERGY", F),
            ("CHARGED_ENERGY", F),
            ("STATUS", I),
            ("ALARM", I),
        ],
        Table::Etc => &[],
    }
}

/// The name SunSpec gives bit `bit` of `column` (an ALARM word) in
/// `table`: from the first model point the column comes from that names it.
pub fn bit_name(table: Table, column: &str, bit: i16) -> Option<String> {
    let sources: &[&[Source]] = match table {
        Table::Bank => &[BANK],
        Table::Rack => &[RACK_804, RACK_803],
        Table::Pcs => &[PCS_701, PCS_10X],
        Table::Etc => &[],
    };
    sources
        .iter()
        .flat_map(|s| s.iter())
        .filter(|(c, _, _, t)| *c == column && *t == Integer)
        .find_map(|(_, id, point, _)| {
            let def = model::model(*id)?;
            let p = def.point(point).or_else(|| def.group_point(point))?;
            p.symbols
                .iter()
                .find(|(_, v)| *v == i64::from(bit))
                .map(|(n, _)| n.clone())
        })
}

/// (column, model, point, transform): where a column comes from. A point
/// of 803's string group is named as in the group.
pub(crate) type Source = (&'static str, u16, &'static str, Transform);

use Transform::{FaultState, Integer, Kilo, Percent, Plain};

pub(crate) const BANK: &[Source] = &[
    ("SOC", 802, "SoC", Plain),
    ("SOH", 802, "SoH", Plain),
    ("DC_VOLTAGE", 802, "V", Plain),
    ("DC_CURRENT", 802, "A", Plain),
    ("DC_POWER", 802, "W", Kilo),
    ("CHARGE_CURRENT_LIMIT", 802, "AChaMax", Plain),
    ("DISCHARGE_CURRENT_LIMIT", 802, "ADisChaMax", Plain),
    ("MAX_CELL_VOLTAGE", 802, "CellVMax", Plain),
    ("MIN_CELL_VOLTAGE", 802, "CellVMin", Plain),
    ("AVG_CELL_VOLTAGE", 802, "CellVAvg", Plain),
    ("MAX_CELL_TEMP", 803, "ModTmpMax", Plain),
    ("MIN_CELL_TEMP", 803, "ModTmpMin", Plain),
    ("AVG_CELL_TEMP", 803, "ModTmpAvg", Plain),
    ("STATUS", 802, "State", Integer),
    ("ALARM", 802, "Evt1", Integer),
    ("FAULT", 802, "State", FaultState),
];

pub(crate) const RACK_804: &[Source] = &[
    ("SOC", 804, "SoC", Plain),
    ("SOH", 804, "SoH", Plain),
    ("DC_VOLTAGE", 804, "V", Plain),
    ("DC_CURRENT", 804, "A", Plain),
    ("MAX_CELL_VOLTAGE", 804, "CellVMax", Plain),
    ("MIN_CELL_VOLTAGE", 804, "CellVMin", Plain),
    ("AVG_CELL_VOLTAGE", 804, "CellVAvg", Plain),
    ("MAX_CELL_VOLTAGE_POS", 804, "CellVMaxMod", Integer),
    ("MIN_CELL_VOLTAGE_POS", 804, "CellVMinMod", Integer),
    ("MAX_CELL_TEMP", 804, "ModTmpMax", Plain),
    ("MIN_CELL_TEMP", 804, "ModTmpMin", Plain),
    ("AVG_CELL_TEMP", 804, "ModTmpAvg", Plain),
    ("MAX_CELL_TEMP_POS", 804, "ModTmpMaxMod", Integer),
    ("MIN_CELL_TEMP_POS", 804, "ModTmpMinMod", Integer),
    ("STATUS", 804, "St", Integer),
    ("ALARM", 804, "Evt1", Integer),
];

/// 803's string group has no string voltage: DC_VOLTAGE stays NULL.
pub(crate) const RACK_803: &[Source] = &[
    ("SOC", 803, "StrSoC", Plain),
    ("SOH", 803, "StrSoH", Plain),
    ("DC_CURRENT", 803, "StrA", Plain),
    ("MAX_CELL_VOLTAGE", 803, "StrCellVMax", Plain),
    ("MIN_CELL_VOLTAGE", 803, "StrCellVMin", Plain),
    ("AVG_CELL_VOLTAGE", 803, "StrCellVAvg", Plain),
    ("MAX_CELL_VOLTAGE_POS", 803, "StrCellVMaxMod", Integer),
    ("MIN_CELL_VOLTAGE_POS", 803, "StrCellVMinMod", Integer),
    ("MAX_CELL_TEMP", 803, "StrModTmpMax", Plain),
    ("MIN_CELL_TEMP", 803, "StrModTmpMin", Plain),
    ("AVG_CELL_TEMP", 803, "StrModTmpAvg", Plain),
    ("MAX_CELL_TEMP_POS", 803, "StrModTmpMaxMod", Integer),
    ("MIN_CELL_TEMP_POS", 803, "StrModTmpMinMod", Integer),
    ("STATUS", 803, "StrSt", Integer),
    ("ALARM", 803, "StrEvt1", Integer),
];

/// 101 (single phase) and 102 (split phase) share 103's layout; their
/// missing phases hold "not implemented" and are NULL.
pub(crate) const PCS_10X: &[Source] = &[
    ("AC_ACTIVE_POWER", 103, "W", Kilo),
    ("AC_REACTIVE_POWER", 103, "VAr", Kilo),
    ("AC_POWER_FACTOR", 103, "PF", Percent),
    ("AC_FREQUENCY", 103, "Hz", Plain),
    ("AC_VOLTAGE_RS", 103, "PPVphAB", Plain),
    ("AC_VOLTAGE_ST", 103, "PPVphBC", Plain),
    ("AC_VOLTAGE_TR", 103, "PPVphCA", Plain),
    ("AC_CURRENT_R", 103, "AphA", Plain),
    ("AC_CURRENT_S", 103, "AphB", Plain),
    ("AC_CURRENT_T", 103, "AphC", Plain),
    ("DC_VOLTAGE", 103, "DCV", Plain),
    ("DC_CURRENT", 103, "DCA", Plain),
    ("DC_POWER", 103, "DCW", Kilo),
    ("INTERNAL_TEMP", 103, "TmpCab", Plain),
    ("DISCHARGED_ENERGY", 103, "WH", Kilo),
    ("STATUS", 103, "St", Integer),
    ("ALARM", 103, "Evt1", Integer),
];

/// 701 has no DC side: those columns stay NULL.
pub(crate) const PCS_701: &[Source] = &[
    ("AC_ACTIVE_POWER", 701, "W", Kilo),
    ("AC_REACTIVE_POWER", 701, "Var", Kilo),
    ("AC_POWER_FACTOR", 701, "PF", Plain),
    ("AC_FREQUENCY", 701, "Hz", Plain),
    ("AC_VOLTAGE_RS", 701, "VL1L2", Plain),
    ("AC_VOLTAGE_ST", 701, "VL2L3", Plain),
    ("AC_VOLTAGE_TR", 701, "VL3L1", Plain),
    ("AC_CURRENT_R", 701, "AL1", Plain),
    ("AC_CURRENT_S", 701, "AL2", Plain),
    ("AC_CURRENT_T", 701, "AL3", Plain),
    ("INTERNAL_TEMP", 701, "TmpCab", Plain),
    ("DISCHARGED_ENERGY", 701, "TotWhInj", Kilo),
    ("CHARGED_ENERGY", 701, "TotWhAbs", Kilo),
    ("STATUS", 701, "St", Integer),
    ("ALARM", 701, "Alrm", Integer),
];

/// One column's point on the device.
#[derive(Debug, Clone, PartialEq)]
pub struct SunPoint {
    pub model: u16,
    pub point: &'static str,
    pub address: u16,
    pub size: u16,
    pub ty: PointType,
    /// The register of its scale factor.
    pub sf: Option<u16>,
    pub transform: Transform,
}

/// How to read one SunSpec device: the requests, and per column (in
/// [`columns`] order) where its point is.
#[derive(Debug, Clone, PartialEq)]
pub struct SunPlan {
    pub requests: Vec<ReadRequest>,
    pub points: Vec<Option<SunPoint>>,
    /// The models it reads, for messages: `802@40002, 803@40068`.
    pub models: String,
}

/// Finds the device's models and plans its reads; a device whose models
/// do not fit its role is [`ReadError::SunSpec`], saying what was found.
pub async fn discover(
    c: &Connection,
    unit: u8,
    role: Role,
    timeout: Duration,
) -> Result<SunPlan, ReadError> {
    let chain = scan::scan(c, unit, timeout).await.map_err(|e| match e {
        ScanError::NoMarker => ReadError::SunSpec(format!("unit {unit}: {e}")),
        ScanError::Read(e) => e,
    })?;
    let strings = match (role, chain.find(803), chain.all(804).count()) {
        (Role::Rack { .. }, Some(m803), 0) => Some(string_count(c, unit, m803, timeout).await?),
        _ => None,
    };
    plan(&chain, role, strings).map_err(|why| ReadError::SunSpec(format!("unit {unit}: {why}")))
}

/// 803's NStr, or the strings its length holds when NStr is not implemented.
async fn string_count(
    c: &Connection,
    unit: u8,
    m803: &Found,
    timeout: Duration,
) -> Result<u16, ReadError> {
    let def = model::model(803).expect("803 is vendored");
    let at = def.point("NStr").map_or(2, |p| p.offset);
    let words = scan::read(c, unit, m803.address + at, 1, timeout).await?;
    Ok(match words[0] {
        0xFFFF => def.repeats_in(m803.length),
        n => n.min(def.repeats_in(m803.length)),
    })
}

/// A model a role reads: its sources, where it is, and the repeat of its
/// group that holds the row (803's string k).
type Pick<'a> = (&'static [Source], &'a Found, Option<u16>);

/// A device whose models do not fit the role the config gives it; each
/// says which models were found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MismatchError {
    #[error("no battery model 802 (models found: {found})")]
    NoBattery { found: String },
    #[error(
        "string {string} is not there: the battery has {strings} string(s) (models found: {found})"
    )]
    NoString {
        string: u16,
        strings: u16,
        found: String,
    },
    #[error("no inverter model 701, 103, 102 or 101 (models found: {found})")]
    NoInverter { found: String },
}

/// The plan for `role` on a device with `chain`; `strings`: 803's string
/// count when a string comes from 803's group.
pub fn plan(chain: &Chain, role: Role, strings: Option<u16>) -> Result<SunPlan, MismatchError> {
    let found = || {
        let ids: Vec<String> = chain.models.iter().map(|m| m.id.to_string()).collect();
        match ids.is_empty() {
            true => "none".to_string(),
            false => ids.join(", "),
        }
    };
    let (table, mut picks): (Table, Vec<Pick<'_>>) = match role {
        Role::Bank => {
            let m802 = chain
                .find(802)
                .ok_or_else(|| MismatchError::NoBattery { found: found() })?;
            let mut picks: Vec<Pick<'_>> = vec![(BANK, m802, None)];
            if let Some(m803) = chain.find(803) {
                picks.push((BANK, m803, None));
            }
            (Table::Bank, picks)
        }
        Role::Rack { string } => {
            let k = usize::from(string.max(1) - 1);
            let strings804: Vec<&Found> = chain.all(804).collect();
            match (strings804.get(k), chain.find(803), strings) {
                (Some(m804), _, _) => (Table::Rack, vec![(RACK_804, *m804, None)]),
                (None, Some(m803), Some(n)) if strings804.is_empty() && string <= n => {
                    (Table::Rack, vec![(RACK_803, m803, Some(string - 1))])
                }
                _ => {
                    let n = match strings804.len() {
                        0 => strings.unwrap_or(0),
                        n => n as u16,
                    };
                    return Err(MismatchError::NoString {
                        string,
                        strings: n,
                        found: found(),
                    });
                }
            }
        }
        Role::Pcs => {
            let pick = chain
                .find(701)
                .map(|m| (PCS_701, m))
                .or_else(|| {
                    [103, 102, 101]
                        .iter()
                        .find_map(|id| chain.find(*id))
                        .map(|m| (PCS_10X, m))
                })
                .ok_or_else(|| MismatchError::NoInverter { found: found() })?;
            (Table::Pcs, vec![(pick.0, pick.1, None)])
        }
    };
    let mut points: Vec<Option<SunPoint>> = vec![None; columns(table).len()];
    for (sources, found, group) in picks.drain(..) {
        let Some(def) = model::model(found.id) else {
            continue;
        };
        for &(column, model_id, name, transform) in sources {
            // 101-103 share one source list, written with 103's id.
            let same_model =
                model_id == found.id || (model_id == 103 && (101..=103).contains(&found.id));
            let Some(i) = columns(table).iter().position(|(c, _)| *c == column) else {
                continue;
            };
            if !same_model {
                continue;
            }
            points[i] = locate(def, found, group, name, transform);
        }
    }
    let requests = requests(&points);
    let models = picks_summary(chain, role);
    Ok(SunPlan {
        requests,
        points,
        models,
    })
}

fn picks_summary(chain: &Chain, role: Role) -> String {
    let ids: &[u16] = match role {
        Role::Bank => &[802, 803],
        Role::Rack { .. } => &[804, 803],
        Role::Pcs => &[701, 103, 102, 101],
    };
    chain
        .models
        .iter()
        .filter(|m| ids.contains(&m.id))
        .map(|m| format!("{}@{}", m.id, m.address))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Where a point of `def` lies on the device (in repeat `group` of its
/// repeating group when given), with its scale factor's register.
fn locate(
    def: &ModelDef,
    found: &Found,
    group: Option<u16>,
    name: &'static str,
    transform: Transform,
) -> Option<SunPoint> {
    let (p, start) = match group {
        None => (def.point(name)?, found.address),
        Some(k) => {
            let g = def.group.as_ref()?;
            (
                def.group_point(name)?,
                found.address + def.fixed_len + k * g.len,
            )
        }
    };
    // A point past the model's length is not on this device.
    if (start - found.address) + p.offset + p.size > found.length + 2 {
        return None;
    }
    let sf =
        p.sf.as_ref()
            .and_then(|sf| def.point(sf))
            .map(|s| found.address + s.offset);
    Some(SunPoint {
        model: found.id,
        point: name,
        address: start + p.offset,
        size: p.size,
        ty: p.ty,
        sf,
        transform,
    })
}

/// Reads for every point and scale factor, as few as 125 registers a read
/// allow. A scale factor that does not share a read with every value it
/// scales gets a read of its own before and after the others.
fn requests(points: &[Option<SunPoint>]) -> Vec<ReadRequest> {
    let mut spans: Vec<(u16, u16)> = Vec::new();
    for p in points.iter().flatten() {
        spans.push((p.address, p.address + p.size));
        if let Some(sf) = p.sf {
            spans.push((sf, sf + 1));
        }
    }
    let mut out = merge(spans);
    let split: Vec<(u16, u16)> = points
        .iter()
        .flatten()
        .filter_map(|p| {
            let sf = p.sf?;
            let together = out
                .iter()
                .any(|r| covers(r, p.address, p.size) && covers(r, sf, 1));
            (!together).then_some((sf, sf + 1))
        })
        .collect();
    if !split.is_empty() {
        let sf_reads = merge(split);
        out = sf_reads
            .iter()
            .cloned()
            .chain(out)
            .chain(sf_reads.iter().cloned())
            .collect();
    }
    out
}

fn covers(r: &ReadRequest, at: u16, size: u16) -> bool {
    r.start <= at && u32::from(at) + u32::from(size) <= u32::from(r.start) + u32::from(r.count)
}

/// Address ranges merged into reads of at most 125 registers.
fn merge(mut spans: Vec<(u16, u16)>) -> Vec<ReadRequest> {
    spans.sort();
    let mut out: Vec<ReadRequest> = Vec::new();
    for (lo, hi) in spans {
        if let Some(r) = out.last_mut() {
            let end = r.start + r.count;
            if hi.max(end) - r.start <= MAX_READ {
                r.count = hi.max(end) - r.start;
                continue;
            }
        }
        out.push(ReadRequest {
            kind: RegisterKind::Holding,
            start: lo,
            count: hi - lo,
            fields: Vec::new(),
        });
    }
    out
}

/// One point as read: its words, raw value, scale factor and column value.
#[derive(Debug, Clone, PartialEq)]
pub struct PointRead {
    pub words: Vec<u16>,
    /// None: not implemented.
    pub raw: Option<f64>,
    /// The scale factor's exponent; None where a changed or not implemented
    /// scale factor makes the value unknown.
    pub sf: Option<i16>,
    pub value: Option<Value>,
}

/// Decodes one point from the answers of a poll (request, its words).
pub fn read_point(p: &SunPoint, answers: &[(&ReadRequest, &[u16])]) -> Option<PointRead> {
    let own = answers.iter().find(|(r, _)| covers(r, p.address, p.size))?;
    let from = usize::from(p.address - own.0.start);
    let words = own.1.get(from..from + usize::from(p.size))?.to_vec();
    let raw = p.ty.raw(&words);
    let sf = match p.sf {
        None => Some(0),
        Some(at) => scale_factor(at, own, answers),
    };
    let value = match (raw, sf, p.transform) {
        (Some(raw), _, Transform::Integer) => Some(Value::Int(raw as i64)),
        (Some(raw), _, Transform::FaultState) => Some(Value::Int(i64::from(raw == 99.0))),
        (Some(raw), Some(sf), t) => {
            // Dividing by an exact power of ten rounds as the decimal reads
            // (3172 × 10^-2 is 31.72, not 31.720000000000002).
            let scaled = match sf {
                ..0 => raw / 10f64.powi(-i32::from(sf)),
                _ => raw * 10f64.powi(i32::from(sf)),
            };
            Some(Value::Float(match t {
                Transform::Kilo => scaled / 1000.0,
                Transform::Percent => scaled / 100.0,
                _ => scaled,
            }))
        }
        _ => None,
    };
    Some(PointRead {
        words,
        raw,
        sf,
        value,
    })
}

/// The scale factor at `at`: from the value's own read when it is there,
/// else from every read that has it, which must agree.
fn scale_factor(
    at: u16,
    (own, own_words): &(&ReadRequest, &[u16]),
    answers: &[(&ReadRequest, &[u16])],
) -> Option<i16> {
    let word = |r: &ReadRequest, w: &[u16]| w.get(usize::from(at - r.start)).copied();
    let raw = match covers(own, at, 1) {
        true => word(own, own_words)?,
        false => {
            let seen: Vec<u16> = answers
                .iter()
                .filter(|(r, _)| covers(r, at, 1))
                .filter_map(|(r, w)| word(r, w))
                .collect();
            match seen.split_first() {
                Some((first, rest)) if rest.iter().all(|w| w == first) => *first,
                _ => return None,
            }
        }
    };
    PointType::Sunssf.raw(&[raw]).map(|v| v as i16)
}

/// Reads a planned device once: every column's value (None: NULL).
pub async fn read_device(
    c: &Connection,
    unit: u8,
    plan: &SunPlan,
    timeout: Duration,
) -> Result<Vec<Option<Value>>, ReadError> {
    let answers = c.read_all(unit, &plan.requests, timeout).await?;
    let pairs: Vec<(&ReadRequest, &[u16])> = plan
        .requests
        .iter()
        .zip(&answers)
        .map(|(r, w)| (r, w.as_slice()))
        .collect();
    Ok(plan
        .points
        .iter()
        .map(|p| p.as_ref().and_then(|p| read_point(p, &pairs)?.value))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alarm_bits_are_named_from_the_model() {
        assert_eq!(
            bit_name(Table::Bank, "ALARM", 1).as_deref(),
            Some("OVER_TEMP_ALARM")
        );
        assert_eq!(bit_name(Table::Bank, "ALARM", 31), None);
        assert_eq!(bit_name(Table::Bank, "SOC", 1), None);
    }
    use crate::modbus::sunspec::scan::ChainEnd;

    /// A battery whose 803 has five strings and no 804: string 5's group is
    /// too far from 803's scale factors for one read.
    fn chain() -> Chain {
        Chain {
            base: 40000,
            models: vec![
                Found {
                    id: 802,
                    address: 40002,
                    length: 62,
                },
                Found {
                    id: 803,
                    address: 40066,
                    length: 26 + 5 * 32,
                },
            ],
            end: ChainEnd::EndMarker,
        }
    }

    #[test]
    fn sunspec_scale_factor_out_of_reach_is_read_before_and_after_its_values() {
        let plan = plan(&chain(), Role::Rack { string: 5 }, Some(5)).unwrap();
        let sf_soc = 40066 + 26; // 803's SoC_SF
        let soc = 40066 + 28 + 4 * 32 + 4; // string 5's StrSoC
        let covers_sf = |r: &ReadRequest| r.start <= sf_soc && sf_soc < r.start + r.count;
        assert!(covers_sf(&plan.requests[0]) && covers_sf(plan.requests.last().unwrap()));
        let value_read = plan
            .requests
            .iter()
            .position(|r| r.start <= soc && soc < r.start + r.count)
            .unwrap();
        assert!(
            value_read > 0 && value_read < plan.requests.len() - 1,
            "{:?}",
            plan.requests
        );
        assert!(!covers_sf(&plan.requests[value_read]));
        let i = columns(Table::Rack)
            .iter()
            .position(|(c, _)| *c == "SOC")
            .unwrap();
        let p = plan.points[i].as_ref().unwrap();
        let answer = |r: &ReadRequest, sf: i16| -> Vec<u16> {
            (r.start..r.start + r.count)
                .map(|a| match a {
                    a if a == sf_soc => sf as u16,
                    a if a == soc => 417,
                    _ => 0,
                })
                .collect()
        };
        let read = |before: i16, after: i16| {
            let n = plan.requests.len();
            let words: Vec<Vec<u16>> = plan
                .requests
                .iter()
                .enumerate()
                .map(|(k, r)| answer(r, if k + 1 == n { after } else { before }))
                .collect();
            let pairs: Vec<(&ReadRequest, &[u16])> = plan
                .requests
                .iter()
                .zip(&words)
                .map(|(r, w)| (r, w.as_slice()))
                .collect();
            read_point(p, &pairs).unwrap().value
        };
        assert_eq!(read(-1, -1), Some(Value::Float(41.7)));
        // The device changed its scale factor between the reads: no guess, NULL.
        assert_eq!(read(-1, -2), None);
        // String 1 shares a read with its scale factors: one read only.
        let first = plan_for_string(1);
        assert_eq!(first.requests.len(), 1);
    }

    fn plan_for_string(k: u16) -> SunPlan {
        plan(&chain(), Role::Rack { string: k }, Some(5)).unwrap()
    }

    #[test]
    fn sunspec_device_without_the_models_says_what_it_has() {
        let inverter = Chain {
            base: 0,
            models: vec![
                Found {
                    id: 1,
                    address: 2,
                    length: 66,
                },
                Found {
                    id: 103,
                    address: 70,
                    length: 50,
                },
            ],
            end: ChainEnd::Exception,
        };
        let err = plan(&inverter, Role::Bank, None).unwrap_err().to_string();
        assert_eq!(err, "no battery model 802 (models found: 1, 103)");
        assert!(plan(&inverter, Role::Pcs, None).is_ok());
        let err = plan(&chain(), Role::Rack { string: 6 }, Some(5))
            .unwrap_err()
            .to_string();
        assert!(err.contains("the battery has 5 string(s)"), "{err}");
    }
}
