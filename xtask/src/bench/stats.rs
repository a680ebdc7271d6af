//! What a run collects (samples per round and what failed) and the
//! statistics quoted from it: medians with min–max over the rounds, and
//! ratios against a baseline taken round by round.

use serde::{Deserialize, Serialize};

use super::impls::Variant;

/// Every figure the benchmark produces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    TcpUp1,
    TcpUp8,
    TcpDown1,
    TcpDown8,
    UdpIdleP50,
    UdpIdleP99,
    UdpLoadedP50,
    UdpLoadedP99,
    /// Datagrams lost while loaded (percent of those sent).
    UdpLoadedLoss,
    /// What the 8 downloads moved meanwhile.
    UdpLoadGbit,
    /// Small datagrams echoed per second (`t2s-load udp-pps`).
    UdpPps,
    ConnSeq,
    /// Connections that failed (percent of all tried), sequential.
    ConnSeqFailed,
    Conn64,
    /// Connections that failed (percent of all tried), 64 in flight.
    Conn64Failed,
    /// The load tool's own CPU while generating 64 in flight (100 = one core).
    Conn64ToolCpu,
    RssPerConn,
    CpuPerGb,
    /// dante's CPU seconds per GB over the same fixed transfer.
    DanteCpuPerGb,
}

/// The groups of measurements `--only` can pick.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Group {
    /// RSS per idle connection.
    Memory,
    /// TCP throughput, 1 and 8 streams each way.
    Tcp,
    /// UDP round trips, idle and under load.
    Udp,
    /// Connections per second.
    Conn,
    /// CPU seconds per GB.
    Cpu,
}

impl Metric {
    /// The `--only` group that measures this metric.
    pub fn group(self) -> Group {
        use Metric::*;
        match self {
            TcpUp1 | TcpUp8 | TcpDown1 | TcpDown8 => Group::Tcp,
            UdpIdleP50 | UdpIdleP99 | UdpLoadedP50 | UdpLoadedP99 | UdpLoadedLoss | UdpLoadGbit | UdpPps => Group::Udp,
            ConnSeq | ConnSeqFailed | Conn64 | Conn64Failed | Conn64ToolCpu => Group::Conn,
            RssPerConn => Group::Memory,
            CpuPerGb | DanteCpuPerGb => Group::Cpu,
        }
    }

    pub const ALL: [Metric; 19] = [
        Metric::TcpUp1,
        Metric::TcpUp8,
        Metric::TcpDown1,
        Metric::TcpDown8,
        Metric::UdpIdleP50,
        Metric::UdpIdleP99,
        Metric::UdpLoadedP50,
        Metric::UdpLoadedP99,
        Metric::UdpLoadedLoss,
        Metric::UdpLoadGbit,
        Metric::UdpPps,
        Metric::ConnSeq,
        Metric::ConnSeqFailed,
        Metric::Conn64,
        Metric::Conn64Failed,
        Metric::Conn64ToolCpu,
        Metric::RssPerConn,
        Metric::CpuPerGb,
        Metric::DanteCpuPerGb,
    ];

    pub fn title(self) -> &'static str {
        match self {
            Metric::TcpUp1 => "TCP app→srv, 1 stream",
            Metric::TcpUp8 => "TCP app→srv, 8 streams",
            Metric::TcpDown1 => "TCP srv→app, 1 stream",
            Metric::TcpDown8 => "TCP srv→app, 8 streams",
            Metric::UdpIdleP50 => "UDP RTT p50, idle",
            Metric::UdpIdleP99 => "UDP RTT p99, idle",
            Metric::UdpLoadedP50 => "UDP RTT p50, 8 downloads",
            Metric::UdpLoadedP99 => "UDP RTT p99, 8 downloads",
            Metric::UdpLoadedLoss => "UDP loss, 8 downloads",
            Metric::UdpLoadGbit => "(8 downloads meanwhile)",
            Metric::UdpPps => "UDP 64-byte echoes/s, 4 flows × 32 in flight",
            Metric::ConnSeq => "connections/s, sequential",
            Metric::Conn64 => "connections/s, 64 in flight",
            Metric::ConnSeqFailed => "failed connections, sequential",
            Metric::Conn64Failed => "failed connections, 64 in flight",
            Metric::Conn64ToolCpu => "load tool CPU, 64 in flight",
            Metric::RssPerConn => "RSS per idle TCP connection",
            Metric::CpuPerGb => "CPU s per GB (implementation)",
            Metric::DanteCpuPerGb => "CPU s per GB (dante)",
        }
    }

    pub fn unit(self) -> &'static str {
        match self {
            Metric::TcpUp1 | Metric::TcpUp8 | Metric::TcpDown1 | Metric::TcpDown8 | Metric::UdpLoadGbit => "Gbit/s",
            Metric::UdpIdleP50 | Metric::UdpIdleP99 | Metric::UdpLoadedP50 | Metric::UdpLoadedP99 => "µs",
            Metric::UdpLoadedLoss | Metric::ConnSeqFailed | Metric::Conn64Failed => "%",
            Metric::Conn64ToolCpu => "% of a core",
            Metric::ConnSeq | Metric::Conn64 | Metric::UdpPps => "/s",
            Metric::RssPerConn => "bytes",
            Metric::CpuPerGb | Metric::DanteCpuPerGb => "s/GB",
        }
    }

    /// A value as the table shows it.
    pub fn format(self, value: f64) -> String {
        match self.unit() {
            "Gbit/s" => format!("{value:.2}"),
            "s/GB" => format!("{value:.2}"),
            "%" | "% of a core" => format!("{value:.1}"),
            "bytes" => format!("{:.0}", value),
            _ => format!("{value:.0}"),
        }
    }

    /// Whether an implementation has this figure at all.
    pub fn applies_to(self, variant: &Variant) -> bool {
        use super::impls::Kind;
        match self {
            Metric::RssPerConn | Metric::CpuPerGb => variant.is_tunnel(),
            Metric::DanteCpuPerGb => variant.kind != Kind::Routed,
            _ => true,
        }
    }
}

/// One number from one round.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Sample {
    pub round: usize,
    pub variant: Variant,
    pub metric: Metric,
    pub value: f64,
}

/// A measurement that produced no number, and why.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Failure {
    pub round: usize,
    pub variant: String,
    pub what: String,
    pub error: String,
}

#[derive(Default, Debug, Serialize)]
pub struct Results {
    pub samples: Vec<Sample>,
    pub failures: Vec<Failure>,
}

/// Median and range over rounds.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

impl Summary {
    pub fn of(values: &[f64]) -> Option<Summary> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Summary {
            median,
            min: v[0],
            max: v[n - 1],
            n,
        })
    }
}

impl Results {
    pub fn add(&mut self, round: usize, variant: Variant, metric: Metric, value: f64) {
        self.samples.push(Sample {
            round,
            variant,
            metric,
            value,
        });
    }

    pub fn fail(&mut self, round: usize, variant: &Variant, what: &str, error: &anyhow::Error) {
        let error = format!("{error:#}");
        eprintln!("  FAILED {what}: {}", error.lines().next().unwrap_or(""));
        self.failures.push(Failure {
            round,
            variant: variant.label(),
            what: what.to_owned(),
            error,
        });
    }

    fn value(&self, round: usize, variant: &Variant, metric: Metric) -> Option<f64> {
        self.samples
            .iter()
            .find(|s| s.round == round && s.variant == *variant && s.metric == metric)
            .map(|s| s.value)
    }

    pub fn summary(&self, variant: &Variant, metric: Metric) -> Option<Summary> {
        let values: Vec<f64> = self
            .samples
            .iter()
            .filter(|s| s.variant == *variant && s.metric == metric)
            .map(|s| s.value)
            .collect();
        Summary::of(&values)
    }

    /// `variant / base` per round (both measured in that round), summarized.
    pub fn ratio(&self, variant: &Variant, base: &Variant, metric: Metric) -> Option<Summary> {
        let rounds: Vec<usize> = self
            .samples
            .iter()
            .filter(|s| s.variant == *variant && s.metric == metric)
            .map(|s| s.round)
            .collect();
        let ratios: Vec<f64> = rounds
            .into_iter()
            .filter_map(|r| {
                let b = self.value(r, base, metric)?;
                (b != 0.0).then(|| self.value(r, variant, metric).unwrap_or(f64::NAN) / b)
            })
            .collect();
        Summary::of(&ratios)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::impls::Kind;

    #[test]
    fn median_and_range() {
        let s = Summary::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.n), (2.0, 1.0, 3.0, 3));
        let s = Summary::of(&[4.0, 1.0, f64::NAN, 2.0, 3.0]).unwrap();
        assert_eq!((s.median, s.n), (2.5, 4));
        assert!(Summary::of(&[]).is_none());
    }

    #[test]
    fn ratios_pair_rounds() {
        let a = Variant {
            kind: Kind::Tun2socks { workers: 1 },
            mtu: Some(9000),
        };
        let b = Variant {
            kind: Kind::Socks,
            mtu: None,
        };
        let mut r = Results::default();
        r.add(0, a, Metric::TcpUp1, 1.0);
        r.add(0, b, Metric::TcpUp1, 2.0);
        r.add(1, a, Metric::TcpUp1, 3.0);
        r.add(1, b, Metric::TcpUp1, 3.0);
        r.add(2, a, Metric::TcpUp1, 9.0); // no baseline in round 2
        let s = r.ratio(&a, &b, Metric::TcpUp1).unwrap();
        assert_eq!((s.min, s.max, s.n), (0.5, 1.0, 2));
    }
}
