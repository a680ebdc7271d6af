//! Host unit tests of the tc egress queue choice (`cargo test --lib`).
extern crate std;

use std::vec::Vec;

use super::*;
use crate::xdp::{ETH_P_8021Q, ETH_P_ARP};
use crate::{IPPROTO_TCP, IPPROTO_UDP};

fn ipv4(proto: u8, src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
    let mut p = std::vec![0x45, 0, 0, 28, 0, 0, 0x40, 0, 64, proto, 0, 0];
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    p.extend_from_slice(&sport.to_be_bytes());
    p.extend_from_slice(&dport.to_be_bytes());
    p.extend_from_slice(&[0; 4]);
    p
}

fn ipv6(next: u8, last: u8, sport: u16, dport: u16) -> Vec<u8> {
    let mut p = std::vec![0x60, 0, 0, 0, 0, 8, next, 64];
    p.extend_from_slice(&[0xfd, 0x99, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, last]);
    p.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10]);
    p.extend_from_slice(&sport.to_be_bytes());
    p.extend_from_slice(&dport.to_be_bytes());
    p.extend_from_slice(&[0; 4]);
    p
}

/// `packet` behind an Ethernet header of `ethertype`, with an 802.1Q tag
/// when `vlan`.
fn frame(ethertype: u16, packet: &[u8], vlan: bool) -> Vec<u8> {
    let mut f = std::vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2];
    if vlan {
        f.extend_from_slice(&ETH_P_8021Q.to_be_bytes());
        f.extend_from_slice(&[0, 7]);
    }
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(packet);
    f
}

/// What user space predicts for the IP packet (`queue_for_packet`).
fn predicted(packet: &[u8], queues: u32) -> Option<u32> {
    flow_key(packet).map(|key| queue_of(flow_hash(&key), queues))
}

fn packets() -> Vec<(u16, Vec<u8>)> {
    let mut out = Vec::new();
    for port in 40000..40064u16 {
        out.push((
            ETH_P_IP,
            ipv4(IPPROTO_TCP, [10, 99, 0, 2], [198, 51, 100, 10], port, 443),
        ));
        out.push((
            ETH_P_IP,
            ipv4(IPPROTO_UDP, [10, 99, 0, 2], [198, 51, 100, 10], port, 53),
        ));
        out.push((
            ETH_P_IP,
            ipv4(1, [10, 99, 0, (port % 200) as u8], [198, 51, 100, 10], 0, 0),
        ));
        out.push((ETH_P_IPV6, ipv6(IPPROTO_TCP, 2, port, 443)));
        out.push((ETH_P_IPV6, ipv6(IPPROTO_UDP, 2, port, 53)));
        out.push((ETH_P_IPV6, ipv6(58, (port % 200) as u8, 0, 0)));
    }
    out
}

#[test]
fn the_frame_meets_the_queue_user_space_predicts_for_its_packet() {
    for (ethertype, packet) in packets() {
        for vlan in [false, true] {
            let f = frame(ethertype, &packet, vlan);
            for queues in 1..=16 {
                let expected = predicted(&packet, queues).expect("an IP packet");
                assert_eq!(queue_for_frame(&f[..], queues), Some(expected));
                assert_eq!(
                    steer_frame(&f[..], queues),
                    (Some(expected + 1), QueueSteerCounter::Steered)
                );
            }
        }
    }
}

#[test]
fn every_queue_is_used() {
    for queues in [2u32, 4, 8] {
        let mut seen = std::vec![0u32; queues as usize];
        for (ethertype, packet) in packets() {
            let queue = queue_for_frame(&frame(ethertype, &packet, false)[..], queues).unwrap();
            seen[queue as usize] += 1;
        }
        assert!(seen.iter().all(|&n| n > 0), "{queues} queues: {seen:?}");
    }
}

#[test]
fn non_ip_and_cut_short_frames_are_left_alone() {
    let arp = frame(ETH_P_ARP, &[0u8; 28], false);
    assert_eq!(steer_frame(&arp[..], 4), (None, QueueSteerCounter::NotIp));
    let tcp = ipv4(IPPROTO_TCP, [10, 0, 0, 1], [10, 0, 0, 2], 1, 2);
    // The IPv4 header cut short; an IPv6 ethertype over 20 bytes of IPv4
    // (the packet's own version wins, as in user space: it has no
    // ethertype to go by); an Ethernet header alone; nothing at all.
    let short = frame(ETH_P_IP, &tcp[..19], false);
    assert_eq!(steer_frame(&short[..], 4), (None, QueueSteerCounter::NotIp));
    let mixed = frame(ETH_P_IPV6, &tcp, false);
    assert_eq!(queue_for_frame(&mixed[..], 4), predicted(&tcp, 4));
    let bare = frame(ETH_P_IP, &[], true);
    assert_eq!(steer_frame(&bare[..], 4), (None, QueueSteerCounter::NotIp));
    assert_eq!(steer_frame(&[0u8; 10][..], 4), (None, QueueSteerCounter::NotIp));
    let bad_version = frame(ETH_P_IP, &[0x55; 40], false);
    assert_eq!(steer_frame(&bad_version[..], 4), (None, QueueSteerCounter::NotIp));
}

#[test]
fn no_queue_count_leaves_everything_alone() {
    let f = frame(ETH_P_IP, &ipv4(IPPROTO_UDP, [10, 0, 0, 1], [10, 0, 0, 2], 1, 2), false);
    assert_eq!(steer_frame(&f[..], 0), (None, QueueSteerCounter::Unconfigured));
    assert_eq!(
        steer_frame(&f[..], MAX_STEERED_QUEUES + 1),
        (None, QueueSteerCounter::Unconfigured)
    );
}

#[test]
fn the_mapping_is_the_queue_plus_one_and_never_no_queue() {
    assert_eq!(queue_mapping_for(0), 1);
    assert_eq!(queue_mapping_for(3), 4);
    assert!(queue_mapping_for(MAX_STEERED_QUEUES - 1) < NO_QUEUE_MAPPING);
    let f = frame(ETH_P_IP, &ipv4(IPPROTO_TCP, [10, 0, 0, 1], [10, 0, 0, 2], 1, 2), false);
    let (mapping, _) = steer_frame(&f[..], MAX_STEERED_QUEUES);
    assert!((1..NO_QUEUE_MAPPING).contains(&mapping.unwrap()));
}

#[test]
fn counters_have_distinct_names_and_indices() {
    for (i, counter) in QueueSteerCounter::ALL.into_iter().enumerate() {
        assert_eq!(counter as usize, i);
        assert!(!counter.name().is_empty());
    }
    assert_eq!(QueueSteerCounter::ALL.len() as u32, QueueSteerCounter::COUNT);
}
