//! The journal's on-disk form: a JSON document replaced atomically.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::JournalError;
use super::identity::{NetnsId, Owner};
use crate::setup::Change;

/// The format written. Bump it for any change in the JSON, including the
/// serialized form of [`Change`].
pub const FORMAT_VERSION: u32 = 2;
/// Formats read: 2 added [`Change::Veth`]; a version 1 journal is a
/// version 2 journal without it.
const READABLE_VERSIONS: [u32; 2] = [1, 2];

/// Everything one journal holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalRecord {
    /// [`FORMAT_VERSION`] of the writer; read first, so that a journal of
    /// another version is reported as such rather than as garbage.
    pub version: u32,
    pub owner: Owner,
    /// The boot the journal was written in.
    pub boot_id: String,
    pub netns: NetnsId,
    pub device: String,
    /// The device's index when apply found it; `None` until then (and then
    /// there are no changes either).
    pub ifindex: Option<u32>,
    /// Whether the owner created the device (it vanishes with the owner's
    /// queues) rather than adopting an existing one.
    pub created_device: bool,
    /// The changes that may have been made, in order; the last one may not
    /// have been (it is recorded before it is made).
    pub changes: Vec<Change>,
}

impl JournalRecord {
    /// Reads and checks the journal at `path`.
    pub fn read(path: &Path) -> Result<JournalRecord, JournalError> {
        let text = fs::read(path).map_err(|source| JournalError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let corrupt = |source| JournalError::Corrupt {
            path: path.to_path_buf(),
            source,
        };
        #[derive(Deserialize)]
        struct VersionOnly {
            version: u32,
        }
        let VersionOnly { version } = serde_json::from_slice(&text).map_err(corrupt)?;
        if !READABLE_VERSIONS.contains(&version) {
            return Err(JournalError::Version {
                path: path.to_path_buf(),
                found: version,
            });
        }
        let record: JournalRecord = serde_json::from_slice(&text).map_err(corrupt)?;
        // Undoing a device route without the device's index would remove
        // a route of that prefix on any device. The one change recorded
        // before the index is known is the creation of the device itself.
        let only_creation = record.changes.iter().all(|c| matches!(c, Change::Veth { .. }));
        if record.ifindex.is_none() && !only_creation {
            return Err(JournalError::Invalid {
                path: path.to_path_buf(),
                reason: "it lists changes but no device index".into(),
            });
        }
        Ok(record)
    }

    fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = serde_json::to_vec_pretty(self).expect("a journal record always serializes");
        bytes.push(b'\n');
        bytes
    }
}

/// `<netns inode>-<device>.json`: unique per instance (one daemon per
/// device and namespace), and found by a scan of one namespace's prefix.
pub fn file_name(netns: &NetnsId, device: &str) -> String {
    format!("{}{device}.json", name_prefix(netns))
}

pub fn name_prefix(netns: &NetnsId) -> String {
    format!("{}-", netns.inode)
}

/// Where the next version of `path` is written before it replaces it. A
/// leading dot keeps it out of scans; it is per journal, so two instances
/// never write the same temporary file.
pub fn temp_path(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp"))
}

pub fn create_dir(dir: &Path) -> Result<(), JournalError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| JournalError::Dir {
            path: dir.to_path_buf(),
            source,
        })
}

/// Writes `record` to `path` atomically: a reader (or a crash) sees the
/// old document or the new one, complete, never a mix or a truncation.
pub fn replace(path: &Path, record: &JournalRecord) -> Result<(), JournalError> {
    let write_err = |source| JournalError::Write {
        path: path.to_path_buf(),
        source,
    };
    let tmp = temp_path(path);
    write_synced(&tmp, &record.to_bytes()).map_err(write_err)?;
    // rename(2) swaps the name over in one step.
    fs::rename(&tmp, path).map_err(write_err)?;
    sync_parent(path).map_err(write_err)
}

/// Writes `record` to `path` only if no file of that name exists, also
/// atomically; `Ok(false)` when one does.
pub fn create_new(path: &Path, record: &JournalRecord) -> Result<bool, JournalError> {
    let write_err = |source| JournalError::Write {
        path: path.to_path_buf(),
        source,
    };
    let tmp = temp_path(path);
    write_synced(&tmp, &record.to_bytes()).map_err(write_err)?;
    // link(2) fails with EEXIST instead of replacing, so of two instances
    // starting at once only one gets the journal, and it is complete from
    // the moment it has its name.
    let linked = fs::hard_link(&tmp, path);
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => sync_parent(path).map(|()| true).map_err(write_err),
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(err) => Err(write_err(err)),
    }
}

/// Removes the journal at `path` (and a temporary file a crash may have
/// left next to it); a journal already gone is fine.
pub fn remove(path: &Path) -> Result<(), JournalError> {
    let _ = fs::remove_file(temp_path(path));
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(JournalError::Remove {
                path: path.to_path_buf(),
                source,
            });
        }
    }
    sync_parent(path).map_err(|source| JournalError::Remove {
        path: path.to_path_buf(),
        source,
    })
}

fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)?;
    // The data must be durable before a name points at it: otherwise a
    // power cut after the rename could leave the journal's name on an
    // empty file. (/run is a tmpfs, where this costs nothing; a journal
    // directory on a disk needs it.)
    file.sync_all()
}

/// Makes a rename, link or unlink in `path`'s directory durable.
fn sync_parent(path: &Path) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    File::open(dir)?.sync_all()
}
