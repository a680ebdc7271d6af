//! `packet::write_udp` round trip: a packet built for (src, dst, payload)
//! classifies back as exactly that datagram, and the shared steering code
//! keys it by its source endpoint like any UDP packet.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use libfuzzer_sys::fuzz_target;
use tun2socks::packet::{Classified, classify, write_udp};
use tun2socks_ebpf::flow_key;
use tun2socks_fuzz::udp_key;

/// Largest UDP payload the daemon can receive from a relay and hand on: the
/// relay's datagram is read into a 64 KiB buffer, less the SOCKS5 header.
const MAX_PAYLOAD: usize = 65_536;

fuzz_target!(|data: &[u8]| {
    // [flags][src 16][dst 16][sport 2][dport 2][extra length 2][payload...]
    if data.len() < 39 {
        return;
    }
    let (head, payload) = data.split_at(39);
    let v6 = head[0] & 1 == 1;
    let ip = |b: &[u8]| -> IpAddr {
        if v6 {
            IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(b).unwrap()))
        } else {
            IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
        }
    };
    let src = SocketAddr::new(ip(&head[1..17]), u16::from_be_bytes([head[33], head[34]]));
    let dst = SocketAddr::new(ip(&head[17..33]), u16::from_be_bytes([head[35], head[36]]));
    // Large payloads without large inputs: the length may grow past the
    // input, filled with a pattern.
    let extra = usize::from(u16::from_be_bytes([head[37], head[38]]));
    let mut body = payload.to_vec();
    if head[0] & 2 == 2 {
        body.extend((0..extra).map(|i| i as u8));
    }
    body.truncate(MAX_PAYLOAD);

    // An IP packet holds at most 65535 bytes (IPv4 total length, IPv6
    // payload length): bigger payloads must be refused, not built.
    let header = if v6 { 0 } else { 20 };
    let fits = header + 8 + body.len() <= usize::from(u16::MAX);
    let mut packet = Vec::new();
    match write_udp(&mut packet, src, dst, &body) {
        Some(()) if fits => {}
        Some(()) => panic!("write_udp built a packet for a {}-byte payload", body.len()),
        None if fits => panic!("write_udp refused same-family endpoints {src} -> {dst}"),
        None => return,
    }
    match classify(&packet) {
        Classified::Udp { key, payload } => {
            assert_eq!((key.client, key.dest), (src, dst));
            assert_eq!(&packet[payload], &body[..]);
        }
        other => panic!(
            "built {} bytes for {src} -> {dst}, classified as {other:?}",
            packet.len()
        ),
    }
    assert_eq!(flow_key(&packet[..]), Some(udp_key(src)));
});
