//! A Modbus TCP client that keeps several requests in flight on one
//! connection, matched to their answers by transaction id.
//!
//! Why not tokio-modbus's client: it sends one request and waits for its
//! answer, so a device that never answers holds every device queued behind
//! it on that connection for the whole timeout, and after a timeout the
//! connection must be reopened (a late answer would be taken for the next
//! request's). Here a late answer carries the id of a request
//! that timed out and is dropped, so a silent device costs only its own
//! request; an answer whose id no request was given (one the connection
//! never sent, or long forgotten) means the stream is out of step, and the
//! connection is closed.
//! Gateways that cannot queue requests are served one at a time (see
//! [`Connection::supports_pipelining`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::oneshot;

use super::map::{ReadRequest, RegisterKind};
use crate::tasks::lock;

/// Modbus exception 0x0B: the gateway's target device did not respond.
pub const GATEWAY_TARGET_FAILED: u8 = 0x0B;
/// Modbus exception 0x0A: the gateway has no path to the target.
pub const GATEWAY_PATH_UNAVAILABLE: u8 = 0x0A;

/// Why a read gave no registers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadError {
    /// No answer within the time allowed; the connection stays usable.
    /// `device_silent`: nothing sent earlier on this connection was still
    /// waiting, or something sent later was answered meanwhile; so the
    /// device, not a gateway's queue in front of it, is what stayed silent.
    Timeout { device_silent: bool },
    /// The device (or gateway) answered with a Modbus exception code.
    Exception(u8),
    /// The connection is gone (closed, reset, or a frame no device would send).
    Closed(String),
    /// An answer that does not fit its request (function, length); discarded.
    BadAnswer(String),
    /// A SunSpec device whose models do not match what the config says it is.
    SunSpec(String),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Timeout { .. } => write!(f, "no answer in time"),
            ReadError::Exception(code) => write!(
                f,
                "Modbus exception 0x{code:02X} ({})",
                exception_name(*code)
            ),
            ReadError::Closed(why) => write!(f, "connection lost: {why}"),
            ReadError::BadAnswer(why) => write!(f, "answer discarded: {why}"),
            ReadError::SunSpec(why) => write!(f, "SunSpec: {why}"),
        }
    }
}

/// A connection that could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect to {0} timed out")]
    Timeout(String),
    #[error("connect to {addr}: {source}")]
    Io {
        addr: String,
        #[source]
        source: std::io::Error,
    },
}

/// The standard name of a Modbus exception code.
pub fn exception_name(code: u8) -> &'static str {
    match code {
        0x01 => "illegal function",
        0x02 => "illegal data address",
        0x03 => "illegal data value",
        0x04 => "server device failure",
        0x05 => "acknowledge",
        0x06 => "server device busy",
        0x0A => "gateway path unavailable",
        0x0B => "gateway target device failed to respond",
        _ => "unknown exception",
    }
}

struct Waiting {
    /// Order of sending on this connection (transaction ids wrap; this does not).
    seq: u64,
    function: u8,
    unit: u8,
    count: u16,
    answer: oneshot::Sender<Reply>,
}

/// What the reader hands a request: its decoded answer and the answer's
/// frame (MBAP header and PDU) as it came, for `essops read --raw`.
type Reply = (Result<Vec<u16>, ReadError>, Vec<u8>);

/// One request and its answer as they went over the wire.
#[derive(Debug, Clone, Default)]
pub struct Frames {
    pub request: Vec<u8>,
    /// None: no answer came.
    pub answer: Option<Vec<u8>>,
}

type Pending = Arc<Mutex<HashMap<u16, Waiting>>>;

/// Transaction ids of requests that timed out, newest last: their answers
/// may still come, and are dropped.
type Expired = Arc<Mutex<std::collections::VecDeque<u16>>>;
/// How many timed-out ids a connection remembers.
const EXPIRED_KEPT: usize = 1024;

/// The highest sending order answered so far.
type Answered = Arc<AtomicU64>;

/// One open Modbus TCP connection.
pub struct Connection {
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    pending: Pending,
    expired: Expired,
    next_tid: AtomicU16,
    sent: AtomicU64,
    answered: Answered,
    closed: Arc<AtomicBool>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Connection {
    /// Opens a connection to `addr`, giving up after `timeout`.
    pub async fn open(addr: &str, timeout: Duration) -> Result<Connection, ConnectError> {
        let stream = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr))
            .await
            .map_err(|_| ConnectError::Timeout(addr.to_string()))?
            .map_err(|source| ConnectError::Io {
                addr: addr.to_string(),
                source,
            })?;
        let _ = stream.set_nodelay(true);
        let (read, write) = stream.into_split();
        let pending: Pending = Arc::default();
        let expired: Expired = Arc::default();
        let closed = Arc::new(AtomicBool::new(false));
        let answered = Answered::default();
        let reader = tokio::spawn(read_answers(
            read,
            (pending.clone(), expired.clone()),
            answered.clone(),
            closed.clone(),
        ));
        Ok(Connection {
            writer: tokio::sync::Mutex::new(write),
            pending,
            expired,
            next_tid: AtomicU16::new(1),
            sent: AtomicU64::new(1),
            answered,
            closed,
            reader,
        })
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Relaxed)
    }

    /// Reads `count` registers (or bits, one per word) from `start` on
    /// `unit`, waiting at most `timeout`.
    pub async fn read(
        &self,
        unit: u8,
        kind: RegisterKind,
        start: u16,
        count: u16,
        timeout: Duration,
    ) -> Result<Vec<u16>, ReadError> {
        self.exchange(unit, kind, start, count, timeout).await.0
    }

    /// Every one of `requests`, in order, within one `timeout` in all: one
    /// poll of a device. An answer of the wrong length fails the poll.
    pub async fn read_all(
        &self,
        unit: u8,
        requests: &[ReadRequest],
        timeout: Duration,
    ) -> Result<Vec<Vec<u16>>, ReadError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut answers = Vec::with_capacity(requests.len());
        for r in requests {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Err(ReadError::Timeout {
                    device_silent: true,
                });
            }
            let words = self.read(unit, r.kind, r.start, r.count, left).await?;
            if words.len() != usize::from(r.count) {
                return Err(ReadError::BadAnswer(format!(
                    "{} registers for a request of {}",
                    words.len(),
                    r.count
                )));
            }
            answers.push(words);
        }
        Ok(answers)
    }

    /// As [`read`](Self::read), with the request and answer frames.
    pub async fn exchange(
        &self,
        unit: u8,
        kind: RegisterKind,
        start: u16,
        count: u16,
        timeout: Duration,
    ) -> (Result<Vec<u16>, ReadError>, Frames) {
        let function = kind.function();
        let tid = self.next_tid.fetch_add(1, Relaxed);
        let mut frames = Frames {
            request: request_frame(tid, unit, function, start, count).to_vec(),
            answer: None,
        };
        if self.is_closed() {
            return (
                Err(ReadError::Closed("closed by the device".into())),
                frames,
            );
        }
        let result = self.send(tid, unit, function, start, count, timeout).await;
        let result = match result {
            Ok((words, answer)) => {
                frames.answer = Some(answer);
                words
            }
            Err(e) => Err(e),
        };
        (result, frames)
    }

    async fn send(
        &self,
        tid: u16,
        unit: u8,
        function: u8,
        start: u16,
        count: u16,
        timeout: Duration,
    ) -> Result<Reply, ReadError> {
        let seq = self.sent.fetch_add(1, Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).insert(
            tid,
            Waiting {
                seq,
                function,
                unit,
                count,
                answer: tx,
            },
        );
        let frame = request_frame(tid, unit, function, start, count);
        let sent = async {
            let mut w = self.writer.lock().await;
            let mut writing = PartialWrite {
                closed: &self.closed,
                done: false,
            };
            let written = w.write_all(&frame).await;
            writing.done = true;
            written
        };
        let outcome = tokio::time::timeout(timeout, async {
            sent.await.map_err(|e| ReadError::Closed(e.to_string()))?;
            rx.await
                .map_err(|_| ReadError::Closed("connection closed".into()))
        })
        .await;
        match outcome {
            Ok(result) => {
                let closed = matches!(
                    &result,
                    Err(ReadError::Closed(_)) | Ok((Err(ReadError::Closed(_)), _))
                );
                if closed {
                    self.closed.store(true, Relaxed);
                }
                result
            }
            Err(_) => {
                // The answer may still come; the reader drops it.
                let mut pending = lock(&self.pending);
                pending.remove(&tid);
                let mut expired = lock(&self.expired);
                if expired.len() == EXPIRED_KEPT {
                    expired.pop_front();
                }
                expired.push_back(tid);
                drop(expired);
                let queued_behind = pending.values().any(|w| w.seq < seq);
                Err(ReadError::Timeout {
                    device_silent: self.answered.load(Relaxed) > seq || !queued_behind,
                })
            }
        }
    }
}

/// A request frame being written. Dropped before the write finished (the
/// read timed out or was cancelled mid-frame), it closes the connection:
/// the device would read the next request's bytes as the rest of this one.
struct PartialWrite<'a> {
    closed: &'a AtomicBool,
    done: bool,
}

impl Drop for PartialWrite<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.closed.store(true, Relaxed);
        }
    }
}

/// MBAP header (transaction, protocol 0, length, unit) and a read PDU.
pub fn request_frame(tid: u16, unit: u8, function: u8, start: u16, count: u16) -> [u8; 12] {
    let mut f = [0u8; 12];
    f[0..2].copy_from_slice(&tid.to_be_bytes());
    f[4..6].copy_from_slice(&6u16.to_be_bytes());
    f[6] = unit;
    f[7] = function;
    f[8..10].copy_from_slice(&start.to_be_bytes());
    f[10..12].copy_from_slice(&count.to_be_bytes());
    f
}

/// Reads answers until the connection ends, handing each to its request.
async fn read_answers(
    mut read: OwnedReadHalf,
    (pending, expired): (Pending, Expired),
    answered: Answered,
    closed: Arc<AtomicBool>,
) {
    let why = loop {
        let mut header = [0u8; 7];
        if let Err(e) = read.read_exact(&mut header).await {
            break format!("read: {e}");
        }
        let (tid, len) = match frame_header(&header) {
            Ok(h) => h,
            Err(why) => break why.to_string(),
        };
        let mut frame = vec![0u8; 7 + len - 1];
        frame[..7].copy_from_slice(&header);
        if let Err(e) = read.read_exact(&mut frame[7..]).await {
            break format!("read: {e}");
        }
        let Some(w) = lock(&pending).remove(&tid) else {
            let mut late = lock(&expired);
            match late.iter().position(|t| *t == tid) {
                // A late answer to a request that timed out.
                Some(i) => {
                    late.remove(i);
                    continue;
                }
                None => {
                    break format!(
                        "an answer with transaction id {tid}, which no request on this connection is waiting for: the stream is out of step"
                    );
                }
            }
        };
        answered.fetch_max(w.seq, Relaxed);
        let answer = decode_answer(w.expected(), header[6], &frame[7..]);
        let _ = w.answer.send((answer, frame));
    };
    closed.store(true, Relaxed);
    for (_, w) in lock(&pending).drain() {
        let _ = w
            .answer
            .send((Err(ReadError::Closed(why.clone())), Vec::new()));
    }
}

/// The transaction id and length of a Modbus TCP header (MBAP), or why it is
/// not one. The length counts the unit byte and the PDU (at most 253 bytes).
pub fn frame_header(header: &[u8; 7]) -> Result<(u16, usize), NotModbus> {
    let tid = u16::from_be_bytes([header[0], header[1]]);
    let protocol = u16::from_be_bytes([header[2], header[3]]);
    let len = usize::from(u16::from_be_bytes([header[4], header[5]]));
    if protocol != 0 || !(2..=254).contains(&len) {
        return Err(NotModbus { protocol, len });
    }
    Ok((tid, len))
}

/// A header that is not Modbus TCP's.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
#[error("not a Modbus TCP frame (protocol {protocol}, length {len})")]
pub struct NotModbus {
    pub protocol: u16,
    pub len: usize,
}

/// What a request asked for, to check its answer against.
#[derive(Debug, Clone, Copy)]
pub struct Expected {
    pub unit: u8,
    pub function: u8,
    pub count: u16,
}

impl Waiting {
    fn expected(&self) -> Expected {
        Expected {
            unit: self.unit,
            function: self.function,
            count: self.count,
        }
    }
}

/// The registers of an answer from `unit` with this PDU, or why it is not
/// the answer that was asked for.
pub fn decode_answer(w: Expected, unit: u8, pdu: &[u8]) -> Result<Vec<u16>, ReadError> {
    let bad = |why: String| Err(ReadError::BadAnswer(why));
    if unit != w.unit {
        return bad(format!("from unit {unit}, asked unit {}", w.unit));
    }
    match pdu {
        [f, code] if *f == w.function | 0x80 => Err(ReadError::Exception(*code)),
        [f, n, data @ ..] if *f == w.function && matches!(w.function, 0x01 | 0x02) => {
            // Bits come packed, the first one in the lowest bit of the first byte.
            let want = usize::from(w.count).div_ceil(8);
            if usize::from(*n) != want || data.len() != want {
                return bad(format!(
                    "{} bytes for a request of {} bits",
                    data.len(),
                    w.count
                ));
            }
            Ok((0..usize::from(w.count))
                .map(|i| u16::from(data[i / 8] >> (i % 8) & 1))
                .collect())
        }
        [f, n, data @ ..] if *f == w.function => {
            let want = usize::from(w.count) * 2;
            if usize::from(*n) != want || data.len() != want {
                return bad(format!(
                    "{} bytes for a request of {} registers",
                    data.len(),
                    w.count
                ));
            }
            Ok(data
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect())
        }
        [f, ..] => bad(format!("function 0x{f:02X}, asked 0x{:02X}", w.function)),
        [] => bad("an empty answer".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// A device that answers requests out of order and never answers unit 9.
    async fn device() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut held: Vec<[u8; 12]> = Vec::new();
            loop {
                let mut req = [0u8; 12];
                if s.read_exact(&mut req).await.is_err() {
                    return;
                }
                if req[6] == 9 {
                    continue;
                }
                held.push(req);
                if held.len() < 2 {
                    continue;
                }
                for req in held.drain(..).rev() {
                    let count = u16::from_be_bytes([req[10], req[11]]);
                    let mut out = req[0..8].to_vec();
                    out[4..6].copy_from_slice(&(3 + 2 * count).to_be_bytes());
                    out.push((2 * count) as u8);
                    for i in 0..count {
                        out.extend((u16::from(req[6]) * 100 + i).to_be_bytes());
                    }
                    s.write_all(&out).await.unwrap();
                }
            }
        });
        addr
    }

    #[tokio::test]
    async fn modbus_pipelined_answers_are_matched_by_transaction_and_a_silent_unit_costs_only_itself()
     {
        let conn = Connection::open(&device().await, Duration::from_secs(1))
            .await
            .unwrap();
        let t = Duration::from_millis(300);
        let silent = conn.read(9, RegisterKind::Input, 0, 2, t);
        let a = conn.read(1, RegisterKind::Input, 0, 2, t);
        let b = conn.read(2, RegisterKind::Holding, 0, 3, t);
        let (silent, a, b) = tokio::join!(silent, a, b);
        assert_eq!(
            silent,
            Err(ReadError::Timeout {
                device_silent: true
            })
        );
        assert_eq!(a.unwrap(), vec![100, 101]);
        assert_eq!(b.unwrap(), vec![200, 201, 202]);
        assert!(!conn.is_closed());
    }

    /// A device that answers each request after `delay`, with its
    /// transaction id shifted by `shift` (0: its own), two registers.
    async fn answering(delay: Duration, shift: u16) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut req = [0u8; 12];
            while s.read_exact(&mut req).await.is_ok() {
                tokio::time::sleep(delay).await;
                let tid = u16::from_be_bytes([req[0], req[1]]).wrapping_add(shift);
                // MBAP by hand: tid, protocol 0, length 7, unit; 0x04, 4 bytes, 0x0001 0x0002.
                let mut out = tid.to_be_bytes().to_vec();
                out.extend([0, 0, 0, 7, req[6], 0x04, 4, 0, 1, 0, 2]);
                s.write_all(&out).await.unwrap();
            }
        });
        addr
    }

    #[tokio::test]
    async fn modbus_a_late_answer_is_dropped_and_the_connection_kept() {
        let conn = Connection::open(
            &answering(Duration::from_millis(300), 0).await,
            Duration::from_secs(1),
        )
        .await
        .unwrap();
        let first = conn
            .read(1, RegisterKind::Input, 0, 2, Duration::from_millis(100))
            .await;
        assert!(matches!(first, Err(ReadError::Timeout { .. })), "{first:?}");
        // The late answer arrives meanwhile; the next request gets its own.
        let second = conn
            .read(1, RegisterKind::Input, 0, 2, Duration::from_secs(2))
            .await;
        assert_eq!(second, Ok(vec![1, 2]));
        assert!(!conn.is_closed());
    }

    #[tokio::test]
    async fn modbus_an_answer_no_request_waits_for_closes_the_connection() {
        let conn = Connection::open(
            &answering(Duration::ZERO, 100).await,
            Duration::from_secs(1),
        )
        .await
        .unwrap();
        let read = conn
            .read(1, RegisterKind::Input, 0, 2, Duration::from_secs(2))
            .await;
        match read {
            Err(ReadError::Closed(why)) => assert!(why.contains("out of step"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert!(conn.is_closed());
    }

    #[test]
    fn modbus_answers_that_do_not_fit_are_refused() {
        let w = Expected {
            function: 4,
            unit: 1,
            count: 2,
        };
        assert_eq!(
            decode_answer(w, 1, &[0x84, 0x0B]),
            Err(ReadError::Exception(0x0B))
        );
        assert!(matches!(
            decode_answer(w, 1, &[4, 2, 0, 1]),
            Err(ReadError::BadAnswer(_))
        ));
        assert!(matches!(
            decode_answer(w, 2, &[4, 4, 0, 1, 0, 2]),
            Err(ReadError::BadAnswer(_))
        ));
        assert!(matches!(
            decode_answer(w, 1, &[3, 4, 0, 1, 0, 2]),
            Err(ReadError::BadAnswer(_))
        ));
        assert_eq!(decode_answer(w, 1, &[4, 4, 0, 1, 0, 2]), Ok(vec![1, 2]));
    }
}
