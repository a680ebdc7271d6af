//! The worker's priority lane for UDP replies.
//!
//! A reply that reaches a relay socket would otherwise wait until the
//! runtime next polls its reactor and runs the session's task: behind a
//! whole round of bulk TCP work (smoltcp's egress, every relay's copy). The
//! lane is a second, level-triggered epoll set holding only the worker's
//! ready UDP relay sockets. The worker loop asks it, without blocking,
//! before it reads the packet port and after every egress chunk, and
//! delivers what is waiting there and then: a datagram never waits for more
//! than one chunk of TCP work. The session task still watches its socket
//! (the runtime's reactor), so a reply that comes while the worker is idle
//! is delivered as before; whoever looks first takes it.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::rc::Rc;

use tokio::net::UdpSocket;

use crate::proxy::UdpFraming;

/// Ready sockets taken per look.
const EVENTS: usize = 16;

/// A relay socket in the lane, and what delivering its datagrams needs.
#[derive(Clone)]
pub struct Member {
    pub socket: Rc<UdpSocket>,
    pub client: SocketAddr,
    pub framing: UdpFraming,
}

pub struct UdpLane {
    epoll: OwnedFd,
    members: RefCell<HashMap<u64, Member>>,
}

impl UdpLane {
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain syscall; the fd is owned from here on.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(UdpLane {
            // SAFETY: fd is a fresh epoll fd nobody else owns.
            epoll: unsafe { OwnedFd::from_raw_fd(fd) },
            members: RefCell::default(),
        })
    }

    /// Adds session `id`'s relay socket.
    pub fn join(&self, id: u64, member: Member) -> io::Result<()> {
        let mut event = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: id,
        };
        let fd = member.socket.as_raw_fd();
        // SAFETY: both fds are open; event is a valid epoll_event.
        if unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut event) } != 0 {
            return Err(io::Error::last_os_error());
        }
        self.members.borrow_mut().insert(id, member);
        Ok(())
    }

    /// Removes session `id`'s socket (the session ends).
    pub fn leave(&self, id: u64) {
        if let Some(member) = self.members.borrow_mut().remove(&id) {
            let fd = member.socket.as_raw_fd();
            // SAFETY: the socket is still open (the member held it); a
            // failure can only mean it was never added, which is harmless.
            unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), libc::EPOLL_CTL_DEL, fd, std::ptr::null_mut()) };
        }
    }

    /// The members with a datagram waiting now (never blocks). Nothing is
    /// asked of the kernel while the lane is empty.
    pub fn ready(&self) -> Vec<Member> {
        let members = self.members.borrow();
        if members.is_empty() {
            return Vec::new();
        }
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; EVENTS];
        // SAFETY: events has room for EVENTS entries; timeout 0 never blocks.
        let n = unsafe { libc::epoll_wait(self.epoll.as_raw_fd(), events.as_mut_ptr(), EVENTS as i32, 0) };
        let n = usize::try_from(n).unwrap_or(0);
        events[..n]
            .iter()
            .filter_map(|event| members.get(&{ event.u64 }).cloned())
            .collect()
    }
}

/// `recvfrom` on the socket itself, whatever the runtime believes of its
/// readiness.
pub fn recv_from_now(socket: &UdpSocket, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
    // SAFETY: u8 and MaybeUninit<u8> have the same layout, and recv_from
    // only writes initialised bytes into the buffer.
    let uninit = unsafe { &mut *(std::ptr::from_mut::<[u8]>(buf) as *mut [std::mem::MaybeUninit<u8>]) };
    let (n, from) = socket2::SockRef::from(socket).recv_from(uninit)?;
    let from = from
        .as_socket()
        .ok_or_else(|| io::Error::other("a relay datagram from a non-IP address"))?;
    Ok((n, from))
}

/// Takes a session's socket out of the lane when the session ends, however
/// it ends.
pub struct LaneGuard<'a> {
    pub lane: &'a UdpLane,
    pub id: u64,
}

impl Drop for LaneGuard<'_> {
    fn drop(&mut self) {
        self.lane.leave(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(socket: &Rc<UdpSocket>) -> Member {
        Member {
            socket: socket.clone(),
            client: "10.0.0.1:5000".parse().unwrap(),
            framing: UdpFraming::Plain,
        }
    }

    #[test]
    fn reports_only_members_with_a_datagram_waiting_until_they_leave() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let lane = UdpLane::new().unwrap();
            assert!(lane.ready().is_empty(), "an empty lane asks nothing");
            let quiet = Rc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
            let busy = Rc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
            lane.join(1, member(&quiet)).unwrap();
            lane.join(2, member(&busy)).unwrap();
            assert!(lane.ready().is_empty());

            let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            sender.send_to(b"reply", busy.local_addr().unwrap()).unwrap();
            let ready = lane.ready();
            assert_eq!(ready.len(), 1);
            assert_eq!(ready[0].socket.local_addr().unwrap(), busy.local_addr().unwrap());
            // Level-triggered: still there until read.
            assert_eq!(lane.ready().len(), 1);
            let mut buf = [0; 16];
            // The runtime has not polled its reactor: only a direct read sees it.
            let _ = busy.try_recv(&mut buf);
            assert_eq!(
                socket2::SockRef::from(&*busy)
                    .recv(unsafe { &mut *(std::ptr::from_mut::<[u8]>(&mut buf) as *mut [std::mem::MaybeUninit<u8>]) })
                    .unwrap(),
                5
            );
            assert!(lane.ready().is_empty());

            sender.send_to(b"late", busy.local_addr().unwrap()).unwrap();
            {
                let _guard = LaneGuard { lane: &lane, id: 2 };
            }
            assert!(lane.ready().is_empty(), "a member that left is not reported");
        });
    }
}
