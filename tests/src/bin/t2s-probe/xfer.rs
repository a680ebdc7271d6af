//! `t2s-probe xfer`: parallel downloads and/or uploads, each verified by
//! SHA-256, with one deadline for the whole run.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::ExitCode;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use lab::probe::{DIGEST_LEN, Header, Op, Pattern, pattern_digest};
use sha2::{Digest, Sha256};

const CHUNK: usize = 64 * 1024;

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Dir {
    Down,
    Up,
    /// `parallel` downloads and `parallel` uploads, all at once.
    Both,
}

impl Dir {
    fn ops(self) -> &'static [Op] {
        match self {
            Dir::Down => &[Op::Download],
            Dir::Up => &[Op::Upload],
            Dir::Both => &[Op::Download, Op::Upload],
        }
    }
}

/// What to run.
#[derive(Clone, Copy)]
pub struct Plan {
    pub to: SocketAddr,
    /// Transfers per direction.
    pub parallel: usize,
    /// Bytes per transfer.
    pub size: u64,
    pub dir: Dir,
    /// Limit for the whole run.
    pub timeout: Duration,
    /// Uploads half-close before reading the digest.
    pub half_close: bool,
}

pub fn run(plan: Plan) -> ExitCode {
    let Plan {
        parallel,
        size,
        dir,
        timeout,
        ..
    } = plan;
    let started = Instant::now();
    let deadline = started + timeout;
    let (done, results) = mpsc::channel();
    let mut total = 0;
    for i in 0..parallel {
        for &op in dir.ops() {
            let header = Header {
                op,
                len: size,
                seed: rand::random(),
            };
            let done = done.clone();
            thread::spawn(move || {
                let _ = done.send((i, header, transfer(&plan, header)));
            });
            total += 1;
        }
    }
    drop(done);

    let mut ok = 0;
    let mut finished = 0;
    while finished < total {
        let left = deadline.saturating_duration_since(Instant::now());
        match results.recv_timeout(left) {
            Ok((i, header, result)) => {
                finished += 1;
                match result {
                    Ok(()) => ok += 1,
                    Err(e) => eprintln!("transfer {i} {:?} seed={}: {e:#}", header.op, header.seed),
                }
            }
            Err(_) => {
                eprintln!(
                    "timeout: {} of {total} transfers unfinished after {timeout:?}",
                    total - finished
                );
                break;
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let bytes = ok as u64 * size;
    println!(
        "xfer ok={ok}/{total} bytes={bytes} secs={secs:.3} gbit_s={:.3}",
        bytes as f64 * 8.0 / secs / 1e9
    );
    if ok == total {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn transfer(plan: &Plan, header: Header) -> Result<()> {
    let mut stream = TcpStream::connect_timeout(&plan.to, plan.timeout).context("connecting")?;
    stream.set_read_timeout(Some(plan.timeout))?;
    stream.set_write_timeout(Some(plan.timeout))?;
    stream.write_all(&header.encode()).context("sending header")?;
    match header.op {
        Op::Download => download(&mut stream, header),
        Op::Upload => upload(&mut stream, header, plan.half_close),
    }
}

/// Receives until the server closes; length and digest must match the pattern.
fn download(stream: &mut TcpStream, header: Header) -> Result<()> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0; CHUNK];
    let mut got = 0u64;
    loop {
        let n = stream.read(&mut buf).context("receiving")?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        got += n as u64;
    }
    if got != header.len {
        bail!("received {got} bytes, expected {}", header.len);
    }
    if hasher.finalize()[..] != pattern_digest(header.seed, header.len) {
        bail!("SHA-256 mismatch on download");
    }
    Ok(())
}

/// Sends the pattern, optionally half-closes (FIN while the reply is still
/// to come), and compares the server's digest with ours.
fn upload(stream: &mut TcpStream, header: Header, half_close: bool) -> Result<()> {
    let mut pattern = Pattern::new(header.seed);
    let mut hasher = Sha256::new();
    let mut buf = vec![0; CHUNK];
    let mut left = header.len;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        pattern.fill(&mut buf[..n]);
        hasher.update(&buf[..n]);
        stream.write_all(&buf[..n]).context("sending")?;
        left -= n as u64;
    }
    if half_close {
        stream.shutdown(Shutdown::Write).context("half-closing")?;
    }
    let mut digest = [0; DIGEST_LEN];
    stream.read_exact(&mut digest).context("reading the server's digest")?;
    if digest[..] != hasher.finalize()[..] {
        bail!("SHA-256 mismatch on upload");
    }
    Ok(())
}
