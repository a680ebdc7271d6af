//! The outputs of a `--bare` run: `results.json` (every sample, the
//! failures, the plan and the machine) and `table.md` (medians with
//! min–max over the rounds, and throughput relative to one worker).

use std::fmt::Write as _;
use std::path::Path;
use std::time::SystemTime;

use anyhow::{Context, Result};
use serde::Serialize;

use super::super::stats::Summary;
use super::{BarePlan, BareResults, Dir, Quantity, Variant};

#[derive(Serialize)]
struct Meta {
    date: String,
    seconds: f64,
    cpus: usize,
    cpu_model: String,
    kernel: String,
    command: String,
    daemon: String,
    /// Why the run stopped early, if it did.
    stopped: Option<String>,
}

#[derive(Serialize)]
struct Saved<'a> {
    meta: Meta,
    plan: &'a BarePlan,
    #[serde(flatten)]
    results: &'a BareResults,
}

/// Writes `results.json` and `table.md` into `dir`; returns the table.
pub fn write(
    dir: &Path,
    plan: &BarePlan,
    daemon: &Path,
    started: SystemTime,
    results: &BareResults,
    outcome: &Result<()>,
) -> Result<String> {
    let meta = Meta {
        date: crate::bench::utc_text(started),
        seconds: started.elapsed().map_or(0.0, |d| d.as_secs_f64()),
        cpus: plan.cpus,
        cpu_model: cpu_model(),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_owned(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        daemon: daemon.display().to_string(),
        stopped: outcome.as_ref().err().map(|e| format!("{e:#}")),
    };
    let table = table(plan, results, &meta);
    let saved = Saved { meta, plan, results };
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let json = dir.join("results.json");
    std::fs::write(&json, serde_json::to_string_pretty(&saved)?)
        .with_context(|| format!("writing {}", json.display()))?;
    let md = dir.join("table.md");
    std::fs::write(&md, &table).with_context(|| format!("writing {}", md.display()))?;
    Ok(table)
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")?
                .split_once(':')
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_default()
}

/// "median (min–max)", or the one value.
fn show(s: &Summary) -> String {
    if s.n == 1 || s.min == s.max {
        format!("{:.2}", s.median)
    } else {
        format!("{:.2} ({:.2}–{:.2})", s.median, s.min, s.max)
    }
}

fn summary(r: &BareResults, v: Variant, dir: Dir, streams: usize, q: Quantity) -> Option<Summary> {
    let values: Vec<f64> = r
        .samples
        .iter()
        .filter(|s| s.variant == v && s.dir == dir && s.streams == streams && s.quantity == q)
        .map(|s| s.value)
        .collect();
    Summary::of(&values)
}

fn measure_name(dir: Dir, streams: usize) -> String {
    let way = match dir {
        Dir::Up => "app→srv",
        Dir::Down => "srv→app",
    };
    let s = if streams == 1 { "stream" } else { "streams" };
    format!("TCP {way}, {streams} {s}")
}

fn table(plan: &BarePlan, r: &BareResults, meta: &Meta) -> String {
    let variants = plan.variants();
    let labels: Vec<String> = variants.iter().map(|v| v.label(&plan.mtus)).collect();
    let mut t = String::new();
    let _ = writeln!(t, "### Scaling with cores (bare lab)\n");
    let _ = writeln!(
        t,
        "{} CPUs ({}), kernel {}, {}; {} round(s) of {} s per measurement (+{} s warm-up), TUN MTU {}; \
         median (min–max) over the rounds.\n",
        meta.cpus,
        meta.cpu_model,
        meta.kernel,
        meta.date,
        plan.rounds,
        plan.secs,
        plan.warmup,
        plan.mtus.iter().map(u32::to_string).collect::<Vec<_>>().join(", "),
    );
    let _ = writeln!(t, "| measure | {} |", labels.join(" | "));
    let _ = writeln!(t, "|---|{}", "---|".repeat(labels.len()));
    let rows = [
        (Quantity::Gbit, "", "Gbit/s"),
        (Quantity::DaemonCores, "tun2socks CPU, ", "cores"),
        (Quantity::DaemonBusiestThread, "busiest tun2socks thread, ", "cores"),
        (Quantity::SocksCores, "SOCKS server CPU, ", "cores"),
        (Quantity::ClientCores, "client CPU, ", "cores"),
    ];
    for (q, prefix, unit) in rows {
        for (dir, streams) in plan.tcp_runs() {
            let cells: Vec<String> = variants
                .iter()
                .map(|&v| summary(r, v, dir, streams, q).map_or("—".into(), |s| show(&s)))
                .collect();
            if cells.iter().all(|c| c == "—") {
                continue;
            }
            let _ = writeln!(
                t,
                "| {prefix}{} ({unit}) | {} |",
                measure_name(dir, streams),
                cells.join(" | ")
            );
        }
    }

    // Throughput relative to one worker and to the kernel SOCKS path.
    let tunnels: Vec<Variant> = variants
        .iter()
        .copied()
        .filter(|v| matches!(v, Variant::Tun2socks { .. }))
        .collect();
    let tunnel_labels: Vec<String> = tunnels.iter().map(|v| v.label(&plan.mtus)).collect();
    let ratio = |a: Option<Summary>, b: Option<Summary>| match (a, b) {
        (Some(a), Some(b)) if b.median > 0.0 => format!("{:.2}×", a.median / b.median),
        _ => "—".into(),
    };
    for (title, base) in [
        ("tun2socks throughput ÷ the same with 1 worker (ratio of medians)", None),
        (
            "tun2socks throughput ÷ kernel SOCKS path (ratio of medians)",
            Some(Variant::Socks),
        ),
    ] {
        let _ = writeln!(t, "\n{title}:\n");
        let _ = writeln!(t, "| measure | {} |", tunnel_labels.join(" | "));
        let _ = writeln!(t, "|---|{}", "---|".repeat(tunnel_labels.len()));
        for (dir, streams) in plan.tcp_runs() {
            let cells: Vec<String> = tunnels
                .iter()
                .map(|&v| {
                    let base = base.unwrap_or(match v {
                        Variant::Tun2socks { mtu, .. } => Variant::Tun2socks { workers: 1, mtu },
                        other => other,
                    });
                    ratio(
                        summary(r, v, dir, streams, Quantity::Gbit),
                        summary(r, base, dir, streams, Quantity::Gbit),
                    )
                })
                .collect();
            let _ = writeln!(t, "| {} | {} |", measure_name(dir, streams), cells.join(" | "));
        }
    }

    if !r.failures.is_empty() {
        let _ = writeln!(t, "\nFailed ({}):\n", r.failures.len());
        for f in &r.failures {
            let first = f.error.lines().next().unwrap_or("");
            let _ = writeln!(
                t,
                "- round {}, {}: {}: {first}",
                f.round + 1,
                f.variant.label(&plan.mtus),
                f.what
            );
        }
    }
    if let Some(why) = &meta.stopped {
        let _ = writeln!(t, "\nThe run stopped early: {}", why.lines().next().unwrap_or(""));
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        let s = Summary::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.n), (2.0, 1.0, 3.0, 3));
        assert_eq!(Summary::of(&[1.0, 4.0]).unwrap().median, 2.5);
        assert_eq!(Summary::of(&[]), None);
        assert_eq!(show(&s), "2.00 (1.00–3.00)");
    }
}
