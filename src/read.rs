//! `essops read --site S --device rack:1.3`: one read of one device through
//! the site's register map (or its SunSpec models), one line per field:
//! the register kind and address, the raw words, the decoded value and the
//! scaled one. What `mbpoll` or `telegraf --test` give, in the map's terms:
//! the way to check a map against a vendor's list before ingesting.

use std::time::Duration;

use serde::Serialize;

use crate::config::{ConfigError, Site};
use crate::context::Context;
use crate::exit::{Outcome, code as exit};
use crate::modbus::client::{Connection, Frames, ReadError};
use crate::modbus::map::{DeviceAddress, ReadRequest, TableMap};
use crate::modbus::sunspec::mapping::{self, SunPlan};
use crate::modbus::value::Value;
use crate::output::Report;
use crate::schema::{DeviceId, DeviceRange, Table, TableSpec, device_label};

/// Read one device once and show every field: address, raw words, decoded and scaled value.
#[derive(Debug, Clone, clap::Args)]
pub struct ReadArgs {
    /// The site whose map and endpoints describe the device.
    #[arg(long)]
    pub site: String,
    /// The device: rack:1.3, bank:2, pcs:1, or etc for the site's etc device.
    #[arg(long, value_name = "TABLE:ID")]
    pub device: String,
    /// Also show each request and answer frame as sent and received (hex).
    #[arg(long)]
    pub raw: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ReadCmdError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("`{0}` is not one device: TABLE:ID as rack:1.3, bank:2, pcs:1, or etc")]
    BadDevice(String),
    #[error("site `{site}` has no {device}{hint}")]
    NoSuchDevice {
        site: String,
        device: String,
        hint: String,
    },
    #[error("site `{site}`: {device}: {why}")]
    Placement {
        site: String,
        device: String,
        why: String,
    },
    #[error("site `{site}`: {device} does not answer at {addr}: {why}")]
    Unreachable {
        site: String,
        device: String,
        addr: String,
        why: String,
    },
    #[error("site `{site}`: {device} is not the SunSpec device the config says: {why}")]
    SunSpecMismatch {
        site: String,
        device: String,
        why: String,
    },
}

impl ReadCmdError {
    pub fn exit_code(&self) -> u8 {
        match self {
            ReadCmdError::Unreachable { .. } => exit::UNAVAILABLE,
            _ => exit::CONFIG,
        }
    }
}

crate::into_error!(ReadCmdError);

/// One line of the output: a field, or with `--raw` a request and its answer.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ReadRow {
    Field(FieldRead),
    Frame {
        request: String,
        answer: Option<String>,
    },
}

#[derive(Debug, Clone, Serialize)]
pub struct FieldRead {
    pub column: String,
    /// holding, input, coil, discrete; none for a SunSpec column the device lacks.
    pub register_kind: Option<&'static str>,
    pub address: Option<u16>,
    /// The words as read, in hex (`0x3FC0 0x0000`).
    pub raw: Option<String>,
    /// The value before scale and offset (SunSpec: before × 10^SF).
    pub decoded: Option<Value>,
    /// What ingest stores.
    pub value: Option<Value>,
    /// Why the field has no value (unanswered, exception, not implemented).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReadReport {
    pub rows: Vec<ReadRow>,
    #[serde(skip)]
    pub device: String,
    /// Requests that went unanswered or got an exception.
    #[serde(skip)]
    pub failed: usize,
}

impl Report for ReadReport {
    type Row = ReadRow;
    const KIND: &'static str = "field";
    const HEADER: &'static str = "COLUMN|KIND|ADDRESS|RAW|DECODED|VALUE";
    fn cells(r: &ReadRow) -> Vec<String> {
        let show = |v: &Option<Value>| {
            v.map_or("NULL".into(), |v| match v {
                Value::Int(i) => i.to_string(),
                Value::Float(f) => format!("{f}"),
            })
        };
        match r {
            ReadRow::Field(f) => vec![
                f.column.clone(),
                f.register_kind.unwrap_or("-").into(),
                f.address.map_or("-".into(), |a| a.to_string()),
                f.raw.clone().unwrap_or_else(|| "-".into()),
                show(&f.decoded),
                show(&f.value),
            ],
            ReadRow::Frame { request, answer } => vec![
                "(frame)".into(),
                String::new(),
                String::new(),
                format!("> {request}"),
                format!("< {}", answer.as_deref().unwrap_or("no answer")),
            ],
        }
    }
    fn problem(r: &ReadRow) -> Option<String> {
        match r {
            ReadRow::Field(f) => f.note.clone().filter(|_| f.value.is_none()),
            ReadRow::Frame { .. } => None,
        }
    }
    fn summary(&self) -> String {
        let fields = self
            .rows
            .iter()
            .filter(|r| matches!(r, ReadRow::Field(_)))
            .count();
        match self.failed {
            0 => format!("{}: {fields} fields read", self.device),
            n => format!(
                "{}: {n} request(s) failed; the other fields are shown",
                self.device
            ),
        }
    }
    fn outcome(&self) -> Outcome {
        match self.failed {
            0 => Outcome::Clean,
            _ => Outcome::Partial,
        }
    }
    fn rows(&self) -> &[Self::Row] {
        &self.rows
    }
}

/// The device to read and where it answers.
pub struct ReadPlan {
    site: Site,
    table: TableMap,
    device: DeviceId,
    at: DeviceAddress,
    addr: String,
    raw: bool,
    timeout: Duration,
}

impl crate::command::Plan for ReadPlan {}

impl crate::command::Command for ReadArgs {
    type Plan = ReadPlan;
    type Report = ReadReport;
    async fn plan(self, ctx: &Context) -> Result<ReadPlan, crate::error::Error> {
        Ok(plan(&self, ctx)?)
    }
    async fn execute(plan: ReadPlan, _ctx: &Context) -> Result<ReadReport, crate::error::Error> {
        Ok(execute(plan).await?)
    }
}

fn parse_device(s: &str) -> Result<(TableSpec, DeviceId), ReadCmdError> {
    if s == "etc" {
        return Ok((Table::Etc.spec(), Vec::new()));
    }
    let bad = || ReadCmdError::BadDevice(s.to_string());
    let r = DeviceRange::parse(s).map_err(|_| bad())?;
    match r.from == r.to {
        true => Ok((r.table, r.from)),
        false => Err(bad()),
    }
}

pub fn plan(args: &ReadArgs, ctx: &Context) -> Result<ReadPlan, ReadCmdError> {
    let site = ctx.config.site(&args.site)?.clone();
    let (spec, device) = parse_device(&args.device)?;
    let label = device_label(&spec, &device);
    let Some(table) = site.register_map.table(spec.name).cloned() else {
        return Err(ReadCmdError::NoSuchDevice {
            site: site.name.clone(),
            device: label,
            hint: format!(
                ": its register map ({}) has no [{}]",
                site.register_map.label, spec.name
            ),
        });
    };
    if !site.has_device(&spec, &device) {
        let known: Vec<String> = spec
            .devices(&site)
            .iter()
            .map(|d| device_label(&spec, d))
            .collect();
        return Err(ReadCmdError::NoSuchDevice {
            site: site.name.clone(),
            device: label,
            hint: format!(" (configured: {})", known.join(", ")),
        });
    }
    let placement = |why: String| ReadCmdError::Placement {
        site: site.name.clone(),
        device: label.clone(),
        why,
    };
    let at = site
        .address(&table, &device)
        .map_err(|e| placement(e.to_string()))?;
    let addr = site
        .endpoint(&at.endpoint)
        .map(|e| e.addr.clone())
        .ok_or_else(|| {
            placement(format!(
                "endpoint `{}` is not in the site's `modbus` table",
                at.endpoint
            ))
        })?;
    Ok(ReadPlan {
        timeout: ctx.config.modbus.timeout,
        site,
        table,
        device,
        at,
        addr,
        raw: args.raw,
    })
}

pub async fn execute(p: ReadPlan) -> Result<ReadReport, ReadCmdError> {
    let label = device_label(&p.table.spec, &p.device);
    let unreachable = |why: String| ReadCmdError::Unreachable {
        site: p.site.name.clone(),
        device: label.clone(),
        addr: p.addr.clone(),
        why,
    };
    let c = Connection::open(&p.addr, p.timeout.max(Duration::from_secs(1)))
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    let (requests, sunspec) = match p.site.register_map.sunspec {
        false => (p.table.requests(p.at.start), None),
        true => {
            let role = crate::modbus::sunspec::role(p.table.spec.table, &p.device)
                .ok_or_else(|| unreachable("no SunSpec role for this table".into()))?;
            let plan = mapping::discover(&c, p.at.unit, role, p.timeout)
                .await
                .map_err(|e| match e {
                    ReadError::SunSpec(why) => ReadCmdError::SunSpecMismatch {
                        site: p.site.name.clone(),
                        device: label.clone(),
                        why,
                    },
                    e => unreachable(e.to_string()),
                })?;
            (plan.requests.clone(), Some(plan))
        }
    };
    let mut answers: Vec<Result<Vec<u16>, ReadError>> = Vec::new();
    let mut rows = Vec::new();
    for r in &requests {
        let (answer, frames) = c
            .exchange(p.at.unit, r.kind, r.start, r.count, p.timeout)
            .await;
        if p.raw {
            rows.push(frame_row(&frames));
        }
        answers.push(answer);
    }
    let failed = answers.iter().filter(|a| a.is_err()).count();
    rows.extend(match &sunspec {
        None => map_fields(&p.table, p.at.start, &requests, &answers),
        Some(plan) => sunspec_fields(&p.table, plan, &answers),
    });
    Ok(ReadReport {
        rows,
        device: label,
        failed,
    })
}

fn hex_bytes(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn hex_words(words: &[u16]) -> String {
    words
        .iter()
        .map(|w| format!("0x{w:04X}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn frame_row(f: &Frames) -> ReadRow {
    ReadRow::Frame {
        request: hex_bytes(&f.request),
        answer: f.answer.as_deref().map(hex_bytes),
    }
}

/// A map device's fields, in the map's order.
fn map_fields(
    table: &TableMap,
    start: u64,
    requests: &[ReadRequest],
    answers: &[Result<Vec<u16>, ReadError>],
) -> Vec<ReadRow> {
    let mut out = Vec::new();
    for (i, f) in table.fields.iter().enumerate() {
        let address = (start + u64::from(f.at)) as u16;
        let Some((r, answer)) = requests
            .iter()
            .zip(answers)
            .find(|(r, _)| r.fields.contains(&i))
        else {
            continue;
        };
        let mut row = FieldRead {
            column: f.column.clone(),
            register_kind: Some(f.kind.name()),
            address: Some(address),
            raw: None,
            decoded: None,
            value: None,
            note: None,
        };
        match answer {
            Err(e) => row.note = Some(e.to_string()),
            Ok(words) => {
                let Some(w) = f.words_in(start, r, words) else {
                    row.note = Some("answer too short".into());
                    out.push(ReadRow::Field(row));
                    continue;
                };
                row.raw = Some(hex_words(w));
                row.decoded = f.dtype.decode(w, f.order);
                row.value = row.decoded.map(|v| f.scaled(v));
                if row.decoded.is_none() {
                    row.note = Some("not a finite number".into());
                }
            }
        }
        out.push(ReadRow::Field(row));
    }
    out
}

/// A SunSpec device's columns, in the mapping's order.
fn sunspec_fields(
    table: &TableMap,
    plan: &SunPlan,
    answers: &[Result<Vec<u16>, ReadError>],
) -> Vec<ReadRow> {
    let pairs: Vec<(&ReadRequest, &[u16])> = plan
        .requests
        .iter()
        .zip(answers)
        .filter_map(|(r, a)| Some((r, a.as_ref().ok()?.as_slice())))
        .collect();
    table
        .fields
        .iter()
        .zip(&plan.points)
        .map(|(f, point)| {
            let mut row = FieldRead {
                column: f.column.clone(),
                register_kind: None,
                address: None,
                raw: None,
                decoded: None,
                value: None,
                note: Some("not on this device (NULL)".into()),
            };
            if let Some(p) = point {
                row.register_kind = Some("holding");
                row.address = Some(p.address);
                row.note = Some(format!("{}.{}: unanswered", p.model, p.point));
                if let Some(read) = mapping::read_point(p, &pairs) {
                    row.raw = Some(hex_words(&read.words));
                    row.decoded = read.raw.map(|v| Value::Int(v as i64));
                    row.value = read.value;
                    row.note = Some(match (read.raw, read.sf) {
                        (None, _) => format!("{}.{}: not implemented (NULL)", p.model, p.point),
                        (Some(_), None) => format!(
                            "{}.{}: scale factor changed or not implemented (NULL)",
                            p.model, p.point
                        ),
                        (Some(_), Some(sf)) => format!("{}.{} × 10^{sf}", p.model, p.point),
                    });
                }
            }
            ReadRow::Field(row)
        })
        .collect()
}
