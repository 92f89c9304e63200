//! One pass per side: each server's keys of the window, read by binary COPY
//! as one sorted array of timestamps per device (one COPY message per device
//! instead of one per sample: cheaper for the server and for essops than
//! the rows themselves) and merged here as they arrive. The window is read a
//! day at a time, so memory holds a few device-days of keys per side.
//!
//! COPY takes no bind parameters, so the window's bounds travel as session
//! settings set with bound values (`set_config`) and are read back in the
//! statement: the SQL text itself is constant.

use bytes::{Buf, BytesMut};
use futures_util::{TryStreamExt, pin_mut};
use tokio::sync::mpsc;
use tokio_postgres::Client;

use crate::db::{COPY_SIGNATURE as SIGNATURE, PG_EPOCH_UNIX_MICROS, quote_ident};
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
    device.iter().fold(0, |acc, &id| pack_next(acc, id))
}

/// `packed` with one more id appended.
fn pack_next(packed: u64, id: i16) -> u64 {
    (packed << 16) | u64::from((id as u16) ^ 0x8000)
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
    let text = tokio_postgres::types::Type::TEXT;
    // Typed: parsed and run in one round trip, no separate prepare.
    client
        .query_typed(
            "SELECT set_config('essops.window_start', $1, false), set_config('essops.window_end', $2, false)",
            &[(&from, text.clone()), (&to, text)],
        )
        .await
        .map(|_| ())
}

/// Per device, the sorted timestamps of the window (see [`set_window`]) as
/// one array, by binary COPY; with `values`, a second array of each row's
/// hash of those columns' text, in the same order.
pub fn copy_sql(spec: &TableSpec, values: Option<&[String]>) -> String {
    let ts = quote_ident(TIME_COLUMN);
    let devices: Vec<String> = spec
        .device_columns
        .iter()
        .map(|c| format!("x.{}::int4", quote_ident(c)))
        .collect();
    let value = match values {
        Some(cols) => format!(
            ", array_agg(hashtextextended(ROW({})::text, 0) ORDER BY x.{ts})",
            match cols.is_empty() {
                true => "0".to_string(),
                false => crate::sql::prefixed_list("x", cols),
            }
        ),
        None => String::new(),
    };
    let group = match devices.is_empty() {
        true => String::new(),
        false => format!(
            " GROUP BY {d} ORDER BY {d}",
            d = crate::sql::prefixed_list("x", spec.device_columns)
        ),
    };
    format!(
        "COPY (SELECT {devs}array_agg(x.{ts} ORDER BY x.{ts}){value} FROM {table} x
               WHERE x.{ts} >= current_setting('essops.window_start')::timestamptz
                 AND x.{ts} < current_setting('essops.window_end')::timestamptz{group}) TO STDOUT (FORMAT binary)",
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

/// Reads one side's COPY of `window` and sends each device's keys, deduplicated.
pub async fn read(
    client: &Client,
    window: Window,
    sql: &str,
    devices: usize,
    values: bool,
    out: mpsc::Sender<Vec<Key>>,
) -> Result<SideRead, StreamError> {
    // One round trip: the window set and the COPY parsed (it runs after).
    let (set, statement) = tokio::join!(set_window(client, window), client.prepare(sql));
    set?;
    let stream = client.copy_out(&statement?).await?;
    pin_mut!(stream);
    let mut parser = Parser::new(devices, values);
    let mut read = SideRead::default();
    while let Some(chunk) = stream.try_next().await? {
        read.bytes += chunk.len() as u64;
        parser.buf.extend_from_slice(&chunk);
        while let Some(keys) = parser.next(&mut read.without_device)? {
            // The merge hung up: it failed, and says why itself.
            if !keys.is_empty() && out.send(keys).await.is_err() {
                return Ok(read);
            }
        }
    }
    if !parser.ended {
        return Err(StreamError::Format(
            "the key stream ended without its trailer",
        ));
    }
    // An empty batch marks the clean end; a channel closed without it, a broken stream.
    let _ = out.send(Vec::new()).await;
    Ok(read)
}

/// Binary COPY rows of `devices` int4 ids, an array of timestamptz and,
/// comparing values, an array of int8.
struct Parser {
    buf: BytesMut,
    devices: usize,
    values: bool,
    header: bool,
    ended: bool,
}

/// Reads big-endian integers off a row, failing on a short row.
struct Fields<'b> {
    buf: &'b [u8],
    at: usize,
}

impl<'b> Fields<'b> {
    fn take(&mut self, n: usize) -> Option<&'b [u8]> {
        let bytes = self.buf.get(self.at..self.at + n)?;
        self.at += n;
        Some(bytes)
    }

    fn i32(&mut self) -> Option<i32> {
        self.take(4)
            .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A field's bytes; `Some(None)` for NULL, `None` when the row is short.
    fn field(&mut self) -> Option<Option<&'b [u8]>> {
        match self.i32()? {
            len if len < 0 => Some(None),
            len => self.take(len as usize).map(Some),
        }
    }
}

fn be_i64(b: &[u8]) -> i64 {
    i64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
}

/// The elements of a one-dimensional binary array of 8-byte values.
fn array_of_8(bytes: Option<&[u8]>) -> Result<Vec<i64>, StreamError> {
    let bad = StreamError::Format("an unexpected array in the key stream");
    let Some(bytes) = bytes else {
        return Ok(Vec::new()); // array_agg of no rows
    };
    let mut f = Fields { buf: bytes, at: 0 };
    let dims = f
        .i32()
        .ok_or(StreamError::Format("a short array in the key stream"))?;
    if dims == 0 {
        return Ok(Vec::new());
    }
    let (_nulls, _oid) = (f.i32(), f.i32());
    let (len, _lower) = (f.i32().unwrap_or(-1), f.i32());
    if dims != 1 || len < 0 {
        return Err(bad);
    }
    let mut out = Vec::with_capacity(len as usize);
    for _ in 0..len {
        match f.field() {
            Some(Some(b)) if b.len() == 8 => out.push(be_i64(b)),
            _ => return Err(bad),
        }
    }
    Ok(out)
}

impl Parser {
    fn new(devices: usize, values: bool) -> Parser {
        Parser {
            buf: BytesMut::new(),
            devices,
            values,
            header: false,
            ended: false,
        }
    }

    fn skip_header(&mut self) -> Result<bool, StreamError> {
        if self.header {
            return Ok(true);
        }
        if self.buf.len() < SIGNATURE.len() + 8 {
            return Ok(false);
        }
        if &self.buf[..SIGNATURE.len()] != SIGNATURE {
            return Err(StreamError::Format("not a binary COPY stream"));
        }
        // The signature, 4 bytes of flags, then the extension's length.
        let at = SIGNATURE.len() + 4;
        let ext = i32::from_be_bytes([
            self.buf[at],
            self.buf[at + 1],
            self.buf[at + 2],
            self.buf[at + 3],
        ]);
        let skip = at + 4 + usize::try_from(ext).map_err(|_| StreamError::Format("bad header"))?;
        if self.buf.len() < skip {
            return Ok(false);
        }
        self.buf.advance(skip);
        self.header = true;
        Ok(true)
    }

    /// The next whole row's keys (one device, sorted, distinct); `None`
    /// when the buffer holds only part of one, or at the trailer.
    fn next(&mut self, without_device: &mut u64) -> Result<Option<Vec<Key>>, StreamError> {
        if self.ended || !self.skip_header()? {
            return Ok(None);
        }
        let mut f = Fields {
            buf: &self.buf[..],
            at: 0,
        };
        let Some(count) = f.take(2).map(|b| i16::from_be_bytes([b[0], b[1]])) else {
            return Ok(None);
        };
        if count == -1 {
            self.buf.advance(2);
            self.ended = true;
            return Ok(None);
        }
        if count as usize != self.devices + 1 + usize::from(self.values) {
            return Err(StreamError::Format(
                "unexpected field count in the key stream",
            ));
        }
        let mut device = Some(0u64);
        for _ in 0..self.devices {
            let Some(id) = f.field() else { return Ok(None) };
            device = match (device, id) {
                (Some(d), Some(b)) if b.len() == 4 => {
                    let id = i64::from(i32::from_be_bytes([b[0], b[1], b[2], b[3]]));
                    let id = i16::try_from(id).map_err(|_| crate::db::IdOutOfRange(id))?;
                    Some(pack_next(d, id))
                }
                (_, Some(b)) if b.len() != 4 => {
                    return Err(StreamError::Format("unexpected id width in the key stream"));
                }
                _ => None,
            };
        }
        let Some(times) = f.field() else {
            return Ok(None);
        };
        let hashes = match self.values {
            true => match f.field() {
                Some(h) => Some(h),
                None => return Ok(None),
            },
            false => None,
        };
        let times = array_of_8(times)?;
        let hashes = hashes.map(array_of_8).transpose()?;
        let end = f.at;
        self.buf.advance(end);
        let Some(device) = device else {
            *without_device += times.len() as u64;
            return Ok(Some(Vec::new()));
        };
        let mut keys: Vec<Key> = Vec::with_capacity(times.len());
        for (i, t) in times.iter().enumerate() {
            let ts = t + PG_EPOCH_UNIX_MICROS;
            // A side without a unique index may hold a sample twice.
            if keys.last().is_some_and(|k| k.ts == ts) {
                continue;
            }
            let value = hashes.as_ref().and_then(|h| h.get(i).copied()).unwrap_or(0);
            keys.push(Key { device, ts, value });
        }
        Ok(Some(keys))
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
        // Two devices' rows: ids, an array of timestamps (one sample twice).
        let array = |times: &[i64]| {
            let mut a = Vec::new();
            for v in [1i32, 0, 1184, times.len() as i32, 1] {
                a.extend(v.to_be_bytes());
            }
            for t in times {
                a.extend(8i32.to_be_bytes());
                a.extend((t - PG_EPOCH_UNIX_MICROS).to_be_bytes());
            }
            a
        };
        let mut bytes = SIGNATURE.to_vec();
        bytes.extend([0u8; 8]);
        for (rack, times) in [(1, vec![10, 10, 11]), (2, vec![5])] {
            bytes.extend(3i16.to_be_bytes());
            for id in [7i32, rack] {
                bytes.extend(4i32.to_be_bytes());
                bytes.extend(id.to_be_bytes());
            }
            let a = array(&times);
            bytes.extend((a.len() as i32).to_be_bytes());
            bytes.extend(a);
        }
        bytes.extend((-1i16).to_be_bytes());
        let mut p = Parser::new(2, false);
        let (mut keys, mut nulls) = (Vec::new(), 0);
        for b in bytes.chunks(5) {
            p.buf.extend_from_slice(b);
            while let Some(k) = p.next(&mut nulls).unwrap() {
                keys.extend(k);
            }
        }
        assert!(p.ended);
        let key = |rack, ts| Key {
            device: pack(&[7, rack]),
            ts,
            value: 0,
        };
        assert_eq!(keys, [key(1, 10), key(1, 11), key(2, 5)]);
    }
}
