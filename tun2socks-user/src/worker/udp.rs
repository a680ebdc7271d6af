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
use super::udp_lane::{self, LaneGuard, Member};
use super::{Shared, dns};
use crate::device::port::PacketPort;
use crate::dns::service::DNS_PORT;
use crate::dns::{DnsRoute, FakeIpPool, PinGuard};
use crate::packet::{FlowKey, write_udp};
use crate::proxy::socks5::{UdpHeaderError, decode_udp_header, encode_udp_header};
use crate::proxy::{Target, UdpAssociation, UdpFraming};

/// Datagrams held per session while its association is being set up.
const MAX_QUEUED: usize = 32;
/// Largest datagram read from a relay.
const RECV_BUFFER: usize = 65_536;
/// Datagrams one session delivers per wake-up before others get a turn.
const RECV_BATCH: usize = 64;
/// Idle timeout of a session that has only sent to port 53. Resolvers use a
/// fresh source port per query, so each query is a session of its own
/// (with an association and its control connection at the proxy): keeping
/// each for the full --udp-timeout would hold hundreds for nothing. Retries
/// come from the same port within a few seconds.
const DNS_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
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
    /// Every datagram so far went to port 53.
    dns_only: bool,
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
            session.dns_only &= key.dest.port() == DNS_PORT;
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
                dns_only: key.dest.port() == DNS_PORT,
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

    /// Whether the session has been idle for its timeout; `None` when it
    /// is gone or was replaced.
    fn idled_out(&self, client: SocketAddr, id: u64, now: Instant) -> Option<bool> {
        let session = self.sessions.get(&client).filter(|s| s.id == id)?;
        let timeout = match session.dns_only {
            true => self.config.idle_timeout.min(DNS_IDLE_TIMEOUT),
            false => self.config.idle_timeout,
        };
        Some(now.saturating_duration_since(session.last_active) >= timeout)
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
    let member = Member {
        socket: socket.clone(),
        client,
        framing,
    };
    if let Err(error) = shared.udp_lane.join(id, member) {
        // Replies still arrive through this task, only without priority.
        debug!(%client, %error, "cannot add the relay socket to the UDP lane");
    }
    let _in_lane = LaneGuard {
        lane: &shared.udp_lane,
        id,
    };
    let shortest = shared.udp.borrow().config.idle_timeout.min(DNS_IDLE_TIMEOUT);
    let mut tick = tokio::time::interval((shortest / 4).max(Duration::from_millis(250)));
    let mut control_byte = [0u8; 1];
    let end = loop {
        tokio::select! {
            _ = &mut cancelled => break "evicted",
            ready = socket.readable() => match ready.and_then(|()| receive(&shared, &socket, client, framing)) {
                Ok(()) => {}
                Err(_) => break "relay socket failed",
            },
            // A SOCKS5 association lives as long as its control connection.
            read = read_control(&mut control, &mut control_byte) => match read {
                Ok(0) | Err(_) => break "control connection closed",
                Ok(_) => {}
            },
            _ = tick.tick() => {
                match shared.udp.borrow().idled_out(client, id, Instant::now()) {
                    Some(false) => {}
                    Some(true) => break "idle",
                    None => break "replaced",
                }
            }
        }
    };
    debug!(%client, end, "UDP session ended");
    shared.udp.borrow_mut().remove(client, id);
}

/// Delivers what the relay socket holds, up to a batch, then flushes the
/// port. The buffers are the worker's (one datagram is read and written out
/// before the next), so an idle session holds none. For the session's task,
/// which the runtime woke: reads through the runtime, which clears the
/// socket's readiness once it is drained.
fn receive(shared: &Shared, socket: &UdpSocket, client: SocketAddr, framing: UdpFraming) -> std::io::Result<()> {
    receive_with(shared, client, framing, |buf| socket.try_recv_from(buf))
}

/// [`receive`] for the UDP lane, which saw the datagram before the runtime
/// did: reads the socket directly, since the runtime would answer
/// `WouldBlock` for a socket it has not seen ready yet.
pub(super) fn receive_now(shared: &Shared, socket: &UdpSocket, client: SocketAddr, framing: UdpFraming) {
    let _ = receive_with(shared, client, framing, |buf| udp_lane::recv_from_now(socket, buf));
}

fn receive_with(
    shared: &Shared,
    client: SocketAddr,
    framing: UdpFraming,
    mut recv: impl FnMut(&mut [u8]) -> std::io::Result<(usize, SocketAddr)>,
) -> std::io::Result<()> {
    let mut scratch = shared.udp_scratch.borrow_mut();
    let UdpScratch { datagram, packet } = &mut *scratch;
    if datagram.len() < RECV_BUFFER {
        datagram.resize(RECV_BUFFER, 0);
    }
    let mut result = Ok(());
    for _ in 0..RECV_BATCH {
        match recv(datagram) {
            Ok((n, from)) => deliver(shared, client, framing, from, &datagram[..n], packet),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    // One flush of the port for the whole batch.
    shared.flush();
    result
}

/// A worker's buffers for relayed datagrams on their way to the queue.
#[derive(Default)]
pub struct UdpScratch {
    datagram: Vec<u8>,
    packet: Vec<u8>,
}

/// Reads the control connection; pending forever when there is none.
async fn read_control(control: &mut Option<tokio::net::TcpStream>, buf: &mut [u8]) -> std::io::Result<usize> {
    match control {
        Some(stream) => stream.read(buf).await,
        None => std::future::pending().await,
    }
}

/// A datagram from upstream (`from`): strip the SOCKS5 header if any and
/// write it to the port as coming from the remote that sent it (the caller
/// flushes the port after its batch).
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
    match shared.port.send(packet) {
        Ok(()) => udp.stats.datagrams_in += 1,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn key(client_port: u16, dest_port: u16) -> FlowKey {
        FlowKey {
            client: SocketAddr::from(([10, 0, 1, 1], client_port)),
            dest: SocketAddr::from(([10, 0, 2, 2], dest_port)),
        }
    }

    fn table() -> UdpTable {
        UdpTable::new(UdpConfig {
            max_sessions: 8,
            idle_timeout: Duration::from_secs(60),
        })
    }

    #[test]
    fn a_dns_only_session_idles_out_sooner() {
        let mut udp = table();
        let t0 = Instant::now();
        let (dns_id, _dns_cancel) = udp.outbound(key(5000, 53), None, b"query", t0).unwrap();
        let (other_id, _other_cancel) = udp.outbound(key(5001, 4000), None, b"game", t0).unwrap();
        let (client_dns, client_other) = (key(5000, 53).client, key(5001, 4000).client);

        let soon = t0 + DNS_IDLE_TIMEOUT;
        assert_eq!(udp.idled_out(client_dns, dns_id, soon), Some(true));
        assert_eq!(udp.idled_out(client_other, other_id, soon), Some(false));
        let later = t0 + Duration::from_secs(60);
        assert_eq!(udp.idled_out(client_other, other_id, later), Some(true));
        assert_eq!(udp.idled_out(client_dns, dns_id + 100, soon), None);
    }

    #[test]
    fn a_session_that_leaves_port_53_keeps_the_full_timeout() {
        let mut udp = table();
        let t0 = Instant::now();
        let (id, _cancel) = udp.outbound(key(5000, 53), None, b"query", t0).unwrap();
        assert!(udp.outbound(key(5000, 443), None, b"quic", t0).is_none());
        assert_eq!(
            udp.idled_out(key(5000, 53).client, id, t0 + DNS_IDLE_TIMEOUT),
            Some(false)
        );
    }
}
