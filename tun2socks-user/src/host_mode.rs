//! Host mode (`--device veth://NAME`): the host's traffic is routed into
//! one end of a veth pair and the workers serve the other end over AF_XDP.
//!
//! [`HostDevice::open`] creates the pair (journaled, see
//! [`crate::setup::veth`]) with one queue per worker, attaches the XDP
//! classifier to the far end (the peer) and binds one AF_XDP socket per
//! queue, registered with the classifier, each wrapped in an
//! [`XskPort`] for its worker. A tc egress program on the device end
//! ([`QueueSteer`]) puts every packet on the queue of its flow's worker, so
//! a flow keeps its worker when the kernel re-rolls a socket's transmit
//! hash (after a retransmission timeout). Routes, rules and addresses are
//! then set up on the device end exactly as for a TUN device.

use std::net::IpAddr;

use anyhow::Context;
use ipnet::IpNet;

use crate::device::port::XskPort;
use crate::device::xsk::{XskConfig, XskSocket};
use crate::journal::Journal;
use crate::setup::{self, CreatedVeth, SetupPlan, VethSpec};
use crate::tc_steer::QueueSteer;
use crate::xdp::{AddressPlan, XdpClassifier, XdpCounterReader};

/// The device end's MAC address (locally administered, fixed: nothing else
/// is on this link).
pub const DEVICE_MAC: [u8; 6] = [0x02, 0x74, 0x32, 0x73, 0x00, 0x01];
/// The peer's MAC address, the source of every frame the workers send.
pub const PEER_MAC: [u8; 6] = [0x02, 0x74, 0x32, 0x73, 0x00, 0x02];

/// The largest MTU of a veth whose peer runs an XDP program that takes
/// single-buffer frames: the kernel refuses to attach one otherwise.
/// A page, less XDP's 256-byte headroom, less `struct skb_shared_info`
/// (320 bytes), less the 14-byte Ethernet header (`veth_xdp_set`).
pub const MAX_MTU: u32 = 4096 - 256 - 320 - 14;

/// The veth pair, its classifier and one port per worker.
pub struct HostDevice {
    pub ports: Vec<XskPort>,
    /// The MTU the device was created with (at most [`MAX_MTU`]).
    pub mtu: u32,
    classifier: XdpClassifier,
    /// `None` when tc programs cannot be attached: flows then stay on the
    /// queue the kernel picks, which may change on a retransmission timeout.
    steer: Option<QueueSteer>,
    veth: CreatedVeth,
}

impl HostDevice {
    /// Creates the pair `name` / `peer` with `workers` queues, attaches the
    /// classifier for `plan`'s routes and binds the sockets. On an error,
    /// what was made is taken down again.
    pub async fn open(
        name: &str,
        peer: &str,
        workers: usize,
        plan: &SetupPlan,
        journal: &mut Journal,
    ) -> anyhow::Result<Self> {
        let mtu = plan.mtu.min(MAX_MTU);
        let queues = u32::try_from(workers).context("too many workers")?;
        let spec = VethSpec {
            name: name.to_string(),
            peer: peer.to_string(),
            queues,
            mtu,
            mac: DEVICE_MAC,
            peer_mac: PEER_MAC,
        };
        let veth = setup::veth::create(&spec, journal)
            .await
            .context("creating the veth pair")?;
        match Self::serve(peer, queues, plan) {
            Ok((classifier, ports)) => Ok(HostDevice {
                ports,
                mtu,
                classifier,
                steer: Self::steer(name, queues),
                veth,
            }),
            Err(e) => {
                if let Err(del) = veth.remove().await {
                    tracing::warn!(error = %del, "could not delete the veth pair again");
                }
                Err(e)
            }
        }
    }

    fn serve(peer: &str, queues: u32, plan: &SetupPlan) -> anyhow::Result<(XdpClassifier, Vec<XskPort>)> {
        let addresses = AddressPlan {
            routed: plan.routes.clone(),
            bypass: plan.bypass.clone(),
            // The device's own addresses: traffic to them never crosses
            // the veth, but say so anyway.
            local: plan.addresses.iter().map(IpNet::addr).collect::<Vec<IpAddr>>(),
        };
        let mut classifier = XdpClassifier::attach(peer, &addresses)
            .with_context(|| format!("attaching the XDP classifier to {peer}"))?;
        let ports = bind_sockets(peer, queues, &mut classifier)?
            .into_iter()
            .map(|socket| XskPort::new(socket, PEER_MAC, DEVICE_MAC))
            .collect();
        Ok((classifier, ports))
    }

    /// Attaches the queue steering program to the device end's egress:
    /// before any route points into the device, so no socket has cached a
    /// queue of its own choosing yet.
    fn steer(name: &str, queues: u32) -> Option<QueueSteer> {
        match QueueSteer::attach(name, queues) {
            Ok(steer) => {
                tracing::info!(device = name, hook = steer.hook().name(), "queue steering attached");
                Some(steer)
            }
            Err(e) => {
                tracing::warn!(error = %e, "queue steering unavailable: a flow may change workers \
                               when the kernel re-rolls its transmit queue (after a retransmission timeout)");
                None
            }
        }
    }

    /// Takes the ports for the workers; the rest stays to be closed.
    pub fn take_ports(&mut self) -> Vec<XskPort> {
        std::mem::take(&mut self.ports)
    }

    /// The classifier's counters, for metrics; `None` after the first call
    /// (or if they cannot be read).
    pub fn take_counters(&mut self) -> Option<XdpCounterReader> {
        self.classifier.counter_reader()
    }

    /// Detaches the classifier and deletes the pair.
    pub async fn close(self) -> anyhow::Result<()> {
        let HostDevice {
            ports,
            classifier,
            steer,
            veth,
            ..
        } = self;
        drop(ports);
        if let Some(steer) = steer
            && let Err(e) = steer.detach()
        {
            tracing::warn!(error = %e, "detaching queue steering failed (deleting the veth takes it along)");
        }
        if let Err(e) = classifier.detach() {
            tracing::warn!(error = %e, "detaching the XDP classifier failed (deleting the veth takes it along)");
        }
        veth.remove().await.context("deleting the veth pair")
    }
}

/// Binds one AF_XDP socket to each of the first `queues` RX queues of
/// `ifname` and registers it with the classifier attached there.
pub(crate) fn bind_sockets(
    ifname: &str,
    queues: u32,
    classifier: &mut XdpClassifier,
) -> anyhow::Result<Vec<XskSocket>> {
    let config = XskConfig::default();
    let mut sockets = Vec::with_capacity(queues as usize);
    for queue in 0..queues {
        let socket = XskSocket::bind(ifname, queue, &config)
            .with_context(|| format!("binding an AF_XDP socket to {ifname} queue {queue}"))?;
        classifier
            .register(queue, &socket)
            .with_context(|| format!("registering the AF_XDP socket of queue {queue}"))?;
        tracing::info!(ifname, queue, mode = socket.mode().name(), "AF_XDP socket bound");
        sockets.push(socket);
    }
    Ok(sockets)
}
