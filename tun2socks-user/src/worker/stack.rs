//! One worker's TCP/IP stack: a smoltcp `Interface` and `SocketSet` over one
//! TUN queue, plus the flow table that decides what smoltcp gets to see.
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

use super::device::{OnePacket, TxPath};
use super::stats::WorkerStats;
use crate::device::tun::TunQueue;
use crate::packet::{Classified, FlowKey, classify};

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
}

enum Flow {
    /// Upstream connect in progress; the application's SYN, kept for replay.
    Pending {
        syn: Box<[u8]>,
    },
    Open(SocketHandle),
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
    pub sockets: SocketSet<'static>,
    flows: HashMap<FlowKey, Flow>,
    /// Sessions that ended; their sockets go once smoltcp has nothing more
    /// to send for them (a final RST or ACK).
    closing: Vec<(FlowKey, SocketHandle)>,
    pub(super) tun: Rc<TunQueue>,
    tx_buf: Vec<u8>,
    pub stats: WorkerStats,
    config: StackConfig,
    half_open: usize,
    /// Shutting down: connection requests are refused at once.
    draining: bool,
    epoch: std::time::Instant,
}

impl Stack {
    pub fn new(tun: Rc<TunQueue>, config: StackConfig, seed: u64) -> Self {
        let mut tx_buf = vec![0u8; config.mtu];
        let mut stats = WorkerStats::default();
        let epoch = std::time::Instant::now();
        let mut iface_config = Config::new(HardwareAddress::Ip);
        iface_config.random_seed = seed;
        let mut device = OnePacket {
            packet: None,
            tx: TxPath {
                tun: &tun,
                buf: &mut tx_buf,
                stats: &mut stats,
            },
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
            flows: HashMap::new(),
            closing: Vec::new(),
            tun,
            tx_buf,
            stats,
            config,
            half_open: 0,
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
            None if flags.is_connection_request() => self.hold(key, packet),
            None => {
                if !flags.rst() {
                    self.stats.no_session_packets += 1;
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
        }
        if self.draining || over_limit {
            self.half_open += 1;
            self.flows.insert(key, Flow::Pending { syn: syn.into() });
            self.refuse(key);
            return Ingress::Done;
        }
        if self.half_open >= self.config.max_half_open {
            self.stats.syn_over_budget += 1;
            return Ingress::Done;
        }
        self.half_open += 1;
        self.flows.insert(key, Flow::Pending { syn: syn.into() });
        Ingress::NewTcp(key)
    }

    fn withdraw(&mut self, key: &FlowKey) {
        if let Some(Flow::Pending { .. }) = self.flows.remove(key) {
            self.half_open -= 1;
        }
    }

    /// The upstream for `key` is connected: replay the SYN into a fresh
    /// socket, which answers SYN-ACK on the next egress. `None` when the
    /// application withdrew its request meanwhile.
    pub fn accept(&mut self, key: FlowKey) -> Option<SocketHandle> {
        let mut syn = self.take_pending(key)?;
        let (rx, tx) = (self.config.tcp_rx_buffer, self.config.tcp_tx_buffer);
        let handle = self.replay_syn(key, &mut syn, rx, tx)?;
        let socket = self.tcp(handle);
        socket.set_nagle_enabled(false);
        self.flows.insert(key, Flow::Open(handle));
        self.stats.flows_accepted += 1;
        Some(handle)
    }

    /// The upstream for `key` failed: answer the held SYN with a reset.
    pub fn refuse(&mut self, key: FlowKey) {
        let Some(mut syn) = self.take_pending(key) else { return };
        self.stats.flows_refused += 1;
        // A socket that accepts the SYN and is aborted before it ever
        // answers sends exactly one RST|ACK, acknowledging the SYN.
        if let Some(handle) = self.replay_syn(key, &mut syn, 1, 1) {
            self.tcp(handle).abort();
            self.flows.insert(key, Flow::Open(handle));
            self.closing.push((key, handle));
        }
    }

    fn take_pending(&mut self, key: FlowKey) -> Option<Box<[u8]>> {
        match self.flows.remove(&key) {
            Some(Flow::Pending { syn }) => {
                self.half_open -= 1;
                Some(syn)
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
        // calloc'd: pages of a large buffer cost memory only once touched.
        let mut socket = tcp::Socket::new(tcp::SocketBuffer::new(vec![0; rx]), tcp::SocketBuffer::new(vec![0; tx]));
        let endpoint = IpListenEndpoint {
            addr: Some(key.dest.ip().into()),
            port: key.dest.port(),
        };
        socket.listen(endpoint).ok()?;
        let handle = self.sockets.add(socket);
        self.feed(syn);
        if self.tcp(handle).state() != tcp::State::SynReceived {
            // smoltcp rejected the SYN (bad checksum, bad options).
            self.sockets.remove(handle);
            self.stats.dropped_malformed += 1;
            return None;
        }
        Some(handle)
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
                tun: &self.tun,
                buf: &mut self.tx_buf,
                stats: &mut self.stats,
            },
        };
        self.iface.poll_ingress_single(now, &mut device, &mut self.sockets);
    }

    /// Sends what the sockets have to send, then frees finished sockets.
    pub fn egress(&mut self) {
        let now = self.now();
        let mut device = OnePacket {
            packet: None,
            tx: TxPath {
                tun: &self.tun,
                buf: &mut self.tx_buf,
                stats: &mut self.stats,
            },
        };
        for _ in 0..MAX_EGRESS_ROUNDS {
            if let PollResult::None = self.iface.poll_egress(now, &mut device, &mut self.sockets) {
                break;
            }
        }
        self.reap();
    }

    fn reap(&mut self) {
        let sockets = &mut self.sockets;
        let flows = &mut self.flows;
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
                sockets.remove(handle);
                flows.remove(&key);
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
        self.egress();
    }
}
