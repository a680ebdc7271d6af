//! `tun2socks stats [--watch] [--netns NAME] [--device tun://NAME]`: the live
//! counters of a running instance, read from its control socket and printed
//! as a table (one column per worker, the total, and with `--watch` the rate
//! per second).

use std::fmt::Write as _;
use std::fs;
use std::io::{self, IsTerminal, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};

use super::control::{self, STATS_REQUEST};
use super::report::{Latency, Report};
use crate::netns::NETNS_RUN_DIR;

const TIMEOUT: Duration = Duration::from_secs(3);
const WATCH_INTERVAL: Duration = Duration::from_secs(1);

pub fn run(dir: &Path, watch: bool, netns: Option<&str>, device: Option<&str>) -> anyhow::Result<()> {
    let socket = find_socket(dir, netns, device)?;
    if !watch {
        io::stdout().write_all(table(&fetch(&socket)?, None).as_bytes())?;
        return Ok(());
    }
    // Until Ctrl-C (SIGINT's default action ends the process) or until the
    // instance goes away.
    let clear = io::stdout().is_terminal();
    let mut previous: Option<Report> = None;
    loop {
        let report = fetch(&socket).context("the instance stopped answering")?;
        let mut out = io::stdout().lock();
        if clear {
            // Home and clear screen.
            let _ = out.write_all(b"\x1b[H\x1b[2J");
        }
        // A closed stdout (`stats --watch | head`) ends the watch.
        writeln!(out, "{}", table(&report, previous.as_ref()))?;
        out.flush()?;
        drop(out);
        previous = Some(report);
        std::thread::sleep(WATCH_INTERVAL);
    }
}

/// The control socket of the instance in `netns` (or in ours).
pub fn find_socket(dir: &Path, netns: Option<&str>, device: Option<&str>) -> anyhow::Result<PathBuf> {
    let (inode, where_) = match netns {
        Some(name) => {
            if name.is_empty() || name.contains('/') || name == "." || name == ".." {
                bail!("{name:?} is not a network namespace name");
            }
            let path = Path::new(NETNS_RUN_DIR).join(name);
            let inode = fs::metadata(&path)
                .with_context(|| format!("network namespace {name} ({})", path.display()))?
                .ino();
            (inode, format!("network namespace {name}"))
        }
        None => (
            control::current_netns_inode().context("identifying our network namespace")?,
            "this network namespace".to_owned(),
        ),
    };
    let prefix = format!("{inode}-");
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            bail!("no tun2socks is running ({} does not exist)", dir.display())
        }
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            bail!("cannot read {}: permission denied (run as root)", dir.display())
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    let mut found: Vec<(String, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let dev = name.strip_prefix(&prefix)?.strip_suffix(".sock")?.to_owned();
            Some((dev, e.path()))
        })
        .filter(|(dev, _)| device.is_none_or(|want| want == dev))
        .collect();
    found.sort();
    // Sockets left by killed instances refuse connections: skip them. (A
    // namespace's inode may also be reused by a later namespace, whose
    // name prefix then matches a dead one's leftovers.)
    let before = found.len();
    found.retain(
        |(_, path)| !matches!(UnixStream::connect(path), Err(e) if e.kind() == io::ErrorKind::ConnectionRefused),
    );
    let stale = before - found.len();
    let stale_note = match stale {
        0 => String::new(),
        n => format!("; {n} stale socket file(s) of killed instances ignored"),
    };
    match found.len() {
        0 => match device {
            Some(dev) => bail!("no tun2socks with device {dev} is running in {where_}{stale_note}"),
            None => bail!(
                "no tun2socks is running in {where_} (no live {}/{prefix}*.sock{stale_note})",
                dir.display()
            ),
        },
        1 => Ok(found.remove(0).1),
        _ => {
            let devices: Vec<String> = found.iter().map(|(d, _)| format!("tun://{d}")).collect();
            bail!(
                "several instances run in {where_} ({}): choose one with --device",
                devices.join(", ")
            )
        }
    }
}

/// Asks the instance behind `socket` for its report.
pub fn fetch(socket: &Path) -> anyhow::Result<Report> {
    let mut stream = UnixStream::connect(socket).map_err(|e| {
        let hint = match e.kind() {
            io::ErrorKind::PermissionDenied => " (run as root)",
            io::ErrorKind::ConnectionRefused => " (the instance is gone; its socket file is stale)",
            _ => "",
        };
        anyhow::Error::new(e).context(format!("connecting to {}{hint}", socket.display()))
    })?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    stream.write_all(format!("{STATS_REQUEST}\n").as_bytes())?;
    let mut text = String::new();
    stream
        .read_to_string(&mut text)
        .with_context(|| format!("reading from {}", socket.display()))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("the answer of {} is not JSON", socket.display()))?;
    if let Some(error) = value.get("error") {
        bail!("the instance answered: {error}");
    }
    serde_json::from_value(value).with_context(|| format!("the answer of {} is not a report", socket.display()))
}

/// The report as a table; with the previous report, a rate column too.
pub fn table(report: &Report, previous: Option<&Report>) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "tun2socks {} · pid {} · device {} · up {} · {} workers",
        report.version,
        report.pid,
        report.device,
        duration(report.uptime_secs),
        report.workers.len()
    );
    let elapsed = previous
        .map(|p| report.uptime_secs - p.uptime_secs)
        .filter(|e| *e > 0.0);
    let mut header = format!("{:<24}", "");
    for w in &report.workers {
        let name = if w.answered {
            format!("worker {}", w.worker)
        } else {
            format!("worker {} (silent)", w.worker)
        };
        let _ = write!(header, "{name:>14}");
    }
    let _ = write!(header, "{:>14}", "total");
    if elapsed.is_some() {
        let _ = write!(header, "{:>12}", "/s");
    }
    let _ = writeln!(out, "{}", header.trim_end());
    for key in report.keys() {
        let mut row = format!("{key:<24}");
        for w in &report.workers {
            let cell = w.values.get(&key).map_or("-".to_owned(), u64::to_string);
            let _ = write!(row, "{cell:>14}");
        }
        let total = report.total(&key);
        let _ = write!(row, "{total:>14}");
        if let (Some(secs), Some(prev)) = (elapsed, previous)
            && Report::is_counter(&key)
        {
            let rate = total.saturating_sub(prev.total(&key)) as f64 / secs;
            let _ = write!(row, "{:>12}", format!("{rate:.0}"));
        }
        let _ = writeln!(out, "{}", row.trim_end());
    }
    let mut all = Latency::default();
    let mut row = format!("{:<24}", "connect p50/p99");
    for w in &report.workers {
        all.add(&w.connect_latency);
        let _ = write!(row, "{:>14}", quantiles(&w.connect_latency));
    }
    let _ = write!(row, "{:>14}", quantiles(&all));
    let _ = writeln!(out, "{}", row.trim_end());
    out
}

/// `≤2.5ms/≤10ms`: the bucket bounds holding the median and the 99th percentile.
fn quantiles(latency: &Latency) -> String {
    if latency.count() == 0 {
        return "-".to_owned();
    }
    let show = |q| match latency.quantile_bound(q) {
        Some(us) if us < 1_000 => format!("≤{us}µs"),
        Some(us) if us < 1_000_000 => format!("≤{}ms", us as f64 / 1e3),
        Some(us) => format!("≤{}s", us as f64 / 1e6),
        None => ">max".to_owned(),
    };
    format!("{}/{}", show(0.5), show(0.99))
}

fn duration(secs: f64) -> String {
    let s = secs as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::report::WorkerReport;
    use crate::worker::{WorkerSnapshot, WorkerStats};

    fn report(bytes: u64, uptime: f64) -> Report {
        let snapshot = WorkerSnapshot {
            stats: WorkerStats {
                bytes_in: bytes,
                ..Default::default()
            },
            tcp_sessions: 2,
            udp_sessions: 0,
            tcp_buffer_bytes: 0,
        };
        Report {
            version: "0.1.0".into(),
            pid: 1,
            device: "t0".into(),
            uptime_secs: uptime,
            workers: vec![WorkerReport::of(0, Some(&snapshot)), WorkerReport::of(1, None)],
        }
    }

    #[test]
    fn the_table_shows_workers_totals_and_rates() {
        let text = table(&report(3000, 12.0), Some(&report(1000, 10.0)));
        let row = |key: &str| {
            text.lines()
                .find(|l| l.split_whitespace().next() == Some(key))
                .unwrap_or_else(|| panic!("no {key} row in:\n{text}"))
                .split_whitespace()
                .skip(1)
                .collect::<Vec<_>>()
                .join(" ")
        };
        assert_eq!(row("bytes_in"), "3000 - 3000 1000");
        assert_eq!(row("tcp_sessions"), "2 - 2");
        assert!(text.contains("worker 1 (silent)"), "{text}");
        assert!(text.lines().next().unwrap().contains("up 12s"), "{text}");
    }

    #[test]
    fn finds_the_socket_of_a_namespace() {
        let dir = std::env::temp_dir().join(format!("t2s-stats-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let inode = control::current_netns_inode().unwrap();
        let err = find_socket(&dir, None, None).unwrap_err().to_string();
        assert!(err.contains("no tun2socks is running"), "{err}");
        let socket = |name: &str| dir.join(format!("{inode}-{name}.sock"));
        let a = std::os::unix::net::UnixListener::bind(socket("a0")).unwrap();
        assert_eq!(find_socket(&dir, None, None).unwrap(), socket("a0"));
        let b = std::os::unix::net::UnixListener::bind(socket("b0")).unwrap();
        fs::write(dir.join(format!("{}-c0.sock", inode + 1)), "").unwrap();
        let err = find_socket(&dir, None, None).unwrap_err().to_string();
        assert!(err.contains("tun://a0, tun://b0"), "{err}");
        assert_eq!(find_socket(&dir, None, Some("b0")).unwrap(), socket("b0"));
        // Nobody listens on a stale socket: it does not count when there is a choice.
        drop(b);
        assert_eq!(find_socket(&dir, None, None).unwrap(), socket("a0"));
        // Nor when it is the only one left: nothing is running.
        drop(a);
        let err = find_socket(&dir, None, None).unwrap_err().to_string();
        assert!(
            err.contains("no tun2socks is running") && err.contains("2 stale socket file(s)"),
            "{err}"
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
