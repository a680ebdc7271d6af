//! Routes in our table.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use netlink_packet_route::route::{RouteMessage, RouteScope, RouteType};
use rtnetlink::RouteMessageBuilder;

use super::netlink::Netlink;
use super::plan::{RouteKind, RouteSpec};
use super::{Device, SetupError};

/// The same message adds and deletes: deleting with type, scope, protocol
/// and output device set removes our route and nothing that merely shares
/// its prefix.
fn message(spec: &RouteSpec, dev: &Device) -> RouteMessage {
    fn finish<T>(builder: RouteMessageBuilder<T>, spec: &RouteSpec, dev: &Device) -> RouteMessage {
        let builder = builder.table_id(spec.table);
        match spec.kind {
            // No gateway on a TUN link: the prefix is "on" the device.
            RouteKind::Device => builder.output_interface(dev.index).scope(RouteScope::Link),
            RouteKind::Throw => builder.kind(RouteType::Throw),
        }
        .build()
    }
    match spec.prefix {
        IpNet::V4(net) => finish(
            RouteMessageBuilder::<Ipv4Addr>::new().destination_prefix(net.addr(), net.prefix_len()),
            spec,
            dev,
        ),
        IpNet::V6(net) => finish(
            RouteMessageBuilder::<Ipv6Addr>::new().destination_prefix(net.addr(), net.prefix_len()),
            spec,
            dev,
        ),
    }
}

fn describe(spec: &RouteSpec, dev: &Device) -> String {
    match spec.kind {
        RouteKind::Device => format!("route {} dev {} table {}", spec.prefix, dev.name, spec.table),
        RouteKind::Throw => format!("route throw {} table {}", spec.prefix, spec.table),
    }
}

pub(crate) async fn add(nl: &Netlink, spec: &RouteSpec, dev: &Device) -> Result<(), SetupError> {
    nl.handle()
        .route()
        .add(message(spec, dev))
        .execute()
        .await
        .map_err(|err| SetupError::from_netlink(format!("add {}", describe(spec, dev)), err))
}

pub(crate) async fn del(nl: &Netlink, spec: &RouteSpec, dev: &Device) -> Result<(), SetupError> {
    nl.handle()
        .route()
        .del(message(spec, dev))
        .execute()
        .await
        .map_err(|err| SetupError::from_netlink(format!("remove {}", describe(spec, dev)), err))
}
