//! `many-sources`: one datagram and its echo from each of many source ports,
//! a batch of ports at a time.

use std::io::ErrorKind;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};

use crate::canonical;

pub struct Plan {
    pub to: SocketAddr,
    pub sockets: u16,
    pub first_port: u16,
    pub batch: usize,
    pub try_timeout: Duration,
    pub retries: u32,
}

pub fn run(plan: &Plan) -> Result<ExitCode> {
    ensure!(plan.batch > 0, "the batch must be at least 1");
    let last = u32::from(plan.first_port) + u32::from(plan.sockets);
    ensure!(last <= 65_536, "ports {}..{last} do not fit", plan.first_port);
    let started = Instant::now();
    let ports: Vec<u16> = (0..plan.sockets).map(|i| plan.first_port + i).collect();
    let (mut echoed, mut resent, mut failed) = (0u32, 0u32, Vec::new());
    for batch in ports.chunks(plan.batch) {
        let sockets = batch
            .iter()
            .map(|&port| bind(plan.to, port))
            .collect::<Result<Vec<_>>>()?;
        let mut done = vec![false; sockets.len()];
        for attempt in 0..=plan.retries {
            for (socket, _) in sockets.iter().zip(&done).filter(|(_, done)| !**done) {
                let port = socket.local_addr()?.port();
                socket
                    .send_to(format!("port {port}").as_bytes(), plan.to)
                    .with_context(|| format!("sending from port {port}"))?;
                resent += u32::from(attempt > 0);
            }
            let deadline = Instant::now() + plan.try_timeout;
            for (socket, done) in sockets.iter().zip(done.iter_mut()).filter(|(_, done)| !**done) {
                *done = wait_echo(socket, plan.to, deadline)?;
            }
            if done.iter().all(|d| *d) {
                break;
            }
        }
        echoed += done.iter().filter(|d| **d).count() as u32;
        failed.extend(batch.iter().zip(&done).filter(|(_, d)| !**d).map(|(p, _)| *p));
    }
    println!(
        "sources to={} sockets={} echoed={echoed} resent={resent} secs={:.2}",
        plan.to,
        plan.sockets,
        started.elapsed().as_secs_f64()
    );
    if !failed.is_empty() {
        println!("no echo for source ports {failed:?}");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

fn bind(to: SocketAddr, port: u16) -> Result<UdpSocket> {
    let local: SocketAddr = match to {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, port).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, port).into(),
    };
    UdpSocket::bind(local).with_context(|| format!("binding {local}"))
}

/// Whether the socket's own echo arrives from `to` before `deadline`.
fn wait_echo(socket: &UdpSocket, to: SocketAddr, deadline: Instant) -> Result<bool> {
    let port = socket.local_addr()?.port();
    let expected = format!("port {port}");
    let mut buf = [0u8; 64];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        socket.set_read_timeout(Some(left))?;
        match socket.recv_from(&mut buf) {
            Ok((n, from)) if canonical(from) == canonical(to) && buf[..n] == *expected.as_bytes() => return Ok(true),
            Ok((n, from)) => eprintln!(
                "port {port}: unexpected {:?} from {from}",
                String::from_utf8_lossy(&buf[..n])
            ),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => return Ok(false),
            Err(e) => return Err(e).with_context(|| format!("receiving on port {port}")),
        }
    }
}
