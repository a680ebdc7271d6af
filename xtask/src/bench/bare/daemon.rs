//! The daemon in the bare lab: `tun2socks --netns <app> --proxy
//! socks5://10.0.1.2:1080 --workers N --mtu M`, started from the root
//! namespace (it enters `app` itself, by name), and its per-thread CPU.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use lab::process::Process;

use super::topo::{BareLab, socks_addr};
use crate::bench::testbed::wait_until;

/// How long the daemon may take to log `ready`, and to exit after SIGTERM.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// A running daemon; stopped on drop (SIGTERM, then SIGKILL).
pub struct Daemon {
    process: Process,
}

impl Daemon {
    pub fn start(lab: &BareLab, binary: &Path, workers: u16, mtu: u32, round: usize) -> Result<Daemon> {
        let mut cmd = Command::new(binary);
        cmd.args([
            "--netns",
            lab.app.name(),
            "--proxy",
            &format!("socks5://{}", socks_addr()),
        ])
        .args(["--workers", &workers.to_string(), "--mtu", &mtu.to_string()])
        // TUN mode at every MTU (the default, auto, picks by MTU).
        .args(["--device", "tun://tun2socks0"])
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .env_remove("RUST_BACKTRACE");
        // Libraries packed beside it (`--pack`): libelf, zlib.
        if let Some(lib) = binary.parent().map(|d| d.join("lib")).filter(|l| l.is_dir()) {
            cmd.env("LD_LIBRARY_PATH", lib);
        }
        let log = lab.log_path(&format!("tun2socks-w{workers}-mtu{mtu}-round{}", round + 1));
        let mut daemon = Daemon {
            process: Process::spawn("tun2socks", cmd, &log)?,
        };
        wait_until("tun2socks to log `ready`", READY_TIMEOUT, || {
            daemon.process.ensure_running()?;
            Ok(daemon
                .process
                .log()
                .lines()
                .any(|l| l.split_whitespace().any(|w| w == "ready")))
        })
        .with_context(|| format!("tun2socks log:\n{}", daemon.process.log()))?;
        Ok(daemon)
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Fails, with the log, if the daemon has exited.
    pub fn ensure_running(&mut self) -> Result<()> {
        self.process.ensure_running()
    }

    /// CPU seconds (user + system) of each of its threads, by thread id.
    pub fn thread_cpu(&self) -> Result<BTreeMap<u32, f64>> {
        let dir = format!("/proc/{}/task", self.pid());
        let mut out = BTreeMap::new();
        for entry in fs::read_dir(&dir).with_context(|| format!("reading {dir}"))?.flatten() {
            let Some(tid) = entry.file_name().to_str().and_then(|t| t.parse().ok()) else {
                continue;
            };
            // A thread may end between listing and reading.
            if let Ok(text) = fs::read_to_string(entry.path().join("stat"))
                && let Some(secs) = stat_cpu_seconds(&text)
            {
                out.insert(tid, secs);
            }
        }
        Ok(out)
    }

    /// SIGTERM, and waits for a clean exit (status 0).
    pub fn stop(mut self) -> Result<()> {
        self.process.ensure_running()?;
        self.process.signal(libc::SIGTERM)?;
        let status = self
            .process
            .wait_exit(STOP_TIMEOUT)
            .with_context(|| format!("tun2socks after SIGTERM; log:\n{}", self.process.log()))?;
        if !status.success() {
            bail!(
                "tun2socks exited with {status}; log:\n{}",
                tail(&self.process.log(), 40)
            );
        }
        Ok(())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SIGTERM first, so that it undoes its setup and journal; the
        // process's own drop then kills whatever is left.
        let _ = self.process.terminate(Duration::from_secs(5));
    }
}

/// utime + stime of a `/proc/.../stat` line, in seconds.
fn stat_cpu_seconds(text: &str) -> Option<f64> {
    // The command name may contain anything; the fields after it do not.
    let after = text.rsplit_once(')')?.1;
    let fields: Vec<u64> = after.split_whitespace().map(|f| f.parse().unwrap_or(0)).collect();
    // utime and stime are fields 14 and 15; `after` starts at field 3.
    let ticks = fields.get(11)? + fields.get(12)?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some(ticks as f64 / hz)
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_stat() {
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        let line = "123 (t2s w) 0) S 1 2 3 4 5 6 7 8 9 10 150 50 0 0 20 0 1 0";
        assert_eq!(stat_cpu_seconds(line), Some(200.0 / hz));
    }
}
