//! One change made to the system, as recorded by apply and reverted by undo.

use std::fmt;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::netlink::Netlink;
use super::plan::{RouteSpec, RuleSpec};
use super::{Device, SetupError, address, link, route, rule};

/// A change [`apply`](super::apply) made, with what it takes to revert it.
///
/// Plain data on purpose: the list of changes is what a crash-recovery
/// journal has to store (see [`crate::journal`]). Its serialized form is
/// part of the journal format: changing it means a new format version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// The device's MTU was changed from `old`.
    Mtu { old: u32 },
    /// `net` was added to the device (it was not there before).
    Address { net: IpNet },
    /// The device was brought up (it was down before).
    LinkUp,
    /// A route was added to our table.
    Route(RouteSpec),
    /// A policy rule was added.
    Rule(RuleSpec),
    /// The device was created as one end of a veth pair whose other end is
    /// `peer` (host mode); reverting deletes both ends. Recorded first,
    /// so reverted last.
    Veth { peer: String },
}

impl Change {
    /// Whether this change lives on the device, and so went away with it.
    pub(crate) fn is_on_device(&self) -> bool {
        matches!(
            self,
            Change::Mtu { .. } | Change::Address { .. } | Change::LinkUp | Change::Veth { .. }
        )
    }

    pub(crate) async fn revert(&self, nl: &Netlink, dev: &Device) -> Result<(), SetupError> {
        match self {
            Change::Mtu { old } => link::set_mtu(nl, dev, *old).await,
            Change::Address { net } => address::del(nl, dev, *net).await,
            Change::LinkUp => link::set_up(nl, dev, false).await,
            Change::Route(spec) => route::del(nl, spec, dev).await,
            Change::Rule(spec) => rule::del(nl, spec).await,
            Change::Veth { .. } => link::delete(nl, dev).await,
        }
    }
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::Mtu { old } => write!(f, "MTU change (was {old})"),
            Change::Address { net } => write!(f, "address {net}"),
            Change::LinkUp => write!(f, "link up"),
            Change::Route(spec) => spec.fmt(f),
            Change::Rule(spec) => spec.fmt(f),
            Change::Veth { peer } => write!(f, "veth pair (peer {peer})"),
        }
    }
}
