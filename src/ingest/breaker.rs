//! A breaker per device: after a few failures in a row a device is only
//! probed, at growing intervals, so a dead rack stops costing its gateway
//! (and its neighbours) a request every second. Its first answer closes it.
//! The growth follows OpenEMS: two more seconds per failed probe, up to five
//! minutes.

use std::time::{Duration, Instant};

const STEP: Duration = Duration::from_secs(2);
const MAX_WAIT: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Default)]
pub struct Breaker {
    /// Failures in a row (any counted kind).
    failures: u32,
    /// Set while open: since when, and when the next probe is due.
    open: Option<(Instant, Instant)>,
    wait: Duration,
}

/// A state change worth one log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Opened { failures: u32 },
    Closed { open_for: Duration },
}

impl Breaker {
    /// Whether this second's poll is skipped (open and no probe due).
    pub fn skips(&self, now: Instant) -> bool {
        self.open.is_some_and(|(_, probe)| now < probe)
    }

    pub fn is_open(&self) -> bool {
        self.open.is_some()
    }

    /// Failures in a row so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    pub fn answered(&mut self, now: Instant) -> Option<Change> {
        self.failures = 0;
        self.wait = Duration::ZERO;
        self.open.take().map(|(since, _)| Change::Closed {
            open_for: now - since,
        })
    }

    /// A failure that says something about the device (not the connection).
    pub fn failed(&mut self, now: Instant, open_after: u32) -> Option<Change> {
        self.failures += 1;
        if let Some((since, _)) = self.open {
            self.wait = (self.wait + STEP).min(MAX_WAIT);
            self.open = Some((since, now + self.wait));
            return None;
        }
        if self.failures < open_after {
            return None;
        }
        self.wait = STEP;
        self.open = Some((now, now + STEP));
        Some(Change::Opened {
            failures: self.failures,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ingest_breaker_opens_after_failures_backs_off_and_closes_on_an_answer() {
        let t0 = Instant::now();
        let s = |n: u64| t0 + Duration::from_secs(n);
        let mut b = Breaker::default();
        assert_eq!(b.failed(s(0), 3), None);
        assert_eq!(b.failed(s(1), 3), None);
        assert!(!b.skips(s(2)));
        assert_eq!(b.failed(s(2), 3), Some(Change::Opened { failures: 3 }));
        assert!(b.skips(s(3)));
        assert!(!b.skips(s(4)), "first probe after 2 s");
        assert_eq!(b.failed(s(4), 3), None);
        assert!(b.skips(s(7)) && !b.skips(s(8)), "then after 4 s");
        for i in 0..400 {
            b.failed(s(10 + i), 3);
        }
        assert!(!b.skips(s(410 + 300)), "capped at 300 s");
        assert_eq!(
            b.answered(s(500)),
            Some(Change::Closed {
                open_for: Duration::from_secs(498)
            })
        );
        assert!(!b.is_open() && !b.skips(s(501)));
        assert_eq!(b.answered(s(502)), None);
    }
}
