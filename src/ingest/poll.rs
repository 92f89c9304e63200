//! Polling: each endpoint gets a few TCP connections; each connection polls
//! its share of the devices once per sample interval, on the interval grid
//! (a poll at 12:00:00.137 is the 12:00:00 sample). A request that times
//! out, or an answer that does not match its request, costs that device
//! that sample and the connection (reopened at once); a connection that
//! cannot be opened is retried with backoff. Other connections never wait.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, watch};
use tokio_modbus::client::{Context as ModbusClient, Reader};
use tokio_modbus::prelude::{Slave, SlaveContext};

use super::batch::Row;
use super::stats::Stats;
use crate::modbus::map::{ReadRequest, RegisterKind, TableMap};
use crate::modbus::value::Value;
use crate::schema::DeviceId;

const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// One device as the poller sees it.
#[derive(Debug, Clone)]
pub struct PollDevice {
    pub index: usize,
    /// Index of its table in the plan's tables.
    pub table_index: usize,
    pub table: Arc<TableMap>,
    pub device: DeviceId,
    pub unit: u8,
    pub block_start: u16,
    pub requests: Vec<ReadRequest>,
}

/// Why a poll produced no sample.
#[derive(Debug)]
enum PollError {
    /// The device answered with a Modbus exception; the connection is fine.
    Exception(String),
    /// Timeout, transport error or mismatched answer: reopen the connection.
    Broken(String),
}

/// The next grid second after now, and how long until it.
fn next_tick(interval: u64) -> (i64, Duration) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let next = (now.as_secs() / interval + 1) * interval;
    (next as i64, Duration::from_secs(next) - now)
}

pub struct Worker {
    pub addr: String,
    pub devices: Vec<PollDevice>,
    pub timeout: Duration,
    pub interval_secs: u64,
    pub rows: mpsc::UnboundedSender<(usize, Row)>,
    pub stats: Arc<Stats>,
}

impl Worker {
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut client: Option<ModbusClient> = None;
        let mut retry_at = Instant::now();
        let mut backoff = Duration::from_secs(1);
        let interval = Duration::from_secs(self.interval_secs);
        loop {
            let (t, wait) = next_tick(self.interval_secs);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => break,
            }
            if *stop.borrow() {
                break;
            }
            let round = Instant::now();
            for dev in &self.devices {
                if round.elapsed() >= interval {
                    self.stats
                        .poll_failed(dev.index, "the poll round overran the sample interval");
                    continue;
                }
                if client.is_none() && Instant::now() >= retry_at {
                    match self.connect(dev.unit).await {
                        Ok(c) => {
                            client = Some(c);
                            backoff = Duration::from_secs(1);
                        }
                        Err(e) => {
                            tracing::debug!(addr = %self.addr, error = %e, "cannot connect");
                            retry_at = Instant::now() + backoff;
                            backoff = (backoff * 2).min(MAX_BACKOFF);
                        }
                    }
                }
                let Some(c) = client.as_mut() else {
                    self.stats
                        .poll_failed(dev.index, &format!("cannot connect to {}", self.addr));
                    continue;
                };
                let polled = Instant::now();
                match read_device(c, dev, self.timeout).await {
                    Ok(values) => {
                        self.stats.devices[dev.index]
                            .polls_ok
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let row = Row {
                            device: dev.device.clone(),
                            t,
                            values,
                            device_index: dev.index,
                            polled: Some(polled),
                        };
                        if self.rows.send((dev.table_index, row)).is_err() {
                            return;
                        }
                    }
                    Err(PollError::Exception(e)) => self.stats.poll_failed(dev.index, &e),
                    Err(PollError::Broken(e)) => {
                        self.stats.poll_failed(dev.index, &e);
                        client = None;
                    }
                }
            }
        }
    }

    async fn connect(&self, unit: u8) -> Result<ModbusClient, String> {
        let stream = tokio::time::timeout(
            self.timeout.max(Duration::from_secs(1)),
            tokio::net::TcpStream::connect(&self.addr),
        )
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| e.to_string())?;
        let _ = stream.set_nodelay(true);
        Ok(tokio_modbus::client::tcp::attach_slave(stream, Slave(unit)))
    }
}

/// Decodes one answer into `values`; an answer of the wrong length is refused
/// before any field is read from it.
fn decode_reply(
    dev: &PollDevice,
    r: &ReadRequest,
    words: &[u16],
    values: &mut [Option<Value>],
) -> Result<(), PollError> {
    if words.len() != usize::from(r.count) {
        return Err(PollError::Broken(format!(
            "answer has {} registers for a request of {}; discarded",
            words.len(),
            r.count
        )));
    }
    for &i in &r.fields {
        let f = &dev.table.fields[i];
        let from = usize::from(dev.block_start + f.at - r.start);
        let raw = f
            .dtype
            .decode(&words[from..from + usize::from(f.dtype.words())], f.order);
        values[i] = raw.map(|v| match f.is_scaled() {
            true => Value::Float(v.as_f64() * f.scale + f.offset),
            false => v,
        });
    }
    Ok(())
}

/// Reads and decodes every field of one device; all or nothing.
async fn read_device(
    c: &mut ModbusClient,
    dev: &PollDevice,
    timeout: Duration,
) -> Result<Vec<Option<Value>>, PollError> {
    let fields = &dev.table.fields;
    let mut values = vec![None; fields.len()];
    c.set_slave(Slave(dev.unit));
    for r in &dev.requests {
        let answer = match r.kind {
            RegisterKind::Holding => {
                tokio::time::timeout(timeout, c.read_holding_registers(r.start, r.count)).await
            }
            RegisterKind::Input => {
                tokio::time::timeout(timeout, c.read_input_registers(r.start, r.count)).await
            }
        };
        let words = match answer {
            Err(_) => {
                return Err(PollError::Broken(format!(
                    "no answer within {} ms",
                    timeout.as_millis()
                )));
            }
            Ok(Err(e)) => return Err(PollError::Broken(format!("Modbus transport: {e}"))),
            Ok(Ok(Err(exception))) => {
                return Err(PollError::Exception(format!(
                    "Modbus exception: {exception}"
                )));
            }
            Ok(Ok(Ok(words))) => words,
        };
        decode_reply(dev, r, &words, &mut values)?;
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modbus::map::RegisterMap;

    fn rack() -> PollDevice {
        let map = RegisterMap::builtin();
        let t = map.table("rack").unwrap().clone();
        let device = vec![2, 3];
        PollDevice {
            index: 0,
            table_index: 0,
            unit: 1,
            block_start: t.block_start(&device) as u16,
            requests: t.requests(&device),
            table: Arc::new(t),
            device,
        }
    }

    #[test]
    fn ingest_random_replies_are_decoded_or_refused_never_a_panic() {
        let dev = rack();
        let r = &dev.requests[0];
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let (mut ok, mut refused) = (0, 0);
        for _ in 0..20_000 {
            let len = match next() % 4 {
                0 => usize::from(r.count),
                _ => (next() % 260) as usize,
            };
            let words: Vec<u16> = (0..len).map(|_| next() as u16).collect();
            let mut values = vec![None; dev.table.fields.len()];
            match decode_reply(&dev, r, &words, &mut values) {
                Ok(()) => {
                    ok += 1;
                    assert!(values.iter().flatten().all(|v| v.as_f64().is_finite()));
                }
                Err(_) => {
                    refused += 1;
                    assert_ne!(words.len(), usize::from(r.count));
                }
            }
        }
        assert!(
            ok > 1000 && refused > 1000,
            "{ok} decoded, {refused} refused"
        );
    }

    /// A "device" that answers every request with random bytes over real TCP.
    #[tokio::test]
    async fn ingest_random_bytes_from_a_device_are_an_error_never_a_panic() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let mut seed = 0xDEAD_BEEF_u64;
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 260];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    seed = seed
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let len = (seed >> 33) as usize % 300;
                    let mut reply: Vec<u8> = (0..len).map(|i| (seed >> (i % 57)) as u8).collect();
                    // Half the time, a plausible MBAP header echoing the request.
                    if seed & 1 == 0 && reply.len() >= 8 && n >= 8 {
                        reply[..2].copy_from_slice(&buf[..2]);
                        reply[2..4].fill(0);
                        reply[6..8].copy_from_slice(&buf[6..8]);
                    }
                    if s.write_all(&reply).await.is_err() {
                        break;
                    }
                }
            }
        });
        let dev = rack();
        let mut errors = 0;
        for _ in 0..80 {
            let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            let mut client = tokio_modbus::client::tcp::attach_slave(stream, Slave(1));
            if read_device(&mut client, &dev, Duration::from_millis(50))
                .await
                .is_err()
            {
                errors += 1;
            }
        }
        assert!(
            errors > 60,
            "random bytes were accepted as answers {} times",
            80 - errors
        );
    }
}
