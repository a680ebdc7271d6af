//! The control socket: a unix stream socket under `/run/tun2socks/` that
//! answers `stats` with a JSON [`Report`](super::report::Report), for
//! `tun2socks stats`.
//!
//! It is named `<netns inode>-<device>.sock`, like the setup journal, so that
//! `tun2socks stats --netns NAME` finds the instance of a namespace from
//! the outside by the inode of `/run/netns/NAME` (what `ip netns identify`
//! compares), without entering it: a path socket is reachable from any
//! network namespace. Mode 0600: the counters are for root.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener as StdUnixListener, UnixStream as StdUnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tracing::{debug, warn};

use super::Workers;

/// The request a client sends (one line); anything else is answered with
/// an error line, so that the protocol can grow.
pub const STATS_REQUEST: &str = "stats";
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(5);
/// Clients served at once; more are closed at once.
const MAX_CLIENTS: usize = 8;

/// `<dir>/<netns inode>-<device>.sock`.
pub fn socket_path(dir: &Path, netns_inode: u64, device: &str) -> PathBuf {
    dir.join(format!("{netns_inode}-{device}.sock"))
}

/// The inode of the calling thread's network namespace.
pub fn current_netns_inode() -> io::Result<u64> {
    // thread-self: setns moves a thread, and /proc/self shows the main one.
    Ok(fs::metadata("/proc/thread-self/ns/net")?.ino())
}

/// The socket file; removed on drop.
#[derive(Debug)]
pub struct SocketFile {
    path: PathBuf,
}

impl SocketFile {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if let Err(error) = fs::remove_file(&self.path) {
            debug!(path = %self.path.display(), %error, "cannot remove the control socket");
        }
    }
}

/// Binds the control socket of `device` in the current network namespace.
/// A socket file that nobody answers on (left by a killed instance) is
/// replaced; one that answers belongs to a running instance and is an error.
pub fn bind(dir: &Path, device: &str) -> io::Result<(SocketFile, StdUnixListener)> {
    fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    let path = socket_path(dir, current_netns_inode()?, device);
    if path.exists() {
        match StdUnixStream::connect(&path) {
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("{} is served by a running tun2socks", path.display()),
                ));
            }
            Err(_) => fs::remove_file(&path)?,
        }
    }
    let listener = StdUnixListener::bind(&path)?;
    let file = SocketFile { path };
    fs::set_permissions(file.path(), fs::Permissions::from_mode(0o600))?;
    listener.set_nonblocking(true)?;
    Ok((file, listener))
}

pub async fn serve(listener: UnixListener, workers: Workers) {
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CLIENTS));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                warn!(%error, "control socket cannot accept");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            continue;
        };
        let workers = workers.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(EXCHANGE_TIMEOUT, exchange(stream, &workers)).await;
            drop(slot);
        });
    }
}

async fn exchange(stream: UnixStream, workers: &Workers) {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    // A bounded read: a request is one short line.
    let mut reader = BufReader::new(tokio::io::AsyncReadExt::take(read, 256));
    if reader.read_line(&mut line).await.is_err() {
        return;
    }
    let answer = match line.trim() {
        STATS_REQUEST => {
            let report = workers.report().await;
            serde_json::to_string(&report).expect("a report serializes")
        }
        other => format!(
            "{{\"error\":{}}}",
            serde_json::Value::from(format!("unknown request {other:?}"))
        ),
    };
    let _ = write.write_all(answer.as_bytes()).await;
    let _ = write.write_all(b"\n").await;
    let _ = write.shutdown().await;
}
