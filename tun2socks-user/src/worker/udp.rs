//! UDP through SOCKS5 UDP ASSOCIATE, with endpoint-independent mapping: one
//! association per application source endpoint, whatever it sends to, and
//! replies from any remote delivered back to that endpoint.
//!
//! Steering sends all datagrams of one source endpoint to one worker, so the
//! session table is per worker and needs no lock. The packet path never
//! waits: a datagram is sent with a non-blocking `try_send` from the worker
//! loop itself, queued (bounded) while its association is being set up, or
//! dropped and counted.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::net::UdpSocket;
use tokio::sync::oneshot;
use tracing::debug;

use super::limit_log::{Limit, LimitLog};
use super::{Shared, dns};
use crate::dns::{DnsRoute, FakeIpPool, PinGuard};
use crate::packet::{FlowKey, write_udp};
use crate::proxy::socks5::{UdpHeaderError, decode_udp_header, encode_udp_header};
use crate::proxy::{Target, UdpAssociation, UdpFraming};

/// Datagrams held per session while its association is being set up.
const MAX_QUEUED: usize = 32;
/// Largest datagram read from a relay.
const RECV_BUFFER: usize = 65_536;
/// Distinct remotes remembered per session for mapping replies back to
/// fake addresses.
const MAX_PEERS: usize = 32;

#[derive(Debug, Clone)]
pub struct UdpConfig {
    /// Live associations on this worker; the oldest idle one is evicted
    /// when a new one would exceed it.
    pub max_sessions: usize,
    pub idle_timeout: Duration,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct UdpStats {
    pub sessions_opened: u64,
    pub sessions_evicted: u64,
    pub sessions_failed: u64,
    pub datagrams_out: u64,
    pub datagrams_in: u64,
    /// Dropped on the way out: queue full while associating, or the
    /// relay socket's buffer full.
    pub dropped_out: u64,
    /// Dropped on the way in: FRAG ≠ 0, bad header, unroutable source.
    pub dropped_in: u64,
    pub fragments_dropped: u64,
}

enum State {
    Associating(VecDeque<(Target, Box<[u8]>)>),
    Ready(Rc<UdpSocket>, UdpFraming),
}

struct Session {
    id: u64,
    last_active: Instant,
    state: State,
    peers: Peers,
    /// Dropping it (eviction, shutdown) ends the session's task.
    _cancel: oneshot::Sender<()>,
}

/// Whom a session has sent to. Fake-IP destinations are resolved to their
/// name once per session (not per datagram: the pool has a lock) and pinned
/// while the session lives. A relay reports the real address that sent a
/// reply; one from a port we sent to by name, from an address we never
/// sent to directly, is given back the fake address the application used.
#[derive(Default)]
struct Peers {
    fake: Vec<FakePeer>,
    direct: Vec<SocketAddr>,
}

struct FakePeer {
    addr: SocketAddr,
    pin: PinGuard,
}

impl Peers {
    /// The proxy-side target for `dest`; `None` for a fake address the pool
    /// does not know (stale), which is dropped.
    fn target(&mut self, dest: SocketAddr, pool: Option<&Arc<FakeIpPool>>) -> Option<Target> {
        let Some(pool) = pool.filter(|p| p.contains(dest.ip())) else {
            if self.direct.len() < MAX_PEERS && !self.direct.contains(&dest) {
                self.direct.push(dest);
            }
            return Some(Target::Ip(dest));
        };
        if let Some(peer) = self.fake.iter().find(|p| p.addr == dest) {
            return Some(Target::Domain(peer.pin.name().to_owned(), dest.port()));
        }
        let pin = pool.resolve(dest.ip())?;
        let target = Target::Domain(pin.name().to_owned(), dest.port());
        if self.fake.len() < MAX_PEERS {
            self.fake.push(FakePeer { addr: dest, pin });
        }
        Some(target)
    }

    fn reply_source(&self, remote: SocketAddr) -> SocketAddr {
        if self.fake.is_empty() || self.direct.contains(&remote) {
            return remote;
        }
        self.fake
            .iter()
            .find(|p| p.addr.port() == remote.port())
            .map_or(remote, |p| p.addr)
    }
}

pub struct UdpTable {
    sessions: HashMap<SocketAddr, Session>,
    config: UdpConfig,
    next_id: u64,
    scratch: Vec<u8>,
    /// Shutting down: no new sessions.
    draining: bool,
    pub stats: UdpStats,
    limits: LimitLog,
}

impl UdpTable {
    pub fn new(config: UdpConfig) -> Self {
        UdpTable {
            sessions: HashMap::new(),
            config,
            next_id: 0,
            scratch: Vec::new(),
            draining: false,
            stats: UdpStats::default(),
            limits: LimitLog::default(),
        }
    }

    pub fn live_sessions(&self) -> usize {
        self.sessions.len()
    }

    /// Sends one datagram; `None` if it went out or was queued or dropped,
    /// `Some(receiver)` when a new session must be started for it.
    fn outbound(
        &mut self,
        key: FlowKey,
        pool: Option<&Arc<FakeIpPool>>,
        payload: &[u8],
        now: Instant,
    ) -> Option<(u64, oneshot::Receiver<()>)> {
        let client = key.client;
        if let Some(session) = self.sessions.get_mut(&client) {
            session.last_active = now;
            let Some(target) = session.peers.target(key.dest, pool) else {
                self.stats.dropped_out += 1;
                return None;
            };
            match &mut session.state {
                State::Ready(socket, framing) => {
                    let (socket, framing) = (socket.clone(), *framing);
                    self.send(&socket, framing, &target, payload);
                }
                State::Associating(queue) if queue.len() < MAX_QUEUED => queue.push_back((target, payload.into())),
                State::Associating(_) => self.stats.dropped_out += 1,
            }
            return None;
        }
        if self.draining {
            self.stats.dropped_out += 1;
            return None;
        }
        let mut peers = Peers::default();
        let Some(target) = peers.target(key.dest, pool) else {
            self.stats.dropped_out += 1;
            return None;
        };
        if self.sessions.len() >= self.config.max_sessions.max(1) {
            self.evict_oldest();
        }
        let (cancel, cancelled) = oneshot::channel();
        let id = self.next_id;
        self.next_id += 1;
        let queue = VecDeque::from([(target, Box::<[u8]>::from(payload))]);
        let state = State::Associating(queue);
        self.sessions.insert(
            client,
            Session {
                id,
                last_active: now,
                state,
                peers,
                _cancel: cancel,
            },
        );
        self.stats.sessions_opened += 1;
        Some((id, cancelled))
    }

    fn evict_oldest(&mut self) {
        let oldest = self
            .sessions
            .iter()
            .min_by_key(|(_, s)| s.last_active)
            .map(|(client, _)| *client);
        if let Some(client) = oldest {
            debug!(%client, "UDP session table full, evicting the oldest idle session");
            self.sessions.remove(&client);
            self.stats.sessions_evicted += 1;
            self.limits.hit(Limit::UdpSessions);
        }
    }

    fn send(&mut self, socket: &UdpSocket, framing: UdpFraming, target: &Target, payload: &[u8]) {
        let sent = match (framing, target) {
            (UdpFraming::Socks5, _) => {
                self.scratch.clear();
                if encode_udp_header(&mut self.scratch, target).is_err() {
                    self.stats.dropped_out += 1;
                    return;
                }
                self.scratch.extend_from_slice(payload);
                socket.try_send(&self.scratch)
            }
            (UdpFraming::Plain, Target::Ip(dest)) => socket.try_send_to(payload, *dest),
            // Without a proxy nobody resolves a name for us.
            (UdpFraming::Plain, Target::Domain(..)) => {
                self.stats.dropped_out += 1;
                return;
            }
        };
        match sent {
            Ok(_) => self.stats.datagrams_out += 1,
            // Full socket buffer: UDP may drop, and must not wait.
            Err(_) => self.stats.dropped_out += 1,
        }
    }

    /// The association is up: flush what waited for it. False if the
    /// session was evicted meanwhile.
    fn ready(&mut self, client: SocketAddr, id: u64, socket: Rc<UdpSocket>, framing: UdpFraming) -> bool {
        let Some(session) = self.sessions.get_mut(&client).filter(|s| s.id == id) else {
            return false;
        };
        let ready = State::Ready(socket.clone(), framing);
        let State::Associating(queue) = std::mem::replace(&mut session.state, ready) else {
            return true;
        };
        for (target, payload) in queue {
            self.send(&socket, framing, &target, &payload);
        }
        true
    }

    fn remove(&mut self, client: SocketAddr, id: u64) {
        if self.sessions.get(&client).is_some_and(|s| s.id == id) {
            self.sessions.remove(&client);
        }
    }

    fn idle_for(&self, client: SocketAddr, id: u64, now: Instant) -> Option<Duration> {
        self.sessions
            .get(&client)
            .filter(|s| s.id == id)
            .map(|s| now.saturating_duration_since(s.last_active))
    }

    /// A reply arrived: the session is active, and this is the address the
    /// application should see it come from.
    fn reply_source(&mut self, client: SocketAddr, remote: SocketAddr) -> SocketAddr {
        match self.sessions.get_mut(&client) {
            Some(s) => {
                s.last_active = Instant::now();
                s.peers.reply_source(remote)
            }
            None => remote,
        }
    }

    /// Ends every session and opens no new ones.
    pub fn start_draining(&mut self) {
        self.draining = true;
        self.clear();
    }

    /// Ends every session (shutdown).
    pub fn clear(&mut self) {
        self.sessions.clear();
    }
}

/// An application datagram read from the queue.
pub fn ingress(shared: &Rc<Shared>, key: FlowKey, payload: &[u8]) {
    let service = shared.dns.as_deref();
    match service.map_or(DnsRoute::Pass, |d| d.route(&key)) {
        DnsRoute::Local => return dns::local(shared, key, payload),
        DnsRoute::OverTcp(server) => return dns::over_tcp(shared, key, server, payload),
        DnsRoute::Pass => {}
    }
    let pool = service.and_then(|d| d.pool());
    let started = shared.udp.borrow_mut().outbound(key, pool, payload, Instant::now());
    if let Some((id, cancelled)) = started {
        tokio::task::spawn_local(run(shared.clone(), key.client, id, cancelled));
    }
}

/// One session: set up the association, then deliver the relay's datagrams
/// to the application until the control connection closes, the session
/// idles out, or it is evicted.
async fn run(shared: Rc<Shared>, client: SocketAddr, id: u64, mut cancelled: oneshot::Receiver<()>) {
    let association = tokio::select! {
        result = shared.upstream.associate(client) => result,
        _ = &mut cancelled => return,
    };
    let UdpAssociation {
        mut control,
        socket,
        framing,
    } = match association {
        Ok(association) => association,
        Err(error) => {
            debug!(%client, %error, "UDP association failed");
            let mut udp = shared.udp.borrow_mut();
            udp.stats.sessions_failed += 1;
            udp.remove(client, id);
            return;
        }
    };
    let socket = Rc::new(socket);
    if !shared.udp.borrow_mut().ready(client, id, socket.clone(), framing) {
        return;
    }
    let idle_timeout = shared.udp.borrow().config.idle_timeout;
    let mut tick = tokio::time::interval((idle_timeout / 4).max(Duration::from_millis(250)));
    let mut buf = vec![0u8; RECV_BUFFER];
    let mut packet = Vec::new();
    let mut control_byte = [0u8; 1];
    let end = loop {
        tokio::select! {
            _ = &mut cancelled => break "evicted",
            received = socket.recv_from(&mut buf) => match received {
                Ok((n, from)) => deliver(&shared, client, framing, from, &buf[..n], &mut packet),
                Err(_) => break "relay socket failed",
            },
            // A SOCKS5 association lives as long as its control connection.
            read = read_control(&mut control, &mut control_byte) => match read {
                Ok(0) | Err(_) => break "control connection closed",
                Ok(_) => {}
            },
            _ = tick.tick() => {
                let idle = shared.udp.borrow().idle_for(client, id, Instant::now());
                match idle {
                    Some(idle) if idle < idle_timeout => {}
                    Some(_) => break "idle",
                    None => break "replaced",
                }
            }
        }
    };
    debug!(%client, end, "UDP session ended");
    shared.udp.borrow_mut().remove(client, id);
}

/// Reads the control connection; pending forever when there is none.
async fn read_control(control: &mut Option<tokio::net::TcpStream>, buf: &mut [u8]) -> std::io::Result<usize> {
    match control {
        Some(stream) => stream.read(buf).await,
        None => std::future::pending().await,
    }
}

/// A datagram from upstream (`from`): strip the SOCKS5 header if any and
/// write it into the TUN queue as coming from the remote that sent it.
fn deliver(
    shared: &Shared,
    client: SocketAddr,
    framing: UdpFraming,
    from: SocketAddr,
    datagram: &[u8],
    packet: &mut Vec<u8>,
) {
    let mut udp = shared.udp.borrow_mut();
    let decoded = match framing {
        UdpFraming::Socks5 => decode_udp_header(datagram),
        UdpFraming::Plain => Ok((Target::Ip(from), 0)),
    };
    let (remote, offset) = match decoded {
        Ok((Target::Ip(remote), offset)) => (remote, offset),
        Ok((Target::Domain(..), _)) | Err(UdpHeaderError::Truncated | UdpHeaderError::BadAddressType(_)) => {
            udp.stats.dropped_in += 1;
            return;
        }
        Err(UdpHeaderError::Fragmented(_)) => {
            udp.stats.fragments_dropped += 1;
            return;
        }
    };
    let remote = udp.reply_source(client, unmap_v4(remote, client));
    if write_udp(packet, remote, client, &datagram[offset..]).is_none() {
        udp.stats.dropped_in += 1;
        return;
    }
    match shared.tun.send(packet) {
        Ok(_) => udp.stats.datagrams_in += 1,
        Err(_) => udp.stats.dropped_in += 1,
    }
}

/// A proxy may report an IPv4 remote as IPv4-mapped IPv6; give an IPv4
/// application its IPv4 address back.
fn unmap_v4(remote: SocketAddr, client: SocketAddr) -> SocketAddr {
    match (remote, client) {
        (SocketAddr::V6(r), SocketAddr::V4(_)) => match r.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), r.port()),
            None => remote,
        },
        _ => remote,
    }
}
