//! The benchmark's lab: the test lab (`lab::Lab`) with dante-server in
//! `proxy` and the load server in `srv`, plus what the measurements need from
//! it: bounded runs of the load tool in `app`, the routed baseline's switch,
//! and readings from `/proc`.

use std::collections::BTreeMap;
use std::fs;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use lab::Lab;
use lab::process::Process;
use lab::topology::{addr, port};

use crate::signal;

/// Where `t2s-load serve` listens in `srv` (TCP and UDP).
pub const LOAD_PORT: u16 = 9100;

/// The load server, as the applications in `app` address it.
pub fn target() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(addr::SRV_V4), LOAD_PORT)
}

/// dante-server, as a client in `app` reaches it.
pub fn dante() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(addr::PROXY_V4), port::DANTE)
}

/// The lab with the benchmark's servers running.
pub struct Testbed {
    lab: Lab,
    load_tool: PathBuf,
    load_server_pid: u32,
}

/// The `key=value` fields of a load tool's result line.
pub type Fields = BTreeMap<String, f64>;

impl Testbed {
    pub fn up(load_tool: &Path) -> Result<Self> {
        let lab = Lab::up()?;
        for ns in [lab.app(), lab.proxy(), lab.srv()] {
            // Connection-rate runs open tens of thousands of connections.
            ns.sysctl("net.ipv4.ip_local_port_range", "1024 65535")?;
            ns.sysctl("net.ipv4.tcp_tw_reuse", "1")?;
        }
        lab.start_dante()?;
        let mut cmd = lab.srv().command(&load_tool.to_string_lossy());
        cmd.args(["serve", "--listen", &format!("[::]:{LOAD_PORT}")]);
        lab.spawn_server("load-server", cmd, &[LOAD_PORT])?;
        let pids = lab.srv().pids()?;
        let [pid] = pids[..] else {
            bail!(
                "expected only the load server in {}, found pids {pids:?}",
                lab.srv().name()
            );
        };
        Ok(Testbed {
            lab,
            load_tool: load_tool.to_owned(),
            load_server_pid: pid as u32,
        })
    }

    pub fn lab(&self) -> &Lab {
        &self.lab
    }

    /// A `t2s-load ARGS...` command inside `app`.
    fn load_command(&self, args: &[String]) -> std::process::Command {
        let mut cmd = self.lab.app().command(&self.load_tool.to_string_lossy());
        cmd.args(args);
        cmd
    }

    /// Runs the load tool in `app` to completion, at most `limit`, and returns
    /// the fields of its result line (the one starting with `kind`).
    pub fn run_load(&self, kind: &str, args: &[String], limit: Duration) -> Result<Fields> {
        let mut tool = Process::spawn("t2s-load", self.load_command(args), &self.lab.log_path("load"))?;
        let shown = format!("t2s-load {}", args.join(" "));
        let status = wait_exit(&mut tool, limit).with_context(|| format!("{shown}\n{}", tool.log()))?;
        let log = tool.log();
        if !status.success() {
            let last = log.lines().last().unwrap_or("").to_owned();
            bail!("{last} ({status})\n{shown}\n{}", log.trim_end());
        }
        result_line(&log, kind).with_context(|| format!("{shown} printed no `{kind}` line:\n{log}"))
    }

    /// Waits (20 s at most) until a short connection-rate run through
    /// `path_args` succeeds: the path is up (routes and devices settle).
    /// `alive` fails if the implementation has died meanwhile.
    pub fn wait_for_path(&self, what: &str, path_args: &[String], mut alive: impl FnMut() -> Result<()>) -> Result<()> {
        let mut args = vec!["conn-rate".to_owned(), "--secs".into(), "0.2".into()];
        args.extend_from_slice(path_args);
        let mut last_error = None;
        wait_until(&format!("a connection through {what}"), Duration::from_secs(20), || {
            alive()?;
            match self.run_load("conn", &args, Duration::from_secs(15)) {
                Ok(_) => Ok(true),
                Err(e) => {
                    last_error = Some(e);
                    Ok(false)
                }
            }
        })
        .with_context(|| format!("last attempt: {last_error:?}"))
    }

    /// Starts the load tool in `app` in the background (killed on drop).
    pub fn spawn_load(&self, args: &[String]) -> Result<Process> {
        Process::spawn("t2s-load", self.load_command(args), &self.lab.log_path("load"))
    }

    /// Established TCP connections of the load server (in `srv`).
    pub fn established(&self) -> Result<usize> {
        let mut n = 0;
        for table in ["tcp", "tcp6"] {
            let path = format!("/proc/{}/net/{table}", self.load_server_pid);
            let text = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
            n += text
                .lines()
                .skip(1)
                .filter(|line| {
                    let mut fields = line.split_whitespace();
                    let local = fields.nth(1).unwrap_or("");
                    let state = fields.nth(1).unwrap_or("");
                    state == "01" && local.ends_with(&format!(":{LOAD_PORT:04X}"))
                })
                .count();
        }
        Ok(n)
    }

    /// CPU seconds used so far by everything running in `proxy` (dante and
    /// the children it reaped).
    pub fn proxy_cpu_seconds(&self) -> Result<f64> {
        let mut total = 0.0;
        for pid in self.lab.proxy().pids()? {
            // A child may exit between listing and reading.
            if let Ok(cpu) = proc_cpu_seconds(pid as u32, true) {
                total += cpu;
            }
        }
        Ok(total)
    }

    /// Lets `proxy` forward between `app` and `srv` (the routed baseline)
    /// until the guard is dropped. Only the lab's namespaces change.
    pub fn routed(&self) -> Result<Routed<'_>> {
        let guard = Routed { lab: &self.lab };
        self.lab.proxy().sysctl("net.ipv4.ip_forward", "1")?;
        self.lab.srv().ip(&["route", "add", "10.0.1.0/24", "via", "10.0.2.1"])?;
        Ok(guard)
    }
}

/// The routed baseline's forwarding; undone on drop.
pub struct Routed<'a> {
    lab: &'a Lab,
}

impl Drop for Routed<'_> {
    fn drop(&mut self) {
        let _ = self.lab.srv().ip(&["route", "del", "10.0.1.0/24", "via", "10.0.2.1"]);
        if let Err(e) = self.lab.proxy().sysctl("net.ipv4.ip_forward", "0") {
            eprintln!("bench: cannot turn forwarding off again: {e:#}");
        }
    }
}

/// Waits for a process to exit, at most `limit`, and gives up early on
/// Ctrl-C; kills it in both cases.
pub fn wait_exit(process: &mut Process, limit: Duration) -> Result<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = process.try_exit()? {
            return Ok(status);
        }
        if signal::stop_requested() {
            process.kill();
            bail!("interrupted");
        }
        if Instant::now() >= deadline {
            process.kill();
            bail!("{} did not finish within {limit:?}; killed", process.name());
        }
        sleep(Duration::from_millis(20));
    }
}

/// The `key=value` fields of the last line starting with `kind `.
pub fn result_line(log: &str, kind: &str) -> Option<Fields> {
    let line = log.lines().rev().find(|l| l.starts_with(&format!("{kind} ")))?;
    Some(
        line.split_whitespace()
            .filter_map(|token| token.split_once('='))
            .filter_map(|(k, v)| Some((k.to_owned(), v.parse().ok()?)))
            .collect(),
    )
}

/// One numeric field of a result line.
pub fn field(fields: &Fields, key: &str) -> Result<f64> {
    fields
        .get(key)
        .copied()
        .with_context(|| format!("no {key} in {fields:?}"))
}

/// Resident memory of a process, in bytes.
pub fn proc_rss_bytes(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let kib: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no VmRSS in {path}"))?;
    Ok(kib * 1024)
}

/// User + system CPU seconds of a process (all its threads), optionally
/// with its reaped children.
pub fn proc_cpu_seconds(pid: u32, children: bool) -> Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The command name may contain anything; the fields after it do not.
    let after = text.rsplit_once(')').map(|(_, rest)| rest).context("malformed stat")?;
    let fields: Vec<u64> = after.split_whitespace().map(|f| f.parse().unwrap_or(0)).collect();
    // utime, stime, cutime, cstime are fields 14-17; `after` starts at field 3.
    let ticks: u64 = if children {
        fields.get(11..15).context("short stat")?.iter().sum()
    } else {
        fields.get(11..13).context("short stat")?.iter().sum()
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok(ticks as f64 / hz)
}

/// Polls `check` every 100 ms until it is true, at most `limit`; Ctrl-C
/// ends it early with an error.
pub fn wait_until(what: &str, limit: Duration, mut check: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        if check()? {
            return Ok(());
        }
        if signal::stop_requested() {
            bail!("interrupted");
        }
        if Instant::now() >= deadline {
            bail!("timed out after {limit:?} waiting for {what}");
        }
        sleep(Duration::from_millis(100));
    }
}
