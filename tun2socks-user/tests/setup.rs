//! Network setup against a real kernel. Needs root.
//!
//! Every test runs on its own thread inside a fresh network namespace
//! (`unshare(CLONE_NEWNET)` moves only that thread; the `ip` processes it
//! spawns and the netlink sockets it opens live there too), so the
//! namespace the tests were started in is never touched. `ip` is used only
//! to build the scenery and to observe.

use std::future::Future;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::process::Command;

use ipnet::IpNet;
use tun2socks::device::tun::open_queues;
use tun2socks::netns::{self, NetnsError};
use tun2socks::setup::{self, Change, ExistingDevice, SetupError, SetupPlan};

const TUN: &str = "t2stest0";
const MARK: u32 = 0x2d;
const TABLE: u32 = 100;
const PRIORITY: u32 = 1000;

/// Runs `body` on a new thread in a new, empty network namespace, on a
/// current-thread tokio runtime. Panics in `body` fail the test.
fn in_private_netns<F, Fut>(body: F)
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

fn netns_id(path: &str) -> (u64, u64) {
    let meta = std::fs::metadata(path).unwrap_or_else(|e| panic!("stat {path}: {e}"));
    (meta.dev(), meta.ino())
}

/// Runs `ip ARGS` (whitespace-separated) and returns its stdout; panics on failure.
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

/// The state setup may touch, as `ip` shows it.
fn snapshot() -> String {
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
fn assert_same(before: &str, after: &str) {
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
fn lan() {
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

/// The first time a device goes up, the kernel attaches its default qdisc
/// (`noop` becomes `mq`) and, TUN having no hardware address, switches
/// `addrgenmode` from eui64 to random; going down undoes neither. Doing
/// that once before the "before" snapshot keeps the comparisons exact
/// without hiding anything that apply/undo do.
fn first_up_done(device: &str) {
    ip(&format!("link set {device} up"));
    ip(&format!("link set {device} down"));
}

/// Polls `done` for up to 3 s: some state follows a change asynchronously.
#[track_caller]
fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..300 {
        if done() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("still waiting after 3s for {what}");
}

fn nets(list: &[&str]) -> Vec<IpNet> {
    list.iter().map(|s| s.parse().unwrap()).collect()
}

fn full_plan() -> SetupPlan {
    SetupPlan {
        device: TUN.to_string(),
        mtu: 1400,
        addresses: nets(&["198.18.0.1/30", "fd00:18::1/64"]),
        routes: nets(&["0.0.0.0/0", "::/0", "10.20.0.0/16", "fd00:20::/32"]),
        bypass: nets(&["10.20.9.0/24", "fd00:20:9::/48"]),
        fwmark: MARK,
        table: TABLE,
        rule_priority: PRIORITY,
    }
}

/// The device `ip route get` picks for `addr`, for traffic with `mark`.
fn route_dev(addr: &str, mark: Option<u32>) -> String {
    let args = match mark {
        Some(mark) => format!("route get {addr} mark {mark}"),
        None => format!("route get {addr}"),
    };
    let out = ip(&args);
    let mut words = out.split_whitespace();
    words
        .by_ref()
        .find(|w| *w == "dev")
        .and_then(|_| words.next())
        .unwrap_or_else(|| panic!("no dev in `ip {args}`: {out}"))
        .to_string()
}

#[test]
fn routes_unmarked_traffic_into_the_device_and_marked_traffic_around_it() {
    in_private_netns(|| async {
        lan();
        let _queues = open_queues(TUN, 2).unwrap();
        let applied = setup::apply(&full_plan()).await.unwrap();

        let into_tun = |addr| assert_eq!(route_dev(addr, None), TUN, "unmarked {addr}");
        let around_tun = |addr, mark| assert_eq!(route_dev(addr, mark), "lan0", "{addr} mark {mark:?}");
        // Inside a routed prefix, or only under the default route: into the
        // device, unless marked. (The proxy may well lie in a routed prefix:
        // its marked traffic still leaves through main.)
        for addr in ["10.20.1.1", "fd00:20:1::1", "8.8.8.8", "2001:db8::1"] {
            into_tun(addr);
            around_tun(addr, Some(MARK));
        }
        // Our routed prefix beats main's more specific route (rule P).
        into_tun("10.20.0.5");
        into_tun("fd00:20::5");
        // Bypassed prefixes throw out of our table, inside a routed prefix too.
        around_tun("10.20.9.9", None);
        around_tun("fd00:20:9::1", None);
        // Main's specific routes (the LAN) beat our default route (rule P+1).
        around_tun("192.168.50.7", None);
        around_tun("fd00:50::7", None);

        let rules = ip("rule");
        for line in [
            "1000:\tnot from all fwmark 0x2d lookup 100 suppress_prefixlength 0",
            "1001:\tfrom all lookup main suppress_prefixlength 0",
            "1002:\tnot from all fwmark 0x2d lookup 100",
        ] {
            assert!(rules.contains(line), "missing {line:?} in\n{rules}");
            assert!(ip("-6 rule").contains(line), "missing IPv6 {line:?}");
        }
        assert_eq!(applied.changes()[0], Change::Mtu { old: 1500 });
        assert_eq!(
            applied
                .changes()
                .iter()
                .filter(|c| matches!(c, Change::Rule(_)))
                .count(),
            6
        );
        applied.undo().await.unwrap();
        assert_eq!(route_dev("10.20.1.1", None), "lan0");
    });
}

#[test]
fn specific_routes_of_one_family_add_two_rules_and_nothing_for_the_other() {
    in_private_netns(|| async {
        lan();
        let _queues = open_queues(TUN, 1).unwrap();
        let before_v6_rules = ip("-6 rule");
        let plan = SetupPlan {
            routes: nets(&["10.20.0.0/16"]),
            bypass: nets(&["10.20.9.0/24", "fd00:20:9::/48"]),
            ..full_plan()
        };
        let applied = setup::apply(&plan).await.unwrap();
        assert_eq!(route_dev("10.20.1.1", None), TUN);
        assert_eq!(route_dev("8.8.8.8", None), "lan0");
        let rules = ip("rule");
        assert!(!rules.contains("lookup main suppress_prefixlength"), "{rules}");
        assert_eq!(rules.lines().filter(|l| l.contains("lookup 100")).count(), 2, "{rules}");
        assert_eq!(ip("-6 rule"), before_v6_rules);
        assert!(!ip("-6 route show table all").contains("table 100"));
        applied.undo().await.unwrap();
    });
}

#[test]
fn undo_restores_everything_while_the_device_still_exists() {
    in_private_netns(|| async {
        lan();
        let _queues = open_queues(TUN, 2).unwrap();
        first_up_done(TUN);
        let before = snapshot();
        let applied = setup::apply(&full_plan()).await.unwrap();
        assert_ne!(snapshot(), before);
        applied.undo().await.unwrap();
        assert_same(&before, &snapshot());
    });
}

/// A non-persistent TUN vanishes with its last queue, but the close can be
/// late: an `ip` child forked by a test running in parallel holds copies of
/// our descriptors until it execs (O_CLOEXEC acts only then).
async fn wait_until_absent(device: &str) {
    for _ in 0..200 {
        if setup::inspect_device(device).await.unwrap() == ExistingDevice::Absent {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("{device} still exists 2s after its queues were closed");
}

#[test]
fn undo_restores_everything_after_the_device_went_away() {
    in_private_netns(|| async {
        lan();
        let before = snapshot();
        let queues = open_queues(TUN, 2).unwrap();
        let applied = setup::apply(&full_plan()).await.unwrap();
        drop(queues);
        wait_until_absent(TUN).await;
        applied.undo().await.unwrap();
        assert_same(&before, &snapshot());
    });
}

#[test]
fn failing_midway_at_a_route_rolls_back() {
    in_private_netns(|| async {
        lan();
        let _queues = open_queues(TUN, 2).unwrap();
        first_up_done(TUN);
        // Someone else's route where our bypass route goes.
        ip("route add throw 10.20.9.0/24 table 100");
        let before = snapshot();
        let err = setup::apply(&full_plan()).await.unwrap_err();
        assert_eq!(err.errno(), Some(libc::EEXIST), "{err}");
        assert!(err.to_string().contains("10.20.9.0/24 table 100"), "{err}");
        assert_same(&before, &snapshot());
    });
}

#[test]
fn failing_at_the_last_rule_rolls_back() {
    in_private_netns(|| async {
        lan();
        let _queues = open_queues(TUN, 2).unwrap();
        first_up_done(TUN);
        // The very last change apply makes already exists.
        ip("-6 rule add priority 1002 not fwmark 0x2d lookup 100");
        let before = snapshot();
        let err = setup::apply(&full_plan()).await.unwrap_err();
        assert_eq!(err.errno(), Some(libc::EEXIST), "{err}");
        assert!(err.to_string().contains("IPv6 rule 1002"), "{err}");
        assert_same(&before, &snapshot());
    });
}

#[test]
fn apply_refuses_a_missing_device_and_a_bad_plan_without_changing_anything() {
    in_private_netns(|| async {
        lan();
        let before = snapshot();
        let err = setup::apply(&full_plan()).await.unwrap_err();
        assert!(matches!(err, SetupError::NoDevice(ref d) if d == TUN), "{err}");
        let bad = SetupPlan {
            fwmark: 0,
            ..full_plan()
        };
        assert!(matches!(setup::apply(&bad).await, Err(SetupError::InvalidPlan(_))));
        assert_same(&before, &snapshot());
    });
}

#[test]
fn inspect_device_tells_tun_flavours_and_other_kinds_apart() {
    in_private_netns(|| async {
        lan();
        let _queues = open_queues(TUN, 2).unwrap();
        ip("tuntap add mode tun name t2ssq0");
        ip("tuntap add mode tun name t2smq0 multi_queue");
        ip("tuntap add mode tap name t2stap0");

        let inspect = |name: &'static str| setup::inspect_device(name);
        assert_eq!(inspect("nope0").await.unwrap(), ExistingDevice::Absent);
        assert_eq!(
            inspect(TUN).await.unwrap(),
            ExistingDevice::Tun {
                multi_queue: true,
                persistent: false,
                attached_queues: Some(2)
            }
        );
        assert_eq!(
            inspect("t2smq0").await.unwrap(),
            ExistingDevice::Tun {
                multi_queue: true,
                persistent: true,
                attached_queues: Some(0)
            }
        );
        assert_eq!(
            inspect("t2ssq0").await.unwrap(),
            ExistingDevice::Tun {
                multi_queue: false,
                persistent: true,
                attached_queues: None
            }
        );
        let other = |kind: &str| ExistingDevice::Other {
            kind: Some(kind.to_string()),
        };
        assert_eq!(inspect("t2stap0").await.unwrap(), other("tap"));
        assert_eq!(inspect("lan0").await.unwrap(), other("veth"));
        assert_eq!(inspect("lo").await.unwrap(), ExistingDevice::Other { kind: None });
    });
}

/// A namespace made with `ip netns add`, deleted on drop (also when the
/// test fails). Only /run/netns changes in the host; none of its network.
struct NamedNetns(String);

impl NamedNetns {
    fn add(name: String) -> Self {
        ip(&format!("netns add {name}"));
        NamedNetns(name)
    }
}

impl Drop for NamedNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

#[test]
fn netns_enter_moves_only_the_calling_thread() {
    let ns = NamedNetns::add(format!("t2s-setup-test-{}", std::process::id()));
    let target = netns_id(&format!("{}/{}", netns::NETNS_RUN_DIR, ns.0));
    let ours = netns_id("/proc/thread-self/ns/net");
    assert_ne!(target, ours);

    let name = ns.0.clone();
    let entered = std::thread::spawn(move || {
        netns::enter(&name).unwrap();
        netns_id("/proc/thread-self/ns/net")
    })
    .join()
    .unwrap();
    assert_eq!(entered, target);
    assert_eq!(netns_id("/proc/thread-self/ns/net"), ours);

    let missing = std::thread::spawn(|| netns::enter("t2s-setup-test-missing"))
        .join()
        .unwrap();
    assert!(matches!(missing, Err(NetnsError::NotFound(_))), "{missing:?}");
    assert!(matches!(netns::enter("../net"), Err(NetnsError::BadName(_))));
    assert!(matches!(netns::enter(""), Err(NetnsError::BadName(_))));
}
