//! `cargo xtask run`: the lab the tests use, with the daemon in `app` relaying
//! through dante-server, a curl and a short iperf3 through it, then running
//! until Ctrl-C (or at once with `--once`). Everything is torn down on the way
//! out, also on failure.

use std::path::Path;
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use lab::servers::{dante_url, hello_url};
use lab::topology::{addr, port};
use lab::{Daemon, DaemonExit, Lab};

use crate::{cargo, prereqs, section, signal};

const IPERF_SECONDS: u32 = 3;

pub fn run(once: bool) -> Result<()> {
    prereqs::ensure()?;
    let binary = cargo::build_daemon(true)?;
    signal::install();

    section("lab: app —veth— proxy (dante-server) —veth— srv (HTTP, iperf3)");
    let lab = Lab::up()?;
    let result = demo(&lab, &binary, once);
    if result.is_err() {
        lab.dump_logs();
    }
    section("teardown");
    drop(lab);
    println!("namespaces removed");
    result
}

fn demo(lab: &Lab, binary: &Path, once: bool) -> Result<()> {
    lab.start_dante()?;
    lab.start_http()?;
    lab.start_iperf3()?;
    println!("namespaces: {0}-app, {0}-proxy, {0}-srv", lab.id());
    println!("logs:       {}", lab.dir().display());

    section("tun2socks");
    let proxy = dante_url(false);
    let cmd = Daemon::command_with(binary, lab, &proxy, &[]);
    println!("{cmd:?}");
    let mut daemon = Daemon::start_command(lab, cmd)?;
    println!("ready (pid {})", daemon.pid());

    section("curl through the tunnel");
    for v6 in [false, true] {
        let url = hello_url(v6);
        let started = Instant::now();
        let body = lab.curl(&url)?;
        println!("{url}: {:?} in {:.0?}", body.trim(), started.elapsed());
    }

    section(&format!(
        "iperf3 through the tunnel ({IPERF_SECONDS} s, 1 stream each way)"
    ));
    iperf3(lab, false)?;
    iperf3(lab, true)?;

    if !once {
        section("running; press Ctrl-C to stop");
        println!(
            "try: sudo ip netns exec {} curl http://{}:{}/hello.txt",
            lab.app().name(),
            addr::SRV_V4,
            port::HTTP
        );
        while !signal::stop_requested() {
            daemon.ensure_running()?;
            sleep(Duration::from_millis(200));
        }
        println!();
    }

    section("stopping tun2socks (SIGTERM)");
    report(&daemon.stop()?)
}

/// One iperf3 run from `app` to `srv`; prints its sender and receiver lines.
fn iperf3(lab: &Lab, reverse: bool) -> Result<()> {
    let seconds = IPERF_SECONDS.to_string();
    let server = addr::SRV_V4.to_string();
    let port = port::IPERF.to_string();
    let mut args = vec!["-c", &server, "-p", &port, "-t", &seconds, "-f", "g"];
    if reverse {
        args.push("-R");
    }
    let limit = Duration::from_secs(u64::from(IPERF_SECONDS) + 20);
    let out = lab.run_in(lab.app(), "iperf3", &args, limit)?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "iperf3 {} failed:\n{text}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let direction = if reverse {
        "download (srv → app)"
    } else {
        "upload (app → srv)"
    };
    println!("iperf3 {}  # {direction}", args.join(" "));
    for line in text
        .lines()
        .filter(|l| l.ends_with("sender") || l.ends_with("receiver"))
    {
        println!("  {}", line.trim());
    }
    Ok(())
}

fn report(exit: &DaemonExit) -> Result<()> {
    for worker in &exit.workers {
        // `worker=N` first, then the counters by name.
        let mut fields: Vec<String> = worker.fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
        fields.sort_by_key(|f| !f.starts_with("worker="));
        println!("  {}", fields.join(" "));
    }
    if !exit.status.success() {
        bail!("tun2socks exited with {}", exit.status);
    }
    println!("exited cleanly");
    Ok(())
}
