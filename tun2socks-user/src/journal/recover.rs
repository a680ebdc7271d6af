//! Rolling back the journals that dead instances left in this namespace.

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::JournalError;
use super::file::{self, JournalRecord};
use super::identity::{self, Liveness, NetnsId};
use crate::setup::Applied;

/// One journal that [`recover`] looked at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalSummary {
    pub path: PathBuf,
    pub device: String,
    pub pid: u32,
    pub changes: usize,
}

impl JournalSummary {
    fn of(path: &Path, record: &JournalRecord) -> Self {
        JournalSummary {
            path: path.to_path_buf(),
            device: record.device.clone(),
            pid: record.owner.pid,
            changes: record.changes.len(),
        }
    }
}

/// What [`recover`] did, journal by journal.
#[derive(Debug, Default)]
pub struct RecoveryReport {
    /// Owner dead: changes reverted, journal removed.
    pub rolled_back: Vec<JournalSummary>,
    /// Owner running (or not verifiably dead): left alone.
    pub live: Vec<JournalSummary>,
    /// Written in an earlier boot, or in a namespace that no longer exists
    /// and whose inode number this one reuses: nothing of it is here to
    /// revert, so it was removed without touching the network.
    pub discarded: Vec<JournalSummary>,
    /// Unreadable, or the rollback failed; the files are kept.
    pub failed: Vec<JournalError>,
}

impl fmt::Display for RecoveryReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |items: &[JournalSummary]| {
            items
                .iter()
                .map(|j| format!("{} of pid {} ({} changes)", j.device, j.pid, j.changes))
                .collect::<Vec<_>>()
                .join(", ")
        };
        if self.rolled_back.is_empty() && self.live.is_empty() && self.discarded.is_empty() && self.failed.is_empty() {
            return f.write_str("no journals in this network namespace");
        }
        let mut parts = Vec::new();
        if !self.rolled_back.is_empty() {
            parts.push(format!("rolled back {}", list(&self.rolled_back)));
        }
        if !self.live.is_empty() {
            parts.push(format!("left alone (owner running) {}", list(&self.live)));
        }
        if !self.discarded.is_empty() {
            parts.push(format!(
                "discarded (from a namespace or boot that is gone) {}",
                list(&self.discarded)
            ));
        }
        if !self.failed.is_empty() {
            parts.push(format!("failed: {}", join(&self.failed)));
        }
        f.write_str(&parts.join("; "))
    }
}

pub(super) fn join(errors: &[JournalError]) -> String {
    errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}

/// Rolls back and removes the journals in `dir` that instances which are
/// no longer running left in the calling thread's network namespace (only
/// the one for `device`, if given). Journals of running instances are left
/// alone; journals of other namespaces are not looked at.
///
/// Each journal is handled on its own: an unreadable one or a failed
/// rollback does not stop the others, and is kept. If any failed, the
/// result is [`JournalError::Incomplete`], which carries the whole report.
/// A missing `dir` means there is nothing to recover.
///
/// Needs a tokio runtime; talks netlink in the caller's namespace.
#[tracing::instrument(skip_all, fields(dir = %dir.display()))]
pub async fn recover(dir: &Path, device: Option<&str>) -> Result<RecoveryReport, JournalError> {
    let netns = NetnsId::current().map_err(JournalError::identity("the network namespace"))?;
    let boot_id = identity::boot_id().map_err(JournalError::identity("this boot"))?;
    let mut report = RecoveryReport::default();
    for path in journals(dir, &netns, device)? {
        match recover_one(&path, &netns, &boot_id).await {
            Ok(Outcome::RolledBack(summary)) => report.rolled_back.push(summary),
            Ok(Outcome::Live(summary)) => report.live.push(summary),
            Ok(Outcome::Discarded(summary)) => report.discarded.push(summary),
            Err(err) => {
                tracing::error!(%err, "journal not recovered");
                report.failed.push(err);
            }
        }
    }
    if report.failed.is_empty() {
        Ok(report)
    } else {
        Err(JournalError::Incomplete(Box::new(report)))
    }
}

/// Everything `tun2socks cleanup` does: [`recover`] every journal of the
/// calling thread's network namespace.
///
/// The caller enters the namespace first (for `--netns NAME`: call
/// [`crate::netns::enter`] on the main thread, then build a current-thread
/// tokio runtime and `block_on` this), and prints the report.
pub async fn cleanup(dir: &Path) -> Result<RecoveryReport, JournalError> {
    let report = recover(dir, None).await?;
    tracing::info!(%report, "cleanup done");
    Ok(report)
}

enum Outcome {
    RolledBack(JournalSummary),
    Live(JournalSummary),
    Discarded(JournalSummary),
}

async fn recover_one(path: &Path, netns: &NetnsId, boot_id: &str) -> Result<Outcome, JournalError> {
    let record = JournalRecord::read(path)?;
    let summary = JournalSummary::of(path, &record);
    let journal = path.display();
    if record.boot_id != boot_id || !record.netns.may_be(netns) {
        tracing::info!(%journal, "journal from a boot or namespace that is gone, removing it");
        file::remove(path)?;
        return Ok(Outcome::Discarded(summary));
    }
    match record.owner.liveness() {
        Liveness::Dead => {}
        liveness @ (Liveness::Running | Liveness::Unknown) => {
            let pid = record.owner.pid;
            tracing::warn!(%journal, pid, ?liveness, "owner may be running, leaving its journal alone");
            return Ok(Outcome::Live(summary));
        }
    }
    let (pid, changes) = (record.owner.pid, record.changes.len());
    tracing::info!(%journal, pid, changes, "rolling back the changes of an instance that died");
    if record.ifindex.is_none() && !record.changes.is_empty() {
        // Died between creating its veth pair and recording the pair's
        // index (nothing else is recorded before that).
        crate::setup::veth::delete_unrecorded(&record.device)
            .await
            .map_err(|source| JournalError::Rollback {
                path: path.to_path_buf(),
                source,
            })?;
    }
    if let Some(ifindex) = record.ifindex {
        // Undo reverts last first and tolerates what is already gone: the
        // last change may never have been made, and a created device took
        // its addresses and routes along.
        Applied::recorded(record.device, ifindex, record.changes)
            .undo()
            .await
            .map_err(|source| JournalError::Rollback {
                path: path.to_path_buf(),
                source,
            })?;
    }
    file::remove(path)?;
    Ok(Outcome::RolledBack(summary))
}

/// The journal files of namespace `netns` in `dir`, sorted.
fn journals(dir: &Path, netns: &NetnsId, device: Option<&str>) -> Result<Vec<PathBuf>, JournalError> {
    let dir_err = |source| JournalError::Dir {
        path: dir.to_path_buf(),
        source,
    };
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(dir_err(err)),
    };
    let prefix = file::name_prefix(netns);
    let wanted = device.map(|d| file::file_name(netns, d));
    let mut paths = Vec::new();
    for entry in entries {
        let name = entry.map_err(dir_err)?.file_name();
        let Some(name) = name.to_str() else { continue };
        let ours = match &wanted {
            Some(wanted) => name == wanted,
            None => name.starts_with(&prefix) && name.ends_with(".json"),
        };
        if ours {
            paths.push(dir.join(name));
        }
    }
    paths.sort();
    Ok(paths)
}
