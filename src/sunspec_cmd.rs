//! `essops sunspec scan HOST:PORT`: the SunSpec models a device offers
//! (id, name, address, length) and its common model's maker, model and
//! serial number. Needs no config file, so it runs before (and without)
//! the config load, as `config` does.

use std::time::Duration;

use clap::Subcommand;
use serde::Serialize;

use crate::error::Error;
use crate::exit::{Outcome, code as exit};
use crate::modbus::client::{ConnectError, Connection, ReadError};
use crate::modbus::sunspec::model;
use crate::modbus::sunspec::scan::{self, Chain, Common, ScanError};
use crate::output::{Format, Report, Verbosity};

#[derive(Debug, Subcommand)]
pub enum SunSpecCommand {
    /// Find a device's SunSpec models: exit 0 when a chain was found, 4 when
    /// the device did not answer, 3 when it has no "SunS" marker.
    Scan(ScanArgs),
}

#[derive(Debug, clap::Args)]
pub struct ScanArgs {
    /// The device (or gateway), e.g. 192.0.2.10:502.
    #[arg(value_name = "HOST:PORT")]
    pub addr: String,
    /// The Modbus unit id.
    #[arg(long, default_value_t = 1)]
    pub unit: u8,
    /// How long to wait for each answer (e.g. 500ms).
    #[arg(long, value_parser = crate::window::parse_std_duration, default_value = "1s", value_name = "DURATION")]
    pub timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum SunSpecError {
    #[error("{0}")]
    Connect(#[from] ConnectError),
    #[error("{addr} unit {unit}: {error}")]
    Read {
        addr: String,
        unit: u8,
        error: ReadError,
    },
    #[error(
        "{addr} unit {unit}: no SunSpec marker (\"SunS\") at register 40000, 0 or 50000: not a SunSpec device, or another unit id (--unit)"
    )]
    NoMarker { addr: String, unit: u8 },
}

impl SunSpecError {
    pub fn exit_code(&self) -> u8 {
        match self {
            SunSpecError::NoMarker { .. } => exit::CONFIG,
            SunSpecError::Connect(_) | SunSpecError::Read { .. } => exit::UNAVAILABLE,
        }
    }
}

crate::into_error!(SunSpecError);

/// One line of the scan: a model, or the common model's identity.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ScanRow {
    Model {
        id: u16,
        name: String,
        address: u16,
        length: u16,
    },
    Common(Common),
}

#[derive(Debug, Clone, Serialize)]
pub struct ScanReport {
    pub rows: Vec<ScanRow>,
    #[serde(skip)]
    pub chain: Option<Chain>,
}

impl Report for ScanReport {
    type Row = ScanRow;
    const KIND: &'static str = "model";
    const HEADER: &'static str = "MODEL|NAME|ADDRESS|LENGTH";
    fn cells(r: &ScanRow) -> Vec<String> {
        match r {
            ScanRow::Model {
                id,
                name,
                address,
                length,
            } => vec![
                id.to_string(),
                name.clone(),
                address.to_string(),
                length.to_string(),
            ],
            ScanRow::Common(c) => vec![
                "common".into(),
                format!(
                    "{} {} (serial {})",
                    c.manufacturer, c.model, c.serial_number
                ),
            ],
        }
    }
    fn summary(&self) -> String {
        match &self.chain {
            Some(c) => format!(
                "{} models from base {}; the chain ends with {}",
                c.models.len(),
                c.base,
                match c.end {
                    scan::ChainEnd::EndMarker => "0xFFFF",
                    scan::ChainEnd::Zero => "id 0",
                    scan::ChainEnd::Exception => "an exception on the read past it",
                    scan::ChainEnd::RegisterSpace => "the end of the register space",
                }
            ),
            None => String::new(),
        }
    }
    fn outcome(&self) -> Outcome {
        Outcome::Clean
    }
    fn rows(&self) -> &[Self::Row] {
        &self.rows
    }
}

/// Runs `essops sunspec …` without a config file.
pub fn run(
    command: &SunSpecCommand,
    format: Format,
    verbosity: Verbosity,
) -> Result<Outcome, Error> {
    let SunSpecCommand::Scan(args) = command;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(Error::Output)?;
    let report = runtime.block_on(scan_device(args))?;
    crate::output::render(&report, format, verbosity, &mut std::io::stdout().lock())
        .map_err(Error::Output)?;
    Ok(report.outcome())
}

pub async fn scan_device(args: &ScanArgs) -> Result<ScanReport, SunSpecError> {
    let c = Connection::open(&args.addr, args.timeout).await?;
    let read_err = |error| SunSpecError::Read {
        addr: args.addr.clone(),
        unit: args.unit,
        error,
    };
    let chain = match scan::scan(&c, args.unit, args.timeout).await {
        Ok(chain) => chain,
        Err(ScanError::NoMarker) => {
            return Err(SunSpecError::NoMarker {
                addr: args.addr.clone(),
                unit: args.unit,
            });
        }
        Err(ScanError::Read(e)) => return Err(read_err(e)),
    };
    let mut rows: Vec<ScanRow> = chain
        .models
        .iter()
        .map(|m| ScanRow::Model {
            id: m.id,
            name: model::name(m.id),
            address: m.address,
            length: m.length,
        })
        .collect();
    if let Some(common) = scan::common(&c, args.unit, &chain, args.timeout)
        .await
        .map_err(read_err)?
    {
        rows.push(ScanRow::Common(common));
    }
    Ok(ScanReport {
        rows,
        chain: Some(chain),
    })
}
