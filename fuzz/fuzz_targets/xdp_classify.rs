//! The XDP classifier's decision (user space runs the program's own code
//! with an address plan as its maps) on any Ethernet frame: no panic, and a
//! frame it sends to a worker is one the worker takes for a TCP or UDP flow
//! to a routed, not bypassed, not local address (or counts as malformed):
//! the classifier never hands a worker something else to terminate. IPv4
//! fragments of captured destinations are the one exception: they go to the
//! worker too (which counts and drops them), never around the proxy.
#![no_main]

use std::net::IpAddr;
use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use tun2socks::packet::{Classified, classify};
use tun2socks::xdp::AddressPlan;
use tun2socks_ebpf::xdp::XdpCounter;

static PLAN: LazyLock<AddressPlan> = LazyLock::new(|| AddressPlan {
    routed: vec!["0.0.0.0/1".parse().unwrap(), "2000::/3".parse().unwrap()],
    bypass: vec!["10.0.0.0/8".parse().unwrap(), "2001:db8::/32".parse().unwrap()],
    local: vec!["10.1.2.3".parse().unwrap(), "2001:db8::1".parse().unwrap()],
});

/// The IP packet inside an Ethernet frame (one 802.1Q/802.1ad tag looked
/// through, as the program does).
fn ip_payload(frame: &[u8]) -> Option<&[u8]> {
    let ethertype = u16::from_be_bytes(frame.get(12..14)?.try_into().ok()?);
    match ethertype {
        0x8100 | 0x88a8 => frame.get(18..),
        _ => frame.get(14..),
    }
}

fn is_ipv4_fragment(packet: &[u8]) -> bool {
    packet.first().is_some_and(|b| b >> 4 == 4)
        && packet
            .get(6..8)
            .is_some_and(|f| u16::from_be_bytes([f[0], f[1]]) & 0x3fff != 0)
}

fn captured(addr: IpAddr) -> bool {
    let plan = &*PLAN;
    plan.routed.iter().any(|n| n.contains(&addr))
        && !plan.bypass.iter().any(|n| n.contains(&addr))
        && !plan.local.contains(&addr)
}

fuzz_target!(|frame: &[u8]| {
    if PLAN.classify(frame) != XdpCounter::Redirected {
        return;
    }
    let packet = ip_payload(frame).expect("a redirected frame has an IP payload");
    match classify(packet) {
        Classified::Tcp { key, .. } | Classified::Udp { key, .. } => {
            assert!(captured(key.dest.ip()), "{key} redirected, but its destination is not captured");
        }
        Classified::Malformed => {}
        Classified::Other => assert!(
            is_ipv4_fragment(packet),
            "a frame the worker does not terminate was redirected"
        ),
    }
});
