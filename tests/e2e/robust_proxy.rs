//! Issue 6, misbehaving proxies: a SOCKS5 server (`t2s-badproxy`) that
//! refuses, closes mid-handshake, answers garbage, stalls, dies mid-transfer
//! or goes away and comes back. For each, every application connection
//! through the tunnel ends (refused, reset or closed) within the daemon's
//! `--connect-timeout` plus a margin, the daemon keeps serving (the proxy
//! comes back healthy on the same port and verified transfers work), and the
//! daemon's open descriptors return to their idle count.
//!
//! Each test: a good relay on the proxy port, the daemon, one good transfer
//! (warm-up) and the idle descriptor count; then the proxy is restarted in
//! the bad mode for the scenario; then restarted healthy again.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use lab::process::Process;
use lab::procfs::{cpu_time, fd_targets, settled_fd_count, wait_fd_count_at_most};
use lab::servers::socks_url;
use lab::topology::{addr, port};
use lab::{Daemon, Lab};

use crate::support::{Attempt, in_lab, probe, srv, xfer};

/// The daemon's `--connect-timeout` in these tests.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How much later than the connect timeout an application may learn that
/// its connection is over (process start-up, scheduling on 2 cores).
const MARGIN: Duration = Duration::from_millis(1500);
/// How long the descriptors may take to come back to the idle count.
const FD_SETTLE: Duration = Duration::from_secs(15);
/// Where `t2s-badproxy` listens in `proxy`.
const BAD_PORT: u16 = 1090;
/// Application connections per bad scenario, all at once.
const ATTEMPTS: usize = 6;

fn badproxy_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_t2s-badproxy"))
}

/// `t2s-badproxy` on [`BAD_PORT`] of `proxy`, restartable in another mode on
/// the same port.
struct BadProxy<'lab> {
    lab: &'lab Lab,
    url_scheme: &'static str,
    process: Option<Process>,
}

impl<'lab> BadProxy<'lab> {
    fn start(lab: &'lab Lab, mode: &str, extra: &[&str]) -> Result<Self> {
        let mut proxy = BadProxy {
            lab,
            url_scheme: "socks5",
            process: None,
        };
        proxy.restart(mode, extra)?;
        Ok(proxy)
    }

    /// Kills the running server (SIGKILL: its connections close as the
    /// kernel closes them) and starts `mode` on the same port.
    fn restart(&mut self, mode: &str, extra: &[&str]) -> Result<()> {
        self.kill();
        let listen = SocketAddr::new(addr::proxy(false), BAD_PORT).to_string();
        let mut cmd = self.lab.proxy().command(&badproxy_bin().to_string_lossy());
        cmd.args(["--listen", &listen, "--mode", mode]).args(extra);
        let name = format!("badproxy-{mode}");
        self.process = Some(self.lab.spawn_owned_server(&name, cmd, &[BAD_PORT])?);
        Ok(())
    }

    fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
    }

    fn url(&self) -> String {
        socks_url(addr::proxy(false), BAD_PORT, None).replacen("socks5", self.url_scheme, 1)
    }
}

/// Runs one scenario: `bad` runs while the proxy is in `mode`; before and
/// after, the daemon must carry verified transfers and hold no more
/// descriptors than when idle.
fn scenario(mode: &str, extra: &[&str], bad: impl FnOnce(&Lab, &mut BadProxy) -> Result<()>) -> Result<()> {
    in_lab(|lab| {
        lab.start_probe_server(probe())?;
        let mut proxy = BadProxy::start(lab, "relay", &[])?;
        let timeout = CONNECT_TIMEOUT.as_secs().to_string();
        let mut daemon = Daemon::start(lab, &proxy.url(), &["--connect-timeout", &timeout, "--workers", "2"])?;
        let pid = daemon.pid();
        good_transfers(lab).context("warm-up through the healthy proxy")?;
        let baseline = settled_fd_count(pid, Duration::from_millis(500), FD_SETTLE)?;
        eprintln!("daemon pid {pid}: {baseline} descriptors when idle");

        proxy.restart(mode, extra)?;
        bad(lab, &mut proxy).with_context(|| format!("while the proxy was in mode {mode}"))?;
        daemon.ensure_running()?;
        let after_bad = wait_fd_count_at_most(pid, baseline, FD_SETTLE)
            .with_context(|| format!("descriptors after the {mode} scenario (idle: {baseline})"))?;

        proxy.restart("relay", &[])?;
        good_transfers(lab).with_context(|| format!("after the proxy came back from mode {mode}"))?;
        let after_good = wait_fd_count_at_most(pid, baseline, FD_SETTLE)
            .with_context(|| format!("descriptors after the {mode} scenario and a good transfer (idle: {baseline})"))?;
        eprintln!("{mode}: descriptors idle {baseline}, after the scenario {after_bad}, after recovery {after_good}");
        // Not `expect_clean_exit`: after the daemon resets a connection
        // whose proxy died, segments the application had in flight still
        // arrive and count as packets without a session.
        let exit = daemon.stop()?;
        ensure!(
            exit.status.success() && exit.workers.len() == 2,
            "tun2socks did not stop cleanly ({}):\n{}",
            exit.status,
            exit.log
        );
        eprintln!("{mode}: no_session_packets={}", exit.total("no_session_packets"));
        Ok(())
    })
}

/// Verified transfers both ways through the tunnel.
fn good_transfers(lab: &Lab) -> Result<()> {
    let summary = xfer(lab, srv(false, port::PROBE), 4, "256KiB", "both")?;
    eprintln!("good transfers: {summary}");
    Ok(())
}

/// `t2s-probe connect` children started at once from `app`.
fn spawn_connects(lab: &Lab, to: SocketAddr, n: usize, patience: Duration) -> Result<Vec<Child>> {
    (0..n)
        .map(|_| {
            let mut cmd: Command = lab.app().command(&probe().to_string_lossy());
            cmd.args(["connect", "--to", &to.to_string()])
                .args(["--timeout-ms", &patience.as_millis().to_string()])
                .args(["--hold-ms", &patience.as_millis().to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            cmd.spawn().context("starting t2s-probe connect")
        })
        .collect()
}

/// Waits for `t2s-probe connect` children (each bounded by its own
/// timeouts) and parses their outcomes.
fn collect_connects(children: Vec<Child>) -> Result<Vec<Attempt>> {
    children
        .into_iter()
        .map(|child| {
            let out = child.wait_with_output()?;
            let stdout = String::from_utf8_lossy(&out.stdout);
            let (outcome, ms) = stdout
                .trim()
                .rsplit_once(" elapsed_ms=")
                .with_context(|| format!("unexpected t2s-probe output {stdout:?}"))?;
            Ok(Attempt {
                outcome: outcome.to_owned(),
                elapsed: Duration::from_millis(ms.parse()?),
            })
        })
        .collect()
}

/// [`ATTEMPTS`] connections at once through the tunnel: each must end
/// (refused, reset, closed: never connected and left hanging) within the
/// connect timeout plus [`MARGIN`].
fn expect_all_end(lab: &Lab) -> Result<Vec<Attempt>> {
    let to = srv(false, port::PROBE);
    let patience = CONNECT_TIMEOUT + MARGIN + Duration::from_secs(2);
    let attempts = collect_connects(spawn_connects(lab, to, ATTEMPTS, patience)?)?;
    for attempt in &attempts {
        ensure!(
            ["refused", "reset", "closed"].contains(&attempt.outcome.as_str()),
            "a connection to {to} did not end: {attempt:?} (all: {attempts:?})"
        );
        ensure!(
            attempt.elapsed < CONNECT_TIMEOUT + MARGIN,
            "a connection to {to} ended only after {:?} (connect timeout {CONNECT_TIMEOUT:?}, all: {attempts:?})",
            attempt.elapsed
        );
    }
    let slowest = attempts.iter().map(|a| a.elapsed).max().unwrap_or_default();
    eprintln!(
        "{} connections ended, slowest after {slowest:?}: {attempts:?}",
        attempts.len()
    );
    Ok(attempts)
}

#[test]
fn proxy_refuses() -> Result<()> {
    scenario("refuse", &[], |lab, _| {
        let attempts = expect_all_end(lab)?;
        // A SOCKS refusal arrives at once: nothing waits for the timeout.
        ensure!(
            attempts.iter().all(|a| a.elapsed < CONNECT_TIMEOUT),
            "refusals took the connect timeout: {attempts:?}"
        );
        Ok(())
    })
}

#[test]
fn proxy_closes_after_greeting() -> Result<()> {
    scenario("close-after-greeting", &[], |lab, _| expect_all_end(lab).map(drop))
}

#[test]
fn proxy_closes_after_request() -> Result<()> {
    scenario("close-after-request", &[], |lab, _| expect_all_end(lab).map(drop))
}

#[test]
fn proxy_answers_garbage() -> Result<()> {
    scenario("garbage", &[], |lab, _| expect_all_end(lab).map(drop))
}

/// The proxy accepts and never answers: only the connect timeout ends the
/// wait, for every connection at once.
#[test]
fn proxy_stalls() -> Result<()> {
    scenario("stall", &[], |lab, _| {
        let attempts = expect_all_end(lab)?;
        ensure!(
            attempts
                .iter()
                .all(|a| a.elapsed + Duration::from_millis(300) >= CONNECT_TIMEOUT),
            "a stalled handshake ended before the connect timeout: {attempts:?}"
        );
        Ok(())
    })
}

/// `t2s-probe xfer` in the background.
fn spawn_xfer(lab: &Lab, parallel: usize, size: &str, dir: &str, limit_s: u64) -> Result<Child> {
    let mut cmd = lab.app().command(&probe().to_string_lossy());
    cmd.args(["xfer", "--to", &srv(false, port::PROBE).to_string()])
        .args(["--parallel", &parallel.to_string(), "--size", size, "--dir", dir])
        .args(["--timeout", &limit_s.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd.spawn().context("starting t2s-probe xfer")
}

/// Waits for a background transfer that must fail (its proxy died), and
/// within `limit` of `since`.
fn expect_xfer_fails(child: Child, since: Instant, limit: Duration) -> Result<String> {
    let out = child.wait_with_output()?;
    let took = since.elapsed();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        !out.status.success(),
        "transfers succeeded although their proxy died:\n{text}"
    );
    ensure!(
        took < limit,
        "transfers whose proxy died took {took:?} to end (limit {limit:?}):\n{text}"
    );
    Ok(text)
}

/// The proxy relays some bytes of each connection, then resets it (and, in
/// a second round, closes it with a FIN): every transfer fails, promptly.
#[test]
fn proxy_dies_mid_transfer() -> Result<()> {
    scenario("die-mid-transfer", &["--after-bytes", "200000"], |lab, proxy| {
        for fin in [false, true] {
            if fin {
                proxy.restart("die-mid-transfer", &["--after-bytes", "200000", "--fin"])?;
            }
            let started = Instant::now();
            let child = spawn_xfer(lab, 4, "8MiB", "both", 30)?;
            let text = expect_xfer_fails(child, started, CONNECT_TIMEOUT + MARGIN + Duration::from_secs(3))?;
            let how = if fin { "FIN" } else { "reset" };
            eprintln!("proxy {how} mid-transfer, after {:?}:\n{text}", started.elapsed());
        }
        Ok(())
    })
}

/// The proxy process is killed while transfers run, and comes back on the
/// same port: the running transfers end promptly, connections made while
/// it is away are refused promptly, and after it is back they work (the
/// scenario's last step).
#[test]
fn proxy_goes_away_and_comes_back() -> Result<()> {
    scenario("relay", &[], |lab, proxy| {
        // Big enough to be still running at the kill (about 2 Gbit/s here).
        let child = spawn_xfer(lab, 4, "1GiB", "down", 30)?;
        std::thread::sleep(Duration::from_millis(500));
        let killed = Instant::now();
        proxy.kill();
        let text = expect_xfer_fails(child, killed, CONNECT_TIMEOUT + MARGIN)?;
        eprintln!(
            "proxy killed mid-transfer; transfers ended after {:?}:\n{text}",
            killed.elapsed()
        );
        // Nothing listens on the proxy port: the daemon's connect is refused
        // by proxy's kernel, and the application's with it.
        let attempts = expect_all_end(lab)?;
        ensure!(
            attempts
                .iter()
                .all(|a| a.outcome != "closed" && a.elapsed < CONNECT_TIMEOUT),
            "with the proxy gone, connections should be refused at once: {attempts:?}"
        );
        proxy.restart("relay", &[])
    })
}

/// An HTTP CONNECT proxy that sends a status line and then never ends the
/// head: the connection is refused at the connect timeout, and while it
/// waits the daemon must not spin (its CPU time stays small).
#[test]
fn http_proxy_partial_head_does_not_spin() -> Result<()> {
    in_lab(|lab| {
        lab.start_probe_server(probe())?;
        let mut proxy = BadProxy::start(lab, "http-partial-head", &[])?;
        proxy.url_scheme = "http";
        let timeout = CONNECT_TIMEOUT.as_secs().to_string();
        let mut daemon = Daemon::start(lab, &proxy.url(), &["--connect-timeout", &timeout, "--workers", "2"])?;
        let pid = daemon.pid();
        let idle = settled_fd_count(pid, Duration::from_millis(500), FD_SETTLE)?;
        let cpu_before = cpu_time(pid)?;
        let attempts = expect_all_end(lab)?;
        let cpu = cpu_time(pid)? - cpu_before;
        daemon.ensure_running()?;
        eprintln!("partial HTTP head: {attempts:?}; daemon CPU {cpu:?}");
        ensure!(
            cpu < Duration::from_millis(600),
            "the daemon used {cpu:?} of CPU in {CONNECT_TIMEOUT:?} waiting for {ATTEMPTS} proxy answers: \
             it spins instead of waiting"
        );
        wait_fd_count_at_most(pid, idle, FD_SETTLE)?;
        let exit = daemon.stop()?;
        if !exit.status.success() {
            bail!("tun2socks exited with {}; fds {:?}", exit.status, fd_targets(pid));
        }
        Ok(())
    })
}

/// A resolver (here: the proxy itself) answers a DNS-over-TCP query with a
/// 65 535-byte message, the largest the framing allows. It does not fit a
/// UDP datagram: the daemon must drop it and count a failure, not panic.
#[test]
fn oversized_dns_over_tcp_answer_is_dropped() -> Result<()> {
    in_lab(|lab| {
        let _proxy = BadProxy::start(lab, "dns-oversize", &[])?;
        let daemon = Daemon::start(
            lab,
            &_proxy.url(),
            &["--dns", "over-tcp", "--workers", "1", "--connect-timeout", "3"],
        )?;
        let server = format!("@{}", addr::SRV_V4);
        let out = lab.run_in(
            lab.app(),
            "dig",
            &["+tries=1", "+time=3", &server, "www.example.test"],
            Duration::from_secs(10),
        )?;
        eprintln!("dig: {}", String::from_utf8_lossy(&out.stdout).trim());
        let exit = daemon.stop()?;
        ensure!(
            !exit.log.contains("panicked"),
            "the daemon panicked on an oversized DNS answer:\n{}",
            exit.log
        );
        ensure!(
            exit.status.success(),
            "tun2socks exited with {}:\n{}",
            exit.status,
            exit.log
        );
        ensure!(
            exit.total("dns_failed") >= 1,
            "the undeliverable answer was not counted: {:?}",
            exit.workers
        );
        Ok(())
    })
}
