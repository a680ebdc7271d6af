//! `proxy::http::connect` against an HTTP proxy on loopback whose answer is
//! the fuzzer's bytes, followed by a blank line (so that every input ends:
//! a head that never ends waits for the connect timeout in the daemon) and
//! then the close. It must not panic, accept only a 2xx status line, and
//! consume exactly the head: what follows stays in the socket for the relay.
#![no_main]

use std::io::Write;
use std::net::{TcpListener, TcpStream as StdStream};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::runtime::Runtime;
use tun2socks::proxy::http;
use tun2socks::proxy::socks5::{Credentials, Target};

struct Harness {
    runtime: Runtime,
    listener: TcpListener,
}

fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| Harness {
        runtime: tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap(),
        listener: TcpListener::bind("127.0.0.1:0").expect("a loopback listener"),
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&options, answer)) = data.split_first() else {
        return;
    };
    let h = harness();
    let mut sent = answer.to_vec();
    sent.extend_from_slice(b"\r\n\r\n");
    // What the head is, if the client reads it as it should: through the
    // first blank line, if that lies within the 8 KiB limit.
    let head_end = sent.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);

    let addr = h.listener.local_addr().unwrap();
    let client = StdStream::connect(addr).unwrap();
    let (mut server, _) = h.listener.accept().unwrap();
    server.write_all(&sent).unwrap();
    drop(server);
    client.set_nonblocking(true).unwrap();

    let credentials = (options & 1 == 1).then(|| Credentials {
        username: "user".into(),
        password: "pass".into(),
    });
    let target = Target::Domain("example.test".into(), 443);
    let (result, rest) = h.runtime.block_on(async {
        let mut stream = TcpStream::from_std(client).unwrap();
        let result = http::connect(&mut stream, &target, credentials.as_ref()).await;
        let mut rest = Vec::new();
        if result.is_ok() {
            stream.read_to_end(&mut rest).await.unwrap();
        }
        (result, rest)
    });
    if result.is_ok() {
        let end = head_end.expect("accepted a head without an end");
        assert!(end <= 8192, "accepted a head of {end} bytes");
        // The status line: a version starting "HTTP/1." and a 2xx code.
        // (Lenient on purpose: "HTTP/1.x" with any x, and a code such as
        // "+200" that Rust's integer parser takes, pass too.)
        let head = String::from_utf8_lossy(&sent[..end]);
        let line = head.split('\r').next().unwrap_or_default();
        let mut words = line.splitn(3, ' ');
        let version = words.next().unwrap_or_default();
        let code = words.next().and_then(|c| c.parse::<u16>().ok());
        assert!(version.starts_with("HTTP/1."), "accepted {line:?}");
        assert!(code.is_some_and(|c| (200..300).contains(&c)), "accepted {line:?}");
        assert_eq!(
            rest,
            &sent[end..],
            "the bytes after the head were not left for the relay"
        );
    }
});
