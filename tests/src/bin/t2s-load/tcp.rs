//! `t2s-load tcp`: bulk TCP streams, one blocking thread each, timed (with a
//! warm-up that does not count) or a fixed number of bytes.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::{self, JoinHandle, sleep};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::{Path, cpu_seconds};

const CHUNK: usize = 128 * 1024;
/// A stream that moves nothing for this long has failed.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Dir {
    /// The client sends.
    Up,
    /// The client receives.
    Down,
}

pub struct Plan {
    pub path: Path,
    pub streams: usize,
    pub dir: Dir,
    pub secs: Duration,
    pub warmup: Duration,
    pub bytes: Option<u64>,
    pub timeout: Duration,
}

pub fn run(plan: &Plan) -> Result<()> {
    let started = Instant::now();
    let cpu_before = cpu_seconds();
    let (bytes, secs, cpu) = match plan.bytes {
        Some(total) => {
            let quota = total.div_ceil(plan.streams.max(1) as u64);
            let streams = Streams::start(&plan.path, plan.streams, plan.dir, Some(quota))?;
            let moved = streams.finish(started + plan.timeout)?;
            (moved, started.elapsed().as_secs_f64(), cpu_seconds() - cpu_before)
        }
        None => {
            if plan.warmup + plan.secs > plan.timeout {
                bail!("warm-up plus measuring time exceed the timeout");
            }
            let streams = Streams::start(&plan.path, plan.streams, plan.dir, None)?;
            sleep(plan.warmup);
            let (b0, t0, c0) = (streams.bytes(), Instant::now(), cpu_seconds());
            sleep(plan.secs);
            let (b1, secs, c1) = (streams.bytes(), t0.elapsed().as_secs_f64(), cpu_seconds());
            streams.stop()?;
            (b1 - b0, secs, c1 - c0)
        }
    };
    if bytes == 0 {
        bail!("no bytes moved");
    }
    let dir = match plan.dir {
        Dir::Up => "up",
        Dir::Down => "down",
    };
    println!(
        "tcp dir={dir} streams={} bytes={bytes} secs={secs:.3} gbit_s={:.4} cpu_s={cpu:.3} cpu_pct={:.1}",
        plan.streams,
        bytes as f64 * 8.0 / secs / 1e9,
        cpu / secs * 100.0
    );
    Ok(())
}

/// Running bulk streams.
pub struct Streams {
    moved: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Result<()>>>,
    /// Clones of the streams, to unblock the threads on stop.
    sockets: Vec<TcpStream>,
}

impl Streams {
    /// Connects `n` streams (all before any moves data), then starts them.
    /// With a quota each stream moves that many bytes and ends (an upload
    /// waits for the server's acknowledgement of everything).
    pub fn start(path: &Path, n: usize, dir: Dir, quota: Option<u64>) -> Result<Self> {
        let mut connected = Vec::new();
        for i in 0..n {
            let mut stream = path
                .connect_blocking()
                .with_context(|| format!("stream {i} to {}", path.describe()))?;
            stream.set_read_timeout(Some(IO_TIMEOUT))?;
            stream.set_write_timeout(Some(IO_TIMEOUT))?;
            match (dir, quota) {
                (Dir::Up, Some(quota)) => {
                    let mut header = vec![b'A'];
                    header.extend_from_slice(&quota.to_be_bytes());
                    stream.write_all(&header)?;
                }
                (Dir::Up, None) => stream.write_all(b"S")?,
                (Dir::Down, _) => stream.write_all(b"R")?,
            }
            connected.push(stream);
        }
        let moved = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        let mut sockets = Vec::new();
        for stream in connected {
            sockets.push(stream.try_clone()?);
            let (moved, stop) = (Arc::clone(&moved), Arc::clone(&stop));
            threads.push(thread::spawn(move || {
                let result = match dir {
                    Dir::Up => upload(stream, quota, &moved),
                    Dir::Down => download(stream, quota, &moved),
                };
                // Errors caused by our own stop are not errors.
                if stop.load(Ordering::SeqCst) { Ok(()) } else { result }
            }));
        }
        Ok(Streams {
            moved,
            stop,
            threads,
            sockets,
        })
    }

    /// Bytes moved so far by all streams.
    pub fn bytes(&self) -> u64 {
        self.moved.load(Ordering::Relaxed)
    }

    /// Stops the streams; fails if one had failed before.
    pub fn stop(self) -> Result<()> {
        self.stop.store(true, Ordering::SeqCst);
        for socket in &self.sockets {
            let _ = socket.shutdown(Shutdown::Both);
        }
        join_all(self.threads)
    }

    /// Waits for streams with a quota to end, at most until `deadline`.
    pub fn finish(self, deadline: Instant) -> Result<u64> {
        while self.threads.iter().any(|t| !t.is_finished()) {
            if Instant::now() >= deadline {
                let moved = self.bytes();
                self.stop()?;
                bail!("timed out with {moved} bytes moved");
            }
            sleep(Duration::from_millis(5));
        }
        let moved = self.bytes();
        join_all(self.threads)?;
        Ok(moved)
    }
}

fn join_all(threads: Vec<JoinHandle<Result<()>>>) -> Result<()> {
    let mut first_error = None;
    for thread in threads {
        let result = thread
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("stream thread panicked")));
        if let Err(e) = result {
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

fn upload(mut stream: TcpStream, quota: Option<u64>, moved: &AtomicU64) -> Result<()> {
    let buf = vec![0x55; CHUNK];
    let mut left = quota.unwrap_or(u64::MAX);
    while left > 0 {
        let n = (left.min(CHUNK as u64)) as usize;
        let written = match stream.write(&buf[..n]) {
            Ok(0) => bail!("upload: the connection closed"),
            Ok(written) => written,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context("upload"),
        };
        moved.fetch_add(written as u64, Ordering::Relaxed);
        left -= written as u64;
    }
    if quota.is_some() {
        // The server acknowledges once it has read everything.
        let mut ack = [0; 1];
        stream
            .read_exact(&mut ack)
            .context("upload: waiting for the server's acknowledgement")?;
    }
    Ok(())
}

fn download(mut stream: TcpStream, quota: Option<u64>, moved: &AtomicU64) -> Result<()> {
    let mut buf = vec![0; CHUNK];
    let mut left = quota.unwrap_or(u64::MAX);
    while left > 0 {
        let n = (left.min(CHUNK as u64)) as usize;
        let read = match stream.read(&mut buf[..n]) {
            Ok(0) => bail!("download: the connection closed early"),
            Ok(read) => read,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context("download"),
        };
        moved.fetch_add(read as u64, Ordering::Relaxed);
        left -= read as u64;
    }
    Ok(())
}
