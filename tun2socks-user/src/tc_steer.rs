//! Host mode's flow affinity: the `queue_steer` tc egress program on the
//! app-side end of the host veth.
//!
//! In host mode the host kernel sends into the app-side end of a veth pair
//! with one queue per worker; the far end is served by the XDP classifier
//! and one AF_XDP socket per rx queue, and a socket only receives from its
//! own queue. The queue a frame meets there is the tx queue the kernel chose
//! on the sending end, which for a kernel socket follows its tx hash, and
//! TCP re-rolls that hash on every retransmission timeout
//! (`sk_rethink_txhash`): without help a flow would wander between workers.
//!
//! [`QueueSteer::attach`] loads `queue_steer` (crate `tun2socks-ebpf`, the
//! same embedded object as the TUN `steer` and XDP `classify` programs) with
//! the queue count, and attaches it at tc egress of the interface. It sets
//! each IP frame's `skb->queue_mapping` from the flow hash that
//! [`crate::steering::queue_for_packet`] computes, so every frame of a flow
//! leaves on, and arrives at, the queue user space predicts
//! ([`queue_for_frame`] answers for a whole frame). Frames that are not IP
//! are left alone, nothing is ever dropped. The `+ 1` the program writes is
//! explained at `tun2socks_ebpf::tc::queue_mapping_for`.
//!
//! Attachment: TCX (a BPF link, kernel 6.6 and later: nothing to clean up
//! if the process dies), else the classic `clsact` qdisc with a `bpf`
//! filter (netlink), adding the qdisc if the interface has none. Dropping
//! the [`QueueSteer`] detaches the program and removes the qdisc if, and
//! only if, it was added here.

use std::io;
use std::net::UdpSocket;
use std::os::fd::AsRawFd;

use aya::maps::{MapError, PerCpuArray};
use aya::programs::tc::{NlOptions, SchedClassifierLinkId, TcAttachOptions, TcError};
use aya::programs::{LinkOrder, ProgramError, SchedClassifier, TcAttachType, tc};
use aya::{Ebpf, EbpfLoader};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::tc::{TcAttribute, TcHandle, TcHeader, TcMessage};
use rtnetlink::packet_core::{NLM_F_ACK, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};
use rtnetlink::sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
use tun2socks_ebpf::tc::{MAX_STEERED_QUEUES, QUEUE_COUNT_GLOBAL, QueueSteerCounter};

use crate::steering::OBJECT;

const PROGRAM: &str = "queue_steer";
const COUNTERS: &str = "QUEUE_STEER_COUNTERS";

/// The queue (out of `queues`) that `queue_steer` sends `frame` (an
/// Ethernet frame) on: [`crate::steering::queue_for_packet`] of the IP
/// packet inside it. `None` when it carries no IPv4/IPv6 packet (the
/// program leaves those to the kernel's own choice).
pub fn queue_for_frame(frame: &[u8], queues: u32) -> Option<u32> {
    tun2socks_ebpf::tc::queue_for_frame(frame, queues)
}

/// How the program hangs off the interface's egress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcHook {
    /// A TCX BPF link (kernel 6.6 and later); the kernel drops it with the
    /// last reference, so a crashed process leaves nothing behind.
    Tcx,
    /// A `bpf` filter on the `clsact` qdisc, set up over netlink (any
    /// kernel with clsact).
    Clsact,
}

impl TcHook {
    pub fn name(self) -> &'static str {
        match self {
            TcHook::Tcx => "tcx",
            TcHook::Clsact => "clsact",
        }
    }
}

/// Errors attaching, reading or detaching the queue-steering program.
#[derive(Debug, thiserror::Error)]
pub enum QueueSteerError {
    #[error(
        "attaching the tc queue-steering program to {ifname} needs CAP_BPF and CAP_NET_ADMIN \
         (or CAP_SYS_ADMIN)"
    )]
    PermissionDenied {
        ifname: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("cannot steer over {queues} queues: 1 to {MAX_STEERED_QUEUES} are possible")]
    InvalidQueueCount { queues: u32 },
    #[error("no interface named {ifname:?} in this network namespace")]
    UnknownInterface {
        ifname: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "{ifname} has {device} tx queues, fewer than the {queues} to steer over \
         (the kernel would fold the extra ones onto others)"
    )]
    TooFewDeviceQueues { ifname: String, queues: u32, device: u32 },
    #[error("the embedded eBPF object does not load")]
    Object(#[source] aya::EbpfError),
    #[error("the embedded eBPF object has no tc classifier program `{PROGRAM}`")]
    MissingProgram(#[source] Option<ProgramError>),
    #[error("the kernel refused the `{PROGRAM}` program")]
    Load(#[source] ProgramError),
    #[error("cannot add a clsact qdisc to {ifname}")]
    AddQdisc {
        ifname: String,
        #[source]
        source: TcError,
    },
    #[error("cannot attach `{PROGRAM}` at tc egress of {ifname} ({hook}){tcx}")]
    Attach {
        ifname: String,
        hook: &'static str,
        /// Why TCX was refused first, when the clsact attempt followed it.
        tcx: String,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("cannot detach `{PROGRAM}` from tc egress of {ifname}")]
    Detach {
        ifname: String,
        #[source]
        source: ProgramError,
    },
    #[error("cannot remove the clsact qdisc added to {ifname}")]
    DeleteQdisc {
        ifname: String,
        #[source]
        source: io::Error,
    },
    #[error("the eBPF object has no usable map {COUNTERS}")]
    MissingCounters(#[source] Option<MapError>),
    #[error("cannot read the tc queue-steering counters")]
    Counters(#[source] MapError),
}

/// The program's counters summed over the CPUs, by [`QueueSteerCounter`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueSteerCounts([u64; QueueSteerCounter::COUNT as usize]);

impl QueueSteerCounts {
    pub fn get(&self, counter: QueueSteerCounter) -> u64 {
        self.0[counter as usize]
    }

    /// Every counter with its value, in [`QueueSteerCounter::ALL`] order.
    pub fn iter(&self) -> impl Iterator<Item = (QueueSteerCounter, u64)> + '_ {
        QueueSteerCounter::ALL.into_iter().map(|c| (c, self.get(c)))
    }
}

impl std::fmt::Display for QueueSteerCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (counter, value)) in self.iter().enumerate() {
            let sep = if i == 0 { "" } else { " " };
            write!(f, "{sep}{}={value}", counter.name())?;
        }
        Ok(())
    }
}

/// `queue_steer`, loaded and attached at tc egress of one interface.
/// Dropping it detaches the program (and removes a clsact qdisc it added).
///
/// Drop (or [`QueueSteer::detach`]) it on a thread in the network namespace
/// it was attached in: the clsact hook and its qdisc are found there by
/// interface index (a TCX link goes with its fd, wherever it is closed).
/// A socket that already sent on the device before the attach keeps its
/// cached tx queue until the kernel picks again (when the socket has
/// nothing in flight), so attach before traffic starts.
pub struct QueueSteer {
    ebpf: Ebpf,
    link: Option<SchedClassifierLinkId>,
    ifname: String,
    ifindex: u32,
    queues: u32,
    hook: TcHook,
    added_qdisc: bool,
}

impl std::fmt::Debug for QueueSteer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueSteer")
            .field("ifname", &self.ifname)
            .field("queues", &self.queues)
            .field("hook", &self.hook)
            .field("added_qdisc", &self.added_qdisc)
            .finish_non_exhaustive()
    }
}

impl QueueSteer {
    /// Loads `queue_steer` for `queues` queues and attaches it at tc egress
    /// of `ifname` (an interface of the calling thread's network namespace,
    /// with at least `queues` tx queues): TCX where the kernel has it, the
    /// clsact qdisc otherwise.
    pub fn attach(ifname: &str, queues: u32) -> Result<Self, QueueSteerError> {
        Self::attach_with(ifname, queues, None)
    }

    /// [`Self::attach`] with the hook chosen by the caller (tests, or a
    /// kernel whose TCX misbehaves): no fallback to the other one.
    pub fn attach_with_hook(ifname: &str, queues: u32, hook: TcHook) -> Result<Self, QueueSteerError> {
        Self::attach_with(ifname, queues, Some(hook))
    }

    fn attach_with(ifname: &str, queues: u32, hook: Option<TcHook>) -> Result<Self, QueueSteerError> {
        if queues == 0 || queues > MAX_STEERED_QUEUES {
            return Err(QueueSteerError::InvalidQueueCount { queues });
        }
        let ifindex = ifindex(ifname)?;
        if let Some(device) = device_tx_queues(ifname)
            && device < queues
        {
            return Err(QueueSteerError::TooFewDeviceQueues {
                ifname: ifname.to_string(),
                queues,
                device,
            });
        }
        let denied = |ifname: &str| {
            let ifname = ifname.to_string();
            move |source| QueueSteerError::PermissionDenied { ifname, source }
        };
        let mut ebpf = EbpfLoader::new()
            .override_global(QUEUE_COUNT_GLOBAL, &queues, true)
            .load(OBJECT)
            .map_err(|e| classify_error(e, denied(ifname), QueueSteerError::Object))?;
        let program = tc_program(&mut ebpf)?;
        program
            .load()
            .map_err(|e| classify_error(e, denied(ifname), QueueSteerError::Load))?;

        let mut steer = Self {
            ebpf,
            link: None,
            ifname: ifname.to_string(),
            ifindex,
            queues,
            hook: TcHook::Tcx,
            added_qdisc: false,
        };
        let mut tcx_refused = String::new();
        if hook != Some(TcHook::Clsact) {
            match steer.attach_tcx() {
                Ok(()) => {}
                Err(error) if hook.is_none() && !caused_by_eperm(&error) => {
                    tcx_refused = format!("; TCX was refused first: {}", error_chain(&error));
                    tracing::info!(ifname, error = %error_chain(&error), "TCX refused, attaching to the clsact qdisc");
                }
                Err(error) => return Err(steer.attach_error(TcHook::Tcx, String::new(), error)),
            }
        }
        if steer.link.is_none() {
            steer.attach_clsact(tcx_refused)?;
        }
        tracing::info!(
            ifname,
            queues,
            hook = steer.hook.name(),
            added_qdisc = steer.added_qdisc,
            "tc egress queue steering attached"
        );
        Ok(steer)
    }

    fn attach_tcx(&mut self) -> Result<(), ProgramError> {
        let program = tc_program(&mut self.ebpf).map_err(|_| ProgramError::NotLoaded)?;
        let options = TcAttachOptions::TcxOrder(LinkOrder::default());
        let link = program.attach_with_options(&self.ifname, TcAttachType::Egress, options)?;
        self.link = Some(link);
        self.hook = TcHook::Tcx;
        Ok(())
    }

    fn attach_clsact(&mut self, tcx_refused: String) -> Result<(), QueueSteerError> {
        self.hook = TcHook::Clsact;
        match tc::qdisc_add_clsact(&self.ifname) {
            Ok(()) => self.added_qdisc = true,
            Err(TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(source) => {
                if caused_by_eperm(&source) {
                    return Err(QueueSteerError::PermissionDenied {
                        ifname: self.ifname.clone(),
                        source: Box::new(source),
                    });
                }
                return Err(QueueSteerError::AddQdisc {
                    ifname: self.ifname.clone(),
                    source,
                });
            }
        }
        let program = tc_program(&mut self.ebpf)?;
        let options = TcAttachOptions::Netlink(NlOptions::default());
        match program.attach_with_options(&self.ifname, TcAttachType::Egress, options) {
            Ok(link) => {
                self.link = Some(link);
                Ok(())
            }
            // The qdisc we added goes again when `self` is dropped.
            Err(error) => Err(self.attach_error(TcHook::Clsact, tcx_refused, error)),
        }
    }

    fn attach_error(&self, hook: TcHook, tcx: String, error: ProgramError) -> QueueSteerError {
        if caused_by_eperm(&error) {
            return QueueSteerError::PermissionDenied {
                ifname: self.ifname.clone(),
                source: Box::new(error),
            };
        }
        QueueSteerError::Attach {
            ifname: self.ifname.clone(),
            hook: hook.name(),
            tcx,
            source: Box::new(error),
        }
    }

    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// The number of queues flows are spread over.
    pub fn queues(&self) -> u32 {
        self.queues
    }

    pub fn hook(&self) -> TcHook {
        self.hook
    }

    /// Whether the clsact qdisc was added here (and so goes on detach).
    pub fn added_qdisc(&self) -> bool {
        self.added_qdisc
    }

    /// The program's counters, summed over the CPUs.
    pub fn counters(&self) -> Result<QueueSteerCounts, QueueSteerError> {
        let map = self.ebpf.map(COUNTERS).ok_or(QueueSteerError::MissingCounters(None))?;
        let array = PerCpuArray::<_, u64>::try_from(map).map_err(|e| QueueSteerError::MissingCounters(Some(e)))?;
        let mut counts = QueueSteerCounts::default();
        for counter in QueueSteerCounter::ALL {
            let per_cpu = array.get(&(counter as u32), 0).map_err(QueueSteerError::Counters)?;
            counts.0[counter as usize] = per_cpu.iter().sum();
        }
        Ok(counts)
    }

    /// Takes the program off the interface now (dropping does the same,
    /// logging what fails instead of returning it).
    pub fn detach(mut self) -> Result<(), QueueSteerError> {
        self.detach_now()
    }

    fn detach_now(&mut self) -> Result<(), QueueSteerError> {
        let detached = match self.link.take() {
            Some(link) => match tc_program(&mut self.ebpf) {
                Ok(program) => program.detach(link).map_err(|source| QueueSteerError::Detach {
                    ifname: self.ifname.clone(),
                    source,
                }),
                Err(error) => Err(error),
            },
            None => Ok(()),
        };
        // Even if detaching failed: removing the qdisc removes its filters.
        if std::mem::take(&mut self.added_qdisc) {
            delete_clsact(self.ifindex).map_err(|source| QueueSteerError::DeleteQdisc {
                ifname: self.ifname.clone(),
                source,
            })?;
        }
        detached?;
        tracing::info!(ifname = %self.ifname, "tc egress queue steering detached");
        Ok(())
    }
}

impl Drop for QueueSteer {
    fn drop(&mut self) {
        if let Err(error) = self.detach_now() {
            // aya detaches the links it still owns when the program goes.
            tracing::warn!(ifname = %self.ifname, error = %error_chain(&error), "detaching tc queue steering");
        }
    }
}

fn tc_program(ebpf: &mut Ebpf) -> Result<&mut SchedClassifier, QueueSteerError> {
    let program = ebpf.program_mut(PROGRAM).ok_or(QueueSteerError::MissingProgram(None))?;
    program.try_into().map_err(|e| QueueSteerError::MissingProgram(Some(e)))
}

/// The index of `ifname` in the calling thread's network namespace.
fn ifindex(ifname: &str) -> Result<u32, QueueSteerError> {
    let unknown = |source| QueueSteerError::UnknownInterface {
        ifname: ifname.to_string(),
        source,
    };
    if ifname.is_empty() || ifname.len() >= libc::IFNAMSIZ {
        return Err(unknown(io::Error::new(
            io::ErrorKind::InvalidInput,
            "an interface name has 1 to 15 bytes",
        )));
    }
    let name = std::ffi::CString::new(ifname).map_err(|e| unknown(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
    // SAFETY: `name` is a valid C string for the duration of the call.
    match unsafe { libc::if_nametoindex(name.as_ptr()) } {
        0 => Err(unknown(io::Error::last_os_error())),
        index => Ok(index),
    }
}

/// The device's current tx queue count as `ethtool -l` reports it (tx plus
/// combined channels); `None` when the driver does not say (then nothing is
/// checked).
fn device_tx_queues(ifname: &str) -> Option<u32> {
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    const ETHTOOL_GCHANNELS: u32 = 0x3c;
    #[repr(C)]
    #[derive(Default)]
    struct EthtoolChannels {
        cmd: u32,
        max_rx: u32,
        max_tx: u32,
        max_other: u32,
        max_combined: u32,
        rx_count: u32,
        tx_count: u32,
        other_count: u32,
        combined_count: u32,
    }
    let mut channels = EthtoolChannels {
        cmd: ETHTOOL_GCHANNELS,
        ..Default::default()
    };
    // SAFETY: ifreq is plain old data; all zeroes is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(ifname.bytes()) {
        *dst = src as libc::c_char;
    }
    ifr.ifr_ifru.ifru_data = (&mut channels as *mut EthtoolChannels).cast();
    // Any socket of this namespace will do for SIOCETHTOOL.
    let socket = UdpSocket::bind((std::net::Ipv4Addr::LOCALHOST, 0))
        .or_else(|_| UdpSocket::bind((std::net::Ipv6Addr::LOCALHOST, 0)))
        .ok()?;
    // SAFETY: SIOCETHTOOL reads the ifreq and writes the ethtool_channels
    // it points to, both alive for the call.
    let rc = unsafe { libc::ioctl(socket.as_raw_fd(), SIOCETHTOOL, &mut ifr) };
    let count = channels.tx_count + channels.combined_count;
    (rc == 0 && count > 0).then_some(count)
}

/// `tc qdisc del dev <ifindex> clsact`, over a netlink socket of the
/// calling thread's namespace.
fn delete_clsact(ifindex: u32) -> io::Result<()> {
    let header = TcHeader {
        index: ifindex as i32,
        handle: TcHandle {
            major: 0xffff,
            minor: 0,
        },
        parent: TcHandle::CLSACT,
        ..Default::default()
    };
    let message = TcMessage::from_parts(header, vec![TcAttribute::Kind("clsact".to_string())]);
    let mut request = NetlinkMessage::from(RouteNetlinkMessage::DelQueueDiscipline(message));
    request.header.flags = NLM_F_REQUEST | NLM_F_ACK;
    request.header.sequence_number = 1;
    request.finalize();
    let mut buf = vec![0u8; request.buffer_len()];
    request.serialize(&mut buf);

    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    socket.send(&buf, 0)?;
    // One answer: the ack (an error message with code 0) or the error.
    let mut answer = vec![0u8; 8192];
    let n = socket.recv(&mut &mut answer[..], 0)?;
    let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&answer[..n])
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    match reply.payload {
        NetlinkPayload::Error(error) => match error.code {
            None => Ok(()),
            Some(code) => Err(io::Error::from_raw_os_error(-code.get())),
        },
        other => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected netlink answer {other:?}"),
        )),
    }
}

/// An error and its causes on one line.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        text.push_str(": ");
        text.push_str(&e.to_string());
        cause = e.source();
    }
    text
}

fn caused_by_eperm(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(e) = cause {
        let errno = e
            .downcast_ref::<io::Error>()
            .and_then(io::Error::raw_os_error)
            .or_else(|| match e.downcast_ref::<TcError>() {
                Some(TcError::NetlinkError(nl)) => nl.raw_os_error(),
                _ => None,
            });
        if matches!(errno, Some(libc::EPERM) | Some(libc::EACCES)) {
            return true;
        }
        cause = e.source();
    }
    false
}

/// The permission error when an `EPERM` is behind `error`, else `otherwise`.
fn classify_error<E>(
    error: E,
    denied: impl FnOnce(Box<dyn std::error::Error + Send + Sync>) -> QueueSteerError,
    otherwise: impl FnOnce(E) -> QueueSteerError,
) -> QueueSteerError
where
    E: std::error::Error + Send + Sync + 'static,
{
    if caused_by_eperm(&error) {
        denied(Box::new(error))
    } else {
        otherwise(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::steering::queue_for_packet;

    #[test]
    fn frame_queue_is_the_packet_queue() {
        for sport in 1000..1100u16 {
            let mut frame = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x08, 0x00];
            let packet_at = frame.len();
            frame.extend_from_slice(&[0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0, 10, 99, 0, 2, 198, 51, 100, 7]);
            frame.extend_from_slice(&sport.to_be_bytes());
            frame.extend_from_slice(&[0, 53, 0, 8, 0, 0]);
            for queues in 1..=8 {
                assert_eq!(
                    queue_for_frame(&frame, queues),
                    queue_for_packet(&frame[packet_at..], queues)
                );
            }
        }
        assert_eq!(queue_for_frame(&[0u8; 60], 4), None);
    }

    #[test]
    fn bad_arguments_are_refused_before_loading() {
        assert!(matches!(
            QueueSteer::attach("lo", 0),
            Err(QueueSteerError::InvalidQueueCount { queues: 0 })
        ));
        assert!(matches!(
            QueueSteer::attach("lo", MAX_STEERED_QUEUES + 1),
            Err(QueueSteerError::InvalidQueueCount { .. })
        ));
        for name in ["", "no-such-if-here", "much-too-long-interface-name", "a\0b"] {
            let error = QueueSteer::attach(name, 4).unwrap_err();
            assert!(
                matches!(error, QueueSteerError::UnknownInterface { .. }),
                "{name:?}: {error:?}"
            );
            assert!(error.to_string().contains("no interface"), "{error}");
        }
    }

    #[test]
    fn counts_print_every_counter() {
        let mut counts = QueueSteerCounts::default();
        counts.0[QueueSteerCounter::Steered as usize] = 7;
        assert_eq!(counts.to_string(), "steered=7 not_ip=0 unconfigured=0");
    }

    #[test]
    fn embedded_object_has_the_queue_steer_program() {
        let mut ebpf = Ebpf::load(OBJECT).expect("the embedded object parses");
        assert!(tc_program(&mut ebpf).is_ok());
    }
}
