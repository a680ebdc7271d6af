//! One worker's TCP/IP stack: a smoltcp `Interface` and `SocketSet` over the
//! worker's packet port, plus the flow table that decides what smoltcp gets
//! to see.
//!
//! Connections are truthful (invariant 5): a connection request is held — a
//! copy of the SYN, not a socket — until the upstream is connected. Only then
//! is a socket made and the SYN replayed into smoltcp, which answers SYN-ACK;
//! if the upstream fails, the replayed SYN meets an aborted socket and the
//! application gets a reset instead.

use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use smoltcp::iface::{Config, Interface, PollResult, SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::time::Instant;
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr, IpListenEndpoint, Ipv4Address, Ipv6Address};

use super::budget::BufferBudget;
use super::buffers::{BufferPool, Region};
use super::device::{OFFLOAD_MAX_PACKET, Offload, OnePacket, TxPath};
use super::limit_log::{Limit, LimitLog};
use super::recently_closed::RecentlyClosed;
use super::stats::WorkerStats;
use crate::device::port::{PacketPort, Port};
use crate::device::vnet::VNET_HDR_LEN;
use crate::packet::{Classified, FlowKey, classify, tcp_mss_option};

/// Bounds on how much work and memory one egress call may take, so that a
/// worker returns to reading its queue regularly.
const MAX_EGRESS_ROUNDS: usize = 256;
/// How long a finished session's socket may wait for its last ACK.
const LINGER_TIMEOUT: smoltcp::time::Duration = smoltcp::time::Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct StackConfig {
    pub mtu: usize,
    pub tcp_rx_buffer: usize,
    pub tcp_tx_buffer: usize,
    /// Connection requests waiting for their upstream, per worker.
    pub max_half_open: usize,
    /// TCP sessions (held, open or closing) per worker.
    pub max_sessions: usize,
    /// Bytes of TCP socket buffer capacity per worker.
    pub buffer_memory: usize,
}

enum Flow {
    /// Upstream connect in progress; the application's SYN, kept for replay.
    Pending {
        syn: Box<[u8]>,
        /// Buffer size reserved for each direction (0: to be refused).
        buffer: usize,
    },
    Open(SocketHandle),
}

/// How an egress call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Egress {
    /// Every socket sent what it could.
    Done,
    /// The packet budget ran out first.
    BudgetSpent,
}

/// What the worker must do with a packet after the stack has seen it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ingress {
    /// Nothing more (given to smoltcp, held, or dropped and counted).
    Done,
    /// A connection request to connect upstream.
    NewTcp(FlowKey),
    /// A UDP datagram; `payload` locates it in the packet.
    Udp {
        key: FlowKey,
        payload: std::ops::Range<usize>,
    },
}

pub struct Stack {
    iface: Interface,
    // The sockets borrow the mapped buffers below, so they must be dropped
    // first: fields drop in declaration order.
    sockets: SocketSet<'static>,
    /// The mapped buffers (receive, transmit) of each socket that has them;
    /// they go back to `pool` once the socket has been dropped.
    regions: HashMap<SocketHandle, [Option<Region>; 2]>,
    pool: BufferPool,
    flows: HashMap<FlowKey, Flow>,
    /// Sessions that ended; their sockets go once smoltcp has nothing more
    /// to send for them (a final RST or ACK).
    closing: Vec<(FlowKey, SocketHandle)>,
    /// Flows reaped in the last seconds (see [`RecentlyClosed`]).
    recently_closed: RecentlyClosed,
    port: Rc<Port>,
    /// smoltcp builds each outgoing packet here; with offload it starts
    /// with room for the `virtio_net_hdr`.
    tx_buf: Vec<u8>,
    /// TUN offload on ([`Port::offload`]): what segmenting needs.
    offload: Option<Offload>,
    pub stats: WorkerStats,
    config: StackConfig,
    half_open: usize,
    budget: BufferBudget,
    limits: LimitLog,
    /// Shutting down: connection requests are refused at once.
    draining: bool,
    epoch: std::time::Instant,
}

impl Stack {
    pub fn new(port: Rc<Port>, config: StackConfig, seed: u64) -> Self {
        let offload = port.offload().then(|| Offload::new(config.mtu));
        let mut tx_buf = match offload {
            Some(_) => vec![0u8; VNET_HDR_LEN + OFFLOAD_MAX_PACKET],
            None => vec![0u8; config.mtu],
        };
        let mut stats = WorkerStats::default();
        let epoch = std::time::Instant::now();
        let mut iface_config = Config::new(HardwareAddress::Ip);
        iface_config.random_seed = seed;
        let mut device = OnePacket {
            packet: None,
            tx: TxPath {
                port: &port,
                buf: &mut tx_buf,
                stats: &mut stats,
                offload: offload.as_ref(),
            },
            tx_budget: usize::MAX,
        };
        let mut iface = Interface::new(iface_config, &mut device, Instant::ZERO);
        // Any-IP: every destination is ours to terminate. smoltcp still wants
        // one address per family to exist; these are never on the wire.
        iface.set_any_ip(true);
        iface.update_ip_addrs(|addrs| {
            let _ = addrs.push(IpCidr::new(IpAddress::Ipv4(Ipv4Address::new(192, 0, 0, 8)), 32));
            let _ = addrs.push(IpCidr::new(
                IpAddress::Ipv6(Ipv6Address::new(0x100, 0, 0, 0, 0, 0, 0, 1)),
                128,
            ));
        });
        Stack {
            iface,
            sockets: SocketSet::new(Vec::new()),
            regions: HashMap::new(),
            pool: BufferPool::default(),
            flows: HashMap::new(),
            closing: Vec::new(),
            recently_closed: RecentlyClosed::default(),
            port,
            tx_buf,
            offload,
            stats,
            budget: BufferBudget::new(config.buffer_memory, config.tcp_rx_buffer, config.max_sessions),
            config,
            half_open: 0,
            limits: LimitLog::default(),
            draining: false,
            epoch,
        }
    }

    fn now(&self) -> Instant {
        Instant::from_micros(self.epoch.elapsed().as_micros() as i64)
    }

    pub fn tcp(&mut self, handle: SocketHandle) -> &mut tcp::Socket<'static> {
        self.sockets.get_mut::<tcp::Socket>(handle)
    }

    /// Handles one packet read from the queue.
    pub fn ingress(&mut self, packet: &mut [u8]) -> Ingress {
        self.stats.packets_in += 1;
        self.stats.bytes_in += packet.len() as u64;
        let (key, flags) = match classify(packet) {
            Classified::Tcp { key, flags } => (key, flags),
            Classified::Udp { key, payload } => return Ingress::Udp { key, payload },
            Classified::Malformed => {
                self.stats.dropped_malformed += 1;
                return Ingress::Done;
            }
            Classified::Other => {
                self.stats.dropped_unsupported += 1;
                return Ingress::Done;
            }
        };
        match self.flows.get(&key) {
            Some(Flow::Open(handle)) => {
                let handle = *handle;
                self.feed(packet);
                // A reset in SYN-RECEIVED sends a smoltcp socket back to
                // LISTEN, where it could accept someone else's SYN: close it.
                let socket = self.tcp(handle);
                if socket.state() == tcp::State::Listen {
                    socket.abort();
                }
                Ingress::Done
            }
            Some(Flow::Pending { .. }) => {
                // Retransmitted SYNs wait for the upstream; a reset withdraws
                // the request (the session notices when its connect returns).
                if flags.rst() {
                    self.withdraw(&key);
                }
                Ingress::Done
            }
            None if flags.is_connection_request() => {
                self.recently_closed.remove(&key);
                self.hold(key, packet)
            }
            None => {
                if !flags.rst() {
                    let now = self.now();
                    if self.recently_closed.contains(&key, now) {
                        self.stats.late_packets += 1;
                    } else {
                        self.stats.no_session_packets += 1;
                    }
                }
                // smoltcp answers a segment without a socket with a reset.
                self.feed(packet);
                Ingress::Done
            }
        }
    }

    fn hold(&mut self, key: FlowKey, syn: &[u8]) -> Ingress {
        let over_limit = self.flows.len() >= self.config.max_sessions;
        if over_limit {
            self.stats.tcp_over_limit += 1;
            self.limits.hit(Limit::TcpSessions);
        }
        if self.draining || over_limit {
            self.refuse_now(key, syn);
            return Ingress::Done;
        }
        if self.half_open >= self.config.max_half_open {
            self.stats.syn_over_budget += 1;
            self.limits.hit(Limit::HalfOpen);
            return Ingress::Done;
        }
        // Memory is settled before the upstream is asked for anything.
        let Some(buffer) = self.budget.reserve(self.flows.len()) else {
            self.stats.tcp_over_memory += 1;
            self.limits.hit(Limit::BufferMemory);
            self.refuse_now(key, syn);
            return Ingress::Done;
        };
        self.half_open += 1;
        self.flows.insert(
            key,
            Flow::Pending {
                syn: syn.into(),
                buffer,
            },
        );
        Ingress::NewTcp(key)
    }

    /// Answers a connection request with a reset at once.
    fn refuse_now(&mut self, key: FlowKey, syn: &[u8]) {
        self.half_open += 1;
        self.flows.insert(
            key,
            Flow::Pending {
                syn: syn.into(),
                buffer: 0,
            },
        );
        self.refuse(key);
    }

    fn withdraw(&mut self, key: &FlowKey) {
        if let Some(Flow::Pending { buffer, .. }) = self.flows.remove(key) {
            self.half_open -= 1;
            self.budget.release(2 * buffer);
        }
    }

    /// The upstream for `key` is connected: replay the SYN into a fresh
    /// socket, which answers SYN-ACK on the next egress. `None` when the
    /// application withdrew its request meanwhile.
    pub fn accept(&mut self, key: FlowKey) -> Option<SocketHandle> {
        let (mut syn, buffer) = self.take_pending(key)?;
        // The reservation moves to the socket (released when it goes).
        self.budget.release(2 * buffer);
        if let Some(offload) = &mut self.offload {
            // smoltcp will send segments past this MSS; the kernel cuts
            // them back to it.
            let mss = tcp_mss_option(&syn).unwrap_or(536);
            offload.peer_mss.insert(key, mss);
        }
        let Some(handle) = self.replay_syn(key, &mut syn, buffer, buffer) else {
            if let Some(offload) = &mut self.offload {
                offload.peer_mss.remove(&key);
            }
            return None;
        };
        let offload = self.offload.is_some();
        let socket = self.tcp(handle);
        socket.set_nagle_enabled(false);
        if offload {
            // smoltcp delays the ACK of a lone segment (10 ms) and only
            // acknowledges at once when a second one arrives. With TSO a
            // segment is up to 64 KB, often all the window lets the
            // application send: every such ACK would stall the upload for
            // the full delay. One ACK per TSO packet is about what a Linux
            // receiver sends for GRO packets anyway.
            socket.set_ack_delay(None);
        }
        self.flows.insert(key, Flow::Open(handle));
        self.stats.flows_accepted += 1;
        Some(handle)
    }

    /// The upstream for `key` failed: answer the held SYN with a reset.
    pub fn refuse(&mut self, key: FlowKey) {
        let Some((mut syn, buffer)) = self.take_pending(key) else {
            return;
        };
        self.budget.release(2 * buffer);
        self.stats.flows_refused += 1;
        // A socket that accepts the SYN and is aborted before it ever
        // answers sends exactly one RST|ACK, acknowledging the SYN.
        if let Some(handle) = self.replay_syn(key, &mut syn, 1, 1) {
            self.tcp(handle).abort();
            self.flows.insert(key, Flow::Open(handle));
            self.closing.push((key, handle));
        }
    }

    fn take_pending(&mut self, key: FlowKey) -> Option<(Box<[u8]>, usize)> {
        match self.flows.remove(&key) {
            Some(Flow::Pending { syn, buffer }) => {
                self.half_open -= 1;
                Some((syn, buffer))
            }
            Some(open) => {
                self.flows.insert(key, open);
                None
            }
            None => None,
        }
    }

    /// Makes a socket listening on the flow's destination and feeds it the
    /// SYN. Listening and feeding happen back to back, so no other SYN can
    /// reach the listener.
    fn replay_syn(&mut self, key: FlowKey, syn: &mut [u8], rx: usize, tx: usize) -> Option<SocketHandle> {
        let endpoint = IpListenEndpoint {
            addr: Some(key.dest.ip().into()),
            port: key.dest.port(),
        };
        // Pages of a buffer cost memory only once data passes through them.
        let (rx, tx) = (self.pool.take(rx), self.pool.take(tx));
        let mut socket = tcp::Socket::new(rx.storage, tx.storage);
        if socket.listen(endpoint).is_err() {
            // Port 0. The socket goes before its buffers.
            drop(socket);
            for region in [rx.region, tx.region].into_iter().flatten() {
                self.pool.give(region);
            }
            return None;
        }
        self.budget.charge(socket.recv_capacity() + socket.send_capacity());
        let handle = self.sockets.add(socket);
        if rx.region.is_some() || tx.region.is_some() {
            self.regions.insert(handle, [rx.region, tx.region]);
        }
        self.feed(syn);
        if self.tcp(handle).state() != tcp::State::SynReceived {
            // smoltcp rejected the SYN (bad checksum, bad options).
            self.remove_socket(handle);
            self.stats.dropped_malformed += 1;
            return None;
        }
        Some(handle)
    }

    /// Frees a socket and returns its buffers to the budget and the pool.
    fn remove_socket(&mut self, handle: SocketHandle) {
        remove_socket(
            &mut self.sockets,
            &mut self.regions,
            &mut self.pool,
            &mut self.budget,
            handle,
        );
    }

    /// Bytes of TCP buffer capacity the sockets hold (and held requests
    /// have reserved).
    pub fn buffer_bytes(&self) -> usize {
        self.budget.reserved()
    }

    /// Marks a session's socket for removal once its last packet is out.
    pub fn finish(&mut self, key: FlowKey, handle: SocketHandle) {
        // A peer that never acknowledges our FIN must not pin the socket
        // forever: smoltcp aborts it after this long without an answer.
        self.tcp(handle).set_timeout(Some(LINGER_TIMEOUT));
        self.closing.push((key, handle));
    }

    fn feed(&mut self, packet: &mut [u8]) {
        let now = self.now();
        let mut device = OnePacket {
            packet: Some(packet),
            tx: TxPath {
                port: &self.port,
                buf: &mut self.tx_buf,
                stats: &mut self.stats,
                offload: self.offload.as_ref(),
            },
            // What one packet provokes (an ACK, a reset) is small.
            tx_budget: usize::MAX,
        };
        self.iface.poll_ingress_single(now, &mut device, &mut self.sockets);
    }

    /// Sends what the sockets have to send, at most `budget` packets, then
    /// flushes the port (which also sends what ingress and the worker's
    /// other writers queued since the last pass) and frees finished sockets.
    /// Returns whether the budget ran out (so more may be waiting): the
    /// worker then lets its other tasks run before the next call, which
    /// keeps a UDP reply or a DNS answer from waiting behind a whole window
    /// of bulk TCP.
    pub fn egress(&mut self, budget: usize) -> Egress {
        let now = self.now();
        let mut device = OnePacket {
            packet: None,
            tx: TxPath {
                port: &self.port,
                buf: &mut self.tx_buf,
                stats: &mut self.stats,
                offload: self.offload.as_ref(),
            },
            tx_budget: budget,
        };
        let mut outcome = Egress::Done;
        for _ in 0..MAX_EGRESS_ROUNDS {
            let result = self.iface.poll_egress(now, &mut device, &mut self.sockets);
            if device.tx_budget == 0 {
                outcome = Egress::BudgetSpent;
                break;
            }
            if let PollResult::None = result {
                break;
            }
        }
        self.flush_port();
        self.reap();
        outcome
    }

    /// Flushes the port; a failed flush counts as a write error (what it
    /// held is lost, and TCP retransmits).
    pub fn flush_port(&mut self) {
        if self.port.flush().is_err() {
            self.stats.tun_write_errors += 1;
        }
    }

    fn reap(&mut self) {
        let now = self.now();
        let sockets = &mut self.sockets;
        let flows = &mut self.flows;
        let budget = &mut self.budget;
        let recently_closed = &mut self.recently_closed;
        let regions = &mut self.regions;
        let pool = &mut self.pool;
        let mut offload = self.offload.as_mut();
        self.closing.retain(|&(key, handle)| {
            if !matches!(flows.get(&key), Some(Flow::Open(h)) if *h == handle) {
                return false; // already reaped through another entry
            }
            let socket = sockets.get::<tcp::Socket>(handle);
            let done = match socket.state() {
                tcp::State::TimeWait => true,
                // Aborted sockets keep their endpoints until the RST is out.
                tcp::State::Closed | tcp::State::Listen => socket.remote_endpoint().is_none(),
                _ => false,
            };
            if done {
                remove_socket(sockets, regions, pool, budget, handle);
                flows.remove(&key);
                if let Some(offload) = offload.as_deref_mut() {
                    offload.peer_mss.remove(&key);
                }
                recently_closed.insert(key, now);
            }
            !done
        });
    }

    /// How long the worker may sleep before smoltcp's next timer.
    pub fn poll_delay(&mut self) -> Option<Duration> {
        let now = self.now();
        self.iface
            .poll_delay(now, &self.sockets)
            .map(|d| Duration::from_micros(d.total_micros()))
    }

    pub fn start_draining(&mut self) {
        self.draining = true;
    }

    pub fn is_draining(&self) -> bool {
        self.draining
    }

    pub fn live_sessions(&self) -> usize {
        self.flows.len()
    }

    /// Ends every session at once (shutdown): resets to the applications.
    pub fn abort_all(&mut self) {
        let open: Vec<_> = self
            .flows
            .iter()
            .filter_map(|(key, flow)| match flow {
                Flow::Open(handle) => Some((*key, *handle)),
                Flow::Pending { .. } => None,
            })
            .collect();
        let pending: Vec<_> = self
            .flows
            .iter()
            .filter(|(_, f)| matches!(f, Flow::Pending { .. }))
            .map(|(k, _)| *k)
            .collect();
        for key in pending {
            self.refuse(key);
        }
        for (key, handle) in open {
            self.tcp(handle).abort();
            self.closing.push((key, handle));
        }
        self.egress(usize::MAX);
    }
}

/// Drops a socket, then hands its mapped buffers back to the pool (never
/// before: the socket borrows them) and its capacity back to the budget.
fn remove_socket(
    sockets: &mut SocketSet<'static>,
    regions: &mut HashMap<SocketHandle, [Option<Region>; 2]>,
    pool: &mut BufferPool,
    budget: &mut BufferBudget,
    handle: SocketHandle,
) {
    if let smoltcp::socket::Socket::Tcp(tcp) = sockets.remove(handle) {
        budget.release(tcp.recv_capacity() + tcp.send_capacity());
    }
    for region in regions.remove(&handle).into_iter().flatten().flatten() {
        pool.give(region);
    }
}
