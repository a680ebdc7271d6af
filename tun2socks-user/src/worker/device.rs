//! smoltcp devices over one TUN queue.
//!
//! Ingress is fed one packet at a time (the worker classifies each packet
//! before smoltcp sees it), egress writes each packet smoltcp builds straight
//! from a reusable buffer into the queue: no intermediate queue, no copy
//! besides the kernel's.

use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

use super::stats::WorkerStats;
use crate::device::tun::TunQueue;

/// What both devices need to transmit.
pub struct TxPath<'a> {
    pub tun: &'a TunQueue,
    pub buf: &'a mut [u8],
    pub stats: &'a mut WorkerStats,
}

impl TxPath<'_> {
    fn reborrow(&mut self) -> TxPath<'_> {
        TxPath {
            tun: self.tun,
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
        let TxPath { tun, buf, stats } = self.0;
        let packet = &mut buf[..len];
        let result = f(packet);
        match tun.send(packet) {
            Ok(_) => {
                stats.packets_out += 1;
                stats.bytes_out += len as u64;
            }
            // The kernel dropped it (e.g. the device is going down); TCP
            // retransmits, so counting is all there is to do.
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
