//! Issue 4, router mode (`--device xdp://IFACE`): the lab's `app` namespace
//! plays a router with a LAN interface `rtr0` (a two-queue veth) towards a
//! client namespace `lan`. tun2socks serves the LAN clients' proxied flows
//! on `rtr0` over AF_XDP; everything else stays the router's kernel's.
//!
//! ```text
//!   lan (192.168.50.2) —— rtr0 (192.168.50.1) app = router —— proxy (dante, forwarding) —— srv
//! ```
//!
//! Checked from `lan`: curl and 32 × 8 MiB SHA-256-verified transfers each
//! way through the proxy on two workers; ping and ARP of the router; and a
//! bypassed address (10.0.2.3) reached by plain routing, so that `srv` sees
//! the client's own address, while a proxied one sees dante's.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use lab::servers::dante_url;
use lab::topology::{addr, port};
use lab::{Daemon, Lab, Netns};

use crate::support::{expect_spread_over_workers, in_lab, probe, srv, xfer_from};
use crate::udp::{fields, run_t2s_udp, t2s_udp};

const LAN_V4: &str = "192.168.50.2";
const ROUTER_V4: &str = "192.168.50.1";
/// A second address of `srv`, bypassed: routed by the kernels, not proxied.
const BYPASSED_V4: &str = "10.0.2.3";

/// Adds the `lan` namespace and its link to the router (`app`), and the
/// routes that let `proxy` forward between the LAN and `srv`.
fn lan_side(lab: &Lab) -> Result<Netns> {
    let lan = Netns::create(&format!("{}-lan", lab.id()))?;
    let app = lab.app().name();
    lan.ip(&[
        "link",
        "add",
        "lan0",
        "numtxqueues",
        "2",
        "numrxqueues",
        "2",
        "type",
        "veth",
        "peer",
        "name",
        "rtr0",
        "numtxqueues",
        "2",
        "numrxqueues",
        "2",
        "netns",
        app,
    ])?;
    lan.ip(&["addr", "add", &format!("{LAN_V4}/24"), "dev", "lan0"])?;
    lan.ip(&["-6", "addr", "add", "fd00:50::2/64", "dev", "lan0", "nodad"])?;
    lan.ip(&["link", "set", "lan0", "up"])?;
    lan.ip(&["route", "add", "default", "via", ROUTER_V4])?;
    lan.ip(&["-6", "route", "add", "default", "via", "fd00:50::1"])?;
    // A veth standing in for a wire: whole checksums, as on a real LAN.
    lan.disable_tx_checksum_offload("lan0")?;
    // And standing in for a NIC's RSS, which hashes a flow's headers the
    // same way every time: the client's kernel picks the veth queue from
    // its socket's tx hash, so the hash must not be re-rolled after a
    // retransmission timeout (`net.core.txrehash`, default 1), or a flow
    // could move to another queue, thus another worker, mid-transfer.
    lan.sysctl("net.core.txrehash", "0")?;

    let router = lab.app();
    router.ip(&["addr", "add", &format!("{ROUTER_V4}/24"), "dev", "rtr0"])?;
    router.ip(&["-6", "addr", "add", "fd00:50::1/64", "dev", "rtr0", "nodad"])?;
    router.ip(&["link", "set", "rtr0", "up"])?;
    router.sysctl("net.ipv4.ip_forward", "1")?;

    // The bypassed destination is reached by routing: proxy forwards, and
    // srv and proxy know the way back to the LAN.
    let proxy = lab.proxy();
    proxy.sysctl("net.ipv4.ip_forward", "1")?;
    proxy.ip(&["route", "add", "192.168.50.0/24", "via", &addr::APP_V4.to_string()])?;
    lab.srv()
        .ip(&["addr", "add", &format!("{BYPASSED_V4}/24"), "dev", "srv0"])?;
    lab.srv().ip(&[
        "route",
        "add",
        "192.168.50.0/24",
        "via",
        &addr::PROXY_OUT_V4.to_string(),
    ])?;
    Ok(lan)
}

#[test]
fn router_mode_serves_lan_clients_and_leaves_the_rest_to_the_kernel() -> Result<()> {
    in_lab(|lab| {
        let lan = lan_side(lab)?;
        lab.start_dante()?;
        lab.start_http()?;
        lab.start_probe_server(probe())?;
        let whoami = [
            SocketAddr::new(addr::SRV_V4.into(), port::WHOAMI),
            SocketAddr::new(addr::SRV_V4.into(), port::WHOAMI_2),
            SocketAddr::new(BYPASSED_V4.parse()?, port::WHOAMI),
            SocketAddr::new(BYPASSED_V4.parse()?, port::WHOAMI_2),
        ];
        lab.start_whoami(t2s_udp(), &whoami)?;
        let args = [
            "--device",
            "xdp://rtr0",
            "--workers",
            "2",
            "--route",
            "10.0.2.0/24",
            "--route",
            "fd00:2::/64",
            "--bypass",
            &format!("{BYPASSED_V4}/32"),
        ];
        let daemon = Daemon::start(lab, &dante_url(false), &args)?;
        ensure!(
            daemon.log().contains("router mode: AF_XDP on the LAN interface"),
            "not in router mode:\n{}",
            daemon.log()
        );

        // The router itself still answers: ping (ICMP) and ARP.
        let ping = lab.run_in(
            &lan,
            "ping",
            &["-c", "3", "-i", "0.2", "-W", "2", ROUTER_V4],
            Duration::from_secs(10),
        )?;
        ensure!(
            ping.status.success(),
            "ping {ROUTER_V4}: {}",
            String::from_utf8_lossy(&ping.stdout)
        );
        let neigh = lan.ip(&["neigh", "show", ROUTER_V4])?;
        ensure!(neigh.contains("lladdr"), "no ARP entry for the router: {neigh:?}");

        // Proxied: curl and the verified transfers.
        let url = lab::servers::hello_url(false);
        let out = lab.run_in(
            &lan,
            "curl",
            &[
                "--silent",
                "--show-error",
                "--fail",
                "--max-time",
                "10",
                "--noproxy",
                "*",
                &url,
            ],
            Duration::from_secs(15),
        )?;
        ensure!(
            out.status.success(),
            "curl {url}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        ensure!(
            String::from_utf8_lossy(&out.stdout) == lab.hello_body(),
            "curl {url}: unexpected body"
        );
        let half_close = ["--half-close"];
        let summary = xfer_from(lab, &lan, srv(false, port::PROBE), 32, "8MiB", "both", &half_close)?;
        eprintln!("LAN client, IPv4: {summary}");
        let summary = xfer_from(lab, &lan, srv(true, port::PROBE), 32, "8MiB", "both", &half_close)?;
        eprintln!("LAN client, IPv6: {summary}");

        // Who does srv see? dante for the proxied address, the client
        // itself for the bypassed one. One target per socket: the NIC's
        // RSS (here, the client's veth queue choice) hashes a UDP flow by
        // both its ends, so one socket's datagrams to two servers may reach
        // two workers and two associations; endpoint-independent mapping
        // across destinations needs RSS on the source only (ethtool -N
        // IFACE rx-flow-hash udp4 sf), see docs/ARCHITECTURE.md.
        let expected = [addr::PROXY_OUT_V4.to_string(), LAN_V4.to_string()];
        for (target, expected) in whoami.iter().zip(expected.iter().flat_map(|e| [e, e])) {
            let to = target.to_string();
            let args = ["eim-check", "--to", &to, "--timeout", "10"];
            let out = run_t2s_udp(lab, &lan, &args, Duration::from_secs(20))?;
            let seen: Vec<SocketAddr> = out
                .lines()
                .filter_map(|line| fields(line).get("saw").map(|s| s.parse()))
                .collect::<Result<_, _>>()
                .with_context(|| format!("parsing eim-check output:\n{out}"))?;
            ensure!(
                seen.len() == 1 && seen[0].ip().to_string() == *expected,
                "{to} should have seen {expected}:\n{out}"
            );
        }

        let exit = daemon.stop()?;
        for line in exit.log.lines().filter(|l| l.contains("port counters")) {
            eprintln!("{line}");
        }
        expect_spread_over_workers(&exit, 2, 128)?;
        // Nothing was configured, so nothing is left: the LAN still works.
        let ping = lab.run_in(&lan, "ping", &["-c", "1", "-W", "2", ROUTER_V4], Duration::from_secs(5))?;
        ensure!(
            ping.status.success(),
            "the router stopped answering after the daemon left"
        );
        Ok(())
    })
}
