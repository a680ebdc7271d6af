//! The run's outputs: `results.json` (every sample, the summaries, the
//! machine), `table.md` (what is printed), and the verdict on the targets of
//! issue 5.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::SystemTime;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::impls::{Binaries, Kind, Variant};
use super::stats::{Metric, Results, Summary};
use super::{DEFAULT_MTU, Plan, peer, utc_text};

/// Where and how the run happened.
#[derive(Debug, Serialize, Deserialize)]
pub struct Meta {
    pub date_utc: String,
    pub duration_s: f64,
    pub command: String,
    pub kernel: String,
    pub cpus: usize,
    pub cpu_model: String,
    pub socks_server: String,
    pub daemon: String,
    pub peer: Option<String>,
    /// Implementations not measured, and why.
    pub not_measured: Vec<(String, String)>,
    /// "complete", or why the run stopped early.
    pub outcome: String,
}

impl Meta {
    pub fn collect(
        started: SystemTime,
        bins: &Binaries,
        not_measured: Vec<(String, String)>,
        outcome: &Result<()>,
    ) -> Meta {
        let cpu_model = fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|t| {
                t.lines().find_map(|l| {
                    l.strip_prefix("model name")
                        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
                })
            })
            .unwrap_or_else(|| "unknown".into());
        // "Dante v1.4.2.  Copyright ..." → "Dante v1.4.2"
        let danted = command_line("danted", &["-v"]);
        let danted = danted.split(".  ").next().unwrap_or("").to_owned();
        Meta {
            date_utc: utc_text(started),
            duration_s: started.elapsed().map_or(0.0, |d| d.as_secs_f64()),
            command: std::env::args()
                .skip(1)
                .fold("cargo xtask".to_owned(), |a, b| a + " " + &b),
            kernel: command_line("uname", &["-r"]),
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model,
            socks_server: format!("dante-server ({danted}) for every path"),
            daemon: bins.daemon.display().to_string(),
            peer: bins
                .peer
                .as_ref()
                .map(|p| format!("tun2proxy {} ({})", peer::VERSION, p.display())),
            not_measured,
            outcome: match outcome {
                Ok(()) => "complete".into(),
                Err(e) => format!("stopped early: {e:#}"),
            },
        }
    }
}

fn command_line(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .map(|o| {
            let text = String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
            text.lines().next().unwrap_or("").trim().to_owned()
        })
        .unwrap_or_else(|_| "unknown".into())
}

#[derive(Serialize)]
struct Row {
    variant: String,
    metric: Metric,
    unit: &'static str,
    summary: Option<Summary>,
    vs_kernel_socks: Option<Summary>,
    vs_kernel_routed: Option<Summary>,
}

#[derive(Serialize)]
struct Json<'a> {
    meta: &'a Meta,
    plan: &'a Plan,
    variants: Vec<(String, Variant)>,
    summary: Vec<Row>,
    targets: Vec<Verdict>,
    failures: &'a [super::stats::Failure],
    samples: &'a [super::stats::Sample],
}

/// What `read` gets back from a `results.json`.
#[derive(Deserialize)]
pub struct Saved {
    pub meta: Meta,
    pub plan: Plan,
    pub variants: Vec<(String, Variant)>,
    pub failures: Vec<super::stats::Failure>,
    pub samples: Vec<super::stats::Sample>,
}

/// Reads the `results.json` of an earlier run.
pub fn read(dir: &Path) -> Result<Saved> {
    let path = dir.join("results.json");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// Writes `results.json` and `table.md` into `dir`; returns the table.
pub fn write(dir: &Path, meta: &Meta, plan: &Plan, variants: &[Variant], results: &Results) -> Result<String> {
    let summary = variants
        .iter()
        .flat_map(|v| {
            Metric::ALL.iter().filter(|m| m.applies_to(v)).map(|&m| Row {
                variant: v.label(),
                metric: m,
                unit: m.unit(),
                summary: results.summary(v, m),
                vs_kernel_socks: v.is_tunnel().then(|| results.ratio(v, &SOCKS, m)).flatten(),
                vs_kernel_routed: (v.kind != Kind::Routed).then(|| results.ratio(v, &ROUTED, m)).flatten(),
            })
        })
        .collect();
    let json = Json {
        meta,
        plan,
        variants: variants.iter().map(|v| (v.label(), *v)).collect(),
        summary,
        targets: targets(plan, results),
        failures: &results.failures,
        samples: &results.samples,
    };
    let path = dir.join("results.json");
    fs::write(&path, serde_json::to_string_pretty(&json)?).with_context(|| format!("writing {}", path.display()))?;
    let table = table(meta, plan, variants, results);
    fs::write(dir.join("table.md"), &table)?;
    Ok(table)
}

const ROUTED: Variant = Variant {
    kind: Kind::Routed,
    mtu: None,
};
const SOCKS: Variant = Variant {
    kind: Kind::Socks,
    mtu: None,
};

/// Metrics the ratio tables show.
const RATIO_METRICS: [Metric; 9] = [
    Metric::TcpUp1,
    Metric::TcpDown1,
    Metric::TcpUp8,
    Metric::TcpDown8,
    Metric::UdpIdleP99,
    Metric::UdpLoadedP99,
    Metric::UdpPps,
    Metric::ConnSeq,
    Metric::Conn64,
];

/// The text table (Markdown).
pub fn table(meta: &Meta, plan: &Plan, variants: &[Variant], results: &Results) -> String {
    let mut t = String::new();
    if meta.outcome != "complete" {
        let _ = writeln!(t, "**Partial results: the run {}.**\n", meta.outcome);
    }
    let _ = writeln!(
        t,
        "Run {} on {} CPUs ({}), kernel {}; `{}`; {} round(s), {:.0} s in all.\n\
         SOCKS server: {}. Cells: median (min–max) over the rounds; ratios are taken round by round.\n",
        meta.date_utc,
        meta.cpus,
        meta.cpu_model,
        meta.kernel,
        meta.command,
        plan.rounds,
        meta.duration_s,
        meta.socks_server
    );
    // Host mode caps the MTU (3506), so its variants may have one of
    // their own: every MTU any variant has gets a section.
    let mut mtus = plan.mtus.clone();
    mtus.extend(variants.iter().filter_map(|v| v.mtu));
    mtus.sort_unstable();
    mtus.dedup();
    for mtu in mtus {
        let tunnels: Vec<&Variant> = variants.iter().filter(|v| v.mtu == Some(mtu)).collect();
        let mut columns = vec![&ROUTED, &SOCKS];
        columns.extend(&tunnels);
        let _ = writeln!(
            t,
            "### TUN MTU {mtu} (the kernel paths have no TUN: same columns at every MTU)\n"
        );
        header(&mut t, "measure", columns.iter().map(|v| v.label()));
        for metric in Metric::ALL {
            let cells = columns.iter().map(|v| cell(results, v, metric));
            row(&mut t, format!("{} ({})", metric.title(), metric.unit()), cells);
        }
        t.push('\n');
        for (base, name) in [(&SOCKS, "kernel SOCKS path"), (&ROUTED, "kernel routed path")] {
            let _ = writeln!(t, "Ratios to the {name}, MTU {mtu} (for RTTs lower is better):\n");
            header(&mut t, "measure", tunnels.iter().map(|v| v.label()));
            for metric in RATIO_METRICS {
                let cells = tunnels.iter().map(|v| match results.ratio(v, base, metric) {
                    Some(s) => range(s, |x| format!("{x:.2}×")),
                    None => "—".into(),
                });
                row(&mut t, metric.title().to_owned(), cells);
            }
            t.push('\n');
        }
    }
    let verdicts = targets(plan, results);
    if !verdicts.is_empty() {
        let _ = writeln!(
            t,
            "### Targets (issue 5), tun2socks with {} worker(s)\n",
            max_workers(plan)
        );
        header(&mut t, "target", ["measured", "verdict"].map(String::from).into_iter());
        for v in &verdicts {
            row(
                &mut t,
                v.target.clone(),
                [v.measured.clone(), v.verdict.clone()].into_iter(),
            );
        }
        t.push('\n');
    }
    for (what, why) in &meta.not_measured {
        let _ = writeln!(t, "- {what}: not measured: {why}");
    }
    for f in &results.failures {
        let first = f.error.lines().next().unwrap_or("");
        let _ = writeln!(
            t,
            "- failed in round {}: {} / {}: {first}",
            f.round + 1,
            f.variant,
            f.what
        );
    }
    t
}

fn header(t: &mut String, first: &str, columns: impl Iterator<Item = String>) {
    let columns: Vec<String> = columns.collect();
    let _ = writeln!(t, "| {first} | {} |", columns.join(" | "));
    let _ = writeln!(t, "|---|{}", "---|".repeat(columns.len()));
}

fn row(t: &mut String, first: String, cells: impl Iterator<Item = String>) {
    let cells: Vec<String> = cells.collect();
    let _ = writeln!(t, "| {first} | {} |", cells.join(" | "));
}

fn cell(results: &Results, variant: &Variant, metric: Metric) -> String {
    if !metric.applies_to(variant) {
        return "—".into();
    }
    match results.summary(variant, metric) {
        Some(s) => range(s, |x| metric.format(x)),
        None => "no number".into(),
    }
}

fn range(s: Summary, f: impl Fn(f64) -> String) -> String {
    if s.n == 1 || f(s.min) == f(s.max) {
        f(s.median)
    } else {
        format!("{} ({}–{})", f(s.median), f(s.min), f(s.max))
    }
}

/// (variant, metric) pairs that should have a number and have none.
pub fn missing(plan: &Plan, variants: &[Variant], results: &Results) -> Vec<String> {
    variants
        .iter()
        .flat_map(|v| {
            Metric::ALL
                .iter()
                .filter(|m| plan.settings.measures(m.group()))
                .filter(|m| m.applies_to(v) && results.summary(v, **m).is_none())
                .map(|m| format!("{} / {}", v.label(), m.title()))
        })
        .collect()
}

fn max_workers(plan: &Plan) -> u16 {
    plan.workers.iter().copied().max().unwrap_or(1)
}

/// One target of issue 5 and how the run did.
#[derive(Serialize)]
pub struct Verdict {
    pub target: String,
    pub measured: String,
    pub verdict: String,
}

enum Goal {
    /// At least this ratio to the kernel SOCKS path.
    RatioAtLeast(f64),
    /// At most this ratio to the kernel SOCKS path.
    RatioAtMost(f64),
    /// At most this absolute value.
    AtMost(f64),
}

/// The targets, judged for tun2socks with the most workers measured.
pub fn targets(plan: &Plan, results: &Results) -> Vec<Verdict> {
    let default_mtu = if plan.mtus.contains(&DEFAULT_MTU) {
        DEFAULT_MTU
    } else {
        plan.mtus.iter().copied().max().unwrap_or(DEFAULT_MTU)
    };
    let mut list = Vec::new();
    for (metric, what) in [(Metric::TcpUp1, "app→srv"), (Metric::TcpDown1, "srv→app")] {
        list.push((
            format!("TCP 1 stream {what}, MTU {default_mtu}: ≥ 0.6× SOCKS path"),
            metric,
            default_mtu,
            Goal::RatioAtLeast(0.6),
        ));
        if plan.mtus.contains(&1500) {
            list.push((
                format!("TCP 1 stream {what}, MTU 1500: ≥ 0.4× SOCKS path"),
                metric,
                1500,
                Goal::RatioAtLeast(0.4),
            ));
        }
    }
    for (metric, what) in [(Metric::TcpUp8, "app→srv"), (Metric::TcpDown8, "srv→app")] {
        list.push((
            format!("TCP 8 streams {what}, MTU {default_mtu}: ≥ 0.6× SOCKS path"),
            metric,
            default_mtu,
            Goal::RatioAtLeast(0.6),
        ));
    }
    list.push((
        format!("UDP RTT p99 under 8 downloads, MTU {default_mtu}: ≤ 1.25× SOCKS path's loaded p99"),
        Metric::UdpLoadedP99,
        default_mtu,
        Goal::RatioAtMost(1.25),
    ));
    list.push((
        format!("connections/s, 64 in flight, MTU {default_mtu}: ≥ 1.5× SOCKS path"),
        Metric::Conn64,
        default_mtu,
        Goal::RatioAtLeast(1.5),
    ));
    list.push((
        format!("RSS per idle TCP connection, MTU {default_mtu}: ≤ 8 KB (8000 bytes)"),
        Metric::RssPerConn,
        default_mtu,
        Goal::AtMost(8000.0),
    ));
    list.push((
        format!("CPU s per GB (daemon's own), MTU {default_mtu}: ≤ 0.6"),
        Metric::CpuPerGb,
        default_mtu,
        Goal::AtMost(0.6),
    ));
    let workers = max_workers(plan);
    list.into_iter()
        .map(|(target, metric, mtu, goal)| {
            let v = Variant {
                kind: Kind::Tun2socks { workers },
                mtu: Some(mtu),
            };
            let (value, measured) = match goal {
                Goal::AtMost(_) => {
                    let s = results.summary(&v, metric);
                    (
                        s.map(|s| s.median),
                        s.map(|s| range(s, |x| metric.format(x)) + " " + metric.unit()),
                    )
                }
                _ => {
                    let s = results.ratio(&v, &SOCKS, metric);
                    (s.map(|s| s.median), s.map(|s| range(s, |x| format!("{x:.2}×"))))
                }
            };
            let verdict = match (value, &goal) {
                (None, _) => "not measured".to_owned(),
                (Some(x), Goal::RatioAtLeast(t)) => judge(x >= *t, x / t),
                (Some(x), Goal::RatioAtMost(t) | Goal::AtMost(t)) => judge(x <= *t, x / t),
            };
            Verdict {
                target,
                measured: measured.unwrap_or_else(|| "—".into()),
                verdict,
            }
        })
        .collect()
}

/// "met" or "missed", with the measured median as a multiple of the target.
fn judge(met: bool, of_target: f64) -> String {
    let word = if met { "met" } else { "missed" };
    format!("{word} ({:.0} % of the target)", of_target * 100.0)
}
