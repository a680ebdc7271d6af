//! The AF_XDP packet port (`device::port::XskPort`) over a real veth: what
//! a worker would see.
//!
//! Two network namespaces, "gw" and "cl", joined by a one-queue veth. The
//! gateway end runs the `classify` XDP program and one AF_XDP socket,
//! wrapped in an `XskPort` with the two ends' MAC addresses; the client
//! routes a test prefix (IPv4 and IPv6) through the gateway, with TX
//! checksum offload off (as host-mode setup does). Checked, for each family:
//!
//! * a UDP datagram the client sends to the routed prefix comes out of
//!   `recv_batch` as an IP packet, without its Ethernet header, and parses
//!   as that datagram;
//! * a reply written with `send` *from inside the `recv_batch` callback*
//!   (the worker's ingress does that: ACKs, DNS answers) and `flush`ed
//!   reaches the client's UDP socket, from the address it wrote to.
//!
//! Needs root (namespaces, CAP_BPF, CAP_NET_ADMIN); skipped otherwise. The
//! namespaces are named after the test's pid and removed on drop, also
//! when the test fails; nothing in the namespace the test runs in changes.
//!
//! Run: `cargo test -p tun2socks --test xsk_port`

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use tun2socks::device::port::{PacketPort, XskPort};
use tun2socks::device::xsk::{XskConfig, XskMode, XskSocket};
use tun2socks::packet::{Classified, classify, write_udp};
use tun2socks::xdp::XdpClassifier;

mod common;
use common::veth::{End, VethLab, in_ns, kernel_test_can_run, mac, test_plan};

const GW_IF: &str = "pg";
const CL_IF: &str = "pc";

const GW_V4: Ipv4Addr = Ipv4Addr::new(10, 98, 0, 1);
const CL_V4: Ipv4Addr = Ipv4Addr::new(10, 98, 0, 2);
const GW_V6: Ipv6Addr = Ipv6Addr::new(0xfd98, 0, 0, 0, 0, 0, 0, 1);
const CL_V6: Ipv6Addr = Ipv6Addr::new(0xfd98, 0, 0, 0, 0, 0, 0, 2);
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
const REMOTE_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 20);
const REMOTE_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 0x20);

const WAIT: Duration = Duration::from_secs(5);

#[test]
fn xsk_port_unframes_received_packets_and_frames_sent_ones() {
    if !kernel_test_can_run() {
        return;
    }
    let lab = VethLab::routed("xport", 1, &GW_END, &CL_END);
    lab.run_in_gateway(gateway);
}

fn gateway(gw: &str, cl: &str) {
    let plan = test_plan(&GW_END, &[]);
    let mut classifier = XdpClassifier::attach(GW_IF, &plan).expect("attach the classifier");
    let config = XskConfig {
        frame_size: 2048,
        rx_frames: 64,
        tx_frames: 64,
        mode: XskMode::Auto,
    };
    let socket = XskSocket::bind(GW_IF, 0, &config).expect("bind an AF_XDP socket");
    classifier.register(0, &socket).expect("register the socket");
    let port = XskPort::new(socket, mac(gw, GW_IF), mac(cl, CL_IF));
    assert_eq!(port.max_packet(), 2048 - 256 - 14);

    for (client, remote) in [
        (
            SocketAddr::new(CL_V4.into(), 6100),
            SocketAddr::new(REMOTE_V4.into(), 5300),
        ),
        (
            SocketAddr::new(CL_V6.into(), 6101),
            SocketAddr::new(REMOTE_V6.into(), 5301),
        ),
    ] {
        let app = in_ns(cl, || {
            let s = UdpSocket::bind(client).unwrap();
            s.set_read_timeout(Some(WAIT)).unwrap();
            s
        });
        let query = format!("from {client} to {remote}").into_bytes();
        let answer = format!("from {remote} back to {client}").into_bytes();
        // Neighbour discovery may delay the first datagram; the kernel
        // queues it meanwhile.
        app.send_to(&query, remote).unwrap();

        let mut seen = Vec::new();
        let mut reply = Vec::new();
        let deadline = Instant::now() + WAIT;
        while seen.is_empty() {
            assert!(Instant::now() < deadline, "{client} -> {remote}: nothing received");
            let taken = port
                .recv_batch(64, |packet| {
                    let version = packet[0] >> 4;
                    if let Classified::Udp { key, payload } = classify(packet)
                        && key.client == client
                    {
                        assert_eq!(key.dest, remote, "destination");
                        assert_eq!(&packet[payload], query.as_slice(), "payload");
                        assert_eq!(version, if client.is_ipv4() { 4 } else { 6 }, "IP version first");
                        // Answer while the received frame is still held,
                        // as the worker's ingress does.
                        write_udp(&mut reply, remote, client, &answer).unwrap();
                        port.send(&reply).expect("room on the TX ring");
                        seen.push(packet.to_vec());
                    }
                })
                .expect("recv_batch");
            if taken == 0 {
                wait_readable(&port, Duration::from_millis(50));
            }
        }
        port.flush().expect("flush");

        let mut buf = [0u8; 1500];
        let (n, from) = app
            .recv_from(&mut buf)
            .unwrap_or_else(|e| panic!("the reply to {client}: {e}"));
        assert_eq!(from, remote, "the reply's source");
        assert_eq!(&buf[..n], answer.as_slice());
    }
    eprintln!("{port:?}");
}

/// Waits until the port's fd polls readable, or `timeout`.
fn wait_readable(port: &XskPort, timeout: Duration) {
    let mut pollfd = libc::pollfd {
        fd: port.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the call's duration.
    unsafe { libc::poll(&mut pollfd, 1, timeout.as_millis() as libc::c_int) };
}
