//! The SunSpec model definitions essops reads, parsed from the SunSpec
//! Alliance's JSON files vendored unchanged beside this file (`models/`,
//! Apache-2.0). A model is a fixed block of points (ID and L first) and at
//! most one repeating group; every point's offset is counted from the
//! model's ID register, as the files lay them out.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use serde::Deserialize;

/// The vendored definitions, by model id.
const FILES: [&str; 8] = [
    include_str!("models/model_1.json"),
    include_str!("models/model_101.json"),
    include_str!("models/model_102.json"),
    include_str!("models/model_103.json"),
    include_str!("models/model_701.json"),
    include_str!("models/model_802.json"),
    include_str!("models/model_803.json"),
    include_str!("models/model_804.json"),
];

/// A point's type, as the definitions name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PointType {
    Int16,
    Uint16,
    Acc16,
    Enum16,
    Bitfield16,
    Int32,
    Uint32,
    Acc32,
    Enum32,
    Bitfield32,
    Int64,
    Uint64,
    Acc64,
    Float32,
    Sunssf,
    String,
    Pad,
    /// A type essops does not decode (ipaddr, eui48, …).
    Other,
}

impl PointType {
    fn parse(name: &str) -> PointType {
        match name {
            "int16" => PointType::Int16,
            "uint16" => PointType::Uint16,
            "acc16" => PointType::Acc16,
            "enum16" => PointType::Enum16,
            "bitfield16" => PointType::Bitfield16,
            "int32" => PointType::Int32,
            "uint32" => PointType::Uint32,
            "acc32" => PointType::Acc32,
            "enum32" => PointType::Enum32,
            "bitfield32" => PointType::Bitfield32,
            "int64" => PointType::Int64,
            "uint64" => PointType::Uint64,
            "acc64" => PointType::Acc64,
            "float32" => PointType::Float32,
            "sunssf" => PointType::Sunssf,
            "string" => PointType::String,
            "pad" => PointType::Pad,
            _ => PointType::Other,
        }
    }

    /// The raw value of a point of this type in `words` (big-endian words,
    /// as SunSpec defines), or `None` when it holds the type's "not
    /// implemented" value: 0x8000 (int16, sunssf), 0xFFFF (uint16, enum16,
    /// bitfield16), 0x80000000, 0xFFFFFFFF, the 64-bit ones, NaN, and 0 for
    /// accumulators. A bitfield32 is its 32-bit pattern as a signed integer
    /// (bit 31 makes it negative), so it fits an `integer` column.
    pub fn raw(self, words: &[u16]) -> Option<f64> {
        let wide = || {
            words
                .iter()
                .fold(0u64, |acc, w| (acc << 16) | u64::from(*w))
        };
        let v = wide();
        match (self, words.len()) {
            (PointType::Int16 | PointType::Sunssf, 1) => {
                (v != 0x8000).then(|| f64::from(v as u16 as i16))
            }
            (PointType::Uint16 | PointType::Enum16 | PointType::Bitfield16, 1) => {
                (v != 0xFFFF).then_some(v as f64)
            }
            (PointType::Acc16 | PointType::Acc32 | PointType::Acc64, _) => {
                (v != 0).then_some(v as f64)
            }
            (PointType::Int32, 2) => (v != 0x8000_0000).then(|| f64::from(v as u32 as i32)),
            (PointType::Uint32 | PointType::Enum32, 2) => (v != 0xFFFF_FFFF).then_some(v as f64),
            (PointType::Bitfield32, 2) => (v != 0xFFFF_FFFF).then(|| f64::from(v as u32 as i32)),
            (PointType::Int64, 4) => (v != 0x8000_0000_0000_0000).then_some(v as i64 as f64),
            (PointType::Uint64, 4) => (v != u64::MAX).then_some(v as f64),
            (PointType::Float32, 2) => {
                let f = f32::from_bits(v as u32);
                f.is_finite().then_some(f64::from(f))
            }
            _ => None,
        }
    }
}

/// One point of a model or of its repeating group.
#[derive(Debug, Clone)]
pub struct PointDef {
    pub name: String,
    /// Registers from the model's ID (fixed block) or from the group's start.
    pub offset: u16,
    pub size: u16,
    pub ty: PointType,
    /// The name of the scale-factor point, if the value is scaled.
    pub sf: Option<String>,
    /// Named values: an enum's values, a bitfield's bit numbers.
    pub symbols: Vec<(String, i64)>,
}

/// How many times a repeating group repeats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Count {
    Fixed(u16),
    /// The value of a fixed point (`NStr`, `NMod`).
    Point(String),
    /// As many as the model's length holds.
    FromLength,
}

#[derive(Debug, Clone)]
pub struct GroupDef {
    pub name: String,
    pub count: Count,
    pub points: Vec<PointDef>,
    pub len: u16,
}

#[derive(Debug, Clone)]
pub struct ModelDef {
    pub id: u16,
    pub name: String,
    /// The fixed block, ID and L included.
    pub fixed: Vec<PointDef>,
    pub fixed_len: u16,
    pub group: Option<GroupDef>,
}

impl ModelDef {
    pub fn point(&self, name: &str) -> Option<&PointDef> {
        self.fixed.iter().find(|p| p.name == name)
    }

    /// A point of the repeating group.
    pub fn group_point(&self, name: &str) -> Option<&PointDef> {
        self.group.as_ref()?.points.iter().find(|p| p.name == name)
    }

    /// Repeats of the group a model of length `length` (its L) holds.
    pub fn repeats_in(&self, length: u16) -> u16 {
        match &self.group {
            Some(g) if g.len > 0 => (length + 2).saturating_sub(self.fixed_len) / g.len,
            _ => 0,
        }
    }
}

#[derive(Deserialize)]
struct RawModel {
    id: u16,
    group: RawGroup,
}

#[derive(Deserialize)]
struct RawGroup {
    name: String,
    #[serde(default)]
    points: Vec<RawPoint>,
    #[serde(default)]
    groups: Vec<RawGroup>,
    count: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct RawPoint {
    name: String,
    #[serde(rename = "type")]
    ty: String,
    size: u16,
    sf: Option<String>,
    #[serde(default)]
    symbols: Vec<RawSymbol>,
}

#[derive(Deserialize)]
struct RawSymbol {
    name: String,
    value: i64,
}

fn points(raw: &[RawPoint]) -> (Vec<PointDef>, u16) {
    let mut offset = 0;
    let points = raw
        .iter()
        .map(|p| {
            let def = PointDef {
                name: p.name.clone(),
                offset,
                size: p.size,
                ty: PointType::parse(&p.ty),
                sf: p.sf.clone(),
                symbols: p
                    .symbols
                    .iter()
                    .map(|s| (s.name.clone(), s.value))
                    .collect(),
            };
            offset += p.size;
            def
        })
        .collect();
    (points, offset)
}

fn parse(text: &str) -> ModelDef {
    let raw: RawModel = serde_json::from_str(text).expect("a vendored SunSpec model parses");
    let (fixed, fixed_len) = points(&raw.group.points);
    let group = raw.group.groups.first().map(|g| {
        let (points, len) = points(&g.points);
        let count = match &g.count {
            Some(serde_json::Value::String(name)) => Count::Point(name.clone()),
            Some(serde_json::Value::Number(n)) if n.as_u64().is_some_and(|n| n > 0) => {
                Count::Fixed(n.as_u64().unwrap_or(0) as u16)
            }
            _ => Count::FromLength,
        };
        GroupDef {
            name: g.name.clone(),
            count,
            points,
            len,
        }
    });
    ModelDef {
        id: raw.id,
        name: raw.group.name,
        fixed,
        fixed_len,
        group,
    }
}

/// The definition of model `id`, if essops carries it.
pub fn model(id: u16) -> Option<&'static ModelDef> {
    static MODELS: OnceLock<BTreeMap<u16, ModelDef>> = OnceLock::new();
    MODELS
        .get_or_init(|| FILES.iter().map(|t| parse(t)).map(|m| (m.id, m)).collect())
        .get(&id)
}

/// A model's name: its definition's, or `model_ID` for one essops does not carry.
pub fn name(id: u16) -> String {
    model(id).map_or_else(|| format!("model_{id}"), |m| m.name.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sunspec_models_lay_out_as_the_specification_prints() {
        let m802 = model(802).unwrap();
        assert_eq!(m802.name, "battery");
        assert_eq!(m802.point("SoC").unwrap().offset, 11);
        assert_eq!(m802.point("SoC_SF").unwrap().offset, 56);
        assert_eq!(m802.fixed_len, 64);
        let m803 = model(803).unwrap();
        let g = m803.group.as_ref().unwrap();
        assert_eq!(
            (m803.fixed_len, g.len, &g.count),
            (28, 32, &Count::Point("NStr".into()))
        );
        assert_eq!(m803.group_point("StrSoC").unwrap().offset, 4);
        assert_eq!(m803.repeats_in(26 + 3 * 32), 3);
        assert_eq!(model(804).unwrap().fixed_len, 48);
        assert_eq!(model(103).unwrap().point("WH").unwrap().offset, 24);
        assert_eq!(model(701).unwrap().point("TotWhInj").unwrap().offset, 19);
        assert!(model(999).is_none());
    }

    #[test]
    fn sunspec_not_implemented_values_are_none() {
        use PointType::*;
        assert_eq!(Int16.raw(&[0x8000]), None);
        assert_eq!(Int16.raw(&[0xFFFE]), Some(-2.0));
        assert_eq!(Uint16.raw(&[0xFFFF]), None);
        assert_eq!(Enum16.raw(&[0xFFFF]), None);
        assert_eq!(Acc32.raw(&[0, 0]), None);
        assert_eq!(Acc32.raw(&[0, 7]), Some(7.0));
        assert_eq!(Int32.raw(&[0x8000, 0]), None);
        assert_eq!(Uint32.raw(&[0xFFFF, 0xFFFF]), None);
        assert_eq!(Bitfield32.raw(&[0xFFFF, 0xFFFF]), None);
        assert_eq!(Bitfield32.raw(&[0x8000, 1]), Some(f64::from(i32::MIN + 1)));
        assert_eq!(Uint64.raw(&[0xFFFF; 4]), None);
        assert_eq!(Int64.raw(&[0x8000, 0, 0, 0]), None);
        assert_eq!(Float32.raw(&[0x7FC0, 0]), None);
        assert_eq!(Float32.raw(&[0x3FC0, 0]), Some(1.5));
        assert_eq!(Sunssf.raw(&[0x8000]), None);
        assert_eq!(Sunssf.raw(&[0xFFFF]), Some(-1.0));
    }
}
