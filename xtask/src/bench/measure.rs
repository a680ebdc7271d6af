//! The measurements of one implementation in one round. Memory is measured
//! on a fresh instance of its own; everything else on a second one. A
//! measurement that fails is recorded and the next one runs; Ctrl-C ends
//! the run.

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};

use super::impls::{Binaries, Running, Variant};
use super::stats::{Group, Metric, Results};
use super::testbed::{Fields, Testbed, field, proc_cpu_seconds, proc_rss_bytes, result_line, wait_until};
use crate::signal;

/// Durations and sizes of the measurements.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Settings {
    /// Each timed TCP, UDP and connection-rate measurement, seconds.
    pub secs: f64,
    /// Warm-up before a timed TCP measurement (and before UDP under load).
    pub warmup: f64,
    /// Idle connections held for the memory figure.
    pub hold: usize,
    /// Bytes of the fixed transfer for CPU per GB, each direction.
    pub cpu_bytes: u64,
    /// The groups measured (`--only`); empty: all.
    #[serde(default)]
    pub only: Vec<Group>,
}

impl Settings {
    pub fn measures(&self, group: Group) -> bool {
        self.only.is_empty() || self.only.contains(&group)
    }
}

/// Everything for `variant` in `round`, into `out`.
pub fn variant(
    bed: &Testbed,
    bins: &Binaries,
    s: &Settings,
    variant: &Variant,
    round: usize,
    out: &mut Results,
) -> Result<()> {
    let mut m = Measurer {
        bed,
        s,
        variant,
        round,
        out,
    };
    if Metric::RssPerConn.applies_to(variant) && s.measures(Group::Memory) {
        m.session(bins, "memory", |m, run| m.memory(run))?;
    }
    if ![Group::Tcp, Group::Udp, Group::Conn, Group::Cpu]
        .iter()
        .any(|&g| s.measures(g))
    {
        return Ok(());
    }
    m.session(bins, "throughput, latency, connections, CPU", |m, run| {
        if s.measures(Group::Tcp) {
            for (metric, streams, dir) in [
                (Metric::TcpUp1, 1, "up"),
                (Metric::TcpDown1, 1, "down"),
                (Metric::TcpUp8, 8, "up"),
                (Metric::TcpDown8, 8, "down"),
            ] {
                m.step(run, metric.title(), |m, run| m.tcp(run, metric, streams, dir))?;
            }
        }
        if s.measures(Group::Udp) {
            m.step(run, "UDP idle", |m, run| m.udp(run, false))?;
            m.step(run, "UDP under load", |m, run| m.udp(run, true))?;
            m.step(run, "UDP small packets per second", |m, run| m.udp_pps(run))?;
        }
        if s.measures(Group::Conn) {
            m.step(run, "connections, sequential", |m, run| m.conn(run, 1))?;
            m.step(run, "connections, 64 in flight", |m, run| m.conn(run, 64))?;
        }
        if s.measures(Group::Cpu) {
            m.step(run, "CPU per GB", |m, run| m.cpu_per_gb(run))?;
        }
        Ok(())
    })
}

struct Measurer<'a> {
    bed: &'a Testbed,
    s: &'a Settings,
    variant: &'a Variant,
    round: usize,
    out: &'a mut Results,
}

impl Measurer<'_> {
    /// Starts the implementation, runs `body`, stops it. A failure to start
    /// or stop is recorded, not returned; only an interruption is.
    fn session(
        &mut self,
        bins: &Binaries,
        what: &str,
        body: impl FnOnce(&mut Self, &mut Running) -> Result<()>,
    ) -> Result<()> {
        let mut run = match Running::start(self.bed, bins, self.variant) {
            Ok(run) => run,
            Err(e) => return self.failed(&format!("starting for {what}"), e),
        };
        body(self, &mut run)?;
        if let Err(e) = run.stop() {
            return self.failed(&format!("stopping after {what}"), e);
        }
        Ok(())
    }

    /// One measurement: its failure is recorded (with the implementation's
    /// state), and the next one runs.
    fn step(
        &mut self,
        run: &mut Running,
        what: &str,
        f: impl FnOnce(&mut Self, &mut Running) -> Result<()>,
    ) -> Result<()> {
        println!("  {what}");
        // After a crash the rest of the session is not run (its failure is
        // recorded once, by the step that saw it).
        if run.ensure_running().is_err() {
            return Ok(());
        }
        match f(self, run).and_then(|()| run.ensure_running()) {
            Ok(()) => Ok(()),
            Err(e) => self.failed(what, e),
        }
    }

    fn failed(&mut self, what: &str, e: anyhow::Error) -> Result<()> {
        if signal::stop_requested() {
            bail!("interrupted");
        }
        self.out.fail(self.round, self.variant, what, &e);
        Ok(())
    }

    fn add(&mut self, metric: Metric, value: f64) {
        println!("    {}: {} {}", metric.title(), metric.format(value), metric.unit());
        self.out.add(self.round, *self.variant, metric, value);
    }

    fn load(&self, run: &Running, kind: &str, mode: &str, extra: &[String], limit: f64) -> Result<Fields> {
        let mut args = vec![mode.to_owned()];
        args.extend(run.path_args());
        args.extend_from_slice(extra);
        self.bed.run_load(kind, &args, Duration::from_secs_f64(limit))
    }

    fn tcp(&mut self, run: &Running, metric: Metric, streams: usize, dir: &str) -> Result<()> {
        let (secs, warmup) = (self.s.secs, self.s.warmup);
        let args = strings(&[
            "--streams",
            &streams.to_string(),
            "--dir",
            dir,
            "--secs",
            &secs.to_string(),
            "--warmup",
            &warmup.to_string(),
            "--timeout",
            &(secs + warmup + 30.0).to_string(),
        ]);
        let f = self.load(run, "tcp", "tcp", &args, secs + warmup + 40.0)?;
        self.add(metric, field(&f, "gbit_s")?);
        Ok(())
    }

    fn udp(&mut self, run: &Running, loaded: bool) -> Result<()> {
        let secs = self.s.secs;
        let mut args = strings(&["--secs", &secs.to_string()]);
        if loaded {
            args.extend(strings(&[
                "--load-streams",
                "8",
                "--load-warmup",
                &self.s.warmup.to_string(),
            ]));
        }
        let f = self.load(run, "udp", "udp-rtt", &args, secs + self.s.warmup + 40.0)?;
        let (p50, p99) = (field(&f, "p50_us")?, field(&f, "p99_us")?);
        if loaded {
            self.add(Metric::UdpLoadedP50, p50);
            self.add(Metric::UdpLoadedP99, p99);
            self.add(
                Metric::UdpLoadedLoss,
                100.0 * field(&f, "lost")? / field(&f, "sent")?.max(1.0),
            );
            self.add(Metric::UdpLoadGbit, field(&f, "load_gbit_s")?);
        } else {
            self.add(Metric::UdpIdleP50, p50);
            self.add(Metric::UdpIdleP99, p99);
        }
        Ok(())
    }

    /// Packets per second with small packets: 64-byte datagrams echoed,
    /// 4 flows (spread over the workers) with 32 in flight each.
    fn udp_pps(&mut self, run: &Running) -> Result<()> {
        let (secs, warmup) = (self.s.secs, self.s.warmup);
        let args = strings(&[
            "--flows",
            "4",
            "--window",
            "32",
            "--size",
            "64",
            "--secs",
            &secs.to_string(),
            "--warmup",
            &warmup.to_string(),
        ]);
        let f = self.load(run, "pps", "udp-pps", &args, secs + warmup + 30.0)?;
        self.add(Metric::UdpPps, field(&f, "pps")?);
        Ok(())
    }

    fn conn(&mut self, run: &Running, concurrency: usize) -> Result<()> {
        let secs = self.s.secs;
        let args = strings(&["--concurrency", &concurrency.to_string(), "--secs", &secs.to_string()]);
        let f = self.load(run, "conn", "conn-rate", &args, secs + 30.0)?;
        let per_s = field(&f, "per_s")?;
        let (ok, errors) = (field(&f, "ok")?, field(&f, "errors")?);
        let failed = 100.0 * errors / (ok + errors).max(1.0);
        if concurrency == 1 {
            self.add(Metric::ConnSeq, per_s);
            self.add(Metric::ConnSeqFailed, failed);
        } else {
            self.add(Metric::Conn64, per_s);
            self.add(Metric::Conn64Failed, failed);
            self.add(Metric::Conn64ToolCpu, field(&f, "cpu_pct")?);
        }
        Ok(())
    }

    /// CPU seconds of the implementation's process (and of dante) over a
    /// fixed transfer, one stream down then one up.
    fn cpu_per_gb(&mut self, run: &Running) -> Result<()> {
        let bytes = self.s.cpu_bytes;
        let pid = run.pid();
        let own_before = pid.map(|p| proc_cpu_seconds(p, false)).transpose()?;
        let dante_before = self.bed.proxy_cpu_seconds()?;
        for dir in ["down", "up"] {
            let args = strings(&[
                "--streams",
                "1",
                "--dir",
                dir,
                "--bytes",
                &bytes.to_string(),
                "--timeout",
                "240",
            ]);
            self.load(run, "tcp", "tcp", &args, 260.0)?;
        }
        let gb = 2.0 * bytes as f64 / 1e9;
        let dante = self.bed.proxy_cpu_seconds()? - dante_before;
        if let (Some(pid), Some(before)) = (pid, own_before) {
            self.add(Metric::CpuPerGb, (proc_cpu_seconds(pid, false)? - before) / gb);
        }
        if Metric::DanteCpuPerGb.applies_to(self.variant) {
            self.add(Metric::DanteCpuPerGb, dante / gb);
        }
        Ok(())
    }

    /// The implementation's RSS growth with `hold` idle connections through
    /// it, per connection. Every connection is established end to end (the
    /// load server in `srv` counts them) before the RSS is read.
    fn memory(&mut self, run: &mut Running) -> Result<()> {
        let pid = run.pid().context("no process to measure")?;
        let n = self.s.hold;
        println!("  RSS with {n} idle connections");
        std::thread::sleep(Duration::from_millis(500));
        let before = proc_rss_bytes(pid)?;
        let mut args = vec!["hold".to_owned()];
        args.extend(run.path_args());
        args.extend(strings(&[
            "--count",
            &n.to_string(),
            "--open-timeout",
            "120",
            "--hold-secs",
            "600",
        ]));
        let mut tool = self.bed.spawn_load(&args)?;
        let mut holding = None;
        wait_until(
            "the load tool to hold its connections",
            Duration::from_secs(150),
            || {
                tool.ensure_running()?;
                holding = result_line(&tool.log(), "holding");
                Ok(holding.is_some())
            },
        )?;
        let opened = field(&holding.unwrap_or_default(), "n")? as usize;
        ensure!(opened == n, "only {opened} of {n} connections opened:\n{}", tool.log());
        wait_until(
            "the load server to see every connection",
            Duration::from_secs(60),
            || Ok(self.bed.established()? >= n),
        )?;
        // Let the RSS settle: two readings 500 ms apart within 1 %.
        let mut last = proc_rss_bytes(pid)?;
        wait_until("the RSS to settle", Duration::from_secs(10), || {
            std::thread::sleep(Duration::from_millis(500));
            let now = proc_rss_bytes(pid)?;
            let settled = now.abs_diff(last) * 100 <= last;
            last = now;
            Ok(settled)
        })?;
        run.ensure_running()?;
        let per_conn = (last as f64 - before as f64) / n as f64;
        println!("    RSS {} → {} KiB", before / 1024, last / 1024);
        self.add(Metric::RssPerConn, per_conn);
        drop(tool);
        // Let the connections close before the instance is stopped.
        let _ = wait_until("the held connections to close", Duration::from_secs(60), || {
            Ok(self.bed.established()? == 0)
        });
        Ok(())
    }
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| (*s).to_owned()).collect()
}
