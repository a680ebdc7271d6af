//! The tc egress queue choice for host mode: which tx queue of the app-side
//! veth end an Ethernet frame is sent on, so that it reaches the AF_XDP
//! socket (and worker) that owns its flow.
//!
//! An AF_XDP socket only receives from the rx queue it is bound to, and the
//! rx queue a frame meets on the far end of a veth is the tx queue the
//! kernel chose on the sending end. For a kernel socket that choice follows
//! the socket's tx hash, which TCP re-rolls on every retransmission timeout
//! (`sk_rethink_txhash`): a flow would move between workers. The
//! `queue_steer` program (main.rs, `#[classifier]` at tc egress) therefore
//! sets `skb->queue_mapping` from *our* flow hash, the very one that
//! `tun2socks::steering::queue_for_packet` computes on the IP packet: the
//! same [`flow_key`], [`flow_hash`] and [`queue_of`].
//!
//! Frames that are not IPv4/IPv6 (ARP, ...), or whose IP header is cut
//! short, are left alone: the program never drops anything.

use crate::xdp::{ETH_P_IP, ETH_P_IPV6, network_header};
use crate::{PacketBytes, flow_hash, flow_key, queue_of};

/// `skb->queue_mapping`'s "no queue" value; the kernel ignores a BPF write
/// of it or anything above (`bpf_convert_ctx_access`).
pub const NO_QUEUE_MAPPING: u32 = 0xffff;

/// The most queues the program can steer over: queue `q` is written as
/// `q + 1` (see [`queue_mapping_for`]), which must stay below
/// [`NO_QUEUE_MAPPING`].
pub const MAX_STEERED_QUEUES: u32 = NO_QUEUE_MAPPING - 1;

/// The name of the program's global holding the queue count, set by the
/// loader (`EbpfLoader::set_global`) before the program is loaded.
pub const QUEUE_COUNT_GLOBAL: &str = "QUEUE_STEER_QUEUES";

/// The bytes of a packet from `offset` on: the IP packet inside a frame.
pub struct Inner<'a, P: ?Sized> {
    pub packet: &'a P,
    pub offset: usize,
}

impl<P: PacketBytes + ?Sized> PacketBytes for Inner<'_, P> {
    #[inline(always)]
    fn read<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        self.packet.read::<N>(self.offset.checked_add(offset)?)
    }
}

/// The flow hash of an Ethernet frame (at most one VLAN tag): the hash of
/// the IP packet it carries, as [`crate::flow_hash`] of [`crate::flow_key`]
/// computes it. `None` when the frame carries no IPv4/IPv6 packet or its
/// fixed IP header is cut short.
#[inline(always)]
pub fn frame_flow_hash<P: PacketBytes + ?Sized>(frame: &P) -> Option<u32> {
    let (ethertype, offset) = network_header(frame)?;
    if ethertype != ETH_P_IP && ethertype != ETH_P_IPV6 {
        return None;
    }
    let key = flow_key(&Inner { packet: frame, offset })?;
    Some(flow_hash(&key))
}

/// The queue (out of `queues`) the flow of an Ethernet frame belongs to:
/// `tun2socks::steering::queue_for_packet` of the IP packet inside it.
#[inline(always)]
pub fn queue_for_frame<P: PacketBytes + ?Sized>(frame: &P, queues: u32) -> Option<u32> {
    frame_flow_hash(frame).map(|hash| queue_of(hash, queues))
}

/// The `skb->queue_mapping` value a tc egress program writes so that the
/// frame leaves on tx queue `queue` (and, on a veth, arrives on the peer's
/// rx queue `queue`): `queue + 1`.
///
/// Why the off-by-one: tc egress runs in `__dev_queue_xmit` *before* the tx
/// queue is picked. The kernel then picks it in `netdev_pick_tx` (veth has
/// no `ndo_select_queue`): the socket's cached queue if it has one and the
/// packet is not `ooo_okay`, else XPS, else `skb_tx_hash`. And
/// `skb_tx_hash` (`__skb_tx_hash`) honours `queue_mapping` only as a
/// *recorded rx queue* (the forwarding path's "keep the queue"): non-zero
/// means "recorded", and the queue is `queue_mapping - 1`
/// (`skb_rx_queue_recorded` / `skb_get_rx_queue`). So writing `q + 1`
/// yields tx queue `q`, which becomes the skb's `queue_mapping`; veth's
/// `veth_xmit` delivers into the peer's rx queue of that same index.
/// Writing `q` would land on `q - 1`, and `0` means "not recorded": the
/// socket's own (re-rolled) tx hash picks, as if there were no program.
/// (A socket's cached tx queue comes from the same computation, so it
/// agrees; XPS, if someone configures it on the device, wins over all of
/// this: host-mode setup must leave it off.)
#[inline(always)]
pub const fn queue_mapping_for(queue: u32) -> u32 {
    queue + 1
}

/// What the `queue_steer` program counts, per CPU: the index of each class
/// in its `QUEUE_STEER_COUNTERS` map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum QueueSteerCounter {
    /// An IP frame whose `queue_mapping` was set from its flow hash.
    Steered = 0,
    /// Not IPv4/IPv6, or an IP header cut short: left alone.
    NotIp = 1,
    /// No queue count was set at load time (zero): left alone.
    Unconfigured = 2,
}

impl QueueSteerCounter {
    pub const COUNT: u32 = 3;
    pub const ALL: [QueueSteerCounter; 3] = [
        QueueSteerCounter::Steered,
        QueueSteerCounter::NotIp,
        QueueSteerCounter::Unconfigured,
    ];

    pub fn name(self) -> &'static str {
        match self {
            QueueSteerCounter::Steered => "steered",
            QueueSteerCounter::NotIp => "not_ip",
            QueueSteerCounter::Unconfigured => "unconfigured",
        }
    }
}

/// The program's whole decision for one frame among `queues` queues: the
/// `queue_mapping` to write (`None`: leave the frame alone) and the counter
/// it counts as. The verdict is always "pass".
#[inline(always)]
pub fn steer_frame<P: PacketBytes + ?Sized>(frame: &P, queues: u32) -> (Option<u32>, QueueSteerCounter) {
    if queues == 0 || queues > MAX_STEERED_QUEUES {
        return (None, QueueSteerCounter::Unconfigured);
    }
    match queue_for_frame(frame, queues) {
        Some(queue) => (Some(queue_mapping_for(queue)), QueueSteerCounter::Steered),
        None => (None, QueueSteerCounter::NotIp),
    }
}

#[cfg(test)]
mod tests;
