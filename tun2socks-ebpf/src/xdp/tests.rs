//! Host unit tests of the XDP classifier's decision (`cargo test --lib`).
extern crate std;

use std::vec::Vec;

use super::*;

const ICMP: u8 = 1;
const ICMPV6: u8 = 58;

/// Prefix lists standing in for the program's maps.
#[derive(Default)]
struct Sets {
    local: Vec<Vec<u8>>,
    bypass: Vec<(Vec<u8>, u32)>,
    routed: Vec<(Vec<u8>, u32)>,
}

fn in_prefix(addr: &[u8], (net, len): &(Vec<u8>, u32)) -> bool {
    if net.len() != addr.len() {
        return false;
    }
    (0..*len as usize).all(|bit| {
        let mask = 0x80u8 >> (bit % 8);
        addr[bit / 8] & mask == net[bit / 8] & mask
    })
}

impl Sets {
    fn local(&self, a: &[u8]) -> bool {
        self.local.iter().any(|l| l.as_slice() == a)
    }
    fn bypassed(&self, a: &[u8]) -> bool {
        self.bypass.iter().any(|p| in_prefix(a, p))
    }
    fn routed(&self, a: &[u8]) -> bool {
        self.routed.iter().any(|p| in_prefix(a, p))
    }
}

impl AddressSets for Sets {
    fn is_local_v4(&self, dst: &[u8; 4]) -> bool {
        self.local(dst)
    }
    fn is_local_v6(&self, dst: &[u8; 16]) -> bool {
        self.local(dst)
    }
    fn is_bypassed_v4(&self, dst: &[u8; 4]) -> bool {
        self.bypassed(dst)
    }
    fn is_bypassed_v6(&self, dst: &[u8; 16]) -> bool {
        self.bypassed(dst)
    }
    fn is_routed_v4(&self, dst: &[u8; 4]) -> bool {
        self.routed(dst)
    }
    fn is_routed_v6(&self, dst: &[u8; 16]) -> bool {
        self.routed(dst)
    }
}

fn v6(prefix: u16, last: u16) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[..2].copy_from_slice(&prefix.to_be_bytes());
    a[14..].copy_from_slice(&last.to_be_bytes());
    a
}

/// Routed: 198.51.100.0/24 and 2001::/16; bypassed inside them:
/// 198.51.100.192/26 and 2001::100/120; local: 10.99.0.1 and fd99::1.
fn sets() -> Sets {
    let mut bypass6 = v6(0x2001, 0x0100).to_vec();
    bypass6[15] = 0;
    Sets {
        local: std::vec![std::vec![10, 99, 0, 1], v6(0xfd99, 1).to_vec()],
        bypass: std::vec![(std::vec![198, 51, 100, 192], 26), (bypass6, 120)],
        routed: std::vec![(std::vec![198, 51, 100, 0], 24), (v6(0x2001, 0).to_vec(), 16)],
    }
}

fn ethernet(ethertype: u16, vlan: bool) -> Vec<u8> {
    let mut f = std::vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    if vlan {
        f.extend_from_slice(&ETH_P_8021Q.to_be_bytes());
        f.extend_from_slice(&[0x00, 0x07]);
    }
    f.extend_from_slice(&ethertype.to_be_bytes());
    f
}

/// An IPv4 frame with `options` words of IP options and 8 bytes of
/// transport header.
fn ipv4_frame(proto: u8, dst: [u8; 4], frag: u16, options: usize, vlan: bool) -> Vec<u8> {
    let mut f = ethernet(ETH_P_IP, vlan);
    let l3 = f.len();
    f.push(0x40 | (5 + options as u8));
    f.extend_from_slice(&[0, 0, 0, 0, 0]);
    f.extend_from_slice(&frag.to_be_bytes());
    f.extend_from_slice(&[64, proto, 0, 0, 10, 99, 0, 2]);
    f.extend_from_slice(&dst);
    f.extend(core::iter::repeat_n(1u8, options * 4));
    f.extend_from_slice(&[0x9c, 0x40, 0x01, 0xbb, 0, 8, 0, 0]);
    let total = (f.len() - l3) as u16;
    f[l3 + 2..l3 + 4].copy_from_slice(&total.to_be_bytes());
    f
}

fn v4(proto: u8, dst: [u8; 4]) -> Vec<u8> {
    ipv4_frame(proto, dst, 0, 0, false)
}

fn ipv6_frame(next: u8, dst: [u8; 16], vlan: bool) -> Vec<u8> {
    let mut f = ethernet(ETH_P_IPV6, vlan);
    f.extend_from_slice(&[0x60, 0, 0, 0, 0, 8, next, 64]);
    f.extend_from_slice(&v6(0xfd99, 2));
    f.extend_from_slice(&dst);
    f.extend_from_slice(&[0x9c, 0x40, 0x01, 0xbb, 0, 8, 0, 0]);
    f
}

fn class(frame: &[u8]) -> XdpCounter {
    classify_frame(frame, &sets())
}

const ROUTED: [u8; 4] = [198, 51, 100, 10];

#[test]
fn tcp_and_udp_to_a_routed_prefix_are_redirected() {
    assert_eq!(class(&v4(IPPROTO_TCP, ROUTED)), XdpCounter::Redirected);
    assert_eq!(class(&v4(IPPROTO_UDP, ROUTED)), XdpCounter::Redirected);
    assert_eq!(
        class(&ipv6_frame(IPPROTO_TCP, v6(0x2001, 7), false)),
        XdpCounter::Redirected
    );
    assert_eq!(
        class(&ipv6_frame(IPPROTO_UDP, v6(0x2001, 7), false)),
        XdpCounter::Redirected
    );
}

#[test]
fn one_vlan_tag_is_looked_through() {
    assert_eq!(
        class(&ipv4_frame(IPPROTO_UDP, ROUTED, 0, 0, true)),
        XdpCounter::Redirected
    );
    assert_eq!(
        class(&ipv6_frame(IPPROTO_TCP, v6(0x2001, 7), true)),
        XdpCounter::Redirected
    );
    assert_eq!(network_header(&ethernet(ETH_P_IP, true)[..]), Some((ETH_P_IP, 18)));
    let mut qinq = ethernet(ETH_P_8021Q, true);
    qinq.extend_from_slice(&[0, 9, 0x08, 0x00]);
    assert_eq!(
        class(&qinq),
        XdpCounter::PassNotIp,
        "a second tag is not looked through"
    );
}

#[test]
fn ipv4_options_move_the_transport_header() {
    assert_eq!(
        class(&ipv4_frame(IPPROTO_TCP, ROUTED, 0, 10, false)),
        XdpCounter::Redirected
    );
    // Options that swallow the transport header: no ports to read.
    let mut f = ipv4_frame(IPPROTO_TCP, ROUTED, 0, 10, false);
    f.truncate(f.len() - 8);
    assert_eq!(class(&f), XdpCounter::PassMalformed);
}

#[test]
fn not_ip_passes() {
    let mut arp = ethernet(ETH_P_ARP, false);
    arp.extend_from_slice(&[0; 28]);
    assert_eq!(class(&arp), XdpCounter::PassNotIp);
    assert_eq!(class(&ethernet(0x88cc, false)), XdpCounter::PassNotIp);
}

#[test]
fn icmp_ndp_and_extension_headers_pass() {
    assert_eq!(class(&v4(ICMP, ROUTED)), XdpCounter::PassNotTcpUdp);
    assert_eq!(
        class(&ipv6_frame(ICMPV6, v6(0x2001, 7), false)),
        XdpCounter::PassNotTcpUdp
    );
    // Neighbour solicitation to a solicited-node multicast address.
    assert_eq!(
        class(&ipv6_frame(ICMPV6, v6(0xff02, 1), false)),
        XdpCounter::PassNotTcpUdp
    );
    for ext in [0, 43, 44, 60] {
        assert_eq!(
            class(&ipv6_frame(ext, v6(0x2001, 7), false)),
            XdpCounter::PassIpv6Extension
        );
    }
}

#[test]
fn local_bypassed_and_unrouted_destinations_pass() {
    assert_eq!(class(&v4(IPPROTO_UDP, [10, 99, 0, 1])), XdpCounter::PassLocal);
    assert_eq!(
        class(&ipv6_frame(IPPROTO_TCP, v6(0xfd99, 1), false)),
        XdpCounter::PassLocal
    );
    assert_eq!(class(&v4(IPPROTO_UDP, [198, 51, 100, 200])), XdpCounter::PassBypass);
    assert_eq!(class(&v4(IPPROTO_UDP, [198, 51, 100, 191])), XdpCounter::Redirected);
    assert_eq!(
        class(&ipv6_frame(IPPROTO_UDP, v6(0x2001, 0x01ff), false)),
        XdpCounter::PassBypass
    );
    assert_eq!(
        class(&ipv6_frame(IPPROTO_UDP, v6(0x2001, 0x0200), false)),
        XdpCounter::Redirected
    );
    assert_eq!(class(&v4(IPPROTO_TCP, [203, 0, 113, 5])), XdpCounter::PassNotRouted);
    assert_eq!(
        class(&ipv6_frame(IPPROTO_TCP, v6(0x2002, 1), false)),
        XdpCounter::PassNotRouted
    );
}

#[test]
fn multicast_and_broadcast_pass_even_when_routed() {
    let mut everything = sets();
    everything.routed.push((std::vec![0, 0, 0, 0], 0));
    everything.routed.push((std::vec![0; 16], 0));
    let c = |f: Vec<u8>| classify_frame(&f[..], &everything);
    assert_eq!(c(v4(IPPROTO_UDP, [255, 255, 255, 255])), XdpCounter::PassMulticast);
    assert_eq!(c(v4(IPPROTO_UDP, [224, 0, 0, 251])), XdpCounter::PassMulticast);
    assert_eq!(c(v4(IPPROTO_UDP, [239, 255, 255, 250])), XdpCounter::PassMulticast);
    assert_eq!(
        c(ipv6_frame(IPPROTO_UDP, v6(0xff02, 0xfb), false)),
        XdpCounter::PassMulticast
    );
    assert_eq!(c(v4(IPPROTO_UDP, [1, 1, 1, 1])), XdpCounter::Redirected);
}

#[test]
fn later_fragments_are_redirected_without_ports() {
    let mut f = ipv4_frame(IPPROTO_UDP, ROUTED, 185, 0, false);
    f.truncate(f.len() - 8);
    assert_eq!(class(&f), XdpCounter::Redirected);
    // A first fragment (MF set, offset 0) must carry the ports.
    let mut first = ipv4_frame(IPPROTO_UDP, ROUTED, 0x2000, 0, false);
    assert_eq!(class(&first), XdpCounter::Redirected);
    first.truncate(first.len() - 8);
    assert_eq!(class(&first), XdpCounter::PassMalformed);
}

#[test]
fn short_and_inconsistent_headers_are_malformed() {
    assert_eq!(class(&[0u8; 13]), XdpCounter::PassMalformed);
    let mut tagged = ethernet(ETH_P_IP, true);
    tagged.truncate(16);
    assert_eq!(class(&tagged), XdpCounter::PassMalformed);
    let full = v4(IPPROTO_UDP, ROUTED);
    assert_eq!(class(&full[..14 + 19]), XdpCounter::PassMalformed);
    assert_eq!(class(&full[..14 + 20 + 3]), XdpCounter::PassMalformed);
    assert_eq!(class(&full[..14 + 20 + 4]), XdpCounter::Redirected);
    let mut bad_version = full.clone();
    bad_version[14] = 0x65;
    assert_eq!(class(&bad_version), XdpCounter::PassMalformed);
    let mut short_ihl = full.clone();
    short_ihl[14] = 0x44;
    assert_eq!(class(&short_ihl), XdpCounter::PassMalformed);
    let six = ipv6_frame(IPPROTO_UDP, v6(0x2001, 7), false);
    assert_eq!(class(&six[..14 + 39]), XdpCounter::PassMalformed);
    assert_eq!(class(&six[..14 + 40 + 3]), XdpCounter::PassMalformed);
    let mut six_v4 = six.clone();
    six_v4[14] = 0x45;
    assert_eq!(class(&six_v4), XdpCounter::PassMalformed);
}

#[test]
fn counters_are_dense_and_named() {
    for (i, c) in XdpCounter::ALL.iter().enumerate() {
        assert_eq!(*c as u32, i as u32);
        assert!(!c.name().is_empty());
    }
    assert_eq!(XdpCounter::ALL.len() as u32, XdpCounter::COUNT);
}
