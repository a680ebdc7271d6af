//! Policy routing rules.
//!
//! netlink-packet-route 0.34 types every attribute these rules need
//! (`FRA_FWMARK`, `FRA_FWMASK`, `FRA_SUPPRESS_PREFIXLEN`, `FRA_TABLE`), and
//! `not` is the `FIB_RULE_INVERT` header flag, so no raw attributes here.

use netlink_packet_route::AddressFamily;
use netlink_packet_route::rule::{RuleAction, RuleAttribute, RuleFlags, RuleMessage};

use super::SetupError;
use super::netlink::Netlink;
use super::plan::{Family, RuleSpec};

/// The same message adds and deletes: the kernel deletes the rule that
/// matches every attribute given, i.e. exactly ours.
fn message(spec: &RuleSpec) -> RuleMessage {
    let mut msg = RuleMessage::default();
    msg.header.family = match spec.family {
        Family::V4 => AddressFamily::Inet,
        Family::V6 => AddressFamily::Inet6,
    };
    msg.header.action = RuleAction::ToTable;
    // The header has 8 bits for the table; larger ids go in FRA_TABLE with
    // the header field left unspecified, as iproute2 does.
    msg.header.table = u8::try_from(spec.table).unwrap_or(0);
    msg.attributes.push(RuleAttribute::Table(spec.table));
    msg.attributes.push(RuleAttribute::Priority(spec.priority));
    if let Some(mark) = spec.unless_fwmark {
        msg.header.flags |= RuleFlags::Invert;
        msg.attributes.push(RuleAttribute::FwMark(mark));
        msg.attributes.push(RuleAttribute::FwMask(u32::MAX));
    }
    if let Some(len) = spec.suppress_prefixlen {
        msg.attributes.push(RuleAttribute::SuppressPrefixLen(len));
    }
    msg
}

pub(crate) async fn add(nl: &Netlink, spec: &RuleSpec) -> Result<(), SetupError> {
    let mut request = nl.handle().rule().add();
    *request.message_mut() = message(spec);
    request
        .execute()
        .await
        .map_err(|err| SetupError::from_netlink(format!("add {spec}"), err))
}

pub(crate) async fn del(nl: &Netlink, spec: &RuleSpec) -> Result<(), SetupError> {
    nl.handle()
        .rule()
        .del(message(spec))
        .execute()
        .await
        .map_err(|err| SetupError::from_netlink(format!("remove {spec}"), err))
}
