//! What the eBPF programs share with user space: how a packet becomes a flow
//! key, and the one flow hash that picks the worker for it; and (module
//! [`xdp`]) which Ethernet frames the XDP classifier hands to AF_XDP.
//!
//! Both sides run the *same* code: [`flow_key`] parses through the
//! [`PacketBytes`] trait, which user space implements for `[u8]` (below) and
//! the `steer` socket filter implements with `bpf_skb_load_bytes`. Every read
//! is a fixed-size array at a known or bounded offset, which is what the
//! verifier accepts; there are no loops over variable bounds.
//!
//! Which fields make the key (the steering rules):
//!
//! * TCP: the 5-tuple, so each connection is one flow.
//! * UDP: the *source* endpoint only (address, port, protocol), so one
//!   application socket always meets one worker and one upstream
//!   association, whatever it sends to (endpoint-independent NAT).
//! * Everything else (ICMP, ...): source and destination addresses.
//! * IPv4 fragments (MF set or offset != 0): addresses only, because only
//!   the first fragment carries ports and all fragments of a datagram must
//!   reach the same worker to be reassembled. A fragmented UDP datagram can
//!   therefore meet a different worker than the same socket's small ones.
//! * IPv6: only the fixed header's next-header field is looked at. If it is
//!   not TCP or UDP (an extension header, a fragment header, ICMPv6...), the
//!   key is addresses only.
//! * TCP/UDP packets too short to hold the ports: addresses only.
//!
//! Unit tests run on the host: `cd tun2socks-ebpf && cargo test --lib`
//! (rust-toolchain.toml selects nightly; the bin is the eBPF program).
#![no_std]

pub mod tc;
pub mod xdp;

pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

const IPV4_HEADER_LEN: usize = 20;
const IPV6_HEADER_LEN: usize = 40;
/// IPv4 flags/fragment-offset field: "more fragments" plus the offset bits.
const IPV4_FRAGMENT_MASK: u16 = 0x3fff;

/// Fixed-size reads from a packet that starts at its IP header.
pub trait PacketBytes {
    /// The `N` bytes at `offset`, or `None` when the packet is shorter.
    fn read<const N: usize>(&self, offset: usize) -> Option<[u8; N]>;
}

impl PacketBytes for [u8] {
    #[inline(always)]
    fn read<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        let end = offset.checked_add(N)?;
        self.get(offset..end)?.try_into().ok()
    }
}

/// The hash input. Fields a rule leaves out are zero; an IPv4 address sits
/// in the first word of its array.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src: [u32; 4],
    pub dst: [u32; 4],
    pub src_port: u16,
    pub dst_port: u16,
    pub proto: u8,
}

impl FlowKey {
    /// TCP: the whole 5-tuple.
    #[inline(always)]
    pub const fn tcp(src: [u32; 4], dst: [u32; 4], src_port: u16, dst_port: u16) -> Self {
        Self {
            src,
            dst,
            src_port,
            dst_port,
            proto: IPPROTO_TCP,
        }
    }

    /// UDP: the source endpoint only.
    #[inline(always)]
    pub const fn udp(src: [u32; 4], src_port: u16) -> Self {
        Self {
            src,
            dst: [0; 4],
            src_port,
            dst_port: 0,
            proto: IPPROTO_UDP,
        }
    }

    /// Other protocols, fragments and extension headers: the addresses only.
    /// The protocol is left out on purpose, so that all fragments of a
    /// datagram (first one included) hash alike.
    #[inline(always)]
    pub const fn addresses(src: [u32; 4], dst: [u32; 4]) -> Self {
        Self {
            src,
            dst,
            src_port: 0,
            dst_port: 0,
            proto: 0,
        }
    }

    #[inline(always)]
    fn words(&self) -> [u32; 9] {
        let [s0, s1, s2, s3] = self.src;
        let [d0, d1, d2, d3] = self.dst;
        let ports = ((self.src_port as u32) << 16) | self.dst_port as u32;
        [s0, s1, s2, s3, d0, d1, d2, d3, ports ^ ((self.proto as u32) << 8)]
    }
}

/// What the fixed IP header tells: addresses, protocol, and where the ports
/// are if the rules want them.
struct IpHeader {
    src: [u32; 4],
    dst: [u32; 4],
    proto: u8,
    /// Offset of the transport header; `None` when the key is addresses-only
    /// whatever follows (fragment, extension header, other protocol).
    ports_at: Option<usize>,
}

impl IpHeader {
    #[inline(always)]
    fn key<P: PacketBytes + ?Sized>(&self, packet: &P) -> FlowKey {
        let ports = match self.ports_at {
            Some(offset) => packet.read::<4>(offset),
            None => None,
        };
        match (self.proto, ports) {
            (IPPROTO_TCP, Some([s0, s1, d0, d1])) => FlowKey::tcp(
                self.src,
                self.dst,
                u16::from_be_bytes([s0, s1]),
                u16::from_be_bytes([d0, d1]),
            ),
            (IPPROTO_UDP, Some([s0, s1, _, _])) => FlowKey::udp(self.src, u16::from_be_bytes([s0, s1])),
            _ => FlowKey::addresses(self.src, self.dst),
        }
    }
}

#[inline(always)]
const fn is_tcp_or_udp(proto: u8) -> bool {
    proto == IPPROTO_TCP || proto == IPPROTO_UDP
}

#[inline(always)]
const fn be32(b: [u8; 4]) -> u32 {
    u32::from_be_bytes(b)
}

#[inline(always)]
fn ipv4_header(h: &[u8; IPV4_HEADER_LEN]) -> Option<IpHeader> {
    let header_len = usize::from(h[0] & 0x0f) * 4;
    if header_len < IPV4_HEADER_LEN {
        return None;
    }
    let fragment = u16::from_be_bytes([h[6], h[7]]) & IPV4_FRAGMENT_MASK != 0;
    let proto = h[9];
    Some(IpHeader {
        src: [be32([h[12], h[13], h[14], h[15]]), 0, 0, 0],
        dst: [be32([h[16], h[17], h[18], h[19]]), 0, 0, 0],
        proto,
        ports_at: (!fragment && is_tcp_or_udp(proto)).then_some(header_len),
    })
}

/// The four big-endian words of the IPv6 address at byte `at` (8 or 24).
#[inline(always)]
fn ipv6_address(h: &[u8; IPV6_HEADER_LEN], at: usize) -> [u32; 4] {
    let w = |i: usize| be32([h[at + i], h[at + i + 1], h[at + i + 2], h[at + i + 3]]);
    [w(0), w(4), w(8), w(12)]
}

#[inline(always)]
fn ipv6_header(h: &[u8; IPV6_HEADER_LEN]) -> IpHeader {
    let proto = h[6];
    IpHeader {
        src: ipv6_address(h, 8),
        dst: ipv6_address(h, 24),
        proto,
        ports_at: is_tcp_or_udp(proto).then_some(IPV6_HEADER_LEN),
    }
}

/// The flow key of an IP packet, or `None` if it is not IPv4/IPv6 or too
/// short for its fixed header.
#[inline(always)]
pub fn flow_key<P: PacketBytes + ?Sized>(packet: &P) -> Option<FlowKey> {
    // Every IP packet is at least 20 bytes long, so read that once and look
    // at the version in it rather than reading the first byte separately.
    let first = packet.read::<IPV4_HEADER_LEN>(0)?;
    let ip = match first[0] >> 4 {
        4 => ipv4_header(&first)?,
        6 => ipv6_header(&packet.read::<IPV6_HEADER_LEN>(0)?),
        _ => return None,
    };
    Some(ip.key(packet))
}

const SEED: u32 = 0x7f4a_7c15;

/// One MurmurHash3 (x86_32) body round.
#[inline(always)]
const fn mix(h: u32, word: u32) -> u32 {
    let k = word.wrapping_mul(0xcc9e_2d51).rotate_left(15).wrapping_mul(0x1b87_3593);
    (h ^ k).rotate_left(13).wrapping_mul(5).wrapping_add(0xe654_6b64)
}

/// MurmurHash3's finalizer: every input bit reaches every output bit, so the
/// low 16 bits that the kernel keeps are as good as the high ones.
#[inline(always)]
const fn finalize(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// The flow hash: MurmurHash3_x86_32 of the key's nine words (36 bytes).
/// Nine fixed rounds, which the compiler unrolls: cheap and verifier-safe.
#[inline(always)]
pub fn flow_hash(key: &FlowKey) -> u32 {
    let words = key.words();
    let mut h = SEED;
    for word in words {
        h = mix(h, word);
    }
    finalize(h ^ (words.len() as u32 * 4))
}

/// What the `steer` program returns for a flow hash. The TUN driver stores
/// the program's result in a `u16` before taking it modulo the queue count
/// (`tun_ebpf_select_queue`), so returning exactly 16 bits makes that
/// truncation explicit and keeps user space's prediction exact.
#[inline(always)]
pub const fn steering_value(hash: u32) -> u32 {
    hash & 0xffff
}

/// The queue the kernel picks for a flow hash among `queues` queues (0 when
/// there are none, as the kernel does).
#[inline(always)]
pub const fn queue_of(hash: u32, queues: u32) -> u32 {
    if queues == 0 { 0 } else { steering_value(hash) % queues }
}

/// What the `steer` program counts, per CPU: the index of each class in
/// its `STEER_COUNTERS` map. User space reads and sums them for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum SteerClass {
    /// TCP, steered by its 5-tuple.
    Tcp = 0,
    /// UDP, steered by its source endpoint.
    Udp = 1,
    /// Other IP traffic, fragments, extension headers: by addresses.
    OtherIp = 2,
    /// Not IP at all: queue 0.
    NotIp = 3,
}

impl SteerClass {
    pub const COUNT: u32 = 4;
    pub const ALL: [SteerClass; 4] = [SteerClass::Tcp, SteerClass::Udp, SteerClass::OtherIp, SteerClass::NotIp];

    #[inline(always)]
    pub fn of(key: Option<&FlowKey>) -> SteerClass {
        match key.map(|k| k.proto) {
            Some(IPPROTO_TCP) => SteerClass::Tcp,
            Some(IPPROTO_UDP) => SteerClass::Udp,
            Some(_) => SteerClass::OtherIp,
            None => SteerClass::NotIp,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            SteerClass::Tcp => "tcp",
            SteerClass::Udp => "udp",
            SteerClass::OtherIp => "other_ip",
            SteerClass::NotIp => "not_ip",
        }
    }
}

/// The steering decision and the class it counts as.
#[inline(always)]
pub fn steer_and_classify<P: PacketBytes + ?Sized>(packet: &P) -> (u32, SteerClass) {
    let key = flow_key(packet);
    let value = match &key {
        Some(key) => steering_value(flow_hash(key)),
        None => 0,
    };
    (value, SteerClass::of(key.as_ref()))
}

/// The whole steering decision for one packet: the `steer` program's return
/// value. Packets that are not IP go to queue 0.
#[inline(always)]
pub fn steer_packet<P: PacketBytes + ?Sized>(packet: &P) -> u32 {
    match flow_key(packet) {
        Some(key) => steering_value(flow_hash(&key)),
        None => 0,
    }
}

#[cfg(test)]
mod tests;
