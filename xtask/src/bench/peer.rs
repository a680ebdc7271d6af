//! The peer, tun2proxy: installed from crates.io (pinned, `--locked`) into
//! a cache dir the first time, and run in `app` without its `--setup` (which
//! would also change iptables, /etc/resolv.conf and leave a state file in
//! /tmp): we bring its device up and route into it ourselves.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use lab::process::Process;

use super::testbed::{Testbed, dante, wait_exit, wait_until};
use crate::section;

/// The version measured; 0.8.7 builds with rustc 1.95 (checked).
pub const VERSION: &str = "0.8.7";
/// Its TUN device inside `app`.
const DEVICE: &str = "t2p0";
/// The address its own `--setup` would give the device.
const ADDRESS: &str = "10.0.0.33/24";
/// How long `cargo install` may take (a cold build took about 3 minutes on 2 cores).
const INSTALL_LIMIT: Duration = Duration::from_secs(30 * 60);

/// The installed `tun2proxy-bin`, installing it into `cache` first if absent.
pub fn ensure(cache: &Path) -> Result<PathBuf> {
    let root = cache.join(format!("tun2proxy-{VERSION}"));
    let binary = root.join("bin").join("tun2proxy-bin");
    if binary.is_file() {
        println!("tun2proxy {VERSION}: {}", binary.display());
        return Ok(binary);
    }
    section(&format!(
        "installing tun2proxy {VERSION} from crates.io into {}",
        root.display()
    ));
    std::fs::create_dir_all(cache)?;
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.args(["install", "tun2proxy", "--version", VERSION, "--locked", "--root"])
        .arg(&root);
    let log = cache.join(format!("tun2proxy-{VERSION}-install.log"));
    let mut install = Process::spawn("cargo install tun2proxy", cmd, &log)?;
    let status = wait_exit(&mut install, INSTALL_LIMIT)?;
    if !status.success() || !binary.is_file() {
        let text = install.log();
        let tail: Vec<&str> = text.lines().rev().take(15).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!(
            "cargo install tun2proxy@{VERSION} failed ({status}):\n{}",
            tail.join("\n")
        );
    }
    Ok(binary)
}

/// tun2proxy in `app` with its device at `mtu`, relaying to dante, with the
/// routes that send everything but `app`'s own subnet into it.
pub fn start(bed: &Testbed, binary: &Path, mtu: u32) -> Result<Process> {
    let lab = bed.lab();
    let mut cmd = lab.app().command(&binary.to_string_lossy());
    cmd.args(["--proxy", &format!("socks5://{}", dante()), "--tun", DEVICE])
        .args(["--mtu", &mtu.to_string()])
        // Without it the kernel side falls back to a 536-byte MSS.
        .args(["--tcp-mss", &(mtu - 40).to_string()])
        // Its default (200) would refuse most of the 10 000 idle connections.
        .args(["--max-sessions", "65535"])
        .args(["--verbosity", "warn"])
        .env("TMPDIR", lab.dir());
    let mut process = Process::spawn("tun2proxy", cmd, &lab.log_path("tun2proxy"))?;
    // Without `--setup` it only creates the device: up, address and routes
    // are ours (the same as its setup would add, minus the rest).
    wait_until(&format!("tun2proxy's device {DEVICE}"), Duration::from_secs(15), || {
        process.ensure_running()?;
        Ok(lab.app().ip(&["-br", "link"])?.lines().any(|l| l.starts_with(DEVICE)))
    })
    .with_context(|| format!("tun2proxy log:\n{}", process.log()))?;
    lab.app().ip(&["link", "set", DEVICE, "up"])?;
    lab.app().ip(&["addr", "add", ADDRESS, "dev", DEVICE])?;
    for half in ["0.0.0.0/1", "128.0.0.0/1"] {
        lab.app().ip(&["route", "add", half, "dev", DEVICE])?;
    }
    Ok(process)
}
