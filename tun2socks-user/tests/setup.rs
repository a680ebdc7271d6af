//! Network setup against a real kernel. Needs root.
//!
//! Every test runs on its own thread inside a fresh network namespace
//! (`unshare(CLONE_NEWNET)` moves only that thread; the `ip` processes it
//! spawns and the netlink sockets it opens live there too), so the
//! namespace the tests were started in is never touched. `ip` is used only
//! to build the scenery and to observe.

use std::process::Command;

use tun2socks::device::tun::open_queues;
use tun2socks::netns::{self, NetnsError};
use tun2socks::setup::{self, Change, ExistingDevice, SetupError, SetupPlan};

mod common;
use common::*;

const TUN: &str = "t2stest0";

/// The first time a device goes up, the kernel attaches its default qdisc
/// (`noop` becomes `mq`) and, TUN having no hardware address, switches
/// `addrgenmode` from eui64 to random; going down undoes neither. Doing
/// that once before the "before" snapshot keeps the comparisons exact
/// without hiding anything that apply/undo do.
fn first_up_done(device: &str) {
    ip(&format!("link set {device} up"));
    ip(&format!("link set {device} down"));
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
        let _queues = open_queues(TUN, 2, false).unwrap();
        let applied = setup::apply(&full_plan(TUN)).await.unwrap();

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
        let _queues = open_queues(TUN, 1, false).unwrap();
        let before_v6_rules = ip("-6 rule");
        let plan = SetupPlan {
            routes: nets(&["10.20.0.0/16"]),
            bypass: nets(&["10.20.9.0/24", "fd00:20:9::/48"]),
            ..full_plan(TUN)
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
        let _queues = open_queues(TUN, 2, false).unwrap();
        first_up_done(TUN);
        let before = snapshot();
        let applied = setup::apply(&full_plan(TUN)).await.unwrap();
        assert_ne!(snapshot(), before);
        applied.undo().await.unwrap();
        assert_same(&before, &snapshot());
    });
}

#[test]
fn undo_restores_everything_after_the_device_went_away() {
    in_private_netns(|| async {
        lan();
        let before = snapshot();
        let queues = open_queues(TUN, 2, false).unwrap();
        let applied = setup::apply(&full_plan(TUN)).await.unwrap();
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
        let _queues = open_queues(TUN, 2, false).unwrap();
        first_up_done(TUN);
        // Someone else's route where our bypass route goes.
        ip("route add throw 10.20.9.0/24 table 100");
        let before = snapshot();
        let err = setup::apply(&full_plan(TUN)).await.unwrap_err();
        assert_eq!(err.errno(), Some(libc::EEXIST), "{err}");
        assert!(err.to_string().contains("10.20.9.0/24 table 100"), "{err}");
        assert_same(&before, &snapshot());
    });
}

#[test]
fn failing_at_the_last_rule_rolls_back() {
    in_private_netns(|| async {
        lan();
        let _queues = open_queues(TUN, 2, false).unwrap();
        first_up_done(TUN);
        // The very last change apply makes already exists.
        ip("-6 rule add priority 1002 not fwmark 0x2d lookup 100");
        let before = snapshot();
        let err = setup::apply(&full_plan(TUN)).await.unwrap_err();
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
        let err = setup::apply(&full_plan(TUN)).await.unwrap_err();
        assert!(matches!(err, SetupError::NoDevice(ref d) if d == TUN), "{err}");
        let bad = SetupPlan {
            fwmark: 0,
            ..full_plan(TUN)
        };
        assert!(matches!(setup::apply(&bad).await, Err(SetupError::InvalidPlan(_))));
        assert_same(&before, &snapshot());
    });
}

#[test]
fn inspect_device_tells_tun_flavours_and_other_kinds_apart() {
    in_private_netns(|| async {
        lan();
        let _queues = open_queues(TUN, 2, false).unwrap();
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
