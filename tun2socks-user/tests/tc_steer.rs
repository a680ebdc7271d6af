//! Host mode's flow affinity against a real kernel: the `queue_steer` tc
//! egress program on the sending end of a four-queue veth decides which rx
//! queue (AF_XDP socket, worker) each frame meets on the far end.
//!
//! Two network namespaces, "gw" and "cl", joined by a veth pair with four rx
//! and four tx queues. The gateway end runs the XDP classifier and one
//! AF_XDP socket per queue (nothing answers: every SYN is retransmitted);
//! the client routes a test prefix (IPv4 and IPv6) through the gateway.
//! Checked:
//!
//! (a) Without the program, the kernel's own choice moves TCP flows between
//!     queues: a SYN retransmitted after a timeout gets a re-rolled tx hash
//!     (`sk_rethink_txhash`), so the SYNs of one connection arrive on
//!     different queues. At least one flow must move, or the rest of the
//!     test would prove nothing.
//! (b) With `QueueSteer` attached at the client end's egress (TCX): every
//!     captured frame (UDP from many source ports, TCP SYNs and their
//!     retransmissions, both families) arrived on exactly the queue that
//!     `steering::queue_for_packet` predicts for its IP packet, all four
//!     queues are used, and every SYN of one connection met one queue.
//!     ARP (neighbours flushed first) still works: the program leaves
//!     non-IP frames alone, and its counters say so.
//! (c) Dropping it takes the program off the interface.
//! (d) The classic clsact hook: the qdisc is added and the filter shows in
//!     `tc filter show`, frames meet their predicted queues, and dropping
//!     removes both; a clsact qdisc that was there before stays.
//!
//! Needs root (namespaces, CAP_BPF, CAP_NET_ADMIN); skipped otherwise. The
//! namespaces are named after the test's pid and removed on drop, also
//! when the test fails; nothing in the namespace the test runs in changes.
//!
//! Run: `cargo test -p tun2socks --test tc_steer`

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::time::{Duration, Instant};

use aya::programs::{SchedClassifier, TcAttachType};
use socket2::{Domain, Socket, Type};
use tun2socks::device::xsk::{XskConfig, XskMode, XskSocket};
use tun2socks::steering::queue_for_packet;
use tun2socks::tc_steer::{QueueSteer, TcHook};
use tun2socks::xdp::XdpClassifier;
use tun2socks_ebpf::tc::QueueSteerCounter;
use tun2socks_ebpf::xdp::XdpCounter;

mod common;
use common::ip;
use common::veth::{End, VethLab, in_ns, kernel_test_can_run, test_plan};

const GW_IF: &str = "sg";
const CL_IF: &str = "sc";
const QUEUES: u32 = 4;

const GW_V4: Ipv4Addr = Ipv4Addr::new(10, 97, 0, 1);
const CL_V4: Ipv4Addr = Ipv4Addr::new(10, 97, 0, 2);
const GW_V6: Ipv6Addr = Ipv6Addr::new(0xfd97, 0, 0, 0, 0, 0, 0, 1);
const CL_V6: Ipv6Addr = Ipv6Addr::new(0xfd97, 0, 0, 0, 0, 0, 0, 2);
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
/// Routed (captured) destinations; nothing answers there.
const REMOTE_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 30);
const REMOTE_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 0x30);

/// TCP connections per family and phase, each retransmitting its SYN.
const TCP_FLOWS_V4: u16 = 16;
const TCP_FLOWS_V6: u16 = 8;
/// SYNs per connection to wait for: the first and two retransmissions
/// (about 2 s: the first retransmission timeouts are 1 s each with
/// `tcp_syn_linear_timeouts`, 1 s and 2 s without).
const SYNS_PER_FLOW: usize = 3;
/// UDP sockets (distinct source ports) per family, two datagrams each.
const UDP_FLOWS_V4: usize = 48;
const UDP_FLOWS_V6: usize = 24;
const CAPTURE_LIMIT: Duration = Duration::from_secs(8);
/// How long to keep reading once the expected frames are in.
const QUIET: Duration = Duration::from_millis(200);

#[test]
fn tc_egress_program_keeps_each_flow_on_its_predicted_queue() {
    if !kernel_test_can_run() {
        return;
    }
    let lab = VethLab::routed("tcs", QUEUES, &GW_END, &CL_END);
    lab.run_in_gateway(gateway);
}

fn gateway(_gw: &str, cl: &str) {
    let plan = test_plan(&GW_END, &[]);
    let mut classifier = XdpClassifier::attach(GW_IF, &plan).expect("attach the classifier");
    let config = XskConfig {
        frame_size: 2048,
        rx_frames: 512,
        tx_frames: 64,
        mode: XskMode::Auto,
    };
    let mut sockets: Vec<XskSocket> = (0..QUEUES)
        .map(|queue| XskSocket::bind(GW_IF, queue, &config).expect("bind an AF_XDP socket"))
        .collect();
    for socket in &sockets {
        classifier
            .register(socket.queue(), socket)
            .expect("register the socket");
    }
    // Neighbours first, so that the first SYNs leave at once.
    for target in [IpAddr::V4(GW_V4), IpAddr::V6(GW_V6)] {
        ping(cl, target);
    }

    // (a) The kernel's own choice: retransmitted SYNs change queues.
    let baseline = in_ns(cl, || connect_all(80));
    let captured = capture(&mut sockets, |frames| enough_syns(frames, 80));
    drop(baseline);
    let flows = syn_queues(&captured, 80);
    let moved = flows.values().filter(|queues| distinct(queues) > 1).count();
    eprintln!(
        "without the program: {moved} of {} TCP flows had their SYNs on more than one queue: {}",
        flows.len(),
        describe(&flows)
    );
    assert_eq!(flows.len(), usize::from(TCP_FLOWS_V4 + TCP_FLOWS_V6));
    assert!(
        moved > 0,
        "no retransmitted SYN changed queues without the program: this test would prove nothing"
    );
    // The baseline's last retransmissions may still be on their way.
    let _ = capture(&mut sockets, |_| true);

    // (b) With the program at the client end's egress.
    let steer = in_ns(cl, || QueueSteer::attach(CL_IF, QUEUES)).expect("attach queue_steer");
    eprintln!("{steer:?}");
    assert_eq!(steer.hook(), TcHook::Tcx, "this kernel has TCX");
    assert!(!steer.added_qdisc());
    assert_eq!(tcx_programs(cl), ["queue_steer"], "TCX egress programs on {CL_IF}");
    let before = steer.counters().unwrap();
    // ARP and NDP have to work with the program in place.
    ip(&format!("-n {cl} neigh flush dev {CL_IF}"));
    let xdp_before = classifier.counters().unwrap();
    let (tcp, udp) = in_ns(cl, || (connect_all(443), send_udp()));
    let captured = capture(&mut sockets, |frames| {
        enough_syns(frames, 443) && frames.iter().filter(|(_, f)| is_udp(f)).count() >= udp
    });
    drop(tcp);
    let counts = steer.counters().unwrap();
    let mispredicted = check_predictions(&captured);
    let per_queue = frames_per_queue(&captured);
    let flows = syn_queues(&captured, 443);
    let moved = flows.values().filter(|queues| distinct(queues) > 1).count();
    eprintln!(
        "with the program: {} frames, per queue {per_queue:?}, {mispredicted} mispredicted, \
         {moved} of {} TCP flows moved: {}; counters: {counts} (before: {before})",
        captured.len(),
        flows.len(),
        describe(&flows)
    );
    assert_eq!(mispredicted, 0, "frames that met another queue than predicted");
    assert_eq!(per_queue.len(), QUEUES as usize, "all queues used: {per_queue:?}");
    assert_eq!(flows.len(), usize::from(TCP_FLOWS_V4 + TCP_FLOWS_V6));
    assert!(flows.values().all(|q| q.len() >= SYNS_PER_FLOW));
    assert_eq!(moved, 0, "a TCP flow's SYNs met more than one queue");
    let steered = counts.get(QueueSteerCounter::Steered) - before.get(QueueSteerCounter::Steered);
    assert!(
        steered >= captured.len() as u64,
        "{steered} frames steered, {} captured",
        captured.len()
    );
    assert!(
        counts.get(QueueSteerCounter::NotIp) > before.get(QueueSteerCounter::NotIp),
        "the ARP request went by untouched"
    );
    assert_eq!(counts.get(QueueSteerCounter::Unconfigured), 0);
    let xdp = classifier.counters().unwrap().since(&xdp_before);
    assert_eq!(xdp.get(XdpCounter::RedirectFailed), 0, "{xdp}");

    // (c) Dropping takes it off.
    in_ns(cl, move || drop(steer));
    assert!(tcx_programs(cl).is_empty(), "TCX programs left after drop");

    // (d) The clsact hook, with the qdisc added by us and then by someone else.
    for qdisc_there_before in [false, true] {
        if qdisc_there_before {
            tc(&format!("-n {cl} qdisc add dev {CL_IF} clsact"));
        }
        let steer = in_ns(cl, || QueueSteer::attach_with_hook(CL_IF, QUEUES, TcHook::Clsact))
            .expect("attach queue_steer to clsact");
        assert_eq!(steer.hook(), TcHook::Clsact);
        assert_eq!(steer.added_qdisc(), !qdisc_there_before);
        assert!(tc(&format!("-n {cl} qdisc show dev {CL_IF}")).contains("clsact"));
        let filters = tc(&format!("-n {cl} filter show dev {CL_IF} egress"));
        assert!(filters.contains("queue_steer"), "no filter: {filters}");
        let udp = in_ns(cl, send_udp);
        let captured = capture(&mut sockets, |frames| {
            frames.iter().filter(|(_, f)| is_udp(f)).count() >= udp
        });
        let mispredicted = check_predictions(&captured);
        let per_queue = frames_per_queue(&captured);
        eprintln!(
            "clsact (qdisc there before: {qdisc_there_before}): {} frames, per queue {per_queue:?}, \
             {mispredicted} mispredicted",
            captured.len()
        );
        assert_eq!(mispredicted, 0);
        assert_eq!(per_queue.len(), QUEUES as usize);

        in_ns(cl, move || drop(steer));
        let filters = tc(&format!("-n {cl} filter show dev {CL_IF} egress"));
        assert!(!filters.contains("queue_steer"), "filter left after drop: {filters}");
        let qdiscs = tc(&format!("-n {cl} qdisc show dev {CL_IF}"));
        assert_eq!(
            qdiscs.contains("clsact"),
            qdisc_there_before,
            "clsact is removed only when we added it: {qdiscs}"
        );
    }
    drop(sockets);
    drop(classifier);
}

/// Whether every frame met the queue user space predicts for its IP
/// packet; the number that did not.
fn check_predictions(captured: &[(u32, Vec<u8>)]) -> usize {
    let mut mispredicted = 0;
    for (queue, frame) in captured {
        let predicted = queue_for_packet(&frame[14..], QUEUES).expect("an IP packet");
        assert_eq!(tun2socks::tc_steer::queue_for_frame(frame, QUEUES), Some(predicted));
        if predicted != *queue {
            mispredicted += 1;
            eprintln!("mispredicted: queue {queue}, predicted {predicted}, frame {frame:02x?}");
        }
    }
    mispredicted
}

fn frames_per_queue(captured: &[(u32, Vec<u8>)]) -> BTreeMap<u32, usize> {
    let mut per_queue = BTreeMap::new();
    for (queue, _) in captured {
        *per_queue.entry(*queue).or_insert(0) += 1;
    }
    per_queue
}

fn distinct(queues: &[u32]) -> usize {
    queues.iter().collect::<BTreeSet<_>>().len()
}

fn describe(flows: &BTreeMap<u16, Vec<u32>>) -> String {
    let parts: Vec<String> = flows.values().map(|q| format!("{q:?}")).collect();
    parts.join(" ")
}

/// `tc ARGS`; panics on failure.
fn tc(args: &str) -> String {
    let out = Command::new("tc")
        .args(args.split_whitespace())
        .output()
        .expect("run tc");
    assert!(
        out.status.success(),
        "tc {args}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The names of the TCX egress programs on the client end.
fn tcx_programs(cl: &str) -> Vec<String> {
    in_ns(cl, || {
        let (_, programs) = SchedClassifier::query_tcx(CL_IF, TcAttachType::Egress).expect("query TCX");
        programs
            .iter()
            .map(|p| p.name_as_str().unwrap_or("?").to_string())
            .collect()
    })
}

fn ping(cl: &str, target: IpAddr) {
    let out = Command::new("ip")
        .args(["netns", "exec", cl, "ping", "-c", "1", "-W", "2", &target.to_string()])
        .output()
        .expect("run ping");
    assert!(
        out.status.success(),
        "ping {target}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Nonblocking connects to the routed addresses, port `port`; the sockets
/// keep retransmitting their SYNs while they are open.
fn connect_all(port: u16) -> Vec<Socket> {
    let mut sockets = Vec::new();
    for (remote, count) in [
        (IpAddr::V4(REMOTE_V4), TCP_FLOWS_V4),
        (IpAddr::V6(REMOTE_V6), TCP_FLOWS_V6),
    ] {
        for _ in 0..count {
            let domain = if remote.is_ipv4() { Domain::IPV4 } else { Domain::IPV6 };
            let socket = Socket::new(domain, Type::STREAM, None).unwrap();
            socket.set_nonblocking(true).unwrap();
            match socket.connect(&SocketAddr::new(remote, port).into()) {
                Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
                other => panic!("connect {remote}: {other:?}"),
            }
            sockets.push(socket);
        }
    }
    sockets
}

/// Two datagrams from each of many UDP sockets; the number sent.
fn send_udp() -> usize {
    let mut sent = 0;
    for (local, remote, count) in [
        (IpAddr::V4(CL_V4), IpAddr::V4(REMOTE_V4), UDP_FLOWS_V4),
        (IpAddr::V6(CL_V6), IpAddr::V6(REMOTE_V6), UDP_FLOWS_V6),
    ] {
        for i in 0..count {
            let socket = UdpSocket::bind((local, 0)).unwrap();
            for j in 0..2u16 {
                let to = SocketAddr::new(remote, 5000 + j);
                socket.send_to(format!("flow {i} datagram {j}").as_bytes(), to).unwrap();
                sent += 1;
            }
        }
    }
    sent
}

// --- frames ----------------------------------------------------------------

/// Protocol, transport header offset of an untagged Ethernet frame.
fn transport(frame: &[u8]) -> Option<(u8, usize)> {
    match u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]) {
        0x0800 if frame.len() >= 34 => Some((frame[23], 14 + usize::from(frame[14] & 0x0f) * 4)),
        0x86dd if frame.len() >= 54 => Some((frame[20], 54)),
        _ => None,
    }
}

fn is_udp(frame: &[u8]) -> bool {
    matches!(transport(frame), Some((17, _)))
}

/// The source and destination port of a TCP SYN.
fn syn_ports(frame: &[u8]) -> Option<(u16, u16)> {
    let (proto, at) = transport(frame)?;
    let tcp = frame.get(at..at + 14)?;
    (proto == 6 && tcp[13] == 0x02).then(|| {
        (
            u16::from_be_bytes([tcp[0], tcp[1]]),
            u16::from_be_bytes([tcp[2], tcp[3]]),
        )
    })
}

/// The queues each TCP flow's SYNs to `port` arrived on, in order, by
/// source port (the client's source ports are distinct across families).
fn syn_queues(captured: &[(u32, Vec<u8>)], port: u16) -> BTreeMap<u16, Vec<u32>> {
    let mut flows: BTreeMap<u16, Vec<u32>> = BTreeMap::new();
    for (queue, frame) in captured {
        if let Some((sport, dport)) = syn_ports(frame)
            && dport == port
        {
            flows.entry(sport).or_default().push(*queue);
        }
    }
    flows
}

fn enough_syns(frames: &[(u32, Vec<u8>)], port: u16) -> bool {
    let flows = syn_queues(frames, port);
    flows.len() == usize::from(TCP_FLOWS_V4 + TCP_FLOWS_V6) && flows.values().all(|q| q.len() >= SYNS_PER_FLOW)
}

/// Reads all sockets until `done` says the frames so far suffice and then
/// `QUIET` passed without more, or `CAPTURE_LIMIT` passed (a failure unless
/// `done`).
fn capture(sockets: &mut [XskSocket], done: impl Fn(&[(u32, Vec<u8>)]) -> bool) -> Vec<(u32, Vec<u8>)> {
    let deadline = Instant::now() + CAPTURE_LIMIT;
    let mut captured: Vec<(u32, Vec<u8>)> = Vec::new();
    loop {
        let mut got = 0;
        for socket in sockets.iter_mut() {
            let queue = socket.queue();
            got += socket.recv_batch(XskSocket::MAX_BATCH, |frame| captured.push((queue, frame.to_vec())));
        }
        if got > 0 {
            continue;
        }
        let finished = done(&captured);
        if Instant::now() >= deadline {
            assert!(finished, "still missing frames after {CAPTURE_LIMIT:?}");
            return captured;
        }
        let timeout = if finished { QUIET } else { Duration::from_millis(50) };
        if !poll_readable(sockets, timeout) && finished {
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
