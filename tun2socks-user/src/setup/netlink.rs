//! One route netlink connection per operation.
//!
//! The socket belongs to the network namespace of the thread that opens it,
//! so a fresh connection for each `apply`, `undo` or `inspect_device` always
//! talks to the namespace the caller is in (see [`crate::netns::enter`]).

use rtnetlink::Handle;
use tokio::task::JoinHandle;

use super::SetupError;

/// A route netlink socket whose driver task runs on the current tokio
/// runtime and stops when this is dropped.
pub(crate) struct Netlink {
    handle: Handle,
    driver: JoinHandle<()>,
}

impl Netlink {
    /// Opens the socket. Must be called inside a tokio runtime.
    pub(crate) fn connect() -> Result<Self, SetupError> {
        let (connection, handle, _multicast) = rtnetlink::new_connection().map_err(SetupError::Connect)?;
        let driver = tokio::spawn(connection);
        Ok(Netlink { handle, driver })
    }

    pub(crate) fn handle(&self) -> &Handle {
        &self.handle
    }
}

impl Drop for Netlink {
    fn drop(&mut self) {
        self.driver.abort();
    }
}
