//! `packet::classify` on anything a TUN queue can deliver: no panic, payload
//! ranges inside the packet, and the steering program's key agreeing with
//! the worker's view of the flow (flow affinity: a packet the worker takes
//! as TCP/UDP flow F must be steered as F).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tun2socks::packet::{Classified, classify};
use tun2socks::steering::queue_for_packet;
use tun2socks_ebpf::flow_key;
use tun2socks_fuzz::{tcp_key, udp_key};

fuzz_target!(|data: &[u8]| {
    let classified = classify(data);
    let steered = flow_key(data);
    match &classified {
        Classified::Tcp { key, .. } => {
            assert_eq!(key.client.is_ipv4(), key.dest.is_ipv4(), "mixed families");
            assert_eq!(
                steered,
                Some(tcp_key(key.client, key.dest)),
                "TCP flow {key} steered by another key"
            );
        }
        Classified::Udp { key, payload } => {
            assert!(
                payload.start <= payload.end && payload.end <= data.len(),
                "payload {payload:?} outside {} bytes",
                data.len()
            );
            assert_eq!(
                steered,
                Some(udp_key(key.client)),
                "UDP flow {key} steered by another key"
            );
        }
        Classified::Other | Classified::Malformed => {}
    }
    for queues in [1, 2, 3, 4, 7, 64] {
        if let Some(q) = queue_for_packet(data, queues) {
            assert!(q < queues, "queue {q} of {queues}");
        }
    }
});
