//! Warnings for limits that were hit, at most one per limit per interval.
//!
//! A SYN flood hits the session or half-open limit hundreds of thousands of
//! times a second; logging each would turn an attack on the daemon into an
//! attack on the disk. Every hit is counted in the worker's stats; the log
//! says that it happens, and how often since it last said so.

use std::time::{Duration, Instant};

use tracing::warn;

/// At most one warning per limit per this long, per worker.
const INTERVAL: Duration = Duration::from_secs(10);

/// The limits that are logged when hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    TcpSessions,
    HalfOpen,
    BufferMemory,
    UdpSessions,
}

impl Limit {
    const COUNT: usize = 4;

    fn what(self) -> &'static str {
        match self {
            Limit::TcpSessions => "--max-tcp-sessions reached: refusing connections with a reset",
            Limit::HalfOpen => "--max-half-open reached: dropping connection requests (clients retry)",
            Limit::BufferMemory => "--buffer-memory spent: refusing connections with a reset",
            Limit::UdpSessions => "--max-udp-sessions reached: evicting the oldest idle association",
        }
    }
}

#[derive(Debug, Default)]
pub struct LimitLog {
    last: [Option<Instant>; Limit::COUNT],
    /// Hits since the last warning, per limit.
    unlogged: [u64; Limit::COUNT],
}

impl LimitLog {
    /// Records a hit of `limit`, warning if this limit has been quiet for
    /// the interval.
    pub fn hit(&mut self, limit: Limit) {
        if let Some(hits) = self.hit_at(limit, Instant::now()) {
            warn!(hits, "{}", limit.what());
        }
    }

    /// The decision of [`LimitLog::hit`] at `now`: `Some(hits)` (this one
    /// and those not logged before it) when a warning is due.
    fn hit_at(&mut self, limit: Limit, now: Instant) -> Option<u64> {
        let i = limit as usize;
        self.unlogged[i] += 1;
        if self.last[i].is_some_and(|last| now.duration_since(last) < INTERVAL) {
            return None;
        }
        self.last[i] = Some(now);
        Some(std::mem::take(&mut self.unlogged[i]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_warning_per_interval_with_the_hits_between() {
        let mut log = LimitLog::default();
        let t0 = Instant::now();
        assert_eq!(log.hit_at(Limit::TcpSessions, t0), Some(1));
        for ms in 1..=1000 {
            assert_eq!(log.hit_at(Limit::TcpSessions, t0 + Duration::from_millis(ms)), None);
        }
        assert_eq!(log.hit_at(Limit::TcpSessions, t0 + INTERVAL), Some(1001));
        assert_eq!(log.hit_at(Limit::TcpSessions, t0 + INTERVAL), None);
    }

    #[test]
    fn limits_are_independent() {
        let mut log = LimitLog::default();
        let t0 = Instant::now();
        assert_eq!(log.hit_at(Limit::HalfOpen, t0), Some(1));
        assert_eq!(log.hit_at(Limit::BufferMemory, t0), Some(1));
        assert_eq!(log.hit_at(Limit::UdpSessions, t0), Some(1));
        assert_eq!(log.hit_at(Limit::HalfOpen, t0), None);
    }
}
