//! Per-worker counters. Each worker owns its own and touches nothing shared;
//! the control thread reads them through snapshot requests (metrics, `tun2socks
//! stats`) and once more when the worker ends.

use std::fmt;
use std::time::Duration;

use super::dns::DnsStats;
use super::udp::UdpStats;
use crate::device::port::OffloadStats;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WorkerStats {
    pub packets_in: u64,
    pub bytes_in: u64,
    pub packets_out: u64,
    pub bytes_out: u64,
    /// TCP sessions whose upstream connected (the application saw SYN-ACK).
    pub flows_accepted: u64,
    /// TCP sessions refused with a reset because the upstream failed.
    pub flows_refused: u64,
    /// Connection requests dropped because the half-open budget was spent.
    pub syn_over_budget: u64,
    /// Connection requests refused because --max-tcp-sessions was reached.
    pub tcp_over_limit: u64,
    /// Connection requests refused because --buffer-memory was spent.
    pub tcp_over_memory: u64,
    /// Non-SYN TCP packets for which this worker held no session: with
    /// working flow steering this stays 0 (a few are normal after resets).
    pub no_session_packets: u64,
    /// Non-SYN TCP packets of flows this worker closed in the last 10 s (a
    /// FIN retransmitted because our last ACK was lost): answered with a
    /// reset, like `no_session_packets`, but no sign of a steering fault.
    pub late_packets: u64,
    pub dropped_malformed: u64,
    /// ICMP, fragments and other traffic this build does not terminate.
    pub dropped_unsupported: u64,
    pub tun_write_errors: u64,
    /// Times the worker left real-time priority for hogging its core (see
    /// `worker::scheduling`).
    pub realtime_demotions: u64,
    /// What the TUN queue counted with offload on (all 0 otherwise).
    pub offload: OffloadStats,
    pub udp: UdpStats,
    pub dns: DnsStats,
    /// How long upstream connects took (proxy handshake included), for the
    /// TCP sessions that connected.
    pub connect_latency: LatencyHistogram,
}

impl WorkerStats {
    pub fn add(&mut self, other: &WorkerStats) {
        self.packets_in += other.packets_in;
        self.bytes_in += other.bytes_in;
        self.packets_out += other.packets_out;
        self.bytes_out += other.bytes_out;
        self.flows_accepted += other.flows_accepted;
        self.flows_refused += other.flows_refused;
        self.syn_over_budget += other.syn_over_budget;
        self.tcp_over_limit += other.tcp_over_limit;
        self.tcp_over_memory += other.tcp_over_memory;
        self.no_session_packets += other.no_session_packets;
        self.late_packets += other.late_packets;
        self.dropped_malformed += other.dropped_malformed;
        self.dropped_unsupported += other.dropped_unsupported;
        self.tun_write_errors += other.tun_write_errors;
        self.realtime_demotions += other.realtime_demotions;
        let (f, o) = (&mut self.offload, &other.offload);
        f.tso_packets_in += o.tso_packets_in;
        f.csum_trusted_in += o.csum_trusted_in;
        f.bad_checksum_in += o.bad_checksum_in;
        f.gso_packets_out += o.gso_packets_out;
        f.gso_segments_out += o.gso_segments_out;
        let (u, o) = (&mut self.udp, &other.udp);
        u.sessions_opened += o.sessions_opened;
        u.sessions_evicted += o.sessions_evicted;
        u.sessions_failed += o.sessions_failed;
        u.datagrams_out += o.datagrams_out;
        u.datagrams_in += o.datagrams_in;
        u.dropped_out += o.dropped_out;
        u.dropped_in += o.dropped_in;
        u.fragments_dropped += o.fragments_dropped;
        let (d, o) = (&mut self.dns, &other.dns);
        d.answered_locally += o.answered_locally;
        d.sent_over_tcp += o.sent_over_tcp;
        d.failed += o.failed;
        d.dropped += o.dropped;
        self.connect_latency.add(&other.connect_latency);
    }
}

/// Upper bounds of the latency buckets, in microseconds (Prometheus' `le`).
/// Fixed at compile time so that recording is a short scan over integers:
/// no allocation, no float, nothing shared.
pub const LATENCY_BOUNDS_US: [u64; 14] = [
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000, 5_000_000,
    10_000_000,
];

/// A fixed-bucket histogram of durations in plain integers, owned by one
/// worker. Counts are per bucket (not cumulative); the last slot counts what
/// exceeds every bound.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LatencyHistogram {
    pub buckets: [u64; LATENCY_BOUNDS_US.len() + 1],
    pub sum_us: u64,
}

impl LatencyHistogram {
    pub fn observe(&mut self, elapsed: Duration) {
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let slot = LATENCY_BOUNDS_US
            .iter()
            .position(|&bound| us <= bound)
            .unwrap_or(LATENCY_BOUNDS_US.len());
        self.buckets[slot] += 1;
        self.sum_us = self.sum_us.saturating_add(us);
    }

    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    pub fn add(&mut self, other: &LatencyHistogram) {
        for (mine, theirs) in self.buckets.iter_mut().zip(other.buckets) {
            *mine += theirs;
        }
        self.sum_us = self.sum_us.saturating_add(other.sum_us);
    }
}

/// `key=value` pairs, the form log readers and tests parse.
impl fmt::Display for WorkerStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "flows_accepted={} flows_refused={} syn_over_budget={} tcp_over_limit={} tcp_over_memory={} \
             packets_in={} bytes_in={} \
             packets_out={} bytes_out={} no_session_packets={} late_packets={} dropped_malformed={} \
             dropped_unsupported={} tun_write_errors={} udp_sessions_opened={} udp_sessions_evicted={} \
             udp_sessions_failed={} udp_datagrams_out={} udp_datagrams_in={} udp_dropped_out={} \
             udp_dropped_in={} udp_fragments_dropped={} dns_answered_locally={} dns_sent_over_tcp={} \
             dns_failed={} dns_dropped={} tso_packets_in={} csum_trusted_in={} bad_checksum_in={} \
             gso_packets_out={} gso_segments_out={} realtime_demotions={}",
            self.flows_accepted,
            self.flows_refused,
            self.syn_over_budget,
            self.tcp_over_limit,
            self.tcp_over_memory,
            self.packets_in,
            self.bytes_in,
            self.packets_out,
            self.bytes_out,
            self.no_session_packets,
            self.late_packets,
            self.dropped_malformed,
            self.dropped_unsupported,
            self.tun_write_errors,
            self.udp.sessions_opened,
            self.udp.sessions_evicted,
            self.udp.sessions_failed,
            self.udp.datagrams_out,
            self.udp.datagrams_in,
            self.udp.dropped_out,
            self.udp.dropped_in,
            self.udp.fragments_dropped,
            self.dns.answered_locally,
            self.dns.sent_over_tcp,
            self.dns.failed,
            self.dns.dropped,
            self.offload.tso_packets_in,
            self.offload.csum_trusted_in,
            self.offload.bad_checksum_in,
            self.offload.gso_packets_out,
            self.offload.gso_segments_out,
            self.realtime_demotions
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_lands_in_the_first_bucket_that_holds_it() {
        let mut h = LatencyHistogram::default();
        h.observe(Duration::from_micros(500)); // on the bound: `le` is inclusive
        h.observe(Duration::from_micros(501));
        h.observe(Duration::from_secs(60));
        assert_eq!(
            (h.buckets[0], h.buckets[1], h.buckets[LATENCY_BOUNDS_US.len()]),
            (1, 1, 1)
        );
        assert_eq!((h.count(), h.sum_us), (3, 60_001_001));
        let mut total = WorkerStats::default();
        total.add(&WorkerStats {
            connect_latency: h,
            ..Default::default()
        });
        total.add(&WorkerStats {
            connect_latency: h,
            ..Default::default()
        });
        assert_eq!(total.connect_latency.count(), 6);
    }
}
