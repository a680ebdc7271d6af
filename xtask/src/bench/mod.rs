//! `cargo xtask bench`: builds the namespace lab, measures this project
//! against the kernel (routed, and the client speaking SOCKS5 itself) and
//! against a peer (tun2proxy), round by round, and writes JSON, a table and
//! SVG plots. `--soak MINUTES` instead runs one daemon under a mixed load
//! and checks its memory and errors. See docs/BENCHMARKS.md.
//!
//! Modules: `testbed` (the lab and the load tool), `impls` (what is
//! measured), `peer` (tun2proxy), `measure` (the measurements), `stats`
//! (medians, ratios), `report` (table, targets, JSON), `plot` (SVGs),
//! `soak` (the soak), `bare` (`--bare`: scaling with cores on a host
//! without iproute2, dante or cargo).

mod bare;
mod impls;
mod measure;
mod peer;
mod plot;
mod report;
mod soak;
mod stats;
mod testbed;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::{cargo, prereqs, section, signal};
use impls::{Binaries, Variant};
use measure::Settings;
use stats::Results;
use testbed::Testbed;

/// The daemon's default TUN MTU.
const DEFAULT_MTU: u32 = 9000;

#[derive(Args, Debug, Clone)]
pub struct Options {
    /// A one-minute smoke for CI: one round, short runs, workers 1 and 2,
    /// the default MTU only, no peer. Fails only if a measurement produced
    /// no number, never on a speed.
    #[arg(long)]
    pub quick: bool,
    /// Rounds; each runs every implementation once, in a rotated order.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// tun2socks worker counts, e.g. 1,2,4 [default: 1 to the number of CPUs].
    #[arg(long, value_delimiter = ',')]
    pub workers: Vec<u16>,
    /// TUN MTUs [default: 1500,9000].
    #[arg(long, value_delimiter = ',')]
    pub mtu: Vec<u32>,
    /// Measure host mode (AF_XDP on a veth pair) with these worker counts
    /// too [default: the largest of --workers]; 0 for none.
    #[arg(long, value_delimiter = ',')]
    pub xdp_workers: Vec<u16>,
    /// Measure the TUN daemon with `--tun-offload off` too (one packet per
    /// read or write, as before offload), with these worker counts
    /// [default: none].
    #[arg(long, value_delimiter = ',')]
    pub offload_off_workers: Vec<u16>,
    /// Measure the TUN daemon with `--worker-priority normal` too (workers
    /// share their cores like any process), with these worker counts
    /// [default: none].
    #[arg(long, value_delimiter = ',')]
    pub normal_priority_workers: Vec<u16>,
    /// Do not measure the peer (tun2proxy).
    #[arg(long)]
    pub no_peer: bool,
    /// Seconds of each timed measurement [default: 5; --quick: 1].
    #[arg(long)]
    pub secs: Option<f64>,
    /// Idle connections held for the memory figure [default: 10000; --quick: 500].
    #[arg(long)]
    pub hold: Option<usize>,
    /// MiB moved each way for CPU per GB [default: 1024; --quick: 64].
    #[arg(long)]
    pub cpu_mib: Option<u64>,
    /// Measure only these groups (comma-separated), e.g. --only udp.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub only: Vec<stats::Group>,
    /// Output directory [default: target/bench/<UTC time>].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// A prebuilt daemon (skips the build).
    #[arg(long)]
    pub daemon: Option<PathBuf>,
    /// A prebuilt t2s-load (skips its build).
    #[arg(long)]
    pub load_tool: Option<PathBuf>,
    /// A tun2proxy binary to use instead of the pinned one from crates.io.
    #[arg(long)]
    pub peer_bin: Option<PathBuf>,
    /// Measure nothing: rewrite table.md, results.json and the plots of an
    /// earlier run in DIR from its results.json.
    #[arg(long, value_name = "DIR")]
    pub report: Option<PathBuf>,
    /// Measure nothing: run one daemon (2 workers, default MTU) under a mixed
    /// TCP/UDP/DNS load for MINUTES; pass iff its RSS at the end is within 5 %
    /// of its RSS after the warm-up and nothing failed. Output directory
    /// [default: target/bench/soak-<UTC time>].
    #[arg(long, value_name = "MINUTES", conflicts_with_all = [
        "quick", "rounds", "workers", "mtu", "no_peer", "secs", "hold", "cpu_mib", "peer_bin", "report",
    ])]
    pub soak: Option<f64>,
    /// `--bare`: scaling with cores on a host without iproute2, dante or cargo.
    #[command(flatten)]
    pub bare: bare::BareArgs,
}

/// What a run does, with the defaults filled in.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Plan {
    pub quick: bool,
    pub rounds: usize,
    pub workers: Vec<u16>,
    /// Host mode's worker counts (none: not measured).
    #[serde(default)]
    pub xdp_workers: Vec<u16>,
    /// Worker counts of the TUN daemon with `--tun-offload off` (none: not
    /// measured).
    #[serde(default)]
    pub offload_off_workers: Vec<u16>,
    /// Worker counts of the TUN daemon with `--worker-priority normal`
    /// (none: not measured).
    #[serde(default)]
    pub normal_priority_workers: Vec<u16>,
    pub mtus: Vec<u32>,
    pub peer: bool,
    pub settings: Settings,
}

impl Plan {
    fn new(o: &Options) -> Result<Plan> {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u16;
        let q = o.quick;
        let workers = match (&o.workers[..], q) {
            ([], true) => vec![1, 2],
            ([], false) => (1..=cpus).collect(),
            (w, _) => w.to_vec(),
        };
        let xdp_workers = match &o.xdp_workers[..] {
            [] => workers.iter().max().into_iter().copied().collect(),
            [0] => Vec::new(),
            w => w.to_vec(),
        };
        let mtus = match (&o.mtu[..], q) {
            ([], true) => vec![DEFAULT_MTU],
            ([], false) => vec![1500, DEFAULT_MTU],
            (m, _) => m.to_vec(),
        };
        let offload_off_workers = o.offload_off_workers.clone();
        let normal_priority_workers = o.normal_priority_workers.clone();
        if workers.contains(&0)
            || xdp_workers.contains(&0)
            || offload_off_workers.contains(&0)
            || normal_priority_workers.contains(&0)
            || mtus.iter().any(|m| !(1280..=65535).contains(m))
        {
            bail!("workers must be at least 1 and MTUs 1280 to 65535");
        }
        let settings = Settings {
            secs: o.secs.unwrap_or(if q { 1.0 } else { 5.0 }),
            warmup: if q { 0.3 } else { 1.0 },
            hold: o.hold.unwrap_or(if q { 500 } else { 10_000 }),
            cpu_bytes: o.cpu_mib.unwrap_or(if q { 64 } else { 1024 }) << 20,
            only: o.only.clone(),
        };
        if !(0.1..=600.0).contains(&settings.secs) || settings.hold == 0 || settings.cpu_bytes == 0 {
            bail!("--secs must be 0.1 to 600, --hold and --cpu-mib at least 1");
        }
        Ok(Plan {
            quick: q,
            rounds: if q { 1 } else { o.rounds.max(1) },
            workers,
            xdp_workers,
            offload_off_workers,
            normal_priority_workers,
            mtus,
            peer: !q && !o.no_peer,
            settings,
        })
    }
}

pub fn run(opts: Options) -> Result<()> {
    if opts.bare.bare || opts.bare.pack.is_some() {
        return bare::run(&opts);
    }
    if let Some(dir) = &opts.report {
        return rewrite(dir);
    }
    if let Some(minutes) = opts.soak {
        // Fail on a bad duration before anything is built.
        soak::Timing::new(minutes)?;
    }
    let plan = Plan::new(&opts)?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the benchmark builds network namespaces: run it as root");
    }
    if opts.daemon.is_none() || opts.load_tool.is_none() {
        prereqs::ensure()?;
    }
    let daemon = match &opts.daemon {
        Some(path) => path.clone(),
        None => cargo::build_daemon(true)?,
    };
    let load = match &opts.load_tool {
        Some(path) => path.clone(),
        None => build_load_tool(&daemon)?,
    };
    if let Some(minutes) = opts.soak {
        return soak::run(minutes, &daemon, &load, opts.out.clone());
    }
    let mut not_measured = Vec::new();
    let peer = match (&opts.peer_bin, plan.peer) {
        (_, false) => {
            let why = if plan.quick { "--quick" } else { "--no-peer" };
            not_measured.push(("tun2proxy".to_owned(), format!("skipped ({why})")));
            None
        }
        (Some(path), true) => Some(path.clone()),
        (None, true) => match peer::ensure(&cargo::workspace_root().join("target/bench/tools")) {
            Ok(path) => Some(path),
            Err(e) => {
                eprintln!("bench: tun2proxy cannot be installed: {e:#}");
                not_measured.push(("tun2proxy".to_owned(), format!("cannot be installed: {e:#}")));
                None
            }
        },
    };
    let bins = Binaries { daemon, load, peer };
    let variants = impls::variants(
        &plan.workers,
        &plan.xdp_workers,
        &plan.offload_off_workers,
        &plan.normal_priority_workers,
        &plan.mtus,
        bins.peer.is_some(),
    );
    let out_dir = match &opts.out {
        Some(dir) => dir.clone(),
        None => cargo::workspace_root().join("target/bench").join(utc_stamp()),
    };
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;

    signal::install();
    raise_nofile_limit();
    let started = SystemTime::now();
    let mut results = Results::default();
    let outcome = measure_all(&plan, &bins, &variants, &mut results);
    let meta = report::Meta::collect(started, &bins, not_measured, &outcome);
    section(&format!("results ({})", out_dir.display()));
    let table = report::write(&out_dir, &meta, &plan, &variants, &results)?;
    println!("{table}");
    if let Err(e) = plot::write(&out_dir, &plan, &variants, &results) {
        eprintln!("bench: plots not written: {e:#}");
    }
    outcome?;
    let missing = report::missing(&plan, &variants, &results);
    if !missing.is_empty() {
        bail!("no number for: {}", missing.join("; "));
    }
    println!("written to {}", out_dir.display());
    Ok(())
}

/// `--report DIR`: the outputs of an earlier run, written again.
fn rewrite(dir: &Path) -> Result<()> {
    let saved = report::read(dir)?;
    let variants: Vec<Variant> = saved.variants.iter().map(|(_, v)| *v).collect();
    let results = Results {
        samples: saved.samples,
        failures: saved.failures,
    };
    let table = report::write(dir, &saved.meta, &saved.plan, &variants, &results)?;
    plot::write(dir, &saved.plan, &variants, &results)?;
    println!("{table}");
    println!("rewritten in {}", dir.display());
    Ok(())
}

/// All rounds, in a lab that is torn down when this returns (also on an
/// error or Ctrl-C).
fn measure_all(plan: &Plan, bins: &Binaries, variants: &[Variant], results: &mut Results) -> Result<()> {
    section("lab: app —veth— proxy (dante-server :1080) —veth— srv (t2s-load serve :9100)");
    let bed = Testbed::up(&bins.load)?;
    println!("namespaces {0}-app, {0}-proxy, {0}-srv", bed.lab().id());
    for round in 0..plan.rounds {
        let n = variants.len();
        for i in 0..n {
            let variant = &variants[(i + round) % n];
            if signal::stop_requested() {
                bail!("interrupted");
            }
            section(&format!("round {}/{}: {}", round + 1, plan.rounds, variant.label()));
            measure::variant(&bed, bins, &plan.settings, variant, round, results)?;
        }
    }
    Ok(())
}

fn build_load_tool(daemon: &Path) -> Result<PathBuf> {
    section("building t2s-load (release)");
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(cargo::workspace_root())
        .args(["build", "--release", "-p", "tun2socks-tests", "--bin", "t2s-load"]);
    let status = cmd.status().context("running cargo build")?;
    if !status.success() {
        bail!("building t2s-load failed: {status}");
    }
    // The daemon was built into the same profile directory.
    let path = daemon.with_file_name("t2s-load");
    if !path.is_file() {
        bail!("the build succeeded but {} is missing", path.display());
    }
    Ok(path)
}

/// Soft RLIMIT_NOFILE up to the hard limit: the daemon, dante and the load
/// tool inherit it and hold 10 000 connections each.
fn raise_nofile_limit() {
    // SAFETY: get/setrlimit with a valid struct.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// `YYYYMMDDTHHMMSSZ` now.
fn utc_stamp() -> String {
    let (y, mo, d, h, mi, s) = utc_parts(SystemTime::now());
    format!("{y:04}{mo:02}{d:02}T{h:02}{mi:02}{s:02}Z")
}

/// `YYYY-MM-DD HH:MM UTC`.
pub fn utc_text(t: SystemTime) -> String {
    let (y, mo, d, h, mi, _) = utc_parts(t);
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02} UTC")
}

fn utc_parts(t: SystemTime) -> (i64, u32, u32, u64, u64, u64) {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (y, mo, d) = civil_from_days((secs / 86_400) as i64);
    let s = secs % 86_400;
    (y, mo, d, s / 3600, s / 60 % 60, s % 60)
}

/// The Gregorian date of a day count since 1970-01-01 (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
    }

    #[test]
    fn quick_plan() {
        let o = Options {
            quick: true,
            rounds: 3,
            workers: vec![],
            xdp_workers: vec![],
            offload_off_workers: vec![],
            normal_priority_workers: vec![],
            mtu: vec![],
            no_peer: false,
            secs: None,
            hold: None,
            only: vec![],
            cpu_mib: None,
            out: None,
            daemon: None,
            load_tool: None,
            peer_bin: None,
            report: None,
            soak: None,
            bare: Default::default(),
        };
        let p = Plan::new(&o).unwrap();
        assert_eq!(
            (p.rounds, p.workers.clone(), p.mtus.clone(), p.peer),
            (1, vec![1, 2], vec![9000], false)
        );
        assert_eq!(p.xdp_workers, vec![2]);
    }
}
