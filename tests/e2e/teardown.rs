//! Requirement 6: after SIGTERM (or SIGINT) the namespace's links, addresses,
//! routes and rules are exactly as before the start, and the daemon exits 0.

use anyhow::{Result, ensure};
use lab::servers::dante_url;
use lab::{Daemon, Lab, Snapshot};

use crate::support::{expect_clean_exit, expect_hello, in_lab};

/// Runs the daemon with `args`, uses it, stops it with `signal`, and compares
/// `app` before and after.
fn leaves_no_trace(lab: &Lab, args: &[&str], signal: i32) -> Result<()> {
    let before = Snapshot::take(lab.app())?;
    let daemon = Daemon::start(lab, &dante_url(false), args)?;
    let during = Snapshot::take(lab.app())?;
    ensure!(
        before != during,
        "the running daemon changed nothing visible in {}:\n{during}",
        lab.app().name()
    );
    expect_hello(lab, false)?;
    expect_hello(lab, true)?;
    expect_clean_exit(&daemon.stop_with(signal)?, None)?;
    let after = Snapshot::take(lab.app())?;
    ensure!(
        before == after,
        "{} differs after signal {signal} (- before, + after):\n{}",
        lab.app().name(),
        before.diff(&after)
    );
    Ok(())
}

#[test]
fn sigterm_and_sigint_restore_the_namespace() -> Result<()> {
    in_lab(|lab| {
        lab.start_dante()?;
        lab.start_http()?;
        leaves_no_trace(lab, &[], libc::SIGTERM)?;
        // Narrower routes and a bypass (of an address not used here), so
        // that their rules and routes are taken down too.
        let narrow = [
            "--route",
            "10.0.2.0/24",
            "--route",
            "fd00:2::/64",
            "--bypass",
            "10.0.2.200/32",
        ];
        leaves_no_trace(lab, &narrow, libc::SIGINT)
    })
}

/// A device made beforehand with `ip tuntap add ... multi_queue` is adopted:
/// after the daemon it is still there, exactly as it was.
#[test]
fn adopted_device_is_left_as_found() -> Result<()> {
    in_lab(|lab| {
        lab.start_dante()?;
        lab.start_http()?;
        let app = lab.app();
        app.ip(&["tuntap", "add", "mode", "tun", "multi_queue", "name", "t2s-pre"])?;
        // A device that was never up shows `qdisc noop`; the first time it
        // goes up the kernel gives it its default qdisc (`mq`), which stays.
        // Start from a device that has been up once, so that only what the
        // daemon leaves behind can differ.
        app.ip(&["link", "set", "t2s-pre", "up"])?;
        app.ip(&["link", "set", "t2s-pre", "down"])?;
        leaves_no_trace(lab, &["--device", "tun://t2s-pre"], libc::SIGTERM)
    })
}
