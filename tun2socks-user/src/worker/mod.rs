//! Per-core workers. Each is one OS thread, pinned to a core, owning one
//! packet port (`crate::device::port`: a TUN queue or an AF_XDP socket, the
//! worker cannot tell), one smoltcp stack, its sessions and their upstream
//! sockets, and a single-threaded async runtime for those sockets. Workers
//! share nothing on the packet path: no locks, no shared atomics; the stack
//! lives in a `RefCell` that only this thread's tasks touch.

mod budget;
mod buffers;
mod device;
pub mod dns;
mod limit_log;
mod recently_closed;
pub mod scheduling;
pub mod session;
pub mod stack;
pub mod stats;
pub mod udp;
mod udp_lane;

use std::cell::{Cell, RefCell};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tracing::{debug, info, info_span, warn};

use crate::device::port::{PacketPort, Port};
use crate::dns::DnsService;
use crate::proxy::Upstream;
pub use scheduling::WorkerPriority;
pub use stack::StackConfig;
pub use stats::WorkerStats;
use std::sync::Arc;
pub use udp::UdpConfig;

/// Packets read from the port before the worker sends what it owes and lets
/// its sessions run.
const READ_BATCH: usize = 64;
/// Packets smoltcp may send per egress call before the worker lets its other
/// tasks (UDP replies, DNS answers, relays) run. At 9000 bytes, 32 packets
/// are about 100 µs of TUN writes on this machine: the most a datagram waits.
/// With TUN offload a GSO packet counts one more per 9000 bytes (see
/// `device::TxToken`), so the bound stays about the same in bytes.
const EGRESS_BUDGET: usize = 32;
/// Upper bound on a sleep with no smoltcp timer pending.
const IDLE_WAKEUP: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub index: usize,
    /// Core to pin to; `None` leaves placement to the scheduler.
    pub cpu: Option<usize>,
    pub stack: StackConfig,
    pub udp: UdpConfig,
    pub upstream: Upstream,
    pub dns: Option<Arc<DnsService>>,
    /// TCP sessions with no data either way for this long are reset.
    pub tcp_idle_timeout: Option<std::time::Duration>,
    /// How the worker's thread competes for its core (`--worker-priority`).
    pub priority: WorkerPriority,
}

/// What a worker's tasks share. Single-threaded by construction.
pub struct Shared {
    pub stack: RefCell<Stack>,
    pub udp: RefCell<UdpTable>,
    pub upstream: Upstream,
    pub tcp_idle_timeout: Option<std::time::Duration>,
    pub dns: Option<Arc<DnsService>>,
    pub dns_stats: RefCell<dns::DnsStats>,
    pub dns_in_flight: Cell<usize>,
    /// Buffers for relayed UDP datagrams, shared by the worker's sessions.
    pub udp_scratch: RefCell<udp::UdpScratch>,
    /// Relay sockets whose replies go before bulk TCP work.
    pub udp_lane: udp_lane::UdpLane,
    /// A relay moved its whole budget in a poll since the worker loop last
    /// looked (bulk TCP is running).
    pub relay_budget_spent: Cell<bool>,
    /// A UDP datagram (DNS included) arrived since the worker loop last
    /// looked (for `--worker-priority auto`).
    pub udp_seen: Cell<bool>,
    /// The worker's port, for packets built outside smoltcp (UDP replies,
    /// DNS answers); whoever sends through it flushes it after its batch
    /// ([`Shared::flush`]), or leaves that to the next egress pass.
    pub port: Rc<Port>,
    egress: Notify,
    /// Whether this worker's TCP connections pipeline the SOCKS5 request
    /// (see [`session::pipelining`]).
    pub pipelining: Cell<Pipelining>,
}

/// What a worker knows about the proxy taking pipelined SOCKS5 requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Pipelining {
    /// Not asked yet (or the proxy could not be reached when asked).
    #[default]
    Unknown,
    Probing,
    Works,
    /// The proxy does not take it, or it is no SOCKS5 proxy.
    No,
}

use stack::{Egress, Ingress, Stack};
use udp::UdpTable;

impl Shared {
    /// Asks the worker loop to run smoltcp's egress soon (after a session
    /// moved data, changed state or freed window).
    pub fn want_egress(&self) {
        self.egress.notify_one();
    }

    /// Flushes the port after a batch of packets built outside smoltcp; a
    /// failed flush counts as a write error. Not to be called while the
    /// stack is borrowed.
    pub fn flush(&self) {
        if self.port.flush().is_err() {
            self.flush_failed();
        }
    }

    #[cold]
    fn flush_failed(&self) {
        self.stack.borrow_mut().stats.tun_write_errors += 1;
    }
}

/// A worker's counters and gauges at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerSnapshot {
    pub stats: WorkerStats,
    pub tcp_sessions: usize,
    pub udp_sessions: usize,
    /// TCP socket buffer capacity handed out (see `--buffer-memory`).
    pub tcp_buffer_bytes: usize,
}

/// Asks a running worker for a snapshot; it answers between two batches of
/// packets, so reading counters never touches the packet path.
pub type SnapshotRequests = mpsc::Sender<oneshot::Sender<WorkerSnapshot>>;

pub struct WorkerHandle {
    pub thread: JoinHandle<anyhow::Result<WorkerSnapshot>>,
    pub snapshots: SnapshotRequests,
}

/// What the control thread wants the workers to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Run,
    /// Refuse new flows, end UDP sessions, let open TCP sessions finish;
    /// stop once none is left.
    Drain,
    /// Reset whatever is still open and stop now.
    Stop,
}

/// Starts worker `config.index` on its own thread. It runs until `phase`
/// says stop (or its sender is dropped), or until a drain has emptied it,
/// and returns its final snapshot.
pub fn spawn(config: WorkerConfig, port: Port, phase: watch::Receiver<Phase>) -> io::Result<WorkerHandle> {
    let (snapshots, requests) = mpsc::channel(4);
    let thread = std::thread::Builder::new()
        .name(format!("worker-{}", config.index))
        .spawn(move || {
            let _span = info_span!("worker", id = config.index).entered();
            if let Some(cpu) = config.cpu
                && let Err(error) = pin_to_cpu(cpu)
            {
                warn!(cpu, %error, "cannot pin worker to its core; running unpinned");
            }
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("building the worker's runtime")?;
            let local = tokio::task::LocalSet::new();
            local.block_on(&runtime, run(config, port, phase, requests))
        })?;
    Ok(WorkerHandle { thread, snapshots })
}

fn pin_to_cpu(cpu: usize) -> io::Result<()> {
    // SAFETY: cpu_set_t is plain old data; CPU_SET stays within it for
    // cpu < CPU_SETSIZE, which the caller's modulo guarantees in practice.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The port as the runtime's reactor sees it.
struct PortFd(Rc<Port>);

impl AsRawFd for PortFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

async fn run(
    config: WorkerConfig,
    port: Port,
    mut phase: watch::Receiver<Phase>,
    mut snapshot_requests: mpsc::Receiver<oneshot::Sender<WorkerSnapshot>>,
) -> anyhow::Result<WorkerSnapshot> {
    let port = Rc::new(port);
    // SAFETY: PortFd holds an Rc of the port, so its fd stays open and the
    // same for the AsyncFd's whole life.
    let port_fd = unsafe { AsyncFd::register_with_interest(PortFd(port.clone()), Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
        .context("registering the packet port with the runtime")?;
    let seed = 0x7432_0000 ^ config.index as u64 ^ u64::from(std::process::id()) << 20;
    let shared = Rc::new(Shared {
        stack: RefCell::new(Stack::new(port.clone(), config.stack.clone(), seed)),
        udp: RefCell::new(UdpTable::new(config.udp.clone())),
        upstream: config.upstream.clone(),
        tcp_idle_timeout: config.tcp_idle_timeout,
        dns: config.dns.clone(),
        dns_stats: RefCell::default(),
        dns_in_flight: Cell::new(0),
        udp_scratch: RefCell::default(),
        udp_lane: udp_lane::UdpLane::new().context("creating the worker's UDP lane")?,
        relay_budget_spent: Cell::new(false),
        udp_seen: Cell::new(false),
        port: port.clone(),
        egress: Notify::new(),
        pipelining: Cell::default(),
    });
    let mut scheduling = scheduling::Scheduling::start(config.priority);
    let mut bulk = false;
    loop {
        if scheduling.tick(shared.udp_seen.replace(false)) {
            shared.stack.borrow_mut().stats.realtime_demotions += 1;
        }
        let delay = shared
            .stack
            .borrow_mut()
            .poll_delay()
            .unwrap_or(IDLE_WAKEUP)
            .min(IDLE_WAKEUP)
            .min(scheduling.next_change().unwrap_or(IDLE_WAKEUP));
        tokio::select! {
            biased;
            changed = phase.changed() => {
                let now = if changed.is_err() { Phase::Stop } else { *phase.borrow() };
                match now {
                    Phase::Run => {}
                    Phase::Drain => {
                        debug!("draining: refusing new flows, ending UDP sessions");
                        shared.stack.borrow_mut().start_draining();
                        shared.udp.borrow_mut().start_draining();
                    }
                    Phase::Stop => break,
                }
            }
            ready = port_fd.readable() => {
                let mut ready = ready.context("waiting on the packet port")?;
                // What ingress sends (ACKs, resets, DNS answers) goes out
                // with the egress pass below, which flushes the port.
                let received = port
                    .recv_batch(READ_BATCH, |packet| ingress(&shared, packet))
                    .context("reading the packet port")?;
                if received < READ_BATCH {
                    ready.clear_ready();
                }
            }
            Some(reply) = snapshot_requests.recv() => {
                let _ = reply.send(snapshot(&shared));
            }
            () = shared.egress.notified() => {}
            () = tokio::time::sleep(delay) => {}
        }
        if bulk {
            serve_udp_lane(&shared);
        }
        let egress = {
            let mut stack = shared.stack.borrow_mut();
            let egress = stack.egress(EGRESS_BUDGET);
            if stack.is_draining() && stack.live_sessions() == 0 {
                break;
            }
            egress
        };
        // Bulk TCP (egress, or a relay) had more than one chunk to move:
        // UDP replies go first. Without bulk work the session tasks deliver
        // them as they come, and the lane would only cost a syscall a round.
        bulk = egress == Egress::BudgetSpent || shared.relay_budget_spent.replace(false);
        if bulk {
            serve_udp_lane(&shared);
            // Come back for the rest, after the runtime has polled its I/O
            // driver and run whatever became ready (yield_now defers the
            // wake-up until then).
            shared.want_egress();
            tokio::task::yield_now().await;
        }
    }
    let last = snapshot(&shared);
    debug!(
        tcp = last.tcp_sessions,
        udp = last.udp_sessions,
        "worker stopping, resetting open sessions"
    );
    shared.stack.borrow_mut().abort_all();
    shared.udp.borrow_mut().clear();
    let port_counters = shared.port.counters();
    if !port_counters.is_empty() {
        info!("port counters worker={} {port_counters}", config.index);
    }
    // The resets just sent count too.
    Ok(WorkerSnapshot {
        stats: snapshot(&shared).stats,
        ..last
    })
}

/// Delivers the UDP replies waiting in the lane (see [`udp_lane`]). A relay
/// socket that fails is left to its session's task, which sees the same
/// error and ends the session.
fn serve_udp_lane(shared: &Shared) {
    for member in shared.udp_lane.ready() {
        udp::receive_now(shared, &member.socket, member.client, member.framing);
    }
}

fn snapshot(shared: &Shared) -> WorkerSnapshot {
    let stack = shared.stack.borrow();
    let udp = shared.udp.borrow();
    let mut stats = stack.stats.clone();
    stats.udp = udp.stats.clone();
    stats.dns = shared.dns_stats.borrow().clone();
    stats.offload = shared.port.offload_stats();
    WorkerSnapshot {
        stats,
        tcp_sessions: stack.live_sessions(),
        udp_sessions: udp.live_sessions(),
        tcp_buffer_bytes: stack.buffer_bytes(),
    }
}

fn ingress(shared: &Rc<Shared>, packet: &mut [u8]) {
    let next = shared.stack.borrow_mut().ingress(packet);
    match next {
        Ingress::Done => {}
        Ingress::NewTcp(key) => {
            tokio::task::spawn_local(session::run(shared.clone(), key));
        }
        Ingress::Udp { key, payload } => {
            shared.udp_seen.set(true);
            udp::ingress(shared, key, &packet[payload]);
        }
    }
}
