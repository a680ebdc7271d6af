//! Host mode's device: a veth pair that the daemon creates, routes into
//! like a TUN device, and whose far end ("the peer") it serves with XDP and
//! one AF_XDP socket per worker.
//!
//! * Both ends get one RX and one TX queue per worker: the queue a frame
//!   crosses on is the AF_XDP socket (the worker) that receives it.
//! * The device end has ARP off (`IFF_NOARP`). The kernel then resolves
//!   every neighbour on it, IPv4 and IPv6, to the device's own MAC without
//!   asking anyone, so routes stay plain `dev NAME` routes, as for TUN, and
//!   no ARP or neighbour solicitation is ever waited for. Frames leave with
//!   `dst = src = the device's MAC`; the workers send theirs to that MAC.
//! * TX checksum offload is off on the device end (see
//!   [`crate::device::ethtool::disable_tx_checksum`]).
//! * The peer has IPv6 turned off and no addresses: what XDP passes to the
//!   kernel there (multicast listener reports, router solicitations, ICMP)
//!   is dropped, never answered nor forwarded back into the tunnel.
//!
//! Creation is recorded (as [`Change::Veth`]) before it is made, like every
//! other change, so a crashed instance's pair is deleted by recovery.

use netlink_packet_route::link::{InfoData, InfoVeth, LinkAttribute};
use rtnetlink::{LinkMessageBuilder, LinkUnspec, LinkVeth};

use super::apply::Recorder;
use super::change::Change;
use super::netlink::Netlink;
use super::{Device, SetupError, link};

/// The pair to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VethSpec {
    /// The end the host's traffic is routed into.
    pub name: String,
    /// The end XDP and the AF_XDP sockets serve.
    pub peer: String,
    /// RX and TX queues on each end: one per worker.
    pub queues: u32,
    pub mtu: u32,
    pub mac: [u8; 6],
    pub peer_mac: [u8; 6],
}

/// A pair [`create`] made; [`CreatedVeth::remove`] deletes it.
#[derive(Debug)]
#[must_use = "the veth pair stays until remove() is called"]
pub struct CreatedVeth {
    device: Device,
}

impl CreatedVeth {
    /// Deletes the pair, if the device is still the one we created.
    pub async fn remove(self) -> Result<(), SetupError> {
        let nl = Netlink::connect()?;
        match link::state(&nl, &self.device.name).await? {
            Some(state) if state.index == self.device.index => link::delete(&nl, &self.device).await,
            _ => Ok(()), // gone already
        }
    }
}

/// Creates the pair described by `spec`, telling `recorder` first (and the
/// device's index once it exists), and configures both ends (peer up,
/// offload and IPv6 settings). The device end stays down, without
/// addresses: [`apply_with`](super::apply_with) does that as for a TUN
/// device. On an error after creation the pair is deleted again.
#[tracing::instrument(skip_all, fields(device = %spec.name, peer = %spec.peer, queues = spec.queues))]
pub async fn create<R: Recorder>(spec: &VethSpec, recorder: &mut R) -> Result<CreatedVeth, SetupError> {
    let nl = Netlink::connect()?;
    let change = Change::Veth {
        peer: spec.peer.clone(),
    };
    record(recorder.before(&change), || format!("{change} before making it"))?;
    if let Err(err) = add_pair(&nl, spec).await {
        if let Err(record_err) = recorder.not_made(&change) {
            tracing::warn!(%record_err, "the record still names a veth pair that was not made");
        }
        return Err(err);
    }
    let index = link::state(&nl, &spec.name)
        .await?
        .ok_or_else(|| SetupError::NoDevice(spec.name.clone()))?
        .index;
    let created = CreatedVeth {
        device: Device {
            name: spec.name.clone(),
            index,
        },
    };
    // From here on a failure deletes the pair again.
    let configured = async {
        record(recorder.device(&spec.name, index), || {
            format!("device {} (index {index})", spec.name)
        })?;
        configure(&nl, spec).await
    };
    match configured.await {
        Ok(()) => {
            tracing::info!(index, "veth pair created");
            Ok(created)
        }
        Err(err) => {
            if let Err(del) = link::delete(&nl, &created.device).await {
                tracing::warn!(%del, "could not delete the veth pair again");
            }
            Err(err)
        }
    }
}

fn record<E: std::error::Error + Send + Sync + 'static>(
    result: Result<(), E>,
    what: impl FnOnce() -> String,
) -> Result<(), SetupError> {
    result.map_err(|err| SetupError::Record {
        what: what(),
        source: Box::new(err),
    })
}

async fn add_pair(nl: &Netlink, spec: &VethSpec) -> Result<(), SetupError> {
    let queues = |builder: LinkMessageBuilder<LinkUnspec>| {
        builder
            .append_extra_attribute(LinkAttribute::NumTxQueues(spec.queues))
            .append_extra_attribute(LinkAttribute::NumRxQueues(spec.queues))
    };
    let peer = queues(LinkMessageBuilder::<LinkUnspec>::new())
        .name(spec.peer.clone())
        .address(spec.peer_mac.to_vec())
        .mtu(spec.mtu)
        .build();
    let mut device = LinkVeth::new(&spec.name, &spec.peer)
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
        .address(spec.mac.to_vec())
        .mtu(spec.mtu)
        .arp(false)
        .build();
    device.attributes.push(LinkAttribute::NumTxQueues(spec.queues));
    device.attributes.push(LinkAttribute::NumRxQueues(spec.queues));
    nl.handle()
        .link()
        .add(device)
        .execute()
        .await
        .map_err(|err| SetupError::from_netlink(format!("create veth pair {} / {}", spec.name, spec.peer), err))
}

async fn configure(nl: &Netlink, spec: &VethSpec) -> Result<(), SetupError> {
    let local = |op: String| move |source| SetupError::Kernel { op, source };
    crate::device::ethtool::disable_tx_checksum(&spec.name)
        .map_err(local(format!("turn TX checksum offload off on {}", spec.name)))?;
    // Without IPv6 the peer drops what XDP passes up instead of answering
    // it or routing it back into the device. (No file: IPv6 is off
    // altogether.)
    let path = format!("/proc/sys/net/ipv6/conf/{}/disable_ipv6", spec.peer);
    match std::fs::write(&path, "1") {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
            return Err(local(format!("write 1 to {path}"))(err));
        }
        _ => {}
    }
    let peer = link::state(nl, &spec.peer)
        .await?
        .ok_or_else(|| SetupError::NoDevice(spec.peer.clone()))?;
    let peer = Device {
        name: spec.peer.clone(),
        index: peer.index,
    };
    link::set_up(nl, &peer, true).await
}

/// Recovery's case of a crash between creating the pair and recording its
/// index: deletes the device `name` if it is a veth (we recorded that we
/// were about to create it, and it did not exist before).
pub(crate) async fn delete_unrecorded(name: &str) -> Result<(), SetupError> {
    let nl = Netlink::connect()?;
    let Some(msg) = link::find(&nl, name).await? else {
        return Ok(());
    };
    if link::kind_of(&msg).as_deref() != Some("veth") {
        tracing::warn!(device = name, "not a veth any more: left alone");
        return Ok(());
    }
    let device = Device {
        name: name.to_string(),
        index: msg.header.index,
    };
    link::delete(&nl, &device).await
}
