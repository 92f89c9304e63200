//! Fault injection: which requests the simulator leaves unanswered or
//! refuses, decided by a hash of (seed, unit, kind, address, second) so a
//! test can compute exactly which samples must be missing; devices that are
//! dead (never answer) or frozen (serve the same registers forever);
//! connections that the simulator drops after a while; and a gateway mode
//! in front of it all (one serial bus shared by a few TCP connections).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::model::{mix, noise};
use crate::modbus::map::RegisterKind;
use crate::schema::{DeviceRange, TableSpec};

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Faults {
    pub seed: u64,
    /// Share of requests never answered.
    pub drop_rate: f64,
    /// Share of requests answered with a "server device busy" exception.
    pub exception_rate: f64,
    /// Close each connection this long after it opened.
    pub disconnect_every: Option<Duration>,
    /// Delay before every answer.
    pub latency: Duration,
    /// Devices that never answer.
    pub dead: Vec<DeviceRange>,
    /// Devices whose registers stay as they were at the simulator's start.
    pub frozen: Vec<DeviceRange>,
    /// Serve as a Modbus gateway in front of a serial bus.
    pub gateway: Option<Gateway>,
    /// How a SunSpec site's devices lay out their chains.
    pub sunspec: super::sunspec::SunSpecOptions,
}

/// A Modbus TCP gateway in front of one serial bus: every request from any
/// connection waits for the bus and holds it for `bus_time`; a device that
/// does not answer holds it for the gateway's `timeout`, after which the
/// gateway answers exception 0x0B (gateway target device failed to respond).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Gateway {
    /// TCP connections accepted at once; more are refused.
    pub connections: usize,
    pub bus_time: Duration,
    pub timeout: Duration,
}

impl Faults {
    pub fn is_dead(&self, table: &TableSpec, device: &[i16]) -> bool {
        self.dead.iter().any(|r| r.contains(table, device))
    }

    pub fn is_frozen(&self, table: &TableSpec, device: &[i16]) -> bool {
        self.frozen.iter().any(|r| r.contains(table, device))
    }
}

/// Holds one of a gateway's connection slots until dropped.
#[derive(Debug)]
pub struct Slot(pub Arc<AtomicUsize>);

impl Slot {
    /// Takes a slot when fewer than `max` are taken.
    pub fn take(count: &Arc<AtomicUsize>, max: usize) -> Option<Slot> {
        count
            .fetch_update(Relaxed, Relaxed, |n| (n < max).then_some(n + 1))
            .ok()
            .map(|_| Slot(count.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    Answer,
    Drop,
    Exception,
}

impl Faults {
    /// What happens to a read of `addr` on `unit` during second `t`.
    pub fn fate(&self, unit: u8, kind: RegisterKind, addr: u16, t: i64) -> Fate {
        if self.drop_rate <= 0.0 && self.exception_rate <= 0.0 {
            return Fate::Answer;
        }
        let key = mix(u64::from(unit) << 32 | (kind as u64) << 16 | u64::from(addr));
        let x = noise(self.seed ^ 0xFA17, key, t);
        if x < self.drop_rate {
            Fate::Drop
        } else if x < self.drop_rate + self.exception_rate {
            Fate::Exception
        } else {
            Fate::Answer
        }
    }
}

/// A connection that reads end-of-stream once its time is up, which makes
/// the Modbus server close it.
pub struct Expiring<S> {
    inner: S,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    /// A gateway's connection slot, freed when the connection ends.
    _slot: Option<Slot>,
}

impl<S> Expiring<S> {
    pub fn new(inner: S, after: Option<Duration>, slot: Option<Slot>) -> Expiring<S> {
        Expiring {
            inner,
            deadline: after.map(|d| Box::pin(tokio::time::sleep(d))),
            _slot: slot,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Expiring<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if let Some(d) = self.deadline.as_mut()
            && d.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Expiring<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simulate_faults_hit_the_asked_share() {
        let f = Faults {
            seed: 3,
            drop_rate: 0.05,
            exception_rate: 0.02,
            ..Faults::default()
        };
        let fates: Vec<Fate> = (0..20_000)
            .map(|t| f.fate(1, RegisterKind::Input, 1000, t))
            .collect();
        let share = |x: Fate| fates.iter().filter(|&&y| y == x).count() as f64 / fates.len() as f64;
        assert!(
            (share(Fate::Drop) - 0.05).abs() < 0.01,
            "{}",
            share(Fate::Drop)
        );
        assert!((share(Fate::Exception) - 0.02).abs() < 0.01);
        assert_eq!(
            Faults::default().fate(1, RegisterKind::Input, 0, 5),
            Fate::Answer
        );
    }
}
