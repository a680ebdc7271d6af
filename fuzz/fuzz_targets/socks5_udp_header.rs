//! `socks5::decode_udp_header` on datagrams from a relay: no panic, a header
//! length inside the datagram, no fragment accepted, and the decoded target
//! encodes back to the same bytes (RSV aside).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tun2socks::proxy::socks5::{Target, decode_udp_header, encode_udp_header};

fuzz_target!(|data: &[u8]| {
    let Ok((target, header_len)) = decode_udp_header(data) else {
        return;
    };
    assert!(
        header_len <= data.len(),
        "header of {header_len} bytes in {} bytes",
        data.len()
    );
    assert_eq!(data[2], 0, "a fragment was accepted");
    // A name that is not UTF-8 is decoded lossily; it cannot round-trip.
    if let Target::Domain(name, _) = &target {
        if std::str::from_utf8(&data[5..5 + usize::from(data[4])]).is_err() {
            assert!(name.contains('\u{fffd}'));
            return;
        }
    }
    let mut encoded = Vec::new();
    encode_udp_header(&mut encoded, &target).expect("a decoded target encodes");
    assert_eq!(&encoded[2..], &data[2..header_len], "{target} does not round-trip");
});
