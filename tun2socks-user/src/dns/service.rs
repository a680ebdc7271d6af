//! What the daemon does with DNS, decided once at start and shared
//! read-only by every worker (the fake-IP pool inside is the one piece of
//! shared mutable state, and it is touched per query and per new flow, never
//! per packet).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use super::{DnsMode, FakeIpPool, Responder};
use crate::packet::FlowKey;

pub const DNS_PORT: u16 = 53;

#[derive(Debug)]
pub struct DnsService {
    pub mode: DnsMode,
    /// Where the local responder answers (fake-ip mode).
    pub listen: Vec<IpAddr>,
    /// Where queries the responder does not answer itself go (DNS over TCP
    /// through the proxy).
    pub upstream: SocketAddr,
    responder: Option<Responder>,
}

/// What a worker does with a UDP datagram, as far as DNS goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsRoute {
    /// A query to the local responder.
    Local,
    /// A query to be sent as DNS over TCP to this server.
    OverTcp(SocketAddr),
    /// Not DNS business: ordinary UDP.
    Pass,
}

impl DnsService {
    pub fn new(mode: DnsMode, listen: Vec<IpAddr>, upstream: SocketAddr, pool: Option<Arc<FakeIpPool>>) -> Self {
        let responder = pool.filter(|_| mode == DnsMode::FakeIp).map(Responder::new);
        DnsService {
            mode,
            listen,
            upstream,
            responder,
        }
    }

    pub fn responder(&self) -> Option<&Responder> {
        self.responder.as_ref()
    }

    pub fn pool(&self) -> Option<&Arc<FakeIpPool>> {
        self.responder.as_ref().map(Responder::pool)
    }

    pub fn route(&self, key: &FlowKey) -> DnsRoute {
        if key.dest.port() != DNS_PORT {
            return DnsRoute::Pass;
        }
        match self.mode {
            DnsMode::FakeIp if self.listen.contains(&key.dest.ip()) => DnsRoute::Local,
            DnsMode::OverTcp => DnsRoute::OverTcp(key.dest),
            _ => DnsRoute::Pass,
        }
    }
}
