//! smoltcp devices over the worker's packet port.
//!
//! Ingress is fed one packet at a time (the worker classifies each packet
//! before smoltcp sees it), egress hands each packet smoltcp builds straight
//! from a reusable buffer to the port: no intermediate queue, no copy besides
//! the port's own. The port may hold packets until it is flushed, which the
//! stack does once per egress pass.
//!
//! With TUN offload on ([`Offload`]) smoltcp is told the device segments TCP
//! and computes TCP checksums: it builds segments of up to 64 KB without a
//! TCP checksum, and each one leaves as a single write with a
//! `virtio_net_hdr` saying how the kernel is to cut it (`gso_size`: the MSS
//! the application's side can take) and where the checksum goes.

use std::collections::HashMap;
use std::num::NonZeroUsize;

use smoltcp::phy::{self, Checksum, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

use super::stats::WorkerStats;
use crate::device::port::{PacketPort, Port};
use crate::device::vnet::{self, TcpLayout, VNET_HDR_LEN, VnetHdr};
use crate::packet::{Classified, FlowKey, classify};

/// The largest IP packet smoltcp builds with offload on: IPv4's total
/// length field is 16 bits (and the TUN device's GSO limit is 64 KB).
pub const OFFLOAD_MAX_PACKET: usize = 65_535;
/// With offload, each packet costs the transmit budget one unit more per
/// this many bytes: the budget (`EGRESS_BUDGET` packets per pass) was set
/// for 9000-byte packets, and a 64 KB GSO write keeps a UDP reply or a DNS
/// answer waiting about as long as the segments it stands for would.
const BUDGET_UNIT_BYTES: usize = 9000;
/// MSS a peer is assumed to take when its SYN named none (RFC 9293; what
/// smoltcp assumes too).
const DEFAULT_MSS: u16 = 536;

/// TUN offload state of one stack.
#[derive(Debug)]
pub struct Offload {
    /// The TUN device's MTU: what one segment may take on the way to the
    /// application.
    pub mtu: usize,
    /// The MSS each open flow's SYN announced (the MSS option as the
    /// application sent it, or [`DEFAULT_MSS`]).
    pub peer_mss: HashMap<FlowKey, u16>,
}

impl Offload {
    pub fn new(mtu: usize) -> Self {
        Self {
            mtu,
            peer_mss: HashMap::new(),
        }
    }

    /// Payload bytes per segment for an outgoing TCP packet: the smaller of
    /// what the TUN MTU allows and what the application announced, less the
    /// TCP options this packet carries (every segment repeats them).
    fn segment_payload(&self, packet: &[u8], layout: &TcpLayout) -> u16 {
        let by_mtu = self.mtu.saturating_sub(layout.ip_header + 20);
        let announced = if layout.payload == 0 {
            by_mtu // nothing to segment: spare the lookup
        } else {
            match classify(packet) {
                // The packet goes to the application: reverse its endpoints.
                Classified::Tcp { key, .. } => self
                    .peer_mss
                    .get(&FlowKey {
                        client: key.dest,
                        dest: key.client,
                    })
                    .map_or(usize::from(DEFAULT_MSS), |&mss| usize::from(mss)),
                _ => usize::from(DEFAULT_MSS),
            }
        };
        let options = layout.tcp_header - 20;
        let mss = by_mtu.min(announced).saturating_sub(options).max(1);
        u16::try_from(mss).unwrap_or(u16::MAX)
    }
}

/// What both devices need to transmit.
pub struct TxPath<'a> {
    pub port: &'a Port,
    pub buf: &'a mut [u8],
    pub stats: &'a mut WorkerStats,
    /// TUN offload on: `buf` starts with room for the `virtio_net_hdr`.
    pub offload: Option<&'a Offload>,
}

impl TxPath<'_> {
    fn reborrow(&mut self) -> TxPath<'_> {
        TxPath {
            port: self.port,
            buf: self.buf,
            stats: self.stats,
            offload: self.offload,
        }
    }
}

/// What smoltcp is told about the device. With offload, the MTU is the
/// largest packet it may build (its own MSS announcement grows with it,
/// which does no harm: each side's kernel still sends no segment bigger
/// than its own path MTU allows), TCP checksums are left to the kernel
/// and segments may grow past the peer's MSS up to that size (smoltcp's
/// `segmentation-offload`).
pub fn capabilities(mtu: usize, offload: bool) -> DeviceCapabilities {
    let mut caps = DeviceCapabilities::default();
    caps.medium = Medium::Ip;
    caps.max_transmission_unit = mtu;
    if offload {
        caps.max_transmission_unit = OFFLOAD_MAX_PACKET;
        // Neither computed on send (the kernel finishes the partial sum
        // when it has to) nor verified on receive: the port has verified
        // every TCP checksum that the kernel did not vouch for.
        caps.checksum.tcp = Checksum::None;
        caps.segmentation.tcpv4 = NonZeroUsize::new(OFFLOAD_MAX_PACKET);
        caps.segmentation.tcpv6 = NonZeroUsize::new(OFFLOAD_MAX_PACKET);
    }
    caps
}

/// A device that yields at most one received packet: the one the worker
/// has just classified (`None` for egress only), and transmits at most
/// `tx_budget` packets (with offload, a large packet counts as several).
pub struct OnePacket<'a> {
    pub packet: Option<&'a mut [u8]>,
    pub tx: TxPath<'a>,
    /// Packets this device may still transmit; at zero smoltcp is told the
    /// device is busy and leaves the rest for a later poll.
    pub tx_budget: usize,
}

pub struct RxToken<'a>(&'a mut [u8]);

pub struct TxToken<'a> {
    tx: TxPath<'a>,
    /// The device's transmit budget, charged for large packets.
    budget: &'a mut usize,
}

impl phy::RxToken for RxToken<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(self.0)
    }
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let TxToken {
            tx:
                TxPath {
                    port,
                    buf,
                    stats,
                    offload,
                },
            budget,
        } = self;
        let (result, sent) = match offload {
            None => {
                let packet = &mut buf[..len];
                let result = f(packet);
                (result, port.send(packet))
            }
            Some(offload) => {
                let frame = &mut buf[..VNET_HDR_LEN + len];
                let (head, packet) = frame.split_at_mut(VNET_HDR_LEN);
                let result = f(packet);
                // smoltcp only sends TCP here; anything else has its
                // checksums complete and needs no header.
                let hdr = match vnet::tcp_layout(packet) {
                    Some(layout) => {
                        let mss = offload.segment_payload(packet, &layout);
                        vnet::offload_tcp(packet, &layout, mss)
                    }
                    None => VnetHdr::PLAIN,
                };
                head.copy_from_slice(&hdr.encode());
                *budget = budget.saturating_sub(len / BUDGET_UNIT_BYTES);
                (result, port.send_offloaded(frame))
            }
        };
        match sent {
            Ok(()) => {
                stats.packets_out += 1;
                stats.bytes_out += len as u64;
            }
            // The port refused it (the device is going down, its TX ring is
            // full); TCP retransmits, so counting is all there is to do.
            Err(_) => stats.tun_write_errors += 1,
        }
        result
    }
}

impl phy::Device for OnePacket<'_> {
    type RxToken<'b>
        = RxToken<'b>
    where
        Self: 'b;
    type TxToken<'b>
        = TxToken<'b>
    where
        Self: 'b;

    fn receive(&mut self, _: Instant) -> Option<(RxToken<'_>, TxToken<'_>)> {
        let packet = self.packet.take()?;
        let tx = TxToken {
            tx: self.tx.reborrow(),
            budget: &mut self.tx_budget,
        };
        Some((RxToken(packet), tx))
    }

    fn transmit(&mut self, _: Instant) -> Option<TxToken<'_>> {
        self.tx_budget = self.tx_budget.checked_sub(1)?;
        Some(TxToken {
            tx: self.tx.reborrow(),
            budget: &mut self.tx_budget,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        capabilities(self.tx.buf.len(), self.tx.offload.is_some())
    }
}
