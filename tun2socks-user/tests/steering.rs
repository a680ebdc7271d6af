//! The kernel's queue choice equals the user-space prediction.
//!
//! Attaches the `steer` program to a multi-queue TUN device, sends TCP SYNs
//! and UDP datagrams (IPv4 and IPv6) into it from ordinary sockets, reads
//! every queue, and checks that each packet sits on the queue that
//! `steering::queue_for_packet` predicts.
//!
//! Needs root (TUN, a network namespace, CAP_BPF); skipped otherwise.
//! Everything happens in a private network namespace entered by one
//! dedicated thread (`unshare(CLONE_NEWNET)` affects only that thread and
//! the `ip` processes it starts), so the namespace the test was started in
//! is never touched. The namespace and the device die with the thread's
//! file descriptors.
//!
//! Run: `cargo test -p tun2socks --test steering`

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};
use tun2socks::device::tun::{TunQueue, open_queues};
use tun2socks::steering::{self, queue_for_packet};
use tun2socks_ebpf::{FlowKey, IPPROTO_TCP, IPPROTO_UDP, flow_key};

mod common;
use common::is_root;

const DEVICE: &str = "t2s-steer";
const LOCAL_V4: Ipv4Addr = Ipv4Addr::new(10, 76, 0, 1);
const LOCAL_V6: Ipv6Addr = Ipv6Addr::new(0xfd76, 0, 0, 0, 0, 0, 0, 1);
/// Flows of each kind (TCP, UDP) and family.
const FLOWS: u16 = 48;
/// Destinations each UDP socket sends to: all must meet one queue.
const UDP_DESTINATIONS: u16 = 4;
/// How long to wait for packets once no more arrive.
const QUIET: Duration = Duration::from_millis(300);
/// Upper bound for draining the queues.
const DRAIN_LIMIT: Duration = Duration::from_secs(5);

#[test]
fn two_queues() {
    check_steering(2);
}

#[test]
fn three_queues() {
    check_steering(3);
}

#[test]
fn four_queues() {
    check_steering(4);
}

/// Without CAP_BPF (and CAP_SYS_ADMIN) attaching fails with an error that
/// says which capability is missing, so the daemon can log it and go on.
#[test]
fn without_cap_bpf_the_error_names_the_capability() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    if fs::read_to_string("/proc/sys/kernel/unprivileged_bpf_disabled").is_ok_and(|v| v.trim() == "0") {
        eprintln!("skipped: unprivileged eBPF is enabled, loading needs no capability");
        return;
    }
    // aya probes kernel features once per process; probe with full
    // privileges so that the other tests running in this process see them.
    let _ = aya::features();
    let error = in_private_netns(|| {
        let tun = open_queues(DEVICE, 2, false).map_err(io::Error::other)?;
        // Capabilities are per thread: this drops them for this thread only.
        drop_effective_capabilities(&[CAP_SYS_ADMIN, CAP_PERFMON, CAP_BPF])?;
        Ok(steering::attach(tun[0].as_fd()).expect_err("attach without CAP_BPF"))
    })
    .expect("a TUN device in a private network namespace");
    eprintln!("attach without CAP_BPF: {error}");
    assert!(
        matches!(error, steering::SteeringError::PermissionDenied(_)),
        "{error:?}"
    );
    assert!(error.to_string().contains("CAP_BPF"));
}

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// capset(2) for the calling thread, v3 layout (two 32-bit words per set).
fn drop_effective_capabilities(caps: &[u32]) -> io::Result<()> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: capget writes two Data structs for a v3 header.
    if unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    for &cap in caps {
        data[(cap / 32) as usize].effective &= !(1 << (cap % 32));
    }
    // SAFETY: capset reads two Data structs for a v3 header.
    if unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn check_steering(queues: usize) {
    if !is_root() {
        eprintln!("skipped: the steering test needs root (TUN, netns, CAP_BPF)");
        return;
    }
    let packets = in_private_netns(move || capture_steered_traffic(queues))
        .expect("steered traffic in a private network namespace");
    verify(&packets, queues as u32);
}

/// Runs `f` on a new thread that first moves into a fresh network namespace.
/// If that fails, `f` never runs: nothing may happen in the caller's one.
fn in_private_netns<T: Send + 'static>(f: impl FnOnce() -> io::Result<T> + Send + 'static) -> io::Result<T> {
    thread::spawn(move || {
        // SAFETY: unshare changes only the calling thread's namespaces.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return Err(io::Error::last_os_error());
        }
        f()
    })
    .join()
    .expect("the namespace thread panicked")
}

/// One packet read from the TUN device, with the queue it was read from.
struct Captured {
    queue: u32,
    packet: Vec<u8>,
}

fn capture_steered_traffic(queues: usize) -> io::Result<Vec<Captured>> {
    let tun = open_queues(DEVICE, queues, false).map_err(io::Error::other)?;
    let steering = steering::attach(tun[0].as_fd()).map_err(io::Error::other)?;
    configure_device()?;

    // Keep the sockets open until the queues are drained.
    let _sockets = send_traffic()?;
    let captured = drain(&tun)?;

    steering.detach(tun[0].as_fd()).map_err(io::Error::other)?;
    Ok(captured)
}

/// Addresses and routes for both families, with `ip` (the daemon itself
/// uses rtnetlink; here the commands keep the test readable).
fn configure_device() -> io::Result<()> {
    let local_v4 = format!("{LOCAL_V4}/24");
    let local_v6 = format!("{LOCAL_V6}/64");
    ip(&["link", "set", DEVICE, "up"])?;
    ip(&["addr", "add", &local_v4, "dev", DEVICE])?;
    ip(&["route", "add", "10.77.0.0/16", "dev", DEVICE])?;
    ip(&["-6", "addr", "add", &local_v6, "dev", DEVICE, "nodad"])?;
    ip(&["-6", "route", "add", "fd77::/64", "dev", DEVICE])
}

fn ip(args: &[&str]) -> io::Result<()> {
    let output = Command::new("ip").args(args).output()?;
    if output.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}

/// The `i`-th routed destination in the tunnel: 10.77.x.y or fd77::x.
fn remote(v6: bool, i: u16) -> IpAddr {
    let n = i + 1;
    if v6 {
        IpAddr::V6(Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, n))
    } else {
        let [hi, lo] = n.to_be_bytes();
        IpAddr::V4(Ipv4Addr::new(10, 77, hi, lo))
    }
}

fn local(v6: bool) -> IpAddr {
    if v6 { IpAddr::V6(LOCAL_V6) } else { IpAddr::V4(LOCAL_V4) }
}

/// TCP: one non-blocking connect per flow, so one SYN each, to different
/// addresses and ports. UDP: `FLOWS` sockets, each sending to several
/// destinations.
fn send_traffic() -> io::Result<Vec<Socket>> {
    let mut sockets = Vec::new();
    for v6 in [false, true] {
        let domain = if v6 { Domain::IPV6 } else { Domain::IPV4 };
        for i in 0..FLOWS {
            let tcp = Socket::new(domain, Type::STREAM, None)?;
            tcp.set_nonblocking(true)?;
            let to = SocketAddr::new(remote(v6, i % 7), 1000 + i);
            match tcp.connect(&to.into()) {
                Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
                other => return Err(io::Error::other(format!("connect {to}: {other:?}"))),
            }
            sockets.push(tcp);

            let udp = Socket::new(domain, Type::DGRAM, None)?;
            udp.bind(&SocketAddr::new(local(v6), 0).into())?;
            for d in 0..UDP_DESTINATIONS {
                let to = SocketAddr::new(remote(v6, i + d), 53 + d);
                udp.send_to(b"steer me", &to.into())?;
            }
            sockets.push(udp);
        }
    }
    Ok(sockets)
}

/// Reads every queue until none has had a packet for `QUIET` (bounded by
/// `DRAIN_LIMIT` and a packet count).
fn drain(tun: &[TunQueue]) -> io::Result<Vec<Captured>> {
    const MAX_PACKETS: usize = 10_000;
    let deadline = Instant::now() + DRAIN_LIMIT;
    let mut captured = Vec::new();
    let mut buf = vec![0u8; 65536];
    while Instant::now() < deadline && captured.len() < MAX_PACKETS {
        if !poll_readable(tun, QUIET)? {
            break;
        }
        for queue in tun {
            // Drain this queue; each read is bounded by the queue's length.
            loop {
                match queue.recv(&mut buf) {
                    Ok(n) => captured.push(Captured {
                        queue: queue.index() as u32,
                        packet: buf[..n].to_vec(),
                    }),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                }
            }
        }
    }
    Ok(captured)
}

fn poll_readable(tun: &[TunQueue], timeout: Duration) -> io::Result<bool> {
    let mut fds: Vec<libc::pollfd> = tun
        .iter()
        .map(|q| libc::pollfd {
            fd: q.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let timeout_ms = timeout.as_millis() as libc::c_int;
    // SAFETY: fds is a valid array of fds.len() pollfd structs.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n > 0)
}

fn verify(captured: &[Captured], queues: u32) {
    let mut mismatches = Vec::new();
    let mut flows: HashMap<(u8, bool), HashSet<FlowKey>> = HashMap::new();
    let mut queues_used = BTreeSet::new();
    // UDP source endpoint -> the queues it was seen on and the destinations
    // it sent to.
    let mut udp_sources: HashMap<FlowKey, (BTreeSet<u32>, HashSet<Vec<u8>>)> = HashMap::new();

    for Captured { queue, packet } in captured {
        let Some(key) = flow_key(&packet[..]) else {
            continue;
        };
        // Every IP packet must be predicted right, but only the test's own
        // TCP/UDP flows count: the kernel also sends MLD reports, router
        // solicitations and the like.
        let predicted = queue_for_packet(packet, queues);
        if predicted != Some(*queue) {
            mismatches.push(format!("read from {queue}, predicted {predicted:?}: {key:?}"));
        }
        if key.proto != IPPROTO_TCP && key.proto != IPPROTO_UDP {
            continue;
        }
        let v6 = packet[0] >> 4 == 6;
        flows.entry((key.proto, v6)).or_default().insert(key);
        queues_used.insert(*queue);
        if key.proto == IPPROTO_UDP {
            let (sources, destinations) = udp_sources.entry(key).or_default();
            sources.insert(*queue);
            destinations.insert(destination(packet, v6));
        }
    }

    let mut counts: Vec<_> = flows
        .iter()
        .map(|(&(proto, v6), keys)| (proto, v6, keys.len()))
        .collect();
    counts.sort();
    eprintln!(
        "{queues} queues: {} packets read, {} mispredicted; flows (proto, ipv6, count): {counts:?}; \
         queues used: {queues_used:?}; UDP sources: {}",
        captured.len(),
        mismatches.len(),
        udp_sources.len(),
    );
    assert!(
        mismatches.is_empty(),
        "{} of {} packets were not on the predicted queue:\n{}",
        mismatches.len(),
        captured.len(),
        mismatches.join("\n")
    );
    for proto in [IPPROTO_TCP, IPPROTO_UDP] {
        for v6 in [false, true] {
            let seen = flows.get(&(proto, v6)).map_or(0, HashSet::len);
            assert!(
                seen >= 40,
                "only {seen} flows of protocol {proto} (IPv6: {v6}) were read"
            );
        }
    }
    assert!(queues_used.len() > 1, "every flow landed on queue(s) {queues_used:?}");
    for (source, (on_queues, destinations)) in &udp_sources {
        assert_eq!(
            on_queues.len(),
            1,
            "UDP source {source:?} was spread over queues {on_queues:?}"
        );
        assert_eq!(
            destinations.len(),
            usize::from(UDP_DESTINATIONS),
            "UDP source {source:?}"
        );
    }
}

/// Destination address and port of a UDP packet sent by the local stack
/// (no IPv4 options, no IPv6 extension headers).
fn destination(packet: &[u8], v6: bool) -> Vec<u8> {
    let (address, ports_at) = if v6 { (24..40, 40) } else { (16..20, 20) };
    let mut endpoint = packet[address].to_vec();
    endpoint.extend_from_slice(&packet[ports_at + 2..ports_at + 4]);
    endpoint
}
