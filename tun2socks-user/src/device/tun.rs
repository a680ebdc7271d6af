//! Multi-queue TUN: one file descriptor per queue, each owned by one worker.
//!
//! The device is created (or an existing one adopted) with `TUNSETIFF` on
//! `/dev/net/tun`; every further open with the same name attaches one more
//! queue. Queue `i` is the `i`-th attached fd, which is the index the steering
//! program's return value selects (modulo the queue count).
//!
//! With offload (`--tun-offload on`) every queue is opened with
//! `IFF_VNET_HDR`: each read and write then carries a 10-byte
//! `virtio_net_hdr` (see `vnet`) in front of the packet, and `TUNSETOFFLOAD`
//! tells the kernel it may hand us partial checksums and TCP segments of up
//! to 64 KB (TSO) and take the same from us (GSO).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

/// `_IOW('T', 202, int)`
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TUN: libc::c_short = 0x0001;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_MULTI_QUEUE: libc::c_short = 0x0100;
const IFF_VNET_HDR: libc::c_short = 0x4000;
/// `_IOW('T', 208, unsigned int)`
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
/// `_IOW('T', 216, int)`
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
/// `_IOW('T', 220, int)`
const TUNSETVNETLE: libc::c_ulong = 0x4004_54dc;
/// We take partial checksums (`TUN_F_CSUM`) and TSO for IPv4 and IPv6
/// (`TUN_F_TSO4 | TUN_F_TSO6`); TSO needs the first. Not `TUN_F_USO4/6`:
/// UDP GSO would hand the worker trains of datagrams to split, for traffic
/// (one datagram per relay send) that gains nothing from it.
const TUN_OFFLOADS: libc::c_uint = 0x01 | 0x02 | 0x04;

/// Errors opening TUN queues.
#[derive(Debug, thiserror::Error)]
pub enum TunError {
    #[error("device name {0:?} is not a valid interface name (1 to 15 bytes, no '/', ':' or spaces)")]
    BadName(String),
    #[error("cannot open /dev/net/tun: {0} (is the tun module loaded? root or CAP_NET_ADMIN is needed)")]
    OpenControl(#[source] io::Error),
    #[error("TUNSETIFF {name} (queue {queue}) failed: {source}")]
    SetIff {
        name: String,
        queue: usize,
        #[source]
        source: io::Error,
    },
    #[error("{what} on TUN device {name} (queue {queue}) failed: {source} (try --tun-offload off)")]
    Offload {
        what: &'static str,
        name: String,
        queue: usize,
        #[source]
        source: io::Error,
    },
}

/// One queue of a multi-queue TUN device: reads and writes whole IP packets.
#[derive(Debug)]
pub struct TunQueue {
    file: File,
    index: usize,
    /// Opened with `IFF_VNET_HDR` and offloads: every packet read or
    /// written has a `virtio_net_hdr` in front.
    vnet: bool,
}

impl TunQueue {
    /// Queue index within the device (the steering program's choice).
    pub fn index(&self) -> usize {
        self.index
    }

    /// Whether reads and writes carry a `virtio_net_hdr` (offload on).
    pub fn vnet(&self) -> bool {
        self.vnet
    }

    /// Reads one IP packet (behind its `virtio_net_hdr` with offload on);
    /// `WouldBlock` when the queue is empty.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: buf is valid for writes of buf.len() bytes.
        let n = unsafe { libc::read(self.file.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    /// Writes one IP packet into the kernel.
    pub fn send(&self, packet: &[u8]) -> io::Result<usize> {
        // SAFETY: packet is valid for reads of packet.len() bytes.
        let n = unsafe { libc::write(self.file.as_raw_fd(), packet.as_ptr().cast(), packet.len()) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    /// Writes one packet in two parts (a `virtio_net_hdr` and the packet)
    /// with one `writev`.
    pub fn send_parts(&self, head: &[u8], packet: &[u8]) -> io::Result<usize> {
        let iov = [
            libc::iovec {
                iov_base: head.as_ptr() as *mut libc::c_void,
                iov_len: head.len(),
            },
            libc::iovec {
                iov_base: packet.as_ptr() as *mut libc::c_void,
                iov_len: packet.len(),
            },
        ];
        // SAFETY: both iovecs point at live slices of their stated lengths;
        // writev only reads them.
        let n = unsafe { libc::writev(self.file.as_raw_fd(), iov.as_ptr(), 2) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    pub fn into_fd(self) -> OwnedFd {
        self.file.into()
    }
}

impl AsFd for TunQueue {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

impl AsRawFd for TunQueue {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.file.as_raw_fd()
    }
}

/// Checks an interface name the way the kernel does (`dev_valid_name`).
pub fn validate_name(name: &str) -> Result<(), TunError> {
    let ok = !name.is_empty()
        && name.len() < libc::IFNAMSIZ
        && name != "."
        && name != ".."
        && !name.bytes().any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace());
    if ok {
        Ok(())
    } else {
        Err(TunError::BadName(name.to_string()))
    }
}

/// Opens `queues` non-blocking queues of the multi-queue TUN device `name`,
/// creating it if absent (it then lives as long as its queues are open) or
/// attaching to an existing multi-queue device. With `offload`, every queue
/// carries `virtio_net_hdr`s and the device takes partial checksums and TSO.
pub fn open_queues(name: &str, queues: usize, offload: bool) -> Result<Vec<TunQueue>, TunError> {
    validate_name(name)?;
    (0..queues).map(|index| open_queue(name, index, offload)).collect()
}

fn open_queue(name: &str, index: usize, offload: bool) -> Result<TunQueue, TunError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("/dev/net/tun")
        .map_err(TunError::OpenControl)?;
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    // With offload: IFF_VNET_HDR. The flags are the device's (each attach
    // sets them), so every queue must ask for the same.
    let vnet = if offload { IFF_VNET_HDR } else { 0 };
    ifr.ifr_ifru.ifru_flags = IFF_TUN | IFF_NO_PI | IFF_MULTI_QUEUE | vnet;
    // SAFETY: TUNSETIFF reads and writes a struct ifreq.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut ifr) };
    if rc < 0 {
        return Err(TunError::SetIff {
            name: name.to_string(),
            queue: index,
            source: io::Error::last_os_error(),
        });
    }
    if offload {
        set_offload(&file).map_err(|(what, source)| TunError::Offload {
            what,
            name: name.to_string(),
            queue: index,
            source,
        })?;
    }
    Ok(TunQueue {
        file,
        index,
        vnet: offload,
    })
}

/// Turns the device's offloads off again (`TUNSETOFFLOAD 0`) through any of
/// its queues; a no-op for a device opened without offload.
pub fn clear_offload(queue: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: TUNSETOFFLOAD takes its flags by value; no memory is passed.
    if unsafe { libc::ioctl(queue.as_raw_fd(), TUNSETOFFLOAD, 0 as libc::c_ulong) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Header size, byte order and offloads. All three are per device, so
/// repeating them for each queue changes nothing; doing it on every queue
/// keeps each queue's setup self-contained.
fn set_offload(file: &File) -> Result<(), (&'static str, io::Error)> {
    let fd = file.as_raw_fd();
    let ioctl_int = |request: libc::c_ulong, value: libc::c_int| {
        // SAFETY: these TUN ioctls read one int through the pointer.
        if unsafe { libc::ioctl(fd, request, &value) } < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    };
    // 10 bytes: the legacy header without num_buffers (see `vnet`).
    ioctl_int(TUNSETVNETHDRSZ, super::vnet::VNET_HDR_LEN as libc::c_int).map_err(|e| ("TUNSETVNETHDRSZ", e))?;
    // Little-endian fields whatever the host (legacy virtio is native-endian).
    ioctl_int(TUNSETVNETLE, 1).map_err(|e| ("TUNSETVNETLE", e))?;
    // TUNSETOFFLOAD takes the flags by value, not through a pointer.
    // SAFETY: no memory is passed.
    if unsafe { libc::ioctl(fd, TUNSETOFFLOAD, TUN_OFFLOADS as libc::c_ulong) } < 0 {
        return Err(("TUNSETOFFLOAD", io::Error::last_os_error()));
    }
    Ok(())
}
