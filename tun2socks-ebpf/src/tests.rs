//! Host unit tests of the shared parser and hash (`cargo test --lib`).
extern crate std;

use std::vec::Vec;

use super::*;

const ICMP: u8 = 1;
const IPV6_HOP_BY_HOP: u8 = 0;
const IPV6_FRAGMENT: u8 = 44;

/// An IPv4 packet with `options` 32-bit words of options and an 8-byte
/// transport header whose first four bytes are the ports.
fn ipv4_with(proto: u8, src: [u8; 4], dst: [u8; 4], ports: (u16, u16), frag: u16, options: usize) -> Vec<u8> {
    let mut p = Vec::new();
    p.push(0x40 | (5 + options as u8));
    p.extend_from_slice(&[0, 0, 0, 0, 0]);
    p.extend_from_slice(&frag.to_be_bytes());
    p.extend_from_slice(&[64, proto, 0, 0]);
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    p.extend(core::iter::repeat_n(1u8, options * 4));
    p.extend_from_slice(&ports.0.to_be_bytes());
    p.extend_from_slice(&ports.1.to_be_bytes());
    p.extend_from_slice(&[0; 4]);
    let total = p.len() as u16;
    p[2..4].copy_from_slice(&total.to_be_bytes());
    p
}

fn ipv4(proto: u8, src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
    ipv4_with(proto, src, dst, (sport, dport), 0, 0)
}

fn ipv6(next: u8, src: [u8; 16], dst: [u8; 16], sport: u16, dport: u16) -> Vec<u8> {
    let mut p = std::vec![0x60, 0, 0, 0, 0, 8, next, 64];
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    p.extend_from_slice(&sport.to_be_bytes());
    p.extend_from_slice(&dport.to_be_bytes());
    p.extend_from_slice(&[0; 4]);
    p
}

fn v6(last: u16) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[0] = 0xfd;
    a[1] = 0x77;
    a[14..].copy_from_slice(&last.to_be_bytes());
    a
}

fn key(packet: &[u8]) -> FlowKey {
    flow_key(packet).expect("an IP packet")
}

const A: [u8; 4] = [10, 0, 0, 1];
const B: [u8; 4] = [10, 77, 1, 2];

#[test]
fn ipv4_tcp_uses_the_five_tuple() {
    let k = key(&ipv4(IPPROTO_TCP, A, B, 40000, 443));
    assert_eq!(
        k,
        FlowKey::tcp([0x0a00_0001, 0, 0, 0], [0x0a4d_0102, 0, 0, 0], 40000, 443)
    );
    assert_ne!(k, key(&ipv4(IPPROTO_TCP, A, B, 40000, 80)));
}

#[test]
fn udp_uses_the_source_endpoint_only() {
    let k = key(&ipv4(IPPROTO_UDP, A, B, 5353, 53));
    assert_eq!(k, FlowKey::udp([0x0a00_0001, 0, 0, 0], 5353));
    assert_eq!(k, key(&ipv4(IPPROTO_UDP, A, [1, 1, 1, 1], 5353, 443)));
    assert_ne!(k, key(&ipv4(IPPROTO_UDP, A, B, 5354, 53)));

    let k6 = key(&ipv6(IPPROTO_UDP, v6(1), v6(2), 5353, 53));
    assert_eq!(k6, key(&ipv6(IPPROTO_UDP, v6(1), v6(9), 5353, 1234)));
    assert_eq!(k6.dst, [0; 4]);
}

#[test]
fn other_protocols_use_addresses() {
    let k = key(&ipv4(ICMP, A, B, 0x0800, 0));
    assert_eq!(k, FlowKey::addresses([0x0a00_0001, 0, 0, 0], [0x0a4d_0102, 0, 0, 0]));
}

#[test]
fn ipv4_fragments_use_addresses() {
    let whole = FlowKey::addresses([0x0a00_0001, 0, 0, 0], [0x0a4d_0102, 0, 0, 0]);
    let more_fragments = 0x2000;
    let offset_8 = 0x0001;
    let dont_fragment = 0x4000;
    for frag in [more_fragments, offset_8, more_fragments | offset_8] {
        assert_eq!(key(&ipv4_with(IPPROTO_UDP, A, B, (1, 2), frag, 0)), whole);
        assert_eq!(key(&ipv4_with(IPPROTO_TCP, A, B, (1, 2), frag, 0)), whole);
    }
    // DF alone is not a fragment.
    let df = key(&ipv4_with(IPPROTO_TCP, A, B, (1, 2), dont_fragment, 0));
    assert_eq!(df.src_port, 1);
}

#[test]
fn ipv4_options_move_the_ports() {
    let plain = key(&ipv4(IPPROTO_TCP, A, B, 1234, 80));
    for options in 1..=10 {
        assert_eq!(key(&ipv4_with(IPPROTO_TCP, A, B, (1234, 80), 0, options)), plain);
    }
}

#[test]
fn ipv6_tcp_and_udp() {
    let k = key(&ipv6(IPPROTO_TCP, v6(1), v6(2), 40000, 443));
    let w = |last: u32| [0xfd77_0000, 0, 0, last];
    assert_eq!(k, FlowKey::tcp(w(1), w(2), 40000, 443));
    assert_eq!(key(&ipv6(IPPROTO_UDP, v6(1), v6(2), 7, 9)), FlowKey::udp(w(1), 7));
}

#[test]
fn ipv6_extension_headers_and_icmp_use_addresses() {
    let addresses = key(&ipv6(58, v6(1), v6(2), 1, 2));
    assert_eq!(addresses.proto, 0);
    assert_eq!(addresses.src_port, 0);
    for next in [IPV6_HOP_BY_HOP, IPV6_FRAGMENT] {
        assert_eq!(key(&ipv6(next, v6(1), v6(2), 1, 2)), addresses);
    }
}

#[test]
fn short_transport_header_uses_addresses() {
    let mut p = ipv4(IPPROTO_TCP, A, B, 1, 2);
    p.truncate(23);
    assert_eq!(
        key(&p),
        FlowKey::addresses([0x0a00_0001, 0, 0, 0], [0x0a4d_0102, 0, 0, 0])
    );
    let mut q = ipv4(IPPROTO_TCP, A, B, 1, 2);
    q.truncate(24);
    assert_eq!(key(&q).src_port, 1);
}

#[test]
fn not_ip_or_truncated_is_none() {
    assert_eq!(flow_key(&[][..]), None);
    assert_eq!(flow_key(&ipv4(IPPROTO_TCP, A, B, 1, 2)[..19]), None);
    assert_eq!(flow_key(&ipv6(IPPROTO_TCP, v6(1), v6(2), 1, 2)[..39]), None);
    let mut bad_version = ipv4(IPPROTO_TCP, A, B, 1, 2);
    bad_version[0] = 0x55;
    assert_eq!(flow_key(&bad_version[..]), None);
    let mut bad_ihl = ipv4(IPPROTO_TCP, A, B, 1, 2);
    bad_ihl[0] = 0x44;
    assert_eq!(flow_key(&bad_ihl[..]), None);
    assert_eq!(steer_packet(&bad_ihl[..]), 0);
}

/// MurmurHash3_x86_32 over bytes, the textbook way, to check that
/// [`flow_hash`] is that function over the key's words.
fn murmur3_reference(data: &[u8], seed: u32) -> u32 {
    let mut h = seed;
    let chunks = data.chunks_exact(4);
    let tail = chunks.remainder();
    for c in chunks {
        h = mix(h, u32::from_le_bytes(c.try_into().unwrap()));
    }
    if !tail.is_empty() {
        let mut k = 0u32;
        for (i, b) in tail.iter().enumerate() {
            k |= u32::from(*b) << (8 * i);
        }
        h ^= k.wrapping_mul(0xcc9e_2d51).rotate_left(15).wrapping_mul(0x1b87_3593);
    }
    finalize(h ^ data.len() as u32)
}

#[test]
fn hash_is_murmur3() {
    // Published MurmurHash3_x86_32 test vectors.
    assert_eq!(murmur3_reference(b"", 0), 0);
    assert_eq!(murmur3_reference(b"", 1), 0x514e_28b7);
    assert_eq!(murmur3_reference(&[0x21, 0x43, 0x65, 0x87], 0), 0xf55b_516b);
    assert_eq!(murmur3_reference(b"Hello, world!", 0x9747_b28c), 0x2488_4cba);
    assert_eq!(
        murmur3_reference(b"The quick brown fox jumps over the lazy dog", 0x9747_b28c),
        0x2fa8_26cd
    );

    let k = key(&ipv6(IPPROTO_TCP, v6(1), v6(2), 40000, 443));
    let bytes: Vec<u8> = k.words().iter().flat_map(|w| w.to_le_bytes()).collect();
    assert_eq!(flow_hash(&k), murmur3_reference(&bytes, SEED));
}

#[test]
fn queue_mirrors_the_kernels_u16_modulo() {
    assert_eq!(steering_value(0x1234_5678), 0x5678);
    assert_eq!(queue_of(0x0001_0002, 3), 2); // not 0x10002 % 3 == 0
    assert_eq!(queue_of(0xffff_ffff, 0), 0);
    let p = ipv4(IPPROTO_TCP, A, B, 1, 2);
    assert_eq!(steer_packet(&p[..]), steering_value(flow_hash(&key(&p))));
}

/// Counts per queue for `flows` must each be within `tolerance` of even.
fn assert_even(name: &str, flows: impl Iterator<Item = Vec<u8>> + Clone) {
    for queues in 2..=16u32 {
        let mut counts = [0u32; 16];
        let mut total = 0;
        for packet in flows.clone() {
            counts[queue_of(flow_hash(&key(&packet)), queues) as usize] += 1;
            total += 1;
        }
        let expected = total as f64 / f64::from(queues);
        for (queue, &count) in counts[..queues as usize].iter().enumerate() {
            // About five standard deviations of a binomial count.
            let slack = 5.0 * expected.sqrt();
            assert!(
                (f64::from(count) - expected).abs() < slack,
                "{name}: queue {queue}/{queues} got {count}, expected {expected:.0} +- {slack:.0}"
            );
        }
    }
}

#[test]
fn flows_spread_evenly_over_2_to_16_queues() {
    let n = 8192u16;
    // One client, sequential ephemeral ports: the common case.
    assert_even("tcp ports", (0..n).map(|i| ipv4(IPPROTO_TCP, A, B, 32768 + i, 443)));
    assert_even("udp ports", (0..n).map(|i| ipv4(IPPROTO_UDP, A, B, 32768 + i, 53)));
    // One source port, many servers.
    assert_even(
        "tcp servers",
        (0..n).map(|i| ipv4(IPPROTO_TCP, A, [10, 77, (i >> 8) as u8, i as u8], 40000, 80)),
    );
    // Many LAN clients behind a router.
    assert_even(
        "udp clients",
        (0..n).map(|i| ipv4(IPPROTO_UDP, [192, 168, (i >> 8) as u8, i as u8], B, 5000, 53)),
    );
    assert_even(
        "v6 tcp ports",
        (0..n).map(|i| ipv6(IPPROTO_TCP, v6(1), v6(2), 1024 + i, 443)),
    );
    assert_even(
        "v6 udp clients",
        (0..n).map(|i| ipv6(IPPROTO_UDP, v6(i), v6(2), 5000, 53)),
    );
    assert_even(
        "icmp hosts",
        (0..n).map(|i| ipv4(ICMP, A, [10, 77, (i >> 8) as u8, i as u8], 0, 0)),
    );
}

#[test]
fn one_bit_changes_about_half_the_hash() {
    let base = key(&ipv6(IPPROTO_TCP, v6(1), v6(2), 40000, 443));
    let h0 = flow_hash(&base);
    let mut flipped_bits = 0;
    let mut trials = 0;
    for bit in 0..128 {
        let mut k = base;
        k.src[bit / 32] ^= 1 << (bit % 32);
        flipped_bits += (flow_hash(&k) ^ h0).count_ones();
        trials += 1;
    }
    let mean = f64::from(flipped_bits) / f64::from(trials);
    assert!((13.0..19.0).contains(&mean), "mean flipped bits {mean}");
}
