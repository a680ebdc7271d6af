//! Scenery shared by the tests that run against a real kernel in a private
//! network namespace (setup.rs, journal.rs). `ip` builds and observes the
//! scenery; the code under test uses netlink.
#![allow(dead_code)] // each test file uses a different part

use std::future::Future;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::time::Duration;

use ipnet::IpNet;
use tun2socks::setup::{self, ExistingDevice, SetupPlan};

pub mod veth;

pub const MARK: u32 = 0x2d;
pub const TABLE: u32 = 100;
pub const PRIORITY: u32 = 1000;

/// Runs `body` on a new thread in a new, empty network namespace, on a
/// current-thread tokio runtime. Panics in `body` fail the test.
pub fn in_private_netns<F, Fut>(body: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .try_init();
    let thread = std::thread::spawn(move || {
        // SAFETY: plain syscall; affects only this thread.
        let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "unshare(CLONE_NEWNET) failed: {}", io::Error::last_os_error());
        assert_ne!(
            netns_id("/proc/thread-self/ns/net"),
            netns_id("/proc/self/ns/net"),
            "refusing to run outside a private network namespace"
        );
        ip("link set lo up");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(body());
    });
    if let Err(panic) = thread.join() {
        std::panic::resume_unwind(panic);
    }
}

pub fn netns_id(path: &str) -> (u64, u64) {
    let meta = std::fs::metadata(path).unwrap_or_else(|e| panic!("stat {path}: {e}"));
    (meta.dev(), meta.ino())
}

pub fn netns_inode(path: &str) -> u64 {
    netns_id(path).1
}

/// Whether the tests run as root (namespaces, CAP_BPF, CAP_NET_ADMIN).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Runs `ip ARGS` (whitespace-separated) and returns its stdout; panics on failure.
pub fn ip(args: &str) -> String {
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

/// The state setup may touch, as `ip` shows it.
pub fn snapshot() -> String {
    [
        "-d link",
        "addr",
        "route show table all",
        "-6 route show table all",
        "rule",
        "-6 rule",
    ]
    .iter()
    .map(|args| format!("## ip {args}\n{}", ip(args)))
    .collect()
}

/// Asserts two snapshots are equal, showing only the lines that differ.
#[track_caller]
pub fn assert_same(before: &str, after: &str) {
    if before != after {
        let gone: Vec<&str> = before.lines().filter(|l| !after.lines().any(|a| a == *l)).collect();
        let new: Vec<&str> = after.lines().filter(|l| !before.lines().any(|b| b == *l)).collect();
        panic!(
            "state differs\nonly before:\n{}\nonly after:\n{}\nafter:\n{after}",
            gone.join("\n"),
            new.join("\n")
        );
    }
}

/// A LAN-like link with the main table's routes: a connected subnet, a
/// default route, and a specific route inside the prefix we will route.
pub fn lan() {
    ip("link add lan0 type veth peer name lan0p");
    // No link-local addresses: their DAD would change the state behind the
    // snapshots' backs.
    ip("link set lan0 addrgenmode none");
    ip("link set lan0p addrgenmode none");
    ip("link set lan0 up");
    ip("link set lan0p up");
    ip("addr add 192.168.50.1/24 dev lan0");
    ip("-6 addr add fd00:50::1/64 dev lan0 nodad");
    // Carrier (linkwatch) and an IPv6 address's local route (addrconf
    // work, even with nodad) follow after the commands return.
    for end in ["lan0", "lan0p"] {
        eventually(&format!("carrier on {end}"), || {
            ip(&format!("-br link show {end}")).split_whitespace().nth(1) == Some("UP")
        });
    }
    eventually("the local route of fd00:50::1", || {
        ip("-6 route show table local").contains("local fd00:50::1 ")
    });
    ip("route add default via 192.168.50.254");
    ip("-6 route add default via fd00:50::254");
    ip("route add 10.20.0.0/24 via 192.168.50.254");
    ip("-6 route add fd00:20::/48 via fd00:50::254");
}

/// Polls `done` for up to 3 s: some state follows a change asynchronously.
#[track_caller]
pub fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..300 {
        if done() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("still waiting after 3s for {what}");
}

pub fn nets(list: &[&str]) -> Vec<IpNet> {
    list.iter().map(|s| s.parse().unwrap()).collect()
}

/// A non-persistent TUN vanishes with its last queue, but the close can be
/// late (an `ip` child of a parallel test may hold copies until it execs).
pub async fn wait_until_absent(device: &str) {
    for _ in 0..300 {
        if setup::inspect_device(device).await.unwrap() == ExistingDevice::Absent {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{device} still exists 3s after its queues were closed");
}

/// Every kind of change on `device`: MTU, addresses of both families, a
/// default and a specific route per family, a bypass per family.
pub fn full_plan(device: &str) -> SetupPlan {
    SetupPlan {
        device: device.to_string(),
        mtu: 1400,
        addresses: nets(&["198.18.0.1/30", "fd00:18::1/64"]),
        routes: nets(&["0.0.0.0/0", "::/0", "10.20.0.0/16", "fd00:20::/32"]),
        bypass: nets(&["10.20.9.0/24", "fd00:20:9::/48"]),
        fwmark: MARK,
        table: TABLE,
        rule_priority: PRIORITY,
    }
}
