//! `t2s-probe serve`: one accept thread per listen address, one thread per
//! connection, at most `max_connections` at once.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use lab::probe::{HEADER_LEN, Header, Op, Pattern};
use sha2::{Digest, Sha256};

const CHUNK: usize = 64 * 1024;

pub fn run(listen: &[SocketAddr], io_timeout: Duration, max_connections: usize) -> Result<()> {
    let active = Arc::new(AtomicUsize::new(0));
    let mut acceptors = Vec::new();
    for &addr in listen {
        let listener = TcpListener::bind(addr).with_context(|| format!("binding {addr}"))?;
        println!("listening on {addr}");
        let active = Arc::clone(&active);
        acceptors.push(thread::spawn(move || {
            accept_loop(listener, io_timeout, max_connections, &active)
        }));
    }
    for acceptor in acceptors {
        acceptor
            .join()
            .map_err(|_| anyhow::anyhow!("accept thread panicked"))??;
    }
    Ok(())
}

fn accept_loop(
    listener: TcpListener,
    io_timeout: Duration,
    max_connections: usize,
    active: &Arc<AtomicUsize>,
) -> Result<()> {
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(stream) => stream,
            Err(e) => {
                eprintln!("accept: {e}");
                continue;
            }
        };
        if active.fetch_add(1, Ordering::SeqCst) >= max_connections {
            active.fetch_sub(1, Ordering::SeqCst);
            eprintln!("too many connections; closing one at accept");
            continue;
        }
        let active = Arc::clone(active);
        thread::spawn(move || {
            let peer = stream.peer_addr().map(|a| a.to_string()).unwrap_or_default();
            let started = Instant::now();
            match serve_one(stream, io_timeout) {
                Ok(header) => println!(
                    "{peer} {:?} len={} seed={} ok in {:.3}s",
                    header.op,
                    header.len,
                    header.seed,
                    started.elapsed().as_secs_f64()
                ),
                Err(e) => eprintln!("{peer}: {e:#}"),
            }
            active.fetch_sub(1, Ordering::SeqCst);
        });
    }
    Ok(())
}

fn serve_one(mut stream: TcpStream, io_timeout: Duration) -> Result<Header> {
    stream.set_read_timeout(Some(io_timeout))?;
    stream.set_write_timeout(Some(io_timeout))?;
    let mut raw = [0; HEADER_LEN];
    stream.read_exact(&mut raw).context("reading header")?;
    let header = Header::decode(&raw)?;
    match header.op {
        Op::Download => send_pattern(&mut stream, header)?,
        Op::Upload => receive_and_digest(&mut stream, header)?,
    }
    stream.shutdown(Shutdown::Write).context("closing write side")?;
    Ok(header)
}

fn send_pattern(stream: &mut TcpStream, header: Header) -> Result<()> {
    let mut pattern = Pattern::new(header.seed);
    let mut buf = vec![0; CHUNK];
    let mut left = header.len;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        pattern.fill(&mut buf[..n]);
        stream.write_all(&buf[..n]).context("sending")?;
        left -= n as u64;
    }
    Ok(())
}

fn receive_and_digest(stream: &mut TcpStream, header: Header) -> Result<()> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0; CHUNK];
    let mut left = header.len;
    while left > 0 {
        let want = left.min(CHUNK as u64) as usize;
        let n = stream.read(&mut buf[..want]).context("receiving")?;
        if n == 0 {
            bail!("peer closed after {} of {} bytes", header.len - left, header.len);
        }
        hasher.update(&buf[..n]);
        left -= n as u64;
    }
    stream.write_all(&hasher.finalize()).context("sending digest")?;
    Ok(())
}
