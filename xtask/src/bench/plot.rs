//! SVG plots: throughput against workers, and UDP round trips idle and under
//! load, per implementation. Medians with min–max bars.

use std::path::Path;

use anyhow::{Result, anyhow};
use plotters::prelude::*;

use super::Plan;
use super::impls::{Kind, Variant};
use super::stats::{Metric, Results, Summary};

/// Distinct colours that read on white (no yellow).
const COLOURS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(0, 0, 0),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(140, 86, 75),
    RGBColor(23, 190, 207),
];

fn colour(i: usize) -> RGBColor {
    COLOURS[i % COLOURS.len()]
}

const ROUTED: Variant = Variant {
    kind: Kind::Routed,
    mtu: None,
};
const SOCKS: Variant = Variant {
    kind: Kind::Socks,
    mtu: None,
};

pub fn write(dir: &Path, plan: &Plan, variants: &[Variant], results: &Results) -> Result<()> {
    throughput(&dir.join("throughput-vs-workers.svg"), plan, variants, results)?;
    latency(&dir.join("udp-rtt-under-load.svg"), variants, results)
}

fn err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("plotting: {e}")
}

/// Four panels (1 and 8 streams, each direction): tun2socks per MTU against
/// workers; the kernel paths and the peer as horizontal lines.
fn throughput(path: &Path, plan: &Plan, variants: &[Variant], results: &Results) -> Result<()> {
    let root = SVGBackend::new(path, (1100, 800)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let max_w = plan.workers.iter().copied().max().unwrap_or(1) as f64;
    // Room on the right for the legend.
    let x_range = 0.5..max_w + 1.5;
    let panels = root.split_evenly((2, 2));
    let metrics = [Metric::TcpUp1, Metric::TcpDown1, Metric::TcpUp8, Metric::TcpDown8];
    for (panel, metric) in panels.iter().zip(metrics) {
        let top = variants
            .iter()
            .filter_map(|v| results.summary(v, metric))
            .map(|s| s.max)
            .fold(0.1, f64::max);
        let mut chart = ChartBuilder::on(panel)
            .caption(format!("{} (Gbit/s)", metric.title()), ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(35)
            .y_label_area_size(50)
            .build_cartesian_2d(x_range.clone(), 0.0..top * 1.1)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("tun2socks workers")
            .max_light_lines(2)
            .x_labels(max_w as usize + 1)
            .x_label_formatter(&|x| if *x <= max_w { format!("{x:.0}") } else { String::new() })
            .draw()
            .map_err(err)?;
        let mut n = 0;
        let mut next_colour = || {
            n += 1;
            colour(n - 1)
        };
        for &mtu in &plan.mtus {
            let style = next_colour().stroke_width(3);
            let points: Vec<(f64, Summary)> = plan
                .workers
                .iter()
                .filter_map(|&w| {
                    let v = Variant {
                        kind: Kind::Tun2socks { workers: w },
                        mtu: Some(mtu),
                    };
                    Some((f64::from(w), results.summary(&v, metric)?))
                })
                .collect();
            chart
                .draw_series(LineSeries::new(points.iter().map(|(x, s)| (*x, s.median)), style))
                .map_err(err)?
                .label(format!("tun2socks mtu{mtu}"))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
            chart
                .draw_series(
                    points
                        .iter()
                        .map(|(x, s)| ErrorBar::new_vertical(*x, s.min, s.median, s.max, style, 8)),
                )
                .map_err(err)?;
        }
        let mut flat: Vec<Variant> = vec![ROUTED, SOCKS];
        flat.extend(variants.iter().filter(|v| v.kind == Kind::Tun2proxy));
        for v in flat {
            // The references: thin lines.
            let style = next_colour().stroke_width(1);
            let Some(s) = results.summary(&v, metric) else {
                continue;
            };
            chart
                .draw_series(LineSeries::new(
                    vec![(x_range.start, s.median), (x_range.end, s.median)],
                    style,
                ))
                .map_err(err)?
                .label(v.label())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(err)?;
    }
    root.present().map_err(err)?;
    Ok(())
}

/// UDP round trip p50 and p99, idle and under 8 downloads, per
/// implementation, on a log scale.
fn latency(path: &Path, variants: &[Variant], results: &Results) -> Result<()> {
    let root = SVGBackend::new(path, (1100, 550)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let labels: Vec<String> = variants.iter().map(short_label).collect();
    let all: Vec<Summary> = variants
        .iter()
        .flat_map(|v| {
            [
                Metric::UdpIdleP50,
                Metric::UdpIdleP99,
                Metric::UdpLoadedP50,
                Metric::UdpLoadedP99,
            ]
            .map(|m| results.summary(v, m))
        })
        .flatten()
        .collect();
    let low = all.iter().map(|s| s.min).fold(f64::INFINITY, f64::min).clamp(1.0, 1e6);
    let high = all.iter().map(|s| s.max).fold(10.0, f64::max);
    let n = variants.len() as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "UDP round trip, idle and while 8 TCP downloads share the path (µs, log scale)",
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(-0.5..n - 0.5, (low * 0.7..high * 1.5).log_scale())
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .max_light_lines(2)
        .x_labels(variants.len())
        .x_label_formatter(&|x| {
            let i = x.round();
            if (x - i).abs() < 0.01 && i >= 0.0 {
                labels.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_desc("µs")
        .draw()
        .map_err(err)?;
    let series = [
        (Metric::UdpIdleP50, "idle p50", -0.24),
        (Metric::UdpIdleP99, "idle p99", -0.08),
        (Metric::UdpLoadedP50, "8 downloads p50", 0.08),
        (Metric::UdpLoadedP99, "8 downloads p99", 0.24),
    ];
    for (k, (metric, name, offset)) in series.into_iter().enumerate() {
        let style = colour(k).stroke_width(2);
        let points: Vec<(f64, Summary)> = variants
            .iter()
            .enumerate()
            .filter_map(|(i, v)| Some((i as f64 + offset, results.summary(v, metric)?)))
            .collect();
        chart
            .draw_series(
                points
                    .iter()
                    .map(|(x, s)| Circle::new((*x, s.median), 4, style.filled())),
            )
            .map_err(err)?
            .label(name)
            .legend(move |(x, y)| Circle::new((x + 10, y), 4, style.filled()));
        chart
            .draw_series(
                points
                    .iter()
                    .map(|(x, s)| ErrorBar::new_vertical(*x, s.min, s.median, s.max, style, 6)),
            )
            .map_err(err)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

/// Labels short enough to sit side by side under the axis.
fn short_label(v: &Variant) -> String {
    let mtu = v.mtu.map(|m| format!(" {m}")).unwrap_or_default();
    match v.kind {
        Kind::Routed => "routed".into(),
        Kind::Socks => "SOCKS".into(),
        Kind::Tun2socks { workers } => format!("t2s w{workers}{mtu}"),
        Kind::Tun2socksNoOffload { workers } => format!("t2s-off w{workers}{mtu}"),
        Kind::Tun2socksNormalPriority { workers } => format!("t2s-nrm w{workers}{mtu}"),
        Kind::Tun2socksXdp { workers } => format!("xdp w{workers}{mtu}"),
        Kind::Tun2proxy => format!("t2p{mtu}"),
    }
}
