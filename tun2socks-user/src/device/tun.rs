//! Multi-queue TUN: one file descriptor per queue, each owned by one worker.
//!
//! The device is created (or an existing one adopted) with `TUNSETIFF` on
//! `/dev/net/tun`; every further open with the same name attaches one more
//! queue. Queue `i` is the `i`-th attached fd, which is the index the steering
//! program's return value selects (modulo the queue count).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

/// `_IOW('T', 202, int)`
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TUN: libc::c_short = 0x0001;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_MULTI_QUEUE: libc::c_short = 0x0100;

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
}

/// One queue of a multi-queue TUN device: reads and writes whole IP packets.
#[derive(Debug)]
pub struct TunQueue {
    file: File,
    index: usize,
}

impl TunQueue {
    /// Queue index within the device (the steering program's choice).
    pub fn index(&self) -> usize {
        self.index
    }

    /// Reads one IP packet; `WouldBlock` when the queue is empty.
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
/// attaching to an existing multi-queue device.
pub fn open_queues(name: &str, queues: usize) -> Result<Vec<TunQueue>, TunError> {
    validate_name(name)?;
    (0..queues).map(|index| open_queue(name, index)).collect()
}

fn open_queue(name: &str, index: usize) -> Result<TunQueue, TunError> {
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
    ifr.ifr_ifru.ifru_flags = IFF_TUN | IFF_NO_PI | IFF_MULTI_QUEUE;
    // SAFETY: TUNSETIFF reads and writes a struct ifreq.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut ifr) };
    if rc < 0 {
        return Err(TunError::SetIff {
            name: name.to_string(),
            queue: index,
            source: io::Error::last_os_error(),
        });
    }
    Ok(TunQueue { file, index })
}
