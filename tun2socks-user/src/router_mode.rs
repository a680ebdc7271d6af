//! Router mode (`--device xdp://IFACE`): the workers serve the proxied
//! flows of the clients on a router's LAN interface, over AF_XDP.
//!
//! [`RouterDevice::open`] attaches the XDP classifier to IFACE and binds
//! one AF_XDP socket per worker, one per RX queue: the NIC's RSS spreads
//! flows over the queues (on a veth, the sending side's queue choice), and
//! every frame of a flow arrives on the same queue, so at the same worker.
//! The classifier redirects TCP and UDP to the `--route` prefixes (not
//! bypassed, not to any of the router's own addresses) and passes the rest
//! to the kernel untouched: ARP, NDP, ICMP, DHCP, SSH to the router, and
//! the traffic it routes itself. Nothing in the routing tables changes, so
//! there is nothing to undo: the XDP program goes with the daemon.
//!
//! Replies leave with the interface's MAC address as the source and, as
//! the destination, the MAC address the client's own frames came from
//! ([`XskPort::router`]).

use anyhow::Context;

use crate::device::port::XskPort;
use crate::host_mode::bind_sockets;
use crate::setup::{self, SetupPlan};
use crate::xdp::{AddressPlan, XdpClassifier, XdpCounterReader};

/// The classifier on the LAN interface and one port per worker.
pub struct RouterDevice {
    pub ports: Vec<XskPort>,
    /// The stack's MTU: the interface's, at most what a UMEM frame holds.
    pub mtu: u32,
    classifier: XdpClassifier,
}

impl RouterDevice {
    /// Attaches to `iface` with up to `workers` queues (never more than the
    /// interface has RX queues) for `plan`'s routed and bypassed prefixes.
    pub async fn open(iface: &str, workers: usize, plan: &SetupPlan) -> anyhow::Result<Self> {
        let facts = setup::interface_facts(iface)
            .await
            .with_context(|| format!("looking up the LAN interface {iface}"))?;
        let wanted = u32::try_from(workers).context("too many workers")?;
        let queues = wanted.min(facts.rx_queues).max(1);
        if queues < wanted {
            tracing::warn!(
                iface,
                workers,
                rx_queues = facts.rx_queues,
                "the interface has fewer RX queues than workers: running one worker per queue"
            );
        }
        let local = setup::local_addresses()
            .await
            .context("listing the router's own addresses")?;
        let addresses = AddressPlan {
            routed: plan.routes.clone(),
            bypass: plan.bypass.clone(),
            local,
        };
        let mut classifier = XdpClassifier::attach(iface, &addresses)
            .with_context(|| format!("attaching the XDP classifier to {iface}"))?;
        let ports: Vec<XskPort> = bind_sockets(iface, queues, &mut classifier)?
            .into_iter()
            .map(|socket| XskPort::router(socket, facts.mac))
            .collect();
        let frame_limit = ports.first().map_or(usize::MAX, XskPort::max_packet);
        let mtu = facts.mtu.min(u32::try_from(frame_limit).unwrap_or(u32::MAX));
        tracing::info!(
            iface,
            queues,
            mtu,
            mode = classifier.mode().name(),
            "router mode: AF_XDP on the LAN interface"
        );
        Ok(RouterDevice { ports, mtu, classifier })
    }

    /// Takes the ports for the workers.
    pub fn take_ports(&mut self) -> Vec<XskPort> {
        std::mem::take(&mut self.ports)
    }

    /// The classifier's counters, for metrics.
    pub fn take_counters(&mut self) -> Option<XdpCounterReader> {
        self.classifier.counter_reader()
    }

    /// Takes the classifier off the interface.
    pub fn close(self) {
        let RouterDevice { ports, classifier, .. } = self;
        drop(ports);
        if let Err(e) = classifier.detach() {
            tracing::warn!(error = %e, "detaching the XDP classifier failed");
        }
    }
}
