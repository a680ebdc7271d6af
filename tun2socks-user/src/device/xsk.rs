//! AF_XDP sockets: Ethernet frames in and out through shared rings, in
//! batches, without a syscall per frame.
//!
//! One [`XskSocket`] per worker, bound to one (interface, rx queue) pair,
//! with its own UMEM and its own fill, completion, RX and TX rings (built on
//! xsk-rs 0.11, i.e. libxdp's ring helpers; libxdp's own XDP program is never
//! loaded: `tun2socks::xdp` attaches the `classify` program with aya and puts
//! the socket into its `XSKS` map at the queue index).
//!
//! The UMEM is split once: the first [`XskConfig::rx_frames`] frames belong
//! to the receive side and cycle fill ring → RX ring → [`XskSocket::recv_batch`]
//! → fill ring; the other [`XskConfig::tx_frames`] cycle free list →
//! [`XskSocket::send`] (one copy) → TX ring → completion ring → free list.
//! Every ring is as large as the frames that can be in it, so giving RX
//! frames back to the fill ring never fails and the completion ring never
//! overflows. The two cycles share nothing but the UMEM (disjoint frames of
//! it) and the fd, so [`XskSocket::split`] can separate them into a
//! receive half ([`XskRx`]) and a transmit half ([`XskTx`]): a caller may
//! then send while it still holds received frames (the packet port,
//! `device::port::XskPort`, does).
//!
//! Modes: [`XskMode::Auto`] binds with `XDP_ZEROCOPY` first and, if the
//! driver refuses, binds a fresh UMEM in copy mode (veth, TAP and most
//! virtual devices), logging which one it got. `XDP_USE_NEED_WAKEUP` is
//! always set: the kernel is kicked (`sendto`/`recvfrom`) only when a ring
//! says it needs it. In copy mode TX frames move only during a `sendto`,
//! at most 32 per call, so [`XskSocket::flush`] kicks until the TX ring is
//! empty or stops making progress.
//!
//! Readiness: the socket fd ([`AsRawFd`]) polls readable when the RX ring has
//! frames, so it can sit in an epoll set or a tokio `AsyncFd`.
//!
//! Checksums: frames that a local application sends through a veth with TX
//! checksum offload on (veth's default) arrive with *partial* TCP/UDP
//! checksums (only the pseudo-header sum, `CHECKSUM_PARTIAL`), because no
//! NIC ever completes them. Either turn offload off on the sending end
//! (`ethtool -K PEER tx off`) or do not verify received L4 checksums.
//! Frames sent here need complete checksums: nothing fills them in.

use std::io::{self, Write as _};
use std::num::NonZeroU32;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};

use xsk_rs::config::{BindFlags, FrameSize, Interface, LibxdpFlags, QueueSize, SocketConfig, UmemConfig};
use xsk_rs::socket::SocketCreateError;
use xsk_rs::umem::UmemCreateError;
use xsk_rs::{CompQueue, FillQueue, FrameDesc, RxQueue, Socket, TxQueue, Umem};

/// How copy-mode `sendto` batches: the kernel's `TX_BATCH_SIZE`.
const KERNEL_TX_BATCH: u32 = 32;

/// Which AF_XDP mode to bind in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum XskMode {
    /// Zero-copy if the driver supports it, copy mode otherwise.
    #[default]
    Auto,
    /// Zero-copy or fail.
    ZeroCopy,
    /// Copy mode, even where zero-copy would work.
    Copy,
}

/// The mode a socket ended up bound in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BoundMode {
    ZeroCopy,
    Copy,
}

impl BoundMode {
    pub fn name(self) -> &'static str {
        match self {
            BoundMode::ZeroCopy => "zero-copy",
            BoundMode::Copy => "copy",
        }
    }
}

/// Sizes of one socket's UMEM and rings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XskConfig {
    /// Bytes per UMEM frame, a power of two from 2048 to 4096 (the page
    /// size). 256 bytes of each are the kernel's XDP headroom; the rest
    /// holds one Ethernet frame.
    pub frame_size: u32,
    /// Frames for receiving; also the size of the fill and RX rings (a
    /// power of two).
    pub rx_frames: u32,
    /// Frames for sending; also the size of the TX and completion rings (a
    /// power of two).
    pub tx_frames: u32,
    pub mode: XskMode,
}

impl Default for XskConfig {
    /// 4096-byte frames (page-sized: what zero-copy drivers handle best,
    /// and room for frames up to 3840 bytes), 2048 for each direction:
    /// 16 MiB of UMEM per socket.
    fn default() -> Self {
        Self {
            frame_size: 4096,
            rx_frames: 2048,
            tx_frames: 2048,
            mode: XskMode::Auto,
        }
    }
}

impl XskConfig {
    fn validate(&self) -> Result<(), XskError> {
        let bad = |why: String| Err(XskError::Config(why));
        if !(2048..=4096).contains(&self.frame_size) || !self.frame_size.is_power_of_two() {
            return bad(format!("frame size {} is not 2048 or 4096", self.frame_size));
        }
        for (what, n) in [("rx_frames", self.rx_frames), ("tx_frames", self.tx_frames)] {
            if !n.is_power_of_two() || n < 64 {
                return bad(format!("{what} = {n} is not a power of two of at least 64"));
            }
        }
        if self.rx_frames.checked_add(self.tx_frames).is_none() {
            return bad("rx_frames + tx_frames overflows".into());
        }
        Ok(())
    }
}

/// Errors creating or driving an AF_XDP socket.
#[derive(Debug, thiserror::Error)]
pub enum XskError {
    #[error("invalid AF_XDP socket configuration: {0}")]
    Config(String),
    #[error("interface name {0:?} contains a NUL byte")]
    BadName(String),
    #[error("cannot create the UMEM for {ifname} queue {queue} ({frames} frames of {frame_size} bytes)")]
    Umem {
        ifname: String,
        queue: u32,
        frames: u32,
        frame_size: u32,
        #[source]
        source: UmemCreateError,
    },
    #[error(
        "cannot bind an AF_XDP socket to {ifname} queue {queue} in {mode} mode{}",
        bind_hint(source)
    )]
    Bind {
        ifname: String,
        queue: u32,
        mode: &'static str,
        #[source]
        source: SocketCreateError,
    },
    #[error("the AF_XDP socket on {ifname} queue {queue} came without fill and completion rings")]
    NoFillRing { ifname: String, queue: u32 },
    #[error("a frame of {len} bytes does not fit a UMEM frame ({capacity} bytes)")]
    FrameTooLarge { len: usize, capacity: usize },
    /// Every TX frame is in flight: back off until [`XskSocket::flush`]
    /// has reaped completions. Cheap to construct (no allocation): it is
    /// the hot path's backpressure signal.
    #[error("the AF_XDP TX ring is full ({in_flight} frames in flight)")]
    TxFull { in_flight: u32 },
    #[error("kicking AF_XDP TX on {ifname} queue {queue} (sendto) failed")]
    Kick {
        ifname: String,
        queue: u32,
        #[source]
        source: io::Error,
    },
    #[error("reading the XDP statistics of {ifname} queue {queue} failed")]
    Statistics {
        ifname: String,
        queue: u32,
        #[source]
        source: io::Error,
    },
}

fn bind_hint(error: &SocketCreateError) -> String {
    let errno = std::error::Error::source(error)
        .and_then(|e| e.downcast_ref::<io::Error>())
        .and_then(io::Error::raw_os_error);
    let hint = match errno {
        Some(libc::EPERM) => " (needs CAP_NET_RAW, or root)",
        Some(libc::ENODEV) => " (no such interface in this network namespace)",
        Some(libc::EBUSY) => " (another AF_XDP socket is bound to that queue)",
        Some(libc::EINVAL) => " (no such queue on the interface?)",
        Some(libc::EOPNOTSUPP) => " (the driver does not support it)",
        _ => "",
    };
    match errno {
        Some(errno) => format!(": {}{hint}", io::Error::from_raw_os_error(errno)),
        None => format!(": {error}"),
    }
}

/// What one socket has done, counted in user space.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct XskStats {
    pub rx_frames: u64,
    pub tx_frames: u64,
    /// [`XskSocket::send`] calls refused with [`XskError::TxFull`].
    pub tx_full: u64,
    /// `sendto` calls that woke the kernel for TX.
    pub tx_kicks: u64,
    /// `recvfrom` calls that woke the driver for the fill ring.
    pub rx_wakeups: u64,
}

/// The kernel's own counters of a socket (`XDP_STATISTICS`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct XskKernelStats {
    /// Frames dropped for reasons other than a full RX or empty fill ring.
    pub rx_dropped: u64,
    pub rx_invalid_descs: u64,
    pub tx_invalid_descs: u64,
    /// Frames dropped because the RX ring was full.
    pub rx_ring_full: u64,
    /// Times the fill ring was empty when a frame arrived.
    pub rx_fill_ring_empty_descs: u64,
    pub tx_ring_empty_descs: u64,
}

/// One AF_XDP socket with its own UMEM; see the module documentation.
///
/// It is two halves that share only the fd and the UMEM (each its own
/// frames): [`XskRx`] (RX and fill rings) and [`XskTx`] (TX and completion
/// rings). [`XskSocket::split`] separates them, so that frames can be sent
/// while received ones are still being looked at.
pub struct XskSocket {
    rx: XskRx,
    tx: XskTx,
    mode: BoundMode,
}

/// The receive half of an [`XskSocket`]: the RX and fill rings and the
/// frames that cycle through them.
pub struct XskRx {
    // The rings first: they are dropped before the UMEM they point into
    // (xsk-rs keeps what libxdp dereferences alive on its own as well).
    rx: RxQueue,
    fill: FillQueue,
    umem: Umem,
    ifname: String,
    queue: u32,
    /// Scratch for the RX ring's descriptors, one batch long.
    descs: Vec<FrameDesc>,
    /// Only the receive counters are used.
    stats: XskStats,
}

/// The transmit half of an [`XskSocket`]: the TX and completion rings and
/// the frames that cycle through them.
pub struct XskTx {
    tx: TxQueue,
    comp: CompQueue,
    umem: Umem,
    ifname: String,
    queue: u32,
    /// TX frames, and the size of the TX and completion rings.
    size: u32,
    /// Bytes of one frame that hold packet data.
    capacity: usize,
    /// TX frames that are neither in the TX ring nor in the kernel.
    free: Vec<FrameDesc>,
    /// Scratch for the completion ring's descriptors.
    comp_descs: Vec<FrameDesc>,
    /// Frames put on the TX ring since the last kick.
    unkicked: u32,
    /// Only the transmit counters are used.
    stats: XskStats,
}

impl std::fmt::Debug for XskSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XskSocket")
            .field("ifname", &self.rx.ifname)
            .field("queue", &self.rx.queue)
            .field("fd", &self.as_raw_fd())
            .field("mode", &self.mode)
            .field("free_tx", &self.tx.free.len())
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for XskRx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XskRx")
            .field("ifname", &self.ifname)
            .field("queue", &self.queue)
            .field("fd", &self.as_raw_fd())
            .field("frames", &self.stats.rx_frames)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for XskTx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XskTx")
            .field("ifname", &self.ifname)
            .field("queue", &self.queue)
            .field("fd", &self.as_raw_fd())
            .field("free", &self.free.len())
            .field("frames", &self.stats.tx_frames)
            .finish_non_exhaustive()
    }
}

impl XskSocket {
    /// The most frames one [`XskSocket::recv_batch`] call hands over.
    pub const MAX_BATCH: usize = XskRx::MAX_BATCH;

    /// Creates a socket with its own UMEM and binds it to `queue` of
    /// `ifname` (an interface of the calling thread's network namespace).
    /// The fill ring is filled, so frames flow as soon as the XDP program
    /// redirects to the socket.
    pub fn bind(ifname: &str, queue: u32, config: &XskConfig) -> Result<Self, XskError> {
        config.validate()?;
        let socket = match config.mode {
            XskMode::Copy => Self::bind_in(ifname, queue, config, BoundMode::Copy)?,
            XskMode::ZeroCopy => Self::bind_in(ifname, queue, config, BoundMode::ZeroCopy)?,
            XskMode::Auto => match Self::bind_in(ifname, queue, config, BoundMode::ZeroCopy) {
                Ok(socket) => socket,
                Err(error @ XskError::Bind { .. }) => {
                    tracing::debug!(%error, "zero-copy AF_XDP unavailable, binding in copy mode");
                    // A failed bind leaves the first UMEM's socket fd with
                    // its rings set up, which cannot be redone: start over
                    // with a fresh UMEM.
                    Self::bind_in(ifname, queue, config, BoundMode::Copy)?
                }
                Err(error) => return Err(error),
            },
        };
        tracing::info!(
            ifname,
            queue,
            fd = socket.as_raw_fd(),
            mode = socket.mode.name(),
            frame_size = config.frame_size,
            rx_frames = config.rx_frames,
            tx_frames = config.tx_frames,
            "AF_XDP socket bound"
        );
        Ok(socket)
    }

    fn bind_in(ifname: &str, queue: u32, config: &XskConfig, mode: BoundMode) -> Result<Self, XskError> {
        let size = |n: u32| QueueSize::new(n).map_err(|e| XskError::Config(e.to_string()));
        let frame_size = FrameSize::new(config.frame_size).map_err(|e| XskError::Config(e.to_string()))?;
        let umem_config = UmemConfig::builder()
            .frame_size(frame_size)
            .fill_queue_size(size(config.rx_frames)?)
            .comp_queue_size(size(config.tx_frames)?)
            .build()
            .map_err(|e| XskError::Config(e.to_string()))?;
        let frames = config.rx_frames + config.tx_frames;
        let (umem, mut descs) =
            Umem::new(umem_config, NonZeroU32::new(frames).expect("validated"), false).map_err(|source| {
                XskError::Umem {
                    ifname: ifname.to_string(),
                    queue,
                    frames,
                    frame_size: config.frame_size,
                    source,
                }
            })?;

        let mode_flag = match mode {
            BoundMode::ZeroCopy => BindFlags::XDP_ZEROCOPY,
            BoundMode::Copy => BindFlags::XDP_COPY,
        };
        let socket_config = SocketConfig::builder()
            .rx_queue_size(size(config.rx_frames)?)
            .tx_queue_size(size(config.tx_frames)?)
            .libxdp_flags(LibxdpFlags::XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD)
            .bind_flags(mode_flag | BindFlags::XDP_USE_NEED_WAKEUP)
            .build();
        let interface: Interface = ifname.parse().map_err(|_| XskError::BadName(ifname.to_string()))?;
        // SAFETY: the UMEM is this socket's alone (never shared), and
        // libxdp's program loading is inhibited all the same.
        let (tx, rx, rings) =
            unsafe { Socket::new(socket_config, &umem, &interface, queue) }.map_err(|source| XskError::Bind {
                ifname: ifname.to_string(),
                queue,
                mode: mode.name(),
                source,
            })?;
        let (mut fill, comp) = rings.ok_or_else(|| XskError::NoFillRing {
            ifname: ifname.to_string(),
            queue,
        })?;

        let free_tx = descs.split_off(config.rx_frames as usize);
        // SAFETY: the descriptors are this UMEM's and in nobody's hands yet.
        let filled = unsafe { fill.produce(&descs) };
        debug_assert_eq!(filled, descs.len(), "the fill ring holds every RX frame");

        let mut socket = Self {
            rx: XskRx {
                rx,
                fill,
                umem: umem.clone(),
                ifname: ifname.to_string(),
                queue,
                descs: vec![FrameDesc::default(); XskRx::MAX_BATCH],
                stats: XskStats::default(),
            },
            tx: XskTx {
                tx,
                comp,
                capacity: umem_config.mtu() as usize,
                umem,
                ifname: ifname.to_string(),
                queue,
                size: config.tx_frames,
                free: free_tx,
                comp_descs: vec![FrameDesc::default(); config.tx_frames as usize],
                unkicked: 0,
                stats: XskStats::default(),
            },
            mode,
        };
        socket.mode = socket.query_mode().unwrap_or(mode);
        if socket.rx.fill.needs_wakeup() {
            socket.rx.wake_rx();
        }
        Ok(socket)
    }

    /// The mode the kernel reports for the bound socket (`XDP_OPTIONS`).
    fn query_mode(&self) -> io::Result<BoundMode> {
        let mut options = libc::xdp_options { flags: 0 };
        let mut len = std::mem::size_of::<libc::xdp_options>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `options`.
        let rc = unsafe {
            libc::getsockopt(
                self.as_raw_fd(),
                libc::SOL_XDP,
                libc::XDP_OPTIONS,
                (&mut options as *mut libc::xdp_options).cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(if options.flags & libc::XDP_OPTIONS_ZEROCOPY != 0 {
            BoundMode::ZeroCopy
        } else {
            BoundMode::Copy
        })
    }

    /// Separates the receive and the transmit half. Both keep the socket's
    /// fd (and UMEM) open; the socket is closed when both are dropped.
    pub fn split(self) -> (XskRx, XskTx) {
        (self.rx, self.tx)
    }

    pub fn ifname(&self) -> &str {
        &self.rx.ifname
    }

    /// The rx queue index the socket is bound to: its key in `XSKS`.
    pub fn queue(&self) -> u32 {
        self.rx.queue
    }

    pub fn mode(&self) -> BoundMode {
        self.mode
    }

    /// The largest frame [`XskSocket::send`] takes (and the largest one
    /// the socket can receive).
    pub fn frame_capacity(&self) -> usize {
        self.tx.capacity
    }

    pub fn stats(&self) -> XskStats {
        XskStats {
            rx_frames: self.rx.stats.rx_frames,
            rx_wakeups: self.rx.stats.rx_wakeups,
            tx_frames: self.tx.stats.tx_frames,
            tx_full: self.tx.stats.tx_full,
            tx_kicks: self.tx.stats.tx_kicks,
        }
    }

    /// TX frames handed to the kernel and not yet completed.
    pub fn tx_in_flight(&self) -> u32 {
        self.tx.in_flight()
    }

    /// See [`XskRx::recv_batch`].
    pub fn recv_batch(&mut self, max: usize, f: impl FnMut(&mut [u8])) -> usize {
        self.rx.recv_batch(max, f)
    }

    /// See [`XskTx::send`].
    pub fn send(&mut self, frame: &[u8]) -> Result<(), XskError> {
        self.tx.send(frame)
    }

    /// See [`XskTx::flush`].
    pub fn flush(&mut self) -> Result<(), XskError> {
        self.tx.flush()
    }

    /// The kernel's drop and error counters for this socket.
    pub fn kernel_stats(&self) -> Result<XskKernelStats, XskError> {
        self.rx.kernel_stats()
    }
}

impl XskRx {
    /// The most frames one [`XskRx::recv_batch`] call hands over.
    pub const MAX_BATCH: usize = 256;

    /// The rx queue index the socket is bound to.
    pub fn queue(&self) -> u32 {
        self.queue
    }

    /// The receive counters (the transmit ones are zero here).
    pub fn stats(&self) -> XskStats {
        self.stats
    }

    /// Hands up to `max` received frames (at most [`Self::MAX_BATCH`]) to
    /// `f`, one Ethernet frame each, and gives their memory back to the fill
    /// ring afterwards. Returns how many there were; 0 when the RX ring is
    /// empty (wait for the fd to poll readable).
    pub fn recv_batch(&mut self, max: usize, mut f: impl FnMut(&mut [u8])) -> usize {
        let max = max.min(self.descs.len());
        // SAFETY: the descriptors are filled in from this socket's RX ring.
        let n = unsafe { self.rx.consume(&mut self.descs[..max]) };
        if n == 0 {
            if self.fill.needs_wakeup() {
                self.wake_rx();
            }
            return 0;
        }
        for desc in &mut self.descs[..n] {
            // SAFETY: the kernel handed this frame over through the RX
            // ring; it is in no ring until it is produced to the fill ring
            // below, after `f` is done with it. RX frames are never TX
            // frames, so the transmit half never touches it.
            let mut data = unsafe { self.umem.data_mut(desc) };
            f(data.contents_mut());
        }
        // SAFETY: this UMEM's frames, just consumed and no longer used.
        let back = unsafe { self.fill.produce(&self.descs[..n]) };
        // The fill ring is as large as all RX frames together, so there is
        // always room for those we held.
        debug_assert_eq!(back, n, "fill ring refused RX frames");
        if back != n {
            tracing::error!(frames = n, queue = self.queue, "AF_XDP fill ring refused RX frames");
        }
        if self.fill.needs_wakeup() {
            self.wake_rx();
        }
        self.stats.rx_frames += n as u64;
        n
    }

    fn wake_rx(&mut self) {
        self.stats.rx_wakeups += 1;
        // SAFETY: a zero-length recvfrom on our own socket fd; it only
        // wakes the driver to look at the fill ring.
        unsafe {
            libc::recvfrom(
                self.as_raw_fd(),
                std::ptr::null_mut(),
                0,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            );
        }
    }

    /// The kernel's drop and error counters for this socket.
    pub fn kernel_stats(&self) -> Result<XskKernelStats, XskError> {
        let s = self.rx.fd().xdp_statistics().map_err(|source| XskError::Statistics {
            ifname: self.ifname.clone(),
            queue: self.queue,
            source,
        })?;
        Ok(XskKernelStats {
            rx_dropped: s.rx_dropped(),
            rx_invalid_descs: s.rx_invalid_descs(),
            tx_invalid_descs: s.tx_invalid_descs(),
            rx_ring_full: s.rx_ring_full(),
            rx_fill_ring_empty_descs: s.rx_fill_ring_empty_descs(),
            tx_ring_empty_descs: s.tx_ring_empty_descs(),
        })
    }
}

impl XskTx {
    /// The largest frame [`XskTx::send`] takes.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The transmit counters (the receive ones are zero here).
    pub fn stats(&self) -> XskStats {
        self.stats
    }

    /// TX frames handed to the kernel and not yet completed.
    pub fn in_flight(&self) -> u32 {
        self.size - self.free.len() as u32
    }

    /// Copies `frame` (a whole Ethernet frame) into a free TX frame and puts
    /// it on the TX ring. Nothing moves before [`XskTx::flush`].
    /// [`XskError::TxFull`] when every TX frame is in flight even after
    /// reaping completions and kicking out what was queued: the caller
    /// counts it (TCP retransmits).
    pub fn send(&mut self, frame: &[u8]) -> Result<(), XskError> {
        self.send_parts(&[], frame)
    }

    /// Like [`XskTx::send`] for the frame `head` followed by `body` (a
    /// link-layer header and a packet), copied once, straight into the TX
    /// frame.
    pub fn send_parts(&mut self, head: &[u8], body: &[u8]) -> Result<(), XskError> {
        let len = head.len() + body.len();
        if len > self.capacity {
            return Err(XskError::FrameTooLarge {
                len,
                capacity: self.capacity,
            });
        }
        if self.free.is_empty() {
            self.reap_completions();
        }
        if self.free.is_empty() && self.unkicked > 0 {
            // Back off by sending what is queued: in copy mode the kick
            // transmits at once and its frames come back as completions.
            // A kick that fails leaves the ring full: reported below.
            let _ = self.flush();
        }
        let Some(mut desc) = self.free.pop() else {
            self.stats.tx_full += 1;
            return Err(XskError::TxFull {
                in_flight: self.in_flight(),
            });
        };
        {
            // SAFETY: a TX frame of this UMEM that is in no ring.
            let mut data = unsafe { self.umem.data_mut(&mut desc) };
            let mut cursor = data.cursor();
            cursor.set_pos(0);
            if cursor.write_all(head).and_then(|()| cursor.write_all(body)).is_err() {
                // Unreachable: the length was checked against the capacity.
                self.free.push(desc);
                return Err(XskError::FrameTooLarge {
                    len,
                    capacity: self.capacity,
                });
            }
        }
        // SAFETY: as above; from now on the frame is the kernel's until it
        // comes back through the completion ring.
        if unsafe { self.tx.produce_one(&desc) } == 0 {
            // Unreachable while the ring is as large as the TX frames.
            self.free.push(desc);
            self.stats.tx_full += 1;
            return Err(XskError::TxFull {
                in_flight: self.in_flight(),
            });
        }
        self.unkicked += 1;
        self.stats.tx_frames += 1;
        Ok(())
    }

    /// Makes the kernel send what [`XskTx::send`] queued (a `sendto`
    /// kick, only when the TX ring asks for one; in copy mode repeated
    /// while it makes progress, as each call moves at most 32 frames), and
    /// reaps the completion ring. Errors only for an unexpected `sendto`
    /// failure; a busy device (`EAGAIN`, `EBUSY`, `ENOBUFS`) is retried at
    /// the next flush.
    pub fn flush(&mut self) -> Result<(), XskError> {
        let mut result = Ok(());
        if self.unkicked > 0 || self.tx.nb_free_exact() < self.size {
            // Enough kicks for a full ring, plus one.
            let limit = self.size / KERNEL_TX_BATCH + 1;
            for _ in 0..limit {
                let pending = self.size - self.tx.nb_free_exact();
                if pending == 0 || !self.tx.needs_wakeup() {
                    break;
                }
                self.stats.tx_kicks += 1;
                match self.kick_tx() {
                    Ok(()) => {}
                    Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EBUSY | libc::ENOBUFS)) => {}
                    Err(source) => {
                        result = Err(XskError::Kick {
                            ifname: self.ifname.clone(),
                            queue: self.queue,
                            source,
                        });
                        break;
                    }
                }
                if self.size - self.tx.nb_free_exact() >= pending {
                    // No progress: the device is busy; try next time.
                    break;
                }
            }
            self.unkicked = 0;
        }
        self.reap_completions();
        result
    }

    /// Moves completed TX frames back to the free list.
    fn reap_completions(&mut self) -> usize {
        // SAFETY: the completion ring returns this UMEM's TX frames.
        let n = unsafe { self.comp.consume(&mut self.comp_descs) };
        self.free.extend_from_slice(&self.comp_descs[..n]);
        n
    }

    fn kick_tx(&self) -> io::Result<()> {
        // SAFETY: a zero-length sendto on our own socket fd.
        let rc = unsafe {
            libc::sendto(
                self.as_raw_fd(),
                std::ptr::null(),
                0,
                libc::MSG_DONTWAIT,
                std::ptr::null(),
                0,
            )
        };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }
}

impl AsRawFd for XskSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.rx.as_raw_fd()
    }
}

impl AsFd for XskSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the fd stays open as long as the socket's rings, which
        // `self` owns, so it outlives the borrow.
        unsafe { BorrowedFd::borrow_raw(self.as_raw_fd()) }
    }
}

impl AsRawFd for XskRx {
    fn as_raw_fd(&self) -> RawFd {
        self.rx.fd().as_raw_fd()
    }
}

impl AsRawFd for XskTx {
    fn as_raw_fd(&self) -> RawFd {
        self.tx.fd().as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_valid() {
        XskConfig::default().validate().unwrap();
    }

    #[test]
    fn bad_configs_are_refused() {
        let bad = [
            XskConfig {
                frame_size: 1024,
                ..XskConfig::default()
            },
            XskConfig {
                frame_size: 3000,
                ..XskConfig::default()
            },
            XskConfig {
                rx_frames: 1000,
                ..XskConfig::default()
            },
            XskConfig {
                tx_frames: 32,
                ..XskConfig::default()
            },
        ];
        for config in bad {
            assert!(matches!(config.validate(), Err(XskError::Config(_))), "{config:?}");
        }
    }

    #[test]
    fn binding_to_a_missing_interface_says_so() {
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root");
            return;
        }
        let error = XskSocket::bind("t2s-no-such0", 0, &XskConfig::default()).unwrap_err();
        assert!(matches!(error, XskError::Bind { .. }), "{error:?}");
        assert!(error.to_string().contains("t2s-no-such0"), "{error}");
    }
}
