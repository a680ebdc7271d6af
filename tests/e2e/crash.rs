//! Issue 6, crash safety: `kill -9` of the daemon at random moments, during
//! setup and under load, 20 times in a row in one lab. After each kill the
//! namespace is restored either by `tun2socks cleanup --netns <app>` or by
//! a plain restart (which rolls the dead instance back first) followed by
//! SIGTERM; then `app`'s links, addresses, routes (all tables, both
//! families) and rules must be exactly as before the first start, and no
//! journal of ours may be left under /run/tun2socks.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use lab::process::{Process, checked_output};
use lab::servers::dante_url;
use lab::topology::port;
use lab::{Daemon, Lab, Snapshot};
use rand::Rng;

use crate::support::{in_lab, probe, srv};

const ROUNDS: usize = 20;
/// "During setup": the kill comes this long (at most) after the spawn (or,
/// every other time, at most as long as a start takes).
const SETUP_WINDOW_MS: u64 = 300;
const JOURNAL_DIR: &str = "/run/tun2socks";

#[derive(Debug, Clone, Copy)]
enum Moment {
    /// A random 0–300 ms (or 0–time to ready) after the spawn, ready or not.
    DuringSetup,
    /// After the ready line, while transfers run, plus a random 0–300 ms.
    UnderLoad,
}

#[derive(Debug, Clone, Copy)]
enum Recovery {
    /// `tun2socks cleanup --netns <app>`.
    Cleanup,
    /// Start the daemon again (it rolls back the dead one's setup), then
    /// SIGTERM it.
    Restart,
}

#[test]
fn kill_9_at_random_moments_then_cleanup_or_restart() -> Result<()> {
    in_lab(|lab| {
        lab.start_dante()?;
        lab.start_probe_server(probe())?;
        let before = Snapshot::take(lab.app())?;
        // How long a start takes here: setup is often shorter than the
        // 300 ms window, so every other setup kill aims inside it.
        let t = Instant::now();
        let daemon = Daemon::start(lab, &dante_url(false), &[])?;
        let to_ready = t.elapsed();
        daemon.stop()?;
        eprintln!("the daemon was ready {} ms after its start", to_ready.as_millis());
        let started = Instant::now();
        let mut rng = rand::rng();
        let mut before_ready = 0;
        for round in 0..ROUNDS {
            // Every combination, five times each.
            let moment = [Moment::DuringSetup, Moment::UnderLoad][round % 2];
            let recovery = [Recovery::Cleanup, Recovery::Restart][(round / 2) % 2];
            let window_ms = match moment {
                Moment::DuringSetup if round % 4 == 2 => (to_ready.as_millis() as u64).clamp(1, SETUP_WINDOW_MS),
                _ => SETUP_WINDOW_MS,
            };
            let delay = Duration::from_millis(rng.random_range(0..=window_ms));
            let killed = kill_at(lab, moment, delay)
                .with_context(|| format!("round {round}: killing {moment:?} after {delay:?}"))?;
            recover(lab, recovery).with_context(|| format!("round {round}: {recovery:?} after a kill {moment:?}"))?;
            let after = Snapshot::take(lab.app())?;
            if before != after {
                bail!(
                    "round {round}: {} differs after kill -9 {moment:?} (+{delay:?}) and {recovery:?} \
                     (- before the first start, + now):\n{}\nlog of the killed daemon:\n{killed}",
                    lab.app().name(),
                    before.diff(&after)
                );
            }
            ensure_no_journal(lab).with_context(|| format!("round {round}: after {recovery:?}"))?;
            let ready = killed.lines().any(is_ready_line);
            before_ready += usize::from(!ready);
            eprintln!(
                "round {round:2}: kill -9 {moment:?} +{:3} ms ({}), {recovery:?}: namespace restored ({:.1} s so far)",
                delay.as_millis(),
                if ready { "after ready" } else { "before ready" },
                started.elapsed().as_secs_f64()
            );
        }
        eprintln!("{before_ready} of {ROUNDS} kills came before the daemon was ready");
        Ok(())
    })
}

/// The daemon's `... ready ...` line.
fn is_ready_line(line: &str) -> bool {
    line.split_whitespace().any(|word| word == "ready")
}

/// Starts the daemon and kills it with SIGKILL at `moment`; returns its log.
fn kill_at(lab: &Lab, moment: Moment, delay: Duration) -> Result<String> {
    match moment {
        Moment::DuringSetup => {
            let cmd = Daemon::command(lab, &dante_url(false), &[])?;
            let mut daemon = Process::spawn("tun2socks", cmd, &lab.log_path("tun2socks-killed"))?;
            std::thread::sleep(delay);
            if let Some(status) = daemon.try_exit()? {
                bail!(
                    "the daemon exited on its own ({status}) before the kill:\n{}",
                    daemon.log()
                );
            }
            daemon.signal(libc::SIGKILL)?;
            let status = daemon.wait_exit(Duration::from_secs(5))?;
            ensure!(status.code().is_none(), "killed daemon exited with {status}");
            Ok(daemon.log())
        }
        Moment::UnderLoad => {
            let daemon = Daemon::start(lab, &dante_url(false), &[])?;
            let mut cmd = lab.app().command(&probe().to_string_lossy());
            cmd.args(["xfer", "--to", &srv(false, port::PROBE).to_string()]).args([
                "--parallel",
                "4",
                "--size",
                "16MiB",
                "--dir",
                "both",
                "--timeout",
                "20",
            ]);
            // Dropped (killed) after the daemon: its connections die with it.
            let load = Process::spawn("xfer-under-kill", cmd, &lab.log_path("xfer-under-kill"))?;
            // Let the transfers get going, then the random part.
            std::thread::sleep(Duration::from_millis(200) + delay);
            let exit = daemon.stop_with(libc::SIGKILL)?;
            drop(load);
            ensure!(
                exit.status.code().is_none(),
                "killed daemon exited with {}",
                exit.status
            );
            Ok(exit.log)
        }
    }
}

fn recover(lab: &Lab, recovery: Recovery) -> Result<()> {
    match recovery {
        Recovery::Cleanup => {
            let mut cmd = Command::new(Daemon::binary()?);
            cmd.args(["cleanup", "--netns", lab.app().name()]);
            let out = checked_output(cmd, Duration::from_secs(15))?;
            if !out.trim().is_empty() {
                eprintln!("tun2socks cleanup: {}", out.trim());
            }
            Ok(())
        }
        Recovery::Restart => {
            let daemon = Daemon::start(lab, &dante_url(false), &[])?;
            // Not `expect_clean_exit`: segments of the killed instance's
            // connections (the transfer's resets) may still arrive and
            // count as packets without a session.
            let exit = daemon.stop()?;
            ensure!(
                exit.status.success() && !exit.workers.is_empty(),
                "the restarted daemon did not stop cleanly ({}):\n{}",
                exit.status,
                exit.log
            );
            Ok(())
        }
    }
}

/// No journal of an instance in `app` is left: journals are named
/// `<netns inode>-<device>.json`.
fn ensure_no_journal(lab: &Lab) -> Result<()> {
    let ns = Path::new("/run/netns").join(lab.app().name());
    let inode = fs::metadata(&ns).with_context(|| format!("{}", ns.display()))?.ino();
    let prefix = format!("{inode}-");
    let left: Vec<String> = match fs::read_dir(JOURNAL_DIR) {
        Ok(entries) => entries
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|name| name.starts_with(&prefix) && name.ends_with(".json"))
            .collect(),
        Err(_) => Vec::new(),
    };
    ensure!(left.is_empty(), "journals left in {JOURNAL_DIR}: {left:?}");
    Ok(())
}
