//! The raw sockets packets leave by: one per family, header included.

use std::io;
use std::mem::size_of;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use anyhow::{Context, Result};

use crate::packets::Crafted;

pub struct Sockets {
    v4: OwnedFd,
    v6: OwnedFd,
}

impl Sockets {
    /// `IPPROTO_RAW` sockets (CAP_NET_RAW): IPv4 implies IP_HDRINCL, and an
    /// IPv6 one includes the IPv6 header too.
    pub fn open() -> Result<Self> {
        let open = |family| {
            // SAFETY: plain socket(2); the fd is owned right away.
            let fd = unsafe { libc::socket(family, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::IPPROTO_RAW) };
            if fd < 0 {
                return Err(io::Error::last_os_error()).context("raw socket (needs CAP_NET_RAW)");
            }
            // SAFETY: fd was just returned by socket(2) and is ours.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            // A big send buffer: bursts go out without blocking.
            let size: libc::c_int = 4 << 20;
            // SAFETY: setsockopt with a correctly sized int.
            unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_SNDBUFFORCE,
                    (&size as *const libc::c_int).cast(),
                    size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            Ok(fd)
        };
        Ok(Sockets {
            v4: open(libc::AF_INET)?,
            v6: open(libc::AF_INET6)?,
        })
    }

    /// Sends one packet to its routing destination; the errno on failure.
    pub fn send(&self, packet: &Crafted) -> Result<(), i32> {
        let rc = match packet.route_to {
            IpAddr::V4(dst) => {
                // SAFETY: an all-zero sockaddr_in is valid; fields set below.
                let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
                sa.sin_family = libc::AF_INET as libc::sa_family_t;
                sa.sin_addr.s_addr = u32::from(dst).to_be();
                // SAFETY: sendto with a buffer and a sockaddr of the right size.
                unsafe {
                    libc::sendto(
                        self.v4.as_raw_fd(),
                        packet.bytes.as_ptr().cast(),
                        packet.bytes.len(),
                        0,
                        (&sa as *const libc::sockaddr_in).cast(),
                        size_of::<libc::sockaddr_in>() as libc::socklen_t,
                    )
                }
            }
            IpAddr::V6(dst) => {
                // SAFETY: an all-zero sockaddr_in6 is valid; fields set below.
                let mut sa: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
                sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                sa.sin6_addr.s6_addr = dst.octets();
                // SAFETY: as above.
                unsafe {
                    libc::sendto(
                        self.v6.as_raw_fd(),
                        packet.bytes.as_ptr().cast(),
                        packet.bytes.len(),
                        0,
                        (&sa as *const libc::sockaddr_in6).cast(),
                        size_of::<libc::sockaddr_in6>() as libc::socklen_t,
                    )
                }
            }
        };
        if rc < 0 {
            return Err(io::Error::last_os_error().raw_os_error().unwrap_or(0));
        }
        Ok(())
    }
}
