//! `t2s-probe`: verified TCP transfers and connect probes for the lab and for
//! benchmarks. The wire protocol is in `lab::probe`.
//!
//! ```text
//! t2s-probe serve   --listen [::]:9000 [--listen 0.0.0.0:9001]
//! t2s-probe xfer    --to 10.0.2.2:9000 --parallel 32 --size 8MiB --dir both [--timeout 60] [--half-close]
//! t2s-probe connect --to 10.0.2.2:81 --timeout-ms 5000 [--hold-ms 1000]
//! ```

mod connect;
mod serve;
mod xfer;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "t2s-probe", about = "Verified TCP transfers and connect probes")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve downloads and uploads (one thread per connection).
    Serve {
        /// Address to listen on; `[::]:PORT` is dual stack. May be repeated.
        #[arg(long, required = true)]
        listen: Vec<SocketAddr>,
        /// Per-read/write timeout on each connection, in seconds.
        #[arg(long, default_value_t = 60)]
        io_timeout: u64,
        /// Connections served at once; more are closed at accept.
        #[arg(long, default_value_t = 1024)]
        max_connections: usize,
    },
    /// Run parallel transfers, verify each by SHA-256, print a summary.
    /// Exits 1 if any transfer failed or the timeout passed.
    Xfer {
        #[arg(long)]
        to: SocketAddr,
        /// Transfers per direction, run at once.
        #[arg(long, default_value_t = 1)]
        parallel: usize,
        /// Bytes per transfer (e.g. 4096, 64KiB, 8MiB).
        #[arg(long, default_value = "1MiB", value_parser = lab::probe::parse_size)]
        size: u64,
        #[arg(long, value_enum, default_value_t = xfer::Dir::Both)]
        dir: xfer::Dir,
        /// Limit for the whole run, in seconds.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
        /// Uploads send FIN after their data and then read the digest
        /// (half-close). Not every SOCKS server relays that (microsocks
        /// closes both directions).
        #[arg(long)]
        half_close: bool,
    },
    /// One connect attempt. Prints `connected`, `refused`, `reset`, `closed`,
    /// `timeout` or `error: ...`, then `elapsed_ms=N`; exit codes 0, 1, 2, 3, 4, 5.
    Connect {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, default_value_t = 5000)]
        timeout_ms: u64,
        /// After connecting, wait this long for the peer to reset or close the
        /// connection (a refusal that comes after the handshake).
        #[arg(long, default_value_t = 0)]
        hold_ms: u64,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Serve {
            listen,
            io_timeout,
            max_connections,
        } => match serve::run(&listen, Duration::from_secs(io_timeout), max_connections) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("t2s-probe serve: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Xfer {
            to,
            parallel,
            size,
            dir,
            timeout,
            half_close,
        } => xfer::run(xfer::Plan {
            to,
            parallel,
            size,
            dir,
            timeout: Duration::from_secs(timeout),
            half_close,
        }),
        Command::Connect {
            to,
            timeout_ms,
            hold_ms,
        } => connect::run(to, Duration::from_millis(timeout_ms), Duration::from_millis(hold_ms)),
    }
}
