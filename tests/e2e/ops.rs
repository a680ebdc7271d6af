//! Issue 7 (operability): the metrics endpoint during a transfer, `tun2socks
//! stats`, `--no-setup` on a device made by `scripts/tun-iproute2.sh`, a
//! single-queue device refused, an HTTP proxy (tinyproxy) and `direct://`
//! upstream, the systemd unit's capability set, and the workers' scheduling
//! (`--worker-priority`).
//!
//! Adopting a multi-queue device with the daemon's own setup is
//! `teardown::adopted_device_is_left_as_found`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use lab::daemon::run_to_exit;
use lab::process::{Process, checked_output};
use lab::procfs::{ThreadScheduling, thread_scheduling};
use lab::servers::dante_url;
use lab::topology::{addr, port};
use lab::wait::poll;
use lab::{Daemon, Lab, Snapshot};

use crate::support::{
    expect_clean_exit, expect_hello, expect_refused, in_lab, probe, probe_in_background, srv, stats_total, xfer,
};

/// Where the daemon serves metrics inside `app`.
const METRICS: &str = "127.0.0.1:9464";
const MIB: u64 = 1 << 20;

/// A Prometheus scrape: the samples, parsed by `prometheus-parse` after a
/// strict check of the text format (which that parser does not do: it skips
/// what it cannot read).
struct Metrics {
    samples: Vec<prometheus_parse::Sample>,
    text: String,
}

impl Metrics {
    /// `curl http://127.0.0.1:9464/metrics` inside `app`.
    fn scrape(lab: &Lab) -> Result<Metrics> {
        let url = format!("http://{METRICS}/metrics");
        let out = lab.run_in(
            lab.app(),
            "curl",
            &["--silent", "--show-error", "--fail", "--max-time", "5", &url],
            Duration::from_secs(10),
        )?;
        ensure!(
            out.status.success(),
            "curl {url}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).context("metrics are not UTF-8")?;
        check_exposition(&text)?;
        let lines = text.lines().map(|l| Ok(l.to_owned()));
        let samples = prometheus_parse::Scrape::parse(lines)?.samples;
        Ok(Metrics { samples, text })
    }

    /// The sum of a counter or gauge over the samples with these labels.
    fn sum(&self, metric: &str, labels: &[(&str, &str)]) -> f64 {
        use prometheus_parse::Value;
        self.samples
            .iter()
            .filter(|s| s.metric == metric)
            .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(v)))
            .map(|s| match s.value {
                Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
                _ => 0.0,
            })
            .sum()
    }

    /// Observations in a histogram, over all its label sets.
    fn histogram_count(&self, metric: &str) -> f64 {
        use prometheus_parse::Value;
        self.samples
            .iter()
            .filter(|s| s.metric == metric)
            .filter_map(|s| match &s.value {
                Value::Histogram(buckets) => buckets.iter().map(|b| b.count).reduce(f64::max),
                _ => None,
            })
            .sum()
    }
}

/// Text format 0.0.4, strictly: every sample line is `name[{labels}] value`
/// with a valid name and a float value, and belongs to a family announced
/// by `# TYPE` before it (histograms by their `_bucket`, `_sum`, `_count`).
fn check_exposition(text: &str) -> Result<()> {
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut samples = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest
                .split_once(' ')
                .with_context(|| format!("bad TYPE line {line:?}"))?;
            ensure!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "unknown type in {line:?}"
            );
            ensure!(
                types.insert(name.into(), kind.into()).is_none(),
                "family {name} announced twice"
            );
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').with_context(|| format!("no value in {line:?}"))?;
        ensure!(
            value.parse::<f64>().is_ok() || ["+Inf", "-Inf", "NaN"].contains(&value),
            "bad value in {line:?}"
        );
        let name = series.split('{').next().unwrap_or_default();
        ensure!(
            !name.is_empty()
                && name
                    .chars()
                    .enumerate()
                    .all(|(i, c)| c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit())),
            "bad metric name in {line:?}"
        );
        if let Some(labels) = series.strip_prefix(name) {
            ensure!(
                labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}')),
                "bad labels in {line:?}"
            );
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .filter_map(|suffix| name.strip_suffix(suffix))
            .find(|base| types.get(*base).is_some_and(|t| t == "histogram"))
            .unwrap_or(name);
        ensure!(types.contains_key(family), "sample {name} has no # TYPE before it");
        samples += 1;
    }
    ensure!(samples > 0, "no samples in:\n{text}");
    Ok(())
}

/// Waits (bounded) for a background probe to exit 0.
fn finish(mut process: Process, limit: Duration) -> Result<String> {
    let status = process.wait_exit(limit)?;
    ensure!(
        status.success(),
        "{} failed ({status}):\n{}",
        process.name(),
        process.log()
    );
    Ok(process.log())
}

/// Host mode (issue 4): the XDP classifier's per-CPU counters are exported,
/// and they count the frames of a proxied connection as redirected.
#[test]
fn metrics_in_host_mode_count_xdp_decisions() -> Result<()> {
    in_lab(|lab| {
        lab.start_dante()?;
        lab.start_http()?;
        let args = ["--device", "veth://t2s0", "--workers", "2", "--metrics", METRICS];
        let daemon = Daemon::start(lab, &dante_url(false), &args)?;
        expect_hello(lab, false)?;
        let scrape = Metrics::scrape(lab)?;
        let redirected = scrape.sum("tun2socks_ebpf_xdp_redirected_frames_total", &[]);
        ensure!(redirected >= 4.0, "{redirected} frames redirected:\n{}", scrape.text);
        let failed = scrape.sum("tun2socks_ebpf_xdp_redirect_failed_frames_total", &[]);
        ensure!(failed == 0.0, "{failed} redirects failed:\n{}", scrape.text);
        expect_clean_exit(&daemon.stop()?, Some(2))
    })
}

/// Counters move during a transfer, the byte counters match the bytes moved
/// (within headers), and the output is valid Prometheus text.
#[test]
fn metrics_follow_a_transfer() -> Result<()> {
    in_lab(|lab| {
        lab.start_dante()?;
        lab.start_probe_server(probe())?;
        let daemon = Daemon::start(lab, &dante_url(false), &["--workers", "2", "--metrics", METRICS])?;
        let before = Metrics::scrape(lab)?;
        for line in [
            "# TYPE tun2socks_bytes_total counter",
            "# TYPE tun2socks_upstream_connect_seconds histogram",
            "tun2socks_worker_up{worker=\"0\"} 1",
            "tun2socks_worker_up{worker=\"1\"} 1",
        ] {
            ensure!(
                before.text.lines().any(|l| l == line),
                "no {line:?} in:\n{}",
                before.text
            );
        }
        ensure!(before.text.contains("tun2socks_build_info{version="), "{}", before.text);

        // 8 connections × 16 MiB each way.
        let (streams, size) = (8u64, 16 * MIB);
        let to = srv(false, port::PROBE).to_string();
        let transfer = probe_in_background(
            lab,
            "xfer",
            &[
                "xfer",
                "--to",
                &to,
                "--parallel",
                "8",
                "--size",
                "16MiB",
                "--dir",
                "both",
                "--timeout",
                "120",
            ],
        )?;
        // During the transfer: live sessions and moving byte counters.
        let started = Instant::now();
        let during = loop {
            let now = Metrics::scrape(lab)?;
            let moved = now.sum("tun2socks_bytes_total", &[("direction", "in")])
                > before.sum("tun2socks_bytes_total", &[("direction", "in")]) + MIB as f64;
            if now.sum("tun2socks_tcp_sessions", &[]) >= 1.0 && moved {
                break now;
            }
            if started.elapsed() > Duration::from_secs(30) {
                bail!("no live sessions or moving counters during the transfer:\n{}", now.text);
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        eprintln!(
            "during: {} live TCP sessions",
            during.sum("tun2socks_tcp_sessions", &[])
        );
        eprintln!("{}", finish(transfer, Duration::from_secs(150))?.trim());
        let after = Metrics::scrape(lab)?;

        let payload = (streams * size) as f64;
        for direction in ["in", "out"] {
            let moved = after.sum("tun2socks_bytes_total", &[("direction", direction)])
                - before.sum("tun2socks_bytes_total", &[("direction", direction)]);
            let packets = after.sum("tun2socks_packets_total", &[("direction", direction)])
                - before.sum("tun2socks_packets_total", &[("direction", direction)]);
            // IP and TCP headers (and the ACKs of the other direction) add a
            // few percent at most; less than the payload means lost counts.
            eprintln!("{direction}: {moved} bytes in {packets} packets for {payload} payload bytes");
            ensure!(
                moved >= payload && moved <= payload * 1.06 + MIB as f64,
                "bytes {direction}: {moved} for a payload of {payload}"
            );
            // A packet is one read or write on the TUN device: with offload
            // on (the default) a TSO or GSO packet carries up to 64 KB.
            ensure!(packets >= payload / 65_536.0, "packets {direction}: {packets}");
        }
        let accepted = after.sum("tun2socks_tcp_sessions_accepted_total", &[]);
        ensure!(accepted >= streams as f64, "{accepted} sessions accepted");
        let connects = after.histogram_count("tun2socks_upstream_connect_seconds");
        ensure!(connects >= streams as f64, "{connects} connect latencies observed");
        ensure!(after.sum("tun2socks_tcp_sessions_refused_total", &[]) == 0.0);
        expect_clean_exit(&daemon.stop()?, Some(2))
    })
}

/// `tun2socks stats --netns <app>` from outside shows a live session, and
/// `--watch` refreshes.
#[test]
fn stats_show_live_sessions() -> Result<()> {
    in_lab(|lab| {
        lab.start_dante()?;
        lab.start_probe_server(probe())?;
        let daemon = Daemon::start(lab, &dante_url(false), &["--workers", "2"])?;
        let to = srv(false, port::PROBE).to_string();
        let held = probe_in_background(
            lab,
            "held-connection",
            &["connect", "--to", &to, "--timeout-ms", "5000", "--hold-ms", "8000"],
        )?;
        let stats = || -> Result<String> {
            let mut cmd = Command::new(Daemon::binary()?);
            cmd.args(["stats", "--netns", lab.app().name()]);
            checked_output(cmd, Duration::from_secs(10))
        };
        let started = Instant::now();
        let table = loop {
            let table = stats()?;
            // Live and connected (a held connection request counts as live).
            if stats_total(&table, "tcp_sessions")? >= 1 && stats_total(&table, "flows_accepted")? >= 1 {
                break table;
            }
            ensure!(
                started.elapsed() < Duration::from_secs(6),
                "no live session in:\n{table}"
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        eprintln!("{table}");
        ensure!(table.contains("worker 0") && table.contains("worker 1"), "{table}");
        ensure!(table.contains("connect p50/p99"), "{table}");

        // --watch prints a table a second, with rates from the second on.
        let mut watch = Command::new(Daemon::binary()?);
        watch
            .args(["stats", "--watch", "--netns", lab.app().name()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let child = watch.spawn()?;
        std::thread::sleep(Duration::from_millis(2500));
        // SAFETY: kill(2) on our own child, not yet reaped.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        let out = child.wait_with_output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let tables = text.matches("tun2socks 0.").count();
        ensure!((2..=4).contains(&tables), "{tables} tables in 2.5 s:\n{text}");
        ensure!(text.contains("/s"), "no rate column:\n{text}");

        drop(held);
        expect_clean_exit(&daemon.stop()?, Some(2))?;
        // The instance is gone, and so is its socket.
        let mut cmd = Command::new(Daemon::binary()?);
        cmd.args(["stats", "--netns", lab.app().name()]);
        let out = lab::process::output_within(cmd, Duration::from_secs(10))?;
        let err = String::from_utf8_lossy(&out.stderr);
        ensure!(
            !out.status.success() && err.contains("no tun2socks is running"),
            "{err}"
        );
        Ok(())
    })
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/tun-iproute2.sh")
}

/// `scripts/tun-iproute2.sh up|down` for `app`.
fn iproute2_recipe(lab: &Lab, action: &str) -> Result<String> {
    let mut cmd = Command::new("bash");
    cmd.arg(script()).arg(action).env("NETNS", lab.app().name());
    checked_output(cmd, Duration::from_secs(20))
}

/// What `--no-setup` must leave alone: rules, routes, addresses and MTUs.
/// Link state is left out, and so is what the kernel adds by itself once the
/// device first gets a carrier (IPv6 link-local addresses and routes, the
/// multicast route).
fn user_config(lab: &Lab) -> Result<String> {
    let app = lab.app();
    let mut out = String::new();
    for view in [
        &["-4", "rule"][..],
        &["-6", "rule"],
        &["-4", "route", "show", "table", "all"],
        &["-6", "route", "show", "table", "all"],
    ] {
        let kernel_made = |l: &&str| l.contains("fe80") || l.starts_with("multicast ff00::/8");
        for line in app.ip(view)?.lines().filter(|l| !kernel_made(l)) {
            out.push_str(&line.replace(" linkdown", ""));
            out.push('\n');
        }
    }
    for line in app.ip(&["-br", "addr"])?.lines() {
        let mut fields = line.split_whitespace();
        let name = fields.next().unwrap_or_default();
        let addrs: Vec<&str> = fields.skip(1).filter(|a| !a.starts_with("fe80")).collect();
        out.push_str(&format!("{name} {}\n", addrs.join(" ")));
    }
    for line in app.ip(&["-o", "link"])?.lines() {
        let mut fields = line.split_whitespace();
        let name = fields.nth(1).unwrap_or_default();
        let mtu = line.split(" mtu ").nth(1).and_then(|r| r.split_whitespace().next());
        out.push_str(&format!("{name} mtu {}\n", mtu.unwrap_or("?")));
    }
    Ok(out)
}

/// The README's recipe: a multi-queue device, addresses, routes and rules
/// made with iproute2, then `--no-setup`. The daemon only uses the device:
/// after it, the namespace is as the script left it.
#[test]
fn no_setup_on_an_iproute2_device() -> Result<()> {
    in_lab(|lab| {
        lab.start_dante()?;
        lab.start_http()?;
        let pristine = Snapshot::take(lab.app())?;
        eprintln!("{}", iproute2_recipe(lab, "up")?.trim());
        let prepared = user_config(lab)?;
        let daemon = Daemon::start(lab, &dante_url(false), &["--device", "tun://t2s0", "--no-setup"])?;
        ensure!(daemon.log().contains("--no-setup"), "{}", daemon.log());
        expect_hello(lab, false)?;
        expect_hello(lab, true)?;
        expect_clean_exit(&daemon.stop()?, None)?;
        let after = user_config(lab)?;
        ensure!(
            prepared == after,
            "--no-setup changed {}:\nbefore:\n{prepared}\nafter:\n{after}",
            lab.app().name()
        );
        iproute2_recipe(lab, "down")?;
        let down = Snapshot::take(lab.app())?;
        ensure!(pristine == down, "the recipe's `down` left:\n{}", pristine.diff(&down));
        Ok(())
    })
}

/// A device made without `multi_queue` cannot give each worker a queue: the
/// error says so and how to fix it.
#[test]
fn single_queue_device_is_refused() -> Result<()> {
    in_lab(|lab| {
        lab.start_dante()?;
        lab.app().ip(&["tuntap", "add", "mode", "tun", "name", "t2s-single"])?;
        let before = Snapshot::take(lab.app())?;
        let exit = run_to_exit(
            lab,
            &dante_url(false),
            &["--device", "tun://t2s-single"],
            Duration::from_secs(30),
        )?;
        ensure!(!exit.status.success(), "expected a failure:\n{}", exit.log);
        let error = exit
            .log
            .lines()
            .find(|l| l.contains("error"))
            .with_context(|| format!("no error line:\n{}", exit.log))?;
        ensure!(
            error.contains("single-queue") && error.contains("ip tuntap add mode tun multi_queue name t2s-single"),
            "unhelpful error: {error}"
        );
        ensure!(
            before == Snapshot::take(lab.app())?,
            "a refused start changed the namespace"
        );
        Ok(())
    })
}

const TINYPROXY_PORT: u16 = 3128;
const TINYPROXY_USER: &str = "t2s";
const TINYPROXY_PASS: &str = "http-s3cret";

/// tinyproxy in `proxy` on 10.0.1.2:3128 with Basic auth; CONNECT is allowed
/// to the HTTP and probe ports only, so port 9001 is refused (403).
fn start_tinyproxy(lab: &Lab) -> Result<()> {
    let conf = lab.dir().join("tinyproxy.conf");
    let text = format!(
        "Port {TINYPROXY_PORT}\nListen {}\nTimeout 60\nMaxClients 256\nLogLevel Info\nDisableViaHeader Yes\n\
         BasicAuth {TINYPROXY_USER} {TINYPROXY_PASS}\nConnectPort {}\nConnectPort {}\n",
        addr::PROXY_V4,
        port::HTTP,
        port::PROBE
    );
    std::fs::write(&conf, text)?;
    let mut cmd = lab.proxy().command("tinyproxy");
    // -d: in the foreground, logging to stderr.
    cmd.arg("-d").arg("-c").arg(&conf);
    lab.spawn_server("tinyproxy", cmd, &[TINYPROXY_PORT])
}

/// HTTP CONNECT through a real HTTP proxy, with Basic auth from the
/// environment (`TUN2SOCKS_PROXY`): data both ways, IPv4 and IPv6
/// destinations, a refusal mapped to a refused connection, and no password
/// in the log.
#[test]
fn http_connect_via_tinyproxy() -> Result<()> {
    in_lab(|lab| {
        start_tinyproxy(lab)?;
        lab.start_http()?;
        lab.start_probe_server(probe())?;
        let url = format!(
            "http://{TINYPROXY_USER}:{TINYPROXY_PASS}@{}:{TINYPROXY_PORT}",
            addr::PROXY_V4
        );
        let mut cmd = Command::new(Daemon::binary()?);
        cmd.args(["--netns", lab.app().name(), "--connect-timeout", "5"])
            .env("TUN2SOCKS_PROXY", &url)
            .env(
                "RUST_LOG",
                std::env::var("T2S_DAEMON_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env("NO_COLOR", "1");
        let daemon = Daemon::start_command(lab, cmd)?;
        expect_hello(lab, false)?;
        expect_hello(lab, true)?;
        eprintln!("{}", xfer(lab, srv(false, port::PROBE), 4, "2MiB", "both")?);
        expect_refused(lab, srv(false, port::PROBE_BLOCKED), Duration::from_secs(5))?;
        let exit = daemon.stop()?;
        ensure!(
            !exit.log.contains(TINYPROXY_PASS),
            "the password is in the log:\n{}",
            exit.log
        );
        ensure!(exit.log.contains("http://t2s:***@"), "{}", exit.log);
        expect_clean_exit(&exit, None)?;
        ensure!(exit.total("flows_refused") >= 1, "the refusal was not counted");
        Ok(())
    })
}

/// `direct://`: the daemon connects itself, over marked sockets that skip
/// the tunnel. For this test only, `proxy` forwards and `srv` routes back.
#[test]
fn direct_upstream() -> Result<()> {
    in_lab(|lab| {
        lab.proxy().sysctl("net.ipv4.ip_forward", "1")?;
        lab.proxy().sysctl("net.ipv6.conf.all.forwarding", "1")?;
        lab.srv().ip(&["route", "add", "10.0.1.0/24", "via", "10.0.2.1"])?;
        lab.srv()
            .ip(&["-6", "route", "add", "fd00:1::/64", "via", "fd00:2::1"])?;
        lab.start_http()?;
        lab.start_probe_server(probe())?;
        let daemon = Daemon::start(lab, "direct://", &["--connect-timeout", "5"])?;
        expect_hello(lab, false)?;
        expect_hello(lab, true)?;
        eprintln!("{}", xfer(lab, srv(true, port::PROBE), 4, "2MiB", "both")?);
        expect_refused(lab, srv(false, port::CLOSED), Duration::from_secs(5))?;
        let exit = daemon.stop()?;
        expect_clean_exit(&exit, None)?;
        ensure!(
            exit.total("flows_accepted") >= 6,
            "the flows did not go through the daemon"
        );
        ensure!(exit.total("flows_refused") >= 1, "the refusal was not counted");
        Ok(())
    })
}

const SCHED_OTHER: u32 = 0;
const SCHED_FIFO: u32 = 1;

/// The daemon's worker threads (`worker-N`) and its other threads.
fn threads_by_role(pid: u32) -> Result<(Vec<ThreadScheduling>, Vec<ThreadScheduling>)> {
    Ok(thread_scheduling(pid)?
        .into_iter()
        .partition(|t| t.name.starts_with("worker-")))
}

/// `--worker-priority realtime` runs the workers at `SCHED_FIFO` priority 1
/// (so that a packet does not wait behind other processes for its worker's
/// core), `normal` at ordinary priority, and so does the default, `auto`,
/// while no UDP flows; no other thread of the daemon ever runs at real time.
#[test]
fn workers_run_at_realtime_priority_when_told() -> Result<()> {
    in_lab(|lab| {
        lab.start_dante()?;
        lab.start_http()?;
        for (extra, policy, rt_priority) in [
            (None, SCHED_OTHER, 0),
            (Some("normal"), SCHED_OTHER, 0),
            (Some("realtime"), SCHED_FIFO, 1),
        ] {
            let mut args = vec!["--workers", "2"];
            if let Some(priority) = extra {
                args.extend(["--worker-priority", priority]);
            }
            let daemon = Daemon::start(lab, &dante_url(false), &args)?;
            expect_hello(lab, false)?;
            let (workers, others) = threads_by_role(daemon.pid())?;
            let log = daemon.log();
            let exit = daemon.stop()?;
            expect_clean_exit(&exit, Some(2))?;
            ensure!(workers.len() == 2, "{args:?}: expected 2 worker threads: {workers:?}");
            ensure!(
                workers
                    .iter()
                    .all(|t| (t.policy, t.rt_priority) == (policy, rt_priority)),
                "{args:?}: workers should run at policy {policy} priority {rt_priority}: {workers:?}\n{log}"
            );
            ensure!(
                others.iter().all(|t| t.policy == SCHED_OTHER),
                "{args:?}: only workers may run at real time: {others:?}"
            );
            ensure!(
                !log.contains("cannot run the worker at real-time priority"),
                "{args:?}:\n{log}"
            );
        }
        Ok(())
    })
}

/// The daemon as root with only these capabilities in its bounding set
/// (`setpriv`).
fn daemon_with_capabilities(lab: &Lab, bounding_set: &str) -> Result<Command> {
    let mut cmd = lab.app().command("setpriv");
    cmd.arg(format!("--bounding-set=-all,{bounding_set}"))
        .arg("--")
        .arg(Daemon::binary()?)
        .args(["--proxy", &dante_url(false), "--workers", "2"])
        .env(
            "RUST_LOG",
            std::env::var("T2S_DAEMON_LOG").unwrap_or_else(|_| "info".into()),
        )
        .env("NO_COLOR", "1");
    Ok(cmd)
}

/// With `--worker-priority auto` (the default), the worker carrying a UDP
/// flow takes real time while it flows and leaves it about a second after
/// the last datagram.
#[test]
fn workers_take_real_time_while_they_carry_udp() -> Result<()> {
    in_lab(|lab| {
        lab.start_dante()?;
        lab.start_http()?;
        lab.start_udp_echo(crate::udp::t2s_udp())?;
        let daemon = Daemon::start(lab, &dante_url(false), &["--workers", "2"])?;
        expect_hello(lab, false)?;
        let pid = daemon.pid();
        let workers = |policy: u32| -> Result<Vec<ThreadScheduling>> {
            Ok(threads_by_role(pid)?
                .0
                .into_iter()
                .filter(|t| t.policy == policy)
                .collect())
        };
        ensure!(workers(SCHED_FIFO)?.is_empty(), "real time before any UDP");
        // About 3 s of echoes, one in flight at a time.
        let to = srv(false, port::UDP_ECHO).to_string();
        let mut cmd = lab.app().command(&crate::udp::t2s_udp().to_string_lossy());
        cmd.args(["echo-client", "--to", &to, "--count", "20000", "--max-size", "200"])
            .args(["--window", "1", "--timeout", "30"]);
        let mut client = Process::spawn("udp-echo-client", cmd, &lab.log_path("udp-echo-client"))?;
        let during = poll("a worker at real time while UDP flows", Duration::from_secs(5), || {
            let fifo = workers(SCHED_FIFO)?;
            Ok((!fifo.is_empty()).then_some(fifo))
        });
        let client_exit = client.wait_exit(Duration::from_secs(40));
        let during = during?;
        ensure!(during.iter().all(|t| t.rt_priority == 1), "{during:?}");
        ensure!(client_exit?.success(), "t2s-udp echo-client failed:\n{}", client.log());
        poll(
            "every worker back at normal priority after the UDP flow",
            Duration::from_secs(4),
            || Ok(workers(SCHED_FIFO)?.is_empty().then_some(())),
        )?;
        let exit = daemon.stop()?;
        expect_clean_exit(&exit, Some(2))?;
        ensure!(
            exit.total("udp_datagrams_out") >= 1000,
            "the echoes did not go through the daemon"
        );
        Ok(())
    })
}

/// Without CAP_SYS_NICE (nor an `RLIMIT_RTPRIO`), real time is refused: the
/// workers say so once each and run at ordinary priority; traffic flows.
#[test]
fn workers_fall_back_to_normal_priority_when_real_time_is_refused() -> Result<()> {
    in_lab(|lab| {
        lab.start_dante()?;
        lab.start_http()?;
        let daemon = Daemon::start_command(lab, daemon_with_capabilities(lab, "+net_admin,+bpf")?)?;
        expect_hello(lab, false)?;
        let (workers, _) = threads_by_role(daemon.pid())?;
        let exit = daemon.stop()?;
        expect_clean_exit(&exit, Some(2))?;
        ensure!(
            workers.len() == 2 && workers.iter().all(|t| t.policy == SCHED_OTHER),
            "{workers:?}"
        );
        let warnings = exit.log.matches("cannot run the worker at real-time priority").count();
        ensure!(
            warnings == 2,
            "expected one warning per worker, got {warnings}:\n{}",
            exit.log
        );
        Ok(())
    })
}

/// What `systemd/tun2socks.service` grants is enough: as root with only
/// CAP_NET_ADMIN, CAP_BPF and CAP_SYS_NICE in the bounding set (and no
/// --netns, which needs CAP_SYS_ADMIN: the unit uses NetworkNamespacePath=
/// for that), the daemon sets up, steers with eBPF, relays with real-time
/// workers and undoes everything.
#[test]
fn runs_with_the_units_capabilities() -> Result<()> {
    in_lab(|lab| {
        lab.start_dante()?;
        lab.start_http()?;
        let before = Snapshot::take(lab.app())?;
        let cmd = daemon_with_capabilities(lab, "+net_admin,+bpf,+sys_nice")?;
        let daemon = Daemon::start_command(lab, cmd)?;
        expect_hello(lab, false)?;
        let (workers, _) = threads_by_role(daemon.pid())?;
        let exit = daemon.stop()?;
        expect_clean_exit(&exit, None)?;
        ensure!(
            workers.len() == 2 && !exit.log.contains("cannot run the worker at real-time priority"),
            "the unit's capabilities were not enough for real-time workers: {workers:?}\n{}",
            exit.log
        );
        ensure!(
            exit.log.contains("dropped every capability but CAP_NET_ADMIN")
                && !exit.log.contains("could not drop capabilities"),
            "the privilege drop failed under the unit's bounding set:\n{}",
            exit.log
        );
        ensure!(
            !exit.log.contains("flow steering unavailable"),
            "CAP_BPF was not enough for the steering program:\n{}",
            exit.log
        );
        let after = Snapshot::take(lab.app())?;
        ensure!(before == after, "left behind:\n{}", before.diff(&after));
        Ok(())
    })
}
