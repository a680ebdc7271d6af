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

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use tun2socks::device::port::{PacketPort, XskPort};
use tun2socks::device::xsk::{XskConfig, XskMode, XskSocket};
use tun2socks::netns;
use tun2socks::packet::{Classified, classify, write_udp};
use tun2socks::xdp::{AddressPlan, XdpClassifier};

const GW_IF: &str = "pg";
const CL_IF: &str = "pc";

const GW_V4: Ipv4Addr = Ipv4Addr::new(10, 98, 0, 1);
const CL_V4: Ipv4Addr = Ipv4Addr::new(10, 98, 0, 2);
const GW_V6: Ipv6Addr = Ipv6Addr::new(0xfd98, 0, 0, 0, 0, 0, 0, 1);
const CL_V6: Ipv6Addr = Ipv6Addr::new(0xfd98, 0, 0, 0, 0, 0, 0, 2);
/// Routed (captured) destinations.
const REMOTE_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 20);
const REMOTE_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 0x20);

const WAIT: Duration = Duration::from_secs(5);

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn xsk_port_unframes_received_packets_and_frames_sent_ones() {
    if !is_root() {
        eprintln!("skipped: needs root (namespaces, CAP_BPF, CAP_NET_ADMIN)");
        return;
    }
    let lab = Lab::new();
    let gw = lab.gw.clone();
    let cl = lab.cl.clone();
    let result = thread::spawn(move || {
        netns::enter(&gw).expect("enter the gateway namespace");
        gateway(&gw, &cl)
    })
    .join();
    drop(lab);
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

fn gateway(gw: &str, cl: &str) {
    let plan = AddressPlan {
        routed: ["198.51.100.0/24", "2001:db8:100::/48"]
            .map(|n| n.parse().unwrap())
            .to_vec(),
        bypass: Vec::new(),
        local: vec![IpAddr::V4(GW_V4), IpAddr::V6(GW_V6)],
    };
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

/// The two namespaces and the veth between them; removed on drop.
struct Lab {
    gw: String,
    cl: String,
}

impl Lab {
    fn new() -> Lab {
        let pid = std::process::id();
        let lab = Lab {
            gw: format!("t2s-xport-{pid}-gw"),
            cl: format!("t2s-xport-{pid}-cl"),
        };
        for ns in [&lab.gw, &lab.cl] {
            // A namespace left over by a killed run of this pid would make
            // `add` fail; it is ours, so take it down.
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
            ip(&format!("netns add {ns}"));
            ip(&format!("-n {ns} link set lo up"));
        }
        let (gw, cl) = (&lab.gw, &lab.cl);
        ip(&format!(
            "-n {gw} link add {GW_IF} type veth peer name {CL_IF} netns {cl}"
        ));
        for (ns, dev, v4, v6) in [(gw, GW_IF, GW_V4, GW_V6), (cl, CL_IF, CL_V4, CL_V6)] {
            ip(&format!("-n {ns} link set {dev} addrgenmode none"));
            ip(&format!("-n {ns} addr add {v4}/24 dev {dev}"));
            ip(&format!("-n {ns} -6 addr add {v6}/64 dev {dev} nodad"));
            ip(&format!("-n {ns} link set {dev} up"));
        }
        // Host-mode setup turns TX checksum offload off on the sending end,
        // so frames arrive with complete checksums (see XskPort).
        in_ns(cl, || disable_tx_checksum_offload(CL_IF)).expect("ethtool -K pc tx off");
        ip(&format!("-n {cl} route add 198.51.100.0/24 via {GW_V4}"));
        ip(&format!("-n {cl} -6 route add 2001:db8:100::/48 via {GW_V6}"));
        lab
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in [&self.gw, &self.cl] {
            match Command::new("ip").args(["netns", "del", ns]).output() {
                Ok(out) if out.status.success() => {}
                other => eprintln!("ip netns del {ns}: {other:?}"),
            }
        }
    }
}

/// Runs `ip ARGS` (whitespace-separated); panics on failure.
fn ip(args: &str) -> String {
    let out = Command::new("ip")
        .args(args.split_whitespace())
        .output()
        .expect("run ip");
    assert!(
        out.status.success(),
        "ip {args}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `ethtool -K DEV tx off` for `dev` in the calling thread's namespace
/// (the legacy `ETHTOOL_STXCSUM` ioctl; ethtool itself may be missing).
fn disable_tx_checksum_offload(dev: &str) -> io::Result<()> {
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    const ETHTOOL_STXCSUM: u32 = 0x17;
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    let mut value = EthtoolValue {
        cmd: ETHTOOL_STXCSUM,
        data: 0,
    };
    // SAFETY: ifreq is plain old data; all zeroes is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(dev.bytes()) {
        *dst = src as libc::c_char;
    }
    ifr.ifr_ifru.ifru_data = (&mut value as *mut EthtoolValue).cast();
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
    // SAFETY: SIOCETHTOOL reads the ifreq and the ethtool_value it points
    // to, both alive for the call.
    let rc = unsafe { libc::ioctl(socket.as_raw_fd(), SIOCETHTOOL, &mut ifr) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// The MAC address of `dev` in namespace `ns`.
fn mac(ns: &str, dev: &str) -> [u8; 6] {
    let out = ip(&format!("-n {ns} -o link show dev {dev}"));
    let text = out
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .unwrap_or_else(|| panic!("no MAC in {out}"));
    let mut mac = [0u8; 6];
    for (byte, hex) in mac.iter_mut().zip(text.split(':')) {
        *byte = u8::from_str_radix(hex, 16).unwrap();
    }
    mac
}

/// Runs `f` on a thread in namespace `ns` (the calling thread stays where
/// it is).
fn in_ns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    thread::scope(|scope| {
        scope
            .spawn(|| {
                netns::enter(ns).expect("enter namespace");
                f()
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}
