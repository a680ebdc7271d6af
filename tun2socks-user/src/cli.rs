//! The command line: a contract that scripts and tests rely on.
//!
//! `tun2socks --proxy URL ...` runs the daemon (flat flags, as always); a
//! handful of subcommands (`check-config`, `stats`, `cleanup`, `completions`,
//! `man`) sit next to it. [`Cli`] is the daemon's whole configuration: the
//! config file (`--config`, see `crate::config`) has exactly its long flags
//! as keys, and the final [`Cli`] is parsed from the merge of both.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand};
use ipnet::IpNet;
use sha2::{Digest, Sha256};

use crate::dns::DnsMode;
use crate::worker::WorkerPriority;

/// `on` or `off`.
fn parse_on_off(value: &str) -> Result<bool, String> {
    match value {
        "on" => Ok(true),
        "off" => Ok(false),
        other => Err(format!("`{other}` is neither on nor off")),
    }
}
use crate::proxy::ProxyUrl;

pub const DEFAULT_FWMARK: u32 = 0x7432;
pub const DEFAULT_RULE_PRIORITY: u32 = 5208;

/// Where proxy credentials can come from without showing up in `ps`.
pub const PROXY_ENV: &str = "TUN2SOCKS_PROXY";

const AFTER_HELP: &str = "\
The proxy may also come from the environment variable TUN2SOCKS_PROXY, from --proxy-file or from
the config file: a password given with --proxy is visible to every local user (ps).

Examples:
  tun2socks --proxy socks5://10.0.1.2:1080
  tun2socks --proxy socks5://user:pass@[fd00:1::2]:1080 --route 10.0.0.0/8 --bypass 10.0.1.0/24
  tun2socks --proxy http://proxy.lan:3128 --dns over-tcp
  TUN2SOCKS_PROXY=socks5://alice:secret@proxy.lan:1080 tun2socks --metrics 127.0.0.1:9464
  tun2socks --netns app --proxy socks5://proxy.lan:1080 --workers 2
  tun2socks --config /etc/tun2socks/config.toml --workers 4
  ip tuntap add mode tun multi_queue name t2s0 && tun2socks --device tun://t2s0 --no-setup --proxy ...
  tun2socks check-config /etc/tun2socks/config.toml
  tun2socks stats --watch --netns app
  tun2socks cleanup --netns app";

#[derive(Debug, Parser)]
#[command(
    name = "tun2socks",
    version = long_version(),
    about = "Relay every TCP and UDP flow of this host through a SOCKS5 or HTTP proxy (or directly): \
             per-core workers on an eBPF-steered multi-queue TUN",
    after_help = AFTER_HELP
)]
pub struct Cli {
    /// Read settings from this TOML file: its keys are the long flags below (repeatable ones take
    /// arrays); flags given here override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Upstream: socks5://[USER:PASS@]HOST:PORT, http://[USER:PASS@]HOST:PORT (CONNECT, TCP only) or
    /// direct:// (HOST: IPv4, [IPv6] or a name, resolved at start). Also: TUN2SOCKS_PROXY, --proxy-file.
    #[arg(long, value_name = "URL", conflicts_with = "proxy_file")]
    pub proxy: ProxyUrl,

    /// Read the proxy URL from the first line of this file (keeps a password out of argv and logs).
    #[arg(long, value_name = "FILE")]
    pub proxy_file: Option<PathBuf>,

    /// Packet I/O: auto picks the faster of host mode and TUN for the settings (TUN above MTU 3506, where
    /// it measured faster; host mode at or below it; TUN when XDP is unavailable) on tun2socks0;
    /// tun://NAME, a multi-queue TUN device (created, or adopted if made by
    /// `ip tuntap add mode tun multi_queue`); veth://NAME, host mode over AF_XDP: a veth pair NAME /
    /// NAME's peer (NAME + "x") with one queue per worker, the peer served by XDP and AF_XDP sockets;
    /// xdp://IFACE, router mode: the proxied flows of the LAN clients on IFACE (an existing Ethernet
    /// interface) go to the workers over AF_XDP, everything else stays the kernel's (no routes change).
    #[arg(long, value_name = "auto|tun://NAME|veth://NAME|xdp://IFACE", default_value = "auto", value_parser = parse_device)]
    pub device: DeviceSpec,

    /// Worker threads, one TUN queue and one core each [default: online CPUs].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub workers: Option<u16>,

    /// Prefix sent into the tunnel (repeatable) [default: 0.0.0.0/0 and ::/0].
    #[arg(long = "route", value_name = "CIDR")]
    pub routes: Vec<IpNet>,

    /// Prefix never sent into the tunnel, even inside a --route (repeatable).
    #[arg(long = "bypass", value_name = "CIDR")]
    pub bypass: Vec<IpNet>,

    /// Address of the TUN device (repeatable) [default: 198.18.0.1/30 and fd74:3273::1/126].
    #[arg(long = "address", value_name = "CIDR")]
    pub addresses: Vec<IpNet>,

    /// MTU of the TUN device. Larger means fewer packets per byte for the workers.
    #[arg(long, value_name = "N", default_value_t = 9000, value_parser = clap::value_parser!(u32).range(1280..=65535))]
    pub mtu: u32,

    /// TUN offload: on opens the TUN queues with virtio-net headers so that the kernel takes each
    /// TCP write of up to 64 KB as one GSO packet and hands over up to 64 KB of TCP per read (TSO),
    /// checksums left partial. Fewer system calls per byte. off: one packet per read or write, as
    /// before. Only for the TUN device (not veth:// or xdp://).
    #[arg(long, value_name = "on|off", default_value = "on", value_parser = parse_on_off, action = clap::ArgAction::Set)]
    pub tun_offload: bool,

    /// How worker threads compete for their cores. realtime: SCHED_FIFO at the lowest real-time
    /// priority, so a worker runs as soon as a packet arrives instead of waiting behind other
    /// processes on its core (one that keeps its core over 90 % busy drops to normal priority for a
    /// second). auto: real time only while the worker carries UDP (until 1 s after its last
    /// datagram), normal otherwise: real time costs bulk TCP and connection rate on a busy host.
    /// normal: ordinary time sharing. Real time needs CAP_SYS_NICE or RLIMIT_RTPRIO >= 1; without
    /// them the workers say so and run at normal priority.
    #[arg(long, value_name = "auto|realtime|normal", default_value = "auto")]
    pub worker_priority: WorkerPriority,

    /// Firewall mark on upstream sockets; marked traffic never enters the tunnel. Decimal or 0x-hex.
    #[arg(long, value_name = "N", default_value = "0x7432", value_parser = parse_u32)]
    pub fwmark: u32,

    /// Routing table for the tunnel's routes [default: same number as --fwmark].
    #[arg(long, value_name = "N", value_parser = parse_u32)]
    pub table: Option<u32>,

    /// Priority of the first of our policy rules (we use it and the next two).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_RULE_PRIORITY)]
    pub rule_priority: u32,

    /// Do everything inside this network namespace (as named by `ip netns`).
    #[arg(long, value_name = "NAME")]
    pub netns: Option<String>,

    /// Leave addresses, MTU, link state, routes and rules to you (iproute2): only open the device and
    /// run the workers. Upstream sockets still carry --fwmark; keep the device's MTU equal to --mtu.
    #[arg(long)]
    pub no_setup: bool,

    /// Seconds to wait for the proxy to connect a flow before the application gets a reset.
    #[arg(long, value_name = "SECS", default_value_t = 10.0, value_parser = parse_seconds)]
    pub connect_timeout: f64,

    /// Per-connection socket buffer in each direction, in bytes (the TCP window towards the application).
    #[arg(long, value_name = "BYTES", default_value_t = 262_144, value_parser = clap::value_parser!(u32).range(4096..=16_777_216))]
    pub tcp_buffer: u32,

    /// Memory for TCP socket buffers in all, in bytes (split evenly over the workers). Connections get
    /// --tcp-buffer each way while it lasts, then smaller buffers (down to 4 KiB), then a reset.
    #[arg(long, value_name = "BYTES", default_value_t = 1 << 30, value_parser = clap::value_parser!(u64).range(65_536..))]
    pub buffer_memory: u64,

    /// TCP connections in all (split evenly over the workers); more are refused with a reset.
    #[arg(long, value_name = "N", default_value_t = 65_536, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_tcp_sessions: u32,

    /// Seconds without data either way after which a TCP connection is reset (0: never).
    #[arg(long, value_name = "SECS", default_value_t = 7440.0, value_parser = parse_seconds_or_zero)]
    pub tcp_idle_timeout: f64,

    /// Connection requests per worker waiting for their upstream; more are dropped (the client retries).
    #[arg(long, value_name = "N", default_value_t = 4096)]
    pub max_half_open: usize,

    /// Live UDP associations in all (split evenly over the workers); the oldest idle one is evicted when full.
    #[arg(long, value_name = "N", default_value_t = 8192, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_udp_sessions: u32,

    /// Seconds without a datagram either way after which a UDP association ends.
    #[arg(long, value_name = "SECS", default_value_t = 60.0, value_parser = parse_seconds)]
    pub udp_timeout: f64,

    /// DNS handling: udp (through the proxy's UDP association), over-tcp (queries as DNS over TCP
    /// through a SOCKS5 CONNECT, for proxies without UDP), fake-ip (answer A/AAAA locally with fake
    /// addresses and send connections to the proxy by name: no DNS leaves the host).
    #[arg(long, value_name = "MODE", default_value = "udp")]
    pub dns: DnsMode,

    /// Where the fake-ip responder answers, inside the tunnel (repeatable) [default: 198.18.0.2 and fd74:3273::2].
    #[arg(long = "dns-addr", value_name = "IP")]
    pub dns_addrs: Vec<std::net::IpAddr>,

    /// Resolver for the queries the fake-ip responder does not answer itself (asked over TCP through the proxy).
    #[arg(long, value_name = "IP:PORT", default_value = "1.1.1.1:53")]
    pub dns_upstream: std::net::SocketAddr,

    /// Fake-IP pool range (repeatable, one per family) [default: 198.18.0.0/15 and fd74:3273:ffff::/64].
    #[arg(long = "fake-ip-range", value_name = "CIDR")]
    pub fake_ip_ranges: Vec<IpNet>,

    /// On SIGTERM/SIGINT, seconds open connections get to finish before they are reset (a second signal: at once).
    #[arg(long, value_name = "SECS", default_value_t = 5.0, value_parser = parse_seconds)]
    pub shutdown_timeout: f64,

    /// Serve Prometheus metrics on http://ADDR/metrics (inside --netns); loopback only unless
    /// --metrics-allow-remote.
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics: Option<SocketAddr>,

    /// Let --metrics listen on a non-loopback address (the counters reveal traffic patterns).
    #[arg(long)]
    pub metrics_allow_remote: bool,

    /// More log output (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

// The subcommands; without one, `tun2socks` runs the daemon. (A doc comment
// here would replace the program's `about` in --help.)
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate a config file and print the effective configuration (secrets masked).
    CheckConfig {
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Print live counters of a running instance (read from its socket under /run/tun2socks/).
    Stats {
        /// Refresh every second until Ctrl-C.
        #[arg(long)]
        watch: bool,
        /// The instance running in this network namespace (as named by `ip netns`).
        #[arg(long, value_name = "NAME")]
        netns: Option<String>,
        /// The instance of this device, when several run in the namespace.
        #[arg(long, value_name = "tun://NAME|veth://NAME|xdp://IFACE", value_parser = parse_device)]
        device: Option<DeviceSpec>,
    },
    /// Roll back the network setup of instances that died without undoing it (journals in /run/tun2socks/).
    Cleanup {
        /// Clean up inside this network namespace (as named by `ip netns`).
        #[arg(long, value_name = "NAME")]
        netns: Option<String>,
    },
    /// Print a completion script for a shell (e.g. `tun2socks completions bash > /etc/bash_completion.d/tun2socks`).
    Completions {
        #[arg(value_name = "SHELL")]
        shell: clap_complete::Shell,
    },
    /// Print the man page, generated from this command line (`tun2socks man > tun2socks.1`).
    Man,
}

/// What the command line asks for.
#[derive(Debug)]
pub enum Invocation {
    /// Run the daemon; the matches still have to be merged with the config
    /// file (`crate::config::resolve`).
    Run(Box<ArgMatches>),
    Command(Command),
}

/// The whole command line: the daemon's flags (with `--proxy` optional, as
/// it may come from elsewhere) and the subcommands. `--help`, completions
/// and the man page are made from it.
pub fn command() -> clap::Command {
    let daemon = Cli::command()
        .mut_arg("proxy", |arg| arg.required(false))
        .args_conflicts_with_subcommands(true);
    Command::augment_subcommands(daemon)
}

/// Parses `args` (program name first).
pub fn parse_from<I, T>(args: I) -> Result<Invocation, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let matches = command().try_get_matches_from(args)?;
    if matches.subcommand().is_some() {
        return Command::from_arg_matches(&matches).map(Invocation::Command);
    }
    Ok(Invocation::Run(Box::new(matches)))
}

/// `0.1.0 (ebpf sha256:0123456789ab)`: the version and a build id of the
/// embedded eBPF object, so that a bug report names the exact programs.
pub fn long_version() -> &'static str {
    static VERSION: OnceLock<String> = OnceLock::new();
    VERSION.get_or_init(|| format!("{} (ebpf {})", env!("CARGO_PKG_VERSION"), ebpf_build_id()))
}

/// `sha256:` and the first 12 hex digits of the SHA-256 of the embedded eBPF object.
pub fn ebpf_build_id() -> String {
    // Hashed at start-up (microseconds) rather than in build.rs so that the
    // id is of the bytes really linked in.
    let digest = Sha256::digest(crate::steering::OBJECT);
    let hex: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

impl Cli {
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.connect_timeout)
    }

    pub fn tcp_idle_timeout(&self) -> Option<Duration> {
        (self.tcp_idle_timeout > 0.0).then(|| Duration::from_secs_f64(self.tcp_idle_timeout))
    }

    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.shutdown_timeout)
    }

    pub fn udp_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.udp_timeout)
    }

    pub fn table(&self) -> u32 {
        self.table.unwrap_or(self.fwmark)
    }

    pub fn workers(&self) -> usize {
        match self.workers {
            Some(n) => usize::from(n),
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
}

/// How the daemon gets its packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    /// A multi-queue TUN device, one queue per worker.
    Tun,
    /// Host mode: a veth pair we create, its far end served by XDP and one
    /// AF_XDP socket per worker.
    Veth,
    /// Router mode: an existing LAN interface served by XDP and one AF_XDP
    /// socket per worker (per RX queue); no routes or rules change.
    Xdp,
    /// `auto`: host mode or TUN, whichever is faster for the settings
    /// (decided at start, see `daemon::choose_device`).
    Auto,
}

/// `--device`: the kind of device and the name of the interface the
/// host's traffic is routed into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceSpec {
    pub kind: DeviceKind,
    pub name: String,
    /// Chosen by `auto`: host mode falls back to TUN if it cannot start.
    pub chosen: bool,
}

/// The interface `--device auto` uses.
pub const AUTO_DEVICE_NAME: &str = "tun2socks0";

impl DeviceSpec {
    /// In host mode, the name of the veth's far end (the one XDP and the
    /// AF_XDP sockets serve): the device's name with an `x` appended.
    pub fn peer(&self) -> Option<String> {
        match self.kind {
            DeviceKind::Tun | DeviceKind::Xdp | DeviceKind::Auto => None,
            DeviceKind::Veth => Some(format!("{}x", self.name)),
        }
    }
}

impl std::fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = match self.kind {
            DeviceKind::Tun => "tun",
            DeviceKind::Veth => "veth",
            DeviceKind::Xdp => "xdp",
            DeviceKind::Auto => return f.write_str("auto"),
        };
        write!(f, "{scheme}://{}", self.name)
    }
}

pub(crate) fn parse_device(s: &str) -> Result<DeviceSpec, String> {
    let (kind, name) = if s == "auto" {
        (DeviceKind::Auto, AUTO_DEVICE_NAME)
    } else if let Some(name) = s.strip_prefix("tun://") {
        (DeviceKind::Tun, name)
    } else if let Some(name) = s.strip_prefix("veth://") {
        (DeviceKind::Veth, name)
    } else if let Some(name) = s.strip_prefix("xdp://") {
        (DeviceKind::Xdp, name)
    } else {
        return Err(format!("{s:?}: expected auto, tun://NAME, veth://NAME or xdp://IFACE"));
    };
    crate::device::tun::validate_name(name).map_err(|e| e.to_string())?;
    let spec = DeviceSpec {
        kind,
        name: name.to_string(),
        chosen: false,
    };
    // The peer's name must be a valid interface name too.
    if let Some(peer) = spec.peer() {
        crate::device::tun::validate_name(&peer)
            .map_err(|_| format!("{s:?}: the name is too long for its veth peer {peer:?} (at most 14 characters)"))?;
    }
    Ok(spec)
}

fn parse_u32(s: &str) -> Result<u32, String> {
    let parsed = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => s.parse(),
    };
    parsed.map_err(|_| format!("{s:?} is not a 32-bit number (decimal or 0x-hex)"))
}

fn parse_seconds_or_zero(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=86_400.0 * 7.0).contains(&v) => Ok(v),
        _ => Err(format!("{s:?} is not a number of seconds from 0 to 604800")),
    }
}

fn parse_seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v <= 3600.0 => Ok(v),
        _ => Err(format!("{s:?} is not a number of seconds from 0 to 3600")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("tun2socks").chain(args.iter().copied()))
    }

    #[test]
    fn defaults() {
        let cli = parse(&["--proxy", "socks5://10.0.1.2:1080"]).unwrap();
        assert_eq!(cli.device.name, "tun2socks0");
        assert_eq!(cli.device.kind, DeviceKind::Auto);
        assert_eq!(cli.fwmark, DEFAULT_FWMARK);
        assert_eq!(cli.table(), DEFAULT_FWMARK);
        assert!(cli.routes.is_empty());
        assert!(cli.workers() >= 1);
    }

    #[test]
    fn full_contract() {
        let cli = parse(&[
            "--proxy",
            "socks5://u:p@[fd00:1::2]:1080",
            "--device",
            "tun://t0",
            "--workers",
            "2",
            "--route",
            "10.0.0.0/8",
            "--route",
            "fd00::/16",
            "--bypass",
            "10.0.1.0/24",
            "--address",
            "198.18.0.1/30",
            "--mtu",
            "1500",
            "--fwmark",
            "0x100",
            "--netns",
            "app",
        ])
        .unwrap();
        assert_eq!(
            (cli.device.name.as_str(), cli.workers(), cli.mtu, cli.fwmark),
            ("t0", 2, 1500, 256)
        );
        assert_eq!(cli.routes.len(), 2);
        assert_eq!(cli.netns.as_deref(), Some("app"));
    }

    #[test]
    fn veth_devices_name_their_peer() {
        let cli = parse(&["--proxy", "socks5://x:1", "--device", "veth://t2s0"]).unwrap();
        assert_eq!(cli.device.kind, DeviceKind::Veth);
        assert_eq!(cli.device.peer().as_deref(), Some("t2s0x"));
        assert_eq!(cli.device.to_string(), "veth://t2s0");
    }

    #[test]
    fn bad_values_are_errors() {
        assert!(parse(&["--proxy", "ftp://x:1"]).is_err());
        assert!(parse(&["--proxy", "socks5://x:1", "--device", "tap://x"]).is_err());
        assert!(parse(&["--proxy", "socks5://x:1", "--device", "tun://way-too-long-name0"]).is_err());
        assert!(parse(&["--proxy", "socks5://x:1", "--device", "veth://fifteen-chars-0"]).is_err());
        assert!(parse(&["--proxy", "socks5://x:1", "--route", "10.0.0.0/33"]).is_err());
        assert!(parse(&["--proxy", "socks5://x:1", "--workers", "0"]).is_err());
        assert!(parse(&["--proxy", "socks5://x:1", "--mtu", "100"]).is_err());
        assert!(parse(&["--proxy", "socks5://x:1", "--fwmark", "0xzz"]).is_err());
    }
}
