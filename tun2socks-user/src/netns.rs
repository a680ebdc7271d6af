//! Entering a named network namespace, as `ip netns` names them.
//!
//! `setns(2)` moves only the calling thread, and threads inherit the
//! namespace of the thread that spawns them: call [`enter`] on the main
//! thread before the tokio runtime or any worker is started, and every
//! socket, TUN queue and netlink request of the daemon lands in that
//! namespace. (Unlike `ip netns exec`, nothing is remounted: the daemon
//! reads interface state over netlink, never from /sys.)

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// Where `ip netns add NAME` bind-mounts a namespace.
pub const NETNS_RUN_DIR: &str = "/run/netns";

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("{0:?} is not a network namespace name (it must be a plain file name)")]
    BadName(String),
    #[error("network namespace {} does not exist (create it with `ip netns add NAME`)", .0.display())]
    NotFound(PathBuf),
    #[error("cannot open network namespace {}: {source}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot enter network namespace {}: {source}{}", path.display(), hint(source))]
    Setns {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Moves the calling thread into the network namespace `name` (the file
/// `/run/netns/NAME`). Call before threads are spawned; see the module
/// documentation.
pub fn enter(name: &str) -> Result<(), NetnsError> {
    let plain = !name.is_empty() && name != "." && name != ".." && !name.contains('/') && !name.contains('\0');
    if !plain {
        return Err(NetnsError::BadName(name.to_string()));
    }
    enter_path(&Path::new(NETNS_RUN_DIR).join(name))
}

/// Moves the calling thread into the network namespace that `path` refers
/// to (a bind mount such as `/run/netns/NAME`, or `/proc/PID/ns/net`).
pub fn enter_path(path: &Path) -> Result<(), NetnsError> {
    let file = File::open(path).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => NetnsError::NotFound(path.to_path_buf()),
        _ => NetnsError::Open {
            path: path.to_path_buf(),
            source,
        },
    })?;
    // SAFETY: plain syscall on a file descriptor we own for its duration.
    // CLONE_NEWNET makes the kernel reject anything but a network namespace.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(NetnsError::Setns {
            path: path.to_path_buf(),
            source: io::Error::last_os_error(),
        });
    }
    tracing::info!(netns = %path.display(), "entered network namespace");
    Ok(())
}

fn hint(err: &io::Error) -> &'static str {
    match err.raw_os_error() {
        Some(libc::EPERM) => " (CAP_SYS_ADMIN is needed: run as root)",
        Some(libc::EINVAL) => " (the file is not a network namespace)",
        _ => "",
    }
}
