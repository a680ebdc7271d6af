//! The AF_XDP fast path against a real kernel: the `classify` XDP program
//! and AF_XDP sockets on a two-queue veth.
//!
//! Two network namespaces, "gw" and "cl", joined by a veth pair with two rx
//! and two tx queues. The gateway end runs the classifier (driver mode) and
//! one AF_XDP socket per queue; the client routes a test prefix through the
//! gateway. Checked:
//!
//! (a) UDP datagrams and TCP SYNs from the client to the routed prefixes
//!     (IPv4 and IPv6) arrive on an AF_XDP socket, byte for byte as sent;
//! (b) ARP/NDP and ping of the gateway keep working (`ping -c 1 -W 2`), and
//!     UDP to the gateway's own address, to a bypassed prefix inside the
//!     routed one and to an unrouted prefix is passed to the gateway's
//!     kernel (the first two are received by sockets there);
//! (c) frames written to the TX rings (UDP over IPv4 and IPv6, checksums
//!     computed here) reach UDP sockets in the client namespace;
//! (d) the program's counters match what was sent and captured.
//!
//! Needs root (namespaces, CAP_BPF, CAP_NET_ADMIN); skipped otherwise. The
//! namespaces are named after the test's pid and removed on drop, also
//! when the test fails; nothing in the namespace the test runs in changes.
//!
//! Run: `cargo test -p tun2socks --test xsk`

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};
use tun2socks::device::xsk::{BoundMode, XskConfig, XskError, XskMode, XskSocket};
use tun2socks::xdp::{AddressPlan, XdpAttachMode, XdpClassifier, XdpCounts};
use tun2socks_ebpf::xdp::XdpCounter;

mod common;
use common::ip;
use common::veth::{End, VethLab, in_ns, kernel_test_can_run, mac, test_plan};

const GW_IF: &str = "xg";
const CL_IF: &str = "xc";
const QUEUES: u32 = 2;

const GW_V4: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
const CL_V4: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);
const GW_V6: Ipv6Addr = Ipv6Addr::new(0xfd99, 0, 0, 0, 0, 0, 0, 1);
const CL_V6: Ipv6Addr = Ipv6Addr::new(0xfd99, 0, 0, 0, 0, 0, 0, 2);
const GW_END: End = End {
    dev: GW_IF,
    v4: GW_V4,
    v6: GW_V6,
};
const CL_END: End = End {
    dev: CL_IF,
    v4: CL_V4,
    v6: CL_V6,
};
/// Routed (captured) destinations.
const REMOTE_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
const REMOTE_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 0x10);
/// Inside the bypassed 198.51.100.192/26; the gateway holds it on `lo`.
const BYPASSED_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 200);
/// Routed to the gateway by the client, but not by the classifier.
const UNROUTED_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 5);

const UDP_DATAGRAMS: u16 = 4;
/// How long to keep reading once the expected frames are in.
const QUIET: Duration = Duration::from_millis(300);
const CAPTURE_LIMIT: Duration = Duration::from_secs(5);

#[test]
fn xdp_classifier_and_af_xdp_sockets_on_a_two_queue_veth() {
    if !kernel_test_can_run() {
        return;
    }
    let lab = VethLab::routed("xsk", QUEUES, &GW_END, &CL_END);
    let (gw, cl) = (&lab.gw, &lab.cl);
    ip(&format!("-n {gw} addr add {BYPASSED_V4}/32 dev lo"));
    ip(&format!("-n {cl} route add 203.0.113.0/24 via {GW_V4}"));
    lab.run_in_gateway(gateway);
}

fn plan() -> AddressPlan {
    test_plan(&GW_END, &["198.51.100.192/26", "2001:db8:100:ff::/64"])
}

/// Everything on the gateway side; runs in the gateway namespace.
fn gateway(gw: &str, cl: &str) {
    let plan = plan();
    let mut classifier = XdpClassifier::attach(GW_IF, &plan).expect("attach the classifier");
    eprintln!("XDP attached in {} mode", classifier.mode().name());
    assert_eq!(classifier.mode(), XdpAttachMode::Driver, "veth has native XDP");

    // Queue 0 with the daemon's defaults, queue 1 with small 2 KiB frames.
    let configs = [
        XskConfig::default(),
        XskConfig {
            frame_size: 2048,
            rx_frames: 256,
            tx_frames: 256,
            mode: XskMode::Auto,
        },
    ];
    let mut sockets: Vec<XskSocket> = (0..QUEUES)
        .map(|queue| XskSocket::bind(GW_IF, queue, &configs[queue as usize]).expect("bind an AF_XDP socket"))
        .collect();
    for socket in &sockets {
        eprintln!(
            "queue {}: fd {}, {} mode, {} bytes per frame",
            socket.queue(),
            socket.as_raw_fd(),
            socket.mode().name(),
            socket.frame_capacity()
        );
        assert_eq!(socket.mode(), BoundMode::Copy, "veth has no zero-copy AF_XDP");
        classifier
            .register(socket.queue(), socket)
            .expect("register the socket");
    }
    let before = classifier.counters().unwrap();
    let gw_mac = mac(gw, GW_IF);
    let cl_mac = mac(cl, CL_IF);

    // (b) ARP/NDP and ICMP reach the gateway's kernel, which answers.
    for target in [IpAddr::V4(GW_V4), IpAddr::V6(GW_V6)] {
        let out = Command::new("ip")
            .args(["netns", "exec", cl, "ping", "-c", "1", "-W", "2", &target.to_string()])
            .output()
            .expect("run ping");
        assert!(
            out.status.success(),
            "ping {target} from the client: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // (a) UDP and TCP SYNs to the routed prefixes land on the AF_XDP sockets.
    let sent = in_ns(cl, send_captured_traffic);
    let captured = capture(&mut sockets, |frames| {
        let udp = frames.iter().filter(|f| udp_payload_of(f).is_some()).count();
        let syns = frames.iter().filter(|f| is_syn(f)).count();
        udp >= sent.udp.len() && syns >= 2
    });
    drop(sent.tcp);
    let queues_seen: std::collections::BTreeSet<u32> = captured.iter().map(|(q, _)| *q).collect();
    eprintln!("captured {} frames on queues {queues_seen:?}", captured.len());
    for (_, frame) in &captured {
        assert_eq!(plan.classify(frame), XdpCounter::Redirected, "user space agrees");
    }
    for datagram in &sent.udp {
        let frame = captured
            .iter()
            .map(|(_, f)| f)
            .find(|f| udp_payload_of(f) == Some(datagram.payload.as_slice()))
            .unwrap_or_else(|| panic!("datagram {datagram:?} was not captured"));
        let expected = udp_frame(
            gw_mac,
            cl_mac,
            (datagram.from, datagram.to),
            &datagram.payload,
            header_echo(frame),
        );
        assert_eq!(
            frame.as_slice(),
            expected.as_slice(),
            "datagram {datagram:?}: received frame differs from the one expected"
        );
    }
    for to in [
        SocketAddr::new(REMOTE_V4.into(), 443),
        SocketAddr::new(REMOTE_V6.into(), 443),
    ] {
        let syn = captured
            .iter()
            .map(|(_, f)| f)
            .find(|f| is_syn(f) && l4_destination(f) == Some(to))
            .unwrap_or_else(|| panic!("no SYN to {to} captured"));
        assert_eq!(&syn[..6], &gw_mac, "SYN to {to}: destination MAC");
        assert_eq!(&syn[6..12], &cl_mac, "SYN to {to}: source MAC");
        assert!(transport_checksum_ok(syn), "SYN to {to}: TCP checksum");
    }

    // (b) Traffic the kernel keeps: to the gateway itself and to the
    // bypassed prefix (sockets here receive it), to an unrouted prefix (the
    // gateway does not forward: only the counter shows it).
    let local_rx = UdpSocket::bind((GW_V4, 7000)).unwrap();
    let bypass_rx = UdpSocket::bind((BYPASSED_V4, 7001)).unwrap();
    for s in [&local_rx, &bypass_rx] {
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    }
    in_ns(cl, || {
        let s = UdpSocket::bind((CL_V4, 0)).unwrap();
        s.send_to(b"to the gateway", (GW_V4, 7000)).unwrap();
        s.send_to(b"to a bypassed prefix", (BYPASSED_V4, 7001)).unwrap();
        s.send_to(b"to an unrouted prefix", (UNROUTED_V4, 7002)).unwrap();
    });
    let mut buf = [0u8; 1500];
    let (n, _) = local_rx.recv_from(&mut buf).expect("UDP to the gateway's own address");
    assert_eq!(&buf[..n], b"to the gateway");
    let (n, _) = bypass_rx.recv_from(&mut buf).expect("UDP to the bypassed prefix");
    assert_eq!(&buf[..n], b"to a bypassed prefix");
    let strays = capture(&mut sockets, |_| true);
    assert!(
        strays
            .iter()
            .all(|(_, f)| !is_syn(f) && udp_payload_of(f).is_none_or(|p| !p.starts_with(b"to "))),
        "passed traffic showed up on an AF_XDP socket"
    );

    // (c) Frames written to the TX rings reach the client's sockets.
    let replies = [
        (
            0usize,
            SocketAddr::new(REMOTE_V4.into(), 5353),
            SocketAddr::new(CL_V4.into(), 6000),
        ),
        (
            1usize,
            SocketAddr::new(REMOTE_V6.into(), 5353),
            SocketAddr::new(CL_V6.into(), 6001),
        ),
    ];
    let received = thread::scope(|scope| {
        let receiver = scope.spawn(|| {
            in_ns(cl, || {
                replies
                    .iter()
                    .map(|(_, from, to)| {
                        let s = UdpSocket::bind(to).unwrap();
                        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
                        (s, *from)
                    })
                    .collect::<Vec<_>>()
            })
        });
        let receivers = receiver.join().unwrap();
        for (queue, from, to) in &replies {
            let payload = format!("reply from {from} on queue {queue}").into_bytes();
            let frame = udp_frame(cl_mac, gw_mac, (*from, *to), &payload, Echo::default());
            let socket = &mut sockets[*queue];
            socket.send(&frame).expect("room on the TX ring");
            flush_until_completed(socket);
        }
        receivers
            .iter()
            .map(|(s, from)| {
                let (n, peer) = s
                    .recv_from(&mut buf)
                    .unwrap_or_else(|e| panic!("reply from {from}: {e}"));
                assert_eq!(peer, *from, "the reply's source");
                buf[..n].to_vec()
            })
            .collect::<Vec<_>>()
    });
    for ((queue, from, _), payload) in replies.iter().zip(&received) {
        assert_eq!(payload, format!("reply from {from} on queue {queue}").as_bytes());
    }
    let too_big = vec![0u8; sockets[1].frame_capacity() + 1];
    assert!(matches!(sockets[1].send(&too_big), Err(XskError::FrameTooLarge { .. })));
    tx_batches(cl, &mut sockets, (gw_mac, cl_mac));

    // (d) The counters.
    let counts = classifier.counters().unwrap().since(&before);
    eprintln!("XDP counters: {counts}");
    for socket in &sockets {
        eprintln!(
            "queue {}: {:?}, kernel {:?}",
            socket.queue(),
            socket.stats(),
            socket.kernel_stats().unwrap()
        );
    }
    let rx_frames: u64 = sockets.iter().map(|s| s.stats().rx_frames).sum();
    assert_eq!(rx_frames, (captured.len() + strays.len()) as u64);
    check_counts(&counts, rx_frames);

    // Dropping the classifier takes the program off the interface.
    assert!(ip(&format!("-n {gw} -d link show dev {GW_IF}")).contains("prog/xdp"));
    drop(classifier);
    let link = ip(&format!("-n {gw} -d link show dev {GW_IF}"));
    assert!(!link.contains("prog/xdp"), "XDP still attached after drop:\n{link}");
}

/// A batch larger than the kernel's 32 frames per copy-mode `sendto`
/// arrives whole; a full TX ring says so with `TxFull` and recovers.
fn tx_batches(cl: &str, sockets: &mut [XskSocket], (gw_mac, cl_mac): ([u8; 6], [u8; 6])) {
    const BATCH: u16 = 100;
    let from = SocketAddr::new(REMOTE_V4.into(), 5354);
    let to = SocketAddr::new(CL_V4.into(), 6002);
    let receiver = in_ns(cl, || {
        let s = Socket::new(Domain::IPV4, Type::DGRAM, None).unwrap();
        // Room for the whole batch whatever rmem_default is (as root).
        s.set_recv_buffer_size(4 << 20).unwrap();
        s.bind(&to.into()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        UdpSocket::from(s)
    });
    let socket = &mut sockets[0];
    let kicks_before = socket.stats().tx_kicks;
    for i in 0..BATCH {
        let frame = udp_frame(cl_mac, gw_mac, (from, to), &i.to_be_bytes(), Echo::default());
        socket.send(&frame).expect("room on the TX ring");
    }
    flush_until_completed(socket);
    let kicks = socket.stats().tx_kicks - kicks_before;
    assert!(
        kicks >= u64::from(BATCH.div_ceil(32)),
        "{kicks} kicks for {BATCH} frames"
    );
    let mut seen = vec![false; usize::from(BATCH)];
    let mut buf = [0u8; 64];
    for _ in 0..BATCH {
        let n = receiver.recv(&mut buf).expect("every frame of the batch arrives");
        assert_eq!(n, 2);
        seen[usize::from(u16::from_be_bytes([buf[0], buf[1]]))] = true;
    }
    assert!(seen.iter().all(|&s| s), "each frame once");

    // Queue 1 has 256 TX frames: when all are queued, the next send kicks
    // them out (copy mode sends at once) and takes a frame that came back,
    // so sending twice the ring's size without a flush loses nothing.
    let socket = &mut sockets[1];
    let kicks_before = socket.stats().tx_kicks;
    for i in 0..512u16 {
        let frame = udp_frame(cl_mac, gw_mac, (from, to), &i.to_be_bytes(), Echo::default());
        socket.send(&frame).expect("a full ring makes room by kicking");
        assert!(
            socket.tx_in_flight() <= 256,
            "more frames in flight than the socket has"
        );
    }
    assert!(socket.stats().tx_kicks > kicks_before, "the full ring was never kicked");
    assert_eq!(socket.stats().tx_full, 0, "a send found no room");
    flush_until_completed(socket);
    let mut drained = 0;
    while drained < 512 && receiver.recv(&mut buf).is_ok() {
        drained += 1;
    }
    assert_eq!(drained, 512, "every frame sent through the full ring arrived");
}

fn check_counts(counts: &XdpCounts, rx_frames: u64) {
    let get = |c| counts.get(c);
    assert_eq!(
        get(XdpCounter::Redirected),
        rx_frames,
        "redirected = frames read from the rings"
    );
    assert_eq!(get(XdpCounter::RedirectFailed), 0);
    assert_eq!(get(XdpCounter::PassMalformed), 0);
    assert_eq!(get(XdpCounter::PassLocal), 1, "one datagram to the gateway");
    assert_eq!(get(XdpCounter::PassBypass), 1, "one datagram to the bypassed prefix");
    assert_eq!(get(XdpCounter::PassNotRouted), 1, "one datagram to the unrouted prefix");
    assert!(get(XdpCounter::PassNotIp) >= 1, "ARP");
    // Two echo requests, at least one neighbour solicitation.
    assert!(get(XdpCounter::PassNotTcpUdp) >= 3, "ICMP and NDP");
}

/// Kicks and reaps until the frame just sent has completed (bounded).
fn flush_until_completed(socket: &mut XskSocket) {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        socket.flush().expect("flush");
        if socket.tx_in_flight() == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "TX frames never completed: {socket:?}");
        thread::sleep(Duration::from_millis(5));
    }
}

/// Reads both sockets until `done` says the frames so far suffice and then
/// `QUIET` passed without more (or `CAPTURE_LIMIT` passed).
fn capture(sockets: &mut [XskSocket], done: impl Fn(&[Vec<u8>]) -> bool) -> Vec<(u32, Vec<u8>)> {
    let deadline = Instant::now() + CAPTURE_LIMIT;
    let mut captured: Vec<(u32, Vec<u8>)> = Vec::new();
    let mut frames: Vec<Vec<u8>> = Vec::new();
    loop {
        let mut got = 0;
        for socket in sockets.iter_mut() {
            let queue = socket.queue();
            got += socket.recv_batch(XskSocket::MAX_BATCH, |frame| {
                captured.push((queue, frame.to_vec()));
                frames.push(frame.to_vec());
            });
        }
        if got > 0 {
            continue;
        }
        let timeout = if done(&frames) {
            QUIET
        } else {
            Duration::from_millis(50)
        };
        if Instant::now() >= deadline {
            assert!(done(&frames), "still missing frames after {CAPTURE_LIMIT:?}");
            return captured;
        }
        if !poll_readable(sockets, timeout) && done(&frames) {
            return captured;
        }
    }
}

fn poll_readable(sockets: &[XskSocket], timeout: Duration) -> bool {
    let mut fds: Vec<libc::pollfd> = sockets
        .iter()
        .map(|s| libc::pollfd {
            fd: s.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: fds is a valid array of fds.len() pollfd structs.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout.as_millis() as i32) };
    assert!(n >= 0, "poll: {}", io::Error::last_os_error());
    n > 0
}

#[derive(Debug)]
struct Datagram {
    from: SocketAddr,
    to: SocketAddr,
    payload: Vec<u8>,
}

struct Sent {
    udp: Vec<Datagram>,
    /// Kept open until the SYNs are captured, so no RST or retry races.
    tcp: Vec<Socket>,
}

/// UDP datagrams and one TCP SYN per family to the routed prefixes; runs
/// in the client namespace.
fn send_captured_traffic() -> Sent {
    let mut udp = Vec::new();
    for (local, remote) in [
        (IpAddr::V4(CL_V4), IpAddr::V4(REMOTE_V4)),
        (CL_V6.into(), REMOTE_V6.into()),
    ] {
        let socket = UdpSocket::bind((local, 0)).unwrap();
        let from = socket.local_addr().unwrap();
        for i in 0..UDP_DATAGRAMS {
            let to = SocketAddr::new(remote, 5000 + i);
            let payload = format!("datagram {i} from {from} to {to}").into_bytes();
            socket.send_to(&payload, to).unwrap();
            udp.push(Datagram { from, to, payload });
        }
    }
    let mut tcp = Vec::new();
    for remote in [IpAddr::V4(REMOTE_V4), IpAddr::V6(REMOTE_V6)] {
        let domain = if remote.is_ipv4() { Domain::IPV4 } else { Domain::IPV6 };
        let socket = Socket::new(domain, Type::STREAM, None).unwrap();
        socket.set_nonblocking(true).unwrap();
        match socket.connect(&SocketAddr::new(remote, 443).into()) {
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            other => panic!("connect {remote}: {other:?}"),
        }
        tcp.push(socket);
    }
    Sent { udp, tcp }
}

// --- frames ----------------------------------------------------------------

/// Header fields the sender's kernel chooses, copied from a received frame:
/// the IPv4 identification and flags, or the IPv6 traffic class and flow
/// label.
#[derive(Debug, Default, Clone, Copy)]
struct Echo {
    ipv4_id_and_flags: [u8; 4],
    ipv6_first_word: [u8; 4],
}

fn header_echo(frame: &[u8]) -> Echo {
    let mut echo = Echo::default();
    echo.ipv4_id_and_flags.copy_from_slice(&frame[18..22]);
    echo.ipv6_first_word.copy_from_slice(&frame[14..18]);
    echo
}

fn checksum_add(mut sum: u32, bytes: &[u8]) -> u32 {
    for pair in bytes.chunks(2) {
        let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    sum
}

fn checksum_fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The pseudo-header sum for a transport segment of `len` bytes.
fn pseudo_header(src: IpAddr, dst: IpAddr, proto: u8, len: usize) -> u32 {
    let mut sum = 0;
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            sum = checksum_add(sum, &s.octets());
            sum = checksum_add(sum, &d.octets());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            sum = checksum_add(sum, &s.octets());
            sum = checksum_add(sum, &d.octets());
        }
        _ => panic!("mixed families"),
    }
    sum + u32::from(proto) + len as u32
}

/// An Ethernet frame with one UDP datagram, checksums filled in.
fn udp_frame(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    (from, to): (SocketAddr, SocketAddr),
    payload: &[u8],
    echo: Echo,
) -> Vec<u8> {
    let udp_len = 8 + payload.len();
    let mut udp = Vec::with_capacity(udp_len);
    udp.extend_from_slice(&from.port().to_be_bytes());
    udp.extend_from_slice(&to.port().to_be_bytes());
    udp.extend_from_slice(&(udp_len as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload);
    let sum = checksum_add(pseudo_header(from.ip(), to.ip(), 17, udp_len), &udp);
    let checksum = match checksum_fold(sum) {
        0 => 0xffff,
        c => c,
    };
    udp[6..8].copy_from_slice(&checksum.to_be_bytes());

    let mut frame = Vec::new();
    frame.extend_from_slice(&dst_mac);
    frame.extend_from_slice(&src_mac);
    match (from.ip(), to.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            frame.extend_from_slice(&0x0800u16.to_be_bytes());
            let mut ip = vec![0x45, 0];
            ip.extend_from_slice(&((20 + udp_len) as u16).to_be_bytes());
            ip.extend_from_slice(&echo.ipv4_id_and_flags);
            ip.extend_from_slice(&[64, 17, 0, 0]);
            ip.extend_from_slice(&s.octets());
            ip.extend_from_slice(&d.octets());
            let checksum = checksum_fold(checksum_add(0, &ip));
            ip[10..12].copy_from_slice(&checksum.to_be_bytes());
            frame.extend_from_slice(&ip);
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            frame.extend_from_slice(&0x86ddu16.to_be_bytes());
            let mut first = echo.ipv6_first_word;
            first[0] = 0x60 | (first[0] & 0x0f);
            frame.extend_from_slice(&first);
            frame.extend_from_slice(&(udp_len as u16).to_be_bytes());
            frame.extend_from_slice(&[17, 64]);
            frame.extend_from_slice(&s.octets());
            frame.extend_from_slice(&d.octets());
        }
        _ => panic!("mixed families"),
    }
    frame.extend_from_slice(&udp);
    frame
}

/// The IP header's offset, protocol, source, destination and transport
/// offset of an untagged Ethernet frame.
fn ip_header(frame: &[u8]) -> Option<(u8, IpAddr, IpAddr, usize)> {
    match u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]) {
        0x0800 if frame.len() >= 34 => {
            let ihl = usize::from(frame[14] & 0x0f) * 4;
            let src: [u8; 4] = frame[26..30].try_into().ok()?;
            let dst: [u8; 4] = frame[30..34].try_into().ok()?;
            Some((frame[23], src.into(), dst.into(), 14 + ihl))
        }
        0x86dd if frame.len() >= 54 => {
            let src: [u8; 16] = frame[22..38].try_into().ok()?;
            let dst: [u8; 16] = frame[38..54].try_into().ok()?;
            Some((frame[20], src.into(), dst.into(), 54))
        }
        _ => None,
    }
}

fn l4_destination(frame: &[u8]) -> Option<SocketAddr> {
    let (_, _, dst, at) = ip_header(frame)?;
    let port = u16::from_be_bytes([*frame.get(at + 2)?, *frame.get(at + 3)?]);
    Some(SocketAddr::new(dst, port))
}

fn udp_payload_of(frame: &[u8]) -> Option<&[u8]> {
    let (proto, _, _, at) = ip_header(frame)?;
    (proto == 17).then(|| frame.get(at + 8..)).flatten()
}

fn is_syn(frame: &[u8]) -> bool {
    match ip_header(frame) {
        Some((6, _, _, at)) => frame.get(at + 13) == Some(&0x02),
        _ => false,
    }
}

/// Whether the TCP/UDP checksum of the frame is complete and right (not a
/// partial one left for offload).
fn transport_checksum_ok(frame: &[u8]) -> bool {
    let Some((proto, src, dst, at)) = ip_header(frame) else {
        return false;
    };
    let segment = &frame[at..];
    checksum_fold(checksum_add(pseudo_header(src, dst, proto, segment.len()), segment)) == 0
}
