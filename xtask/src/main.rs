//! The developer front door: `cargo xtask build | run | test | bench`.

mod bench;
mod cargo;
mod demo;
mod fuzz;
mod prereqs;
mod signal;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Build, demo and test tun2socks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install missing prerequisites, then build the daemon (and its eBPF programs).
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Build, bring up a namespace lab, show curl and iperf3 through the
    /// tunnel, and keep it running until Ctrl-C.
    Run {
        /// Tear down after the demo instead of waiting for Ctrl-C.
        #[arg(long)]
        once: bool,
    },
    /// Everything CI checks: release build, all tests (end-to-end included),
    /// clippy and rustfmt.
    Test,
    /// Measure tun2socks against the kernel and a peer (tun2proxy) in a
    /// namespace lab; JSON, table and SVG plots into target/bench/<time>/.
    Bench(Box<bench::Options>),
    /// Run each cargo-fuzz target (fuzz/, nightly) for a while (default
    /// 20 s each); installs cargo-fuzz if missing.
    Fuzz(fuzz::Options),
}

fn main() -> ExitCode {
    let result = match Cli::parse().task {
        Task::Build { release } => prereqs::ensure().and_then(|()| cargo::build_daemon(release).map(drop)),
        Task::Run { once } => demo::run(once),
        Task::Test => cargo::test_all(),
        Task::Bench(options) => bench::run(*options),
        Task::Fuzz(options) => fuzz::run(options),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Prints a section header.
pub fn section(title: &str) {
    println!("\n==> {title}");
}
