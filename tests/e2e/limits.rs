//! Issue 6, limits: when `--max-tcp-sessions` or `--buffer-memory` is
//! reached, new connections get a reset at once (counted, and logged once per
//! interval, not once per refusal), the connections already open keep
//! working, and once they close new ones are served again.

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use lab::process::Process;
use lab::servers::dante_url;
use lab::topology::port;
use lab::{Daemon, Lab};

use crate::support::{
    expect_clean_exit, expect_refused, in_lab, probe, probe_in_background, srv, stats_table, stats_total, xfer,
};

/// How long each held connection stays open (it is killed sooner).
const HOLD_MS: &str = "30000";
/// Refused attempts made while the limit holds.
const REFUSED: u64 = 5;

/// Opens `n` connections from `app` that stay open, and waits until the
/// daemon has accepted them all.
fn hold(lab: &Lab, n: usize) -> Result<Vec<Process>> {
    let before = stats_total(&stats_table(lab)?, "flows_accepted")?;
    let to = srv(false, port::PROBE).to_string();
    let held = (0..n)
        .map(|i| {
            let args = ["connect", "--to", &to, "--timeout-ms", "5000", "--hold-ms", HOLD_MS];
            probe_in_background(lab, &format!("held-{i}"), &args)
        })
        .collect::<Result<Vec<_>>>()?;
    wait_for(lab, "flows_accepted", |v| v >= before + n as u64)?;
    Ok(held)
}

/// Polls `tun2socks stats` until the total of `key` satisfies `ok` (10 s at most).
fn wait_for(lab: &Lab, key: &str, ok: impl Fn(u64) -> bool) -> Result<String> {
    let started = Instant::now();
    loop {
        let table = stats_table(lab)?;
        if ok(stats_total(&table, key)?) {
            return Ok(table);
        }
        ensure!(
            started.elapsed() < Duration::from_secs(10),
            "{key} never reached the expected value:\n{table}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The limit holds, refusals are fast, the log says so once; after the held
/// connections close, a verified transfer works.
fn refuse_then_recover(lab: &Lab, daemon: Daemon, held: usize, counter: &str, warning: &str) -> Result<()> {
    let holders = hold(lab, held)?;
    for _ in 0..REFUSED {
        expect_refused(lab, srv(false, port::PROBE), Duration::from_secs(5))?;
    }
    let table = stats_table(lab)?;
    eprintln!("{table}");
    ensure!(stats_total(&table, counter)? == REFUSED, "{counter} in:\n{table}");
    ensure!(stats_total(&table, "tcp_sessions")? <= held as u64, "{table}");

    // Closing the held connections frees their room.
    drop(holders);
    wait_for(lab, "tcp_sessions", |v| v == 0)?;
    xfer(lab, srv(false, port::PROBE), 2, "512KiB", "both")?;

    let exit = daemon.stop()?;
    expect_clean_exit(&exit, Some(1))?;
    let warnings = exit.log.matches(warning).count();
    ensure!(
        warnings == 1,
        "{warnings} warnings {warning:?} for {REFUSED} refusals (1 expected):\n{}",
        exit.log
    );
    Ok(())
}

#[test]
fn session_limit_refuses_then_recovers() -> Result<()> {
    in_lab(|lab| {
        lab.start_dante()?;
        lab.start_probe_server(probe())?;
        let daemon = Daemon::start(lab, &dante_url(false), &["--workers", "1", "--max-tcp-sessions", "4"])?;
        refuse_then_recover(lab, daemon, 4, "tcp_over_limit", "--max-tcp-sessions reached")
    })
}

/// 64 KiB of buffer memory and room for 100 sessions: every connection gets
/// the 4 KiB floor each way (the rest is kept back for the sessions still
/// allowed), so 8 fit and the 9th is refused; the gauge shows the bound.
#[test]
fn buffer_memory_bounds_socket_buffers() -> Result<()> {
    const MEMORY: u64 = 65_536;
    in_lab(|lab| {
        lab.start_dante()?;
        lab.start_probe_server(probe())?;
        let args = [
            "--workers",
            "1",
            "--max-tcp-sessions",
            "100",
            "--buffer-memory",
            &MEMORY.to_string(),
        ];
        let daemon = Daemon::start(lab, &dante_url(false), &args)?;
        let table = {
            let holders = hold(lab, 8)?;
            let table = stats_table(lab)?;
            drop(holders);
            table
        };
        ensure!(stats_total(&table, "tcp_buffer_bytes")? == MEMORY, "{table}");
        wait_for(lab, "tcp_buffer_bytes", |v| v == 0)?;
        refuse_then_recover(lab, daemon, 8, "tcp_over_memory", "--buffer-memory spent")
    })
}
