//! Errors a user can act on: a bad proxy URL, an unreachable proxy, a missing
//! privilege, a device name taken by a non-TUN link. Each is a one-line
//! message and a non-zero exit, never a panic, and leaves `app` as it was.

use std::time::Duration;

use anyhow::{Result, ensure};
use lab::daemon::run_to_exit;
use lab::servers::{dante_url, socks_url};
use lab::topology::addr;
use lab::{Daemon, DaemonExit, Lab, Snapshot};

use crate::support::in_lab;

const EXIT_LIMIT: Duration = Duration::from_secs(30);

/// The run failed with a non-zero exit and no panic, and printed one line
/// that says "error" and mentions one of `topics` (case-insensitive).
fn expect_one_line_error(exit: &DaemonExit, topics: &[&str]) -> Result<()> {
    let log = &exit.log;
    ensure!(!exit.status.success(), "expected a failure, got success:\n{log}");
    ensure!(
        exit.status.code() != Some(101) && !log.contains("panicked") && !log.contains("backtrace"),
        "the daemon panicked:\n{log}"
    );
    let lower = log.to_lowercase();
    let errors: Vec<&str> = lower.lines().filter(|l| l.contains("error")).collect();
    ensure!(!errors.is_empty(), "no line says \"error\":\n{log}");
    ensure!(
        errors
            .iter()
            .any(|l| topics.iter().any(|t| l.contains(&t.to_lowercase()))),
        "the error does not mention any of {topics:?}:\n{log}"
    );
    // Room for a hint line like clap's "For more information, try '--help'",
    // but not for multi-line error chains or dumps.
    let plain: Vec<&str> = log
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter(|l| !["INFO", "WARN", "DEBUG", "TRACE"].iter().any(|lvl| l.contains(lvl)))
        .collect();
    ensure!(plain.len() <= 3, "expected a one-line error, got:\n{log}");
    eprintln!("{}: {}", exit.status, plain.join(" | "));
    Ok(())
}

/// Runs the daemon expecting a startup failure; `app` must be unchanged.
fn fails_cleanly(lab: &Lab, proxy: &str, args: &[&str], topics: &[&str]) -> Result<()> {
    let before = Snapshot::take(lab.app())?;
    let exit = run_to_exit(lab, proxy, args, EXIT_LIMIT)?;
    expect_one_line_error(&exit, topics)?;
    let after = Snapshot::take(lab.app())?;
    ensure!(
        before == after,
        "a failed start left changes in {} (- before, + after):\n{}",
        lab.app().name(),
        before.diff(&after)
    );
    Ok(())
}

#[test]
fn bad_proxy_urls() -> Result<()> {
    in_lab(|lab| {
        for bad in [
            "socks5://10.0.1.2:notaport",
            "socks5:/10.0.1.2:1080",
            "gopher://10.0.1.2:1080",
            "10.0.1.2",
        ] {
            fails_cleanly(lab, bad, &[], &["proxy", bad])?;
        }
        Ok(())
    })
}

#[test]
fn unreachable_proxy() -> Result<()> {
    in_lab(|lab| {
        // Nothing listens on that port: refused at once.
        let closed = socks_url(addr::proxy(false), 1999, None);
        fails_cleanly(lab, &closed, &["--connect-timeout", "3"], &["proxy", "10.0.1.2"])?;
        // No such host on the link: no answer at all.
        let absent = socks_url("10.0.1.99".parse()?, 1080, None);
        fails_cleanly(lab, &absent, &["--connect-timeout", "3"], &["proxy", "10.0.1.99"])
    })
}

/// The name of the app's veth, given as the TUN device.
#[test]
fn device_name_taken_by_a_non_tun_link() -> Result<()> {
    in_lab(|lab| {
        lab.start_dante()?;
        fails_cleanly(lab, &dante_url(false), &["--device", "tun://app0"], &["app0"])
    })
}

/// Without capabilities (as `nobody`), the error names the one missing.
#[test]
fn missing_privilege_names_the_capability() -> Result<()> {
    in_lab(|lab| {
        lab.start_dante()?;
        // A copy in the lab dir, so that `nobody` may run it wherever the
        // build lives.
        let binary = lab.dir().join("tun2socks");
        std::fs::copy(Daemon::binary()?, &binary)?;
        let daemon = Daemon::command_with(&binary, lab, &dante_url(false), &[]);
        let mut cmd = std::process::Command::new("setpriv");
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"])
            .arg(daemon.get_program())
            .args(daemon.get_args());
        for (key, value) in daemon.get_envs() {
            match value {
                Some(value) => cmd.env(key, value),
                None => cmd.env_remove(key),
            };
        }
        let before = Snapshot::take(lab.app())?;
        let exit = lab::daemon::run_command_to_exit(lab, cmd, EXIT_LIMIT)?;
        expect_one_line_error(&exit, &["CAP_"])?;
        ensure!(before == Snapshot::take(lab.app())?, "app changed");
        Ok(())
    })
}
