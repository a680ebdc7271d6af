//! Flows this worker closed a moment ago, so that their stragglers are not
//! taken for packets steered to the wrong worker.
//!
//! A session's smoltcp socket is removed as soon as it reaches TIME-WAIT
//! (holding its buffers for TIME-WAIT's 10 s would cost memory under
//! connection churn). If our last ACK is then lost, the application
//! retransmits its FIN to a worker that no longer has the flow. smoltcp
//! answers it with a reset, which ends the application's LAST-ACK just as
//! well; what matters here is counting it as a late packet of a flow we
//! had (`late_packets`), not as one we never saw (`no_session_packets`,
//! which a steering fault would raise).

use std::collections::{HashSet, VecDeque};

use smoltcp::time::{Duration, Instant};

use crate::packet::FlowKey;

/// How long a closed flow is remembered: smoltcp's TIME-WAIT.
const REMEMBER: Duration = Duration::from_secs(10);
/// At most this many flows are remembered (the oldest go first).
const CAPACITY: usize = 8192;

#[derive(Debug, Default)]
pub struct RecentlyClosed {
    keys: HashSet<FlowKey>,
    order: VecDeque<(FlowKey, Instant)>,
}

impl RecentlyClosed {
    /// Remembers that `key` was closed at `now`.
    pub fn insert(&mut self, key: FlowKey, now: Instant) {
        self.expire(now);
        if self.order.len() >= CAPACITY
            && let Some((old, _)) = self.order.pop_front()
        {
            self.keys.remove(&old);
        }
        if self.keys.insert(key) {
            self.order.push_back((key, now));
        }
    }

    /// Whether `key` was closed within the last 10 s.
    pub fn contains(&mut self, key: &FlowKey, now: Instant) -> bool {
        self.expire(now);
        self.keys.contains(key)
    }

    /// Forgets `key` (a new connection reuses its 5-tuple).
    pub fn remove(&mut self, key: &FlowKey) {
        if self.keys.remove(key) {
            self.order.retain(|(k, _)| k != key);
        }
    }

    fn expire(&mut self, now: Instant) {
        while let Some(&(key, at)) = self.order.front() {
            if now - at < REMEMBER {
                break;
            }
            self.order.pop_front();
            self.keys.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    fn key(port: u16) -> FlowKey {
        FlowKey {
            client: SocketAddr::from(([10, 0, 0, 1], port)),
            dest: SocketAddr::from(([10, 0, 0, 2], 80)),
        }
    }

    #[test]
    fn remembered_for_ten_seconds() {
        let mut r = RecentlyClosed::default();
        let t0 = Instant::from_secs(100);
        r.insert(key(1), t0);
        assert!(r.contains(&key(1), t0 + Duration::from_secs(9)));
        assert!(!r.contains(&key(2), t0));
        assert!(!r.contains(&key(1), t0 + Duration::from_secs(10)));
    }

    #[test]
    fn bounded_and_forgettable() {
        let mut r = RecentlyClosed::default();
        let t0 = Instant::from_secs(1);
        for port in 0..=CAPACITY as u16 {
            r.insert(key(port), t0);
        }
        assert!(!r.contains(&key(0), t0), "the oldest made room");
        assert!(r.contains(&key(CAPACITY as u16), t0));
        r.remove(&key(5));
        assert!(!r.contains(&key(5), t0));
    }
}
