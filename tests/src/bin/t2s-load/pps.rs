//! `t2s-load udp-pps`: small datagrams echoed as fast as the path allows,
//! `--window` of them in flight on each of `--flows` sockets (one thread
//! each); reports echoed datagrams per second. A datagram unanswered for
//! `LOSS` counts as lost and its slot is refilled.

use std::io::ErrorKind;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};

use crate::udp::{HEADER_LEN, Pinger};
use crate::{Path, cpu_seconds};

/// After this long without an echo, what is in flight is written off.
const LOSS: Duration = Duration::from_millis(200);

pub struct Plan {
    pub path: Path,
    pub flows: usize,
    pub window: usize,
    pub size: usize,
    pub secs: Duration,
    pub warmup: Duration,
}

#[derive(Default, Clone, Copy)]
struct Tally {
    sent: u64,
    echoed: u64,
    lost: u64,
}

pub fn run(plan: &Plan) -> Result<()> {
    ensure!(
        (HEADER_LEN..=1400).contains(&plan.size),
        "--size must be {HEADER_LEN} to 1400"
    );
    ensure!(
        plan.flows >= 1 && plan.window >= 1,
        "--flows and --window must be at least 1"
    );
    let counting = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for _ in 0..plan.flows {
        let pinger = Pinger::open(&plan.path)?;
        let (counting, stop) = (counting.clone(), stop.clone());
        let (window, size) = (plan.window, plan.size);
        threads.push(thread::spawn(move || flow(&pinger, window, size, &counting, &stop)));
    }
    thread::sleep(plan.warmup);
    counting.store(true, Ordering::SeqCst);
    let (started, cpu_before) = (Instant::now(), cpu_seconds());
    thread::sleep(plan.secs);
    counting.store(false, Ordering::SeqCst);
    let secs = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu_before;
    stop.store(true, Ordering::SeqCst);
    let mut total = Tally::default();
    for t in threads {
        let tally = t.join().map_err(|_| anyhow::anyhow!("a flow thread panicked"))??;
        total.sent += tally.sent;
        total.echoed += tally.echoed;
        total.lost += tally.lost;
    }
    ensure!(total.echoed > 0, "no datagram came back ({} sent)", total.sent);
    println!(
        "pps echoed={} sent={} lost={} flows={} window={} size={} secs={secs:.3} pps={:.0} cpu_pct={:.1}",
        total.echoed,
        total.sent,
        total.lost,
        plan.flows,
        plan.window,
        plan.size,
        total.echoed as f64 / secs,
        cpu / secs * 100.0,
    );
    Ok(())
}

/// One socket: keeps `window` datagrams in flight until `stop`; counts
/// while `counting`.
fn flow(pinger: &Pinger, window: usize, size: usize, counting: &AtomicBool, stop: &AtomicBool) -> Result<Tally> {
    let mut tally = Tally::default();
    let mut datagram = pinger.datagram(size);
    let mut buf = vec![0; 2048];
    let mut seq: u64 = 0;
    let mut in_flight = 0usize;
    pinger.socket.set_read_timeout(Some(LOSS))?;
    while !stop.load(Ordering::Relaxed) {
        while in_flight < window {
            seq += 1;
            pinger.stamp(&mut datagram, seq);
            match pinger.socket.send(&datagram) {
                Ok(_) => {}
                // A full socket buffer: wait for echoes first.
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::ConnectionRefused) => break,
                Err(e) => return Err(e).context("sending a datagram"),
            }
            in_flight += 1;
            if counting.load(Ordering::Relaxed) {
                tally.sent += 1;
            }
        }
        match pinger.socket.recv(&mut buf) {
            Ok(n) => {
                if pinger.seq_of(&buf[..n]).is_some() {
                    in_flight = in_flight.saturating_sub(1);
                    if counting.load(Ordering::Relaxed) {
                        tally.echoed += 1;
                    }
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if counting.load(Ordering::Relaxed) {
                    tally.lost += in_flight as u64;
                }
                in_flight = 0;
            }
            Err(e) if matches!(e.kind(), ErrorKind::Interrupted | ErrorKind::ConnectionRefused) => {}
            Err(e) => return Err(e).context("receiving a datagram"),
        }
    }
    Ok(tally)
}
