//! Helpers shared by the end-to-end tests: running a test in a lab, and the
//! clients they run in `app`.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use lab::process::Process;
use lab::{Daemon, DaemonExit, Lab, Netns};

/// The probe binary cargo built for these tests.
pub fn probe() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_t2s-probe"))
}

/// Runs `body` in a fresh lab with the daemon binary at hand; when it fails,
/// the lab's logs are printed.
pub fn in_lab(body: impl FnOnce(&Lab) -> Result<()>) -> Result<()> {
    Daemon::binary()?;
    in_bare_lab(body)
}

/// [`in_lab`] for tests that do not run the daemon.
pub fn in_bare_lab(body: impl FnOnce(&Lab) -> Result<()>) -> Result<()> {
    let lab = Lab::up()?;
    let result = body(&lab);
    if result.is_err() {
        lab.dump_logs();
    }
    result
}

/// `srv`'s address and a port, as a socket address.
pub fn srv(v6: bool, port: u16) -> SocketAddr {
    SocketAddr::new(lab::topology::addr::srv(v6), port)
}

/// `t2s-probe xfer` from `app`; returns its summary line.
pub fn xfer(lab: &Lab, to: SocketAddr, parallel: usize, size: &str, dir: &str) -> Result<String> {
    xfer_from(lab, lab.app(), to, parallel, size, dir, &[])
}

/// `t2s-probe xfer ... EXTRA...` from `ns`; returns its summary line.
pub fn xfer_from(
    lab: &Lab,
    ns: &Netns,
    to: SocketAddr,
    parallel: usize,
    size: &str,
    dir: &str,
    extra: &[&str],
) -> Result<String> {
    const LIMIT_S: u64 = 150;
    let (to, parallel, limit_s) = (to.to_string(), parallel.to_string(), LIMIT_S.to_string());
    let mut args = vec![
        "xfer",
        "--to",
        &to,
        "--parallel",
        &parallel,
        "--size",
        size,
        "--dir",
        dir,
        "--timeout",
        &limit_s,
    ];
    args.extend_from_slice(extra);
    let limit = Duration::from_secs(LIMIT_S + 10);
    let out = lab.run_in(ns, &probe().to_string_lossy(), &args, limit)?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "t2s-probe {} failed ({}):\n{stdout}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(stdout.trim().to_owned())
}

/// How a `t2s-probe connect` from `app` ended.
#[derive(Debug)]
pub struct Attempt {
    /// `connected`, `refused`, `reset`, `closed`, `timeout` or `error: ...`.
    pub outcome: String,
    pub elapsed: Duration,
}

/// One connect attempt from `app`, waiting up to `hold` after a handshake
/// for a reset.
pub fn connect(lab: &Lab, to: SocketAddr, timeout: Duration, hold: Duration) -> Result<Attempt> {
    let args = [
        "connect",
        "--to",
        &to.to_string(),
        "--timeout-ms",
        &timeout.as_millis().to_string(),
        "--hold-ms",
        &hold.as_millis().to_string(),
    ];
    let limit = timeout + hold + Duration::from_secs(5);
    let out = lab.run_in(lab.app(), &probe().to_string_lossy(), &args, limit)?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let (outcome, elapsed) = stdout
        .trim()
        .rsplit_once(" elapsed_ms=")
        .with_context(|| format!("unexpected t2s-probe connect output {stdout:?}"))?;
    let elapsed = Duration::from_millis(elapsed.parse()?);
    Ok(Attempt {
        outcome: outcome.to_owned(),
        elapsed,
    })
}

/// Outcomes that count as "the application saw a refusal". Invariant 5 asks
/// for `refused` (the SYN answered by a RST); `reset` right after the
/// handshake is tolerated, as the wording allows it.
pub const REFUSALS: [&str; 2] = ["refused", "reset"];

/// Connects to `to` from `app` and expects a refusal well within
/// `connect_timeout` (the daemon's `--connect-timeout`).
pub fn expect_refused(lab: &Lab, to: SocketAddr, connect_timeout: Duration) -> Result<Attempt> {
    let patience = connect_timeout + Duration::from_secs(3);
    let attempt = connect(lab, to, patience, patience)?;
    ensure!(
        REFUSALS.contains(&attempt.outcome.as_str()),
        "connect to {to}: expected a refusal, got {attempt:?}"
    );
    ensure!(
        attempt.elapsed < connect_timeout,
        "connect to {to}: refused only after {:?} (connect timeout {connect_timeout:?})",
        attempt.elapsed
    );
    eprintln!("{to}: {} after {} ms", attempt.outcome, attempt.elapsed.as_millis());
    Ok(attempt)
}

/// The daemon exited 0 and logged one `worker finished` line per worker, each
/// with `no_session_packets=0`.
pub fn expect_clean_exit(exit: &DaemonExit, workers: Option<usize>) -> Result<()> {
    ensure!(
        exit.status.success(),
        "tun2socks exited with {}; log:\n{}",
        exit.status,
        exit.log
    );
    ensure!(
        !exit.workers.is_empty(),
        "no `worker finished` lines in the log:\n{}",
        exit.log
    );
    if let Some(n) = workers {
        ensure!(exit.workers.len() == n, "expected {n} workers, got {:?}", exit.workers);
    }
    for worker in &exit.workers {
        ensure!(
            worker.require("no_session_packets")? == 0,
            "packets reached a worker without state for their flow: {:?}",
            worker.fields
        );
    }
    Ok(())
}

/// A clean exit on `workers` workers, each of which carried at least one
/// flow (steering spread them), and at least `flows` flows in all.
pub fn expect_spread_over_workers(exit: &DaemonExit, workers: usize, flows: u64) -> Result<()> {
    expect_clean_exit(exit, Some(workers))?;
    for worker in &exit.workers {
        ensure!(
            worker.require("flows_accepted")? > 0,
            "a worker carried no flows (steering?): {:?}",
            exit.workers
        );
    }
    let total = exit.total("flows_accepted");
    ensure!(total >= flows, "only {total} flows accepted, {flows} expected");
    Ok(())
}

/// `curl` from `app` to the HTTP server in `srv`; the body must be the lab's.
pub fn expect_hello(lab: &Lab, v6: bool) -> Result<()> {
    let url = lab::servers::hello_url(v6);
    let body = lab.curl(&url)?;
    ensure!(body == lab.hello_body(), "curl {url}: unexpected body {body:?}");
    Ok(())
}

/// `t2s-probe ARGS...` in `app`, running in the background (killed on drop).
pub fn probe_in_background(lab: &Lab, name: &str, args: &[&str]) -> Result<Process> {
    let mut cmd = lab.app().command(&probe().to_string_lossy());
    cmd.args(args);
    Process::spawn(name, cmd, &lab.log_path(name))
}

/// `tun2socks stats --netns <app>`: the table of the running daemon.
pub fn stats_table(lab: &Lab) -> Result<String> {
    let mut cmd = std::process::Command::new(Daemon::binary()?);
    cmd.args(["stats", "--netns", lab.app().name()]);
    lab::process::checked_output(cmd, Duration::from_secs(10))
}

/// The total (last) column of a `tun2socks stats` row.
pub fn stats_total(table: &str, key: &str) -> Result<u64> {
    let row = table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(key))
        .with_context(|| format!("no {key} row in:\n{table}"))?;
    row.split_whitespace()
        .last()
        .with_context(|| format!("short row {row:?}"))?
        .parse()
        .with_context(|| format!("row {row:?}"))
}
