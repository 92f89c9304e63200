//! Register maps: which Modbus registers feed which column of which table.
//!
//! A map is its own TOML file (the shipped one is built in); `sites.toml`
//! names it. A device's register is `base + Σ (id − 1) × stride + at`: a
//! block base plus per-bank/per-rack/per-PCS strides plus the field's place
//! in the device's block. Everything that can be checked without a device is
//! checked at load time, with the file, line and key of the bad field.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use toml::Spanned;

use super::value::{DataType, Value, WordOrder};
use crate::doc::{Doc, DocError};
use crate::schema::{DeviceId, TIME_COLUMN, Table, TableSpec};

/// The shipped register map.
pub const BUILTIN_MAP: &str = include_str!("../../maps/default.toml");
const BUILTIN_LABEL: &str = "maps/default.toml (built-in)";

/// Modbus allows at most this many registers in one read.
pub const MAX_READ: u16 = 125;
/// ... and this many coils or discrete inputs.
pub const MAX_BITS_READ: u16 = 2000;

/// The four Modbus data spaces: two of 16-bit registers, two of single bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RegisterKind {
    Holding,
    Input,
    /// Read with function 1; one bit per address.
    Coil,
    /// Read with function 2; one bit per address.
    Discrete,
}

impl RegisterKind {
    /// The map's words for the kinds.
    pub const NAMES: [(&'static str, RegisterKind); 4] = [
        ("holding", RegisterKind::Holding),
        ("input", RegisterKind::Input),
        ("coil", RegisterKind::Coil),
        ("discrete", RegisterKind::Discrete),
    ];

    pub fn name(self) -> &'static str {
        crate::named::name_of(&RegisterKind::NAMES, self)
    }

    /// Whether each address holds one bit (coils, discrete inputs).
    pub fn is_bit(self) -> bool {
        matches!(self, RegisterKind::Coil | RegisterKind::Discrete)
    }

    /// The most one read may ask for: 125 registers or 2000 bits (Modbus spec 6.1–6.4).
    pub fn max_read(self) -> u16 {
        match self.is_bit() {
            true => MAX_BITS_READ,
            false => MAX_READ,
        }
    }

    /// The read function code.
    pub fn function(self) -> u8 {
        match self {
            RegisterKind::Coil => 0x01,
            RegisterKind::Discrete => 0x02,
            RegisterKind::Holding => 0x03,
            RegisterKind::Input => 0x04,
        }
    }

    /// The first number of the kind's block in the numbering vendor manuals
    /// print (`00001`, `10001`, `30001`, `40001`): number − this = protocol address.
    fn first_number(self) -> u32 {
        match self {
            RegisterKind::Coil => 1,
            RegisterKind::Discrete => 10_001,
            RegisterKind::Input => 30_001,
            RegisterKind::Holding => 40_001,
        }
    }
}

/// A device's own endpoint and unit id from `sites.toml` (a controller per
/// bank, a PCS on its own address), overriding the map's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceOverride {
    pub endpoint: Option<String>,
    pub unit: Option<u8>,
}

impl DeviceOverride {
    pub fn is_set(&self) -> bool {
        self.endpoint.is_some() || self.unit.is_some()
    }
}

/// Where one device answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceAddress {
    /// The site's endpoint name.
    pub endpoint: String,
    pub unit: u8,
    /// The device's first register (≤ 65535 once [`check_devices`] passed).
    pub start: u64,
}

#[derive(Debug, Clone)]
pub struct RegisterMap {
    pub label: String,
    /// The SunSpec map: devices are discovered, their tables only list columns.
    pub sunspec: bool,
    pub tables: Vec<TableMap>,
}

/// How one table's devices lay out their registers.
#[derive(Debug, Clone)]
pub struct TableMap {
    pub spec: TableSpec,
    /// Which of the site's Modbus endpoints serves this table (none: each
    /// device names its own in `sites.toml`).
    pub endpoint: Option<String>,
    /// Unit id of the first device; `unit_stride` adds per device id.
    pub unit: u8,
    pub unit_stride: Vec<u32>,
    pub base: u32,
    /// Per device column (in `spec.device_columns` order).
    pub stride: Vec<u32>,
    /// Unused registers a single read may span to save a request.
    pub max_gap: u16,
    pub fields: Vec<Field>,
}

#[derive(Debug, Clone)]
pub struct Field {
    pub column: String,
    pub kind: RegisterKind,
    /// Register offset inside the device's block.
    pub at: u16,
    pub dtype: DataType,
    pub order: WordOrder,
    /// Physical value = raw × scale + offset.
    pub scale: f64,
    pub offset: f64,
}

/// One read request of a device: `count` registers from `start`, feeding
/// `fields` (indices into the table's fields).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadRequest {
    pub kind: RegisterKind,
    pub start: u16,
    pub count: u16,
    pub fields: Vec<usize>,
}

impl Field {
    pub fn is_scaled(&self) -> bool {
        self.scale != 1.0 || self.offset != 0.0
    }

    /// The field's words in the answer to `r`, for a device whose block
    /// starts at `block_start`; `None` when the answer does not hold them.
    pub fn words_in<'a>(
        &self,
        block_start: u64,
        r: &ReadRequest,
        words: &'a [u16],
    ) -> Option<&'a [u16]> {
        let from =
            usize::try_from((block_start + u64::from(self.at)).checked_sub(u64::from(r.start))?)
                .ok()?;
        words.get(from..from + usize::from(self.dtype.words()))
    }

    /// The physical value of a decoded raw one: raw × scale + offset.
    pub fn scaled(&self, raw: Value) -> Value {
        match self.is_scaled() {
            true => Value::Float(raw.as_f64() * self.scale + self.offset),
            false => raw,
        }
    }

    /// A measured quantity (scaled or floating point), not a status or alarm word.
    pub fn is_measure(&self) -> bool {
        self.is_scaled() || self.dtype.is_float()
    }

    /// Registers `[at, at + words)` inside the block.
    fn end(&self) -> u32 {
        u32::from(self.at) + u32::from(self.dtype.words())
    }
}

impl TableMap {
    fn offset(strides: &[u32], device: &[i16]) -> u64 {
        strides
            .iter()
            .zip(device)
            .map(|(s, id)| u64::from(*s) * (i64::from(*id) - 1).max(0) as u64)
            .sum()
    }

    /// The device's first register (may exceed 65535 on a bad map; see [`check_devices`]).
    pub fn block_start(&self, device: &[i16]) -> u64 {
        u64::from(self.base) + Self::offset(&self.stride, device)
    }

    /// Where `device` answers. A device with its own endpoint or unit is
    /// addressed as if its bank (or PCS) were the only one: the strides of
    /// the first device id do not apply, those of the rack still do.
    pub fn address(
        &self,
        device: &[i16],
        own: &DeviceOverride,
    ) -> Result<DeviceAddress, PlacementError> {
        let label = || {
            format!(
                "{} {}",
                self.spec.name,
                crate::schema::device_label(&self.spec, device)
            )
        };
        let mut ids = device.to_vec();
        if own.is_set()
            && let Some(first) = ids.first_mut()
        {
            *first = 1;
        }
        let unit = u64::from(own.unit.unwrap_or(self.unit)) + Self::offset(&self.unit_stride, &ids);
        let endpoint = own
            .endpoint
            .clone()
            .or_else(|| self.endpoint.clone())
            .ok_or_else(|| PlacementError::NoEndpoint(label()))?;
        Ok(DeviceAddress {
            endpoint,
            unit: u8::try_from(unit).map_err(|_| PlacementError::UnitPast255(label()))?,
            start: self.block_start(&ids),
        })
    }

    /// Per data space the fields use: the first and past-the-last address
    /// of the device's block in it.
    pub fn extents(&self) -> Vec<(RegisterKind, u32, u32)> {
        let mut out: Vec<(RegisterKind, u32, u32)> = Vec::new();
        for f in &self.fields {
            match out.iter_mut().find(|(k, _, _)| *k == f.kind) {
                Some((_, lo, hi)) => {
                    *lo = (*lo).min(u32::from(f.at));
                    *hi = (*hi).max(f.end());
                }
                None => out.push((f.kind, u32::from(f.at), f.end())),
            }
        }
        out.sort();
        out
    }

    pub fn value_columns(&self) -> Vec<String> {
        self.fields.iter().map(|f| f.column.clone()).collect()
    }

    /// The reads that fetch every field of the device whose block starts at
    /// `start`, as few as Modbus allows.
    pub fn requests(&self, start: u64) -> Vec<ReadRequest> {
        let start = start as u32;
        let mut order: Vec<usize> = (0..self.fields.len()).collect();
        order.sort_by_key(|&i| (self.fields[i].kind, self.fields[i].at));
        let mut out: Vec<ReadRequest> = Vec::new();
        for i in order {
            let f = &self.fields[i];
            let (lo, hi) = (start + u32::from(f.at), start + f.end());
            if let Some(r) = out.last_mut() {
                let r_end = u32::from(r.start) + u32::from(r.count);
                let fits = r.kind == f.kind
                    && lo <= r_end + u32::from(self.max_gap)
                    && hi - u32::from(r.start) <= u32::from(f.kind.max_read());
                if fits {
                    r.count = (hi.max(r_end) - u32::from(r.start)) as u16;
                    r.fields.push(i);
                    continue;
                }
            }
            out.push(ReadRequest {
                kind: f.kind,
                start: lo as u16,
                count: (hi - lo) as u16,
                fields: vec![i],
            });
        }
        out
    }
}

/// One device's place in an endpoint's register space, for overlap checks.
#[derive(Debug, Clone)]
pub struct Placement {
    pub endpoint_addr: String,
    pub unit: u8,
    pub kind: RegisterKind,
    pub start: u64,
    pub end: u64,
    pub label: String,
}

/// Why a site's devices do not fit the register map.
#[derive(Debug, thiserror::Error)]
pub enum PlacementError {
    #[error(
        "{device} is served by endpoint `{endpoint}`, which the site does not configure (add it to the site's `modbus` table)"
    )]
    UnknownEndpoint { device: String, endpoint: String },
    #[error(
        "{0} has no endpoint: the register map's table names none; give the device its own `endpoint` in sites.toml"
    )]
    NoEndpoint(String),
    #[error("{0}: unit id past 255 (unit_stride too large)")]
    UnitPast255(String),
    #[error("{label}: field `{field}` ends at register {end}, past 65535")]
    PastEnd {
        label: String,
        field: String,
        end: u64,
    },
    #[error(
        "{} (registers {}..{}) and {} (from {}) overlap on {} unit {}: a stride is smaller than a device's block of {} registers",
        .0.0.label, .0.0.start, .0.0.end - 1, .0.1.label, .0.1.start, .0.0.endpoint_addr, .0.0.unit, .0.0.end - .0.0.start
    )]
    Overlap(Box<(Placement, Placement)>),
}

/// Checks that every device of a site fits in the register space (≤ 65535,
/// a unit id ≤ 255) and that no two devices' blocks overlap on an endpoint
/// and unit. `devices(spec)` lists a table's devices with their own
/// endpoint and unit; `addr(endpoint)` resolves an endpoint name (`None`:
/// not configured). Only endpoints some device uses must be configured.
pub fn check_devices(
    map: &RegisterMap,
    devices: impl Fn(&TableSpec) -> Vec<(DeviceId, DeviceOverride)>,
    addr: impl Fn(&str) -> Option<String>,
) -> Result<Vec<Placement>, PlacementError> {
    let mut placed = Vec::new();
    for t in &map.tables {
        for (d, own) in devices(&t.spec) {
            let label = format!(
                "{} {}",
                t.spec.name,
                crate::schema::device_label(&t.spec, &d)
            );
            let at = t.address(&d, &own)?;
            let endpoint_addr =
                addr(&at.endpoint).ok_or_else(|| PlacementError::UnknownEndpoint {
                    device: label.clone(),
                    endpoint: at.endpoint.clone(),
                })?;
            // A SunSpec device's registers are found on the device.
            if map.sunspec {
                continue;
            }
            for (kind, lo, hi) in t.extents() {
                if at.start + u64::from(hi) > 65_536 {
                    let last = t
                        .fields
                        .iter()
                        .filter(|f| f.kind == kind)
                        .max_by_key(|f| f.end())
                        .map(|f| f.column.as_str());
                    return Err(PlacementError::PastEnd {
                        label,
                        field: last.unwrap_or("?").to_string(),
                        end: at.start + u64::from(hi) - 1,
                    });
                }
                placed.push(Placement {
                    endpoint_addr: endpoint_addr.clone(),
                    unit: at.unit,
                    kind,
                    start: at.start + u64::from(lo),
                    end: at.start + u64::from(hi),
                    label: label.clone(),
                });
            }
        }
    }
    placed.sort_by(|a, b| {
        (&a.endpoint_addr, a.unit, a.kind, a.start).cmp(&(
            &b.endpoint_addr,
            b.unit,
            b.kind,
            b.start,
        ))
    });
    match first_overlap(&placed) {
        Some(pair) => Err(PlacementError::Overlap(Box::new(pair))),
        None => Ok(placed),
    }
}

/// The first two blocks (sorted by place) that share a register.
fn first_overlap(sorted: &[Placement]) -> Option<(Placement, Placement)> {
    sorted.windows(2).find_map(|w| {
        let (a, b) = (&w[0], &w[1]);
        let same_space = (&a.endpoint_addr, a.unit, a.kind) == (&b.endpoint_addr, b.unit, b.kind);
        (same_space && b.start < a.end).then(|| (a.clone(), b.clone()))
    })
}

// ------------------------------------------------------------------ the file

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMap {
    /// `protocol` (0-based addresses, the default) or `register-number`.
    addressing: Option<Spanned<String>>,
    bank: Option<RawTable>,
    rack: Option<RawTable>,
    pcs: Option<RawTable>,
    etc: Option<RawTable>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTable {
    endpoint: Option<Spanned<String>>,
    unit: Option<Spanned<u8>>,
    unit_stride: Option<Spanned<BTreeMap<String, u32>>>,
    kind: Option<Spanned<String>>,
    word_order: Option<Spanned<String>>,
    base: Spanned<u32>,
    stride: Option<Spanned<BTreeMap<String, u32>>>,
    max_gap: Option<u16>,
    fields: Spanned<Vec<RawField>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawField {
    column: Spanned<String>,
    at: Spanned<u32>,
    #[serde(rename = "type")]
    dtype: Option<Spanned<String>>,
    kind: Option<Spanned<String>>,
    word_order: Option<Spanned<String>>,
    scale: Option<Spanned<f64>>,
    offset: Option<Spanned<f64>>,
    bit: Option<Spanned<u8>>,
    width: Option<Spanned<u8>>,
}

impl RegisterMap {
    pub fn builtin() -> RegisterMap {
        RegisterMap::parse(BUILTIN_MAP, BUILTIN_LABEL).expect("the built-in register map is valid")
    }

    pub fn load(path: &Path) -> Result<RegisterMap, DocError> {
        let text = std::fs::read_to_string(path).map_err(|source| DocError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        RegisterMap::parse(&text, &path.display().to_string())
    }

    pub fn parse(text: &str, label: &str) -> Result<RegisterMap, DocError> {
        let doc = Doc {
            text,
            label: label.to_string(),
        };
        let raw: RawMap = toml::from_str(text).map_err(|e| doc.toml_error(&e))?;
        let numbering = match &raw.addressing {
            None => Addressing::Protocol,
            Some(a) => choice(
                &doc,
                Some(a),
                "addressing",
                Addressing::Protocol,
                &[
                    ("protocol", Addressing::Protocol),
                    ("register-number", Addressing::RegisterNumber),
                ],
                "addressing",
                "protocol (0-based addresses) or register-number (40001-style numbers)",
            )?,
        };
        let mut tables = Vec::new();
        for which in Table::ALL {
            let t = match which {
                Table::Bank => &raw.bank,
                Table::Rack => &raw.rack,
                Table::Pcs => &raw.pcs,
                Table::Etc => &raw.etc,
            };
            if let Some(t) = t {
                tables.push(table(&doc, which.spec(), t, numbering)?);
            }
        }
        if tables.is_empty() {
            return Err(doc.error(
                0,
                "(document)",
                "a register map needs at least one of [bank], [rack], [pcs], [etc]",
            ));
        }
        Ok(RegisterMap {
            label: label.to_string(),
            sunspec: false,
            tables,
        })
    }

    pub fn table(&self, name: &str) -> Option<&TableMap> {
        self.tables.iter().find(|t| t.spec.name == name)
    }
}

/// How a map's addresses are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Addressing {
    /// 0-based protocol addresses, as they go on the wire.
    Protocol,
    /// The numbers vendor manuals print: 40001 is holding register 0,
    /// 30001 input register 0, 10001 discrete input 0, 1 (00001) coil 0;
    /// six-digit forms (400001) too.
    RegisterNumber,
}

impl Addressing {
    /// The protocol address of `number` in `kind`'s space, or why it is not one.
    fn protocol(self, kind: RegisterKind, number: u32) -> Result<u32, NotARegisterNumber> {
        let five = kind.first_number();
        let six = (five - 1) * 10 + 1;
        match self {
            Addressing::Protocol => Ok(number),
            Addressing::RegisterNumber if kind != RegisterKind::Coil && number >= six => {
                Ok(number - six)
            }
            Addressing::RegisterNumber if number >= five && number - five <= 65_535 => {
                Ok(number - five)
            }
            Addressing::RegisterNumber => Err(NotARegisterNumber {
                number,
                kind: kind.name(),
                five,
                six,
            }),
        }
    }
}

/// A register number below its kind's first.
#[derive(Debug, thiserror::Error)]
#[error("{number} is not a {kind} register number (from {five}, or {six} in six digits)")]
struct NotARegisterNumber {
    number: u32,
    kind: &'static str,
    five: u32,
    six: u32,
}

fn kind(
    doc: &Doc,
    v: Option<&Spanned<String>>,
    key: &str,
    default: RegisterKind,
) -> Result<RegisterKind, DocError> {
    let names = &RegisterKind::NAMES;
    let expected = "holding, input, coil or discrete";
    choice(doc, v, key, default, names, "register kind", expected)
}

fn word_order(
    doc: &Doc,
    v: Option<&Spanned<String>>,
    key: &str,
    default: WordOrder,
) -> Result<WordOrder, DocError> {
    let expected = "ABCD (big), BADC, CDAB (little) or DCBA";
    choice(
        doc,
        v,
        key,
        default,
        &WordOrder::NAMES,
        "word order",
        expected,
    )
}

/// One of `names` by its word; `default` when not given.
fn choice<T: Copy>(
    doc: &Doc,
    v: Option<&Spanned<String>>,
    key: &str,
    default: T,
    names: &[(&str, T)],
    what: &str,
    expected: &str,
) -> Result<T, DocError> {
    let Some(v) = v else {
        return Ok(default);
    };
    let word = v.get_ref().as_str();
    match crate::named::by_name(names, word) {
        Some(value) => Ok(value),
        None => Err(doc.at(
            v,
            key,
            format!("unknown {what} `{word}`; expected {expected}"),
        )),
    }
}

fn strides(
    doc: &Doc,
    spec: &TableSpec,
    v: Option<&Spanned<BTreeMap<String, u32>>>,
    key: &str,
) -> Result<Vec<u32>, DocError> {
    let names: Vec<String> = spec
        .device_columns
        .iter()
        .map(|c| c.trim_end_matches("_ID").to_lowercase())
        .collect();
    let Some(v) = v else {
        return Ok(vec![0; names.len()]);
    };
    if let Some(bad) = v.get_ref().keys().find(|k| !names.contains(k)) {
        return Err(doc.at(
            v,
            key,
            format!(
                "`{bad}` is not a device id of table `{}` (expected: {})",
                spec.name,
                if names.is_empty() {
                    "none, the table has one device per site".into()
                } else {
                    names.join(", ")
                }
            ),
        ));
    }
    Ok(names
        .iter()
        .map(|n| v.get_ref().get(n).copied().unwrap_or(0))
        .collect())
}

/// How one table's fields are read: the defaults its fields inherit and how
/// its addresses are written.
struct TableDefaults {
    kind: RegisterKind,
    order: WordOrder,
    base: u32,
    numbering: Addressing,
}

fn table(
    doc: &Doc,
    spec: TableSpec,
    t: &RawTable,
    numbering: Addressing,
) -> Result<TableMap, DocError> {
    let key = |k: &str| format!("{}.{k}", spec.name);
    let default_kind = kind(doc, t.kind.as_ref(), &key("kind"), RegisterKind::Holding)?;
    if let (Some(k), true) = (&t.kind, default_kind.is_bit()) {
        return Err(doc.at(
            k,
            key("kind"),
            "a table's kind is holding or input; give a coil or discrete input as a field's `kind`",
        ));
    }
    let default_order = word_order(
        doc,
        t.word_order.as_ref(),
        &key("word_order"),
        WordOrder::Big,
    )?;
    if numbering == Addressing::Protocol && *t.base.get_ref() > 65_535 {
        return Err(doc.at(
            &t.base,
            key("base"),
            format!(
                "register {} is past 65535 (a map of 40001-style numbers says addressing = \"register-number\")",
                t.base.get_ref()
            ),
        ));
    }
    if t.fields.get_ref().is_empty() {
        return Err(doc.at(&t.fields, key("fields"), "a table needs at least one field"));
    }
    let defaults = TableDefaults {
        kind: default_kind,
        order: default_order,
        base: *t.base.get_ref(),
        numbering,
    };
    let mut fields = fields(doc, &spec, t, &defaults)?;
    // Register numbers were turned into protocol addresses; the block starts
    // at the first of them.
    let base = match numbering {
        Addressing::Protocol => defaults.base,
        Addressing::RegisterNumber => {
            let first = fields.iter().map(|f| f.at).min().unwrap_or(0);
            fields.iter_mut().for_each(|f| f.at -= first);
            u32::from(first)
        }
    };
    Ok(TableMap {
        spec,
        endpoint: t.endpoint.as_ref().map(|e| e.get_ref().clone()),
        unit: t.unit.as_ref().map_or(1, |u| *u.get_ref()),
        unit_stride: strides(doc, &spec, t.unit_stride.as_ref(), &key("unit_stride"))?,
        base,
        stride: strides(doc, &spec, t.stride.as_ref(), &key("stride"))?,
        max_gap: t.max_gap.unwrap_or(MAX_READ),
        fields,
    })
}

/// The table's fields; each column once, and no two sharing a register.
fn fields(
    doc: &Doc,
    spec: &TableSpec,
    t: &RawTable,
    defaults: &TableDefaults,
) -> Result<Vec<Field>, DocError> {
    let mut fields: Vec<(Field, &RawField)> = Vec::new();
    for (i, f) in t.fields.get_ref().iter().enumerate() {
        let fkey = |k: &str| format!("{}.fields[{i}].{k}", spec.name);
        let field = field(doc, spec, f, &fkey, defaults)?;
        if let Some((other, _)) = fields.iter().find(|(o, _)| o.column == field.column) {
            return Err(doc.at(
                &f.column,
                fkey("column"),
                format!("column `{}` is mapped twice", other.column),
            ));
        }
        if let Some((other, _)) = fields.iter().find(|(o, _)| overlaps(o, &field)) {
            return Err(doc.at(
                &f.at,
                fkey("at"),
                format!(
                    "`{}` (registers {}..{}) overlaps `{}` (registers {}..{})",
                    field.column,
                    field.at,
                    field.end() - 1,
                    other.column,
                    other.at,
                    other.end() - 1
                ),
            ));
        }
        fields.push((field, f));
    }
    Ok(fields.into_iter().map(|(f, _)| f).collect())
}

/// Two fields overlap when they share a register, unless both are bit
/// fields with disjoint bits.
fn overlaps(a: &Field, b: &Field) -> bool {
    if a.kind != b.kind || a.end() <= u32::from(b.at) || b.end() <= u32::from(a.at) {
        return false;
    }
    match (a.dtype, b.dtype) {
        (DataType::Bits { bit: x, width: w }, DataType::Bits { bit: y, width: v }) => {
            x < y + v && y < x + w
        }
        _ => true,
    }
}

/// One field. With protocol addressing its `at` is relative to the table's
/// base; with register numbers it is the field's absolute protocol address
/// (the table then moves its base to the first one).
fn field(
    doc: &Doc,
    spec: &TableSpec,
    f: &RawField,
    fkey: &dyn Fn(&str) -> String,
    defaults: &TableDefaults,
) -> Result<Field, DocError> {
    let column = field_column(doc, spec, f, fkey)?;
    let kind = kind(doc, f.kind.as_ref(), &fkey("kind"), defaults.kind)?;
    let dtype = match kind.is_bit() {
        true => bit_field(doc, f, fkey, kind)?,
        false => field_type(doc, f, fkey)?,
    };
    if let (Some(o), 1) = (&f.word_order, dtype.words()) {
        return Err(doc.at(
            o,
            fkey("word_order"),
            format!("`{dtype}` is one register; word_order applies only to 32- and 64-bit types"),
        ));
    }
    let order = word_order(
        doc,
        f.word_order.as_ref(),
        &fkey("word_order"),
        defaults.order,
    )?;
    let number = defaults.base + *f.at.get_ref();
    let (first, at) = match defaults.numbering {
        Addressing::Protocol => (number, *f.at.get_ref()),
        Addressing::RegisterNumber => {
            let p = defaults
                .numbering
                .protocol(kind, number)
                .map_err(|m| doc.at(&f.at, fkey("at"), m.to_string()))?;
            (p, p)
        }
    };
    let last = u64::from(first) + u64::from(dtype.words()) - 1;
    if last > 65_535 {
        return Err(doc.at(
            &f.at,
            fkey("at"),
            format!("`{column}` ({dtype}) ends at register {last}, past 65535"),
        ));
    }
    Ok(Field {
        column: column.clone(),
        kind,
        at: at as u16,
        dtype,
        order,
        scale: field_number(doc, &f.scale, &fkey("scale"), 1.0)?,
        offset: field_number(doc, &f.offset, &fkey("offset"), 0.0)?,
    })
}

/// A coil or discrete input is one bit, 0 or 1: none of the register keys apply.
fn bit_field(
    doc: &Doc,
    f: &RawField,
    fkey: &dyn Fn(&str) -> String,
    kind: RegisterKind,
) -> Result<DataType, DocError> {
    let refused: [(Option<std::ops::Range<usize>>, &str); 6] = [
        (f.dtype.as_ref().map(Spanned::span), "type"),
        (f.word_order.as_ref().map(Spanned::span), "word_order"),
        (f.scale.as_ref().map(Spanned::span), "scale"),
        (f.offset.as_ref().map(Spanned::span), "offset"),
        (f.bit.as_ref().map(Spanned::span), "bit"),
        (f.width.as_ref().map(Spanned::span), "width"),
    ];
    match refused.into_iter().find_map(|(span, k)| Some((span?, k))) {
        Some((span, k)) => Err(doc.error(
            span.start,
            fkey(k),
            format!(
                "a {} is one bit (0 or 1) and takes no `{k}`; map it to a smallint, integer or bigint column",
                kind.name()
            ),
        )),
        None => Ok(DataType::Bit),
    }
}

/// The column a field fills: a valid name, and not a key column.
fn field_column<'a>(
    doc: &Doc,
    spec: &TableSpec,
    f: &'a RawField,
    fkey: &dyn Fn(&str) -> String,
) -> Result<&'a String, DocError> {
    let column = f.column.get_ref();
    if column.is_empty() || column.len() > 63 || column.contains('\0') {
        return Err(doc.at(&f.column, fkey("column"), "a column name is 1 to 63 bytes"));
    }
    if column == TIME_COLUMN || spec.device_columns.contains(&column.as_str()) {
        return Err(doc.at(
            &f.column,
            fkey("column"),
            format!(
                "`{column}` is a key column; essops fills it from the device and the poll time"
            ),
        ));
    }
    Ok(column)
}

/// The field's type; `bit` and `width` belong to `bits` and must fit a register.
fn field_type(
    doc: &Doc,
    f: &RawField,
    fkey: &dyn Fn(&str) -> String,
) -> Result<DataType, DocError> {
    let Some(ty) = &f.dtype else {
        return Err(doc.at(
            &f.column,
            fkey("type"),
            format!("a register field needs a `type` ({})", DataType::NAMES),
        ));
    };
    let name = ty.get_ref().as_str();
    let is_bits = name == "bits";
    for (v, k) in [(&f.bit, "bit"), (&f.width, "width")] {
        if let (Some(v), false) = (v, is_bits) {
            return Err(doc.at(
                v,
                fkey(k),
                format!("`{k}` applies only to type = \"bits\", not `{name}`"),
            ));
        }
    }
    let bit = f.bit.as_ref().map_or(0, |b| *b.get_ref());
    let width = f.width.as_ref().map_or(1, |w| *w.get_ref());
    let dtype = DataType::parse(name, bit, width).ok_or_else(|| {
        doc.at(
            ty,
            fkey("type"),
            format!("unknown type `{name}`; expected one of {}", DataType::NAMES),
        )
    })?;
    if is_bits && (width == 0 || u32::from(bit) + u32::from(width) > 16) {
        let at = f.width.as_ref().map_or(ty.span().start, |w| w.span().start);
        return Err(doc.error(
            at,
            fkey("width"),
            format!(
                "bits {bit}..{} do not fit in a 16-bit register",
                u32::from(bit) + u32::from(width)
            ),
        ));
    }
    Ok(dtype)
}

/// `scale` (finite, non-zero) or `offset` (finite).
fn field_number(
    doc: &Doc,
    v: &Option<Spanned<f64>>,
    key: &str,
    default: f64,
) -> Result<f64, DocError> {
    let scale = key.ends_with("scale");
    match v {
        None => Ok(default),
        Some(s) if !s.get_ref().is_finite() || (scale && *s.get_ref() == 0.0) => Err(doc.at(
            s,
            key,
            format!(
                "`{}` must be a finite{} number",
                key.rsplit('.').next().unwrap_or(key),
                if scale { ", non-zero" } else { "" }
            ),
        )),
        Some(s) => Ok(*s.get_ref()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<RegisterMap, DocError> {
        RegisterMap::parse(text, "m.toml")
    }

    #[test]
    fn modbus_map_builtin_covers_every_table() {
        let m = RegisterMap::builtin();
        let names: Vec<_> = m.tables.iter().map(|t| t.spec.name).collect();
        assert_eq!(names, ["bank", "rack", "pcs", "etc"]);
        let rack = m.table("rack").unwrap();
        // One read per rack: the block fits in 125 registers.
        assert_eq!(rack.requests(rack.block_start(&[2, 3])).len(), 1);
        assert!(
            rack.extents()
                .iter()
                .all(|(_, lo, hi)| hi - lo <= u32::from(MAX_READ))
        );
    }

    #[test]
    fn modbus_map_requests_split_at_125_registers_and_kinds() {
        let m = parse(
            r#"[rack]
endpoint = "bms"
base = 100
stride = { bank = 1000, rack = 200 }
fields = [
  { column = "A", at = 0, type = "u16" },
  { column = "B", at = 1, type = "f32" },
  { column = "C", at = 122, type = "u64" },
  { column = "D", at = 0, type = "i16", kind = "input" },
]"#,
        )
        .unwrap();
        let t = m.table("rack").unwrap();
        assert_eq!(t.block_start(&[2, 3]), 100 + 1000 + 400);
        let r = t.requests(t.block_start(&[1, 1]));
        assert_eq!(
            r,
            vec![
                ReadRequest {
                    kind: RegisterKind::Holding,
                    start: 100,
                    count: 3,
                    fields: vec![0, 1]
                },
                ReadRequest {
                    kind: RegisterKind::Holding,
                    start: 222,
                    count: 4,
                    fields: vec![2]
                },
                ReadRequest {
                    kind: RegisterKind::Input,
                    start: 100,
                    count: 1,
                    fields: vec![3]
                },
            ]
        );
        let own = |ids: &[[i16; 2]]| -> Vec<(DeviceId, DeviceOverride)> {
            ids.iter()
                .map(|d| (d.to_vec(), DeviceOverride::default()))
                .collect()
        };
        let placed = check_devices(&m, |_| own(&[[1, 1], [1, 2]]), |_| Some("x".into()));
        assert!(placed.is_ok(), "{placed:?}");
        let err = check_devices(&m, |_| own(&[[1, 6], [2, 1]]), |_| Some("x".into()))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("overlap on x unit 1") && err.contains("bank 2 / rack 1"),
            "{err}"
        );
        let err = check_devices(&m, |_| own(&[[70, 1]]), |_| Some("x".into()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("past 65535"), "{err}");
    }

    #[test]
    // Over 60 lines because the cases are data: one bad field and its expected message each.
    fn modbus_map_rejects_bad_fields_by_name() {
        let table = |field: &str| {
            format!("[bank]\nendpoint = \"bms\"\nbase = 0\nfields = [\n  {field},\n]\n")
        };
        let cases = [
            (
                r#"{ column = "A", at = 0, type = "u24" }"#,
                "m.toml:5:34: key `bank.fields[0].type`: unknown type `u24`",
            ),
            (
                r#"{ column = "A", at = 65535, type = "f32" }"#,
                "key `bank.fields[0].at`: `A` (f32) ends at register 65536, past 65535",
            ),
            (
                r#"{ column = "A", at = 65533, type = "u64" }"#,
                "`A` (u64) ends at register 65536",
            ),
            (
                r#"{ column = "A", at = 0, type = "bits", bit = 12, width = 8 }"#,
                "bits 12..20 do not fit in a 16-bit register",
            ),
            (
                r#"{ column = "A", at = 0, type = "u16", word_order = "little" }"#,
                "word_order applies only to 32- and 64-bit types",
            ),
            (
                r#"{ column = "A", at = 0, type = "u16", bit = 3 }"#,
                "`bit` applies only to type = \"bits\"",
            ),
            (
                r#"{ column = "BANK_ID", at = 0, type = "u16" }"#,
                "`BANK_ID` is a key column",
            ),
            (
                r#"{ column = "A", at = 0, type = "u16", scale = 0.0 }"#,
                "`scale` must be a finite, non-zero number",
            ),
            (
                r#"{ column = "A", at = 0, type = "u32" }, { column = "B", at = 1, type = "u16" }"#,
                "key `bank.fields[1].at`: `B` (registers 1..1) overlaps `A` (registers 0..1)",
            ),
            (
                r#"{ column = "A", at = 0, type = "u16" }, { column = "A", at = 1, type = "u16" }"#,
                "column `A` is mapped twice",
            ),
            (
                r#"{ column = "A", at = 0, type = "u16", kind = "coil" }"#,
                "key `bank.fields[0].type`: a coil is one bit (0 or 1) and takes no `type`",
            ),
            (
                r#"{ column = "A", at = 0, kind = "discrete", scale = 2.0 }"#,
                "key `bank.fields[0].scale`: a discrete is one bit",
            ),
            (
                r#"{ column = "A", at = 0, kind = "coil", word_order = "BADC" }"#,
                "key `bank.fields[0].word_order`",
            ),
            (
                r#"{ column = "A", at = 0, type = "u16", kind = "register" }"#,
                "unknown register kind `register`; expected holding, input, coil or discrete",
            ),
            (
                r#"{ column = "A", at = 0 }"#,
                "key `bank.fields[0].type`: a register field needs a `type`",
            ),
            (
                r#"{ column = "A", at = 0, type = "f32", word_order = "ACBD" }"#,
                "unknown word order `ACBD`; expected ABCD (big), BADC, CDAB (little) or DCBA",
            ),
        ];
        for (field, want) in cases {
            let err = parse(&table(field)).unwrap_err().to_string();
            assert!(err.contains(want), "{field}\n got: {err}\nwant: {want}");
        }
        // Bit fields may share a register when their bits do not overlap.
        let ok = table(
            r#"{ column = "A", at = 0, type = "bits", width = 4 }, { column = "B", at = 0, type = "bits", bit = 4 }"#,
        );
        assert!(parse(&ok).is_ok());
        let clash = table(
            r#"{ column = "A", at = 0, type = "bits", width = 4 }, { column = "B", at = 0, type = "bits", bit = 3 }"#,
        );
        assert!(
            parse(&clash)
                .unwrap_err()
                .to_string()
                .contains("overlaps `A`")
        );
        let err = parse("[rack]\nendpoint = \"bms\"\nbase = 0\nstride = { pcs = 4 }\nfields = [{ column = \"A\", at = 0, type = \"u16\" }]\n").unwrap_err().to_string();
        assert!(
            err.contains("`pcs` is not a device id of table `rack` (expected: bank, rack)"),
            "{err}"
        );
    }

    #[test]
    fn modbus_map_coils_and_discretes_are_bits_read_in_their_own_space() {
        let m = parse(
            r#"[bank]
endpoint = "bms"
base = 100
fields = [
  { column = "A", at = 0, type = "f32", word_order = "BADC" },
  { column = "B", at = 2, type = "f64", word_order = "DCBA" },
  { column = "CONTACTOR", at = 0, kind = "coil" },
  { column = "DOOR", at = 5, kind = "discrete" },
  { column = "FAN", at = 2500, kind = "coil" },
]"#,
        )
        .unwrap();
        let t = m.table("bank").unwrap();
        assert_eq!(t.fields[0].order, WordOrder::ByteSwap);
        assert_eq!(t.fields[1].order, WordOrder::Reversed);
        assert_eq!(t.fields[2].dtype, DataType::Bit);
        let r = t.requests(t.block_start(&[1]));
        let kinds: Vec<_> = r.iter().map(|r| (r.kind, r.start, r.count)).collect();
        // Coils 100 and 2600 are 2501 bits apart: past one read's 2000.
        assert_eq!(
            kinds,
            [
                (RegisterKind::Holding, 100, 6),
                (RegisterKind::Coil, 100, 1),
                (RegisterKind::Coil, 2600, 1),
                (RegisterKind::Discrete, 105, 1),
            ]
        );
        let err = parse("[bank]\nendpoint = \"bms\"\nkind = \"coil\"\nbase = 0\nfields = [{ column = \"A\", at = 0, type = \"u16\" }]\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("key `bank.kind`: a table's kind is holding or input"),
            "{err}"
        );
    }

    #[test]
    fn modbus_map_register_numbers_are_the_manuals_numbering() {
        let m = parse(
            r#"addressing = "register-number"
[rack]
endpoint = "bms"
base = 0
stride = { rack = 100 }
fields = [
  { column = "V", at = 40001, type = "u16" },
  { column = "SOC", at = 40011, type = "u16" },
  { column = "T", at = 300011, type = "u16", kind = "input" },
  { column = "ALARM", at = 11, kind = "coil" },
  { column = "DOOR", at = 10012, kind = "discrete" },
]"#,
        )
        .unwrap();
        let t = m.table("rack").unwrap();
        let at: Vec<(RegisterKind, u64)> = t
            .fields
            .iter()
            .map(|f| (f.kind, t.block_start(&[1, 2]) + u64::from(f.at)))
            .collect();
        assert_eq!(
            at,
            [
                (RegisterKind::Holding, 100),
                (RegisterKind::Holding, 110),
                (RegisterKind::Input, 110),
                (RegisterKind::Coil, 110),
                (RegisterKind::Discrete, 111),
            ]
        );
        let err = parse("addressing = \"register-number\"\n[bank]\nendpoint = \"bms\"\nbase = 0\nfields = [{ column = \"A\", at = 30001, type = \"u16\" }]\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(
                "30001 is not a holding register number (from 40001, or 400001 in six digits)"
            ),
            "{err}"
        );
    }

    #[test]
    fn modbus_map_a_device_with_its_own_endpoint_is_addressed_as_the_only_one() {
        let map = RegisterMap::builtin();
        let rack = map.table("rack").unwrap();
        let own = DeviceOverride {
            endpoint: Some("bms2".into()),
            unit: Some(3),
        };
        let shared = rack.address(&[2, 4], &DeviceOverride::default()).unwrap();
        let alone = rack.address(&[2, 4], &own).unwrap();
        assert_eq!((shared.endpoint.as_str(), shared.unit), ("bms", 1));
        assert_eq!((alone.endpoint.as_str(), alone.unit), ("bms2", 3));
        // The bank stride is gone, the rack stride stays.
        assert_eq!(alone.start, rack.block_start(&[1, 4]));
        assert_eq!(shared.start, rack.block_start(&[2, 4]));
        // Only endpoints some device uses must be configured.
        let devices = |_: &TableSpec| vec![(vec![1, 1], own.clone())];
        let only_bms2 = |e: &str| (e == "bms2").then(|| "h:1".to_string());
        assert!(check_devices(&map, devices, only_bms2).is_ok());
        let err = check_devices(
            &map,
            |_| vec![(vec![1, 1], DeviceOverride::default())],
            only_bms2,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("served by endpoint `bms`, which the site does not configure"),
            "{err}"
        );
    }
}
