//! Starting and stopping the `tun2socks` daemon inside a lab's `app` namespace,
//! and reading what it logged.

use std::collections::BTreeMap;
use std::env;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::Lab;
use crate::process::Process;
use crate::wait::poll;

/// How long the daemon may take to log `ready`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the daemon may take to exit after SIGTERM.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// A running `tun2socks --netns <app> ...`; killed on drop.
pub struct Daemon<'lab> {
    lab: &'lab Lab,
    process: Process,
}

/// How the daemon ended.
#[derive(Debug)]
pub struct DaemonExit {
    pub status: ExitStatus,
    /// One entry per `worker finished` line.
    pub workers: Vec<WorkerStats>,
    /// Everything it wrote to stdout and stderr.
    pub log: String,
}

/// The `key=value` fields of one `worker finished` log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerStats {
    pub fields: BTreeMap<String, String>,
}

impl<'lab> Daemon<'lab> {
    /// The daemon binary: `$TUN2SOCKS_BIN`, else `tun2socks` next to the running
    /// executable (`target/<profile>/deps/<test>` → `target/<profile>/tun2socks`).
    pub fn binary() -> Result<PathBuf> {
        if let Some(path) = env::var_os("TUN2SOCKS_BIN") {
            let path = PathBuf::from(path);
            if !path.is_file() {
                bail!("TUN2SOCKS_BIN={} is not a file", path.display());
            }
            return Ok(path);
        }
        let exe = env::current_exe().context("locating the running executable")?;
        let candidates: Vec<PathBuf> = exe
            .ancestors()
            .skip(1)
            .take(2)
            .map(|dir| dir.join("tun2socks"))
            .collect();
        match candidates.iter().find(|p| p.is_file()) {
            Some(path) => Ok(path.clone()),
            None => bail!(
                "tun2socks binary not found (looked at {candidates:?}); build it with \
                 `cargo build --release -p tun2socks` and set TUN2SOCKS_BIN, or run `cargo xtask test`"
            ),
        }
    }

    /// `tun2socks --netns <app> --proxy PROXY ARGS...` with `RUST_LOG=info`
    /// (or `$T2S_DAEMON_LOG`) and no colours, from [`Daemon::binary`].
    pub fn command(lab: &Lab, proxy: &str, args: &[&str]) -> Result<Command> {
        Ok(Self::command_with(&Self::binary()?, lab, proxy, args))
    }

    /// [`Daemon::command`] for a given binary.
    pub fn command_with(binary: &Path, lab: &Lab, proxy: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new(binary);
        cmd.args(["--netns", lab.app().name(), "--proxy", proxy])
            .args(args)
            .env("RUST_LOG", env::var("T2S_DAEMON_LOG").unwrap_or_else(|_| "info".into()))
            .env("NO_COLOR", "1")
            .env_remove("RUST_BACKTRACE");
        cmd
    }

    /// Starts the daemon and waits (up to [`READY_TIMEOUT`]) for its `ready` line.
    pub fn start(lab: &'lab Lab, proxy: &str, args: &[&str]) -> Result<Self> {
        Self::start_command(lab, Self::command(lab, proxy, args)?)
    }

    /// [`Daemon::start`] for a prepared command (see [`Daemon::command_with`]).
    pub fn start_command(lab: &'lab Lab, cmd: Command) -> Result<Self> {
        let process = Process::spawn("tun2socks", cmd, &lab.log_path("tun2socks"))?;
        let mut daemon = Daemon { lab, process };
        poll("tun2socks to log `ready`", READY_TIMEOUT, || {
            daemon.ensure_running()?;
            Ok(daemon.log().lines().any(is_ready_line).then_some(()))
        })
        .with_context(|| format!("tun2socks log:\n{}", daemon.log()))?;
        Ok(daemon)
    }

    pub fn lab(&self) -> &'lab Lab {
        self.lab
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// What the daemon logged so far (ANSI escapes removed).
    pub fn log(&self) -> String {
        strip_ansi(&self.process.log())
    }

    /// Fails, with the log, if the daemon has exited.
    pub fn ensure_running(&mut self) -> Result<()> {
        self.process.ensure_running()
    }

    /// SIGTERM, then waits (up to [`STOP_TIMEOUT`]) for the exit.
    pub fn stop(self) -> Result<DaemonExit> {
        self.stop_with(libc::SIGTERM)
    }

    /// Sends `signal` (SIGTERM, SIGINT), then waits (up to [`STOP_TIMEOUT`])
    /// for the exit.
    pub fn stop_with(mut self, signal: i32) -> Result<DaemonExit> {
        self.ensure_running()?;
        self.process.signal(signal)?;
        let status = self
            .process
            .wait_exit(STOP_TIMEOUT)
            .with_context(|| format!("tun2socks after signal {signal}; log:\n{}", self.log()))?;
        Ok(DaemonExit::new(status, self.log()))
    }
}

/// Runs the daemon to completion (for runs expected to fail at start), killing
/// it if it is still running after `timeout`.
pub fn run_to_exit(lab: &Lab, proxy: &str, args: &[&str], timeout: Duration) -> Result<DaemonExit> {
    run_command_to_exit(lab, Daemon::command(lab, proxy, args)?, timeout)
}

/// [`run_to_exit`] for a prepared command (e.g. [`Daemon::command`] wrapped in
/// `setpriv`).
pub fn run_command_to_exit(lab: &Lab, cmd: Command, timeout: Duration) -> Result<DaemonExit> {
    let mut process = Process::spawn("tun2socks", cmd, &lab.log_path("tun2socks"))?;
    let status = process
        .wait_exit(timeout)
        .with_context(|| format!("tun2socks log:\n{}", strip_ansi(&process.log())))?;
    Ok(DaemonExit::new(status, strip_ansi(&process.log())))
}

impl DaemonExit {
    fn new(status: ExitStatus, log: String) -> Self {
        let workers = WorkerStats::parse_log(&log);
        DaemonExit { status, workers, log }
    }

    /// Sum of one counter over all workers (missing counts as 0).
    pub fn total(&self, key: &str) -> u64 {
        self.workers.iter().filter_map(|w| w.get(key)).sum()
    }
}

impl WorkerStats {
    /// Every `worker finished` line of a log.
    pub fn parse_log(log: &str) -> Vec<WorkerStats> {
        log.lines()
            .map(strip_ansi)
            .filter(|line| line.contains("worker finished"))
            .map(|line| WorkerStats {
                fields: key_values(&line),
            })
            .collect()
    }

    /// A numeric field.
    pub fn get(&self, key: &str) -> Option<u64> {
        self.fields.get(key)?.parse().ok()
    }

    /// A numeric field that must be there.
    pub fn require(&self, key: &str) -> Result<u64> {
        self.get(key)
            .with_context(|| format!("worker stats without numeric {key}: {:?}", self.fields))
    }
}

/// `key=value` tokens of a log line (values unquoted).
fn key_values(line: &str) -> BTreeMap<String, String> {
    line.split_whitespace()
        .filter_map(|token| token.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.trim_matches('"').to_owned()))
        .collect()
}

/// Whether a log line announces that the tunnel is up: the word `ready`.
fn is_ready_line(line: &str) -> bool {
    line.split_whitespace().any(|word| word == "ready")
}

/// Removes ANSI escape sequences (`ESC [ ... final-byte`).
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\u{1b}' {
            out.push(c);
            continue;
        }
        if chars.next() == Some('[') {
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) {
                    break;
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_worker_lines_with_and_without_colour() {
        let log = "\
2025-01-01T00:00:00Z  INFO tun2socks: tun2socks ready device=tun2socks0 workers=2
2025-01-01T00:00:09Z  INFO tun2socks::worker: worker finished worker=0 flows_accepted=12 flows_refused=0 packets_in=345 no_session_packets=0
\u{1b}[2m2025\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m worker finished \u{1b}[3mworker\u{1b}[0m\u{1b}[2m=\u{1b}[0m1 \u{1b}[3mflows_accepted\u{1b}[0m\u{1b}[2m=\u{1b}[0m7 extra=\"x y\"
";
        let workers = WorkerStats::parse_log(log);
        assert_eq!(workers.len(), 2);
        assert_eq!(workers[0].get("worker"), Some(0));
        assert_eq!(workers[0].get("packets_in"), Some(345));
        assert_eq!(workers[1].get("worker"), Some(1));
        assert_eq!(workers[1].get("flows_accepted"), Some(7));
        assert_eq!(workers[1].get("no_session_packets"), None);
        assert!(log.lines().any(is_ready_line));
        assert!(!is_ready_line("INFO not-ready-yet already=1"));
    }
}
