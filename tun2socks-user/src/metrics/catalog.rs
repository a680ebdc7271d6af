//! Every counter and gauge a worker snapshot yields, named once: for the
//! Prometheus exposition (family, help, label) and for `tun2socks stats`
//! (the key, which is the field's name in the `worker finished` log line).

use crate::worker::WorkerSnapshot;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

/// One value of a worker, exported as `tun2socks_<family>` (`_total` added
/// to counters) with a `worker` label and, within a family, one more label.
#[derive(Debug)]
pub struct Series {
    /// Name in `tun2socks stats` and in the daemon's `worker finished` log line.
    pub key: &'static str,
    pub family: &'static str,
    pub help: &'static str,
    pub kind: Kind,
    pub label: Option<(&'static str, &'static str)>,
    pub get: fn(&WorkerSnapshot) -> u64,
}

const fn counter(
    key: &'static str,
    family: &'static str,
    help: &'static str,
    label: Option<(&'static str, &'static str)>,
    get: fn(&WorkerSnapshot) -> u64,
) -> Series {
    Series {
        key,
        family,
        help,
        kind: Kind::Counter,
        label,
        get,
    }
}

const PACKETS: &str = "IP packets through the TUN device (in: from the applications, out: to them).";
const BYTES: &str = "IP bytes through the TUN device, headers included (in: from the applications, out: to them).";
const DROPS: &str = "Packets or datagrams dropped, by reason.";
const REFUSED: &str = "TCP connection requests answered with a reset, by reason.";
const DATAGRAMS: &str = "UDP datagrams relayed (out: to the upstream, in: back to the applications).";
const DNS: &str = "DNS queries handled by the worker, by outcome.";
const OFFLOAD: &str = "TUN offload (--tun-offload on): packets read as one TSO segment train, read with a \
                       checksum the kernel vouched for, written as one GSO packet, and the segments those GSO \
                       packets stand for.";

/// In exposition order; the series of one family are adjacent.
pub const SERIES: &[Series] = &[
    Series {
        key: "tcp_sessions",
        family: "tcp_sessions",
        help: "Live TCP sessions (held connection requests included).",
        kind: Kind::Gauge,
        label: None,
        get: |s| s.tcp_sessions as u64,
    },
    Series {
        key: "udp_sessions",
        family: "udp_sessions",
        help: "Live UDP associations.",
        kind: Kind::Gauge,
        label: None,
        get: |s| s.udp_sessions as u64,
    },
    Series {
        key: "tcp_buffer_bytes",
        family: "tcp_buffer_bytes",
        help: "TCP socket buffer capacity handed out, bounded by --buffer-memory (pages are used only as data passes).",
        kind: Kind::Gauge,
        label: None,
        get: |s| s.tcp_buffer_bytes as u64,
    },
    counter("packets_in", "packets", PACKETS, Some(("direction", "in")), |s| {
        s.stats.packets_in
    }),
    counter("packets_out", "packets", PACKETS, Some(("direction", "out")), |s| {
        s.stats.packets_out
    }),
    counter("bytes_in", "bytes", BYTES, Some(("direction", "in")), |s| {
        s.stats.bytes_in
    }),
    counter("bytes_out", "bytes", BYTES, Some(("direction", "out")), |s| {
        s.stats.bytes_out
    }),
    counter(
        "flows_accepted",
        "tcp_sessions_accepted",
        "TCP connections whose upstream connected (the application saw SYN-ACK).",
        None,
        |s| s.stats.flows_accepted,
    ),
    counter(
        "flows_refused",
        "tcp_sessions_refused",
        REFUSED,
        Some(("reason", "upstream")),
        |s| s.stats.flows_refused,
    ),
    counter(
        "tcp_over_limit",
        "tcp_sessions_refused",
        REFUSED,
        Some(("reason", "session_limit")),
        |s| s.stats.tcp_over_limit,
    ),
    counter(
        "tcp_over_memory",
        "tcp_sessions_refused",
        REFUSED,
        Some(("reason", "buffer_memory")),
        |s| s.stats.tcp_over_memory,
    ),
    counter(
        "syn_over_budget",
        "drops",
        DROPS,
        Some(("reason", "half_open_limit")),
        |s| s.stats.syn_over_budget,
    ),
    counter(
        "no_session_packets",
        "drops",
        DROPS,
        Some(("reason", "no_session")),
        |s| s.stats.no_session_packets,
    ),
    counter("late_packets", "drops", DROPS, Some(("reason", "closed_flow")), |s| {
        s.stats.late_packets
    }),
    counter(
        "dropped_malformed",
        "drops",
        DROPS,
        Some(("reason", "malformed")),
        |s| s.stats.dropped_malformed,
    ),
    counter(
        "dropped_unsupported",
        "drops",
        DROPS,
        Some(("reason", "unsupported")),
        |s| s.stats.dropped_unsupported,
    ),
    counter(
        "tun_write_errors",
        "drops",
        DROPS,
        Some(("reason", "tun_write_error")),
        |s| s.stats.tun_write_errors,
    ),
    counter(
        "bad_checksum_in",
        "drops",
        DROPS,
        Some(("reason", "bad_checksum")),
        |s| s.stats.offload.bad_checksum_in,
    ),
    counter("udp_dropped_out", "drops", DROPS, Some(("reason", "udp_out")), |s| {
        s.stats.udp.dropped_out
    }),
    counter("udp_dropped_in", "drops", DROPS, Some(("reason", "udp_in")), |s| {
        s.stats.udp.dropped_in
    }),
    counter(
        "udp_fragments_dropped",
        "drops",
        DROPS,
        Some(("reason", "udp_fragment")),
        |s| s.stats.udp.fragments_dropped,
    ),
    counter("dns_dropped", "drops", DROPS, Some(("reason", "dns")), |s| {
        s.stats.dns.dropped
    }),
    counter(
        "udp_sessions_opened",
        "udp_sessions_opened",
        "UDP associations opened.",
        None,
        |s| s.stats.udp.sessions_opened,
    ),
    counter(
        "udp_sessions_evicted",
        "udp_sessions_evicted",
        "UDP associations evicted (oldest idle) to make room for a new one.",
        None,
        |s| s.stats.udp.sessions_evicted,
    ),
    counter(
        "udp_sessions_failed",
        "udp_sessions_failed",
        "UDP associations whose upstream setup failed.",
        None,
        |s| s.stats.udp.sessions_failed,
    ),
    counter(
        "udp_datagrams_out",
        "udp_datagrams",
        DATAGRAMS,
        Some(("direction", "out")),
        |s| s.stats.udp.datagrams_out,
    ),
    counter(
        "udp_datagrams_in",
        "udp_datagrams",
        DATAGRAMS,
        Some(("direction", "in")),
        |s| s.stats.udp.datagrams_in,
    ),
    counter(
        "dns_answered_locally",
        "dns_queries",
        DNS,
        Some(("outcome", "answered_locally")),
        |s| s.stats.dns.answered_locally,
    ),
    counter(
        "dns_sent_over_tcp",
        "dns_queries",
        DNS,
        Some(("outcome", "over_tcp")),
        |s| s.stats.dns.sent_over_tcp,
    ),
    counter("dns_failed", "dns_queries", DNS, Some(("outcome", "failed")), |s| {
        s.stats.dns.failed
    }),
    counter(
        "tso_packets_in",
        "tun_offload_packets",
        OFFLOAD,
        Some(("kind", "tso_in")),
        |s| s.stats.offload.tso_packets_in,
    ),
    counter(
        "csum_trusted_in",
        "tun_offload_packets",
        OFFLOAD,
        Some(("kind", "csum_trusted_in")),
        |s| s.stats.offload.csum_trusted_in,
    ),
    counter(
        "gso_packets_out",
        "tun_offload_packets",
        OFFLOAD,
        Some(("kind", "gso_out")),
        |s| s.stats.offload.gso_packets_out,
    ),
    counter(
        "gso_segments_out",
        "tun_offload_packets",
        OFFLOAD,
        Some(("kind", "gso_segments_out")),
        |s| s.stats.offload.gso_segments_out,
    ),
    counter(
        "realtime_demotions",
        "worker_realtime_demotions",
        "Times a worker at real-time priority (--worker-priority) kept its core over 90 % busy for 50 ms \
         and ran at normal priority for the next second.",
        None,
        |s| s.stats.realtime_demotions,
    ),
];

/// The families in order, each with its series.
pub fn families() -> Vec<(&'static Series, Vec<&'static Series>)> {
    let mut out: Vec<(&Series, Vec<&Series>)> = Vec::new();
    for series in SERIES {
        match out.last_mut() {
            Some((first, members)) if first.family == series.family => members.push(series),
            _ => out.push((series, vec![series])),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::worker::WorkerStats;

    /// A counter added to `WorkerStats` (and to its log line) must be added
    /// here too, or it would be invisible to metrics and `stats`.
    #[test]
    fn every_logged_counter_is_exported() {
        let line = WorkerStats::default().to_string();
        for key in line
            .split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, _)| k)
        {
            assert!(
                SERIES.iter().any(|s| s.key == key),
                "{key} is not in metrics::catalog::SERIES"
            );
        }
    }

    #[test]
    fn families_are_contiguous_and_uniform() {
        let families = families();
        let mut seen = std::collections::HashSet::new();
        for (first, members) in &families {
            assert!(seen.insert(first.family), "family {} is split", first.family);
            for m in members {
                assert_eq!((m.kind, m.help), (first.kind, first.help), "{}", m.key);
                assert_eq!(m.label.map(|l| l.0), first.label.map(|l| l.0), "{}", m.key);
            }
        }
        let keys: std::collections::HashSet<_> = SERIES.iter().map(|s| s.key).collect();
        assert_eq!(keys.len(), SERIES.len(), "duplicate keys");
    }
}
