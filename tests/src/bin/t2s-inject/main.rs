//! `t2s-inject`: crafted IP packets from raw sockets, run in the lab's `app`
//! namespace, towards destinations routed into the tunnel.
//!
//! ```text
//! t2s-inject malformed --count 1000000 --seconds 40 --v4 10.0.2.2 --v6 fd00:2::2 --open-port 9000 --closed-port 82
//! t2s-inject syn-flood --to 10.0.2.2:9001 --count 100000 --seconds 20
//! t2s-inject syn-flood --to 10.0.2.2:9000 --src4 192.168.60.2 --count 50 --bad-checksum
//! ```
//!
//! IPv4 goes out of an `IPPROTO_RAW` socket (header included). The kernel
//! fills in the total length and the header checksum of headers of 20 bytes
//! or more, so those two cannot be wrong on the wire; everything else can
//! (IHL, version, options, fragments, protocols, transport headers). IPv6
//! goes out of an `IPPROTO_RAW` IPv6 socket, which includes the header too
//! and leaves it alone: payload lengths, extension header chains and
//! fragment headers are as built. Packets larger than the route's MTU are
//! refused by the kernel (EMSGSIZE), so "oversize" means up to the MTU.
//!
//! The summary (one line per category, then a total line) goes to stdout:
//! `category NAME sent=N failed=M [errno=...]` and
//! `total sent=N failed=M secs=S pps=P`. Exit 1 if fewer than `--count`
//! packets could be sent before `--seconds` passed.

mod packets;
mod raw;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use clap::{Parser, Subcommand};

use packets::{Crafted, Rng};

#[derive(Parser)]
#[command(name = "t2s-inject", about = "Crafted and malformed IP packets from raw sockets")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// A mix of malformed and odd packets (see `packets::malformed`).
    Malformed {
        #[arg(long, default_value_t = 1_000_000)]
        count: u64,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Source addresses: the app's own.
        #[arg(long, default_value = "10.0.1.1")]
        src4: Ipv4Addr,
        #[arg(long, default_value = "fd00:1::1")]
        src6: Ipv6Addr,
        /// Destinations routed into the tunnel.
        #[arg(long, default_value = "10.0.2.2")]
        v4: Ipv4Addr,
        #[arg(long, default_value = "fd00:2::2")]
        v6: Ipv6Addr,
        /// A port the proxy can connect to: the few well-formed-enough SYNs
        /// with bad options go there (bounded by --open-syns).
        #[arg(long, default_value_t = 9000)]
        open_port: u16,
        /// At most this many SYNs to --open-port.
        #[arg(long, default_value_t = 200)]
        open_syns: u64,
        /// A port nobody listens on: other SYN-like packets go there, so a
        /// proxy connect for them fails fast.
        #[arg(long, default_value_t = 82)]
        closed_port: u16,
        /// Largest packet (the tunnel's MTU).
        #[arg(long, default_value_t = 9000)]
        mtu: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Connection requests (well-formed SYNs) from random source ports.
    SynFlood {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, default_value = "10.0.1.1")]
        src4: Ipv4Addr,
        #[arg(long, default_value = "fd00:1::1")]
        src6: Ipv6Addr,
        #[arg(long, default_value_t = 100_000)]
        count: u64,
        #[arg(long, default_value_t = 30)]
        seconds: u64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Send them with a wrong TCP checksum (flipped bits).
        #[arg(long)]
        bad_checksum: bool,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse().command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("t2s-inject: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Per-category tallies.
#[derive(Default)]
struct Tally {
    sent: u64,
    failed: u64,
    errors: BTreeMap<i32, u64>,
}

fn run(command: Command) -> Result<()> {
    let sockets = raw::Sockets::open()?;
    let started = Instant::now();
    let (count, seconds, mut next): (u64, u64, Box<dyn FnMut() -> Crafted>) = match command {
        Command::Malformed {
            count,
            seconds,
            src4,
            src6,
            v4,
            v6,
            open_port,
            open_syns,
            closed_port,
            mtu,
            seed,
        } => {
            let mut mix = packets::Malformed::new(
                packets::Endpoints {
                    src4,
                    src6,
                    dst4: v4,
                    dst6: v6,
                },
                open_port,
                open_syns,
                closed_port,
                mtu,
                Rng::new(seed),
            );
            (count, seconds, Box::new(move || mix.next()))
        }
        Command::SynFlood {
            to,
            src4,
            src6,
            count,
            seconds,
            seed,
            bad_checksum,
        } => {
            let mut rng = Rng::new(seed);
            let category = if bad_checksum { "syn-bad-checksum" } else { "syn-flood" };
            let src: IpAddr = match to.ip() {
                IpAddr::V4(_) => src4.into(),
                IpAddr::V6(_) => src6.into(),
            };
            (
                count,
                seconds,
                Box::new(move || packets::syn(&mut rng, src, to, !bad_checksum, category)),
            )
        }
    };
    let deadline = started + Duration::from_secs(seconds);
    let mut tallies: BTreeMap<&'static str, Tally> = BTreeMap::new();
    let mut sent = 0u64;
    let mut failed = 0u64;
    let mut n = 0u64;
    while sent < count {
        // Checking the clock every packet costs more than the packet.
        if n.is_multiple_of(1024) && Instant::now() >= deadline {
            break;
        }
        n += 1;
        let packet = next();
        let tally = tallies.entry(packet.category).or_default();
        match sockets.send(&packet) {
            Ok(()) => {
                tally.sent += 1;
                sent += 1;
            }
            Err(errno) => {
                tally.failed += 1;
                *tally.errors.entry(errno).or_default() += 1;
                failed += 1;
                // ENOBUFS: the device queue is full; give the reader a moment.
                if errno == libc::ENOBUFS {
                    std::thread::sleep(Duration::from_micros(50));
                }
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    for (name, t) in &tallies {
        let errors: Vec<String> = t
            .errors
            .iter()
            .map(|(e, n)| format!("{}:{n}", errno_name(*e)))
            .collect();
        let errors = if errors.is_empty() {
            String::new()
        } else {
            format!(" errno={}", errors.join(","))
        };
        println!("category {name} sent={} failed={}{errors}", t.sent, t.failed);
    }
    println!(
        "total sent={sent} failed={failed} secs={secs:.2} pps={:.0}",
        sent as f64 / secs.max(1e-9)
    );
    if sent < count {
        bail!("only {sent} of {count} packets sent in {seconds} s ({failed} sends failed)");
    }
    Ok(())
}

fn errno_name(errno: i32) -> String {
    match errno {
        libc::EINVAL => "EINVAL".into(),
        libc::EMSGSIZE => "EMSGSIZE".into(),
        libc::ENOBUFS => "ENOBUFS".into(),
        libc::EPERM => "EPERM".into(),
        libc::ENETUNREACH => "ENETUNREACH".into(),
        libc::EFAULT => "EFAULT".into(),
        other => other.to_string(),
    }
}
