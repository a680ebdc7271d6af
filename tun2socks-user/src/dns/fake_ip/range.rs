//! One address family's fake range, minus the excluded prefixes.
//!
//! Addresses are handled as `u128` so that IPv4 and IPv6 share one
//! implementation; the pool converts at its edges.

use ipnet::IpNet;

/// An inclusive span of addresses, `first..=last`.
type Span = (u128, u128);

/// A prefix from which fake addresses are handed out in ascending order,
/// skipping every excluded span (the device's own subnet, the responder's
/// address, ...).
#[derive(Debug, Clone)]
pub(super) struct AddrRange {
    first: u128,
    last: u128,
    /// Exclusions clipped to `first..=last`, sorted and merged.
    excluded: Vec<Span>,
    /// The next address `take` considers; `None` once the range is used up.
    cursor: Option<u128>,
}

impl AddrRange {
    /// `first..=last` is the prefix; `exclude` holds spans of the same
    /// family's numbering, those outside the prefix are ignored.
    pub(super) fn new(first: u128, last: u128, exclude: impl IntoIterator<Item = Span>) -> Self {
        let mut clipped: Vec<Span> = exclude
            .into_iter()
            .filter(|&(lo, hi)| lo <= last && hi >= first)
            .map(|(lo, hi)| (lo.max(first), hi.min(last)))
            .collect();
        clipped.sort_unstable();
        let mut excluded: Vec<Span> = Vec::with_capacity(clipped.len());
        for (lo, hi) in clipped {
            match excluded.last_mut() {
                // Overlapping or adjacent: extend the previous span.
                Some(prev) if lo <= prev.1.saturating_add(1) => prev.1 = prev.1.max(hi),
                _ => excluded.push((lo, hi)),
            }
        }
        let mut range = Self {
            first,
            last,
            excluded,
            cursor: Some(first),
        };
        range.cursor = range.skip_excluded(first);
        range
    }

    /// How many addresses the range can ever hand out (saturating: an IPv6
    /// /0 holds one more address than `u128` can count).
    pub(super) fn usable(&self) -> u128 {
        let excluded: u128 = self.excluded.iter().map(|&(lo, hi)| hi - lo + 1).sum();
        (self.last - self.first).saturating_add(1) - excluded
    }

    /// Whether `addr` is one the range may hand out.
    pub(super) fn contains(&self, addr: u128) -> bool {
        (self.first..=self.last).contains(&addr) && !self.excluded.iter().any(|&(lo, hi)| (lo..=hi).contains(&addr))
    }

    /// The next unused address, in ascending order.
    pub(super) fn take(&mut self) -> Option<u128> {
        let addr = self.cursor?;
        self.cursor = addr
            .checked_add(1)
            .filter(|&next| next <= self.last)
            .and_then(|next| self.skip_excluded(next));
        Some(addr)
    }

    /// The first address at or after `addr` that is not excluded.
    fn skip_excluded(&self, mut addr: u128) -> Option<u128> {
        // The spans are sorted and merged, so one pass suffices.
        for &(lo, hi) in &self.excluded {
            if (lo..=hi).contains(&addr) {
                addr = hi.checked_add(1)?;
            }
        }
        (addr <= self.last).then_some(addr)
    }
}

/// The inclusive `u128` span of a prefix, in its own family's numbering.
pub(super) fn span(net: IpNet) -> Span {
    match net {
        IpNet::V4(net) => (u32::from(net.network()).into(), u32::from(net.broadcast()).into()),
        IpNet::V6(net) => (u128::from(net.network()), u128::from(net.broadcast())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(range: &mut AddrRange) -> Vec<u128> {
        std::iter::from_fn(|| range.take()).collect()
    }

    #[test]
    fn hands_out_every_address_once_in_order() {
        let mut range = AddrRange::new(10, 13, []);
        assert_eq!(range.usable(), 4);
        assert_eq!(drain(&mut range), [10, 11, 12, 13]);
        assert_eq!(range.take(), None);
    }

    #[test]
    fn skips_merged_and_clipped_exclusions() {
        // (0, 11) overlaps the start, (13, 14) and (15, 15) are adjacent and
        // merge, (30, 40) lies outside.
        let mut range = AddrRange::new(10, 20, [(15, 15), (0, 11), (13, 14), (30, 40)]);
        assert_eq!(range.excluded, [(10, 11), (13, 15)]);
        assert_eq!(range.usable(), 6);
        assert!(!range.contains(11) && range.contains(12) && !range.contains(21));
        assert_eq!(drain(&mut range), [12, 16, 17, 18, 19, 20]);
    }

    #[test]
    fn fully_excluded_range_is_empty() {
        let mut range = AddrRange::new(10, 20, [(5, 25)]);
        assert_eq!(range.usable(), 0);
        assert_eq!(range.take(), None);
    }

    #[test]
    fn top_of_the_address_space_does_not_overflow() {
        let mut range = AddrRange::new(u128::MAX - 1, u128::MAX, [(u128::MAX - 1, u128::MAX - 1)]);
        assert_eq!(drain(&mut range), [u128::MAX]);
        assert_eq!(AddrRange::new(0, u128::MAX, []).usable(), u128::MAX);
    }

    #[test]
    fn span_of_prefixes() {
        assert_eq!(span("0.0.0.4/30".parse().unwrap()), (4, 7));
        assert_eq!(span("::100/120".parse().unwrap()), (0x100, 0x1ff));
    }
}
