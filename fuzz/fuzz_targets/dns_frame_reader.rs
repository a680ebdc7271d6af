//! DNS-over-TCP framing from an upstream (`dns::fuzz_frame_reader` checks
//! progress and the one-frame bound).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tun2socks::dns::fuzz_frame_reader(data));
