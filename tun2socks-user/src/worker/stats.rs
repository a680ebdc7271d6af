//! Per-worker counters. Each worker owns its own and touches nothing shared;
//! they are handed to the control thread when the worker ends.

use std::fmt;

use super::dns::DnsStats;
use super::udp::UdpStats;

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
    /// Non-SYN TCP packets for which this worker held no session: with
    /// working flow steering this stays 0 (a few are normal after resets).
    pub no_session_packets: u64,
    pub dropped_malformed: u64,
    /// ICMP, fragments and other traffic this build does not terminate.
    pub dropped_unsupported: u64,
    pub tun_write_errors: u64,
    pub udp: UdpStats,
    pub dns: DnsStats,
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
        self.no_session_packets += other.no_session_packets;
        self.dropped_malformed += other.dropped_malformed;
        self.dropped_unsupported += other.dropped_unsupported;
        self.tun_write_errors += other.tun_write_errors;
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
    }
}

/// `key=value` pairs, the form log readers and tests parse.
impl fmt::Display for WorkerStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "flows_accepted={} flows_refused={} syn_over_budget={} tcp_over_limit={} packets_in={} bytes_in={} \
             packets_out={} bytes_out={} no_session_packets={} dropped_malformed={} \
             dropped_unsupported={} tun_write_errors={} udp_sessions_opened={} udp_sessions_evicted={} \
             udp_sessions_failed={} udp_datagrams_out={} udp_datagrams_in={} udp_dropped_out={} \
             udp_dropped_in={} udp_fragments_dropped={} dns_answered_locally={} dns_sent_over_tcp={} \
             dns_failed={} dns_dropped={}",
            self.flows_accepted,
            self.flows_refused,
            self.syn_over_budget,
            self.tcp_over_limit,
            self.packets_in,
            self.bytes_in,
            self.packets_out,
            self.bytes_out,
            self.no_session_packets,
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
            self.dns.dropped
        )
    }
}
