//! `cargo xtask bench --soak MINUTES`: one daemon (2 workers, default MTU,
//! via dante, `--dns udp`) under a moderate mixed load for MINUTES: bulk TCP
//! transfers, UDP echo round trips, connection churn and DNS queries to
//! dnsmasq in `srv`, all at once, each as repeated bounded runs with a pause
//! between them. Every run must succeed, the daemon's error counters must
//! stay 0, and its RSS at the end must be within 5 % of its RSS after the
//! warm-up. Writes `soak.json`, `soak.txt` and `rss.csv` into the output
//! directory. See docs/BENCHMARKS.md, "Soak".

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail, ensure};
use lab::process::{Process, output_within};
use lab::servers::{DNS_NAME, DNS_NAME_V4, DNS_NAME_V6, dante_url};
use lab::topology::{addr, udp_error_report};
use lab::{Daemon, Netns};
use serde::Serialize;

use super::testbed::{Fields, Testbed, field, proc_cpu_seconds, proc_rss_bytes, result_line, target, wait_exit};
use super::{DEFAULT_MTU, utc_text};
use crate::{section, signal};

/// The daemon's workers in the soak.
const WORKERS: u16 = 2;
/// How often the daemon's RSS is read.
const SAMPLE_EVERY: Duration = Duration::from_secs(10);
/// How long after the load stops the end RSS is read.
const SETTLE: Duration = Duration::from_secs(5);
/// The end RSS may exceed the RSS after the warm-up by this many percent.
const RSS_LIMIT_PCT: u64 = 5;
/// Bytes of one TCP transfer (split over 2 streams), alternately down and up.
const TCP_BYTES: u64 = 32 << 20;
/// A UDP echo or a connection's 1-byte echo that takes longer than this has
/// failed. The benchmark's 1 s is a latency bound; the soak checks that
/// everything arrives, on a machine that may be shared (its two cores also run
/// dante, the servers and the clients), so it allows for scheduling stalls.
const LATE_MS: u64 = 5000;
/// Error messages kept in full (the count goes on).
const KEPT_ERRORS: usize = 100;

/// Counters of the daemon (`worker finished` lines, summed over workers)
/// that must stay 0. Under this load every target is reachable, dante
/// accepts everything, the session tables are far from full and nothing is
/// malformed, so each of these is a fault.
const ERROR_COUNTERS: &[(&str, &str)] = &[
    (
        "flows_refused",
        "TCP connections refused because the upstream connect failed",
    ),
    ("tcp_over_limit", "TCP connections refused at --max-tcp-sessions"),
    ("syn_over_budget", "connection requests dropped at --max-half-open"),
    ("dropped_malformed", "malformed packets from the TUN"),
    ("tun_write_errors", "packets the TUN refused"),
    ("udp_sessions_failed", "UDP associations whose setup failed"),
    ("udp_sessions_evicted", "UDP associations evicted from a full table"),
    ("udp_dropped_out", "datagrams dropped towards the proxy"),
    ("udp_dropped_in", "datagrams from the proxy dropped"),
    ("udp_fragments_dropped", "fragmented SOCKS datagrams dropped"),
    ("dns_failed", "DNS queries that failed in the daemon"),
    ("dns_dropped", "DNS queries the daemon dropped"),
];
// Not errors, though reported: `dropped_unsupported` counts what the kernel
// itself sends into the TUN and this build does not terminate (IPv6 router
// solicitations, MLD reports: ICMPv6), so it grows without any fault; and
// `no_session_packets` counts segments for flows a worker no longer holds,
// which the daemon documents as normal in small numbers after resets, and
// every download here ends with one (the client closes with the server
// still sending, so its kernel resets the connection).

/// The soak's timing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timing {
    /// Load time in all, warm-up included.
    pub duration: Duration,
    /// The first part of `duration`, at the end of which the reference RSS
    /// is read.
    pub warmup: Duration,
}

impl Timing {
    /// Warm-up: 10 % of the duration, at most 2 minutes, at least 15 s.
    pub fn new(minutes: f64) -> Result<Timing> {
        ensure!(
            (0.5..=24.0 * 60.0).contains(&minutes),
            "--soak takes 0.5 to 1440 minutes"
        );
        let duration = Duration::from_secs_f64(minutes * 60.0);
        let warmup = (duration / 10).clamp(Duration::from_secs(15), Duration::from_secs(120));
        Ok(Timing { duration, warmup })
    }
}

/// Whether the end RSS is within [`RSS_LIMIT_PCT`] of the warm-up RSS.
pub fn rss_within_limit(warmup: u64, end: u64) -> bool {
    u128::from(end) * 100 <= u128::from(warmup) * u128::from(100 + RSS_LIMIT_PCT)
}

/// Pass iff the run was not interrupted, both RSS readings exist, the end
/// one is within the limit, and nothing failed. The reasons for a failure.
pub fn verdict(warmup_rss: Option<u64>, end_rss: Option<u64>, errors: u64, interrupted: bool) -> Vec<String> {
    let mut why = Vec::new();
    if interrupted {
        // No end reading is taken then: the RSS is not judged.
        why.push("interrupted".to_owned());
    }
    match (warmup_rss, end_rss) {
        _ if interrupted => {}
        (Some(w), Some(e)) if !rss_within_limit(w, e) => why.push(format!(
            "RSS grew {:+.1} % after the warm-up (limit +{RSS_LIMIT_PCT} %)",
            pct(w, e)
        )),
        (Some(_), Some(_)) => {}
        (None, _) => why.push("no RSS reading at the end of the warm-up".to_owned()),
        (_, None) => why.push("no RSS reading at the end".to_owned()),
    }
    if errors > 0 {
        why.push(format!("{errors} errors"));
    }
    why
}

fn pct(from: u64, to: u64) -> f64 {
    (to as f64 - from as f64) * 100.0 / (from as f64).max(1.0)
}

/// The loads, each run by a thread of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Load {
    /// `t2s-load tcp`: [`TCP_BYTES`] on 2 streams, alternately down and up.
    Tcp,
    /// `t2s-load udp-rtt`: 5 s, one datagram every 10 ms; none may be lost.
    Udp,
    /// `t2s-load conn-rate`: 1 s of sequential connect, echo, close; none
    /// may fail.
    Conn,
    /// `dig` through the tunnel to dnsmasq: A and AAAA, over IPv4 and IPv6.
    Dns,
}

const LOADS: [Load; 4] = [Load::Tcp, Load::Udp, Load::Conn, Load::Dns];

impl Load {
    fn name(self) -> &'static str {
        match self {
            Load::Tcp => "tcp",
            Load::Udp => "udp",
            Load::Conn => "conn",
            Load::Dns => "dns",
        }
    }

    /// What `amount` counts.
    fn unit(self) -> &'static str {
        match self {
            Load::Tcp => "bytes",
            Load::Udp => "datagrams echoed",
            Load::Conn => "connections",
            Load::Dns => "answers",
        }
    }

    /// The pause after each run: keeps the load moderate (two cores run the
    /// daemon, dante, the servers and the clients).
    fn pause(self) -> Duration {
        match self {
            Load::Tcp => Duration::from_secs(2),
            Load::Udp => Duration::from_secs(1),
            Load::Conn => Duration::from_secs(4),
            Load::Dns => Duration::from_millis(500),
        }
    }

    /// One bounded run; what it moved (in [`Load::unit`]), or why it failed.
    fn run_once(self, ctx: &Ctx, i: u64) -> Result<u64> {
        let to = target().to_string();
        match self {
            Load::Tcp => {
                let dir = if i.is_multiple_of(2) { "down" } else { "up" };
                let bytes = TCP_BYTES.to_string();
                let args = [
                    "tcp",
                    "--to",
                    &to,
                    "--streams",
                    "2",
                    "--dir",
                    dir,
                    "--bytes",
                    &bytes,
                    "--timeout",
                    "60",
                ];
                let f = ctx.load_tool(self, &args, Duration::from_secs(70))?;
                let moved = field(&f, "bytes")? as u64;
                ensure!(moved >= TCP_BYTES, "{dir}: {moved} of {TCP_BYTES} bytes moved");
                Ok(moved)
            }
            Load::Udp => {
                // Lost: no echo within LATE_MS (a stall of the shared machine is
                // not a loss).
                let loss_ms = LATE_MS.to_string();
                let args = [
                    "udp-rtt",
                    "--to",
                    &to,
                    "--secs",
                    "5",
                    "--interval-ms",
                    "10",
                    "--loss-ms",
                    &loss_ms,
                ];
                let f = ctx.load_tool(self, &args, Duration::from_secs(30))?;
                let (sent, lost) = (field(&f, "sent")?, field(&f, "lost")?);
                ensure!(
                    lost == 0.0,
                    "{lost} of {sent} datagrams lost ({} late); kernel UDP error counters: {}",
                    field(&f, "late")?,
                    udp_error_report(&ctx.namespaces)
                );
                Ok(field(&f, "received")? as u64)
            }
            Load::Conn => {
                let echo_ms = LATE_MS.to_string();
                let args = [
                    "conn-rate",
                    "--to",
                    &to,
                    "--concurrency",
                    "1",
                    "--secs",
                    "1",
                    "--echo-timeout-ms",
                    &echo_ms,
                ];
                let f = ctx.load_tool(self, &args, Duration::from_secs(30))?;
                let (ok, errors) = (field(&f, "ok")?, field(&f, "errors")?);
                ensure!(
                    errors == 0.0 && ok > 0.0,
                    "{errors} of {} connections failed (the tool's log: {})",
                    ok + errors,
                    ctx.log_text(self).trim()
                );
                Ok(ok as u64)
            }
            Load::Dns => {
                let (server, qtype, expected) = match i % 4 {
                    0 => (addr::srv(false), "A", DNS_NAME_V4),
                    1 => (addr::srv(false), "AAAA", DNS_NAME_V6),
                    2 => (addr::srv(true), "A", DNS_NAME_V4),
                    _ => (addr::srv(true), "AAAA", DNS_NAME_V6),
                };
                let at = format!("@{server}");
                let args = [
                    at.as_str(),
                    DNS_NAME,
                    qtype,
                    "+short",
                    "+notcp",
                    "+time=3",
                    "+tries=2",
                    "+nocookie",
                ];
                let mut cmd = ctx.app.command("dig");
                cmd.args(args);
                let shown = format!("dig {}", args.join(" "));
                let out = output_within(cmd, Duration::from_secs(15)).with_context(|| shown.clone())?;
                let stdout = String::from_utf8_lossy(&out.stdout);
                // dig's own retry (same socket, so the same UDP session) is
                // what any resolver does; an answer after it counts, and is
                // tallied apart. Anything else is a failure.
                let (notes, answer): (Vec<&str>, Vec<&str>) =
                    stdout.lines().partition(|l| l.starts_with(";; communications error"));
                ensure!(
                    out.status.success() && answer == [expected],
                    "{shown}: expected {expected}, got {:?} ({})",
                    stdout.trim(),
                    out.status
                );
                if !notes.is_empty() {
                    ctx.dns_retried.fetch_add(1, Ordering::Relaxed);
                }
                Ok(1)
            }
        }
    }
}

/// What the load threads share: where to run, and the tallies.
struct Ctx<'a> {
    app: &'a Netns,
    /// app, proxy, srv: for the kernel's UDP error counters.
    namespaces: [&'a Netns; 3],
    tool: &'a Path,
    /// One log per load, rewritten by each run.
    log_dir: PathBuf,
    started: Instant,
    stop: AtomicBool,
    tallies: Mutex<BTreeMap<Load, Tally>>,
    errors: Mutex<Errors>,
    /// DNS queries answered only after dig's own retry.
    dns_retried: AtomicU64,
}

#[derive(Debug, Default, Clone, Copy, Serialize)]
struct Tally {
    runs: u64,
    failed: u64,
    amount: u64,
}

#[derive(Debug, Default)]
struct Errors {
    count: u64,
    kept: Vec<ErrorRecord>,
}

#[derive(Debug, Clone, Serialize)]
struct ErrorRecord {
    at_s: f64,
    source: String,
    message: String,
}

impl Ctx<'_> {
    fn log_path(&self, load: Load) -> PathBuf {
        self.log_dir.join(format!("soak-{}.log", load.name()))
    }

    fn log_text(&self, load: Load) -> String {
        fs::read_to_string(self.log_path(load)).unwrap_or_default()
    }

    /// `t2s-load ARGS...` in `app`, bounded; the fields of its result line.
    fn load_tool(&self, load: Load, args: &[&str], limit: Duration) -> Result<Fields> {
        let mut cmd = self.app.command(&self.tool.to_string_lossy());
        cmd.args(args);
        let shown = format!("t2s-load {}", args.join(" "));
        let mut tool = Process::spawn("t2s-load", cmd, &self.log_path(load))?;
        let status = wait_exit(&mut tool, limit).with_context(|| shown.clone())?;
        let log = tool.log();
        if !status.success() {
            bail!("{shown}: {status}: {}", log.trim());
        }
        // The result line starts with the mode's first word (`conn-rate` → `conn`).
        let kind = args[0].split('-').next().unwrap_or(args[0]);
        result_line(&log, kind).with_context(|| format!("{shown} printed no `{kind}` line:\n{log}"))
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst) || signal::stop_requested()
    }

    fn record_error(&self, source: &str, message: String) {
        let mut errors = self.errors.lock().expect("errors lock");
        errors.count += 1;
        let at_s = self.started.elapsed().as_secs_f64();
        if errors.kept.len() < KEPT_ERRORS {
            eprintln!("soak: error at {at_s:.0} s, {source}: {}", first_line(&message));
            errors.kept.push(ErrorRecord {
                at_s,
                source: source.to_owned(),
                message: message.chars().take(4000).collect(),
            });
        }
    }

    /// Runs `load` until told to stop: run, tally, pause.
    fn drive(&self, load: Load) {
        let mut i = 0;
        while !self.stopping() {
            let result = load.run_once(self, i);
            i += 1;
            // A run cut short by Ctrl-C is not a failure of the daemon.
            if signal::stop_requested() {
                break;
            }
            let failed = result.is_err();
            {
                let mut tallies = self.tallies.lock().expect("tallies lock");
                let tally = tallies.entry(load).or_default();
                tally.runs += 1;
                match &result {
                    Ok(amount) => tally.amount += amount,
                    Err(_) => tally.failed += 1,
                }
            }
            if let Err(e) = result {
                self.record_error(load.name(), format!("run {i}: {e:#}"));
            }
            // After a failure, wait a little longer: a dead daemon would
            // otherwise fill the log with the same error.
            let pause = if failed {
                load.pause().max(Duration::from_secs(2))
            } else {
                load.pause()
            };
            let until = Instant::now() + pause;
            while Instant::now() < until && !self.stopping() {
                sleep(Duration::from_millis(100));
            }
        }
    }

    fn progress(&self) -> String {
        let tallies = self.tallies.lock().expect("tallies lock");
        let errors = self.errors.lock().expect("errors lock").count;
        let mut line = String::new();
        for load in LOADS {
            let t = tallies.get(&load).copied().unwrap_or_default();
            let _ = write!(line, "{} {}", load.name(), t.runs);
            if t.failed > 0 {
                let _ = write!(line, " ({} failed)", t.failed);
            }
            line.push_str(", ");
        }
        let _ = write!(line, "errors {errors}");
        line
    }
}

/// One RSS reading.
#[derive(Debug, Clone, Serialize)]
struct Sample {
    t_s: f64,
    rss_bytes: u64,
    /// "load", "warm-up end" or "end".
    phase: &'static str,
}

#[derive(Debug, Serialize)]
struct Report {
    verdict: &'static str,
    failures: Vec<String>,
    date_utc: String,
    command: String,
    daemon: String,
    daemon_args: Vec<String>,
    minutes: f64,
    load_s: f64,
    warmup_s: f64,
    interrupted: bool,
    loads: BTreeMap<&'static str, LoadReport>,
    rss_warmup_bytes: Option<u64>,
    rss_end_bytes: Option<u64>,
    rss_peak_bytes: u64,
    rss_growth_pct: Option<f64>,
    rss_limit_pct: u64,
    daemon_cpu_pct: Option<f64>,
    /// Summed over the workers, from their `worker finished` lines.
    daemon_counters: BTreeMap<String, u64>,
    /// DNS queries answered after dig's retry (first try timed out).
    dns_retried: u64,
    error_count: u64,
    /// The first [`KEPT_ERRORS`] errors.
    errors: Vec<ErrorRecord>,
    samples: Vec<Sample>,
}

#[derive(Debug, Serialize)]
struct LoadReport {
    runs: u64,
    failed: u64,
    amount: u64,
    unit: &'static str,
}

/// The soak, start to verdict. Fails (exit status 1) unless it passed; the
/// outputs are written either way.
pub fn run(minutes: f64, daemon_bin: &Path, load_tool: &Path, out: Option<PathBuf>) -> Result<()> {
    let timing = Timing::new(minutes)?;
    let out_dir = match out {
        Some(dir) => dir,
        None => crate::cargo::workspace_root()
            .join("target/bench")
            .join(format!("soak-{}", super::utc_stamp())),
    };
    fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    signal::install();
    super::raise_nofile_limit();
    let date_utc = utc_text(SystemTime::now());

    section("lab: app (tun2socks) —veth— proxy (dante :1080) —veth— srv (t2s-load serve :9100, dnsmasq :53)");
    let bed = Testbed::up(load_tool)?;
    bed.lab().start_dnsmasq()?;
    println!("namespaces {0}-app, {0}-proxy, {0}-srv", bed.lab().id());

    let mtu = DEFAULT_MTU.to_string();
    let workers = WORKERS.to_string();
    let daemon_args = ["--workers", &workers, "--mtu", &mtu, "--dns", "udp"];
    let mut cmd = Daemon::command_with(daemon_bin, bed.lab(), &dante_url(false), &daemon_args);
    cmd.env("RUST_LOG", "info");
    let mut daemon = Daemon::start_command(bed.lab(), cmd)?;
    let pid = daemon.pid();
    let path = vec!["--to".to_owned(), target().to_string()];
    bed.wait_for_path("the tunnel", &path, || daemon.ensure_running())?;

    section(&format!(
        "soak: {} of mixed load (warm-up {} s), RSS every {} s",
        duration_text(timing.duration),
        timing.warmup.as_secs(),
        SAMPLE_EVERY.as_secs()
    ));
    let ctx = Ctx {
        app: bed.lab().app(),
        namespaces: [bed.lab().app(), bed.lab().proxy(), bed.lab().srv()],
        tool: load_tool,
        log_dir: bed.lab().dir().to_owned(),
        started: Instant::now(),
        stop: AtomicBool::new(false),
        tallies: Mutex::new(BTreeMap::new()),
        errors: Mutex::new(Errors::default()),
        dns_retried: AtomicU64::new(0),
    };
    let cpu_before = proc_cpu_seconds(pid, false).ok();
    let mut samples = Vec::new();
    let mut warmup_rss = None;
    let mut interrupted = false;
    let mut daemon_died = false;
    std::thread::scope(|scope| {
        for load in LOADS {
            let ctx = &ctx;
            scope.spawn(move || ctx.drive(load));
        }
        let t0 = ctx.started;
        let mut next_sample = t0;
        let mut next_progress = t0 + Duration::from_secs(60);
        loop {
            let now = Instant::now();
            if signal::stop_requested() {
                interrupted = true;
                break;
            }
            if let Err(e) = daemon.ensure_running() {
                ctx.record_error("daemon", format!("the daemon exited during the soak: {e:#}"));
                daemon_died = true;
                break;
            }
            if now >= t0 + timing.duration {
                break;
            }
            let warmup_due = warmup_rss.is_none() && now >= t0 + timing.warmup;
            if warmup_due || now >= next_sample {
                let t_s = now.duration_since(t0).as_secs_f64();
                match proc_rss_bytes(pid) {
                    Ok(rss) => {
                        let phase = if warmup_due { "warm-up end" } else { "load" };
                        samples.push(Sample {
                            t_s,
                            rss_bytes: rss,
                            phase,
                        });
                        if warmup_due {
                            warmup_rss = Some(rss);
                            println!("  {t_s:>6.0} s  RSS {}  (after warm-up)  {}", mib(rss), ctx.progress());
                        }
                    }
                    Err(e) => ctx.record_error("rss", format!("{e:#}")),
                }
                if now >= next_sample {
                    next_sample += SAMPLE_EVERY;
                }
            }
            if now >= next_progress {
                let rss = samples.last().map_or(0, |s| s.rss_bytes);
                let t_s = now.duration_since(t0).as_secs_f64();
                println!("  {t_s:>6.0} s  RSS {}  {}", mib(rss), ctx.progress());
                next_progress += Duration::from_secs(60);
            }
            sleep(Duration::from_millis(200));
        }
        ctx.stop.store(true, Ordering::SeqCst);
        println!("  stopping the load (each run in progress finishes)");
        // The scope joins the load threads.
    });
    let load_s = ctx.started.elapsed().as_secs_f64();

    // The end reading, once the last connections have closed.
    let mut end_rss = None;
    if !daemon_died && !interrupted {
        sleep(SETTLE);
        match daemon.ensure_running().and_then(|()| proc_rss_bytes(pid)) {
            Ok(rss) => {
                let t_s = ctx.started.elapsed().as_secs_f64();
                samples.push(Sample {
                    t_s,
                    rss_bytes: rss,
                    phase: "end",
                });
                end_rss = Some(rss);
            }
            Err(e) => ctx.record_error("daemon", format!("at the end: {e:#}")),
        }
    }
    let daemon_cpu_pct =
        cpu_before.and_then(|before| Some((proc_cpu_seconds(pid, false).ok()? - before) * 100.0 / load_s.max(1e-9)));

    // Stop the daemon: a clean exit, and its counters.
    let daemon_log_copy = out_dir.join("tun2socks.log");
    let mut counters = BTreeMap::new();
    if daemon_died {
        let _ = fs::write(&daemon_log_copy, daemon.log());
        drop(daemon);
    } else {
        match daemon.stop() {
            Ok(exit) => {
                let _ = fs::write(&daemon_log_copy, &exit.log);
                check_exit(&ctx, &exit, &mut counters);
            }
            Err(e) => ctx.record_error("daemon", format!("stopping it: {e:#}")),
        }
    }
    let dns_retried = ctx.dns_retried.load(Ordering::Relaxed);
    let tallies = ctx.tallies.into_inner().expect("tallies lock");
    let errors = ctx.errors.into_inner().expect("errors lock");
    // Tear the lab down before writing the report.
    drop(bed);
    let failures = verdict(warmup_rss, end_rss, errors.count, interrupted);
    let report = Report {
        verdict: if failures.is_empty() { "pass" } else { "fail" },
        failures,
        date_utc,
        command: std::env::args()
            .skip(1)
            .fold("cargo xtask".to_owned(), |a, b| a + " " + &b),
        daemon: daemon_bin.display().to_string(),
        daemon_args: daemon_args.iter().map(|s| (*s).to_owned()).collect(),
        minutes,
        load_s,
        warmup_s: timing.warmup.as_secs_f64(),
        interrupted,
        loads: LOADS
            .iter()
            .map(|&load| {
                let t = tallies.get(&load).copied().unwrap_or_default();
                let report = LoadReport {
                    runs: t.runs,
                    failed: t.failed,
                    amount: t.amount,
                    unit: load.unit(),
                };
                (load.name(), report)
            })
            .collect(),
        dns_retried,
        rss_warmup_bytes: warmup_rss,
        rss_end_bytes: end_rss,
        rss_peak_bytes: samples.iter().map(|s| s.rss_bytes).max().unwrap_or(0),
        rss_growth_pct: warmup_rss.zip(end_rss).map(|(w, e)| pct(w, e)),
        rss_limit_pct: RSS_LIMIT_PCT,
        daemon_cpu_pct,
        daemon_counters: counters,
        error_count: errors.count,
        errors: errors.kept,
        samples,
    };
    let text = summary(&report);
    section(&format!("soak result ({})", out_dir.display()));
    println!("{text}");
    write_outputs(&out_dir, &report, &text)?;
    if report.verdict != "pass" {
        bail!("soak failed: {}", report.failures.join("; "));
    }
    Ok(())
}

/// The daemon's exit: status 0, one `worker finished` line per worker, no
/// ERROR line, and every counter of [`ERROR_COUNTERS`] 0. The summed
/// counters go into `counters`.
fn check_exit(ctx: &Ctx, exit: &lab::DaemonExit, counters: &mut BTreeMap<String, u64>) {
    if !exit.status.success() {
        ctx.record_error("daemon", format!("exited with {} after SIGTERM", exit.status));
    }
    if exit.workers.len() != usize::from(WORKERS) {
        ctx.record_error(
            "daemon",
            format!("{} `worker finished` lines, expected {WORKERS}", exit.workers.len()),
        );
    }
    for line in exit.log.lines().filter(|l| l.contains(" ERROR ")) {
        ctx.record_error("daemon", format!("logged: {}", line.trim()));
    }
    for worker in &exit.workers {
        for (key, value) in &worker.fields {
            if key != "worker"
                && let Ok(v) = value.parse::<u64>()
            {
                *counters.entry(key.clone()).or_default() += v;
            }
        }
    }
    for (key, what) in ERROR_COUNTERS {
        match counters.get(*key) {
            Some(0) => {}
            Some(n) => ctx.record_error("daemon", format!("{key}={n} ({what})")),
            None if exit.workers.is_empty() => {}
            None => ctx.record_error("daemon", format!("no counter {key} in the `worker finished` lines")),
        }
    }
}

fn summary(r: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "soak: {}", r.verdict.to_uppercase());
    for why in &r.failures {
        let _ = writeln!(s, "  failed: {why}");
    }
    let _ = writeln!(
        s,
        "date: {}; load {:.0} s (warm-up {:.0} s); tun2socks {} via dante, RSS every {} s",
        r.date_utc,
        r.load_s,
        r.warmup_s,
        r.daemon_args.join(" "),
        SAMPLE_EVERY.as_secs()
    );
    let _ = writeln!(s, "loads (runs, failed, moved):");
    for (name, l) in &r.loads {
        let moved = if l.unit == "bytes" {
            format!("{:.1} MiB", l.amount as f64 / f64::from(1 << 20))
        } else {
            format!("{} {}", l.amount, l.unit)
        };
        let _ = writeln!(s, "  {name:<5} {:>6} runs, {:>3} failed, {moved}", l.runs, l.failed);
    }
    let _ = writeln!(
        s,
        "  (dns: {} answered only after dig's retry, its first try timed out after 3 s)",
        r.dns_retried
    );
    let show = |v: Option<u64>| v.map_or("—".to_owned(), mib);
    let _ = writeln!(
        s,
        "RSS: after warm-up {}, end {} ({}; limit +{} %), peak {}",
        show(r.rss_warmup_bytes),
        show(r.rss_end_bytes),
        r.rss_growth_pct.map_or("—".to_owned(), |p| format!("{p:+.2} %")),
        r.rss_limit_pct,
        mib(r.rss_peak_bytes)
    );
    if let Some(cpu) = r.daemon_cpu_pct {
        let _ = writeln!(s, "daemon CPU: {cpu:.1} % of a core on average");
    }
    if !r.daemon_counters.is_empty() {
        let nonzero: Vec<String> = r
            .daemon_counters
            .iter()
            .filter(|(_, v)| **v > 0)
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let _ = writeln!(s, "daemon counters (nonzero, all workers): {}", nonzero.join(" "));
    }
    let _ = writeln!(s, "errors: {}", r.error_count);
    for e in &r.errors {
        let _ = writeln!(s, "  {:>6.0} s {}: {}", e.at_s, e.source, first_line(&e.message));
    }
    if r.error_count > r.errors.len() as u64 {
        let _ = writeln!(s, "  ... and {} more", r.error_count - r.errors.len() as u64);
    }
    s
}

fn write_outputs(dir: &Path, report: &Report, text: &str) -> Result<()> {
    let json = serde_json::to_string_pretty(report)?;
    fs::write(dir.join("soak.json"), json + "\n").context("writing soak.json")?;
    fs::write(dir.join("soak.txt"), text).context("writing soak.txt")?;
    let mut csv = "t_s,rss_bytes,phase\n".to_owned();
    for s in &report.samples {
        let _ = writeln!(csv, "{:.1},{},{}", s.t_s, s.rss_bytes, s.phase);
    }
    fs::write(dir.join("rss.csv"), csv).context("writing rss.csv")?;
    println!("written to {}", dir.display());
    Ok(())
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or("")
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
}

fn duration_text(d: Duration) -> String {
    let s = d.as_secs();
    if s.is_multiple_of(60) {
        format!("{} min", s / 60)
    } else {
        format!("{s} s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_is_a_tenth_within_15_s_and_2_min() {
        let warmup = |m| Timing::new(m).unwrap().warmup.as_secs_f64();
        assert_eq!(warmup(0.5), 15.0);
        assert_eq!(warmup(1.0), 15.0);
        assert_eq!(warmup(5.0), 30.0);
        assert_eq!(warmup(20.0), 120.0);
        assert_eq!(warmup(30.0), 120.0);
        assert_eq!(Timing::new(30.0).unwrap().duration, Duration::from_secs(1800));
        assert!(Timing::new(0.1).is_err());
        assert!(Timing::new(f64::NAN).is_err());
    }

    #[test]
    fn rss_limit_is_5_percent_of_the_warmup_reading() {
        assert!(rss_within_limit(100 << 20, 105 << 20));
        assert!(!rss_within_limit(100 << 20, (105 << 20) + 1));
        assert!(rss_within_limit(100 << 20, 50 << 20));
        assert!(rss_within_limit(u64::MAX, u64::MAX));
    }

    #[test]
    fn verdict_needs_both_readings_no_errors_and_no_interruption() {
        assert!(verdict(Some(1000), Some(1050), 0, false).is_empty());
        assert_eq!(verdict(Some(1000), Some(1051), 0, false).len(), 1);
        assert_eq!(verdict(Some(1000), Some(1000), 1, false), ["1 errors"]);
        assert_eq!(verdict(None, Some(1000), 0, false).len(), 1);
        assert_eq!(verdict(Some(1000), None, 0, false).len(), 1);
        assert_eq!(verdict(Some(1000), None, 2, true), ["interrupted", "2 errors"]);
    }
}
