//! Finding a SunSpec device's models: the "SunS" marker at 40000, 0 or
//! 50000 (in that order), then the chain of models, each an ID and a length
//! L followed by L registers. The chain ends at ID 0xFFFF, and also at ID
//! 0 or at an exception on the read past the last model: real devices do
//! both, and a scan that stops there has still found every model.

use std::time::Duration;

use serde::Serialize;

use super::model;
use crate::modbus::client::{Connection, ReadError};
use crate::modbus::map::RegisterKind;

/// Where the marker is looked for, in order.
pub const BASES: [u16; 3] = [40000, 0, 50000];
/// "SunS" as two registers.
pub const MARKER: [u16; 2] = [0x5375, 0x6E53];
/// The end-of-chain ID.
pub const END: u16 = 0xFFFF;

/// One model found on the device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Found {
    pub id: u16,
    /// The 0-based register of its ID.
    pub address: u16,
    /// Its L: registers after ID and L.
    pub length: u16,
}

/// How the chain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChainEnd {
    /// ID 0xFFFF, as the specification says.
    EndMarker,
    /// ID 0.
    Zero,
    /// The read past the last model was refused.
    Exception,
    /// The chain ran to the end of the register space.
    RegisterSpace,
}

#[derive(Debug, Clone, Serialize)]
pub struct Chain {
    pub base: u16,
    pub models: Vec<Found>,
    pub end: ChainEnd,
}

impl Chain {
    pub fn find(&self, id: u16) -> Option<&Found> {
        self.models.iter().find(|m| m.id == id)
    }

    pub fn all(&self, id: u16) -> impl Iterator<Item = &Found> {
        self.models.iter().filter(move |m| m.id == id)
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ScanError {
    #[error("no SunSpec marker (\"SunS\") at register 40000, 0 or 50000")]
    NoMarker,
    #[error("{0}")]
    Read(ReadError),
}

/// Reads `count` registers, holding registers as SunSpec says.
pub async fn read(
    c: &Connection,
    unit: u8,
    start: u16,
    count: u16,
    timeout: Duration,
) -> Result<Vec<u16>, ReadError> {
    c.read(unit, RegisterKind::Holding, start, count, timeout)
        .await
}

/// Finds the marker and walks the chain of models.
pub async fn scan(c: &Connection, unit: u8, timeout: Duration) -> Result<Chain, ScanError> {
    let base = find_base(c, unit, timeout).await?;
    let mut models = Vec::new();
    let mut at = u32::from(base) + 2;
    let end = loop {
        if at + 2 > 65_536 {
            break ChainEnd::RegisterSpace;
        }
        let head = match read(c, unit, at as u16, 2, timeout).await {
            Ok(w) => w,
            // The read past the last model, refused: the chain has ended.
            Err(ReadError::Exception(_)) if !models.is_empty() => break ChainEnd::Exception,
            Err(e) => return Err(ScanError::Read(e)),
        };
        match head[0] {
            END => break ChainEnd::EndMarker,
            0 => break ChainEnd::Zero,
            id => {
                models.push(Found {
                    id,
                    address: at as u16,
                    length: head[1],
                });
                at += 2 + u32::from(head[1]);
            }
        }
    };
    Ok(Chain { base, models, end })
}

/// The first base whose two registers read "SunS"; an exception or other
/// words there mean "not here", silence means the device did not answer.
async fn find_base(c: &Connection, unit: u8, timeout: Duration) -> Result<u16, ScanError> {
    for base in BASES {
        match read(c, unit, base, 2, timeout).await {
            Ok(w) if w == MARKER => return Ok(base),
            Ok(_) | Err(ReadError::Exception(_)) => continue,
            Err(e) => return Err(ScanError::Read(e)),
        }
    }
    Err(ScanError::NoMarker)
}

/// The common model's maker, model and serial number.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Common {
    pub manufacturer: String,
    pub model: String,
    pub serial_number: String,
}

/// Reads the common model (1) of a chain, if it has one.
pub async fn common(
    c: &Connection,
    unit: u8,
    chain: &Chain,
    timeout: Duration,
) -> Result<Option<Common>, ReadError> {
    let (Some(found), Some(def)) = (chain.find(1), model::model(1)) else {
        return Ok(None);
    };
    let len = found.length.min(def.fixed_len - 2);
    let words = read(c, unit, found.address + 2, len, timeout).await?;
    let text = |name: &str| {
        def.point(name)
            .and_then(|p| {
                let from = usize::from(p.offset.checked_sub(2)?);
                words.get(from..from + usize::from(p.size))
            })
            .map(string_of)
            .unwrap_or_default()
    };
    Ok(Some(Common {
        manufacturer: text("Mn"),
        model: text("Md"),
        serial_number: text("SN"),
    }))
}

/// A SunSpec string point: two ASCII bytes a register, NUL-padded.
pub fn string_of(words: &[u16]) -> String {
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_be_bytes()).collect();
    String::from_utf8_lossy(&bytes)
        .trim_end_matches(['\0', ' '])
        .to_string()
}
