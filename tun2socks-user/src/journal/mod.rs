//! The crash-recovery journal: what one daemon instance changed in the
//! network, kept on disk so that it can be undone after the instance died
//! without undoing it (SIGKILL, abort, OOM kill).
//!
//! A TUN device the daemon created vanishes with its queue fds, and takes
//! its addresses and routes along; policy rules, the throw routes of our
//! table and whatever was done to an adopted (persistent) device stay.
//! Hence one journal per instance, `<dir>/<netns inode>-<device>.json`
//! ([`DEFAULT_DIR`] is `/run/tun2socks`), that lists each [`Change`] before
//! it is made and is replaced atomically on every update.
//!
//! # How the daemon uses it
//!
//! All calls are made in the target network namespace (after
//! [`crate::netns::enter`]) inside a tokio runtime:
//!
//! 1. at start, first: [`recover`]`(dir, Some(device))` rolls back a journal
//!    that a dead instance left for this device (or [`cleanup`]`(dir)` for
//!    every dead instance of the namespace);
//! 2. before opening the queues: [`Journal::create`]`(dir, device, created)`
//!    (`created`: the device was absent, so opening the queues creates it);
//!    it refuses while another running instance holds the device, before
//!    we attach queues to that instance's device. If opening the queues
//!    fails, [`Journal::finish`];
//! 3. [`setup::apply_with`]`(&plan, &mut journal)` instead of `apply`; on an
//!    error other than [`SetupError::RollbackIncomplete`] nothing is left
//!    in place: [`Journal::finish`];
//! 4. at exit, [`Applied::undo`]; when it succeeds, [`Journal::finish`]
//!    removes the file. When it does not, drop the journal: the file stays
//!    for `tun2socks cleanup` (or the next start) to finish the job.
//!
//! `tun2socks cleanup [--netns NAME]` enters the namespace and calls
//! [`cleanup`].
//!
//! [`setup::apply_with`]: crate::setup::apply_with
//! [`SetupError::RollbackIncomplete`]: crate::setup::SetupError::RollbackIncomplete
//! [`Applied::undo`]: crate::setup::Applied::undo

mod file;
mod identity;
mod recover;

use std::io;
use std::path::{Path, PathBuf};

pub use file::{FORMAT_VERSION, JournalRecord};
pub use identity::{Liveness, NetnsId, Owner};
pub use recover::{JournalSummary, RecoveryReport, cleanup, recover};

use crate::setup::{Change, Recorder, SetupError};

/// Where journals live unless configured otherwise. A tmpfs: a reboot
/// clears it together with the network state it describes.
pub const DEFAULT_DIR: &str = "/run/tun2socks";

/// Errors of the journal; each names the file it is about.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("{0:?} is not a valid interface name")]
    BadDevice(String),

    #[error("cannot identify {what}: {source}")]
    Identity {
        what: &'static str,
        #[source]
        source: io::Error,
    },

    #[error("cannot use the journal directory {}: {source}", path.display())]
    Dir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("cannot write journal {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("cannot read journal {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("cannot remove journal {}: {source}", path.display())]
    Remove {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("journal {} is damaged ({source}){CHECK_BY_HAND}", path.display())]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    #[error("journal {} is invalid: {reason}{CHECK_BY_HAND}", path.display())]
    Invalid { path: PathBuf, reason: String },

    #[error("journal {} has format version {found}, but this tun2socks reads versions 1 to {FORMAT_VERSION} \
             (clean up with the tun2socks that wrote it){CHECK_BY_HAND}", path.display())]
    Version { path: PathBuf, found: u32 },

    #[error("journal {} is for device {journal}, not {given}", path.display())]
    WrongDevice {
        path: PathBuf,
        journal: String,
        given: String,
    },

    #[error("device {device} is managed by a running tun2socks (pid {pid}; journal {})", path.display())]
    InUse { path: PathBuf, device: String, pid: u32 },

    #[error("journal {} was left by a tun2socks that is no longer running (pid {pid}): \
             roll it back first (`tun2socks cleanup`)", path.display())]
    Stale { path: PathBuf, pid: u32 },

    #[error("rolling back journal {} failed (it is kept for another try): {source}", path.display())]
    Rollback {
        path: PathBuf,
        #[source]
        source: SetupError,
    },

    #[error("{} journal(s) could not be recovered: {}", .0.failed.len(), recover::join(&.0.failed))]
    Incomplete(Box<RecoveryReport>),
}

const CHECK_BY_HAND: &str = "; compare `ip rule`, `ip -6 rule` and `ip route show table all` with what \
                             you expect, remove leftovers by hand, then delete the file";

impl JournalError {
    fn identity(what: &'static str) -> impl FnOnce(io::Error) -> JournalError {
        move |source| JournalError::Identity { what, source }
    }
}

/// The journal of this instance. Dropping it leaves the file in place (for
/// recovery); [`Journal::finish`] removes it.
#[derive(Debug)]
#[must_use = "a journal records changes only when passed to setup::apply_with"]
pub struct Journal {
    path: PathBuf,
    record: JournalRecord,
}

impl Journal {
    /// Creates the (empty) journal of this process for `device` in the
    /// calling thread's network namespace. `created_device`: whether this
    /// instance creates the device (it was absent) rather than adopting an
    /// existing one; recorded for the administrator, recovery does not
    /// depend on it.
    ///
    /// Fails with [`JournalError::InUse`] while another running instance
    /// owns a journal for the device, and with [`JournalError::Stale`] when
    /// a dead one left it: [`recover`] it first.
    pub fn create(dir: &Path, device: &str, created_device: bool) -> Result<Journal, JournalError> {
        crate::device::tun::validate_name(device).map_err(|_| JournalError::BadDevice(device.to_string()))?;
        let record = JournalRecord {
            version: FORMAT_VERSION,
            owner: Owner::current().map_err(JournalError::identity("this process"))?,
            boot_id: identity::boot_id().map_err(JournalError::identity("this boot"))?,
            netns: NetnsId::current().map_err(JournalError::identity("the network namespace"))?,
            device: device.to_string(),
            ifindex: None,
            created_device,
            changes: Vec::new(),
        };
        file::create_dir(dir)?;
        let path = dir.join(file::file_name(&record.netns, device));
        if !file::create_new(&path, &record)? {
            let existing = JournalRecord::read(&path)?;
            let pid = existing.owner.pid;
            return Err(match existing.owner.liveness() {
                Liveness::Running | Liveness::Unknown => JournalError::InUse {
                    path,
                    device: device.to_string(),
                    pid,
                },
                Liveness::Dead => JournalError::Stale { path, pid },
            });
        }
        tracing::info!(journal = %path.display(), "journal created");
        Ok(Journal { path, record })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What the journal holds now (as on disk).
    pub fn contents(&self) -> &JournalRecord {
        &self.record
    }

    /// Removes the journal: everything it lists has been undone.
    pub fn finish(self) -> Result<(), JournalError> {
        file::remove(&self.path)?;
        tracing::info!(journal = %self.path.display(), "journal removed");
        Ok(())
    }

    /// Applies `edit` to the record and writes it; on a failed write the
    /// record in memory goes back to what is on disk.
    fn update(&mut self, edit: impl FnOnce(&mut JournalRecord)) -> Result<(), JournalError> {
        let mut next = self.record.clone();
        edit(&mut next);
        file::replace(&self.path, &next)?;
        self.record = next;
        Ok(())
    }
}

impl Recorder for Journal {
    type Error = JournalError;

    fn device(&mut self, name: &str, ifindex: u32) -> Result<(), JournalError> {
        if name != self.record.device {
            return Err(JournalError::WrongDevice {
                path: self.path.clone(),
                journal: self.record.device.clone(),
                given: name.to_string(),
            });
        }
        self.update(|r| r.ifindex = Some(ifindex))
    }

    fn before(&mut self, change: &Change) -> Result<(), JournalError> {
        self.update(|r| r.changes.push(change.clone()))?;
        tracing::debug!(%change, journal = %self.path.display(), "recorded");
        Ok(())
    }

    fn not_made(&mut self, change: &Change) -> Result<(), JournalError> {
        // Normally the last entry; searched for in case a caller's order
        // differs.
        let Some(at) = self.record.changes.iter().rposition(|c| c == change) else {
            return Ok(());
        };
        self.update(|r| {
            r.changes.remove(at);
        })
    }
}
