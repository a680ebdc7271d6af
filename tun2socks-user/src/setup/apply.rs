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

/// Told about every change [`apply_with`] is about to make, so that it can
/// be stored durably *before* the kernel sees it (the crash-recovery
/// journal, [`crate::journal::Journal`], implements this).
///
/// Recording first means a crash can never leave a change the record does
/// not know about; the price is that the record may name a change that was
/// never made, which undo tolerates (it is "already gone").
pub trait Recorder {
    type Error: std::error::Error + Send + Sync + 'static;

    /// The device the changes are made to, found before the first change.
    fn device(&mut self, name: &str, ifindex: u32) -> Result<(), Self::Error>;

    /// `change` is about to be made. An error stops apply before it is made
    /// (and rolls back what was made so far).
    fn before(&mut self, change: &Change) -> Result<(), Self::Error>;

    /// `change`, announced by [`before`](Recorder::before), was not made
    /// after all: it was already in place (an adopted device's own address)
    /// or the kernel refused it. It is not ours to revert, so the record
    /// must drop it.
    fn not_made(&mut self, change: &Change) -> Result<(), Self::Error>;
}

/// The recorder of plain [`apply`]: keeps nothing beyond [`Applied`].
struct Unrecorded;

impl Recorder for Unrecorded {
    type Error = std::convert::Infallible;

    fn device(&mut self, _: &str, _: u32) -> Result<(), Self::Error> {
        Ok(())
    }

    fn before(&mut self, _: &Change) -> Result<(), Self::Error> {
        Ok(())
    }

    fn not_made(&mut self, _: &Change) -> Result<(), Self::Error> {
        Ok(())
    }
}

/// Configures the device, routes and rules described by `plan`.
///
/// Sets the MTU, adds the addresses, brings the link up, then installs the
/// routes and finally the rules, so traffic is steered only once the table
/// is complete. Each change is recorded as it is made; on any error the
/// ones already made are undone before the error is returned.
///
/// Runs in the caller's network namespace and needs a tokio runtime.
pub async fn apply(plan: &SetupPlan) -> Result<Applied, SetupError> {
    apply_with(plan, &mut Unrecorded).await
}

/// [`apply`], telling `recorder` about each change before making it.
///
/// On an error, the changes made so far are rolled back as by [`apply`];
/// the recorder is not told about that rollback, so its record still lists
/// them (reverting them again is harmless). Unless the error is
/// [`SetupError::RollbackIncomplete`], nothing is left in place and the
/// record can be discarded.
#[tracing::instrument(skip_all, fields(device = %plan.device))]
pub async fn apply_with<R: Recorder>(plan: &SetupPlan, recorder: &mut R) -> Result<Applied, SetupError> {
    let layout = plan.layout()?;
    let nl = Netlink::connect()?;
    let state = link::state(&nl, &plan.device)
        .await?
        .ok_or_else(|| SetupError::NoDevice(plan.device.clone()))?;
    recorder
        .device(&plan.device, state.index)
        .map_err(|err| SetupError::Record {
            what: format!("device {} (index {})", plan.device, state.index),
            source: Box::new(err),
        })?;
    let mut applied = Applied {
        device: Device {
            name: plan.device.clone(),
            index: state.index,
        },
        changes: Vec::new(),
    };
    match applied.make_changes(&nl, plan, &layout, state, recorder).await {
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

/// Whether a change was made, or found already in place.
enum Made {
    Yes,
    AlreadyThere,
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

    async fn make_changes<R: Recorder>(
        &mut self,
        nl: &Netlink,
        plan: &SetupPlan,
        layout: &Layout,
        state: link::LinkState,
        recorder: &mut R,
    ) -> Result<(), SetupError> {
        let dev = self.device.clone();
        let dev = &dev;
        if state.mtu != Some(plan.mtu) {
            match state.mtu {
                Some(old) => {
                    self.make(recorder, Change::Mtu { old }, async || {
                        link::set_mtu(nl, dev, plan.mtu).await.map(|()| Made::Yes)
                    })
                    .await?
                }
                // The kernel always reports IFLA_MTU; without it there
                // would be nothing to restore, so nothing to record.
                None => link::set_mtu(nl, dev, plan.mtu).await?,
            }
        }
        for &net in &plan.addresses {
            self.make(recorder, Change::Address { net }, async || {
                match address::add(nl, dev, net).await? {
                    Added::New => Ok(Made::Yes),
                    Added::AlreadyThere => {
                        tracing::info!(%net, "address already on the device, keeping it");
                        Ok(Made::AlreadyThere)
                    }
                }
            })
            .await?;
        }
        if !state.up {
            self.make(recorder, Change::LinkUp, async || {
                link::set_up(nl, dev, true).await.map(|()| Made::Yes)
            })
            .await?;
        }
        for spec in &layout.routes {
            self.make(recorder, Change::Route(*spec), async || {
                route::add(nl, spec, dev).await.map(|()| Made::Yes)
            })
            .await?;
        }
        for spec in &layout.rules {
            self.make(recorder, Change::Rule(*spec), async || {
                rule::add(nl, spec).await.map(|()| Made::Yes)
            })
            .await?;
        }
        Ok(())
    }

    /// Records `change` with `recorder`, makes it with `op`, and keeps it
    /// in `self` if it was made. Between the kernel refusing a change (or
    /// finding it in place) and `not_made` the record names something that
    /// is not ours; a crash in that short window is the one case in which
    /// recovery could remove an identical object someone else made.
    async fn make<R: Recorder>(
        &mut self,
        recorder: &mut R,
        change: Change,
        op: impl AsyncFnOnce() -> Result<Made, SetupError>,
    ) -> Result<(), SetupError> {
        recorder.before(&change).map_err(|err| SetupError::Record {
            what: format!("{change} before making it"),
            source: Box::new(err),
        })?;
        let outcome = op().await;
        if !matches!(outcome, Ok(Made::Yes))
            && let Err(err) = recorder.not_made(&change)
        {
            let err = SetupError::Record {
                what: format!("that {change} was not made"),
                source: Box::new(err),
            };
            // A refused change's own error comes first. A change found in
            // place must not stay in the record (recovery would remove
            // what is not ours), so failing to drop it fails apply.
            return match outcome {
                Err(cause) => {
                    tracing::warn!(%err, "the record still names a change that was refused");
                    Err(cause)
                }
                Ok(_) => Err(err),
            };
        }
        match outcome? {
            Made::Yes => {
                tracing::debug!(%change, "applied");
                self.changes.push(change);
            }
            Made::AlreadyThere => {}
        }
        Ok(())
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
