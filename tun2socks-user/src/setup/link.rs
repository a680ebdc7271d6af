//! The device itself: finding it, its MTU and up/down state, and telling
//! what kind of device an existing interface is before adopting it.

use futures::TryStreamExt;
use netlink_packet_route::link::{InfoData, InfoKind, InfoTun, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use rtnetlink::LinkUnspec;
use rtnetlink::packet_core::Nla;

use super::netlink::Netlink;
use super::{Device, SetupError};

/// What [`find`] learns about a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LinkState {
    pub index: u32,
    pub mtu: Option<u32>,
    pub up: bool,
}

impl LinkState {
    fn from_message(msg: &LinkMessage) -> Self {
        let mtu = msg.attributes.iter().find_map(|attr| match attr {
            LinkAttribute::Mtu(mtu) => Some(*mtu),
            _ => None,
        });
        LinkState {
            index: msg.header.index,
            mtu,
            up: msg.header.flags.contains(LinkFlags::Up),
        }
    }
}

/// Looks a device up by name; `None` when there is no such device.
pub(crate) async fn find(nl: &Netlink, name: &str) -> Result<Option<LinkMessage>, SetupError> {
    let request = nl.handle().link().get().match_name(name.to_string());
    match request.execute().try_next().await {
        Ok(msg) => Ok(msg),
        Err(err) => {
            let err = SetupError::from_netlink(format!("look up device {name}"), err);
            if err.errno() == Some(libc::ENODEV) {
                Ok(None)
            } else {
                Err(err)
            }
        }
    }
}

/// Like [`find`], reduced to what apply and undo need.
pub(crate) async fn state(nl: &Netlink, name: &str) -> Result<Option<LinkState>, SetupError> {
    Ok(find(nl, name).await?.as_ref().map(LinkState::from_message))
}

pub(crate) async fn set_mtu(nl: &Netlink, dev: &Device, mtu: u32) -> Result<(), SetupError> {
    let msg = LinkUnspec::new_with_index(dev.index).mtu(mtu).build();
    nl.handle()
        .link()
        .set(msg)
        .execute()
        .await
        .map_err(|err| SetupError::from_netlink(format!("set MTU {mtu} on {}", dev.name), err))
}

pub(crate) async fn set_up(nl: &Netlink, dev: &Device, up: bool) -> Result<(), SetupError> {
    let builder = LinkUnspec::new_with_index(dev.index);
    let msg = if up { builder.up() } else { builder.down() }.build();
    let what = if up { "up" } else { "down" };
    nl.handle()
        .link()
        .set(msg)
        .execute()
        .await
        .map_err(|err| SetupError::from_netlink(format!("set {} {what}", dev.name), err))
}

/// What an interface of a given name is, as far as adopting it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExistingDevice {
    /// No interface of that name in this network namespace.
    Absent,
    /// A TUN (layer 3) device.
    Tun {
        /// Created with `IFF_MULTI_QUEUE` (`ip tuntap add ... multi_queue`);
        /// only then can it be opened once per worker.
        multi_queue: bool,
        /// Outlives its file descriptors (`TUNSETPERSIST`, or made by
        /// `ip tuntap add`).
        persistent: bool,
        /// Queues currently attached (enabled or disabled) by any process;
        /// the kernel reports this for multi-queue devices only. Non-zero
        /// before we open ours means someone else is using the device.
        attached_queues: Option<u32>,
    },
    /// Anything else: `kind` is the rtnetlink kind (`"veth"`, `"bridge"`,
    /// `"tap"` for a TUN/TAP device in TAP mode, ...), `None` for devices
    /// without one (loopback, physical NICs).
    Other { kind: Option<String> },
}

/// Tells what the interface `name` is. Reads `IFLA_LINKINFO` over netlink
/// (not sysfs, which shows the namespace it was mounted in, not ours).
#[tracing::instrument(skip_all, fields(device = name))]
pub async fn inspect_device(name: &str) -> Result<ExistingDevice, SetupError> {
    let nl = Netlink::connect()?;
    let found = match find(&nl, name).await? {
        None => ExistingDevice::Absent,
        Some(msg) => classify(&msg),
    };
    tracing::debug!(?found, "inspected device");
    Ok(found)
}

// IFLA_TUN_* from <linux/if_link.h>; netlink-packet-route 0.34 leaves the
// TUN info data untyped (`InfoTun::Other`), so they are decoded here.
const IFLA_TUN_TYPE: u16 = 3;
const IFLA_TUN_PERSIST: u16 = 6;
const IFLA_TUN_MULTI_QUEUE: u16 = 7;
const IFLA_TUN_NUM_QUEUES: u16 = 8;
const IFLA_TUN_NUM_DISABLED_QUEUES: u16 = 9;
/// `IFF_TAP` as carried in `IFLA_TUN_TYPE`.
const TUN_TYPE_TAP: u8 = 2;

fn classify(msg: &LinkMessage) -> ExistingDevice {
    let infos: &[LinkInfo] = msg
        .attributes
        .iter()
        .find_map(|attr| match attr {
            LinkAttribute::LinkInfo(infos) => Some(infos.as_slice()),
            _ => None,
        })
        .unwrap_or_default();
    let kind = infos.iter().find_map(|info| match info {
        LinkInfo::Kind(kind) => Some(kind),
        _ => None,
    });
    match kind {
        None => ExistingDevice::Other { kind: None },
        Some(InfoKind::Tun) => classify_tun(infos),
        Some(other) => ExistingDevice::Other {
            kind: Some(other.to_string()),
        },
    }
}

fn classify_tun(infos: &[LinkInfo]) -> ExistingDevice {
    let data: &[InfoTun] = infos
        .iter()
        .find_map(|info| match info {
            LinkInfo::Data(InfoData::Tun(data)) => Some(data.as_slice()),
            _ => None,
        })
        .unwrap_or_default();
    let attr = |kind: u16| -> Option<Vec<u8>> {
        data.iter().find(|nla| nla.kind() == kind).map(|nla| {
            let mut value = vec![0; nla.value_len()];
            nla.emit_value(&mut value);
            value
        })
    };
    let flag = |kind| attr(kind).and_then(|v| v.first().copied()).unwrap_or(0) != 0;
    let count = |kind| attr(kind).and_then(|v| v.get(..4).map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]])));

    if attr(IFLA_TUN_TYPE).and_then(|v| v.first().copied()) == Some(TUN_TYPE_TAP) {
        return ExistingDevice::Other {
            kind: Some("tap".to_string()),
        };
    }
    let attached_queues = match (count(IFLA_TUN_NUM_QUEUES), count(IFLA_TUN_NUM_DISABLED_QUEUES)) {
        (Some(enabled), disabled) => Some(enabled + disabled.unwrap_or(0)),
        (None, _) => None,
    };
    ExistingDevice::Tun {
        multi_queue: flag(IFLA_TUN_MULTI_QUEUE),
        persistent: flag(IFLA_TUN_PERSIST),
        attached_queues,
    }
}

/// Deletes the device (with a veth, both ends go).
pub(crate) async fn delete(nl: &Netlink, dev: &Device) -> Result<(), SetupError> {
    nl.handle()
        .link()
        .del(dev.index)
        .execute()
        .await
        .map_err(|err| SetupError::from_netlink(format!("delete device {}", dev.name), err))
}

/// The rtnetlink kind of a device (`"veth"`, `"tun"`, ...), if it has one.
pub(crate) fn kind_of(msg: &LinkMessage) -> Option<String> {
    match classify(msg) {
        ExistingDevice::Absent => None,
        ExistingDevice::Tun { .. } => Some("tun".to_string()),
        ExistingDevice::Other { kind } => kind,
    }
}

/// What router mode needs to know about the LAN interface it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceFacts {
    pub index: u32,
    pub mac: [u8; 6],
    pub mtu: u32,
    pub rx_queues: u32,
}

/// Reads [`InterfaceFacts`] of `name` over netlink (not sysfs, which shows
/// the namespace it was mounted in).
pub async fn interface_facts(name: &str) -> Result<InterfaceFacts, SetupError> {
    let nl = Netlink::connect()?;
    let msg = find(&nl, name)
        .await?
        .ok_or_else(|| SetupError::NoDevice(name.to_string()))?;
    let mut facts = InterfaceFacts {
        index: msg.header.index,
        mac: [0; 6],
        mtu: 1500,
        rx_queues: 1,
    };
    let mut has_mac = false;
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::Address(mac) if mac.len() == 6 => {
                facts.mac.copy_from_slice(mac);
                has_mac = true;
            }
            LinkAttribute::Mtu(mtu) => facts.mtu = *mtu,
            LinkAttribute::NumRxQueues(n) => facts.rx_queues = *n,
            _ => {}
        }
    }
    if !has_mac {
        return Err(SetupError::InvalidPlan(format!(
            "{name} has no Ethernet address: router mode serves Ethernet interfaces"
        )));
    }
    Ok(facts)
}
