//! Helpers shared by the fuzz targets: the steering key user space expects
//! for a flow, and a scripted in-memory proxy stream.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// An address as the eBPF flow key holds it (IPv4 in the first word).
pub fn key_words(ip: IpAddr) -> [u32; 4] {
    match ip {
        IpAddr::V4(a) => [u32::from(a), 0, 0, 0],
        IpAddr::V6(a) => {
            let o = a.octets();
            let w = |i: usize| u32::from_be_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
            [w(0), w(4), w(8), w(12)]
        }
    }
}

/// The steering key of a TCP flow (`client` → `dest`).
pub fn tcp_key(client: SocketAddr, dest: SocketAddr) -> tun2socks_ebpf::FlowKey {
    tun2socks_ebpf::FlowKey::tcp(key_words(client.ip()), key_words(dest.ip()), client.port(), dest.port())
}

/// The steering key of a UDP source endpoint.
pub fn udp_key(client: SocketAddr) -> tun2socks_ebpf::FlowKey {
    tun2socks_ebpf::FlowKey::udp(key_words(client.ip()), client.port())
}

/// A proxy connection in memory: reads yield `incoming` in pieces whose
/// sizes come from `cuts` (cycled; 0 counts as 1), then end of stream.
/// Everything written is kept in `written`. It never returns `Pending`.
pub struct ScriptedStream<'a> {
    incoming: &'a [u8],
    cuts: &'a [u8],
    next_cut: usize,
    pub consumed: usize,
    pub written: Vec<u8>,
}

impl<'a> ScriptedStream<'a> {
    pub fn new(incoming: &'a [u8], cuts: &'a [u8]) -> Self {
        ScriptedStream {
            incoming,
            cuts,
            next_cut: 0,
            consumed: 0,
            written: Vec::new(),
        }
    }
}

impl AsyncRead for ScriptedStream<'_> {
    fn poll_read(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let rest = &self.incoming[self.consumed..];
        let cut = match self.cuts {
            [] => rest.len(),
            cuts => usize::from(cuts[self.next_cut % cuts.len()]).max(1),
        };
        let n = cut.min(rest.len()).min(buf.remaining());
        buf.put_slice(&rest[..n]);
        self.consumed += n;
        self.next_cut += 1;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for ScriptedStream<'_> {
    fn poll_write(mut self: Pin<&mut Self>, _: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        self.written.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Polls a future that never waits (it only talks to a [`ScriptedStream`])
/// to completion; panics if it ever returns `Pending`, which would be a
/// handshake waiting on something other than the stream.
pub fn run_to_completion<F: Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let mut cx = Context::from_waker(std::task::Waker::noop());
    match future.as_mut().poll(&mut cx) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("the handshake waited although the stream never does"),
    }
}
