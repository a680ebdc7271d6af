//! One TCP session: connect upstream for a held connection request, then
//! relay between the smoltcp socket and the upstream socket.
//!
//! Data moves in one copy per direction, straight between the smoltcp
//! socket buffers and the kernel (`try_read` into the send buffer,
//! `try_write` from the receive buffer). Nothing else buffers: when one side
//! is slow, the other side's buffer fills and the TCP window closes
//! (backpressure).

use std::future::poll_fn;
use std::io;
use std::net::Shutdown;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Instant;

use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp;
use socket2::SockRef;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tracing::debug;

use super::{Pipelining, Shared};

/// Bytes one direction of a relay moves per poll before the session lets
/// the worker's other tasks run (it wakes itself to go on). Without a bound,
/// a session whose window just opened copies megabytes in one poll, and a
/// UDP reply or a new connection waits behind it.
const RELAY_BUDGET: usize = 128 * 1024;
use crate::packet::FlowKey;
use crate::proxy::{Target, reset_on_close};

pub async fn run(shared: Rc<Shared>, key: FlowKey) {
    // A fake-IP destination goes to the proxy as the name it stands for,
    // pinned so that the address is not reused while this session lives.
    let pool = shared
        .dns
        .as_deref()
        .and_then(|d| d.pool())
        .filter(|p| p.contains(key.dest.ip()));
    let (target, _pin) = match pool.map(|p| p.resolve(key.dest.ip())) {
        None => (Target::Ip(key.dest), None),
        Some(Some(pin)) => (Target::Domain(pin.name().to_owned(), key.dest.port()), Some(pin)),
        Some(None) => {
            debug!(flow = %key, "connection to a fake address that maps to no name, refusing");
            shared.stack.borrow_mut().refuse(key);
            shared.want_egress();
            return;
        }
    };
    let started = std::time::Instant::now();
    let pipelined = pipelining(&shared);
    // Boxed: the handshake's state (buffers, timer) is several times the
    // relay's, and an unboxed future would keep room for it in the task
    // for the whole life of the connection.
    let stream = match Box::pin(shared.upstream.connect_with(&target, pipelined)).await {
        Ok(stream) => {
            shared
                .stack
                .borrow_mut()
                .stats
                .connect_latency
                .observe(started.elapsed());
            stream
        }
        Err(error) => {
            debug!(flow = %key, %error, "upstream failed, refusing the connection");
            shared.stack.borrow_mut().refuse(key);
            shared.want_egress();
            return;
        }
    };
    let Some(handle) = shared.stack.borrow_mut().accept(key) else {
        debug!(flow = %key, "application withdrew before the upstream connected");
        return;
    };
    shared.want_egress();
    let mut relay = Relay {
        handle,
        stream,
        upstream_write_shut: false,
        app_write_shut: false,
        last_activity: Instant::now(),
    };
    let end = relay_until_end(&mut relay, &shared).await;
    debug!(flow = %key, ?end, "session ended");
    if matches!(end, End::AppReset | End::Idle) {
        reset_on_close(&relay.stream);
    }
    shared.stack.borrow_mut().finish(key, handle);
    shared.want_egress();
}

/// Whether this connection may pipeline its SOCKS5 request. The first
/// connection of a worker starts a probe of the proxy in the background;
/// connections go unpipelined until it says the proxy takes it.
pub fn pipelining(shared: &Rc<Shared>) -> bool {
    match shared.pipelining.get() {
        Pipelining::Works => true,
        Pipelining::Probing | Pipelining::No => false,
        Pipelining::Unknown => {
            shared.pipelining.set(Pipelining::Probing);
            let shared = shared.clone();
            tokio::task::spawn_local(async move {
                let found = shared.upstream.probe_pipelining().await;
                debug!(?found, "probed the proxy for pipelined SOCKS5 requests");
                shared.pipelining.set(match found {
                    Some(true) => Pipelining::Works,
                    Some(false) => Pipelining::No,
                    None => Pipelining::Unknown,
                });
            });
            false
        }
    }
}

/// Relays until the session ends, or until nothing moved either way for
/// the idle timeout (then both sides get a reset).
async fn relay_until_end(relay: &mut Relay, shared: &Shared) -> End {
    let Some(idle) = shared.tcp_idle_timeout else {
        return poll_fn(|cx| relay.poll(cx, shared)).await;
    };
    loop {
        let deadline = relay.last_activity + idle;
        tokio::select! {
            end = poll_fn(|cx| relay.poll(cx, shared)) => return end,
            () = tokio::time::sleep_until(deadline.into()) => {
                if relay.last_activity + idle <= Instant::now() {
                    shared.stack.borrow_mut().tcp(relay.handle).abort();
                    shared.want_egress();
                    return End::Idle;
                }
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// Nothing moved for --tcp-idle-timeout.
    Idle,
    /// Both directions closed with FINs.
    Closed,
    /// The application reset (or smoltcp timed out) the connection.
    AppReset,
    /// The upstream failed; the application gets a reset.
    UpstreamFailed,
}

struct Relay {
    handle: SocketHandle,
    stream: TcpStream,
    /// The application sent FIN and everything before it went upstream.
    upstream_write_shut: bool,
    /// The upstream sent EOF and the socket was told to FIN.
    app_write_shut: bool,
    /// When data last moved, for the idle timeout.
    last_activity: Instant,
}

/// What one direction of the relay did in one poll.
enum Step {
    Idle,
    Moved,
    /// Moved [`RELAY_BUDGET`] bytes and may have more.
    BudgetSpent,
    Failed(io::Error),
}

impl Relay {
    fn poll(&mut self, cx: &mut Context<'_>, shared: &Shared) -> Poll<End> {
        let mut stack = shared.stack.borrow_mut();
        let socket = stack.tcp(self.handle);
        let up = self.app_to_upstream(cx, socket);
        let down = self.upstream_to_app(cx, socket);
        if matches!(up, Step::BudgetSpent) || matches!(down, Step::BudgetSpent) {
            // Back of the queue: the rest after the others had their turn.
            cx.waker().wake_by_ref();
            shared.relay_budget_spent.set(true);
        }
        let moved = !matches!(up, Step::Idle) || !matches!(down, Step::Idle);
        if moved {
            self.last_activity = Instant::now();
        }
        let end = match (up, down) {
            (Step::Failed(error), _) | (_, Step::Failed(error)) => {
                debug!(%error, "upstream I/O failed, resetting the application");
                socket.abort();
                Some(End::UpstreamFailed)
            }
            _ if self.upstream_write_shut && self.app_write_shut => Some(End::Closed),
            _ if socket.state() == tcp::State::Closed => Some(End::AppReset),
            _ => None,
        };
        // smoltcp wakes these on every state change as well as on data and
        // space, so a reset from the application is noticed even while both
        // directions wait on the upstream.
        socket.register_recv_waker(cx.waker());
        socket.register_send_waker(cx.waker());
        drop(stack);
        if moved || end.is_some() {
            shared.want_egress();
        }
        match end {
            Some(end) => Poll::Ready(end),
            None => Poll::Pending,
        }
    }

    /// Application → upstream: from the socket's receive buffer into the
    /// upstream socket, as far as the upstream takes it.
    fn app_to_upstream(&mut self, cx: &mut Context<'_>, socket: &mut tcp::Socket<'_>) -> Step {
        let mut step = Step::Idle;
        let mut moved = 0;
        while !self.upstream_write_shut {
            if moved >= RELAY_BUDGET {
                return Step::BudgetSpent;
            }
            if !socket.can_recv() {
                if app_sent_fin(socket.state()) {
                    // The application half-closed: pass the FIN on.
                    let _ = SockRef::from(&self.stream).shutdown(Shutdown::Write);
                    self.upstream_write_shut = true;
                    step = Step::Moved;
                }
                break;
            }
            // poll_write, not try_write: a short write shows the socket
            // full, so the next round waits for readiness without asking.
            let chunk = RELAY_BUDGET - moved;
            let written =
                socket.recv(
                    |data| match Pin::new(&mut self.stream).poll_write(cx, &data[..data.len().min(chunk)]) {
                        Poll::Ready(Ok(n)) => (n, Poll::Ready(Ok(n))),
                        other => (0, other),
                    },
                );
            match written {
                Ok(Poll::Pending) => break,
                Ok(Poll::Ready(Ok(n))) => {
                    moved += n;
                    step = Step::Moved;
                }
                Ok(Poll::Ready(Err(e))) => return Step::Failed(e),
                Err(_) => break,
            }
        }
        step
    }

    /// Upstream → application: read the upstream straight into the socket's
    /// send buffer, as far as it has room.
    fn upstream_to_app(&mut self, cx: &mut Context<'_>, socket: &mut tcp::Socket<'_>) -> Step {
        let mut step = Step::Idle;
        let mut moved = 0;
        while !self.app_write_shut && socket.can_send() {
            if moved >= RELAY_BUDGET {
                return Step::BudgetSpent;
            }
            // poll_read, not try_read: a read that does not fill the room
            // shows the socket drained (edge-triggered epoll), so the next
            // round waits for readiness instead of asking the kernel again
            // only to hear EAGAIN.
            let chunk = RELAY_BUDGET - moved;
            let read = socket.send(|room| {
                let len = room.len().min(chunk);
                let mut buf = ReadBuf::new(&mut room[..len]);
                match Pin::new(&mut self.stream).poll_read(cx, &mut buf) {
                    Poll::Ready(Ok(())) => (buf.filled().len(), Poll::Ready(Ok(buf.filled().len()))),
                    other => (0, other.map_ok(|()| 0)),
                }
            });
            match read {
                Ok(Poll::Pending) => break,
                Ok(Poll::Ready(Ok(0))) => {
                    // Upstream EOF: FIN to the application after the data.
                    socket.close();
                    self.app_write_shut = true;
                    step = Step::Moved;
                }
                Ok(Poll::Ready(Ok(n))) => {
                    moved += n;
                    step = Step::Moved;
                }
                Ok(Poll::Ready(Err(e))) => return Step::Failed(e),
                Err(_) => break,
            }
        }
        step
    }
}

/// States in which the application's FIN has arrived (so, with the receive
/// buffer drained, everything it sent has been passed on).
fn app_sent_fin(state: tcp::State) -> bool {
    use tcp::State::*;
    matches!(state, CloseWait | LastAck | Closing | TimeWait)
}
