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

use super::value::{DataType, WordOrder};
use crate::doc::{Doc, DocError};
use crate::schema::{DeviceId, TIME_COLUMN, Table, TableSpec};

/// The shipped register map.
pub const BUILTIN_MAP: &str = include_str!("../../maps/default.toml");
const BUILTIN_LABEL: &str = "maps/default.toml (built-in)";

/// Modbus allows at most this many registers in one read.
pub const MAX_READ: u16 = 125;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RegisterKind {
    Holding,
    Input,
}

#[derive(Debug, Clone)]
pub struct RegisterMap {
    pub label: String,
    pub tables: Vec<TableMap>,
}

/// How one table's devices lay out their registers.
#[derive(Debug, Clone)]
pub struct TableMap {
    pub spec: TableSpec,
    /// Which of the site's Modbus endpoints serves this table.
    pub endpoint: String,
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

    /// The device's unit id, or `None` when the strides push it past 255.
    pub fn unit_of(&self, device: &[i16]) -> Option<u8> {
        u8::try_from(u64::from(self.unit) + Self::offset(&self.unit_stride, device)).ok()
    }

    /// The device's first register (may exceed 65535 on a bad map; see [`check_devices`]).
    pub fn block_start(&self, device: &[i16]) -> u64 {
        u64::from(self.base) + Self::offset(&self.stride, device)
    }

    /// Registers one device's block spans.
    pub fn block_len(&self) -> u32 {
        self.fields.iter().map(Field::end).max().unwrap_or(0)
    }

    pub fn value_columns(&self) -> Vec<String> {
        self.fields.iter().map(|f| f.column.clone()).collect()
    }

    /// The reads that fetch every field of `device`, as few as Modbus allows.
    pub fn requests(&self, device: &[i16]) -> Vec<ReadRequest> {
        let start = self.block_start(device) as u32;
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
                    && hi - u32::from(r.start) <= u32::from(MAX_READ);
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
        "the register map's `{table}` table is served by endpoint `{endpoint}`, which the site does not configure"
    )]
    UnknownEndpoint {
        table: &'static str,
        endpoint: String,
    },
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
/// a unit id ≤ 255) and that no two devices' blocks overlap on an endpoint.
/// `devices(spec)` lists a table's devices; `addr(endpoint)` resolves an
/// endpoint name (`None`: not configured).
pub fn check_devices(
    map: &RegisterMap,
    devices: impl Fn(&TableSpec) -> Vec<DeviceId>,
    addr: impl Fn(&str) -> Option<String>,
) -> Result<Vec<Placement>, PlacementError> {
    let mut placed = Vec::new();
    for t in &map.tables {
        let Some(endpoint_addr) = addr(&t.endpoint) else {
            return Err(PlacementError::UnknownEndpoint {
                table: t.spec.name,
                endpoint: t.endpoint.clone(),
            });
        };
        let len = u64::from(t.block_len());
        for d in devices(&t.spec) {
            let label = format!(
                "{} {}",
                t.spec.name,
                crate::schema::device_label(&t.spec, &d)
            );
            let unit = t
                .unit_of(&d)
                .ok_or_else(|| PlacementError::UnitPast255(label.clone()))?;
            let start = t.block_start(&d);
            if start + len > 65_536 {
                let last = t
                    .fields
                    .iter()
                    .max_by_key(|f| f.end())
                    .map(|f| f.column.as_str());
                return Err(PlacementError::PastEnd {
                    label,
                    field: last.unwrap_or("?").to_string(),
                    end: start + len - 1,
                });
            }
            let kinds: std::collections::BTreeSet<_> = t.fields.iter().map(|f| f.kind).collect();
            for kind in kinds {
                placed.push(Placement {
                    endpoint_addr: endpoint_addr.clone(),
                    unit,
                    kind,
                    start,
                    end: start + len,
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
    bank: Option<RawTable>,
    rack: Option<RawTable>,
    pcs: Option<RawTable>,
    etc: Option<RawTable>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTable {
    endpoint: Spanned<String>,
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
    dtype: Spanned<String>,
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
        let mut tables = Vec::new();
        for which in Table::ALL {
            let t = match which {
                Table::Bank => &raw.bank,
                Table::Rack => &raw.rack,
                Table::Pcs => &raw.pcs,
                Table::Etc => &raw.etc,
            };
            if let Some(t) = t {
                tables.push(table(&doc, which.spec(), t)?);
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
            tables,
        })
    }

    pub fn table(&self, name: &str) -> Option<&TableMap> {
        self.tables.iter().find(|t| t.spec.name == name)
    }
}

fn kind(
    doc: &Doc,
    v: Option<&Spanned<String>>,
    key: &str,
    default: RegisterKind,
) -> Result<RegisterKind, DocError> {
    let names = [
        ("holding", RegisterKind::Holding),
        ("input", RegisterKind::Input),
    ];
    choice(
        doc,
        v,
        key,
        default,
        &names,
        "register kind",
        "holding or input",
    )
}

fn word_order(
    doc: &Doc,
    v: Option<&Spanned<String>>,
    key: &str,
    default: WordOrder,
) -> Result<WordOrder, DocError> {
    let names = [("big", WordOrder::Big), ("little", WordOrder::Little)];
    let expected = "big (ABCD) or little (CDAB)";
    choice(doc, v, key, default, &names, "word order", expected)
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
    match names.iter().find(|(name, _)| *name == word) {
        Some((_, value)) => Ok(*value),
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

fn table(doc: &Doc, spec: TableSpec, t: &RawTable) -> Result<TableMap, DocError> {
    let key = |k: &str| format!("{}.{k}", spec.name);
    let default_kind = kind(doc, t.kind.as_ref(), &key("kind"), RegisterKind::Holding)?;
    let default_order = word_order(
        doc,
        t.word_order.as_ref(),
        &key("word_order"),
        WordOrder::Big,
    )?;
    if *t.base.get_ref() > 65_535 {
        return Err(doc.at(
            &t.base,
            key("base"),
            format!("register {} is past 65535", t.base.get_ref()),
        ));
    }
    if t.fields.get_ref().is_empty() {
        return Err(doc.at(&t.fields, key("fields"), "a table needs at least one field"));
    }
    let fields = fields(doc, &spec, t, default_kind, default_order)?;
    Ok(TableMap {
        spec,
        endpoint: t.endpoint.get_ref().clone(),
        unit: t.unit.as_ref().map_or(1, |u| *u.get_ref()),
        unit_stride: strides(doc, &spec, t.unit_stride.as_ref(), &key("unit_stride"))?,
        base: *t.base.get_ref(),
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
    default_kind: RegisterKind,
    default_order: WordOrder,
) -> Result<Vec<Field>, DocError> {
    let mut fields: Vec<(Field, &RawField)> = Vec::new();
    for (i, f) in t.fields.get_ref().iter().enumerate() {
        let fkey = |k: &str| format!("{}.fields[{i}].{k}", spec.name);
        let field = field(
            doc,
            spec,
            f,
            &fkey,
            default_kind,
            default_order,
            *t.base.get_ref(),
        )?;
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

fn field(
    doc: &Doc,
    spec: &TableSpec,
    f: &RawField,
    fkey: &dyn Fn(&str) -> String,
    default_kind: RegisterKind,
    default_order: WordOrder,
    base: u32,
) -> Result<Field, DocError> {
    let column = field_column(doc, spec, f, fkey)?;
    let name = f.dtype.get_ref().as_str();
    let dtype = field_type(doc, f, fkey)?;
    if let (Some(o), 1) = (&f.word_order, dtype.words()) {
        return Err(doc.at(
            o,
            fkey("word_order"),
            format!("`{name}` is one register; word_order applies only to 32- and 64-bit types"),
        ));
    }
    let order = word_order(
        doc,
        f.word_order.as_ref(),
        &fkey("word_order"),
        default_order,
    )?;
    let kind = kind(doc, f.kind.as_ref(), &fkey("kind"), default_kind)?;
    let last = u64::from(base) + u64::from(*f.at.get_ref()) + u64::from(dtype.words()) - 1;
    if last > 65_535 {
        return Err(doc.at(
            &f.at,
            fkey("at"),
            format!("`{column}` ({name}) ends at register {last}, past 65535"),
        ));
    }
    Ok(Field {
        column: column.clone(),
        kind,
        at: *f.at.get_ref() as u16,
        dtype,
        order,
        scale: field_number(doc, &f.scale, &fkey("scale"), 1.0)?,
        offset: field_number(doc, &f.offset, &fkey("offset"), 0.0)?,
    })
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
    let name = f.dtype.get_ref().as_str();
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
            &f.dtype,
            fkey("type"),
            format!("unknown type `{name}`; expected one of {}", DataType::NAMES),
        )
    })?;
    if is_bits && (width == 0 || u32::from(bit) + u32::from(width) > 16) {
        let at = f
            .width
            .as_ref()
            .map_or(f.dtype.span().start, |w| w.span().start);
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
        assert_eq!(rack.requests(&[2, 3]).len(), 1);
        assert!(rack.block_len() <= u32::from(MAX_READ));
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
        let r = t.requests(&[1, 1]);
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
        let placed = check_devices(&m, |_| vec![vec![1, 1], vec![1, 2]], |_| Some("x".into()));
        assert!(placed.is_ok(), "{placed:?}");
        let err = check_devices(&m, |_| vec![vec![1, 6], vec![2, 1]], |_| Some("x".into()))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("overlap on x unit 1") && err.contains("bank 2 / rack 1"),
            "{err}"
        );
        let err = check_devices(&m, |_| vec![vec![70, 1]], |_| Some("x".into()))
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
                "unknown register kind `coil`",
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
}
