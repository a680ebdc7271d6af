//! Counters of a running daemon, for Prometheus (`--metrics ADDR`) and for
//! `tun2socks stats` (a unix socket under `/run/tun2socks/`).
//!
//! Both run on the control thread's runtime and read the workers the same
//! way: each request sends every worker a snapshot request
//! (`WorkerHandle::snapshots`), which the worker answers between two
//! batches of packets with a copy of its plain-integer counters. A worker
//! that does not answer within [`SNAPSHOT_TIMEOUT`] is reported as silent
//! rather than holding up the scrape. Nothing is kept between requests,
//! and the packet path takes no lock and touches no shared atomic for it.

mod catalog;
mod control;
mod exposition;
mod http;
pub mod report;
pub mod stats;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::future::join_all;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use std::sync::Arc;

use crate::cli::{self, Cli};
use crate::worker::{SnapshotRequests, WorkerHandle, WorkerSnapshot};
pub use control::socket_path;
pub use exposition::{EbpfCounter, EbpfCounters, Scrape};
use report::{Report, WorkerReport};

/// Where control sockets live (shared with the setup journals).
pub const CONTROL_DIR: &str = "/run/tun2socks";
/// How long a request waits for the workers' snapshots.
pub const SNAPSHOT_TIMEOUT: Duration = Duration::from_millis(500);

/// A cheap handle on the running workers, for the endpoints' tasks.
#[derive(Clone)]
pub struct Workers {
    requests: Vec<SnapshotRequests>,
    device: String,
    started: Instant,
    /// The steering program's per-CPU counters, when it is attached.
    ebpf: Option<Arc<EbpfCounters>>,
}

impl Workers {
    pub fn of(handles: &[WorkerHandle], device: &str, ebpf: Option<Arc<EbpfCounters>>) -> Workers {
        Workers {
            requests: handles.iter().map(|h| h.snapshots.clone()).collect(),
            device: device.to_owned(),
            started: Instant::now(),
            ebpf,
        }
    }

    /// One snapshot per worker, asked of all at once; `None` for a worker
    /// that did not answer within [`SNAPSHOT_TIMEOUT`].
    pub async fn snapshots(&self) -> Vec<Option<WorkerSnapshot>> {
        join_all(self.requests.iter().map(|requests| async move {
            let (reply, answer) = oneshot::channel();
            let asked = async {
                requests.send(reply).await.ok()?;
                answer.await.ok()
            };
            tokio::time::timeout(SNAPSHOT_TIMEOUT, asked).await.ok().flatten()
        }))
        .await
    }

    pub async fn exposition(&self) -> String {
        Scrape {
            version: env!("CARGO_PKG_VERSION"),
            ebpf_build_id: cli::ebpf_build_id(),
            workers: self.snapshots().await,
            ebpf: exposition::ebpf_counters(self.ebpf.as_deref()),
        }
        .encode()
    }

    pub async fn report(&self) -> Report {
        let snapshots = self.snapshots().await;
        Report {
            version: cli::long_version().to_owned(),
            pid: std::process::id(),
            device: self.device.clone(),
            uptime_secs: self.started.elapsed().as_secs_f64(),
            workers: snapshots
                .iter()
                .enumerate()
                .map(|(i, s)| WorkerReport::of(i, s.as_ref()))
                .collect(),
        }
    }
}

/// The metrics listener and the control socket, bound at start (so that a
/// taken port fails the start before the network is touched) and served
/// once the workers run.
#[derive(Debug)]
pub struct Endpoints {
    metrics: Option<(SocketAddr, std::net::TcpListener)>,
    control: Option<(control::SocketFile, std::os::unix::net::UnixListener)>,
    device: String,
}

impl Endpoints {
    /// Binds `--metrics` (if given; an error if it cannot be bound) and the
    /// control socket (a warning if it cannot be: `stats` is a convenience).
    /// Call inside the target network namespace.
    pub fn bind(cli: &Cli) -> anyhow::Result<Endpoints> {
        let metrics = match cli.metrics {
            Some(addr) => {
                let listener = std::net::TcpListener::bind(addr)
                    .with_context(|| format!("binding the metrics endpoint --metrics {addr}"))?;
                listener.set_nonblocking(true)?;
                Some((listener.local_addr()?, listener))
            }
            None => None,
        };
        let control = match control::bind(Path::new(CONTROL_DIR), &cli.device.name) {
            Ok(bound) => Some(bound),
            Err(error) => {
                warn!(%error, "no control socket: `tun2socks stats` will not reach this instance");
                None
            }
        };
        Ok(Endpoints {
            metrics,
            control,
            device: cli.device.name.clone(),
        })
    }

    /// Starts serving on the current runtime; stops when the result drops.
    pub fn serve(self, handles: &[WorkerHandle], ebpf: Option<Arc<EbpfCounters>>) -> Serving {
        let workers = Workers::of(handles, &self.device, ebpf);
        let mut tasks = Vec::new();
        if let Some((addr, listener)) = self.metrics {
            match tokio::net::TcpListener::from_std(listener) {
                Ok(listener) => {
                    info!(%addr, "serving Prometheus metrics at http://{addr}/metrics");
                    tasks.push(tokio::spawn(http::serve(listener, workers.clone())));
                }
                Err(error) => warn!(%error, "cannot serve metrics"),
            }
        }
        let mut socket = None;
        if let Some((file, listener)) = self.control {
            match tokio::net::UnixListener::from_std(listener) {
                Ok(listener) => {
                    info!(socket = %file.path().display(), "control socket for `tun2socks stats`");
                    tasks.push(tokio::spawn(control::serve(listener, workers)));
                    socket = Some(file);
                }
                Err(error) => warn!(%error, "cannot serve the control socket"),
            }
        }
        Serving { tasks, _socket: socket }
    }
}

/// The running endpoints; dropping it stops them and removes the socket.
#[derive(Debug)]
pub struct Serving {
    tasks: Vec<JoinHandle<()>>,
    _socket: Option<control::SocketFile>,
}

impl Drop for Serving {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}
