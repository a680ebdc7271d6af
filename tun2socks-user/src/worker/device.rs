//! smoltcp devices over the worker's packet port.
//!
//! Ingress is fed one packet at a time (the worker classifies each packet
//! before smoltcp sees it), egress hands each packet smoltcp builds straight
//! from a reusable buffer to the port: no intermediate queue, no copy besides
//! the port's own. The port may hold packets until it is flushed, which the
//! stack does once per egress pass.

use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

use super::stats::WorkerStats;
use crate::device::port::{PacketPort, Port};

/// What both devices need to transmit.
pub struct TxPath<'a> {
    pub port: &'a Port,
    pub buf: &'a mut [u8],
    pub stats: &'a mut WorkerStats,
}

impl TxPath<'_> {
    fn reborrow(&mut self) -> TxPath<'_> {
        TxPath {
            port: self.port,
            buf: self.buf,
            stats: self.stats,
        }
    }
}

pub fn capabilities(mtu: usize) -> DeviceCapabilities {
    let mut caps = DeviceCapabilities::default();
    caps.medium = Medium::Ip;
    caps.max_transmission_unit = mtu;
    caps
}

/// A device that yields at most one received packet: the one the worker
/// has just classified (`None` for egress only), and transmits at most
/// `tx_budget` packets.
pub struct OnePacket<'a> {
    pub packet: Option<&'a mut [u8]>,
    pub tx: TxPath<'a>,
    /// Packets this device may still transmit; at zero smoltcp is told the
    /// device is busy and leaves the rest for a later poll.
    pub tx_budget: usize,
}

pub struct RxToken<'a>(&'a mut [u8]);

pub struct TxToken<'a>(TxPath<'a>);

impl phy::RxToken for RxToken<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(self.0)
    }
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let TxPath { port, buf, stats } = self.0;
        let packet = &mut buf[..len];
        let result = f(packet);
        match port.send(packet) {
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
        Some((RxToken(packet), TxToken(self.tx.reborrow())))
    }

    fn transmit(&mut self, _: Instant) -> Option<TxToken<'_>> {
        self.tx_budget = self.tx_budget.checked_sub(1)?;
        Some(TxToken(self.tx.reborrow()))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        capabilities(self.tx.buf.len())
    }
}
