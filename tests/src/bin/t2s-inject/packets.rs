//! Building packets: well-formed pieces (IPv4, IPv6, TCP, UDP, checksums)
//! and the malformed mix made of them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

const TCP: u8 = 6;
const UDP: u8 = 17;
const ICMP: u8 = 1;
const ICMPV6: u8 = 58;
const HOP_BY_HOP: u8 = 0;
const ROUTING: u8 = 43;
const FRAGMENT: u8 = 44;
const DEST_OPTS: u8 = 60;
const NO_NEXT: u8 = 59;

const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const ACK: u8 = 0x10;

/// Source ports of every packet that might open a UDP session: a handful,
/// so that the malformed mix cannot fill the UDP session table.
const UDP_PORTS: [u16; 4] = [40_000, 40_001, 40_002, 40_003];
/// Source ports of SYNs in the malformed mix: a bounded set of flows, whose
/// repeats are retransmissions of a held SYN.
const SYN_PORTS: u16 = 256;
const SYN_PORT_BASE: u16 = 50_000;

/// One packet to send.
pub struct Crafted {
    pub bytes: Vec<u8>,
    /// Where the kernel routes it (the header may say otherwise).
    pub route_to: IpAddr,
    pub category: &'static str,
}

/// xorshift64*: fast, seeded, no dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next_u64() % (hi - lo + 1) as u64) as usize
    }
    pub fn byte(&mut self) -> u8 {
        self.next_u64() as u8
    }
    pub fn u16(&mut self) -> u16 {
        self.next_u64() as u16
    }
    pub fn u32(&mut self) -> u32 {
        self.next_u64() as u32
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.byte()).collect()
    }
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.range(0, items.len() - 1)]
    }
}

/// Internet checksum over `parts`.
fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum = 0u32;
    let mut odd: Option<u8> = None;
    for part in parts {
        for &b in *part {
            match odd.take() {
                Some(hi) => sum += u32::from(u16::from_be_bytes([hi, b])),
                None => odd = Some(b),
            }
        }
    }
    if let Some(hi) = odd {
        sum += u32::from(u16::from_be_bytes([hi, 0]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The transport checksum over the pseudo-header and `segment`.
fn l4_checksum(src: IpAddr, dst: IpAddr, proto: u8, segment: &[u8]) -> u16 {
    let len = segment.len() as u32;
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let pseudo = [
                &s.octets()[..],
                &d.octets()[..],
                &[0, proto],
                &(len as u16).to_be_bytes()[..],
            ]
            .concat();
            checksum(&[&pseudo, segment])
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let pseudo = [
                &s.octets()[..],
                &d.octets()[..],
                &len.to_be_bytes()[..],
                &[0, 0, 0, proto],
            ]
            .concat();
            checksum(&[&pseudo, segment])
        }
        _ => 0,
    }
}

/// A TCP segment. `offset_words` is the data offset as sent (5 + options
/// for a sane one); `good_checksum` false flips the checksum.
#[allow(clippy::too_many_arguments)]
fn tcp(
    rng: &mut Rng,
    src: SocketAddr,
    dst: SocketAddr,
    flags: u8,
    offset_words: u8,
    options: &[u8],
    payload: &[u8],
    good_checksum: bool,
) -> Vec<u8> {
    let mut s = Vec::with_capacity(20 + options.len() + payload.len());
    s.extend_from_slice(&src.port().to_be_bytes());
    s.extend_from_slice(&dst.port().to_be_bytes());
    s.extend_from_slice(&rng.u32().to_be_bytes()); // seq
    let ack = if flags & ACK != 0 { rng.u32() } else { 0 };
    s.extend_from_slice(&ack.to_be_bytes());
    s.push((offset_words & 0x0f) << 4);
    s.push(flags);
    s.extend_from_slice(&[0xff, 0xff, 0, 0, 0, 0]); // window, checksum, urgent
    s.extend_from_slice(options);
    s.extend_from_slice(payload);
    let sum = l4_checksum(src.ip(), dst.ip(), TCP, &s) ^ if good_checksum { 0 } else { 0x5a5a };
    s[16..18].copy_from_slice(&sum.to_be_bytes());
    s
}

/// A UDP datagram; `len_field` overrides the length field.
fn udp(src: SocketAddr, dst: SocketAddr, payload: &[u8], len_field: Option<u16>, good_checksum: bool) -> Vec<u8> {
    let len = (8 + payload.len()) as u16;
    let mut s = Vec::with_capacity(8 + payload.len());
    s.extend_from_slice(&src.port().to_be_bytes());
    s.extend_from_slice(&dst.port().to_be_bytes());
    s.extend_from_slice(&len_field.unwrap_or(len).to_be_bytes());
    s.extend_from_slice(&[0, 0]);
    s.extend_from_slice(payload);
    let mut sum = l4_checksum(src.ip(), dst.ip(), UDP, &s);
    if !good_checksum {
        sum ^= 0x5a5a;
    }
    if sum == 0 {
        sum = 0xffff;
    }
    s[6..8].copy_from_slice(&sum.to_be_bytes());
    s
}

/// An IPv4 packet; `first_byte` overrides version/IHL, `frag` is the
/// flags/fragment-offset field.
fn ipv4(rng: &mut Rng, src: Ipv4Addr, dst: Ipv4Addr, proto: u8, options: &[u8], frag: u16, payload: &[u8]) -> Vec<u8> {
    let ihl = 5 + options.len().div_ceil(4);
    let total = ihl * 4 + payload.len();
    let mut p = Vec::with_capacity(total);
    p.push(0x40 | (ihl as u8 & 0x0f));
    p.push(0);
    p.extend_from_slice(&(total as u16).to_be_bytes());
    p.extend_from_slice(&rng.u16().to_be_bytes());
    p.extend_from_slice(&frag.to_be_bytes());
    p.extend_from_slice(&[64, proto, 0, 0]);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(options);
    p.resize(ihl * 4, 0);
    let sum = checksum(&[&p[..20]]);
    p[10..12].copy_from_slice(&sum.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

/// An IPv6 packet; `payload_len` overrides the payload length field.
fn ipv6(src: Ipv6Addr, dst: Ipv6Addr, next: u8, payload: &[u8], payload_len: Option<u16>) -> Vec<u8> {
    let mut p = Vec::with_capacity(40 + payload.len());
    p.extend_from_slice(&[0x60, 0, 0, 0]);
    p.extend_from_slice(&payload_len.unwrap_or(payload.len() as u16).to_be_bytes());
    p.extend_from_slice(&[next, 64]);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(payload);
    p
}

/// A connection request from a random port, with an MSS option; well-formed
/// but for the TCP checksum when `good_checksum` is false.
pub fn syn(rng: &mut Rng, src: IpAddr, to: SocketAddr, good_checksum: bool, category: &'static str) -> Crafted {
    let from = SocketAddr::new(src, rng.range(1024, 65_535) as u16);
    let options = [2, 4, 0x05, 0xb4]; // MSS 1460
    let segment = tcp(rng, from, to, SYN, 6, &options, &[], good_checksum);
    let bytes = match (src, to.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => ipv4(rng, s, d, TCP, &[], 0x4000, &segment),
        (IpAddr::V6(s), IpAddr::V6(d)) => ipv6(s, d, TCP, &segment, None),
        _ => panic!("source and destination families differ"),
    };
    Crafted {
        bytes,
        route_to: to.ip(),
        category,
    }
}

#[derive(Clone, Copy)]
pub struct Endpoints {
    pub src4: Ipv4Addr,
    pub src6: Ipv6Addr,
    pub dst4: Ipv4Addr,
    pub dst6: Ipv6Addr,
}

/// The malformed mix: each call picks a category (weighted) and builds one
/// packet of it.
pub struct Malformed {
    ep: Endpoints,
    open_port: u16,
    open_syns_left: u64,
    closed_port: u16,
    mtu: usize,
    rng: Rng,
    table: Vec<(Category, u32)>,
    total_weight: u32,
}

type Category = fn(&mut Malformed) -> Crafted;

/// Packets that make the daemon ask the proxy for a connection are rare:
/// they cost a proxy handshake each.
const RARE: u32 = 1;
const COMMON: u32 = 10;

impl Malformed {
    pub fn new(ep: Endpoints, open_port: u16, open_syns: u64, closed_port: u16, mtu: usize, rng: Rng) -> Self {
        let table: Vec<(Category, u32)> = vec![
            (Self::v4_short_ihl, COMMON),
            (Self::v4_bad_version, COMMON),
            (Self::v4_garbage_options, COMMON),
            (Self::v4_truncated_tcp, COMMON),
            (Self::v4_truncated_udp, COMMON),
            (Self::v4_udp_bad_length, COMMON),
            (Self::v4_tcp_random_flags, COMMON),
            (Self::v4_tcp_bad_checksum, COMMON),
            (Self::v4_fragment, COMMON),
            (Self::v4_other_protocol, COMMON),
            (Self::v4_zero_length, COMMON),
            (Self::v4_oversize, COMMON),
            (Self::v4_udp_bad_checksum, COMMON),
            (Self::v4_syn_garbage_options, RARE),
            (Self::v4_syn_bad_checksum, RARE),
            (Self::v6_short, COMMON),
            (Self::v6_bad_version, COMMON),
            (Self::v6_payload_length_long, COMMON),
            (Self::v6_payload_length_short, COMMON),
            (Self::v6_extension_chain, COMMON),
            (Self::v6_fragment, COMMON),
            (Self::v6_truncated_transport, COMMON),
            (Self::v6_udp_bad_length, COMMON),
            (Self::v6_tcp_random_flags, COMMON),
            (Self::v6_other_protocol, COMMON),
            (Self::v6_oversize, COMMON),
            (Self::v6_syn_garbage_options, RARE),
        ];
        let total_weight = table.iter().map(|(_, w)| w).sum();
        Malformed {
            ep,
            open_port,
            open_syns_left: open_syns,
            closed_port,
            mtu,
            rng,
            table,
            total_weight,
        }
    }

    pub fn next(&mut self) -> Crafted {
        let mut at = (self.rng.next_u64() % u64::from(self.total_weight)) as u32;
        for i in 0..self.table.len() {
            let (build, weight) = self.table[i];
            if at < weight {
                return build(self);
            }
            at -= weight;
        }
        unreachable!("weights add up")
    }

    // ---- helpers

    fn v4(&self) -> (IpAddr, IpAddr) {
        (self.ep.src4.into(), self.ep.dst4.into())
    }
    fn v6(&self) -> (IpAddr, IpAddr) {
        (self.ep.src6.into(), self.ep.dst6.into())
    }
    fn random_port(&mut self) -> u16 {
        self.rng.range(1024, 65_535) as u16
    }
    fn udp_port(&mut self) -> u16 {
        *self.rng.pick(&UDP_PORTS)
    }
    fn syn_port(&mut self) -> u16 {
        SYN_PORT_BASE + self.rng.range(0, usize::from(SYN_PORTS) - 1) as u16
    }
    /// Flags that never ask for a connection (no bare SYN).
    fn flags_without_request(&mut self) -> u8 {
        let flags = self.rng.byte();
        if flags & (SYN | ACK | RST) == SYN {
            flags | ACK
        } else {
            flags
        }
    }
    /// A sane TCP segment that opens nothing (ACK/FIN/RST/... from a
    /// random port), `payload_len` bytes of data.
    fn stray_segment(&mut self, src: IpAddr, dst: IpAddr, payload_len: usize, good: bool) -> Vec<u8> {
        let flags = self.flags_without_request();
        let (sport, dport) = (self.random_port(), self.random_port());
        let payload = self.rng.bytes(payload_len);
        tcp(
            &mut self.rng,
            SocketAddr::new(src, sport),
            SocketAddr::new(dst, dport),
            flags,
            5,
            &[],
            &payload,
            good,
        )
    }
    /// `lo..=hi` random bytes.
    fn random_bytes(&mut self, lo: usize, hi: usize) -> Vec<u8> {
        let n = self.rng.range(lo, hi);
        self.rng.bytes(n)
    }
    /// `lo..=hi` units of `unit` random bytes.
    fn random_bytes_units(&mut self, lo: usize, hi: usize, unit: usize) -> Vec<u8> {
        let n = self.rng.range(lo, hi) * unit;
        self.rng.bytes(n)
    }
    /// [`Self::stray_segment`] with `lo..=hi` bytes of payload.
    fn stray_segment_of(&mut self, src: IpAddr, dst: IpAddr, lo: usize, hi: usize, good: bool) -> Vec<u8> {
        let n = self.rng.range(lo, hi);
        self.stray_segment(src, dst, n, good)
    }
    /// Random option bytes that do not parse: kinds, lengths 0/1/too long.
    fn garbage_options(&mut self, max: usize) -> Vec<u8> {
        let n = self.rng.range(1, max);
        let mut o = self.rng.bytes(n);
        if let Some(len) = o.get_mut(1) {
            *len = *self.rng.pick(&[0u8, 1, 2, 40, 255]);
        }
        o
    }
    fn crafted4(&mut self, proto: u8, options: &[u8], frag: u16, payload: &[u8], category: &'static str) -> Crafted {
        let bytes = ipv4(&mut self.rng, self.ep.src4, self.ep.dst4, proto, options, frag, payload);
        Crafted {
            bytes,
            route_to: self.ep.dst4.into(),
            category,
        }
    }
    fn crafted6(&self, bytes: Vec<u8>, category: &'static str) -> Crafted {
        Crafted {
            bytes,
            route_to: self.ep.dst6.into(),
            category,
        }
    }

    // ---- IPv4

    /// IHL below 5: the kernel leaves such a header as it is.
    fn v4_short_ihl(&mut self) -> Crafted {
        let len = self.rng.range(20, 80);
        let mut bytes = self.rng.bytes(len);
        bytes[0] = 0x40 | self.rng.range(0, 4) as u8;
        Crafted {
            bytes,
            route_to: self.ep.dst4.into(),
            category: "v4-short-ihl",
        }
    }

    /// A TCP packet with a version other than 4 (6 included: an IPv6-looking
    /// header arriving by an IPv4 route).
    fn v4_bad_version(&mut self) -> Crafted {
        let (s, d) = self.v4();
        let seg = self.stray_segment(s, d, 16, true);
        let mut c = self.crafted4(TCP, &[], 0, &seg, "v4-bad-version");
        let version = *self.rng.pick(&[0u8, 1, 2, 3, 5, 6, 7, 15]);
        c.bytes[0] = (version << 4) | (c.bytes[0] & 0x0f);
        c
    }

    /// IHL 6..15 with random option bytes, then a stray TCP segment.
    fn v4_garbage_options(&mut self) -> Crafted {
        let options = self.random_bytes_units(1, 10, 4);
        let (s, d) = self.v4();
        let seg = self.stray_segment_of(s, d, 0, 32, true);
        self.crafted4(TCP, &options, 0, &seg, "v4-garbage-options")
    }

    fn v4_truncated_tcp(&mut self) -> Crafted {
        let mut seg = {
            let (s, d) = self.v4();
            self.stray_segment(s, d, 0, true)
        };
        seg.truncate(self.rng.range(0, 19));
        self.crafted4(TCP, &[], 0, &seg, "v4-truncated-tcp")
    }

    fn v4_truncated_udp(&mut self) -> Crafted {
        let n = self.rng.range(0, 7);
        let seg = self.rng.bytes(n);
        self.crafted4(UDP, &[], 0, &seg, "v4-truncated-udp")
    }

    /// A UDP length field beyond the datagram, or below the header.
    fn v4_udp_bad_length(&mut self) -> Crafted {
        let (s, d) = self.v4();
        let payload = self.random_bytes(0, 64);
        let wrong = if self.rng.byte() & 1 == 0 {
            self.rng.range(0, 7) as u16
        } else {
            (8 + payload.len() + self.rng.range(1, 1000)) as u16
        };
        let (sport, dport) = (self.udp_port(), self.random_port());
        let seg = udp(
            SocketAddr::new(s, sport),
            SocketAddr::new(d, dport),
            &payload,
            Some(wrong),
            true,
        );
        self.crafted4(UDP, &[], 0, &seg, "v4-udp-bad-length")
    }

    /// Random flags (never a bare SYN), random data offset, no session.
    fn v4_tcp_random_flags(&mut self) -> Crafted {
        let (s, d) = self.v4();
        let mut seg = self.stray_segment_of(s, d, 0, 64, true);
        seg[12] = self.rng.byte() & 0xf0;
        self.crafted4(TCP, &[], 0, &seg, "v4-tcp-random-flags")
    }

    fn v4_tcp_bad_checksum(&mut self) -> Crafted {
        let (s, d) = self.v4();
        let seg = self.stray_segment_of(s, d, 0, 64, false);
        self.crafted4(TCP, &[], 0, &seg, "v4-tcp-bad-checksum")
    }

    /// More-fragments and/or an offset, TCP or UDP inside.
    fn v4_fragment(&mut self) -> Crafted {
        let (s, d) = self.v4();
        let frag = match self.rng.range(0, 2) {
            0 => 0x2000,                                    // first fragment
            1 => 0x2000 | self.rng.range(1, 0x1fff) as u16, // middle
            _ => self.rng.range(1, 0x1fff) as u16,          // last
        };
        let (proto, seg) = if self.rng.byte() & 1 == 0 {
            (TCP, self.stray_segment_of(s, d, 0, 200, true))
        } else {
            let (sport, dport) = (self.udp_port(), self.random_port());
            let payload = self.random_bytes(0, 200);
            (
                UDP,
                udp(
                    SocketAddr::new(s, sport),
                    SocketAddr::new(d, dport),
                    &payload,
                    None,
                    true,
                ),
            )
        };
        self.crafted4(proto, &[], frag, &seg, "v4-fragment")
    }

    /// ICMP echo, and protocols nobody terminates (0, 41, 47, 132, 255).
    fn v4_other_protocol(&mut self) -> Crafted {
        let proto = *self.rng.pick(&[ICMP, 0, 41, 47, 132, 255]);
        let mut payload = self.random_bytes(0, 128);
        if proto == ICMP && payload.len() >= 8 {
            payload[0] = 8; // echo request
            payload[1] = 0;
            payload[2..4].copy_from_slice(&[0, 0]);
            let sum = checksum(&[&payload]);
            payload[2..4].copy_from_slice(&sum.to_be_bytes());
        }
        self.crafted4(proto, &[], 0, &payload, "v4-other-protocol")
    }

    /// A bare IP header: nothing after it.
    fn v4_zero_length(&mut self) -> Crafted {
        let proto = *self.rng.pick(&[TCP, UDP, ICMP, 0]);
        self.crafted4(proto, &[], 0, &[], "v4-zero-length")
    }

    /// Up to the MTU: a stray segment with a big payload.
    fn v4_oversize(&mut self) -> Crafted {
        let (s, d) = self.v4();
        let len = self.rng.range(self.mtu.saturating_sub(1000), self.mtu - 40);
        let seg = self.stray_segment(s, d, len, true);
        self.crafted4(TCP, &[], 0, &seg, "v4-oversize")
    }

    /// Lengths right, checksum wrong (some with no payload), from the few
    /// UDP source ports.
    fn v4_udp_bad_checksum(&mut self) -> Crafted {
        let (s, d) = self.v4();
        let payload = self.random_bytes_units(0, 3, 16);
        let (sport, dport) = (self.udp_port(), self.random_port());
        let seg = udp(
            SocketAddr::new(s, sport),
            SocketAddr::new(d, dport),
            &payload,
            None,
            false,
        );
        self.crafted4(UDP, &[], 0, &seg, "v4-udp-bad-checksum")
    }

    /// A SYN whose options do not parse, or whose data offset is below 5 or
    /// beyond the segment. Up to --open-syns go to the open port (the proxy
    /// connects them: the held SYN is then replayed into the stack), the
    /// rest to the closed port.
    fn v4_syn_garbage_options(&mut self) -> Crafted {
        let (s, d) = self.v4();
        let (port, category) = self.syn_destination("v4-syn-garbage-options-open", "v4-syn-garbage-options");
        let options = self.garbage_options(40);
        let offset = match self.rng.range(0, 2) {
            0 => self.rng.range(0, 4) as u8,
            1 => 15,
            _ => (5 + options.len().div_ceil(4)).min(15) as u8,
        };
        let sport = self.syn_port();
        let seg = tcp(
            &mut self.rng,
            SocketAddr::new(s, sport),
            SocketAddr::new(d, port),
            SYN,
            offset,
            &options,
            &[],
            true,
        );
        self.crafted4(TCP, &[], 0, &seg, category)
    }

    fn v4_syn_bad_checksum(&mut self) -> Crafted {
        let (s, d) = self.v4();
        let sport = self.syn_port();
        let seg = tcp(
            &mut self.rng,
            SocketAddr::new(s, sport),
            SocketAddr::new(d, self.closed_port),
            SYN,
            5,
            &[],
            &[],
            false,
        );
        self.crafted4(TCP, &[], 0, &seg, "v4-syn-bad-checksum")
    }

    fn syn_destination(&mut self, open: &'static str, closed: &'static str) -> (u16, &'static str) {
        if self.open_syns_left > 0 {
            self.open_syns_left -= 1;
            (self.open_port, open)
        } else {
            (self.closed_port, closed)
        }
    }

    // ---- IPv6

    /// Shorter than the fixed header.
    fn v6_short(&mut self) -> Crafted {
        let mut bytes = self.random_bytes(1, 39);
        bytes[0] = 0x60 | (bytes[0] & 0x0f);
        self.crafted6(bytes, "v6-short")
    }

    fn v6_bad_version(&mut self) -> Crafted {
        let (s, d) = self.v6();
        let seg = self.stray_segment(s, d, 16, true);
        let mut bytes = ipv6(self.ep.src6, self.ep.dst6, TCP, &seg, None);
        let version = *self.rng.pick(&[0u8, 4, 5, 7, 15]);
        bytes[0] = (version << 4) | (bytes[0] & 0x0f);
        self.crafted6(bytes, "v6-bad-version")
    }

    /// A payload length beyond the packet.
    fn v6_payload_length_long(&mut self) -> Crafted {
        let (s, d) = self.v6();
        let seg = self.stray_segment_of(s, d, 0, 64, true);
        let claimed = (seg.len() + self.rng.range(1, 60_000)).min(65_535) as u16;
        let bytes = ipv6(self.ep.src6, self.ep.dst6, TCP, &seg, Some(claimed));
        self.crafted6(bytes, "v6-payload-length-long")
    }

    /// A payload length that cuts the transport header (trailing bytes).
    fn v6_payload_length_short(&mut self) -> Crafted {
        let (s, d) = self.v6();
        let (proto, seg) = if self.rng.byte() & 1 == 0 {
            (TCP, self.stray_segment(s, d, 32, true))
        } else {
            let (sport, dport) = (self.udp_port(), self.random_port());
            (
                UDP,
                udp(
                    SocketAddr::new(s, sport),
                    SocketAddr::new(d, dport),
                    &[7; 32],
                    None,
                    true,
                ),
            )
        };
        let claimed = self.rng.range(0, 19) as u16;
        let bytes = ipv6(self.ep.src6, self.ep.dst6, proto, &seg, Some(claimed));
        self.crafted6(bytes, "v6-payload-length-short")
    }

    /// Chains of 1..6 extension headers (hop-by-hop, routing, destination
    /// options, fragment) with sane or garbage lengths, ending in TCP, UDP
    /// or no next header.
    fn v6_extension_chain(&mut self) -> Crafted {
        let (s, d) = self.v6();
        let last = *self.rng.pick(&[TCP, UDP, NO_NEXT, ICMPV6]);
        let mut body = match last {
            TCP => self.stray_segment_of(s, d, 0, 32, true),
            UDP => {
                let (sport, dport) = (self.udp_port(), self.random_port());
                udp(
                    SocketAddr::new(s, sport),
                    SocketAddr::new(d, dport),
                    b"chain",
                    None,
                    true,
                )
            }
            _ => self.random_bytes(0, 16),
        };
        let mut next = last;
        let n = self.rng.range(1, 6);
        for i in (0..n).rev() {
            let kind = if i == 0 && self.rng.byte() & 1 == 0 {
                HOP_BY_HOP
            } else {
                *self.rng.pick(&[ROUTING, DEST_OPTS, FRAGMENT, HOP_BY_HOP])
            };
            let mut header = vec![next, 0];
            if kind == FRAGMENT {
                header.extend_from_slice(&self.rng.bytes(6));
            } else {
                let units = self.rng.range(0, 2);
                header[1] = units as u8;
                header.extend(self.rng.bytes(6 + units * 8));
                if self.rng.byte() < 32 {
                    header[1] = self.rng.byte(); // a length beyond the packet
                }
            }
            header.extend_from_slice(&body);
            body = header;
            next = kind;
        }
        let bytes = ipv6(self.ep.src6, self.ep.dst6, next, &body, None);
        self.crafted6(bytes, "v6-extension-chain")
    }

    /// A fragment header (first, middle or last) before TCP or UDP.
    fn v6_fragment(&mut self) -> Crafted {
        let (s, d) = self.v6();
        let (proto, seg) = if self.rng.byte() & 1 == 0 {
            (TCP, self.stray_segment_of(s, d, 0, 200, true))
        } else {
            let (sport, dport) = (self.udp_port(), self.random_port());
            let payload = self.random_bytes(0, 200);
            (
                UDP,
                udp(
                    SocketAddr::new(s, sport),
                    SocketAddr::new(d, dport),
                    &payload,
                    None,
                    true,
                ),
            )
        };
        let offset_flags = ((self.rng.range(0, 0x1fff) as u16) << 3) | u16::from(self.rng.byte() & 1);
        let mut body = vec![proto, 0];
        body.extend_from_slice(&offset_flags.to_be_bytes());
        body.extend_from_slice(&self.rng.u32().to_be_bytes());
        body.extend_from_slice(&seg);
        let bytes = ipv6(self.ep.src6, self.ep.dst6, FRAGMENT, &body, None);
        self.crafted6(bytes, "v6-fragment")
    }

    /// TCP shorter than 20 bytes or UDP shorter than 8, lengths consistent.
    fn v6_truncated_transport(&mut self) -> Crafted {
        let (proto, max) = if self.rng.byte() & 1 == 0 { (TCP, 19) } else { (UDP, 7) };
        let seg = self.random_bytes(0, max);
        let bytes = ipv6(self.ep.src6, self.ep.dst6, proto, &seg, None);
        self.crafted6(bytes, "v6-truncated-transport")
    }

    fn v6_udp_bad_length(&mut self) -> Crafted {
        let (s, d) = self.v6();
        let payload = self.random_bytes(0, 64);
        let wrong = if self.rng.byte() & 1 == 0 {
            self.rng.range(0, 7) as u16
        } else {
            (8 + payload.len() + self.rng.range(1, 1000)) as u16
        };
        let (sport, dport) = (self.udp_port(), self.random_port());
        let seg = udp(
            SocketAddr::new(s, sport),
            SocketAddr::new(d, dport),
            &payload,
            Some(wrong),
            true,
        );
        let bytes = ipv6(self.ep.src6, self.ep.dst6, UDP, &seg, None);
        self.crafted6(bytes, "v6-udp-bad-length")
    }

    fn v6_tcp_random_flags(&mut self) -> Crafted {
        let (s, d) = self.v6();
        let good = self.rng.byte() & 1 == 0;
        let mut seg = self.stray_segment_of(s, d, 0, 64, good);
        seg[12] = self.rng.byte() & 0xf0;
        let bytes = ipv6(self.ep.src6, self.ep.dst6, TCP, &seg, None);
        self.crafted6(bytes, "v6-tcp-random-flags")
    }

    fn v6_other_protocol(&mut self) -> Crafted {
        let proto = *self.rng.pick(&[ICMPV6, NO_NEXT, 4, 41, 47, 255]);
        let payload = self.random_bytes(0, 128);
        let bytes = ipv6(self.ep.src6, self.ep.dst6, proto, &payload, None);
        self.crafted6(bytes, "v6-other-protocol")
    }

    fn v6_oversize(&mut self) -> Crafted {
        let (s, d) = self.v6();
        let len = self.rng.range(self.mtu.saturating_sub(1000), self.mtu - 60);
        let seg = self.stray_segment(s, d, len, true);
        let bytes = ipv6(self.ep.src6, self.ep.dst6, TCP, &seg, None);
        self.crafted6(bytes, "v6-oversize")
    }

    fn v6_syn_garbage_options(&mut self) -> Crafted {
        let (s, d) = self.v6();
        let (port, category) = self.syn_destination("v6-syn-garbage-options-open", "v6-syn-garbage-options");
        let options = self.garbage_options(40);
        let offset = match self.rng.range(0, 2) {
            0 => self.rng.range(0, 4) as u8,
            1 => 15,
            _ => (5 + options.len().div_ceil(4)).min(15) as u8,
        };
        let sport = self.syn_port();
        let good_checksum = self.rng.byte() & 3 != 0;
        let seg = tcp(
            &mut self.rng,
            SocketAddr::new(s, sport),
            SocketAddr::new(d, port),
            SYN,
            offset,
            &options,
            &[],
            good_checksum,
        );
        let bytes = ipv6(self.ep.src6, self.ep.dst6, TCP, &seg, None);
        self.crafted6(bytes, category)
    }
}
