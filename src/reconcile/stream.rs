//! One pass per side: each server's keys of the window, sorted by device then
//! time, read by binary COPY and merged here as they arrive. Memory holds a
//! few batches of keys per side, never the window.
//!
//! COPY takes no bind parameters, so the window's bounds travel as session
//! settings set with bound values (`set_config`) and are read back in the
//! statement: the SQL text itself is constant.

use bytes::{Buf, BytesMut};
use futures_util::{TryStreamExt, pin_mut};
use tokio::sync::mpsc;
use tokio_postgres::Client;

use crate::db::{PG_EPOCH_UNIX_MICROS, quote_ident};
use crate::schema::{DeviceId, TIME_COLUMN, TableSpec};
use crate::window::Window;

/// One sample's key (and, comparing values, its row hash).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key {
    /// Device ids packed so that integer order is the ids' order.
    pub device: u64,
    /// Unix microseconds.
    pub ts: i64,
    /// Hash of the row's shared non-key columns (0 when comparing keys).
    pub value: i64,
}

impl Key {
    pub fn order(&self) -> (u64, i64) {
        (self.device, self.ts)
    }
}

/// Packs up to four smallint ids so that `u64` order is their tuple order.
pub fn pack(device: &[i16]) -> u64 {
    device
        .iter()
        .fold(0u64, |acc, &v| (acc << 16) | u64::from((v as u16) ^ 0x8000))
}

pub fn unpack(device: u64, n: usize) -> DeviceId {
    (0..n)
        .rev()
        .map(|i| (((device >> (16 * i)) & 0xffff) as u16 ^ 0x8000) as i16)
        .collect()
}

/// Sets the session's window bounds that [`copy_sql`] reads.
pub async fn set_window(client: &Client, window: Window) -> Result<(), tokio_postgres::Error> {
    let (from, to) = (window.start.to_rfc3339(), window.end.to_rfc3339());
    client
        .query_one(
            "SELECT set_config('essops.window_start', $1, false), set_config('essops.window_end', $2, false)",
            &[&from, &to],
        )
        .await
        .map(|_| ())
}

/// The sorted keys of the window (see [`set_window`]) as binary COPY; with
/// `values`, a hash of those columns' text per row after the key.
pub fn copy_sql(spec: &TableSpec, values: Option<&[String]>) -> String {
    let ts = quote_ident(TIME_COLUMN);
    let devices: Vec<String> = spec
        .device_columns
        .iter()
        .map(|c| format!("x.{}::int4", quote_ident(c)))
        .collect();
    let value = match values {
        Some(cols) if !cols.is_empty() => format!(
            "hashtextextended(ROW({})::text, 0)",
            crate::sql::prefixed_list("x", cols)
        ),
        _ => "0::int8".into(),
    };
    let order: String = spec
        .device_columns
        .iter()
        .map(|c| format!("x.{}, ", quote_ident(c)))
        .collect();
    format!(
        "COPY (SELECT {devs}x.{ts}, {value} FROM {table} x
               WHERE x.{ts} >= current_setting('essops.window_start')::timestamptz
                 AND x.{ts} < current_setting('essops.window_end')::timestamptz
               ORDER BY {order}x.{ts}) TO STDOUT (FORMAT binary)",
        devs = devices.iter().map(|d| format!("{d}, ")).collect::<String>(),
        table = quote_ident(spec.name),
    )
}

/// Why a side's stream stopped.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error(transparent)]
    Db(#[from] tokio_postgres::Error),
    #[error("{0}")]
    Format(&'static str),
    #[error(transparent)]
    Id(#[from] crate::db::IdOutOfRange),
}

/// What reading one side's stream found besides its keys.
#[derive(Debug, Default)]
pub struct SideRead {
    pub bytes: u64,
    /// Rows with a NULL device id: they cannot be keyed, so are not compared.
    pub without_device: u64,
}

/// Keys sent on at a time from a reader to the merge.
const BATCH: usize = 8192;

/// Reads one side's COPY and sends its keys, deduplicated, in batches.
pub async fn read(
    client: &Client,
    sql: &str,
    devices: usize,
    out: mpsc::Sender<Vec<Key>>,
) -> Result<SideRead, StreamError> {
    let stream = client.copy_out(sql).await?;
    pin_mut!(stream);
    let mut parser = Parser::new(devices);
    let mut read = SideRead::default();
    let mut keys = Vec::with_capacity(BATCH);
    while let Some(chunk) = stream.try_next().await? {
        read.bytes += chunk.len() as u64;
        parser.buf.extend_from_slice(&chunk);
        parser.parse(&mut keys, &mut read.without_device)?;
        if keys.len() >= BATCH {
            // The merge hung up: it failed, and says why itself.
            if out.send(std::mem::take(&mut keys)).await.is_err() {
                return Ok(read);
            }
        }
    }
    if !parser.ended {
        return Err(StreamError::Format(
            "the key stream ended without its trailer",
        ));
    }
    if !keys.is_empty() && out.send(keys).await.is_err() {
        return Ok(read);
    }
    // An empty batch marks the clean end; a channel closed without it, a broken stream.
    let _ = out.send(Vec::new()).await;
    Ok(read)
}

/// Binary COPY rows of `devices` int4 ids, a timestamptz and an int8.
struct Parser {
    buf: BytesMut,
    devices: usize,
    header: bool,
    ended: bool,
    last: Option<(u64, i64)>,
}

const SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";

impl Parser {
    fn new(devices: usize) -> Parser {
        Parser {
            buf: BytesMut::new(),
            devices,
            header: false,
            ended: false,
            last: None,
        }
    }

    /// Takes every whole row in the buffer.
    fn parse(&mut self, out: &mut Vec<Key>, without_device: &mut u64) -> Result<(), StreamError> {
        if !self.header {
            if self.buf.len() < SIGNATURE.len() + 8 {
                return Ok(());
            }
            if &self.buf[..SIGNATURE.len()] != SIGNATURE {
                return Err(StreamError::Format("not a binary COPY stream"));
            }
            let ext = i32::from_be_bytes(self.buf[15..19].try_into().expect("4 bytes"));
            let skip = 19 + usize::try_from(ext).map_err(|_| StreamError::Format("bad header"))?;
            if self.buf.len() < skip {
                return Ok(());
            }
            self.buf.advance(skip);
            self.header = true;
        }
        while let Some(row) = self.row()? {
            let (device, ts, value) = row;
            let Some(device) = device else {
                *without_device += 1;
                continue;
            };
            // A side without a unique index may hold a sample twice.
            if self.last == Some((device, ts)) {
                continue;
            }
            self.last = Some((device, ts));
            out.push(Key { device, ts, value });
        }
        Ok(())
    }

    /// One whole row, or `None` when the buffer holds only part of one.
    #[allow(clippy::type_complexity)]
    fn row(&mut self) -> Result<Option<(Option<u64>, i64, i64)>, StreamError> {
        let buf = &self.buf[..];
        if buf.len() < 2 {
            return Ok(None);
        }
        let count = i16::from_be_bytes([buf[0], buf[1]]);
        if count == -1 {
            self.buf.advance(2);
            self.ended = true;
            return Ok(None);
        }
        if count as usize != self.devices + 2 {
            return Err(StreamError::Format(
                "unexpected field count in the key stream",
            ));
        }
        let mut at = 2;
        // Each field: its length (-1 for NULL), then its bytes.
        let mut field = |width: usize| -> Result<Option<Option<i64>>, StreamError> {
            if buf.len() < at + 4 {
                return Ok(None);
            }
            let len = i32::from_be_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]);
            at += 4;
            if len < 0 {
                return Ok(Some(None));
            }
            if len as usize != width {
                return Err(StreamError::Format(
                    "unexpected field width in the key stream",
                ));
            }
            if buf.len() < at + width {
                return Ok(None);
            }
            // Big-endian, sign-extended from `width` bytes.
            let mut v: i64 = if buf[at] & 0x80 != 0 { -1 } else { 0 };
            for &byte in &buf[at..at + width] {
                v = (v << 8) | i64::from(byte);
            }
            at += width;
            Ok(Some(Some(v)))
        };
        let mut device = Some(0u64);
        for _ in 0..self.devices {
            let Some(id) = field(4)? else { return Ok(None) };
            device = match (device, id) {
                (Some(d), Some(id)) => {
                    let id = i16::try_from(id).map_err(|_| crate::db::IdOutOfRange(id))?;
                    Some((d << 16) | u64::from((id as u16) ^ 0x8000))
                }
                _ => None,
            };
        }
        let Some(ts) = field(8)? else { return Ok(None) };
        let ts = ts.ok_or(StreamError::Format("a NULL timestamp in the key stream"))?;
        let Some(value) = field(8)? else {
            return Ok(None);
        };
        self.buf.advance(at);
        Ok(Some((
            device,
            ts + PG_EPOCH_UNIX_MICROS,
            value.unwrap_or(0),
        )))
    }
}

/// A side's keys, one batch at a time.
pub struct Cursor {
    side: usize,
    rx: mpsc::Receiver<Vec<Key>>,
    batch: Vec<Key>,
    at: usize,
    ended: bool,
}

impl Cursor {
    pub fn new(side: usize, rx: mpsc::Receiver<Vec<Key>>) -> Cursor {
        Cursor {
            side,
            rx,
            batch: Vec::new(),
            at: 0,
            ended: false,
        }
    }

    /// The next key; `None` at the stream's clean end.
    pub async fn peek(&mut self) -> Result<Option<Key>, super::route::SideError> {
        if let Some(key) = self.batch.get(self.at) {
            return Ok(Some(*key));
        }
        while self.at >= self.batch.len() {
            if self.ended {
                return Ok(None);
            }
            match self.rx.recv().await {
                Some(batch) if batch.is_empty() => self.ended = true,
                Some(batch) => {
                    self.batch = batch;
                    self.at = 0;
                }
                None => {
                    return Err(super::route::SideError(
                        self.side,
                        StreamError::Format("the key stream broke off"),
                    ));
                }
            }
        }
        Ok(Some(self.batch[self.at]))
    }

    pub fn advance(&mut self) {
        self.at += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::BinaryCopyWriter;

    #[test]
    fn reconcile_packed_devices_keep_their_order() {
        let ids: [&[i16]; 5] = [&[-3, 9], &[0, 0], &[1, -1], &[1, 2], &[300, 1]];
        let packed: Vec<u64> = ids.iter().map(|d| pack(d)).collect();
        assert!(packed.windows(2).all(|w| w[0] < w[1]), "{packed:?}");
        for d in ids {
            assert_eq!(unpack(pack(d), 2), d);
        }
    }

    #[test]
    fn reconcile_key_stream_parses_across_chunk_edges() {
        let mut w = BinaryCopyWriter::new();
        for (rack, ts) in [(1, 10), (1, 10), (2, 5)] {
            w.begin_row(4);
            w.int(crate::db::CopyType::Int4, 7);
            w.int(crate::db::CopyType::Int4, rack);
            w.timestamptz(ts);
            w.int(crate::db::CopyType::Int8, 42);
        }
        let bytes = w.finish().to_vec();
        let mut p = Parser::new(2);
        let (mut keys, mut nulls) = (Vec::new(), 0);
        for b in bytes.chunks(5) {
            p.buf.extend_from_slice(b);
            p.parse(&mut keys, &mut nulls).unwrap();
        }
        assert!(p.ended);
        assert_eq!(
            keys,
            [
                Key {
                    device: pack(&[7, 1]),
                    ts: 10,
                    value: 42
                },
                Key {
                    device: pack(&[7, 2]),
                    ts: 5,
                    value: 42
                }
            ]
        );
    }
}
