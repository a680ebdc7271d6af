//! The XDP classifier's decision: which Ethernet frames go to the workers'
//! AF_XDP sockets, and which go on to the kernel untouched.
//!
//! The `classify` program (main.rs) runs [`classify_frame`] on every frame
//! the interface receives, with the kernel maps behind [`AddressSets`];
//! user space runs the very same code on byte slices (tests here and in
//! `tun2socks::xdp`). Parsing reads each header once as a fixed-size array
//! through [`PacketBytes`], at offsets the verifier can bound.
//!
//! The rules, in order:
//!
//! 1. Ethernet, with at most one 802.1Q / 802.1ad tag. Not IPv4/IPv6 (ARP,
//!    LLDP, ...): [`XdpCounter::PassNotIp`].
//! 2. An IP header that is cut short, has the wrong version or an IPv4
//!    header length under 20 bytes: [`XdpCounter::PassMalformed`].
//! 3. Neither TCP nor UDP (ICMP, ICMPv6 and so NDP, ...):
//!    [`XdpCounter::PassNotTcpUdp`]. An IPv6 extension header (hop-by-hop,
//!    routing, fragment, destination options, AH, ESP, mobility, HIP,
//!    shim6, experimental) is not parsed: [`XdpCounter::PassIpv6Extension`].
//! 4. Multicast or limited broadcast destinations (224.0.0.0/4,
//!    255.255.255.255, ff00::/8): [`XdpCounter::PassMulticast`] (DHCP,
//!    mDNS, SSDP belong to the LAN, never to the proxy).
//! 5. A destination that is one of the box's own addresses (the `LOCAL_*`
//!    maps): [`XdpCounter::PassLocal`].
//! 6. A destination in a bypassed prefix: [`XdpCounter::PassBypass`].
//! 7. A destination outside every routed prefix: [`XdpCounter::PassNotRouted`].
//! 8. A TCP/UDP header too short for the ports (first fragments and
//!    unfragmented packets only; later IPv4 fragments carry no ports and go
//!    to the worker, which reassembles or drops them):
//!    [`XdpCounter::PassMalformed`].
//! 9. Everything else is a proxied flow: [`XdpCounter::Redirected`] into the
//!    AF_XDP socket of the frame's rx queue. If no socket is bound there the
//!    frame is dropped and counted as [`XdpCounter::RedirectFailed`]: a
//!    proxied flow never leaks around the proxy.

use crate::{IPPROTO_TCP, IPPROTO_UDP, PacketBytes};

pub const ETH_HEADER_LEN: usize = 14;
pub const VLAN_TAG_LEN: usize = 4;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;

const IPV4_HEADER_LEN: usize = 20;
const IPV6_HEADER_LEN: usize = 40;
/// The fragment offset bits of the IPv4 flags/fragment-offset field.
const IPV4_OFFSET_MASK: u16 = 0x1fff;

/// Map sizes, shared by the program and its loader.
pub const MAX_ROUTED_PREFIXES: u32 = 1024;
pub const MAX_BYPASS_PREFIXES: u32 = 1024;
pub const MAX_LOCAL_ADDRESSES: u32 = 256;
/// XSKMAP entries: one per rx queue index.
pub const MAX_XSK_QUEUES: u32 = 256;

/// What the `classify` program decided for a frame; the index of its
/// per-CPU counter in `XDP_COUNTERS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum XdpCounter {
    /// A proxied flow, redirected into the rx queue's AF_XDP socket.
    Redirected = 0,
    /// Not IPv4/IPv6 (ARP, LLDP, ...).
    PassNotIp = 1,
    /// IP, but neither TCP nor UDP (ICMP, ICMPv6/NDP, ...).
    PassNotTcpUdp = 2,
    /// IPv6 with an extension header after the fixed header.
    PassIpv6Extension = 3,
    /// To a multicast or the limited broadcast address.
    PassMulticast = 4,
    /// To one of the box's own addresses.
    PassLocal = 5,
    /// To a bypassed prefix.
    PassBypass = 6,
    /// To no routed prefix.
    PassNotRouted = 7,
    /// Cut short or inconsistent headers.
    PassMalformed = 8,
    /// A proxied flow with no AF_XDP socket on its queue: dropped.
    RedirectFailed = 9,
}

impl XdpCounter {
    pub const COUNT: u32 = 10;
    pub const ALL: [XdpCounter; 10] = [
        XdpCounter::Redirected,
        XdpCounter::PassNotIp,
        XdpCounter::PassNotTcpUdp,
        XdpCounter::PassIpv6Extension,
        XdpCounter::PassMulticast,
        XdpCounter::PassLocal,
        XdpCounter::PassBypass,
        XdpCounter::PassNotRouted,
        XdpCounter::PassMalformed,
        XdpCounter::RedirectFailed,
    ];

    pub fn name(self) -> &'static str {
        match self {
            XdpCounter::Redirected => "redirected",
            XdpCounter::PassNotIp => "pass_not_ip",
            XdpCounter::PassNotTcpUdp => "pass_not_tcp_udp",
            XdpCounter::PassIpv6Extension => "pass_ipv6_extension",
            XdpCounter::PassMulticast => "pass_multicast",
            XdpCounter::PassLocal => "pass_local",
            XdpCounter::PassBypass => "pass_bypass",
            XdpCounter::PassNotRouted => "pass_not_routed",
            XdpCounter::PassMalformed => "pass_malformed",
            XdpCounter::RedirectFailed => "redirect_failed",
        }
    }
}

/// The lookups the decision needs; the program answers them from its maps
/// (`LOCAL_*` hash maps, `BYPASS_*` and `ROUTED_*` LPM tries). Addresses are
/// in network byte order, as they sit in the packet.
pub trait AddressSets {
    fn is_local_v4(&self, dst: &[u8; 4]) -> bool;
    fn is_local_v6(&self, dst: &[u8; 16]) -> bool;
    fn is_bypassed_v4(&self, dst: &[u8; 4]) -> bool;
    fn is_bypassed_v6(&self, dst: &[u8; 16]) -> bool;
    fn is_routed_v4(&self, dst: &[u8; 4]) -> bool;
    fn is_routed_v6(&self, dst: &[u8; 16]) -> bool;
}

/// The destination of a TCP/UDP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    V4([u8; 4]),
    V6([u8; 16]),
}

/// What parsing a frame found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    NotIp,
    Malformed,
    NotTcpUdp,
    Ipv6Extension,
    TcpUdp {
        dst: Destination,
        proto: u8,
        /// Whether the TCP/UDP header is there to read the ports from (a
        /// later IPv4 fragment has none, and that is fine).
        ports_ok: bool,
    },
}

/// The ethertype of the frame and the offset of its network header: after
/// the Ethernet header and at most one VLAN tag. `None` when the frame is
/// shorter than that.
#[inline(always)]
pub fn network_header<P: PacketBytes + ?Sized>(frame: &P) -> Option<(u16, usize)> {
    let eth = frame.read::<ETH_HEADER_LEN>(0)?;
    let ethertype = u16::from_be_bytes([eth[12], eth[13]]);
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        let tag = frame.read::<VLAN_TAG_LEN>(ETH_HEADER_LEN)?;
        Some((u16::from_be_bytes([tag[2], tag[3]]), ETH_HEADER_LEN + VLAN_TAG_LEN))
    } else {
        Some((ethertype, ETH_HEADER_LEN))
    }
}

#[inline(always)]
const fn is_tcp_or_udp(proto: u8) -> bool {
    proto == IPPROTO_TCP || proto == IPPROTO_UDP
}

/// IPv6 next-header values that are extension headers (RFC 8200 and the
/// IANA list), which the classifier does not walk.
#[inline(always)]
pub const fn is_ipv6_extension(next: u8) -> bool {
    matches!(next, 0 | 43 | 44 | 50 | 51 | 60 | 135 | 139 | 140 | 253 | 254)
}

#[inline(always)]
fn parse_ipv4<P: PacketBytes + ?Sized>(frame: &P, at: usize) -> Parsed {
    let Some(h) = frame.read::<IPV4_HEADER_LEN>(at) else {
        return Parsed::Malformed;
    };
    // The mask keeps the offset provably small for the verifier.
    let header_len = usize::from(h[0] & 0x0f) * 4;
    if h[0] >> 4 != 4 || header_len < IPV4_HEADER_LEN {
        return Parsed::Malformed;
    }
    let proto = h[9];
    if !is_tcp_or_udp(proto) {
        return Parsed::NotTcpUdp;
    }
    let later_fragment = u16::from_be_bytes([h[6], h[7]]) & IPV4_OFFSET_MASK != 0;
    let ports_ok = later_fragment || frame.read::<4>(at + header_len).is_some();
    Parsed::TcpUdp {
        dst: Destination::V4([h[16], h[17], h[18], h[19]]),
        proto,
        ports_ok,
    }
}

#[inline(always)]
fn parse_ipv6<P: PacketBytes + ?Sized>(frame: &P, at: usize) -> Parsed {
    let Some(h) = frame.read::<IPV6_HEADER_LEN>(at) else {
        return Parsed::Malformed;
    };
    if h[0] >> 4 != 6 {
        return Parsed::Malformed;
    }
    let next = h[6];
    if !is_tcp_or_udp(next) {
        return if is_ipv6_extension(next) {
            Parsed::Ipv6Extension
        } else {
            Parsed::NotTcpUdp
        };
    }
    let mut dst = [0u8; 16];
    dst.copy_from_slice(&h[24..40]);
    Parsed::TcpUdp {
        dst: Destination::V6(dst),
        proto: next,
        ports_ok: frame.read::<4>(at + IPV6_HEADER_LEN).is_some(),
    }
}

/// Parses an Ethernet frame as far as the decision needs.
#[inline(always)]
pub fn parse_frame<P: PacketBytes + ?Sized>(frame: &P) -> Parsed {
    match network_header(frame) {
        None => Parsed::Malformed,
        Some((ETH_P_IP, at)) => parse_ipv4(frame, at),
        Some((ETH_P_IPV6, at)) => parse_ipv6(frame, at),
        Some(_) => Parsed::NotIp,
    }
}

#[inline(always)]
const fn is_multicast_v4(a: &[u8; 4]) -> bool {
    a[0] & 0xf0 == 0xe0 || (a[0] == 0xff && a[1] == 0xff && a[2] == 0xff && a[3] == 0xff)
}

/// The decision for what [`parse_frame`] found.
#[inline(always)]
pub fn decide<S: AddressSets + ?Sized>(parsed: Parsed, sets: &S) -> XdpCounter {
    let (dst, ports_ok) = match parsed {
        Parsed::NotIp => return XdpCounter::PassNotIp,
        Parsed::Malformed => return XdpCounter::PassMalformed,
        Parsed::NotTcpUdp => return XdpCounter::PassNotTcpUdp,
        Parsed::Ipv6Extension => return XdpCounter::PassIpv6Extension,
        Parsed::TcpUdp { dst, ports_ok, .. } => (dst, ports_ok),
    };
    let verdict = match &dst {
        Destination::V4(a) => {
            if is_multicast_v4(a) {
                XdpCounter::PassMulticast
            } else if sets.is_local_v4(a) {
                XdpCounter::PassLocal
            } else if sets.is_bypassed_v4(a) {
                XdpCounter::PassBypass
            } else if !sets.is_routed_v4(a) {
                XdpCounter::PassNotRouted
            } else {
                XdpCounter::Redirected
            }
        }
        Destination::V6(a) => {
            if a[0] == 0xff {
                XdpCounter::PassMulticast
            } else if sets.is_local_v6(a) {
                XdpCounter::PassLocal
            } else if sets.is_bypassed_v6(a) {
                XdpCounter::PassBypass
            } else if !sets.is_routed_v6(a) {
                XdpCounter::PassNotRouted
            } else {
                XdpCounter::Redirected
            }
        }
    };
    if verdict == XdpCounter::Redirected && !ports_ok {
        XdpCounter::PassMalformed
    } else {
        verdict
    }
}

/// The whole decision for one Ethernet frame: [`XdpCounter::Redirected`]
/// means "into the AF_XDP socket", every other value means "to the kernel".
#[inline(always)]
pub fn classify_frame<P: PacketBytes + ?Sized, S: AddressSets + ?Sized>(frame: &P, sets: &S) -> XdpCounter {
    decide(parse_frame(frame), sets)
}

#[cfg(test)]
mod tests;
