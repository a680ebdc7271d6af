//! Two named namespaces joined by a veth, for the AF_XDP tests (xsk.rs,
//! xsk_port.rs): `gw`, where the XDP program and the AF_XDP sockets run,
//! and `cl`, the client. Both ends get an IPv4 and an IPv6 address (no
//! link-local ones, no DAD: less traffic that is not the test's), and the
//! client's end has TX checksum offload off, as host-mode setup will do, so
//! its frames carry complete checksums. The namespaces are named after the
//! test's pid and removed on drop, also when the test fails.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::Command;
use std::thread;

use tun2socks::netns;
use tun2socks::xdp::AddressPlan;

use super::ip;

/// One end of the veth: its namespace role's interface name and addresses.
pub struct End {
    pub dev: &'static str,
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
}

/// The prefixes the AF_XDP tests' clients route through the gateway, and
/// the classifier captures.
pub const TEST_ROUTES: [&str; 2] = ["198.51.100.0/24", "2001:db8:100::/48"];

/// A classifier plan capturing [`TEST_ROUTES`] minus `bypass`, with the
/// gateway end's addresses as the box's own.
pub fn test_plan(gw_end: &End, bypass: &[&str]) -> AddressPlan {
    AddressPlan {
        routed: TEST_ROUTES.iter().map(|n| n.parse().unwrap()).collect(),
        bypass: bypass.iter().map(|n| n.parse().unwrap()).collect(),
        local: vec![IpAddr::V4(gw_end.v4), IpAddr::V6(gw_end.v6)],
    }
}

/// Whether a kernel test can run (it needs root: namespaces, CAP_BPF,
/// CAP_NET_ADMIN); says why not. Sends tracing output to the test's.
pub fn kernel_test_can_run() -> bool {
    if !super::is_root() {
        eprintln!("skipped: needs root (namespaces, CAP_BPF, CAP_NET_ADMIN)");
        return false;
    }
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .try_init();
    true
}

pub struct VethLab {
    pub gw: String,
    pub cl: String,
}

impl VethLab {
    /// Namespaces `t2s-<tag>-<pid>-gw` and `-cl`, joined by a veth with
    /// `queues` RX and TX queues on each end.
    pub fn new(tag: &str, queues: u32, gw_end: &End, cl_end: &End) -> VethLab {
        let pid = std::process::id();
        let lab = VethLab {
            gw: format!("t2s-{tag}-{pid}-gw"),
            cl: format!("t2s-{tag}-{pid}-cl"),
        };
        for ns in [&lab.gw, &lab.cl] {
            // A namespace left over by a killed run of this pid would make
            // `add` fail; it is ours, so take it down.
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
            ip(&format!("netns add {ns}"));
            ip(&format!("-n {ns} link set lo up"));
        }
        let (gw, cl) = (&lab.gw, &lab.cl);
        let (gw_if, cl_if) = (gw_end.dev, cl_end.dev);
        ip(&format!(
            "-n {gw} link add {gw_if} numtxqueues {queues} numrxqueues {queues} type veth \
             peer name {cl_if} numtxqueues {queues} numrxqueues {queues} netns {cl}"
        ));
        for (ns, end) in [(gw, gw_end), (cl, cl_end)] {
            let (dev, v4, v6) = (end.dev, end.v4, end.v6);
            ip(&format!("-n {ns} link set {dev} addrgenmode none"));
            ip(&format!("-n {ns} addr add {v4}/24 dev {dev}"));
            ip(&format!("-n {ns} -6 addr add {v6}/64 dev {dev} nodad"));
            ip(&format!("-n {ns} link set {dev} up"));
        }
        // With TX checksum offload (veth's default) the client's frames
        // cross the veth with partial TCP/UDP checksums (pseudo-header
        // only), and so they reach the AF_XDP socket.
        in_ns(cl, || tun2socks::device::ethtool::disable_tx_checksum(cl_if)).expect("ethtool -K <client end> tx off");
        lab
    }

    /// [`VethLab::new`], with the client routing [`TEST_ROUTES`] through
    /// the gateway's end.
    pub fn routed(tag: &str, queues: u32, gw_end: &End, cl_end: &End) -> VethLab {
        let lab = VethLab::new(tag, queues, gw_end, cl_end);
        let cl = &lab.cl;
        let (v4, v6) = (gw_end.v4, gw_end.v6);
        ip(&format!("-n {cl} route add {} via {v4}", TEST_ROUTES[0]));
        ip(&format!("-n {cl} -6 route add {} via {v6}", TEST_ROUTES[1]));
        lab
    }

    /// Runs `f(gw, cl)` on a thread inside `gw`; then removes the lab and
    /// passes on a panic of `f` (the test's failure).
    pub fn run_in_gateway(self, f: impl FnOnce(&str, &str) + Send + 'static) {
        let (gw, cl) = (self.gw.clone(), self.cl.clone());
        let result = thread::spawn(move || {
            netns::enter(&gw).expect("enter the gateway namespace");
            f(&gw, &cl)
        })
        .join();
        drop(self);
        if let Err(panic) = result {
            std::panic::resume_unwind(panic);
        }
    }
}

impl Drop for VethLab {
    fn drop(&mut self) {
        for ns in [&self.gw, &self.cl] {
            match Command::new("ip").args(["netns", "del", ns]).output() {
                Ok(out) if out.status.success() => {}
                other => eprintln!("ip netns del {ns}: {other:?}"),
            }
        }
    }
}

/// The MAC address of `dev` in namespace `ns`.
pub fn mac(ns: &str, dev: &str) -> [u8; 6] {
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
pub fn in_ns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
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
