//! `cargo xtask bench --bare`: throughput against worker count on a host
//! that has nothing but a Linux kernel and root: no iproute2, no iperf3, no
//! dante, no cargo. The lab is built with the project's own rtnetlink code
//! (`netns`, `topo`), the SOCKS server and the load are `t2s-load`, and the
//! three binaries (`xtask`, `tun2socks`, `t2s-load`) can be carried there
//! with `--pack DIR`. See docs/BENCHMARKS.md, "Scaling with cores".
//!
//! Per round, in an order rotated by one each round: the kernel routed
//! path, the kernel SOCKS path (the client speaks SOCKS5 itself), and
//! tun2socks with each worker count; for each, TCP throughput with 1 and
//! with N streams, each way, and the CPU the daemon and the SOCKS server
//! used meanwhile.

mod daemon;
mod netns;
mod pack;
mod report;
mod topo;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use clap::Args;
use serde::{Deserialize, Serialize};

use super::testbed::{field, proc_cpu_seconds};
use super::{DEFAULT_MTU, Options};
use crate::{cargo, section, signal};
use daemon::Daemon;
use topo::BareLab;

/// The flags of `--bare` (the others it uses: `--workers`, `--mtu`,
/// `--rounds`, `--secs`, `--out`, `--daemon`, `--load-tool`).
#[derive(Args, Debug, Clone, Default)]
pub struct BareArgs {
    /// Scaling with cores, on any Linux host (no iproute2, iperf3, dante or
    /// cargo needed when --daemon and --load-tool are given, or next to a
    /// packed xtask): TCP throughput of tun2socks per worker count against
    /// the kernel paths. Output: target/bench/bare-<UTC time>/.
    #[arg(long)]
    pub bare: bool,
    /// Measure nothing: build xtask, tun2socks and t2s-load (release) and
    /// copy them with a README into DIR, to run `./xtask bench --bare` on
    /// another host.
    #[arg(long, value_name = "DIR")]
    pub pack: Option<PathBuf>,
    /// With --bare: streams of the many-stream measurements [default: the
    /// larger of 8 and twice the number of CPUs].
    #[arg(long)]
    pub streams: Option<usize>,
}

/// The README that `--pack` writes; its presence next to the running
/// `xtask` means "use the binaries beside me".
pub const PACK_README: &str = "README-bench-bare.txt";

/// What a `--bare` run does, with the defaults filled in.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BarePlan {
    pub rounds: usize,
    pub workers: Vec<u16>,
    pub mtus: Vec<u32>,
    pub secs: f64,
    pub warmup: f64,
    /// Streams of the many-stream measurements.
    pub streams: usize,
    pub cpus: usize,
}

impl BarePlan {
    fn new(o: &Options) -> Result<BarePlan> {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let workers = if o.workers.is_empty() {
            default_workers(cpus)
        } else {
            o.workers.clone()
        };
        let mtus = if o.mtu.is_empty() {
            vec![DEFAULT_MTU]
        } else {
            o.mtu.clone()
        };
        if workers.contains(&0) || mtus.iter().any(|m| !(1280..=65535).contains(m)) {
            bail!("workers must be at least 1 and MTUs 1280 to 65535");
        }
        let secs = o.secs.unwrap_or(5.0);
        if !(0.1..=600.0).contains(&secs) {
            bail!("--secs must be 0.1 to 600");
        }
        let streams = o.bare.streams.unwrap_or((2 * cpus).max(8));
        if streams == 0 || streams > 1024 {
            bail!("--streams must be 1 to 1024");
        }
        Ok(BarePlan {
            rounds: o.rounds.max(1),
            workers,
            mtus,
            secs,
            warmup: if secs < 2.0 { 0.5 } else { 1.0 },
            streams,
            cpus,
        })
    }

    fn variants(&self) -> Vec<Variant> {
        let mut all = vec![Variant::Routed, Variant::Socks];
        for &mtu in &self.mtus {
            for &workers in &self.workers {
                all.push(Variant::Tun2socks { workers, mtu });
            }
        }
        all
    }

    /// The four TCP measurements: (direction, streams).
    fn tcp_runs(&self) -> [(Dir, usize); 4] {
        [
            (Dir::Up, 1),
            (Dir::Down, 1),
            (Dir::Up, self.streams),
            (Dir::Down, self.streams),
        ]
    }

    /// A rough duration of the whole run, for the user.
    fn estimate(&self) -> Duration {
        let per_variant = 4.0 * (self.secs + self.warmup + 0.3) + 1.5;
        Duration::from_secs_f64(per_variant * (self.variants().len() * self.rounds) as f64 + 5.0)
    }
}

/// Powers of two up to `cpus`, and `cpus` itself.
fn default_workers(cpus: usize) -> Vec<u16> {
    let cpus = cpus.clamp(1, usize::from(u16::MAX)) as u16;
    let mut w: Vec<u16> = (0..16).map(|i| 1u16 << i).take_while(|&n| n <= cpus).collect();
    if w.last() != Some(&cpus) {
        w.push(cpus);
    }
    w
}

/// What carries `app`'s traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Variant {
    /// No proxy: `proxy` forwards.
    Routed,
    /// No TUN: the client speaks SOCKS5 to the SOCKS server itself.
    Socks,
    Tun2socks {
        workers: u16,
        mtu: u32,
    },
}

impl Variant {
    pub fn label(&self, mtus: &[u32]) -> String {
        match *self {
            Variant::Routed => "kernel routed".into(),
            Variant::Socks => "kernel SOCKS".into(),
            Variant::Tun2socks { workers, mtu } if mtus.len() > 1 => format!("tun2socks w{workers} mtu{mtu}"),
            Variant::Tun2socks { workers, .. } => format!("tun2socks w{workers}"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dir {
    Up,
    Down,
}

impl Dir {
    fn arg(self) -> &'static str {
        match self {
            Dir::Up => "up",
            Dir::Down => "down",
        }
    }
}

/// What one TCP measurement yields.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Quantity {
    /// Gbit/s counted by the load tool (after its warm-up).
    Gbit,
    /// CPU of the daemon over the whole load run, in cores (1 = one core busy).
    DaemonCores,
    /// The busiest daemon thread's CPU over the run, in cores.
    DaemonBusiestThread,
    /// CPU of the SOCKS server over the run, in cores.
    SocksCores,
    /// CPU of the load tool (client side), in cores.
    ClientCores,
}

/// One number of one round.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Sample {
    pub round: usize,
    pub variant: Variant,
    pub dir: Dir,
    pub streams: usize,
    pub quantity: Quantity,
    pub value: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Failure {
    pub round: usize,
    pub variant: Variant,
    pub what: String,
    pub error: String,
}

#[derive(Default, Debug, Serialize, Deserialize)]
pub struct BareResults {
    pub samples: Vec<Sample>,
    pub failures: Vec<Failure>,
}

/// The binaries a run uses.
struct Bins {
    daemon: PathBuf,
    load: PathBuf,
}

pub fn run(o: &Options) -> Result<()> {
    if o.quick || o.soak.is_some() || o.report.is_some() || !o.only.is_empty() {
        bail!("--bare measures TCP throughput only: it takes no --quick, --soak, --report or --only");
    }
    if let Some(dir) = &o.bare.pack {
        return pack::run(dir);
    }
    let plan = BarePlan::new(o)?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the benchmark builds network namespaces: run it as root");
    }
    let bins = binaries(o)?;
    let out_dir = match &o.out {
        Some(dir) => dir.clone(),
        None => default_out_dir(),
    };
    let log_dir = out_dir.join("logs");
    std::fs::create_dir_all(&log_dir).with_context(|| format!("creating {}", log_dir.display()))?;
    signal::install();
    super::raise_nofile_limit();

    let variants = plan.variants();
    section(&format!(
        "bare scaling run: {} rounds × {} paths × 4 TCP runs of {} s (+{} s warm-up), {} CPUs; about {} min",
        plan.rounds,
        variants.len(),
        plan.secs,
        plan.warmup,
        plan.cpus,
        plan.estimate().as_secs().div_ceil(60)
    ));
    println!("daemon {}, load tool {}", bins.daemon.display(), bins.load.display());
    let started = SystemTime::now();
    let mut results = BareResults::default();
    let outcome = measure_all(&plan, &bins, &variants, &log_dir, &mut results);
    section(&format!("results ({})", out_dir.display()));
    let table = report::write(&out_dir, &plan, &bins.daemon, started, &results, &outcome)?;
    println!("{table}");
    outcome?;
    if !results.failures.is_empty() {
        bail!(
            "{} measurement(s) failed (see the table and {})",
            results.failures.len(),
            log_dir.display()
        );
    }
    println!("written to {}", out_dir.display());
    Ok(())
}

/// `target/bench/bare-<time>` in the workspace, or `./bench-bare-<time>`
/// where there is none (a packed xtask on another host).
fn default_out_dir() -> PathBuf {
    let name = format!("bare-{}", super::utc_stamp());
    let root = cargo::workspace_root();
    if !packed() && root.join("Cargo.toml").is_file() {
        root.join("target/bench").join(name)
    } else {
        PathBuf::from(format!("bench-{name}"))
    }
}

/// Whether the running xtask was carried by `--pack` (its README beside it).
fn packed() -> bool {
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.join(PACK_README)))
        .is_some_and(|readme| readme.is_file())
}

/// `--daemon` / `--load-tool`, else the packed binaries beside this xtask,
/// else built with cargo (release).
fn binaries(o: &Options) -> Result<Bins> {
    let beside = |name: &str| {
        let exe = std::env::current_exe().context("locating the running xtask")?;
        Ok::<_, anyhow::Error>(exe.with_file_name(name))
    };
    let daemon = match &o.daemon {
        Some(path) => path.clone(),
        None if packed() => beside("tun2socks")?,
        None => cargo::build_daemon(true)?,
    };
    let load = match &o.load_tool {
        Some(path) => path.clone(),
        None if packed() => beside("t2s-load")?,
        None => super::build_load_tool(&daemon)?,
    };
    for path in [&daemon, &load] {
        if !path.is_file() {
            bail!("{} is not a file", path.display());
        }
    }
    Ok(Bins {
        daemon: absolute(&daemon)?,
        load: absolute(&load)?,
    })
}

fn absolute(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("resolving {}", path.display()))
}

/// All rounds in one lab, torn down when this returns (also on an error or
/// Ctrl-C).
fn measure_all(
    plan: &BarePlan,
    bins: &Bins,
    variants: &[Variant],
    log_dir: &Path,
    results: &mut BareResults,
) -> Result<()> {
    section("lab: app —veth— proxy (t2s-load socks-server :1080) —veth— srv (t2s-load serve :9100), over rtnetlink");
    let threads = plan.cpus.max(2);
    let lab = BareLab::up(&bins.load, log_dir, threads)?;
    println!("namespaces {}", lab.names());
    for round in 0..plan.rounds {
        let n = variants.len();
        for i in 0..n {
            let variant = variants[(i + round) % n];
            if signal::stop_requested() {
                bail!("interrupted");
            }
            section(&format!(
                "round {}/{}: {}",
                round + 1,
                plan.rounds,
                variant.label(&plan.mtus)
            ));
            let mut m = Measurer {
                lab: &lab,
                plan,
                variant,
                round,
                results,
            };
            m.variant(bins)?;
        }
    }
    Ok(())
}

struct Measurer<'a> {
    lab: &'a BareLab,
    plan: &'a BarePlan,
    variant: Variant,
    round: usize,
    results: &'a mut BareResults,
}

/// A started path: the routed baseline's switch, or the daemon.
enum Running<'a> {
    Routed(#[allow(dead_code)] topo::Routed<'a>),
    Socks,
    Tunnel(Daemon),
}

impl Measurer<'_> {
    fn variant(&mut self, bins: &Bins) -> Result<()> {
        let mut running = match start(self.lab, bins, self.variant, self.round) {
            Ok(running) => running,
            Err(e) => return self.failed("starting", e),
        };
        let path = path_args(self.variant);
        for (dir, streams) in self.plan.tcp_runs() {
            let what = format!("TCP {} {streams} stream(s)", dir.arg());
            println!("  {what}");
            if let Running::Tunnel(daemon) = &mut running
                && daemon.ensure_running().is_err()
            {
                break;
            }
            if let Err(e) = self.tcp(&running, &path, dir, streams) {
                self.failed(&what, e)?;
            }
        }
        let stopped = match running {
            Running::Tunnel(daemon) => daemon.stop(),
            Running::Routed(_) | Running::Socks => Ok(()),
        };
        if let Err(e) = stopped {
            self.failed("stopping", e)?;
        }
        Ok(())
    }

    fn tcp(&mut self, running: &Running, path: &[String], dir: Dir, streams: usize) -> Result<()> {
        let (secs, warmup) = (self.plan.secs, self.plan.warmup);
        let mut args = vec![
            "tcp".to_owned(),
            "--streams".into(),
            streams.to_string(),
            "--dir".into(),
            dir.arg().into(),
            "--secs".into(),
            secs.to_string(),
            "--warmup".into(),
            warmup.to_string(),
            "--timeout".into(),
            (secs + warmup + 30.0).to_string(),
        ];
        args.extend_from_slice(path);
        let daemon = match running {
            Running::Tunnel(d) => Some(d),
            _ => None,
        };
        let cpu = |pid: u32| proc_cpu_seconds(pid, false);
        let daemon_before = daemon
            .map(|d| Ok::<_, anyhow::Error>((cpu(d.pid())?, d.thread_cpu()?)))
            .transpose()?;
        let socks_before = cpu(self.lab.socks_pid())?;
        let t0 = Instant::now();
        let f = self
            .lab
            .run_load("tcp", &args, Duration::from_secs_f64(secs + warmup + 40.0))?;
        let wall = t0.elapsed().as_secs_f64();
        let gbit = field(&f, "gbit_s")?;
        println!("    {gbit:.2} Gbit/s");
        self.add(dir, streams, Quantity::Gbit, gbit);
        // The tool's own cpu_s covers its counted seconds only.
        self.add(dir, streams, Quantity::ClientCores, field(&f, "cpu_pct")? / 100.0);
        if matches!(self.variant, Variant::Socks | Variant::Tun2socks { .. }) {
            let socks = (cpu(self.lab.socks_pid())? - socks_before) / wall;
            self.add(dir, streams, Quantity::SocksCores, socks);
        }
        if let (Some(d), Some((before, threads_before))) = (daemon, daemon_before) {
            let cores = (cpu(d.pid())? - before) / wall;
            let busiest = d
                .thread_cpu()?
                .iter()
                .map(|(tid, after)| after - threads_before.get(tid).copied().unwrap_or(0.0))
                .fold(0.0, f64::max)
                / wall;
            println!("    daemon {cores:.2} cores (busiest thread {busiest:.2})");
            self.add(dir, streams, Quantity::DaemonCores, cores);
            self.add(dir, streams, Quantity::DaemonBusiestThread, busiest);
        }
        Ok(())
    }

    fn add(&mut self, dir: Dir, streams: usize, quantity: Quantity, value: f64) {
        self.results.samples.push(Sample {
            round: self.round,
            variant: self.variant,
            dir,
            streams,
            quantity,
            value,
        });
    }

    /// Records a failure and goes on; only an interruption is returned.
    fn failed(&mut self, what: &str, e: anyhow::Error) -> Result<()> {
        if signal::stop_requested() {
            bail!("interrupted");
        }
        eprintln!("  failed: {what}: {e:#}");
        self.results.failures.push(Failure {
            round: self.round,
            variant: self.variant,
            what: what.to_owned(),
            error: format!("{e:#}"),
        });
        Ok(())
    }
}

/// Starts `variant` and waits (bounded) until a connection gets through it.
fn start<'a>(lab: &'a BareLab, bins: &Bins, variant: Variant, round: usize) -> Result<Running<'a>> {
    let mut running = match variant {
        Variant::Routed => Running::Routed(lab.routed()?),
        Variant::Socks => Running::Socks,
        Variant::Tun2socks { workers, mtu } => Running::Tunnel(Daemon::start(lab, &bins.daemon, workers, mtu, round)?),
    };
    lab.wait_for_path(&path_args(variant), || match &mut running {
        Running::Tunnel(daemon) => daemon.ensure_running(),
        _ => Ok(()),
    })?;
    Ok(running)
}

/// The load tool's `--to` (and `--socks5`) arguments for a path.
fn path_args(variant: Variant) -> Vec<String> {
    let mut args = vec!["--to".to_owned(), topo::target().to_string()];
    if variant == Variant::Socks {
        args.extend(["--socks5".to_owned(), topo::socks_addr().to_string()]);
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        options: Options,
    }

    fn options(args: &[&str]) -> Options {
        Cli::parse_from(std::iter::once("bench").chain(args.iter().copied())).options
    }

    #[test]
    fn workers_by_default() {
        assert_eq!(default_workers(1), [1]);
        assert_eq!(default_workers(2), [1, 2]);
        assert_eq!(default_workers(12), [1, 2, 4, 8, 12]);
        assert_eq!(default_workers(16), [1, 2, 4, 8, 16]);
    }

    #[test]
    fn plan_from_flags() {
        let o = options(&[
            "--bare",
            "--workers",
            "1,2,4,8",
            "--secs",
            "2",
            "--rounds",
            "1",
            "--streams",
            "32",
        ]);
        assert!(o.bare.bare);
        let plan = BarePlan::new(&o).unwrap();
        assert_eq!(
            (plan.workers.clone(), plan.mtus.clone(), plan.rounds),
            (vec![1, 2, 4, 8], vec![9000], 1)
        );
        assert_eq!(plan.tcp_runs()[3], (Dir::Down, 32));
        let v = plan.variants();
        assert_eq!(v.len(), 6);
        assert_eq!(v[0], Variant::Routed);
        assert_eq!(v[5].label(&plan.mtus), "tun2socks w8");
        assert!(BarePlan::new(&options(&["--bare", "--workers", "0"])).is_err());
        assert!(BarePlan::new(&options(&["--bare", "--streams", "0"])).is_err());
        let packing = options(&["--bare", "--pack", "/tmp/x"]);
        assert_eq!(packing.bare.pack.as_deref(), Some(Path::new("/tmp/x")));
    }
}
