//! The implementations under test, and starting/stopping one in the lab.

use std::path::PathBuf;
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use lab::Daemon;
use lab::process::Process;
use lab::servers::dante_url;
use serde::{Deserialize, Serialize};

use super::peer;
use super::testbed::{Routed, Testbed, dante, target};

/// What carries the traffic from `app` to `srv`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Kind {
    /// Kernel baseline 1: `proxy` forwards, no SOCKS server in the path.
    Routed,
    /// Kernel baseline 2: the client speaks SOCKS5 to dante itself, no TUN.
    Socks,
    /// This project, multi-queue TUN mode (TUN offload at its default, on).
    Tun2socks { workers: u16 },
    /// This project, multi-queue TUN mode with `--tun-offload off`: one
    /// packet per read or write.
    Tun2socksNoOffload { workers: u16 },
    /// This project, multi-queue TUN mode with `--worker-priority normal`:
    /// workers share their cores like any process.
    Tun2socksNormalPriority { workers: u16 },
    /// This project in host mode: a veth pair served over AF_XDP
    /// (`--device veth://NAME`).
    Tun2socksXdp { workers: u16 },
    /// The peer, tun2proxy.
    Tun2proxy,
}

/// An implementation in one configuration. Kernel baselines have no TUN,
/// so no MTU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Variant {
    #[serde(flatten)]
    pub kind: Kind,
    pub mtu: Option<u32>,
}

impl Variant {
    pub fn label(&self) -> String {
        let mtu = self.mtu.map(|m| format!(" mtu{m}")).unwrap_or_default();
        match self.kind {
            Kind::Routed => "kernel routed".into(),
            Kind::Socks => "kernel SOCKS".into(),
            Kind::Tun2socks { workers } => format!("tun2socks w{workers}{mtu}"),
            Kind::Tun2socksNoOffload { workers } => format!("tun2socks-offload-off w{workers}{mtu}"),
            Kind::Tun2socksNormalPriority { workers } => format!("tun2socks-normal-prio w{workers}{mtu}"),
            Kind::Tun2socksXdp { workers } => format!("tun2socks-xdp w{workers}{mtu}"),
            Kind::Tun2proxy => format!("tun2proxy{mtu}"),
        }
    }

    /// Whether a user-space process of its own carries the traffic (so
    /// memory and CPU per GB are its own).
    pub fn is_tunnel(&self) -> bool {
        matches!(
            self.kind,
            Kind::Tun2socks { .. }
                | Kind::Tun2socksNoOffload { .. }
                | Kind::Tun2socksNormalPriority { .. }
                | Kind::Tun2socksXdp { .. }
                | Kind::Tun2proxy
        )
    }
}

/// The largest MTU of host mode (the daemon caps larger ones to it):
/// `tun2socks::host_mode::MAX_MTU`.
pub const XDP_MAX_MTU: u32 = 3506;

/// Every variant of a run, in the order of round 0. `xdp_workers`: the
/// worker counts host mode (AF_XDP) is measured with, at each MTU capped
/// to [`XDP_MAX_MTU`]. `offload_off_workers`: the worker counts the TUN
/// daemon is measured with `--tun-offload off` too; `normal_priority_workers`:
/// with `--worker-priority normal` too.
pub fn variants(
    workers: &[u16],
    xdp_workers: &[u16],
    offload_off_workers: &[u16],
    normal_priority_workers: &[u16],
    mtus: &[u32],
    peer: bool,
) -> Vec<Variant> {
    let mut all = vec![
        Variant {
            kind: Kind::Routed,
            mtu: None,
        },
        Variant {
            kind: Kind::Socks,
            mtu: None,
        },
    ];
    for &mtu in mtus {
        for &w in workers {
            all.push(Variant {
                kind: Kind::Tun2socks { workers: w },
                mtu: Some(mtu),
            });
        }
        for &w in offload_off_workers {
            all.push(Variant {
                kind: Kind::Tun2socksNoOffload { workers: w },
                mtu: Some(mtu),
            });
        }
        for &w in normal_priority_workers {
            all.push(Variant {
                kind: Kind::Tun2socksNormalPriority { workers: w },
                mtu: Some(mtu),
            });
        }
        for &w in xdp_workers {
            let xdp = Variant {
                kind: Kind::Tun2socksXdp { workers: w },
                mtu: Some(mtu.min(XDP_MAX_MTU)),
            };
            if !all.contains(&xdp) {
                all.push(xdp);
            }
        }
        if peer {
            all.push(Variant {
                kind: Kind::Tun2proxy,
                mtu: Some(mtu),
            });
        }
    }
    all
}

/// The binaries a run uses.
pub struct Binaries {
    pub daemon: PathBuf,
    pub load: PathBuf,
    pub peer: Option<PathBuf>,
}

/// A started implementation; stopped (and its lab changes undone) on drop.
pub struct Running<'a> {
    via_socks: bool,
    what: What<'a>,
}

enum What<'a> {
    Kernel(Option<Routed<'a>>),
    Tun2socks(Daemon<'a>),
    Peer(Process),
}

impl<'a> Running<'a> {
    /// Starts `variant` and waits (bounded) until a connection gets through it.
    pub fn start(bed: &'a Testbed, bins: &Binaries, variant: &Variant) -> Result<Self> {
        let what = match variant.kind {
            Kind::Routed => What::Kernel(Some(bed.routed()?)),
            Kind::Socks => What::Kernel(None),
            Kind::Tun2socks { workers }
            | Kind::Tun2socksNoOffload { workers }
            | Kind::Tun2socksNormalPriority { workers }
            | Kind::Tun2socksXdp { workers } => {
                let mtu = variant.mtu.context("tun2socks needs an MTU")?.to_string();
                let mut args = vec!["--workers".to_owned(), workers.to_string(), "--mtu".to_owned(), mtu];
                // Named explicitly: the default (auto) picks by MTU.
                let device = match variant.kind {
                    Kind::Tun2socksXdp { .. } => "veth://t2s0",
                    _ => "tun://tun2socks0",
                };
                args.extend(["--device".to_owned(), device.to_owned()]);
                match variant.kind {
                    Kind::Tun2socksNoOffload { .. } => args.extend(["--tun-offload".to_owned(), "off".to_owned()]),
                    Kind::Tun2socksNormalPriority { .. } => {
                        args.extend(["--worker-priority".to_owned(), "normal".to_owned()]);
                    }
                    _ => {}
                }
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                let mut cmd = Daemon::command_with(&bins.daemon, bed.lab(), &dante_url(false), &args);
                cmd.env("RUST_LOG", "info");
                What::Tun2socks(Daemon::start_command(bed.lab(), cmd)?)
            }
            Kind::Tun2proxy => {
                let binary = bins.peer.as_ref().context("tun2proxy is not installed")?;
                let mtu = variant.mtu.context("tun2proxy needs an MTU")?;
                What::Peer(peer::start(bed, binary, mtu)?)
            }
        };
        let mut running = Running {
            via_socks: variant.kind == Kind::Socks,
            what,
        };
        running.wait_path(bed, variant)?;
        Ok(running)
    }

    /// The load tool's `--to` (and `--socks5`) arguments for this path.
    pub fn path_args(&self) -> Vec<String> {
        let mut args = vec!["--to".to_owned(), target().to_string()];
        if self.via_socks {
            args.extend(["--socks5".to_owned(), dante().to_string()]);
        }
        args
    }

    /// The implementation's own process, if it has one.
    pub fn pid(&self) -> Option<u32> {
        match &self.what {
            What::Kernel(_) => None,
            What::Tun2socks(daemon) => Some(daemon.pid()),
            What::Peer(process) => Some(process.pid()),
        }
    }

    /// Fails, with its log, if the implementation's process has exited.
    pub fn ensure_running(&mut self) -> Result<()> {
        match &mut self.what {
            What::Kernel(_) => Ok(()),
            What::Tun2socks(daemon) => daemon.ensure_running(),
            What::Peer(process) => process.ensure_running(),
        }
    }

    /// One successful connect + echo through the path, retried for a while
    /// (routes and devices settle).
    fn wait_path(&mut self, bed: &Testbed, variant: &Variant) -> Result<()> {
        let path = self.path_args();
        bed.wait_for_path(&variant.label(), &path, || self.ensure_running())
    }

    /// Stops the implementation: SIGTERM, and a second one if it is still
    /// draining after a few seconds; fails if it had crashed.
    pub fn stop(mut self) -> Result<()> {
        self.ensure_running()?;
        match self.what {
            What::Kernel(routed) => drop(routed),
            What::Tun2socks(mut daemon) => {
                // SAFETY: kill(2) on our own, not yet reaped child.
                unsafe { libc::kill(daemon.pid() as i32, libc::SIGTERM) };
                let deadline = Instant::now() + Duration::from_secs(3);
                while Instant::now() < deadline && daemon.ensure_running().is_ok() {
                    sleep(Duration::from_millis(20));
                }
                if daemon.ensure_running().is_ok() {
                    daemon.stop()?;
                }
            }
            What::Peer(mut process) => {
                process.terminate(Duration::from_secs(5))?;
            }
        }
        Ok(())
    }
}
