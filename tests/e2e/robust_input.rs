//! Issue 6, hostile input from the application side, sent with raw sockets
//! from `app` by `t2s-inject`:
//!
//! * a million malformed and odd packets (truncated headers, bad lengths and
//!   checksums, IPv6 extension-header chains, fragments, zero-length,
//!   oversize, random TCP flags, SYNs with garbage options) while verified
//!   transfers run: the transfers complete, the daemon stays up, its drop
//!   counters grow, its descriptors come back to the idle count, and a
//!   transfer after it works;
//! * a SYN flood of 100 000 connection requests from random ports: the
//!   daemon's memory stays bounded and connections made right after work.
//!
//! The kernel refuses or rewrites some malformed packets before they reach
//! the TUN device (an IPv4 raw socket always gets its total length and
//! header checksum filled in), and drops some when the device queue is
//! full: the daemon's `packets_in` says how many it saw.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use lab::process::Process;
use lab::procfs::{peak_rss_kib, reset_peak_rss, rss_kib, settled_fd_count, wait_fd_count_at_most};
use lab::servers::dante_url;
use lab::topology::port;
use lab::{Daemon, DaemonExit, Lab};

use crate::support::{in_lab, probe, srv, xfer};

fn inject_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_t2s-inject"))
}

/// Runs `t2s-inject ARGS...` in `app` in the background.
fn spawn_inject(lab: &Lab, name: &str, args: &[&str]) -> Result<Process> {
    let mut cmd = lab.app().command(&inject_bin().to_string_lossy());
    cmd.args(args);
    Process::spawn(name, cmd, &lab.log_path(name))
}

/// The counters of a stopped daemon, summed over its workers, that tell
/// what happened to odd input.
const COUNTERS: [&str; 14] = [
    "packets_in",
    "packets_out",
    "dropped_malformed",
    "dropped_unsupported",
    "no_session_packets",
    "flows_accepted",
    "flows_refused",
    "syn_over_budget",
    "tcp_over_limit",
    "tun_write_errors",
    "udp_sessions_opened",
    "udp_datagrams_out",
    "udp_dropped_out",
    "udp_fragments_dropped",
];

fn counters(exit: &DaemonExit) -> String {
    COUNTERS
        .iter()
        .map(|key| format!("{key}={}", exit.total(key)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The daemon's device as the kernel counts it: packets handed to the TUN
/// queues (`tx_packets`) and dropped because a queue was full
/// (`tx_dropped`), read from sysfs inside `app`.
fn tun_tx(lab: &Lab) -> Result<(u64, u64)> {
    let read = |counter: &str| -> Result<u64> {
        let path = format!("/sys/class/net/tun2socks0/statistics/{counter}");
        let out = lab.run_in(lab.app(), "cat", &[&path], Duration::from_secs(5))?;
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .with_context(|| format!("reading {path} in {}", lab.app().name()))
    };
    Ok((read("tx_packets")?, read("tx_dropped")?))
}

/// The injector's `total sent=N ...` line.
fn injected_total(log: &str) -> Option<u64> {
    let line = log.lines().find(|l| l.starts_with("total "))?;
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("sent="))?
        .parse()
        .ok()
}

#[test]
fn a_million_malformed_packets_while_transfers_run() -> Result<()> {
    const PACKETS: u64 = 1_000_000;
    const INJECT_LIMIT_S: u64 = 60;
    in_lab(|lab| {
        lab.start_dante()?;
        lab.start_probe_server(probe())?;
        // UDP sessions the mix opens (from a handful of source ports) end
        // soon after it, so that the descriptors can come back.
        let mut daemon = Daemon::start(lab, &dante_url(false), &["--workers", "2", "--udp-timeout", "3"])?;
        let pid = daemon.pid();
        // Warm-up: descriptors and memory of ordinary use are not the
        // injection's.
        xfer(lab, srv(false, port::PROBE), 4, "256KiB", "both")?;
        let idle = settled_fd_count(pid, Duration::from_millis(500), Duration::from_secs(10))?;
        let rss_before = rss_kib(pid)?;
        let (tx_before, dropped_before) = tun_tx(lab)?;

        let count = PACKETS.to_string();
        let limit = INJECT_LIMIT_S.to_string();
        let closed = port::CLOSED.to_string();
        let open = port::PROBE.to_string();
        let mut inject = spawn_inject(
            lab,
            "inject-malformed",
            &[
                "malformed",
                "--count",
                &count,
                "--seconds",
                &limit,
                "--open-port",
                &open,
                "--closed-port",
                &closed,
            ],
        )?;
        let started = Instant::now();
        let mut rounds = 0;
        let mut slowest = Duration::ZERO;
        // Verified transfers, IPv4 and IPv6 in turn, for as long as the
        // injection runs (at least one).
        while rounds == 0 || inject.try_exit()?.is_none() {
            let v6 = rounds % 2 == 1;
            let round_started = Instant::now();
            let summary = xfer(lab, srv(v6, port::PROBE), 4, "1MiB", "both")
                .with_context(|| format!("transfer {rounds} during the injection"))?;
            let took = round_started.elapsed();
            if took > slowest {
                slowest = took;
                eprintln!(
                    "during injection, round {rounds} (slowest so far), {}: {summary}",
                    if v6 { "IPv6" } else { "IPv4" }
                );
            }
            rounds += 1;
            daemon.ensure_running()?;
            ensure!(
                started.elapsed() < Duration::from_secs(INJECT_LIMIT_S + 30),
                "the injection did not end in time"
            );
        }
        let status = inject.wait_exit(Duration::from_secs(INJECT_LIMIT_S + 10))?;
        let report = inject.log();
        eprintln!("t2s-inject:\n{report}");
        ensure!(status.success(), "t2s-inject failed ({status}):\n{report}");
        let sent = injected_total(&report).context("no total line from t2s-inject")?;
        ensure!(sent >= PACKETS, "only {sent} packets injected");
        let (tx_after, dropped_after) = tun_tx(lab)?;

        daemon.ensure_running()?;
        let summary = xfer(lab, srv(false, port::PROBE), 4, "1MiB", "both").context("transfer after the injection")?;
        eprintln!(
            "after injection: {summary}; {rounds} verified rounds (4 × 1 MiB each way) during it, slowest {slowest:?}"
        );
        let fds = wait_fd_count_at_most(pid, idle, Duration::from_secs(20))
            .context("descriptors after the injection (held SYNs or sessions left over?)")?;
        let rss_after = rss_kib(pid)?;
        let exit = daemon.stop()?;
        ensure!(
            exit.status.success(),
            "tun2socks exited with {}:\n{}",
            exit.status,
            exit.log
        );
        let c = counters(&exit);
        eprintln!(
            "daemon after {sent} injected packets: {c}; descriptors {idle} -> {fds}; RSS {rss_before} -> {rss_after} KiB\n\
             the kernel handed {} packets to the TUN queues during the injection (transfers included) and dropped {} \
             at full queues",
            tx_after - tx_before,
            dropped_after - dropped_before
        );
        for key in ["dropped_malformed", "dropped_unsupported", "no_session_packets"] {
            ensure!(exit.total(key) > 0, "{key} did not grow: {c}");
        }
        ensure!(
            exit.total("packets_in") >= sent / 4,
            "only {} of {sent} injected packets reached the daemon: {c}",
            exit.total("packets_in")
        );
        Ok(())
    })
}

#[test]
fn syn_flood_keeps_memory_bounded() -> Result<()> {
    const SYNS: u64 = 100_000;
    const HALF_OPEN: u64 = 256;
    const WORKERS: u64 = 2;
    // What the flood may add to the daemon's resident memory. Every flood
    // SYN is refused (dante's rule blocks the port), so no connection gets
    // socket buffers: what grows is at most WORKERS × HALF_OPEN held SYNs
    // (a copy of a ~60-byte packet each) with their session tasks and
    // upstream handshakes (well under 4 KiB of user memory each: ~2 MiB in
    // all), the refusal sockets with 1-byte buffers, and allocator and
    // runtime slack. 16 MiB is several times that; a daemon that kept
    // state per SYN (100 000 of them) or per refused flow would exceed it.
    const GROWTH_LIMIT_KIB: u64 = 16 * 1024;
    in_lab(|lab| {
        lab.start_dante()?;
        lab.start_probe_server(probe())?;
        let half_open = HALF_OPEN.to_string();
        let workers = WORKERS.to_string();
        let mut daemon = Daemon::start(
            lab,
            &dante_url(false),
            &[
                "--workers",
                &workers,
                "--max-half-open",
                &half_open,
                "--connect-timeout",
                "3",
            ],
        )?;
        let pid = daemon.pid();
        // Warm-up: the memory of ordinary use is not the flood's.
        xfer(lab, srv(false, port::PROBE), 4, "256KiB", "both")?;
        let rss_before = rss_kib(pid)?;
        reset_peak_rss(pid)?;
        let (tx_before, dropped_before) = tun_tx(lab)?;

        let count = SYNS.to_string();
        let to = srv(false, port::PROBE_BLOCKED).to_string();
        let mut flood = spawn_inject(
            lab,
            "syn-flood",
            &["syn-flood", "--to", &to, "--count", &count, "--seconds", "30"],
        )?;
        let mut max_rss = rss_before;
        let started = Instant::now();
        while flood.try_exit()?.is_none() {
            max_rss = max_rss.max(rss_kib(pid)?);
            ensure!(
                started.elapsed() < Duration::from_secs(45),
                "the flood did not end in time"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let flood_secs = started.elapsed().as_secs_f64();
        let report = flood.log();
        ensure!(
            flood.try_exit()?.is_some_and(|s| s.success()),
            "t2s-inject failed:\n{report}"
        );
        let sent = injected_total(&report).context("no total line from t2s-inject")?;
        ensure!(sent >= SYNS, "only {sent} SYNs sent:\n{report}");

        // Legitimate connections right after the flood.
        let summary =
            xfer(lab, srv(false, port::PROBE), 4, "256KiB", "both").context("transfer right after the flood")?;
        daemon.ensure_running()?;
        let (tx_after, dropped_after) = tun_tx(lab)?;
        // The high-water mark since the reset (the samples may miss a spike).
        let peak = peak_rss_kib(pid)?.max(max_rss);
        let rss_after = rss_kib(pid)?;
        let exit = daemon.stop()?;
        ensure!(
            exit.status.success(),
            "tun2socks exited with {}:\n{}",
            exit.status,
            exit.log
        );
        let c = counters(&exit);
        eprintln!(
            "SYN flood: {sent} SYNs in {flood_secs:.1} s ({} handed to the TUN queues, {} dropped at full \
             queues); RSS {rss_before} KiB before, peak {peak} KiB, {rss_after} KiB after; right after: {summary}\n{c}",
            tx_after - tx_before,
            dropped_after - dropped_before
        );
        ensure!(
            peak <= rss_before + GROWTH_LIMIT_KIB,
            "RSS peaked at {peak} KiB during the flood, {} KiB above the {rss_before} KiB before it \
             (limit {GROWTH_LIMIT_KIB} KiB): {c}",
            peak - rss_before
        );
        ensure!(exit.total("packets_in") > 0, "no SYN reached the daemon: {c}");
        Ok(())
    })
}
