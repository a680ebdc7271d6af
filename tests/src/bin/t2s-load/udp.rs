//! `t2s-udp rtt`: one datagram in flight at a time, its round trip timed;
//! optionally while bulk TCP downloads run through the same path (the
//! head-of-line case).

use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use crate::tcp::{Dir, Streams};
use crate::{Path, cpu_seconds, percentile, socks};

const MAGIC: [u8; 4] = *b"T2SL";
pub const HEADER_LEN: usize = 12;

pub struct Plan {
    pub path: Path,
    pub secs: Duration,
    pub interval: Duration,
    pub size: usize,
    pub loss: Duration,
    pub load_streams: usize,
    pub load_warmup: Duration,
}

pub fn run(plan: &Plan) -> Result<()> {
    ensure!(
        (HEADER_LEN..=1400).contains(&plan.size),
        "--size must be {HEADER_LEN} to 1400"
    );
    let load = match plan.load_streams {
        0 => None,
        n => {
            let streams = Streams::start(&plan.path, n, Dir::Down, None).context("starting the load")?;
            sleep(plan.load_warmup);
            Some(streams)
        }
    };
    let pinger = Pinger::open(&plan.path)?;
    let load_before = load.as_ref().map_or(0, Streams::bytes);
    let (started, cpu_before) = (Instant::now(), cpu_seconds());
    let tally = pinger.run(plan)?;
    let secs = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu_before;
    let load_gbit_s = match load {
        Some(streams) => {
            let moved = streams.bytes() - load_before;
            streams.stop().context("a load stream failed")?;
            moved as f64 * 8.0 / secs / 1e9
        }
        None => 0.0,
    };

    let mut rtts = tally.rtts_us;
    let received = rtts.len();
    if received == 0 {
        bail!("no datagram came back ({} sent)", tally.sent);
    }
    // A lost datagram counts as the loss timeout: loss shows in the tail.
    rtts.extend(std::iter::repeat_n(plan.loss.as_micros() as f64, tally.sent - received));
    rtts.sort_by(f64::total_cmp);
    println!(
        "udp sent={} received={received} lost={} late={} p50_us={:.0} p99_us={:.0} max_us={:.0} \
         load_streams={} load_gbit_s={load_gbit_s:.4} cpu_pct={:.1}",
        tally.sent,
        tally.sent - received,
        tally.late,
        percentile(&rtts, 50.0),
        percentile(&rtts, 99.0),
        rtts.last().copied().unwrap_or(f64::NAN),
        plan.load_streams,
        cpu / secs * 100.0,
    );
    Ok(())
}

/// A UDP socket towards the echo server, straight or through a SOCKS5 relay.
pub struct Pinger {
    pub socket: UdpSocket,
    /// The SOCKS5 UDP request header (empty when straight).
    header: Vec<u8>,
    /// Keeps the association alive.
    _control: Option<tokio::net::TcpStream>,
    _rt: Option<tokio::runtime::Runtime>,
}

struct Tally {
    sent: usize,
    late: usize,
    rtts_us: Vec<f64>,
}

impl Pinger {
    pub fn open(path: &Path) -> Result<Self> {
        match path.socks5 {
            None => {
                let any: SocketAddr = match path.to {
                    SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
                    SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
                };
                let socket = UdpSocket::bind(any)?;
                socket.connect(path.to)?;
                Ok(Pinger {
                    socket,
                    header: Vec::new(),
                    _control: None,
                    _rt: None,
                })
            }
            Some(proxy) => {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                let (control, socket, relay) = rt.block_on(async {
                    tokio::time::timeout(crate::CONNECT_TIMEOUT, socks::associate(proxy)).await
                })??;
                socket.connect(relay)?;
                Ok(Pinger {
                    socket,
                    header: socks::udp_header(path.to),
                    _control: Some(control),
                    _rt: Some(rt),
                })
            }
        }
    }

    fn run(&self, plan: &Plan) -> Result<Tally> {
        let mut tally = Tally {
            sent: 0,
            late: 0,
            rtts_us: Vec::new(),
        };
        let started = Instant::now();
        let mut datagram = self.datagram(plan.size);
        let mut buf = vec![0; 2048];
        let mut seq: u64 = 0;
        while started.elapsed() < plan.secs {
            seq += 1;
            self.stamp(&mut datagram, seq);
            let sent_at = Instant::now();
            self.socket.send(&datagram).context("sending a datagram")?;
            tally.sent += 1;
            let deadline = sent_at + plan.loss;
            loop {
                let now = Instant::now();
                if now >= deadline {
                    break; // lost
                }
                self.socket.set_read_timeout(Some(deadline - now))?;
                let n = match self.socket.recv(&mut buf) {
                    Ok(n) => n,
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    // An ICMP error from an earlier datagram; keep waiting.
                    Err(e) if e.kind() == ErrorKind::ConnectionRefused => continue,
                    Err(e) => return Err(e).context("receiving a datagram"),
                };
                match self.seq_of(&buf[..n]) {
                    Some(s) if s == seq => {
                        tally.rtts_us.push(sent_at.elapsed().as_secs_f64() * 1e6);
                        break;
                    }
                    Some(s) if s < seq => tally.late += 1,
                    _ => {}
                }
            }
            let next = started + plan.interval * seq as u32;
            if let Some(wait) = next.checked_duration_since(Instant::now()) {
                sleep(wait);
            }
        }
        Ok(tally)
    }

    /// A datagram of `size` payload bytes (SOCKS5 header first, if any),
    /// to be numbered with [`Pinger::stamp`].
    pub fn datagram(&self, size: usize) -> Vec<u8> {
        let mut datagram = self.header.clone();
        let body_at = datagram.len();
        datagram.resize(body_at + size, 0xAA);
        datagram[body_at..body_at + 4].copy_from_slice(&MAGIC);
        datagram
    }

    /// Writes sequence number `seq` into `datagram`.
    pub fn stamp(&self, datagram: &mut [u8], seq: u64) {
        let at = self.header.len() + 4;
        datagram[at..at + 8].copy_from_slice(&seq.to_be_bytes());
    }

    pub fn seq_of(&self, datagram: &[u8]) -> Option<u64> {
        let body = if self.header.is_empty() {
            datagram
        } else {
            socks::udp_payload(datagram)?
        };
        if body.len() < HEADER_LEN || body[..4] != MAGIC {
            return None;
        }
        Some(u64::from_be_bytes(body[4..12].try_into().ok()?))
    }
}
