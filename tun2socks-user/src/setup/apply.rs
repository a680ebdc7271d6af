//! Applying a plan as a sequence of recorded changes, and undoing them.

use super::address::{self, Added};
use super::change::Change;
use super::netlink::Netlink;
use super::plan::{Layout, SetupPlan};
use super::{Device, SetupError, link, route, rule};

/// What [`apply`] changed, in order. Undo it with [`Applied::undo`];
/// dropping it leaves the configuration in place.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use = "dropping Applied leaves the network configured; call undo()"]
pub struct Applied {
    device: Device,
    changes: Vec<Change>,
}

/// Configures the device, routes and rules described by `plan`.
///
/// Sets the MTU, adds the addresses, brings the link up, then installs the
/// routes and finally the rules, so traffic is steered only once the table
/// is complete. Each change is recorded as it is made; on any error the
/// ones already made are undone before the error is returned.
///
/// Runs in the caller's network namespace and needs a tokio runtime.
#[tracing::instrument(skip_all, fields(device = %plan.device))]
pub async fn apply(plan: &SetupPlan) -> Result<Applied, SetupError> {
    let layout = plan.layout()?;
    let nl = Netlink::connect()?;
    let state = link::state(&nl, &plan.device)
        .await?
        .ok_or_else(|| SetupError::NoDevice(plan.device.clone()))?;
    let mut applied = Applied {
        device: Device {
            name: plan.device.clone(),
            index: state.index,
        },
        changes: Vec::new(),
    };
    match applied.make_changes(&nl, plan, &layout, state).await {
        Ok(()) => {
            tracing::info!(changes = applied.changes.len(), "network setup applied");
            Ok(applied)
        }
        Err(cause) => {
            tracing::warn!(%cause, "network setup failed, rolling back");
            let leftovers = applied.revert_all(&nl).await;
            if leftovers.is_empty() {
                Err(cause)
            } else {
                Err(SetupError::RollbackIncomplete {
                    cause: Box::new(cause),
                    leftovers,
                })
            }
        }
    }
}

impl Applied {
    /// Rebuilds the record of an earlier apply (e.g. from a journal left by
    /// a crashed run), so that [`Applied::undo`] can revert it.
    pub fn recorded(device: String, ifindex: u32, changes: Vec<Change>) -> Self {
        Applied {
            device: Device {
                name: device,
                index: ifindex,
            },
            changes,
        }
    }

    /// The configured device's name.
    pub fn device(&self) -> &str {
        &self.device.name
    }

    /// The configured device's interface index when apply ran.
    pub fn ifindex(&self) -> u32 {
        self.device.index
    }

    /// The changes made, in the order they were made.
    pub fn changes(&self) -> &[Change] {
        &self.changes
    }

    /// Reverts every recorded change, last first, removing exactly what
    /// apply added. Things already gone (the device vanished because its
    /// queues were closed first) are fine; other failures are collected
    /// while the remaining changes are still reverted.
    #[tracing::instrument(skip_all, fields(device = %self.device.name))]
    pub async fn undo(self) -> Result<(), SetupError> {
        let nl = Netlink::connect()?;
        let failures = self.revert_all(&nl).await;
        if failures.is_empty() {
            tracing::info!("network setup undone");
            Ok(())
        } else {
            Err(SetupError::UndoIncomplete(failures))
        }
    }

    async fn make_changes(
        &mut self,
        nl: &Netlink,
        plan: &SetupPlan,
        layout: &Layout,
        state: link::LinkState,
    ) -> Result<(), SetupError> {
        let dev = self.device.clone();
        if state.mtu != Some(plan.mtu) {
            link::set_mtu(nl, &dev, plan.mtu).await?;
            // The kernel always reports IFLA_MTU; without it there would be
            // nothing to restore.
            if let Some(old) = state.mtu {
                self.record(Change::Mtu { old });
            }
        }
        for &net in &plan.addresses {
            match address::add(nl, &dev, net).await? {
                Added::New => self.record(Change::Address { net }),
                Added::AlreadyThere => {
                    tracing::info!(%net, "address already on the device, keeping it")
                }
            }
        }
        if !state.up {
            link::set_up(nl, &dev, true).await?;
            self.record(Change::LinkUp);
        }
        for spec in &layout.routes {
            route::add(nl, spec, &dev).await?;
            self.record(Change::Route(*spec));
        }
        for spec in &layout.rules {
            rule::add(nl, spec).await?;
            self.record(Change::Rule(*spec));
        }
        Ok(())
    }

    fn record(&mut self, change: Change) {
        tracing::debug!(%change, "applied");
        self.changes.push(change);
    }

    /// Reverts the changes, last first; returns what could not be reverted.
    async fn revert_all(&self, nl: &Netlink) -> Vec<SetupError> {
        let mut failures = Vec::new();
        // The device may be gone (its queues were closed first), taking its
        // MTU, addresses and up state with it, or another device may have
        // taken its name since: touch the device only if it is still ours.
        let device_is_ours = match link::state(nl, &self.device.name).await {
            Ok(state) => state.is_some_and(|s| s.index == self.device.index),
            Err(err) => {
                failures.push(err);
                true // let the kernel say what is there
            }
        };
        for change in self.changes.iter().rev() {
            if change.is_on_device() && !device_is_ours {
                tracing::debug!(%change, "device gone, nothing to revert");
                continue;
            }
            match change.revert(nl, &self.device).await {
                Ok(()) => tracing::debug!(%change, "reverted"),
                Err(err) if err.is_already_gone() => tracing::debug!(%change, %err, "already gone"),
                Err(err) => {
                    tracing::warn!(%change, %err, "could not revert");
                    failures.push(err);
                }
            }
        }
        failures
    }
}
