//! DNS queries to the fake-IP responder (`dns::fuzz_responder` checks its
//! invariants: answers parse, echo the ID, fit 512 bytes).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tun2socks::dns::fuzz_responder(data));
