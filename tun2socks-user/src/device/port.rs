//! The seam between a worker and its packets: a *port* receives and
//! transmits whole IP packets (IPv4 or IPv6, no link-layer header), in
//! batches. A TUN queue is one implementation ([`TunPort`]); an AF_XDP
//! socket, which carries Ethernet frames, is another ([`XskPort`]): it
//! frames and unframes at the port, so a worker never sees a link-layer
//! header and never knows which one it runs on.
//!
//! The contract ([`PacketPort`]):
//!
//! * [`PacketPort::recv_batch`] takes up to `max` packets off the port and
//!   hands them, one at a time, to a callback; it returns how many it took
//!   (a port may drop some of them itself, e.g. non-IP frames, and counts
//!   those). Fewer than `max` (0 included) means the port had nothing more
//!   ready: the caller clears its readiness and waits for the fd
//!   ([`AsRawFd`]) to poll readable again. Exactly `max` means there may be
//!   more. An `Err` is a failure of the port itself, not an empty port.
//! * [`PacketPort::send`] queues one packet. It may go out at once (TUN) or
//!   only at the next [`PacketPort::flush`] (AF_XDP, which kicks its TX ring
//!   once per batch): callers flush at the end of each batch they write,
//!   never per packet. A refused packet is the caller's to count; nothing is
//!   retried (TCP retransmits, UDP is unreliable anyway).
//! * Every method takes `&self`: while `recv_batch` has a packet in the
//!   callback's hands, the worker's ingress may transmit through the same
//!   port (an ACK, a reset, a DNS answer). Each implementation keeps its
//!   receive side and its transmit side apart for that reason. Calling
//!   `recv_batch` from inside its own callback is a bug (it panics).
//!
//! Why an enum ([`Port`]) over a trait object or generics: the worker holds
//! a concrete [`Port`], so the per-packet path is a `match` on a two-way tag
//! that the branch predictor learns once (it never changes for a worker's
//! life) and that the compiler can inline through — no vtable call per
//! packet, as a `dyn` port would cost, and no type parameter threaded
//! through `Shared`, the stack, the smoltcp device, the sessions and the
//! UDP and DNS tasks, as a generic worker would need. The trait states the
//! contract both implementations keep (and lets tests drive either one);
//! `recv_batch` takes its callback as `impl FnMut`, so the trait is
//! deliberately not object-safe.

use std::cell::{Cell, RefCell};
use std::io;
use std::os::fd::{AsRawFd, RawFd};

use super::neighbours::Neighbours;
use super::tun::TunQueue;
use super::vnet::{self, VNET_HDR_LEN, VnetHdr};
use super::xsk::{XskError, XskRx, XskSocket, XskTx};

/// Batched packet I/O; see the module documentation for the contract.
pub trait PacketPort: AsRawFd {
    /// Takes up to `max` packets off the port and hands the IP packets
    /// among them to `f`, one call each; returns how many it took. Fewer
    /// than `max` means the port is drained for now.
    fn recv_batch(&self, max: usize, f: impl FnMut(&mut [u8])) -> io::Result<usize>;

    /// Queues one IP packet for transmission (sent at the latest by the
    /// next [`PacketPort::flush`]). `WouldBlock` when the port has no room
    /// right now.
    fn send(&self, packet: &[u8]) -> io::Result<()>;

    /// Makes the port transmit what [`PacketPort::send`] queued.
    fn flush(&self) -> io::Result<()>;
}

/// The port a worker runs on.
#[derive(Debug)]
#[expect(
    clippy::large_enum_variant,
    reason = "one per worker, behind an Rc: boxing would only add a pointer chase per packet"
)]
pub enum Port {
    Tun(TunPort),
    Xsk(XskPort),
}

impl Port {
    /// A port over one TUN queue.
    pub fn tun(queue: TunQueue) -> Self {
        Port::Tun(TunPort::new(queue))
    }

    /// What the port itself counted (drops below the worker), as
    /// `key=value` pairs for the log; empty for a TUN queue, whose drops
    /// the kernel counts on the device.
    pub fn counters(&self) -> String {
        match self {
            Port::Tun(_) => String::new(),
            Port::Xsk(port) => port.counters(),
        }
    }

    /// Whether the port takes TCP packets that carry only a pseudo-header
    /// checksum and may be bigger than the MTU ([`Port::send_offloaded`]):
    /// a TUN queue with offload on.
    pub fn offload(&self) -> bool {
        match self {
            Port::Tun(port) => port.queue.vnet(),
            Port::Xsk(_) => false,
        }
    }

    /// Sends a frame whose first [`VNET_HDR_LEN`] bytes are the packet's
    /// filled-in `virtio_net_hdr`; only for a port whose
    /// [`Port::offload`] is true.
    #[inline]
    pub fn send_offloaded(&self, frame: &[u8]) -> io::Result<()> {
        match self {
            Port::Tun(port) => port.send_offloaded(frame),
            Port::Xsk(_) => Err(io::ErrorKind::Unsupported.into()),
        }
    }

    /// The offload counters of a TUN queue with offload on.
    pub fn offload_stats(&self) -> OffloadStats {
        match self {
            Port::Tun(port) => port.offload.get(),
            Port::Xsk(_) => OffloadStats::default(),
        }
    }
}

/// What a TUN queue with offload on counts.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct OffloadStats {
    /// Packets read that the kernel left for us to take as one large TCP
    /// segment (TSO: gso_type TCPV4/TCPV6).
    pub tso_packets_in: u64,
    /// Packets read with a partial (NEEDS_CSUM) or kernel-verified
    /// (DATA_VALID) checksum, taken without verifying.
    pub csum_trusted_in: u64,
    /// TCP packets read whose header vouched for nothing, verified in
    /// software, and dropped for a bad checksum.
    pub bad_checksum_in: u64,
    /// GSO packets written: one write for several MSS-sized segments.
    pub gso_packets_out: u64,
    /// Segments those GSO packets stand for (what the kernel would have
    /// been handed one write each).
    pub gso_segments_out: u64,
}

impl PacketPort for Port {
    #[inline]
    fn recv_batch(&self, max: usize, f: impl FnMut(&mut [u8])) -> io::Result<usize> {
        match self {
            Port::Tun(port) => port.recv_batch(max, f),
            Port::Xsk(port) => port.recv_batch(max, f),
        }
    }

    #[inline]
    fn send(&self, packet: &[u8]) -> io::Result<()> {
        match self {
            Port::Tun(port) => port.send(packet),
            Port::Xsk(port) => port.send(packet),
        }
    }

    #[inline]
    fn flush(&self) -> io::Result<()> {
        match self {
            Port::Tun(port) => port.flush(),
            Port::Xsk(port) => port.flush(),
        }
    }
}

impl AsRawFd for Port {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            Port::Tun(port) => port.as_raw_fd(),
            Port::Xsk(port) => port.as_raw_fd(),
        }
    }
}

/// Large enough for any packet a TUN queue can deliver: an IPv6 packet
/// with a 65 535-byte payload (the most TSO hands out without BIG TCP,
/// which the device does not enable) behind its `virtio_net_hdr`.
const TUN_READ_BUFFER: usize = VNET_HDR_LEN + 40 + 65_535;

/// One TUN queue as a port: one `read` per received packet into a reusable
/// buffer, one `write` per sent packet (the kernel takes it at once, so
/// [`PacketPort::flush`] has nothing to do).
///
/// With offload on ([`TunQueue::vnet`]) every packet comes behind a
/// `virtio_net_hdr`, which this port strips. A TCP packet it hands on then
/// either carries a checksum the kernel vouches for (partial or verified:
/// the worker's smoltcp does not check TCP checksums in this mode) or has
/// had its checksum verified here; one that fails is dropped and counted.
/// Packets from [`PacketPort::send`] go out behind a plain header (their
/// checksums are complete); smoltcp's TCP packets go through
/// [`Port::send_offloaded`] with the header the worker made for them.
#[derive(Debug)]
pub struct TunPort {
    queue: TunQueue,
    /// The receive side: only `recv_batch` touches it.
    buf: RefCell<Box<[u8]>>,
    offload: Cell<OffloadStats>,
}

impl TunPort {
    pub fn new(queue: TunQueue) -> Self {
        Self {
            queue,
            buf: RefCell::new(vec![0u8; TUN_READ_BUFFER].into_boxed_slice()),
            offload: Cell::new(OffloadStats::default()),
        }
    }

    fn count(&self, f: impl FnOnce(&mut OffloadStats)) {
        let mut stats = self.offload.get();
        f(&mut stats);
        self.offload.set(stats);
    }

    /// Offload on: strips the header of a frame read from the queue and
    /// decides whether the worker may have the packet (`None`: dropped and
    /// counted).
    fn unframe<'a>(&self, frame: &'a mut [u8]) -> Option<&'a mut [u8]> {
        // The kernel always writes a whole header; a short read would be a
        // kernel bug, and an empty packet the worker counts as malformed.
        let hdr = VnetHdr::decode(frame).unwrap_or_default();
        let packet = frame.get_mut(VNET_HDR_LEN..).unwrap_or_default();
        if hdr.checksum_trusted() {
            self.count(|s| {
                s.csum_trusted_in += 1;
                s.tso_packets_in += u64::from(hdr.is_gso());
            });
            return Some(packet);
        }
        // Nothing vouches for a TCP checksum (a packet routed in from
        // elsewhere): check it here, since smoltcp will not. UDP goes no
        // further than the relay, which never looked at its checksum.
        if let Some(layout) = vnet::tcp_layout(packet)
            && !vnet::tcp_checksum_ok(packet, &layout)
        {
            self.count(|s| s.bad_checksum_in += 1);
            return None;
        }
        Some(packet)
    }

    fn send_offloaded(&self, frame: &[u8]) -> io::Result<()> {
        if let Some(hdr) = VnetHdr::decode(frame)
            && hdr.is_gso()
        {
            let payload = frame.len().saturating_sub(VNET_HDR_LEN + usize::from(hdr.hdr_len));
            self.count(|s| {
                s.gso_packets_out += 1;
                s.gso_segments_out += payload.div_ceil(usize::from(hdr.gso_size.max(1))) as u64;
            });
        }
        self.queue.send(frame).map(drop)
    }
}

impl PacketPort for TunPort {
    fn recv_batch(&self, max: usize, mut f: impl FnMut(&mut [u8])) -> io::Result<usize> {
        let mut buf = self.buf.borrow_mut();
        let vnet = self.queue.vnet();
        for n in 0..max {
            match self.queue.recv(&mut buf) {
                Ok(len) if vnet => {
                    if let Some(packet) = self.unframe(&mut buf[..len]) {
                        f(packet);
                    }
                }
                Ok(len) => f(&mut buf[..len]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(n),
                Err(e) => return Err(e),
            }
        }
        Ok(max)
    }

    #[inline]
    fn send(&self, packet: &[u8]) -> io::Result<()> {
        if self.queue.vnet() {
            self.queue.send_parts(&VnetHdr::PLAIN.encode(), packet).map(drop)
        } else {
            self.queue.send(packet).map(drop)
        }
    }

    #[inline]
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }
}

impl AsRawFd for TunPort {
    fn as_raw_fd(&self) -> RawFd {
        self.queue.as_raw_fd()
    }
}

/// Bytes of an Ethernet header (no VLAN tag).
pub const ETH_HEADER: usize = 14;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;

/// One AF_XDP socket as a port. In host mode the socket is bound to the
/// far end of a veth whose other end carries the host's traffic, and both
/// MAC addresses are fixed for the port's life ([`XskPort::new`]). In
/// router mode it is bound to a LAN interface, and each packet goes to the
/// MAC address its destination was last heard from ([`XskPort::router`],
/// see [`Neighbours`]).
///
/// * Receiving strips the 14-byte Ethernet header and hands on IPv4 and
///   IPv6 packets only; any other frame (ARP, a VLAN tag, a runt) is
///   dropped and counted ([`XskPort::dropped_non_ip`]). The XDP classifier
///   passes ARP and NDP to the kernel, so few should arrive.
/// * Sending prepends `dst = peer`, `src = ours` and the EtherType that the
///   packet's IP version calls for, copying header and packet once into a
///   TX frame; [`PacketPort::flush`] kicks the TX ring once per batch.
///
/// Checksums are passed through untouched. Frames that a local
/// application sends through a veth with TX checksum offload on (veth's
/// default) carry *partial* TCP/UDP checksums (the pseudo-header sum only),
/// which smoltcp would reject: host-mode setup turns offload off on the
/// sending end (`ethtool -K PEER tx off`), so this port need not fix them.
/// Packets sent here must carry complete checksums (smoltcp's and
/// `packet::write_udp`'s do).
///
/// The socket is split into its receive and transmit halves, each in its
/// own cell, so that sending while `recv_batch` holds a frame is fine.
pub struct XskPort {
    rx: RefCell<XskRx>,
    tx: RefCell<XskTx>,
    fd: RawFd,
    /// `dst` (the peer's MAC) then `src` (ours): the first 12 bytes of
    /// every frame sent; in router mode `dst` is filled in per packet.
    macs: Cell<[u8; 12]>,
    /// Router mode: where replies go.
    neighbours: Option<RefCell<Neighbours>>,
    dropped_non_ip: Cell<u64>,
    /// Router mode: packets to an address never heard from (dropped).
    unknown_neighbour: Cell<u64>,
}

impl std::fmt::Debug for XskPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XskPort")
            .field("fd", &self.fd)
            .field("ours", &mac_text(&self.macs.get()[6..]))
            .field("peer", &mac_text(&self.macs.get()[..6]))
            .field("learned", &self.neighbours.as_ref().map(|n| n.borrow().len()))
            .field("dropped_non_ip", &self.dropped_non_ip.get())
            .finish_non_exhaustive()
    }
}

fn mac_text(mac: &[u8]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

impl XskPort {
    /// A port over `socket`, sending frames from `ours` (the MAC of the
    /// interface the socket is bound to) to `peer` (the MAC of the other
    /// end: for host mode, the host-side veth).
    pub fn new(socket: XskSocket, ours: [u8; 6], peer: [u8; 6]) -> Self {
        Self::with(socket, ours, peer, None)
    }

    /// A port on a router's LAN interface whose MAC is `ours`: replies go
    /// to the MAC their destination's frames came from.
    pub fn router(socket: XskSocket, ours: [u8; 6]) -> Self {
        Self::with(socket, ours, [0; 6], Some(RefCell::new(Neighbours::default())))
    }

    fn with(socket: XskSocket, ours: [u8; 6], peer: [u8; 6], neighbours: Option<RefCell<Neighbours>>) -> Self {
        let fd = socket.as_raw_fd();
        let (rx, tx) = socket.split();
        let mut macs = [0u8; 12];
        macs[..6].copy_from_slice(&peer);
        macs[6..].copy_from_slice(&ours);
        Self {
            rx: RefCell::new(rx),
            tx: RefCell::new(tx),
            fd,
            macs: Cell::new(macs),
            neighbours,
            dropped_non_ip: Cell::new(0),
            unknown_neighbour: Cell::new(0),
        }
    }

    /// The largest IP packet the port carries (a UMEM frame less the
    /// Ethernet header): the stack's MTU must not exceed it.
    pub fn max_packet(&self) -> usize {
        self.tx.borrow().capacity() - ETH_HEADER
    }

    /// Frames received that were not IPv4 or IPv6 (dropped here).
    pub fn dropped_non_ip(&self) -> u64 {
        self.dropped_non_ip.get()
    }

    /// Router mode: packets not sent because their destination was never
    /// heard from.
    pub fn unknown_neighbour(&self) -> u64 {
        self.unknown_neighbour.get()
    }

    /// The socket's counters and the kernel's (`XDP_STATISTICS`: frames it
    /// dropped because the RX ring was full or the fill ring empty), as
    /// `key=value` pairs.
    pub fn counters(&self) -> String {
        let rx = self.rx.borrow();
        let tx = self.tx.borrow();
        let (rs, ts) = (rx.stats(), tx.stats());
        let mut out = format!(
            "rx_frames={} tx_frames={} tx_full={} tx_kicks={} rx_wakeups={} dropped_non_ip={} unknown_neighbour={}",
            rs.rx_frames,
            ts.tx_frames,
            ts.tx_full,
            ts.tx_kicks,
            rs.rx_wakeups,
            self.dropped_non_ip.get(),
            self.unknown_neighbour.get()
        );
        match rx.kernel_stats() {
            Ok(k) => out.push_str(&format!(
                " kernel_rx_dropped={} kernel_rx_ring_full={} kernel_fill_ring_empty={} kernel_rx_invalid={} kernel_tx_invalid={}",
                k.rx_dropped, k.rx_ring_full, k.rx_fill_ring_empty_descs, k.rx_invalid_descs, k.tx_invalid_descs
            )),
            Err(e) => out.push_str(&format!(" kernel_stats_error={e:?}")),
        }
        out
    }
}

impl PacketPort for XskPort {
    fn recv_batch(&self, max: usize, mut f: impl FnMut(&mut [u8])) -> io::Result<usize> {
        let mut rx = self.rx.borrow_mut();
        let mut dropped = 0;
        let mut taken = 0;
        // The socket hands over at most MAX_BATCH frames a call; keep going
        // so that "fewer than max" still means "drained".
        while taken < max {
            let want = (max - taken).min(XskRx::MAX_BATCH);
            let n = rx.recv_batch(want, |frame| {
                let source: [u8; 6] = frame.get(6..12).and_then(|m| m.try_into().ok()).unwrap_or_default();
                match ip_packet(frame) {
                    Some(packet) => {
                        if let Some(neighbours) = &self.neighbours {
                            neighbours.borrow_mut().learn(packet, source);
                        }
                        f(packet)
                    }
                    None => dropped += 1,
                }
            });
            taken += n;
            if n < want {
                break;
            }
        }
        if dropped > 0 {
            self.dropped_non_ip.set(self.dropped_non_ip.get() + dropped);
        }
        Ok(taken)
    }

    fn send(&self, packet: &[u8]) -> io::Result<()> {
        if let Some(neighbours) = &self.neighbours {
            let Some(peer) = neighbours.borrow_mut().lookup(packet) else {
                self.unknown_neighbour.set(self.unknown_neighbour.get() + 1);
                return Err(io::ErrorKind::HostUnreachable.into());
            };
            let mut macs = self.macs.get();
            macs[..6].copy_from_slice(&peer);
            self.macs.set(macs);
        }
        let header = ethernet_header(&self.macs.get(), packet).ok_or(io::ErrorKind::InvalidInput)?;
        self.tx.borrow_mut().send_parts(&header, packet).map_err(xsk_io_error)
    }

    fn flush(&self) -> io::Result<()> {
        self.tx.borrow_mut().flush().map_err(xsk_io_error)
    }
}

impl AsRawFd for XskPort {
    fn as_raw_fd(&self) -> RawFd {
        self.fd
    }
}

/// The port's view of a socket error: a full TX ring is `WouldBlock`
/// (cheap: no allocation on the hot path), an oversized packet
/// `InvalidInput`.
fn xsk_io_error(error: XskError) -> io::Error {
    match error {
        XskError::TxFull { .. } => io::ErrorKind::WouldBlock.into(),
        XskError::FrameTooLarge { .. } => io::ErrorKind::InvalidInput.into(),
        XskError::Kick { source, .. } => source,
        other => io::Error::other(other),
    }
}

/// The IP packet in an Ethernet frame: `None` for anything but an untagged
/// IPv4 or IPv6 frame.
fn ip_packet(frame: &mut [u8]) -> Option<&mut [u8]> {
    if frame.len() < ETH_HEADER {
        return None;
    }
    let ethertype = u16::from_be_bytes([frame[12], frame[13]]);
    match ethertype {
        ETHERTYPE_IPV4 | ETHERTYPE_IPV6 => Some(&mut frame[ETH_HEADER..]),
        _ => None,
    }
}

/// The Ethernet header for `packet`: `macs` (destination, then source) and
/// the EtherType of the packet's IP version; `None` when it is neither IPv4
/// nor IPv6.
fn ethernet_header(macs: &[u8; 12], packet: &[u8]) -> Option<[u8; ETH_HEADER]> {
    let ethertype = match packet.first()? >> 4 {
        4 => ETHERTYPE_IPV4,
        6 => ETHERTYPE_IPV6,
        _ => return None,
    };
    let mut header = [0u8; ETH_HEADER];
    header[..12].copy_from_slice(macs);
    header[12..].copy_from_slice(&ethertype.to_be_bytes());
    Some(header)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OURS: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
    const PEER: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

    fn macs() -> [u8; 12] {
        let mut macs = [0u8; 12];
        macs[..6].copy_from_slice(&PEER);
        macs[6..].copy_from_slice(&OURS);
        macs
    }

    #[test]
    fn ipv4_and_ipv6_get_their_ethertype_and_the_fixed_macs() {
        let v4 = [0x45, 0, 0, 20];
        assert_eq!(
            ethernet_header(&macs(), &v4).unwrap(),
            [2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00]
        );
        let v6 = [0x60, 0, 0, 0];
        assert_eq!(
            ethernet_header(&macs(), &v6).unwrap(),
            [2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x86, 0xdd]
        );
    }

    #[test]
    fn anything_but_ip_gets_no_header() {
        assert_eq!(ethernet_header(&macs(), &[]), None);
        assert_eq!(ethernet_header(&macs(), &[0x55, 0]), None);
        assert_eq!(ethernet_header(&macs(), &[0x00]), None);
    }

    #[test]
    fn receiving_strips_the_header_of_ip_frames_only() {
        let mut v4 = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x08, 0x00, 0x45, 0, 0, 20];
        assert_eq!(ip_packet(&mut v4).unwrap(), &[0x45, 0, 0, 20]);
        let mut v6 = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x86, 0xdd, 0x60, 0, 0, 0];
        assert_eq!(ip_packet(&mut v6).unwrap(), &[0x60, 0, 0, 0]);
        // Header only: an empty packet (the worker counts it malformed).
        let mut bare = vec![0u8; 12];
        bare.extend_from_slice(&[0x08, 0x00]);
        assert_eq!(ip_packet(&mut bare).unwrap(), &[] as &[u8]);

        let mut arp = vec![0xff; 12];
        arp.extend_from_slice(&[0x08, 0x06, 0, 1]);
        assert_eq!(ip_packet(&mut arp), None);
        let mut vlan = vec![0; 12];
        vlan.extend_from_slice(&[0x81, 0x00, 0, 5, 0x08, 0x00, 0x45]);
        assert_eq!(ip_packet(&mut vlan), None);
        assert_eq!(ip_packet(&mut [0x08, 0x00]), None);
    }

    #[test]
    fn a_full_ring_reads_as_would_block() {
        let error = xsk_io_error(XskError::TxFull { in_flight: 3 });
        assert_eq!(error.kind(), io::ErrorKind::WouldBlock);
        let error = xsk_io_error(XskError::FrameTooLarge {
            len: 5000,
            capacity: 3840,
        });
        assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
    }
}
