//! DNS for the tunnel, sans-I/O: the fake-IP pool shared by all workers, the
//! local responder that answers from it, and DNS-over-TCP framing. Workers
//! feed these bytes and act on what they return; nothing here does I/O, and
//! the time is passed in (only a dropped `PinGuard` reads the clock itself).

pub mod fake_ip;
mod fuzz;
pub mod responder;
pub mod service;
pub mod tcp;

use std::fmt;
use std::str::FromStr;

pub use fake_ip::{FakeAddrs, FakeIpConfig, FakeIpConfigError, FakeIpError, FakeIpPool, PinGuard};
pub use fuzz::{fuzz_frame_reader, fuzz_responder};
pub use responder::{Reply, Responder};
pub use service::{DnsRoute, DnsService};
pub use tcp::{FrameError, FrameReader, frame};

/// How DNS queries from the tunnel are resolved (`--dns MODE`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum DnsMode {
    /// Ordinary UDP through the proxy's UDP association.
    #[default]
    Udp,
    /// Queries sent as DNS over TCP through a SOCKS5 CONNECT, for proxies
    /// without UDP.
    OverTcp,
    /// A/AAAA answered locally from the fake-IP pool; connections to fake
    /// addresses go to the proxy as domain names.
    FakeIp,
}

impl DnsMode {
    /// Every mode, in the order the CLI lists them.
    pub const ALL: [DnsMode; 3] = [DnsMode::Udp, DnsMode::OverTcp, DnsMode::FakeIp];

    /// The CLI spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            DnsMode::Udp => "udp",
            DnsMode::OverTcp => "over-tcp",
            DnsMode::FakeIp => "fake-ip",
        }
    }
}

impl fmt::Display for DnsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown `--dns` value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown DNS mode `{0}`: expected one of udp, over-tcp, fake-ip")]
pub struct ParseDnsModeError(String);

impl FromStr for DnsMode {
    type Err = ParseDnsModeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|mode| mode.as_str() == s)
            .ok_or_else(|| ParseDnsModeError(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_mode_round_trips_through_its_cli_spelling() {
        for mode in DnsMode::ALL {
            assert_eq!(mode.to_string().parse::<DnsMode>(), Ok(mode));
        }
        assert_eq!(DnsMode::default(), DnsMode::Udp);
    }

    #[test]
    fn unknown_dns_mode_lists_the_valid_ones() {
        let error = "fakeip".parse::<DnsMode>().unwrap_err();
        assert_eq!(
            error.to_string(),
            "unknown DNS mode `fakeip`: expected one of udp, over-tcp, fake-ip"
        );
    }
}
