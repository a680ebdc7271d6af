//! The worker's memory budget for TCP socket buffers.
//!
//! smoltcp sockets own fixed buffers, sized when the socket is made. Without
//! a bound, `--max-tcp-sessions` connections at `--tcp-buffer` each way could
//! ask for tens of gigabytes. The budget hands out sizes so that the total
//! capacity never exceeds the limit: connections get the full size while
//! memory allows, smaller buffers (halving, down to [`FLOOR`]) when it runs
//! low, and a refusal only when even the floor does not fit. Enough is kept
//! back for every session the session limit still allows to get the floor,
//! so late connections are slower, not refused.
//!
//! Capacity is what is counted, not use: the pages of a large buffer are
//! only touched as data passes, so resident memory is usually far lower.

/// The smallest buffer a connection gets, each way. Small windows are slow
/// but work.
pub const FLOOR: usize = 4096;

#[derive(Debug, Clone)]
pub struct BufferBudget {
    /// Bytes of buffer capacity this worker may hand out.
    limit: usize,
    reserved: usize,
    /// The size a connection gets when memory allows (`--tcp-buffer`).
    full: usize,
    floor: usize,
    /// This worker's session limit, for the floors kept back.
    max_sessions: usize,
}

impl BufferBudget {
    pub fn new(limit: usize, full: usize, max_sessions: usize) -> Self {
        BufferBudget {
            limit,
            reserved: 0,
            full,
            floor: FLOOR.min(full),
            max_sessions,
        }
    }

    /// Reserves both buffers of a new connection while `live` others exist;
    /// returns the size of each, or `None` when the budget is spent.
    pub fn reserve(&mut self, live: usize) -> Option<usize> {
        let remaining = self.limit.saturating_sub(self.reserved);
        let still_allowed = self.max_sessions.saturating_sub(live + 1);
        let kept_back = still_allowed.saturating_mul(2 * self.floor);
        let available = remaining.saturating_sub(kept_back);
        let mut size = self.full;
        while 2 * size > available && size > self.floor {
            size = (size / 2).max(self.floor);
        }
        // The floor may come out of what is kept back: the limit, not the
        // session count, is what must hold.
        if 2 * size > remaining {
            return None;
        }
        self.reserved += 2 * size;
        Some(size)
    }

    /// Counts buffers made without asking (the one-byte buffers of a socket
    /// that only sends a reset).
    pub fn charge(&mut self, bytes: usize) {
        self.reserved += bytes;
    }

    /// Returns the capacity of a socket that is gone.
    pub fn release(&mut self, bytes: usize) {
        debug_assert!(bytes <= self.reserved, "releasing more than was reserved");
        self.reserved = self.reserved.saturating_sub(bytes);
    }

    /// Bytes of capacity handed out and not yet returned.
    pub fn reserved(&self) -> usize {
        self.reserved
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KIB: usize = 1024;

    #[test]
    fn full_size_while_memory_allows() {
        let mut budget = BufferBudget::new(64 * 256 * KIB, 256 * KIB, 4);
        for live in 0..4 {
            assert_eq!(budget.reserve(live), Some(256 * KIB));
        }
        assert_eq!(budget.reserved(), 8 * 256 * KIB);
    }

    #[test]
    fn shrinks_then_refuses_and_never_exceeds_the_limit() {
        let limit = 1024 * KIB;
        let mut budget = BufferBudget::new(limit, 256 * KIB, 40);
        let mut sizes = Vec::new();
        while let Some(size) = budget.reserve(sizes.len()) {
            assert!(budget.reserved() <= limit);
            sizes.push(size);
        }
        // Halving steps, each at least the floor, never growing again.
        assert!(sizes.windows(2).all(|w| w[1] <= w[0]), "{sizes:?}");
        assert!(sizes.iter().all(|s| s.is_power_of_two() && *s >= FLOOR), "{sizes:?}");
        assert_eq!(*sizes.last().unwrap(), FLOOR);
        assert!(limit - budget.reserved() < 2 * FLOOR);
    }

    #[test]
    fn keeps_the_floor_for_every_session_still_allowed() {
        // Room for 10 floors only, and 10 sessions allowed: all get the floor.
        let mut budget = BufferBudget::new(10 * 2 * FLOOR, 256 * KIB, 10);
        for live in 0..10 {
            assert_eq!(budget.reserve(live), Some(FLOOR), "session {live}");
        }
        assert_eq!(budget.reserve(10), None);
    }

    #[test]
    fn released_memory_is_handed_out_again() {
        let mut budget = BufferBudget::new(2 * 64 * KIB, 64 * KIB, 4);
        assert_eq!(budget.reserve(0), Some(32 * KIB));
        budget.release(2 * 32 * KIB);
        assert_eq!(budget.reserved(), 0);
        budget.charge(2);
        assert_eq!(budget.reserved(), 2);
    }

    #[test]
    fn a_small_buffer_setting_is_its_own_floor() {
        let mut budget = BufferBudget::new(1 << 20, 2048, 4);
        assert_eq!(budget.reserve(0), Some(2048));
    }
}
