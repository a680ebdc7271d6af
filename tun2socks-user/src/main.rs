use std::io::{self, IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;

use tracing::warn;
use tracing_subscriber::EnvFilter;

use tun2socks::cli::{self, Command, Invocation};
use tun2socks::{config, daemon, metrics, notify};

fn main() -> ExitCode {
    keep_large_buffers_lazy();
    let invocation = match cli::parse_from(std::env::args_os()) {
        Ok(invocation) => invocation,
        // --help, --version and usage errors, as clap prints them.
        Err(e) => e.exit(),
    };
    let result = match invocation {
        Invocation::Run(matches) => run(&matches),
        Invocation::Command(command) => subcommand(command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // `tun2socks man | head`: the reader went away, which is fine.
        Err(e)
            if e.downcast_ref::<io::Error>()
                .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe) =>
        {
            ExitCode::SUCCESS
        }
        Err(e) => {
            // One line a user can act on: the whole context chain, no backtrace.
            eprintln!("tun2socks: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(matches: &clap::ArgMatches) -> anyhow::Result<()> {
    let resolved = config::resolve(matches)?;
    init_logging(resolved.cli.verbose, "info");
    for warning in &resolved.warnings {
        warn!("{warning}");
    }
    // Before --netns is entered: see `notify`.
    notify::init();
    daemon::run(resolved.cli)
}

fn subcommand(command: Command) -> anyhow::Result<()> {
    match command {
        Command::CheckConfig { file } => {
            let resolved = config::check_config(&file)?;
            for warning in &resolved.warnings {
                eprintln!("tun2socks: warning: {warning}");
            }
            io::stdout().write_all(resolved.render().as_bytes())?;
            Ok(())
        }
        Command::Stats { watch, netns, device } => {
            init_logging(0, "warn");
            metrics::stats::run(
                Path::new(metrics::CONTROL_DIR),
                watch,
                netns.as_deref(),
                device.as_ref().map(|d| d.name.as_str()),
            )
        }
        Command::Cleanup { netns } => {
            init_logging(0, "info");
            daemon::cleanup(netns.as_deref())
        }
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut cli::command(), "tun2socks", &mut script);
            io::stdout().write_all(&script)?;
            Ok(())
        }
        Command::Man => {
            clap_mangen::Man::new(cli::command()).render(&mut io::stdout())?;
            Ok(())
        }
    }
}

fn init_logging(verbose: u8, quiet: &str) {
    let default = match verbose {
        0 => quiet,
        1 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr)
        .with_ansi(io::stderr().is_terminal());
    // Under systemd stderr goes to the journal, which stamps every line.
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        builder.without_time().init();
    } else {
        builder.init();
    }
}

/// Socket buffers have mappings of their own (`worker/buffers.rs`); other
/// large blocks (UDP scratch, DNS) still come from malloc. glibc raises its
/// mmap threshold each time a large block is freed, after which such
/// blocks come from the heap and calloc must clear them, touching every
/// page. A fixed threshold keeps them in fresh mappings, whose pages cost
/// memory only once data lands in them.
fn keep_large_buffers_lazy() {
    const THRESHOLD: libc::c_int = 128 * 1024;
    // SAFETY: mallopt only changes an allocator tunable; called before any
    // other thread exists.
    unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, THRESHOLD) };
}
