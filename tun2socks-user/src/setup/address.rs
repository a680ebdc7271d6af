//! Addresses on the device.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage};
use rtnetlink::AddressMessageBuilder;

use super::netlink::Netlink;
use super::{Device, SetupError};

/// Whether [`add`] put the address there or found it already present.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Added {
    New,
    AlreadyThere,
}

fn message(index: u32, net: IpNet) -> AddressMessage {
    match net {
        IpNet::V4(net) => AddressMessageBuilder::<Ipv4Addr>::new()
            .index(index)
            .address(net.addr(), net.prefix_len())
            .build(),
        IpNet::V6(net) => {
            let mut msg = AddressMessageBuilder::<Ipv6Addr>::new()
                .index(index)
                .address(net.addr(), net.prefix_len())
                .build();
            // Nobody else lives on a TUN link, and a tentative address
            // cannot be used as a source for the DAD period (1s+).
            msg.header.flags = AddressHeaderFlags::Nodad;
            msg.attributes.push(AddressAttribute::Flags(AddressFlags::Nodad));
            msg
        }
    }
}

/// Adds `net` to the device. An address that is already there (an adopted
/// device configured by its owner) is left alone and not ours to remove.
pub(crate) async fn add(nl: &Netlink, dev: &Device, net: IpNet) -> Result<Added, SetupError> {
    let mut request = nl.handle().address().add(dev.index, net.addr(), net.prefix_len());
    *request.message_mut() = message(dev.index, net);
    match request.execute().await {
        Ok(()) => Ok(Added::New),
        Err(err) => {
            let err = SetupError::from_netlink(format!("add address {net} to {}", dev.name), err);
            if err.errno() == Some(libc::EEXIST) {
                Ok(Added::AlreadyThere)
            } else {
                Err(err)
            }
        }
    }
}

pub(crate) async fn del(nl: &Netlink, dev: &Device, net: IpNet) -> Result<(), SetupError> {
    nl.handle()
        .address()
        .del(message(dev.index, net))
        .execute()
        .await
        .map_err(|err| SetupError::from_netlink(format!("remove address {net} from {}", dev.name), err))
}

/// Every address of every interface in the namespace: the box's own
/// addresses, which router mode's classifier leaves to the kernel.
pub async fn all_local() -> Result<Vec<std::net::IpAddr>, SetupError> {
    use futures::TryStreamExt;
    let nl = Netlink::connect()?;
    let mut stream = nl.handle().address().get().execute();
    let mut out = Vec::new();
    while let Some(msg) = stream
        .try_next()
        .await
        .map_err(|err| SetupError::from_netlink("list addresses", err))?
    {
        for attr in &msg.attributes {
            // IFA_LOCAL is the box's own address (IFA_ADDRESS is the peer's
            // on point-to-point links); plain links carry the same in both.
            if let AddressAttribute::Local(ip) | AddressAttribute::Address(ip) = attr
                && !out.contains(ip)
            {
                out.push(*ip);
            }
        }
    }
    Ok(out)
}
