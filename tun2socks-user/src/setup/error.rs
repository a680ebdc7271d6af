//! What can go wrong while configuring the network, phrased so that a user
//! can act on it: which object failed, the kernel's errno, and a hint.

use std::io;

/// Errors of [`apply`](super::apply), [`Applied::undo`](super::Applied::undo)
/// and [`inspect_device`](super::inspect_device).
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The plan is inconsistent; nothing was changed.
    #[error("invalid setup plan: {0}")]
    InvalidPlan(String),

    /// The route netlink socket could not be opened.
    #[error("cannot open a route netlink socket: {0}")]
    Connect(#[source] io::Error),

    /// The device the plan configures does not exist (apply expects the TUN
    /// queues to be open already).
    #[error("network device {0:?} does not exist")]
    NoDevice(String),

    /// The kernel refused a request.
    #[error("{op} failed: {source}{}", hint(source))]
    Kernel {
        /// What was being done, e.g. `add route 10.0.0.0/8 table 100`.
        op: String,
        #[source]
        source: io::Error,
    },

    /// The netlink conversation itself failed (no errno from the kernel).
    #[error("{op} failed: {source}")]
    Netlink {
        op: String,
        #[source]
        source: rtnetlink::Error,
    },

    /// Apply failed and rolling back what it had done failed too: the
    /// listed changes may still be in place.
    #[error("{cause}; rolling back then failed, {} change(s) may be left: {}", leftovers.len(), join(leftovers))]
    RollbackIncomplete {
        cause: Box<SetupError>,
        leftovers: Vec<SetupError>,
    },

    /// The recorder given to [`apply_with`](super::apply_with) (the
    /// crash-recovery journal) failed: a change could not be recorded
    /// before it was made (so it was not made), or the record could not be
    /// told that a change was not made after all.
    #[error("could not record {what}: {source}")]
    Record {
        /// E.g. `route 10.0.0.0/8 into the device in table 100 before making it`.
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// Undo went through every change, but some could not be reverted.
    #[error("undo could not revert {} change(s): {}", .0.len(), join(.0))]
    UndoIncomplete(Vec<SetupError>),
}

impl SetupError {
    /// Wraps a failed rtnetlink request, keeping the errno when the kernel
    /// sent one.
    pub(crate) fn from_netlink(op: impl Into<String>, err: rtnetlink::Error) -> Self {
        let op = op.into();
        match &err {
            rtnetlink::Error::NetlinkError(msg) if msg.raw_code() != 0 => SetupError::Kernel {
                op,
                source: msg.to_io(),
            },
            _ => SetupError::Netlink { op, source: err },
        }
    }

    /// The kernel's errno, if this is a refused request.
    pub fn errno(&self) -> Option<i32> {
        match self {
            SetupError::Kernel { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }

    /// True when the kernel says the object is no longer there, which is
    /// what undo expects when the device (and everything on it) vanished
    /// because the TUN queues were closed first.
    pub(crate) fn is_already_gone(&self) -> bool {
        matches!(
            self.errno(),
            Some(libc::ENODEV | libc::ENOENT | libc::ESRCH | libc::EADDRNOTAVAIL)
        )
    }
}

/// A short suggestion for the errnos a user can do something about.
fn hint(err: &io::Error) -> &'static str {
    match err.raw_os_error() {
        Some(libc::EPERM | libc::EACCES) => {
            " (CAP_NET_ADMIN is needed in the target network namespace: run as root or grant the capability)"
        }
        Some(libc::EEXIST) => {
            " (it already exists and was not added by this run: left over from an earlier run, or another instance?)"
        }
        Some(libc::ENETDOWN) => " (the device is down)",
        _ => "",
    }
}

fn join(errors: &[SetupError]) -> String {
    errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permission_errors_name_the_capability() {
        let err = SetupError::Kernel {
            op: "add rule".into(),
            source: io::Error::from_raw_os_error(libc::EPERM),
        };
        assert_eq!(err.errno(), Some(libc::EPERM));
        assert!(err.to_string().contains("CAP_NET_ADMIN"), "{err}");
    }
}
