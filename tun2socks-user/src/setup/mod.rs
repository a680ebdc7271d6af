//! Control-plane network setup over rtnetlink: the device's MTU, addresses
//! and link state, the routes of our table, and the policy rules that steer
//! traffic into the device without looping the daemon's own (marked)
//! upstream traffic back into it. See [`plan`] for the routing design.
//!
//! Everything [`apply`] does is recorded as a list of [`Change`]s so that
//! [`Applied::undo`] removes exactly that and nothing else.

mod address;
mod apply;
mod change;
mod error;
mod link;
mod netlink;
pub mod plan;
mod route;
mod rule;
pub mod veth;

pub use address::all_local as local_addresses;
pub use apply::{Applied, Recorder, apply, apply_with};
pub use change::Change;
pub use error::SetupError;
pub use link::{ExistingDevice, InterfaceFacts, inspect_device, interface_facts};
pub use plan::{Family, RouteKind, RouteSpec, RuleSpec, SetupPlan};
pub use veth::{CreatedVeth, VethSpec};

/// The device a setup was applied to: its name, and the index it had then
/// (a later device of the same name is not ours).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Device {
    pub name: String,
    pub index: u32,
}
