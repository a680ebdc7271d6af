//! `echo-client`: numbered datagrams of mixed sizes with a send window, each
//! reply checked against what was sent.
//!
//! A datagram is `MAGIC (4) | run (4) | seq (8) | body`, its size a function
//! of `seq` (every 100th is `max_size`, every 100th + 1 `min_size`, the rest
//! spread between), and the body a pseudo-random function of run and seq, so
//! a reply is verified without keeping what was sent.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};

use crate::{canonical, socket_for};

pub const HEADER_LEN: usize = 16;
const MAGIC: [u8; 4] = *b"T2SU";

pub struct Plan {
    pub to: SocketAddr,
    pub count: u64,
    pub min_size: usize,
    pub max_size: usize,
    pub window: usize,
    pub loss_timeout: Duration,
    pub timeout: Duration,
}

#[derive(Default)]
struct Tally {
    sent: u64,
    received: u64,
    /// Replies that arrived after their datagram was given up on (also in
    /// `received`).
    late: u64,
    corrupt: u64,
    duplicate: u64,
    /// Replies from another address than the one sent to.
    wrong_source: u64,
    bytes: u64,
}

pub fn run(plan: &Plan) -> Result<ExitCode> {
    ensure!(
        plan.min_size >= HEADER_LEN && plan.min_size <= plan.max_size && plan.max_size <= 65_507,
        "sizes must satisfy {HEADER_LEN} <= min-size <= max-size <= 65507"
    );
    ensure!(plan.window > 0, "the window must be at least 1");
    let socket = socket_for(plan.to).context("binding the client socket")?;
    socket.set_read_timeout(Some(Duration::from_millis(20)))?;
    let run_id: u32 = rand::random();

    let started = Instant::now();
    let deadline = started + plan.timeout;
    let mut tally = Tally::default();
    // seq → when it was sent, for datagrams not answered or given up on.
    let mut outstanding: HashMap<u64, Instant> = HashMap::new();
    let mut answered = vec![false; plan.count as usize];
    let mut send_buf = Vec::with_capacity(plan.max_size);
    let mut recv_buf = vec![0u8; 65_536];
    let mut next = 0u64;
    let mut timed_out = false;

    loop {
        let now = Instant::now();
        if now >= deadline {
            timed_out = true;
            break;
        }
        outstanding.retain(|_, sent_at| now.duration_since(*sent_at) < plan.loss_timeout);
        if next == plan.count && outstanding.is_empty() {
            break;
        }
        while outstanding.len() < plan.window && next < plan.count {
            fill(&mut send_buf, run_id, next, size_of(next, plan));
            socket
                .send_to(&send_buf, plan.to)
                .with_context(|| format!("sending datagram {next} to {}", plan.to))?;
            outstanding.insert(next, Instant::now());
            tally.sent += 1;
            next += 1;
        }
        let (n, from) = match socket.recv_from(&mut recv_buf) {
            Ok(received) => received,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(e) => return Err(e).context("receiving"),
        };
        if canonical(from) != canonical(plan.to) {
            tally.wrong_source += 1;
            eprintln!("reply from {from}, expected {}", plan.to);
            continue;
        }
        let Some(seq) = verify(&recv_buf[..n], run_id, plan) else {
            tally.corrupt += 1;
            eprintln!("corrupt reply of {n} bytes: {:02x?}...", &recv_buf[..n.min(32)]);
            continue;
        };
        if std::mem::replace(&mut answered[seq as usize], true) {
            tally.duplicate += 1;
            continue;
        }
        tally.received += 1;
        tally.bytes += n as u64;
        if outstanding.remove(&seq).is_none() {
            tally.late += 1;
        }
    }

    let secs = started.elapsed().as_secs_f64();
    println!(
        "echo to={} sent={} received={} lost={} late={} corrupt={} duplicate={} wrong_source={} bytes={} \
         min_size={} max_size={} window={} secs={secs:.2}{}",
        plan.to,
        tally.sent,
        tally.received,
        tally.sent - tally.received,
        tally.late,
        tally.corrupt,
        tally.duplicate,
        tally.wrong_source,
        tally.bytes,
        plan.min_size,
        plan.max_size,
        plan.window,
        if timed_out { " timed_out" } else { "" },
    );
    Ok(if tally.corrupt + tally.duplicate + tally.wrong_source > 0 {
        ExitCode::from(1)
    } else if timed_out {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

/// The payload size of datagram `seq`: the extremes often, the rest spread.
fn size_of(seq: u64, plan: &Plan) -> usize {
    let span = (plan.max_size - plan.min_size + 1) as u64;
    match seq % 100 {
        0 => plan.max_size,
        1 => plan.min_size,
        _ => plan.min_size + (mix(seq ^ 0x5151_5151) % span) as usize,
    }
}

fn fill(buf: &mut Vec<u8>, run_id: u32, seq: u64, size: usize) {
    buf.clear();
    buf.extend_from_slice(&MAGIC);
    buf.extend_from_slice(&run_id.to_be_bytes());
    buf.extend_from_slice(&seq.to_be_bytes());
    let mut state = mix(u64::from(run_id) << 32 ^ seq);
    while buf.len() < size {
        state = mix(state);
        let take = (size - buf.len()).min(8);
        buf.extend_from_slice(&state.to_le_bytes()[..take]);
    }
}

/// The sequence number of a correct reply, `None` for anything else.
fn verify(reply: &[u8], run_id: u32, plan: &Plan) -> Option<u64> {
    if reply.len() < HEADER_LEN || reply[..4] != MAGIC || reply[4..8] != run_id.to_be_bytes() {
        return None;
    }
    let seq = u64::from_be_bytes(reply[8..16].try_into().ok()?);
    if seq >= plan.count || reply.len() != size_of(seq, plan) {
        return None;
    }
    let mut expected = Vec::with_capacity(reply.len());
    fill(&mut expected, run_id, seq, reply.len());
    (expected == reply).then_some(seq)
}

/// splitmix64's finaliser: a cheap, well-spread function of its input.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
