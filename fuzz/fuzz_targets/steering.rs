//! The steering rules as user space mirrors them (`tun2socks_ebpf::flow_key`,
//! `steering::queue_for_packet`): every packet of one flow meets one queue.
//! For any packet, a copy that differs only in what changes between packets
//! of the same flow (TTL, IP ID, checksums, sequence numbers, flags, window,
//! payload length and contents; for UDP also the destination, which the
//! source-endpoint rule leaves out) must get the same key and queue.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tun2socks::steering::queue_for_packet;
use tun2socks_ebpf::{FlowKey, IPPROTO_TCP, IPPROTO_UDP, flow_key};

/// Bytes of the packet that may differ between packets of one flow.
fn volatile_bytes(packet: &[u8], key: &FlowKey) -> Vec<usize> {
    let mut at = Vec::new();
    let l4 = match packet[0] >> 4 {
        4 => {
            // TOS, ID, TTL, header checksum (never total length's effect on
            // the key: it is not read), and for UDP the destination address.
            at.extend([1, 4, 5, 8, 10, 11]);
            if key.proto == IPPROTO_UDP {
                at.extend(16..20);
            }
            usize::from(packet[0] & 0x0f) * 4
        }
        _ => {
            // Traffic class / flow label, payload length, hop limit.
            at.extend([1, 2, 3, 4, 5, 7]);
            if key.proto == IPPROTO_UDP {
                at.extend(24..40);
            }
            40
        }
    };
    match key.proto {
        // Sequence and acknowledgement numbers, data offset, flags, window,
        // checksum, urgent pointer.
        IPPROTO_TCP => at.extend(l4 + 4..l4 + 20),
        // Destination port, length, checksum.
        IPPROTO_UDP => at.extend(l4 + 2..l4 + 8),
        _ => {}
    }
    at.retain(|&i| i < packet.len());
    at
}

fuzz_target!(|data: &[u8]| {
    // [noise byte][extra payload length][packet...]
    let [noise, extra, packet @ ..] = data else {
        return;
    };
    let Some(key) = flow_key(packet) else {
        assert!(queue_for_packet(packet, 4).is_none());
        return;
    };
    let mut sibling = packet.to_vec();
    for (n, i) in volatile_bytes(packet, &key).into_iter().enumerate() {
        sibling[i] ^= noise.wrapping_add(n as u8) | 1;
    }
    // More payload. Not for addresses-only keys: that may be a TCP/UDP
    // packet truncated before its ports, which the worker drops anyway and
    // which may be steered apart from its untruncated flow.
    if key.proto != 0 {
        sibling.extend((0..*extra).map(|i| i ^ noise));
    }
    let sibling_key = flow_key(&sibling[..]);
    assert_eq!(Some(key), sibling_key, "a packet of the same flow got another key");
    for queues in [1, 2, 4, 6, 16] {
        let (q1, q2) = (queue_for_packet(packet, queues), queue_for_packet(&sibling, queues));
        assert_eq!(q1, q2, "a packet of the same flow met another queue of {queues}");
        assert!(q1.is_some_and(|q| q < queues));
    }
});
