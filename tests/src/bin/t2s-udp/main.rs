//! `t2s-udp`: UDP servers and clients for the lab: a verified echo, a
//! "whoami" that reports the source endpoint it saw, the endpoint-independent
//! mapping check built on it, and many source ports at once.
//!
//! ```text
//! t2s-udp echo-server   --listen [::]:7000 [--listen ...]
//! t2s-udp whoami-server --listen [::]:7001 [--listen ...]
//! t2s-udp echo-client   --to 10.0.2.2:7000 --count 10000 --max-size 1400 [--window 16] [--timeout 60]
//! t2s-udp eim-check     --to 10.0.2.2:7001 --to 10.0.2.3:7002 [--timeout 10]
//! t2s-udp many-sources  --to 10.0.2.2:7000 --sockets 1000 --first-port 40000 [--batch 20]
//! ```
//!
//! Every client is bounded in time and prints one summary line (`key=value`
//! fields) on stdout.

mod echo;
mod eim;
mod many;
mod server;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "t2s-udp", about = "UDP echo, whoami and mapping checks for the lab")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Send every datagram back to where it came from. `[::]:PORT` is dual
    /// stack, but its replies leave from the address the kernel picks, not
    /// necessarily the one the request went to: on a host with several
    /// addresses, listen on each address.
    EchoServer {
        #[arg(long, required = true)]
        listen: Vec<SocketAddr>,
    },
    /// Answer every datagram with `<its payload> <source address:port>`.
    WhoamiServer {
        #[arg(long, required = true)]
        listen: Vec<SocketAddr>,
    },
    /// Send COUNT numbered datagrams of mixed sizes (at most WINDOW
    /// unanswered at once) to an echo server and verify every reply. Prints
    /// `echo sent=.. received=.. lost=.. corrupt=.. ...`; exits 1 on a corrupt,
    /// duplicate or misaddressed reply, 2 when TIMEOUT ran out first.
    EchoClient {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, default_value_t = 10_000)]
        count: u64,
        /// Smallest payload in bytes (at least the 16-byte header).
        #[arg(long, default_value_t = echo::HEADER_LEN)]
        min_size: usize,
        /// Largest payload in bytes.
        #[arg(long, default_value_t = 1400)]
        max_size: usize,
        /// Datagrams sent and not yet answered (or given up on) at once.
        #[arg(long, default_value_t = 16)]
        window: usize,
        /// A datagram unanswered this long counts as lost (it frees its slot
        /// in the window; a later reply still counts as received).
        #[arg(long, default_value_t = 2000)]
        loss_timeout_ms: u64,
        /// Limit for the whole run, in seconds.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
    /// From one socket (one source port), ask each whoami server which
    /// source endpoint it sees. Exits 0 iff all saw the same one and every
    /// reply came from the address it was sent to.
    EimCheck {
        #[arg(long, required = true, num_args = 1)]
        to: Vec<SocketAddr>,
        /// Limit for the whole check, in seconds.
        #[arg(long, default_value_t = 10)]
        timeout: u64,
    },
    /// From SOCKETS distinct source ports (FIRST_PORT, FIRST_PORT+1, ...), BATCH
    /// at a time, send one datagram each to an echo server and wait for its
    /// echo (resending up to RETRIES times). Exits 0 iff every port got its echo.
    ManySources {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, default_value_t = 1000)]
        sockets: u16,
        #[arg(long, default_value_t = 40_000)]
        first_port: u16,
        #[arg(long, default_value_t = 20)]
        batch: usize,
        /// How long one try waits for the echoes of a batch.
        #[arg(long, default_value_t = 2000)]
        try_timeout_ms: u64,
        #[arg(long, default_value_t = 3)]
        retries: u32,
    },
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::EchoServer { listen } => server::run(&listen, server::Mode::Echo),
        Command::WhoamiServer { listen } => server::run(&listen, server::Mode::Whoami),
        Command::EchoClient {
            to,
            count,
            min_size,
            max_size,
            window,
            loss_timeout_ms,
            timeout,
        } => echo::run(&echo::Plan {
            to,
            count,
            min_size,
            max_size,
            window,
            loss_timeout: Duration::from_millis(loss_timeout_ms),
            timeout: Duration::from_secs(timeout),
        }),
        Command::EimCheck { to, timeout } => eim::run(&to, Duration::from_secs(timeout)),
        Command::ManySources {
            to,
            sockets,
            first_port,
            batch,
            try_timeout_ms,
            retries,
        } => many::run(&many::Plan {
            to,
            sockets,
            first_port,
            batch,
            try_timeout: Duration::from_millis(try_timeout_ms),
            retries,
        }),
    };
    result.unwrap_or_else(|e| {
        eprintln!("t2s-udp: {e:#}");
        ExitCode::from(3)
    })
}

/// An unbound-port UDP socket of `to`'s family.
fn socket_for(to: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let any: SocketAddr = match to {
        SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = std::net::UdpSocket::bind(any)?;
    large_receive_buffer(&socket);
    Ok(socket)
}

/// Receive buffer of a test socket, like dante's in the lab (4 MiB): a
/// window of sixteen 9 KB datagrams (about 256 KB of kernel memory) must not
/// overflow the default 208 KB while the reader waits for its CPU on a busy
/// machine. SO_RCVBUFFORCE (as root) passes `rmem_max`; best effort.
fn large_receive_buffer(socket: &std::net::UdpSocket) {
    use std::os::fd::AsRawFd;
    let size: libc::c_int = 4 << 20;
    for option in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
        // SAFETY: setsockopt reads one c_int we own, on a socket we own.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                option,
                (&raw const size).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            return;
        }
    }
}

/// An IPv4-mapped IPv6 address shown as the IPv4 address it maps.
fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => addr,
        },
        SocketAddr::V4(_) => addr,
    }
}
