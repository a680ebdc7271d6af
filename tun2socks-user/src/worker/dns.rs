//! DNS on the worker: the local responder answers inline on the packet path
//! (a lookup in the fake-IP pool, no waiting), and queries that must leave
//! the host go as DNS over TCP through a SOCKS5 CONNECT in a task of their
//! own, so a slow resolver never holds up the worker.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::debug;

use super::Shared;
use crate::device::port::PacketPort;
use crate::dns::{FrameReader, Reply, frame};
use crate::packet::{FlowKey, write_udp};
use crate::proxy::Target;

/// DNS-over-TCP queries in flight per worker; more are dropped (the client
/// retries), so a query storm cannot grow memory without bound.
pub const MAX_QUERIES_IN_FLIGHT: usize = 256;
/// Time for the resolver to answer once connected.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DnsStats {
    pub answered_locally: u64,
    pub sent_over_tcp: u64,
    pub failed: u64,
    pub dropped: u64,
}

/// A query to the local responder.
pub fn local(shared: &Rc<Shared>, key: FlowKey, query: &[u8]) {
    let Some(dns) = shared.dns.as_ref() else { return };
    let Some(responder) = dns.responder() else { return };
    match responder.handle(query, Instant::now()) {
        Reply::Answer(answer) => {
            shared.dns_stats.borrow_mut().answered_locally += 1;
            reply(shared, key.dest, key.client, &answer);
        }
        // Not an A/AAAA question: ask the real resolver, answer as ourselves.
        Reply::Forward => over_tcp(shared, key, dns.upstream, query),
        Reply::Drop => shared.dns_stats.borrow_mut().dropped += 1,
    }
}

/// Sends `query` to `server` as DNS over TCP through the proxy; the answer
/// goes back to the client as if from the address it asked (`key.dest`).
pub fn over_tcp(shared: &Rc<Shared>, key: FlowKey, server: SocketAddr, query: &[u8]) {
    let in_flight = shared.dns_in_flight.get();
    let Ok(framed) = frame(query) else { return };
    if in_flight >= MAX_QUERIES_IN_FLIGHT {
        shared.dns_stats.borrow_mut().dropped += 1;
        return;
    }
    shared.dns_stats.borrow_mut().sent_over_tcp += 1;
    let slot = InFlight::take(shared.clone());
    tokio::task::spawn_local(async move {
        let shared = &slot.0;
        match ask(shared, server, &framed).await {
            Ok(answer) => {
                reply(shared, key.dest, key.client, &answer);
                shared.flush();
            }
            Err(error) => {
                debug!(%server, %error, "DNS over TCP failed");
                shared.dns_stats.borrow_mut().failed += 1;
            }
        }
    });
}

async fn ask(shared: &Shared, server: SocketAddr, framed: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut stream = shared.upstream.connect(&Target::Ip(server)).await?;
    stream.write_all(framed).await?;
    let mut reader = FrameReader::new();
    let mut buf = [0u8; 4096];
    let read_answer = async {
        loop {
            let n = stream.read(&mut buf).await?;
            anyhow::ensure!(n > 0, "resolver closed the connection without answering");
            reader.feed(&buf[..n]);
            if let Some(answer) = reader.next_message()? {
                return Ok(answer);
            }
        }
    };
    tokio::time::timeout(ANSWER_TIMEOUT, read_answer)
        .await
        .map_err(|_| anyhow::anyhow!("no answer in {ANSWER_TIMEOUT:?}"))?
}

/// One of the worker's in-flight query slots, given back when the query's
/// task ends, however it ends.
struct InFlight(Rc<Shared>);

impl InFlight {
    fn take(shared: Rc<Shared>) -> InFlight {
        shared.dns_in_flight.set(shared.dns_in_flight.get() + 1);
        InFlight(shared)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dns_in_flight.set(self.0.dns_in_flight.get() - 1);
    }
}

/// Writes `answer` to the port. The caller flushes: a local answer is
/// written during ingress and goes out with the worker's next egress pass;
/// an answer from over TCP flushes at once.
fn reply(shared: &Shared, from: SocketAddr, to: SocketAddr, answer: &[u8]) {
    let mut packet = Vec::with_capacity(answer.len() + 48);
    if write_udp(&mut packet, from, to, answer).is_some() && shared.port.send(&packet).is_ok() {
        return;
    }
    shared.dns_stats.borrow_mut().failed += 1;
}
