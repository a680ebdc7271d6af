//! The SOCKS5 client handshake (`socks5::connect` and `socks5::associate`)
//! against a proxy whose every byte comes from the fuzzer, delivered in
//! pieces of fuzzer-chosen sizes and then end of stream. It must end (the
//! stream never waits), never panic, and succeed only on a well-formed
//! exchange: version 5, a method we offered, auth status 0, reply code 0.
#![no_main]

use std::net::SocketAddr;

use libfuzzer_sys::fuzz_target;
use tun2socks::proxy::socks5::{self, Credentials, Target};
use tun2socks_fuzz::{ScriptedStream, run_to_completion};

fuzz_target!(|data: &[u8]| {
    // [options][number of cuts][cuts...][server bytes...]
    let [options, ncuts, rest @ ..] = data else {
        return;
    };
    let (cuts, server) = rest.split_at(usize::from(*ncuts % 8).min(rest.len()));
    let credentials = (options & 1 == 1).then(|| Credentials {
        username: "user".into(),
        password: "pass".into(),
    });
    let target = match (options >> 2) & 3 {
        0 => Target::Ip("10.0.2.2:80".parse().unwrap()),
        1 => Target::Ip("[fd00:2::2]:443".parse().unwrap()),
        2 => Target::Domain("example.test".into(), 8080),
        _ => Target::Domain("x".repeat(255), 1),
    };
    let mut stream = ScriptedStream::new(server, cuts);
    let associate = options & 2 == 2;
    let result = if associate {
        let from: SocketAddr = "10.0.1.1:5000".parse().unwrap();
        run_to_completion(socks5::associate(&mut stream, from, credentials.as_ref()))
    } else {
        run_to_completion(socks5::connect(&mut stream, &target, credentials.as_ref()))
    };
    assert!(stream.consumed <= server.len());
    if result.is_ok() {
        // Method choice, then (if chosen) the RFC 1929 status, then the
        // reply's head.
        assert_eq!(server[0], 5, "accepted a method choice of version {}", server[0]);
        let reply_at = match server[1] {
            0 => 2,
            2 => {
                assert!(credentials.is_some(), "accepted user/pass that we did not offer");
                assert_eq!(server[3], 0, "accepted a failed authentication");
                4
            }
            other => panic!("accepted method {other:#04x}"),
        };
        assert_eq!(server[reply_at], 5, "accepted a reply of version {}", server[reply_at]);
        assert_eq!(server[reply_at + 1], 0, "accepted reply code {}", server[reply_at + 1]);
    }
});
