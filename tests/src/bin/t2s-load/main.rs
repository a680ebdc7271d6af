//! `t2s-load`: the benchmark's load generator and server. Every client can go
//! straight to its target (through whatever the routes say: a tunnel, a
//! router) or speak SOCKS5 itself to a proxy (`--socks5`: CONNECT for TCP,
//! UDP ASSOCIATE for UDP), so the same code measures a tunnel and the
//! "kernel SOCKS path" it is compared with.
//!
//! ```text
//! t2s-load serve     --listen [::]:9100                  # TCP and UDP on each address
//! t2s-load tcp       --to 10.0.2.2:9100 [--socks5 10.0.1.2:1080] --streams 8 --dir down --secs 5 [--warmup 1]
//! t2s-load tcp       --to ... --streams 1 --dir up --bytes 1GiB      # a fixed transfer
//! t2s-load udp-rtt   --to ... [--socks5 ...] --secs 5 [--interval-ms 5] [--load-streams 8]
//! t2s-load udp-pps   --to ... [--socks5 ...] --flows 4 --window 32 --size 64 --secs 5
//! t2s-load conn-rate --to ... [--socks5 ...] --concurrency 64 --secs 5 [--echo-timeout-ms 1000]
//! t2s-load hold      --to ... [--socks5 ...] --count 10000 [--hold-secs 120]
//! t2s-load socks-server --listen 0.0.0.0:1080           # SOCKS5 CONNECT, no auth (labs without dante)
//! ```
//!
//! Every client is bounded in time and prints one line of `key=value` fields
//! on stdout, including its own CPU use (`cpu_s`, and `cpu_pct` where 100 is
//! one core busy), so a reader can tell whether the tool was the limit.
//! Errors go to stderr with exit status 1.
//!
//! The TCP protocol: the client's first byte picks what the server does.
//! `S`: discard until EOF, then close. `A` + LEN (u64, big-endian): discard
//! LEN bytes, answer one byte, wait for EOF (an upload's end that needs no
//! half-close along the path). `R`: send zeros until the client goes away. `P`: answer one byte, then close (connection-rate "1-byte echo").
//! `K`: answer one byte, then wait for EOF. No byte at all: wait for EOF (an
//! idle connection). UDP: every datagram is echoed to its sender.

mod conn;
mod pps;
mod serve;
mod socks;
mod socks_server;
mod tcp;
mod udp;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "t2s-load", about = "Load generator and server for the benchmark lab")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// TCP (by first byte) and UDP echo server on each address.
    Serve {
        #[arg(long, required = true)]
        listen: Vec<SocketAddr>,
        /// Runtime threads.
        #[arg(long, default_value_t = 2)]
        threads: usize,
    },
    /// TCP throughput: STREAMS connections sending (up) or receiving (down)
    /// for WARMUP + SECS seconds (only the last SECS count), or a fixed
    /// transfer of BYTES in all (split over the streams).
    Tcp {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        socks5: Option<SocketAddr>,
        #[arg(long, default_value_t = 1)]
        streams: usize,
        #[arg(long, value_enum)]
        dir: tcp::Dir,
        #[arg(long, default_value_t = 5.0)]
        secs: f64,
        #[arg(long, default_value_t = 1.0)]
        warmup: f64,
        /// A fixed transfer instead of a timed one (e.g. 1GiB).
        #[arg(long, value_parser = lab::probe::parse_size)]
        bytes: Option<u64>,
        /// Limit for the whole run, in seconds.
        #[arg(long, default_value_t = 120.0)]
        timeout: f64,
    },
    /// UDP round trips, one datagram at a time every INTERVAL, for SECS
    /// seconds; optionally while LOAD_STREAMS TCP downloads run through the
    /// same path (started LOAD_WARMUP seconds before the first datagram).
    UdpRtt {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        socks5: Option<SocketAddr>,
        #[arg(long, default_value_t = 5.0)]
        secs: f64,
        #[arg(long, default_value_t = 5)]
        interval_ms: u64,
        /// Payload bytes per datagram (at least 12).
        #[arg(long, default_value_t = 64)]
        size: usize,
        /// A datagram unanswered this long is lost (and counts as this long).
        #[arg(long, default_value_t = 1000)]
        loss_ms: u64,
        #[arg(long, default_value_t = 0)]
        load_streams: usize,
        #[arg(long, default_value_t = 1.0)]
        load_warmup: f64,
    },
    /// Small-datagram rate: FLOWS sockets (threads), each keeping WINDOW
    /// datagrams of SIZE bytes in flight to the echo server, for SECS
    /// seconds after WARMUP; prints `pps=`.
    UdpPps {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        socks5: Option<SocketAddr>,
        #[arg(long, default_value_t = 4)]
        flows: usize,
        #[arg(long, default_value_t = 32)]
        window: usize,
        /// Payload bytes per datagram (at least 12).
        #[arg(long, default_value_t = 64)]
        size: usize,
        #[arg(long, default_value_t = 5.0)]
        secs: f64,
        #[arg(long, default_value_t = 0.5)]
        warmup: f64,
    },
    /// Connections per second: CONCURRENCY loops of connect, 1-byte echo,
    /// close (the server closes first), for SECS seconds. Failed connections
    /// are counted (`errors`), not fatal.
    ConnRate {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        socks5: Option<SocketAddr>,
        #[arg(long, default_value_t = 1)]
        concurrency: usize,
        #[arg(long, default_value_t = 5.0)]
        secs: f64,
        /// Runtime threads (1: everything on one core).
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// A connection whose echo (and the server's close) takes longer has failed.
        #[arg(long, default_value_t = 1000)]
        echo_timeout_ms: u64,
    },
    /// Open COUNT idle connections (CONCURRENCY connects at a time), print
    /// `holding n=...`, keep them open for HOLD_SECS (or until killed).
    Hold {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        socks5: Option<SocketAddr>,
        #[arg(long, default_value_t = 10_000)]
        count: usize,
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Limit for opening them all, in seconds.
        #[arg(long, default_value_t = 60.0)]
        open_timeout: f64,
        #[arg(long, default_value_t = 120.0)]
        hold_secs: f64,
    },
    /// A SOCKS5 server (CONNECT only, no authentication) on each address.
    SocksServer {
        #[arg(long, required = true)]
        listen: Vec<SocketAddr>,
        /// Runtime threads.
        #[arg(long, default_value_t = 2)]
        threads: usize,
    },
}

fn main() -> ExitCode {
    raise_nofile_limit();
    let result = match Cli::parse().command {
        Command::Serve { listen, threads } => serve::run(&listen, threads),
        Command::SocksServer { listen, threads } => socks_server::run(&listen, threads),
        Command::Tcp {
            to,
            socks5,
            streams,
            dir,
            secs,
            warmup,
            bytes,
            timeout,
        } => tcp::run(&tcp::Plan {
            path: Path { to, socks5 },
            streams,
            dir,
            secs: secs_f64(secs),
            warmup: secs_f64(warmup),
            bytes,
            timeout: secs_f64(timeout),
        }),
        Command::UdpRtt {
            to,
            socks5,
            secs,
            interval_ms,
            size,
            loss_ms,
            load_streams,
            load_warmup,
        } => udp::run(&udp::Plan {
            path: Path { to, socks5 },
            secs: secs_f64(secs),
            interval: Duration::from_millis(interval_ms),
            size,
            loss: Duration::from_millis(loss_ms),
            load_streams,
            load_warmup: secs_f64(load_warmup),
        }),
        Command::UdpPps {
            to,
            socks5,
            flows,
            window,
            size,
            secs,
            warmup,
        } => pps::run(&pps::Plan {
            path: Path { to, socks5 },
            flows,
            window,
            size,
            secs: secs_f64(secs),
            warmup: secs_f64(warmup),
        }),
        Command::ConnRate {
            to,
            socks5,
            concurrency,
            secs,
            threads,
            echo_timeout_ms,
        } => conn::rate(&conn::RatePlan {
            path: Path { to, socks5 },
            concurrency,
            secs: secs_f64(secs),
            threads,
            echo_timeout: Duration::from_millis(echo_timeout_ms),
        }),
        Command::Hold {
            to,
            socks5,
            count,
            concurrency,
            open_timeout,
            hold_secs,
        } => conn::hold(&conn::HoldPlan {
            path: Path { to, socks5 },
            count,
            concurrency,
            open_timeout: secs_f64(open_timeout),
            hold: secs_f64(hold_secs),
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("t2s-load: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Where a client's traffic goes: to `to`, through the SOCKS5 proxy `socks5`
/// if given.
#[derive(Clone, Copy, Debug)]
pub struct Path {
    pub to: SocketAddr,
    pub socks5: Option<SocketAddr>,
}

/// How long a TCP connect (with its SOCKS handshake) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

impl Path {
    /// A connected TCP stream (SOCKS handshake done), Nagle off.
    pub async fn connect(&self) -> Result<tokio::net::TcpStream> {
        let attempt = async {
            let stream = match self.socks5 {
                Some(proxy) => socks::connect(proxy, self.to).await?,
                None => tokio::net::TcpStream::connect(self.to).await?,
            };
            stream.set_nodelay(true)?;
            anyhow::Ok(stream)
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, attempt).await {
            Ok(result) => result,
            Err(_) => anyhow::bail!("connect to {} timed out after {CONNECT_TIMEOUT:?}", self.describe()),
        }
    }

    /// [`Path::connect`] for blocking code: a blocking std stream.
    pub fn connect_blocking(&self) -> Result<std::net::TcpStream> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let stream = rt.block_on(self.connect())?.into_std()?;
        stream.set_nonblocking(false)?;
        Ok(stream)
    }

    pub fn describe(&self) -> String {
        match self.socks5 {
            Some(proxy) => format!("{} via socks5 {proxy}", self.to),
            None => self.to.to_string(),
        }
    }
}

fn secs_f64(secs: f64) -> Duration {
    Duration::try_from_secs_f64(secs.max(0.0)).unwrap_or(Duration::from_secs(3600))
}

/// This process's user + system CPU time, in seconds.
pub fn cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the struct we pass; zeroed is a valid rusage.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// Soft RLIMIT_NOFILE up to the hard limit (10 000 held connections need it).
fn raise_nofile_limit() {
    // SAFETY: get/setrlimit with a valid struct.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// The `p`-th percentile (0..=100) of sorted values (nearest rank).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}
