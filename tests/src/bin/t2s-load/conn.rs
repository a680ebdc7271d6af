//! `t2s-load conn-rate` (connect, 1-byte echo, close; the server closes
//! first, so no TIME_WAIT piles up on the client's side) and `t2s-load hold`
//! (many idle connections).

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinSet;

use crate::{Path, cpu_seconds, percentile};

pub struct RatePlan {
    pub path: Path,
    pub concurrency: usize,
    pub secs: Duration,
    pub threads: usize,
    /// How long the echo of one connection may take (it takes milliseconds
    /// when it works; a lost one should not stall a loop for long).
    pub echo_timeout: Duration,
}

#[derive(Default)]
struct RateTally {
    ok: u64,
    errors: u64,
    first_error: Option<String>,
    latencies_us: Vec<f64>,
}

pub fn rate(plan: &RatePlan) -> Result<()> {
    let rt = runtime(plan.threads)?;
    let (tally, secs, cpu) = rt.block_on(async {
        let (started, cpu_before) = (Instant::now(), cpu_seconds());
        let deadline = started + plan.secs;
        let mut loops = JoinSet::new();
        for _ in 0..plan.concurrency.max(1) {
            let (path, echo_timeout) = (plan.path, plan.echo_timeout);
            loops.spawn(async move {
                let mut tally = RateTally::default();
                // At least one attempt per loop, even if the process started
                // so late (a stalled machine) that the deadline has passed.
                loop {
                    let t = Instant::now();
                    match echo_once(&path, echo_timeout).await {
                        Ok(()) => {
                            tally.ok += 1;
                            tally.latencies_us.push(t.elapsed().as_secs_f64() * 1e6);
                        }
                        Err(e) => {
                            tally.errors += 1;
                            tally.first_error.get_or_insert_with(|| format!("{e:#}"));
                            // Do not spin on an error that repeats at once.
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                    }
                    if Instant::now() >= deadline {
                        break;
                    }
                }
                tally
            });
        }
        let mut total = RateTally::default();
        while let Some(tally) = loops.join_next().await {
            let tally = tally?;
            total.ok += tally.ok;
            total.errors += tally.errors;
            total.latencies_us.extend(tally.latencies_us);
            if total.first_error.is_none() {
                total.first_error = tally.first_error;
            }
        }
        anyhow::Ok((total, started.elapsed().as_secs_f64(), cpu_seconds() - cpu_before))
    })?;
    if let Some(e) = &tally.first_error {
        eprintln!("t2s-load: {} failed connections; the first: {e}", tally.errors);
    }
    if tally.ok + tally.errors == 0 {
        bail!("no connection was tried");
    }
    let mut lat = tally.latencies_us;
    lat.sort_by(f64::total_cmp);
    println!(
        "conn concurrency={} ok={} errors={} secs={secs:.3} per_s={:.1} p50_us={:.0} p99_us={:.0} \
         cpu_s={cpu:.3} cpu_pct={:.1}",
        plan.concurrency,
        tally.ok,
        tally.errors,
        tally.ok as f64 / secs,
        percentile(&lat, 50.0),
        percentile(&lat, 99.0),
        cpu / secs * 100.0
    );
    Ok(())
}

async fn echo_once(path: &Path, timeout: Duration) -> Result<()> {
    let mut stream = path.connect().await?;
    let exchange = async {
        stream.write_all(b"P").await?;
        let mut byte = [0; 1];
        stream.read_exact(&mut byte).await.context("reading the echo")?;
        if byte != *b"P" {
            bail!("wrong echo byte {:#04x}", byte[0]);
        }
        // The server closes first.
        if stream.read(&mut byte).await? != 0 {
            bail!("data after the echo");
        }
        Ok(())
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| anyhow::anyhow!("echo timed out after {timeout:?}"))?
}

pub struct HoldPlan {
    pub path: Path,
    pub count: usize,
    pub concurrency: usize,
    pub open_timeout: Duration,
    pub hold: Duration,
}

pub fn hold(plan: &HoldPlan) -> Result<()> {
    let rt = runtime(1)?;
    rt.block_on(async {
        let started = Instant::now();
        let deadline = started + plan.open_timeout;
        let mut held = Vec::with_capacity(plan.count);
        let (mut errors, mut first_error) = (0u64, None);
        let mut pending = JoinSet::new();
        let mut launched = 0;
        loop {
            while launched < plan.count && pending.len() < plan.concurrency.max(1) && Instant::now() < deadline {
                let path = plan.path;
                pending.spawn(async move { path.connect().await });
                launched += 1;
            }
            let Some(done) = pending.join_next().await else { break };
            match done? {
                Ok(stream) => held.push(stream),
                Err(e) => {
                    errors += 1;
                    first_error.get_or_insert_with(|| format!("{e:#}"));
                }
            }
        }
        if let Some(e) = first_error {
            eprintln!("t2s-load: {errors} connects failed; the first: {e}");
        }
        println!(
            "holding n={} errors={errors} open_secs={:.3}",
            held.len(),
            started.elapsed().as_secs_f64()
        );
        tokio::time::sleep(plan.hold).await;
        drop(held);
        anyhow::Ok(())
    })
}

fn runtime(threads: usize) -> Result<tokio::runtime::Runtime> {
    let rt = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()?
    };
    Ok(rt)
}
