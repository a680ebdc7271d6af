//! Prometheus text exposition (format 0.0.4) of one scrape, encoded by
//! `prometheus-client` from a custom collector: the values are the workers'
//! snapshots of this moment, so nothing is kept between scrapes and nothing
//! on the packet path knows about Prometheus.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::registry::Registry;

use super::catalog::{self, Kind};
use crate::worker::WorkerSnapshot;
use crate::worker::stats::LATENCY_BOUNDS_US;

pub use prometheus_client::encoding::prometheus_text::CONTENT_TYPE;
use tun2socks_ebpf::SteerClass;
use tun2socks_ebpf::xdp::XdpCounter;

use crate::steering::SteerCounters;
use crate::xdp::XdpCounterReader;

/// A counter from the eBPF programs, summed over CPUs.
#[derive(Debug, Clone)]
pub struct EbpfCounter {
    pub name: &'static str,
    pub help: &'static str,
    pub value: u64,
}

/// Where the eBPF per-CPU counters come from: the TUN steering program,
/// or the XDP classifier in host mode.
#[derive(Debug)]
pub enum EbpfCounters {
    Steer(SteerCounters),
    Xdp(XdpCounterReader),
}

/// The eBPF per-CPU counters, read at each scrape and summed over the CPUs:
/// packets the steering program saw, by class, or the XDP classifier's
/// decisions. Exported as `tun2socks_ebpf_<name>_total`.
pub fn ebpf_counters(source: Option<&EbpfCounters>) -> Vec<EbpfCounter> {
    match source {
        None => Vec::new(),
        Some(EbpfCounters::Steer(steering)) => match steering.read() {
            Ok(classes) => classes
                .into_iter()
                .map(|(class, value)| EbpfCounter {
                    name: match class {
                        SteerClass::Tcp => "steered_tcp_packets",
                        SteerClass::Udp => "steered_udp_packets",
                        SteerClass::OtherIp => "steered_other_ip_packets",
                        SteerClass::NotIp => "steered_not_ip_packets",
                    },
                    help: "Packets the TUN steering program placed, by class (summed over CPUs).",
                    value,
                })
                .collect(),
            Err(error) => {
                tracing::warn!(%error, "cannot read the steering program's counters");
                Vec::new()
            }
        },
        Some(EbpfCounters::Xdp(xdp)) => match xdp.read() {
            Ok(counts) => counts
                .iter()
                .map(|(counter, value)| EbpfCounter {
                    name: xdp_counter_name(counter),
                    help: "Frames the XDP classifier redirected to the workers or passed to the kernel, \
                           by decision (summed over CPUs).",
                    value,
                })
                .collect(),
            Err(error) => {
                tracing::warn!(%error, "cannot read the XDP classifier's counters");
                Vec::new()
            }
        },
    }
}

fn xdp_counter_name(counter: XdpCounter) -> &'static str {
    match counter {
        XdpCounter::Redirected => "xdp_redirected_frames",
        XdpCounter::PassNotIp => "xdp_pass_not_ip_frames",
        XdpCounter::PassNotTcpUdp => "xdp_pass_not_tcp_udp_frames",
        XdpCounter::PassIpv6Extension => "xdp_pass_ipv6_extension_frames",
        XdpCounter::PassMulticast => "xdp_pass_multicast_frames",
        XdpCounter::PassLocal => "xdp_pass_local_frames",
        XdpCounter::PassBypass => "xdp_pass_bypass_frames",
        XdpCounter::PassNotRouted => "xdp_pass_not_routed_frames",
        XdpCounter::PassMalformed => "xdp_pass_malformed_frames",
        XdpCounter::RedirectFailed => "xdp_redirect_failed_frames",
    }
}

/// What one scrape exports.
#[derive(Debug)]
pub struct Scrape {
    pub version: &'static str,
    pub ebpf_build_id: String,
    /// Per worker, in worker order; `None` when it did not answer in time.
    pub workers: Vec<Option<WorkerSnapshot>>,
    pub ebpf: Vec<EbpfCounter>,
}

impl Scrape {
    pub fn encode(self) -> String {
        let mut registry = Registry::with_prefix("tun2socks");
        registry.register_collector(Box::new(self));
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &registry).expect("writing to a String");
        out
    }

    fn answered(&self) -> impl Iterator<Item = (String, &WorkerSnapshot)> {
        self.workers
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.as_ref().map(|s| (i.to_string(), s)))
    }
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut info = encoder.encode_descriptor(
            "build_info",
            "Version and eBPF object build id of the running daemon (always 1).",
            None,
            MetricType::Gauge,
        )?;
        let labels = [("version", self.version), ("ebpf", self.ebpf_build_id.as_str())];
        info.encode_family(&labels)?.encode_gauge(&1i64)?;

        let mut up = encoder.encode_descriptor(
            "worker_up",
            "Whether the worker answered this scrape's snapshot request in time (its series are missing if not).",
            None,
            MetricType::Gauge,
        )?;
        for (i, snapshot) in self.workers.iter().enumerate() {
            let worker = i.to_string();
            up.encode_family(&[("worker", worker.as_str())])?
                .encode_gauge(&i64::from(snapshot.is_some()))?;
        }

        for (first, members) in catalog::families() {
            let metric_type = match first.kind {
                Kind::Counter => MetricType::Counter,
                Kind::Gauge => MetricType::Gauge,
            };
            let mut family = encoder.encode_descriptor(first.family, first.help, None, metric_type)?;
            for (worker, snapshot) in self.answered() {
                for series in &members {
                    let mut labels = vec![("worker", worker.as_str())];
                    labels.extend(series.label);
                    let value = (series.get)(snapshot);
                    let sample = family.encode_family(&labels)?;
                    match series.kind {
                        Kind::Counter => ConstCounter::new(value).encode(sample)?,
                        Kind::Gauge => {
                            let mut sample = sample;
                            sample.encode_gauge(&value)?;
                        }
                    }
                }
            }
        }

        let mut latency = encoder.encode_descriptor(
            "upstream_connect_seconds",
            "Time to connect a TCP session upstream (proxy handshake included), for the sessions that connected.",
            None,
            MetricType::Histogram,
        )?;
        for (worker, snapshot) in self.answered() {
            let h = &snapshot.stats.connect_latency;
            let buckets: Vec<(f64, u64)> = LATENCY_BOUNDS_US
                .iter()
                .map(|&us| us as f64 / 1e6)
                .chain(std::iter::once(f64::INFINITY))
                .zip(h.buckets)
                .collect();
            latency
                .encode_family(&[("worker", worker.as_str())])?
                .encode_histogram::<NoLabelSet>(h.sum_us as f64 / 1e6, h.count(), &buckets, None)?;
        }

        for counter in &self.ebpf {
            let name = format!("ebpf_{}", counter.name);
            let metric = encoder.encode_descriptor(&name, counter.help, None, MetricType::Counter)?;
            ConstCounter::new(counter.value).encode(metric)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::worker::WorkerStats;

    #[test]
    fn exposition_has_per_worker_series_and_a_histogram() {
        let mut stats = WorkerStats {
            packets_in: 10,
            bytes_in: 1500,
            flows_refused: 2,
            ..Default::default()
        };
        stats.connect_latency.observe(std::time::Duration::from_millis(3));
        let snapshot = WorkerSnapshot {
            stats,
            tcp_sessions: 4,
            udp_sessions: 1,
            tcp_buffer_bytes: 2 << 20,
        };
        let text = Scrape {
            version: "0.1.0",
            ebpf_build_id: "sha256:0011".into(),
            workers: vec![Some(snapshot), None],
            ebpf: vec![EbpfCounter {
                name: "x",
                help: "X.",
                value: 7,
            }],
        }
        .encode();
        for line in [
            "# TYPE tun2socks_bytes_total counter",
            "tun2socks_bytes_total{worker=\"0\",direction=\"in\"} 1500",
            "tun2socks_packets_total{worker=\"0\",direction=\"in\"} 10",
            "tun2socks_tcp_sessions_refused_total{worker=\"0\",reason=\"upstream\"} 2",
            "tun2socks_tcp_sessions{worker=\"0\"} 4",
            "tun2socks_tcp_buffer_bytes{worker=\"0\"} 2097152",
            "tun2socks_worker_up{worker=\"1\"} 0",
            "tun2socks_upstream_connect_seconds_bucket{worker=\"0\",le=\"0.0025\"} 0",
            "tun2socks_upstream_connect_seconds_bucket{worker=\"0\",le=\"0.005\"} 1",
            "tun2socks_upstream_connect_seconds_bucket{worker=\"0\",le=\"+Inf\"} 1",
            "tun2socks_upstream_connect_seconds_count{worker=\"0\"} 1",
            "tun2socks_ebpf_x_total 7",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in:\n{text}");
        }
        assert!(
            !text.contains("worker=\"1\",direction"),
            "a silent worker has no series:\n{text}"
        );
    }
}
