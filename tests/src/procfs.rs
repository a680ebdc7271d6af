//! What `/proc` tells about a running process: open descriptors, memory,
//! CPU time. For resource checks on the daemon.

use std::fs;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::wait::poll;

/// Open file descriptors of `pid`.
pub fn fd_count(pid: u32) -> Result<usize> {
    let dir = format!("/proc/{pid}/fd");
    Ok(fs::read_dir(&dir).with_context(|| format!("listing {dir}"))?.count())
}

/// What the open descriptors of `pid` are (`socket:[...]`, `anon_inode:...`,
/// paths), sorted: for failure messages.
pub fn fd_targets(pid: u32) -> Vec<String> {
    let mut targets: Vec<String> = fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter_map(|e| fs::read_link(e.path()).ok())
                .map(|t| t.to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    targets.sort();
    targets
}

/// Waits (up to `timeout`) until `pid` has at most `baseline` descriptors;
/// returns the count it settled at, or fails naming the descriptors.
pub fn wait_fd_count_at_most(pid: u32, baseline: usize, timeout: Duration) -> Result<usize> {
    let what = format!("the descriptors of {pid} to come back to {baseline}");
    poll(&what, timeout, || {
        let n = fd_count(pid)?;
        Ok((n <= baseline).then_some(n))
    })
    .with_context(|| format!("{} descriptors open: {:?}", fd_count(pid).unwrap_or(0), fd_targets(pid)))
}

/// A `kB` field of `/proc/PID/status` (`VmRSS`, `VmHWM`, ...), in KiB.
pub fn status_kib(pid: u32, field: &str) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    text.lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no {field} in {path}"))
}

/// Resident memory now, in KiB.
pub fn rss_kib(pid: u32) -> Result<u64> {
    status_kib(pid, "VmRSS")
}

/// The largest resident memory so far (high-water mark), in KiB.
pub fn peak_rss_kib(pid: u32) -> Result<u64> {
    status_kib(pid, "VmHWM")
}

/// CPU time used so far (user + system, all threads).
pub fn cpu_time(pid: u32) -> Result<Duration> {
    let path = format!("/proc/{pid}/stat");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The command name may contain spaces: fields are counted after its ')'.
    let rest = text.rsplit_once(')').map(|(_, r)| r).context("malformed stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state is field 3 of stat(5), utime 14, stime 15.
    let ticks = |i: usize| -> Result<u64> { Ok(fields.get(i - 3).context("short stat")?.parse()?) };
    let total = ticks(14)? + ticks(15)?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok(Duration::from_millis(total * 1000 / hz))
}

/// How one thread of a process is scheduled (`/proc/PID/task/TID/stat`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadScheduling {
    pub name: String,
    /// `SCHED_OTHER` 0, `SCHED_FIFO` 1, `SCHED_RR` 2, ...
    pub policy: u32,
    /// 1..=99 for the real-time policies, 0 otherwise.
    pub rt_priority: u32,
}

/// The scheduling of every thread of `pid`.
pub fn thread_scheduling(pid: u32) -> Result<Vec<ThreadScheduling>> {
    let dir = format!("/proc/{pid}/task");
    let mut threads = Vec::new();
    for entry in fs::read_dir(&dir).with_context(|| format!("listing {dir}"))? {
        let path = entry?.path().join("stat");
        let Ok(text) = fs::read_to_string(&path) else {
            continue; // the thread ended meanwhile
        };
        let (head, rest) = text.rsplit_once(')').context("malformed stat")?;
        let name = head.split_once('(').map_or("", |(_, n)| n).to_owned();
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // After ')': state is field 3 of stat(5), rt_priority 40, policy 41.
        let field = |i: usize| -> Result<u32> { Ok(fields.get(i - 3).context("short stat")?.parse()?) };
        threads.push(ThreadScheduling {
            name,
            policy: field(41)?,
            rt_priority: field(40)?,
        });
    }
    Ok(threads)
}

/// Resets the peak resident memory (`VmHWM`) of `pid` to its current RSS
/// (`/proc/PID/clear_refs`, value 5), so that a later [`peak_rss_kib`]
/// tells the peak of what came after.
pub fn reset_peak_rss(pid: u32) -> Result<()> {
    let path = format!("/proc/{pid}/clear_refs");
    fs::write(&path, "5").with_context(|| format!("writing 5 to {path}"))
}

/// The descriptor count of `pid` once it has not changed for `quiet` (a
/// daemon opens some lazily, shortly after start); at most `timeout`.
pub fn settled_fd_count(pid: u32, quiet: Duration, timeout: Duration) -> Result<usize> {
    let mut last = (fd_count(pid)?, std::time::Instant::now());
    poll("the descriptor count to settle", timeout, || {
        let n = fd_count(pid)?;
        if n != last.0 {
            last = (n, std::time::Instant::now());
        }
        Ok((last.1.elapsed() >= quiet).then_some(n))
    })
}
