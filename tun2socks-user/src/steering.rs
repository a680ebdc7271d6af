//! eBPF flow steering for the multi-queue TUN device.
//!
//! The `steer` socket filter (crate `tun2socks-ebpf`) runs in the kernel for
//! every packet routed into the device and returns its flow hash; the TUN
//! driver queues the packet on `hash % queue count`. The program is set with
//! `TUNSETSTEERINGEBPF` on any one queue fd and then applies to the whole
//! device. Without it (no CAP_BPF) the kernel picks queues by its own flow
//! table, which still keeps flows together but cannot be predicted here.
//!
//! [`queue_for_packet`] runs the very same parser and hash as the program
//! (both come from `tun2socks-ebpf`'s library), so user space knows which
//! worker a packet meets: see that crate for the steering rules (TCP by
//! 5-tuple, UDP by source endpoint, everything else by addresses).

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};

use aya::Ebpf;
use aya::maps::{MapData, MapError, PerCpuArray};
use aya::programs::{ProgramError, SocketFilter};
use tun2socks_ebpf::{SteerClass, flow_hash, flow_key, queue_of};

/// `_IOR('T', 224, int)`: sets the device's steering program (fd -1 clears it).
const TUNSETSTEERINGEBPF: libc::c_ulong = 0x8004_54e0;
const PROGRAM: &str = "steer";

/// The eBPF object, built from source by build.rs on every build.
pub(crate) static OBJECT: &[u8] = aya::include_bytes_aligned!(env!("TUN2SOCKS_EBPF_OBJ"));

/// The flow hash the `steer` program computes for `packet` (starting at its
/// IP header); `None` when it is not an IPv4/IPv6 packet.
pub fn flow_hash_of_packet(packet: &[u8]) -> Option<u32> {
    flow_key(packet).map(|key| flow_hash(&key))
}

/// The queue (out of `queues`) the kernel puts `packet` on while steering is
/// attached; `None` when it is not an IPv4/IPv6 packet (the program sends
/// those to queue 0).
pub fn queue_for_packet(packet: &[u8], queues: u32) -> Option<u32> {
    flow_hash_of_packet(packet).map(|hash| queue_of(hash, queues))
}

/// Errors attaching or detaching the steering program. A failed [`attach`]
/// leaves the device on the kernel's own queue choice, so the daemon can
/// warn and go on.
#[derive(Debug, thiserror::Error)]
pub enum SteeringError {
    #[error(
        "loading the eBPF steering program needs CAP_BPF (or CAP_SYS_ADMIN); \
         TUN queues stay on the kernel's own flow choice"
    )]
    PermissionDenied(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("the embedded eBPF object does not load")]
    Object(#[source] aya::EbpfError),
    #[error("the embedded eBPF object has no socket filter program `{PROGRAM}`")]
    MissingProgram(#[source] Option<ProgramError>),
    #[error("the kernel refused the `{PROGRAM}` program")]
    Load(#[source] ProgramError),
    #[error("TUNSETSTEERINGEBPF ({action}) on TUN queue fd {fd} failed")]
    Ioctl {
        action: &'static str,
        fd: RawFd,
        #[source]
        source: io::Error,
    },
}

/// The loaded steering program. It is attached to the device the moment
/// [`attach`] returns; dropping this does *not* detach it (the kernel holds
/// its own reference until [`Steering::detach`] or the device goes away).
pub struct Steering {
    ebpf: Ebpf,
}

impl std::fmt::Debug for Steering {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Steering")
            .field("program", &PROGRAM)
            .finish_non_exhaustive()
    }
}

/// Loads the `steer` program and makes it choose the queue of every packet
/// of the TUN device that `queue` (any one of its queue fds) belongs to.
pub fn attach(queue: BorrowedFd<'_>) -> Result<Steering, SteeringError> {
    // The object also holds the XDP classifier and its maps (XSKMAP, LPM
    // tries); a kernel without them must still get TUN steering.
    let mut ebpf = aya::EbpfLoader::new()
        .allow_unsupported_maps()
        .load(OBJECT)
        .map_err(|e| classify(e, SteeringError::Object))?;
    let program = steer_program(&mut ebpf)?;
    program.load().map_err(|e| classify(e, SteeringError::Load))?;
    let prog_fd = program.fd().map_err(SteeringError::Load)?.as_fd().as_raw_fd();
    set_steering_program(queue, prog_fd, "attach")?;
    tracing::info!(
        queue_fd = queue.as_raw_fd(),
        "eBPF flow steering attached to the TUN device"
    );
    Ok(Steering { ebpf })
}

/// The `steer` program's per-CPU counters, by [`SteerClass`].
pub struct SteerCounters {
    map: PerCpuArray<MapData, u64>,
}

impl std::fmt::Debug for SteerCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SteerCounters").finish_non_exhaustive()
    }
}

impl SteerCounters {
    /// Each class with its count summed over the CPUs.
    pub fn read(&self) -> Result<Vec<(SteerClass, u64)>, MapError> {
        SteerClass::ALL
            .into_iter()
            .map(|class| Ok((class, self.map.get(&(class as u32), 0)?.iter().sum())))
            .collect()
    }
}

impl Steering {
    /// The program's counters, for metrics; `None` after the first call.
    pub fn take_counters(&mut self) -> Option<SteerCounters> {
        let map = self.ebpf.take_map("STEER_COUNTERS")?;
        match PerCpuArray::try_from(map) {
            Ok(map) => Some(SteerCounters { map }),
            Err(error) => {
                tracing::warn!(%error, "the steering program's counters are unreadable");
                None
            }
        }
    }

    /// Takes the program off the device again; the kernel's own queue choice
    /// applies from then on.
    pub fn detach(self, queue: BorrowedFd<'_>) -> Result<(), SteeringError> {
        set_steering_program(queue, -1, "detach")?;
        tracing::debug!(queue_fd = queue.as_raw_fd(), "eBPF flow steering detached");
        drop(self.ebpf);
        Ok(())
    }
}

fn steer_program(ebpf: &mut Ebpf) -> Result<&mut SocketFilter, SteeringError> {
    let program = ebpf.program_mut(PROGRAM).ok_or(SteeringError::MissingProgram(None))?;
    program.try_into().map_err(|e| SteeringError::MissingProgram(Some(e)))
}

/// `TUNSETSTEERINGEBPF` with `prog_fd` (or -1 to clear).
fn set_steering_program(queue: BorrowedFd<'_>, prog_fd: RawFd, action: &'static str) -> Result<(), SteeringError> {
    let fd = queue.as_raw_fd();
    // SAFETY: TUNSETSTEERINGEBPF reads one int (a BPF program fd, or -1)
    // from the pointer, which is valid for the duration of the call.
    let rc = unsafe { libc::ioctl(fd, TUNSETSTEERINGEBPF, &prog_fd as *const RawFd) };
    if rc < 0 {
        let source = io::Error::last_os_error();
        return Err(SteeringError::Ioctl { action, fd, source });
    }
    Ok(())
}

/// Turns an aya error into [`SteeringError::PermissionDenied`] when an
/// `EPERM` from the kernel is behind it (missing CAP_BPF), so the message
/// names the capability instead of a bare "Operation not permitted".
fn classify<E>(error: E, otherwise: impl FnOnce(E) -> SteeringError) -> SteeringError
where
    E: std::error::Error + Send + Sync + 'static,
{
    if caused_by_eperm(&error) {
        SteeringError::PermissionDenied(Box::new(error))
    } else {
        otherwise(error)
    }
}

fn caused_by_eperm(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if e.downcast_ref::<io::Error>().and_then(io::Error::raw_os_error) == Some(libc::EPERM) {
            return true;
        }
        cause = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A TCP SYN-sized IPv4 packet from 10.0.0.1:40000 to 10.77.0.9:`dport`.
    fn tcp4(dport: u16) -> Vec<u8> {
        let mut p = vec![0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 77, 0, 9];
        p.extend_from_slice(&40000u16.to_be_bytes());
        p.extend_from_slice(&dport.to_be_bytes());
        p.resize(40, 0);
        p
    }

    #[test]
    fn queue_is_the_shared_hash_modulo_the_queue_count() {
        for dport in 1..200 {
            let packet = tcp4(dport);
            let hash = flow_hash_of_packet(&packet).unwrap();
            for queues in 1..=16 {
                let queue = queue_for_packet(&packet, queues).unwrap();
                assert_eq!(queue, (hash & 0xffff) % queues);
            }
        }
    }

    #[test]
    fn not_ip_has_no_queue() {
        assert_eq!(queue_for_packet(&[], 4), None);
        assert_eq!(queue_for_packet(&[0x45; 10], 4), None);
        assert_eq!(queue_for_packet(&[0x00; 64], 4), None);
    }

    #[test]
    fn eperm_anywhere_in_the_chain_names_the_capability() {
        let syscall = |errno| {
            ProgramError::SyscallError(aya::sys::SyscallError {
                call: "bpf_prog_load",
                io_error: io::Error::from_raw_os_error(errno),
            })
        };
        let load = syscall(libc::EPERM);
        let error = classify(load, SteeringError::Load);
        assert!(matches!(error, SteeringError::PermissionDenied(_)));
        assert!(error.to_string().contains("CAP_BPF"));

        let other = syscall(libc::EINVAL);
        assert!(matches!(classify(other, SteeringError::Load), SteeringError::Load(_)));
    }

    #[test]
    fn embedded_object_has_the_steer_program() {
        // Parsing and BTF fix-ups need no privileges; only loading does.
        let mut ebpf = Ebpf::load(OBJECT).expect("the embedded object parses");
        assert!(steer_program(&mut ebpf).is_ok());
    }
}
